//! The shipped RBAC measured on the real authorizer. A control plane of its own with
//! an audit log (`ControlPlane::start_with(Options { audit: true })`) runs the
//! programs as their ServiceAccounts in representative passes (the fresh install's
//! scheduler backup and harvest, a gc pass, a prewarm pass); then, from the audit
//! records:
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
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use stowage_testkit::kube as cluster;
use stowage_testkit::kube::install;
use stowage_testkit::kube::scenario::{app_volume, finished_job, first_with_labels, job_has};

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
    (
        "ClusterRole stowage-prewarm",
        1,
        "persistentvolumes: populate (the PV moved to the user's claim); no PVC pending \
         a restore in these passes",
    ),
    ("ClusterRole stowage-prewarm", 2, "nodes: populate"),
    (
        "ClusterRole stowage-prewarm",
        3,
        "storageclasses: populate (the storage-class probe)",
    ),
    ("ClusterRole stowage-prewarm", 4, "restores: populate"),
    (
        "ClusterRole stowage-prewarm",
        5,
        "restores/status: populate",
    ),
    ("ClusterRole stowage-prewarm", 6, "events: populate"),
    (
        "ClusterRole stowage-prewarm",
        7,
        "namespaces get: populate (grants)",
    ),
    (
        "ClusterRole stowage-prewarm",
        8,
        "pods list: populate (the restore mover's pod)",
    ),
    (
        "ClusterRole stowage-prewarm",
        9,
        "jobs: populate (the restore mover Job)",
    ),
    (
        "Role stowage-prewarm",
        0,
        "persistentvolumeclaims create/delete: populate (the prime PVC)",
    ),
    (
        "Role stowage-prewarm",
        1,
        "jobs list/delete in stowage: populate (finished restore Jobs)",
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

/// Runs `cronjob` once with `kubectl create job --from` and asserts its Job completes;
/// returns the pod's log.
async fn run_pass(c: &cluster::Cluster, client: &kube::Client, cronjob: &str) -> String {
    let job = c.cp.unique_name(cronjob);
    install::create_job_from(c.cp, cronjob, &job)
        .unwrap_or_else(|e| panic!("kubectl create job: {e}"));
    let finished = finished_job(client, "stowage", &job).await;
    let pod = first_with_labels(
        Api::<Pod>::namespaced(client.clone(), "stowage"),
        &format!("batch.kubernetes.io/job-name={job}"),
        &format!("{cronjob} pod"),
    )
    .await;
    let log = c
        .kubelet
        .log("stowage", pod.metadata.name.as_deref().unwrap());
    assert!(
        job_has(&finished, "Complete"),
        "{cronjob} Job {job} failed: {:?}\n{log}",
        finished.status
    );
    log
}

/// The passes: the fresh install's scheduler backup (a mover Job backs an opted-in
/// PVC up) and the harvest of its result, a gc pass over the repository, a prewarm
/// pass.
async fn scenarios(c: &cluster::Cluster, client: &kube::Client, scope: &cluster::Scope) {
    use stowage_common::k8s::contract::status;
    let ns = scope
        .namespace(
            client,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    let (_, dir) = app_volume(client, &ns, "db", &[("backup", "hourly")]).await;
    std::fs::write(dir.join("table.dat"), "rows").unwrap();
    let log = run_pass(c, client, "stowage-scheduler").await;
    let mover = first_with_labels(
        Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &ns),
        "app.kubernetes.io/name=stowage-mover",
        "mover Job",
    )
    .await;
    let done = finished_job(client, &ns, mover.metadata.name.as_deref().unwrap()).await;
    assert!(
        job_has(&done, "Complete"),
        "mover Job failed: {:?}\nscheduler:\n{log}",
        done.status
    );
    let log = run_pass(c, client, "stowage-scheduler").await;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get("db")
        .await
        .unwrap();
    let ann = pvc.metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann.get(status::LAST_RESULT).map(String::as_str),
        Some("Succeeded"),
        "annotations {ann:?}\nscheduler:\n{log}"
    );
    run_pass(c, client, "stowage-gc").await;
    run_pass(c, client, "stowage-prewarm").await;
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
    let installed = install::install_stowage(cp);
    scenarios(c, &client, &scope).await;

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
