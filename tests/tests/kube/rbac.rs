//! The shipped RBAC measured on the real authorizer. A control plane of its own with
//! an audit log (`ControlPlane::start_with(Options { audit: true })`) runs the
//! programs as their ServiceAccounts in representative passes (prewarm binding a
//! fresh install's PVC empty, the scheduler's backup and harvest, a gc pass, prewarm
//! restoring into another namespace; [`scenarios`]); then, from the audit records:
//! - no request of a stowage ServiceAccount was refused (403);
//! - every rule of the shipped Roles and ClusterRoles is needed: with the rule removed
//!   (the Role applied without it), the real authorizer (`SubjectAccessReview`)
//!   denies a request the passes made. A rule none of the passes reached is named in
//!   [`NOT_REACHED`] with the reason, a rule whose removal denies nothing because
//!   another rule grants the same in [`OVERLAPPING`]; the test fails on any other, and
//!   on an entry of either list that is no longer true.
//!
//! The authorizer reads Roles from its own cache, which no client can watch: after
//! each change the test asks it (SubjectAccessReview) until a sentinel rule added or
//! removed in the same update shows the change arrived.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use stowage_testkit::kube as cluster;
use stowage_testkit::kube::install;
use stowage_testkit::kube::populate::Env;
use stowage_testkit::kube::{LOCAL_CLASS, NODES};

/// Rules that no pass of this test reaches, with the reason (role, rule index, why).
/// The test fails when one of them is reached after all (the list must stay true) and
/// when a rule that is not listed is not reached.
const NOT_REACHED: &[(&str, usize, &str)] = &[
    (
        "ClusterRole stowage-scheduler",
        6,
        "pods/exec (consistency component: hooks exec in the app's pod); the process \
         kubelet serves no exec, hooks stay on the fake API (tests/tests/rbac.rs)",
    ),
    (
        "ClusterRole stowage-scheduler",
        7,
        "volumesnapshots (consistency component: the Snapshot copy method); no CSI \
         snapshot controller on the test bed",
    ),
    (
        "ClusterRole stowage-scheduler",
        8,
        "persistentvolumeclaims create/get/delete (consistency component: the temporary \
         PVCs of the Snapshot and Clone copy methods); no CSI driver on the test bed",
    ),
];

/// Rules whose removal denies nothing the passes did, because another rule grants the
/// same (role, rule index, why). The test fails on any other such rule, and when one
/// of these is needed after all.
const OVERLAPPING: &[(&str, usize, &str)] = &[];

/// The audited cluster, started on first use.
fn audited() -> &'static cluster::Cluster {
    static CLUSTER: OnceLock<cluster::Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cp: &'static cluster::ControlPlane = Box::leak(Box::new(
            cluster::ControlPlane::start_with(&cluster::Options { audit: true }),
        ));
        cluster::Cluster::start(cp)
    })
}

/// One request as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Request {
    user: String,
    verb: String,
    group: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let res = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {} {group}/{res}", self.user, self.verb)?;
        if !self.namespace.is_empty() {
            write!(f, " in {}", self.namespace)?;
        }
        if !self.name.is_empty() {
            write!(f, " named {}", self.name)?;
        }
        Ok(())
    }
}

fn field(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// Where a role's rules apply for one binding: everywhere (ClusterRoleBinding) or in
/// one namespace (RoleBinding).
#[derive(Clone, Debug)]
struct Grant {
    user: String,
    namespace: Option<String>,
}

/// Whether `rule` of a role covers `req` (the RBAC authorizer's matching).
fn covers(rule: &Value, req: &Request) -> bool {
    let has = |key: &str, want: &str| {
        rule[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|x| x == "*" || x == want)
    };
    let resource = if req.subresource.is_empty() {
        req.resource.clone()
    } else {
        format!("{}/{}", req.resource, req.subresource)
    };
    let names: Vec<&str> = rule["resourceNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    has("apiGroups", &req.group)
        && has("resources", &resource)
        && has("verbs", &req.verb)
        && (names.is_empty() || names.contains(&req.name.as_str()))
}

/// The real authorizer's answer for `req` by the user of `groups`.
async fn allowed(client: &kube::Client, req: &Request, groups: &[String]) -> bool {
    let sar: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": req.user, "groups": groups,
            "resourceAttributes": {
                "verb": req.verb, "group": req.group, "resource": req.resource,
                "subresource": req.subresource, "namespace": req.namespace, "name": req.name,
            },
        },
    }))
    .unwrap();
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .expect("SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

/// Asks the authorizer until it answers `want` for `req` (its Role cache has no watch).
async fn await_answer(client: &kube::Client, req: &Request, groups: &[String], want: bool) {
    let deadline = Instant::now() + cluster::WAIT;
    while allowed(client, req, groups).await != want {
        assert!(
            Instant::now() < deadline,
            "the authorizer did not take up a Role change within {:?}: {req} still {}",
            cluster::WAIT,
            if want { "denied" } else { "allowed" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The passes: a fresh install's PVC bound empty by prewarm (the storage-class probe
/// on a node it picks, the lookup of its backups), the scheduler's backup of it (a mover Job) and the
/// harvest of its result, a gc pass over the repository, and a restore of it into
/// another namespace through a `Restore` object and the source namespace's grant
/// (prewarm's restore mover Job, the hand-over of its volume, the Restore's status).
async fn scenarios(env: &Env, client: &kube::Client, scope: &cluster::Scope) {
    use stowage_common::k8s::contract::status;
    let restricted = [("pod-security.kubernetes.io/enforce", "restricted")];
    let ns = scope.namespace(client, &restricted).await;
    // The claim before its pod: prewarm's probe of the WaitForFirstConsumer class
    // then picks a Ready node itself (no waiting PVC has a selected node yet).
    env.apply_claim(&ns, "db", LOCAL_CLASS, "db", false).await;
    env.prewarm_until("the class judged", true, || async {
        env.verdict(LOCAL_CLASS).await.is_some()
    })
    .await;
    env.apply_pod(&ns, "db", NODES[0]).await;
    env.populate(&[(&ns, "db")]).await;
    std::fs::write(env.dir(&ns, "db").await.join("table.dat"), "rows").unwrap();
    env.opt_in(&ns, "db").await;
    let log = env.backup(&[&ns]).await;
    assert_eq!(
        env.ann(&ns, "db", status::LAST_RESULT).await.as_deref(),
        Some("Succeeded"),
        "scheduler:\n{log}\n{}",
        env.logs(&[&ns])
    );
    let gc = env.run("stowage-gc").await;
    assert!(gc.ok(), "gc: {:?}\n{}", gc.job.status, gc.log);

    let other = scope.namespace(client, &restricted).await;
    env.grant(&ns, &other);
    let restore = json!({"apiVersion": "stowage.io/v1alpha1", "kind": "Restore",
                         "metadata": {"name": "from-db", "namespace": other},
                         "spec": {"sourceNamespace": ns, "sourcePvc": "db"}});
    install::apply(env.c.cp, &[restore]).unwrap_or_else(|e| panic!("{e}"));
    env.apply_claim(&other, "copy", LOCAL_CLASS, "from-db", false)
        .await;
    env.apply_pod(&other, "copy", NODES[1]).await;
    env.populate(&[(&other, "copy")]).await;
    assert_eq!(
        std::fs::read_to_string(env.dir(&other, "copy").await.join("table.dat")).unwrap(),
        "rows",
        "{}",
        env.logs(&[&other])
    );
}

/// Every pass runs with the shipped Roles through the real authorizer without a 403,
/// and every rule of the shipped Roles and ClusterRoles is needed: removed, the
/// authorizer denies a request that the passes made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_rbac_rule_is_needed_and_none_is_missing() {
    let c = audited();
    let cp = c.cp;
    let scope = cp.scope("rbac");
    let client = cp.client().await;
    let installed: &'static install::Stowage = Box::leak(Box::new(install::install_stowage(cp)));
    scenarios(&Env { c, installed }, &client, &scope).await;

    // The ServiceAccounts of the install and where their roles apply.
    let accounts: BTreeSet<String> = installed
        .objects
        .iter()
        .filter(|o| o["kind"] == "ServiceAccount")
        .map(|o| {
            format!(
                "system:serviceaccount:{}:{}",
                field(&o["metadata"], "namespace"),
                field(&o["metadata"], "name")
            )
        })
        .collect();
    let mut grants: BTreeMap<(String, String, String), Vec<Grant>> = BTreeMap::new();
    for b in installed
        .objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
    {
        let bns = field(&b["metadata"], "namespace");
        let role_kind = field(&b["roleRef"], "kind");
        let role_ns = if role_kind == "Role" {
            bns.clone()
        } else {
            String::new()
        };
        for s in b["subjects"].as_array().into_iter().flatten() {
            if s["kind"] != "ServiceAccount" {
                continue;
            }
            let user = format!(
                "system:serviceaccount:{}:{}",
                field(s, "namespace"),
                field(s, "name")
            );
            grants
                .entry((
                    role_kind.clone(),
                    role_ns.clone(),
                    field(&b["roleRef"], "name"),
                ))
                .or_default()
                .push(Grant {
                    user,
                    namespace: (b["kind"] == "RoleBinding").then(|| bns.clone()),
                });
        }
    }

    // What the ServiceAccounts asked for, from the audit log.
    let mut requests: BTreeSet<Request> = BTreeSet::new();
    let mut groups_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut refused: Vec<String> = Vec::new();
    for e in cp.audit_events() {
        let user = field(&e["user"], "username");
        if !accounts.contains(&user) || e["objectRef"].is_null() {
            continue;
        }
        let verb = field(&e, "verb");
        // The authorizer sees no name in a create (the URL has none; the audit log
        // names the object created).
        let name = if verb == "create" {
            String::new()
        } else {
            field(&e["objectRef"], "name")
        };
        let req = Request {
            user: user.clone(),
            verb,
            group: field(&e["objectRef"], "apiGroup"),
            resource: field(&e["objectRef"], "resource"),
            subresource: field(&e["objectRef"], "subresource"),
            namespace: field(&e["objectRef"], "namespace"),
            name,
        };
        let groups: Vec<String> = e["user"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(String::from))
            .collect();
        groups_of.insert(user, groups);
        if e["responseStatus"]["code"] == 403 {
            refused.push(format!("{req}: {}", e["responseStatus"]["message"]));
        } else {
            requests.insert(req);
        }
    }
    assert!(
        refused.is_empty(),
        "the real authorizer refused requests of stowage's ServiceAccounts:\n{}",
        refused.join("\n")
    );
    for a in &accounts {
        assert!(
            groups_of.contains_key(a),
            "{a} made no request in the passes: the audit log cannot speak for its rules"
        );
    }

    // Each rule in turn: removed, a request the passes made is denied.
    let mut report: Vec<String> = Vec::new();
    let mut unreached: Vec<(String, usize, String)> = Vec::new();
    let mut redundant: Vec<(String, usize, String)> = Vec::new();
    let mut probe = 0;
    for role in installed
        .objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        let kind = field(role, "kind");
        let ns = field(&role["metadata"], "namespace");
        let name = field(&role["metadata"], "name");
        let label = format!("{kind} {name}");
        let Some(role_grants) = grants.get(&(kind.clone(), ns.clone(), name.clone())) else {
            continue;
        };
        let rules = role["rules"].as_array().cloned().unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            let used: Vec<&Request> = requests
                .iter()
                .filter(|r| {
                    role_grants.iter().any(|g| {
                        g.user == r.user && g.namespace.as_ref().is_none_or(|n| *n == r.namespace)
                    }) && covers(rule, r)
                })
                .collect();
            if used.is_empty() {
                unreached.push((label.clone(), i, rule.to_string()));
                continue;
            }
            // The role without rule i, and a sentinel rule that shows the authorizer
            // has the new version.
            probe += 1;
            let sentinel_resource = format!("probe-{probe}");
            let mut cut = role.clone();
            let mut cut_rules = rules.clone();
            cut_rules.remove(i);
            cut_rules.push(json!({"apiGroups": ["rbac-probe.stowage.test"],
                                  "resources": [sentinel_resource], "verbs": ["get"]}));
            cut["rules"] = json!(cut_rules);
            install::apply(cp, &[cut]).unwrap_or_else(|e| panic!("{e}"));
            let first = used[0];
            let groups = groups_of[&first.user].clone();
            let sentinel = Request {
                user: first.user.clone(),
                verb: "get".into(),
                group: "rbac-probe.stowage.test".into(),
                resource: sentinel_resource,
                subresource: String::new(),
                namespace: first.namespace.clone(),
                name: String::new(),
            };
            await_answer(&client, &sentinel, &groups, true).await;
            let mut denied = Vec::new();
            for r in &used {
                if !allowed(&client, r, &groups_of[&r.user]).await {
                    denied.push(r.to_string());
                }
            }
            install::apply(cp, std::slice::from_ref(role)).unwrap_or_else(|e| panic!("{e}"));
            await_answer(&client, &sentinel, &groups, false).await;
            if denied.is_empty() {
                redundant.push((
                    label.clone(),
                    i,
                    format!(
                        "{label} rule {i} {rule}: removed, every request it covers is \
                         still allowed ({} requests, e.g. {first})",
                        used.len()
                    ),
                ));
            } else {
                report.push(format!(
                    "{label} rule {i} {rule}: removed, {} of {} requests denied, e.g. {}",
                    denied.len(),
                    used.len(),
                    denied[0]
                ));
            }
        }
    }
    eprintln!(
        "rules needed by the passes (removed, the authorizer denies a request they made):\n{}",
        report.join("\n")
    );
    eprintln!(
        "rules no pass reaches:\n{}",
        unreached
            .iter()
            .map(|(r, i, rule)| format!("{r} rule {i} {rule}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "rules another rule covers:\n{}",
        redundant
            .iter()
            .map(|(_, _, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (unlisted, stale) = against(NOT_REACHED, &unreached);
    let (unlisted_overlap, stale_overlap) = against(OVERLAPPING, &redundant);
    assert!(
        unlisted.is_empty()
            && stale.is_empty()
            && unlisted_overlap.is_empty()
            && stale_overlap.is_empty(),
        "rules no pass uses (not in NOT_REACHED):\n{}\nNOT_REACHED entries a pass did \
         reach:\n{}\nrules whose removal denies nothing (not in OVERLAPPING):\n{}\n\
         OVERLAPPING entries whose removal denied a request:\n{}",
        unlisted.join("\n"),
        stale.join("\n"),
        unlisted_overlap.join("\n"),
        stale_overlap.join("\n")
    );
}

/// The found `(role, index, text)` entries that `listed` does not name, and the
/// entries of `listed` that were not found.
fn against(
    listed: &[(&str, usize, &str)],
    found: &[(String, usize, String)],
) -> (Vec<String>, Vec<String>) {
    let unlisted = found
        .iter()
        .filter(|(r, i, _)| !listed.iter().any(|(lr, li, _)| lr == r && li == i))
        .map(|(r, i, text)| format!("{r} rule {i}: {text}"))
        .collect();
    let stale = listed
        .iter()
        .filter(|(r, i, _)| !found.iter().any(|(fr, fi, _)| fr == r && fi == i))
        .map(|(r, i, why)| format!("{r} rule {i} ({why})"))
        .collect();
    (unlisted, stale)
}
