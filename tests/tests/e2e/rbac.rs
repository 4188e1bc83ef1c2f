//! Least privilege, measured: the real programs run against the fake API through
//! representative scenarios under their service accounts, and the RBAC that
//! `kustomize/app/` grants them must allow every request they made (nothing missing)
//! and nothing they did not make (every verb × resource × name of every rule is used).
//!
//! To cover another program, add a `Program` to `PROGRAMS` with a scenario function.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret};
use serde_json::{Value, json};
use stowage_testkit::bins;
use stowage_testkit::fakeapi::{AuditRecord, FakeApi};
use stowage_testkit::world::{bind_claims, bound_app_pvc};

/// Namespace of stowage (the kustomization's `namespace:`).
const NS: &str = "stowage";

struct Program {
    /// Service account (and binary) name.
    name: &'static str,
    /// Workspace directory of the program's crate.
    krate: &'static str,
    /// Runs the program through its scenarios; returns the API's audit log.
    scenario: Option<fn(&FakeApi, &str)>,
}

const PROGRAMS: &[Program] = &[
    Program {
        name: "stowage-scheduler",
        krate: "scheduler",
        scenario: Some(scheduler_scenario),
    },
    Program {
        name: "stowage-gc",
        krate: "gc",
        scenario: Some(gc_scenario),
    },
    Program {
        name: "stowage-prewarm",
        krate: "prewarm",
        scenario: Some(prewarm_scenario),
    },
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every object of the files `kustomize/app/kustomization.yaml` lists (those that
/// exist), with the kustomization's namespace on namespaced objects.
fn app_objects() -> Vec<Value> {
    let dir = root().join("kustomize/app");
    let k: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization"),
    )
    .expect("kustomization parses");
    let ns = k["namespace"].as_str().unwrap_or(NS).to_string();
    let mut out = Vec::new();
    for f in k["resources"].as_array().expect("resources") {
        let path = dir.join(f.as_str().expect("resource path"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // written by another work item; check-manifests.sh reports it
        };
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for mut d in docs.into_iter().filter(|d| !d.is_null()) {
            let cluster_scoped = matches!(
                d["kind"].as_str(),
                Some(
                    "Namespace"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "CustomResourceDefinition"
                        | "PersistentVolume"
                )
            );
            if !cluster_scoped && d["metadata"]["namespace"].is_null() {
                d["metadata"]["namespace"] = json!(ns);
            }
            out.push(d);
        }
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One rule of a Role/ClusterRole as granted to a service account by a binding.
#[derive(Debug, Clone)]
struct Grant {
    user: String,
    /// None: all namespaces and cluster-scoped resources (ClusterRoleBinding).
    namespace: Option<String>,
    origin: String,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

impl Grant {
    fn allows(&self, r: &AuditRecord) -> bool {
        let resource = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        self.user == r.user
            && self.namespace.as_ref().is_none_or(|n| *n == r.namespace)
            && (self.groups.contains(&r.group) || self.groups.iter().any(|g| g == "*"))
            && (self.resources.contains(&resource) || self.resources.iter().any(|x| x == "*"))
            && (self.verbs.contains(&r.verb) || self.verbs.iter().any(|v| v == "*"))
            && (self.names.is_empty() || (!r.name.is_empty() && self.names.contains(&r.name)))
    }
}

fn grants(objects: &[Value]) -> Vec<Grant> {
    let find = |kind: &str, name: &str, ns: Option<&str>| -> Option<&Value> {
        objects.iter().find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && ns.is_none_or(|n| o["metadata"]["namespace"] == n)
        })
    };
    let mut out = Vec::new();
    for b in objects {
        let kind = b["kind"].as_str().unwrap_or_default();
        if kind != "RoleBinding" && kind != "ClusterRoleBinding" {
            continue;
        }
        let binding_ns = b["metadata"]["namespace"].as_str();
        let role_kind = b["roleRef"]["kind"].as_str().expect("roleRef.kind");
        let role_name = b["roleRef"]["name"].as_str().expect("roleRef.name");
        let role = match role_kind {
            "Role" => find("Role", role_name, binding_ns),
            _ => find("ClusterRole", role_name, None),
        }
        .unwrap_or_else(|| {
            panic!(
                "{kind} {:?} refers to a missing {role_kind} {role_name}",
                b["metadata"]["name"]
            )
        });
        for s in b["subjects"].as_array().expect("subjects") {
            assert_eq!(s["kind"], "ServiceAccount", "{b}");
            let user = format!(
                "system:serviceaccount:{}:{}",
                s["namespace"].as_str().unwrap_or(NS),
                s["name"].as_str().unwrap()
            );
            for (i, rule) in role["rules"].as_array().expect("rules").iter().enumerate() {
                out.push(Grant {
                    user: user.clone(),
                    namespace: if kind == "RoleBinding" {
                        binding_ns.map(str::to_string)
                    } else {
                        None
                    },
                    origin: format!("{role_kind} {role_name} rule {}", i + 1),
                    groups: strings(&rule["apiGroups"]),
                    resources: strings(&rule["resources"]),
                    verbs: strings(&rule["verbs"]),
                    names: strings(&rule["resourceNames"]),
                });
            }
        }
    }
    out
}

/// Runs a program's binary as its service account against the fake API.
fn run(api: &FakeApi, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let user = format!("system:serviceaccount:{NS}:{program}");
    let mut cmd = Command::new(bins::path(program));
    cmd.args(args).env_clear();
    for k in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    cmd.env("KUBECONFIG", api.kubeconfig_for(&user))
        .env("STOWAGE_LOG_FORMAT", "text")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let out = cmd.output().expect("run program");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A bound PVC with its PV and a running app pod on node-a.
fn pvc(api: &FakeApi, ns: &str, name: &str, labels: Value, annotations: Value) {
    bound_app_pvc(api, ns, name, labels, annotations);
}

/// Marks a mover Job finished, with the mover's result as its pod's termination message.
fn finish(api: &FakeApi, ns: &str, job: &str, ok: bool, message: &str) {
    api.put::<Pod>(json!({
        "metadata": {"name": format!("{job}-abcde"), "namespace": ns,
                     "labels": {"job-name": job, "app.kubernetes.io/managed-by": "stowage"}},
        "spec": {"containers": [{"name": "mover", "image": "m"}]},
    }));
    api.store()
        .modify::<Pod>(ns, &format!("{job}-abcde"), |p| {
            p.status = Some(serde_json::from_value(json!({
                "phase": if ok { "Succeeded" } else { "Failed" },
                "containerStatuses": [{"name": "mover", "image": "m", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": if ok {0} else {1},
                        "finishedAt": "2026-11-23T10:05:00Z", "message": message}}}]
            })).unwrap());
        })
        .unwrap();
    api.store()
        .modify::<Job>(ns, job, |j| {
            j.status = Some(
                serde_json::from_value(json!({"conditions": [{
                    "type": if ok { "Complete" } else { "Failed" }, "status": "True"}]}))
                .unwrap(),
            );
        })
        .unwrap();
}

fn last_job(api: &FakeApi, ns: &str, pvc: &str) -> String {
    let p: PersistentVolumeClaim = api.store().get(ns, pvc).unwrap();
    p.metadata.annotations.unwrap_or_default()["stowage.io/last-job"].clone()
}

/// The scheduler's life: backups started with the central credentials and with a
/// PVC's own Secret, results of a successful and a failed Job recorded, an unknown
/// policy reported, and a second pass racing into a Job that already exists.
fn scheduler_scenario(api: &FakeApi, program: &str) {
    for ns in [NS, "a", "b"] {
        api.put::<Namespace>(json!({"metadata": {"name": ns}}));
    }
    api.put::<ConfigMap>(json!({
        "metadata": {"name": "stowage-policies", "namespace": NS},
        "data": {"policies.yaml": "hourly: {schedule: \"@hourly\"}\n"}
    }));
    api.put::<Secret>(json!({
        "metadata": {"name": "stowage-credentials", "namespace": NS},
        "stringData": {"master-password": "m", "mover-access-key-id": "AK",
                       "mover-secret-access-key": "SK"}
    }));
    api.put::<Secret>(json!({
        "metadata": {"name": "own", "namespace": "b"},
        "stringData": {"RESTIC_REPOSITORY": "s3:https://s3.lan/other/b", "RESTIC_PASSWORD": "p",
                       "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}
    }));
    pvc(api, "a", "data", json!({"backup": "hourly"}), json!({}));
    pvc(
        api,
        "b",
        "own",
        json!({"backup": "hourly"}),
        json!({"stowage.io/secret": "own"}),
    );
    pvc(api, "a", "unknown", json!({"backup": "weekly"}), json!({}));
    let env = [
        ("STOWAGE_REPOSITORY_BASE", "s3:https://s3.lan/backups"),
        ("POD_NAME", "stowage-scheduler-1-abcde"),
    ];
    let log = run(api, program, &["--now", "2026-11-23T10:00:00Z"], &env);
    let (a, b) = (last_job(api, "a", "data"), last_job(api, "b", "own"));
    assert!(!a.is_empty() && !b.is_empty(), "no Jobs started: {log}");
    finish(
        api,
        "a",
        &a,
        true,
        r#"{"ok":true,"snapshot":"0123456789abcdef"}"#,
    );
    finish(api, "b", &b, false, r#"{"ok":false,"error":"bucket gone"}"#);
    run(api, program, &["--now", "2026-11-23T10:10:00Z"], &env);

    // A second pass that decides the same work while the first one's Job is not
    // visible to it yet: its create meets AlreadyExists and it reads the Job back.
    pvc(api, "a", "race", json!({"backup": "hourly"}), json!({}));
    run(api, program, &["--now", "2026-11-23T10:20:00Z"], &env);
    let job = last_job(api, "a", "race");
    api.store()
        .modify::<Job>("a", &job, |j| j.metadata.labels = None)
        .unwrap();
    api.store()
        .modify::<PersistentVolumeClaim>("a", "race", |p| p.metadata.annotations = None)
        .unwrap();
    run(api, program, &["--now", "2026-11-23T10:20:00Z"], &env);
}

/// Runs `stowage-mover backup` of `dir` into the local repository `repo` with
/// `password`, as the PVC's mover Job would (volume tags included); `limit`: upload
/// limit in KiB/s. Returns the child (running) or waits for it.
fn mover(
    repo: &str,
    password: &str,
    dir: &Path,
    tags: (&str, &str),
    limit: Option<u64>,
) -> std::process::Child {
    let mut cmd = Command::new(bins::path("stowage-mover"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", password)
        .env("STOWAGE_NAMESPACE", tags.0)
        .env("STOWAGE_PVC", tags.1)
        .env("STOWAGE_LOG_FORMAT", "text")
        .arg("backup")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(l) = limit {
        cmd.env("STOWAGE_LIMIT_UPLOAD", l.to_string());
    }
    cmd.spawn().expect("run stowage-mover")
}

fn backup(repo: &str, password: &str, dir: &Path, tags: (&str, &str)) {
    let out = mover(repo, password, dir, tags, None)
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "backup of {repo}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// gc's life: repositories under a local-directory base written by the real mover with
/// derived passwords (policy from the PVC's label and from its namespace's, a PVC's own
/// Secret, a manual-only PVC, an orphan), a repository whose data is damaged (Event),
/// a stale lock left by a killed mover (removed, Event), a finished mover Job past its
/// time (deleted; its per-run Secret goes with it through the garbage collector, gc
/// never touches it), Flux's SOPS key in `flux-system` (never read), the state ConfigMap
/// created by the first pass and patched by the second. The passes run at `--now` two hours after the
/// objects were created (the fake API stamps creation times with the real clock).
fn gc_scenario(api: &FakeApi, program: &str) {
    use stowage_common::k8s::credentials::derive_repository_password;
    use stowage_common::k8s::mover_job::mover_labels;
    use stowage_common::k8s::naming::Operation;

    const MASTER: &str = "master secret";
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("backups");
    let own_base = dir.path().join("volsync");
    let base_s = base.to_str().unwrap().to_string();
    let url = |ns: &str, pvc: &str| format!("{base_s}/{ns}/{pvc}");
    let data = |name: &str, kib: usize| {
        let d = dir.path().join("volumes").join(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut x: u64 = kib as u64 * 7919 + name.len() as u64;
        let bytes: Vec<u8> = (0..kib * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(d.join("file.bin"), bytes).unwrap();
        d
    };

    for (ns, labels) in [
        (NS, json!({})),
        ("a", json!({})),
        ("b", json!({"backup": "hourly"})),
        ("flux-system", json!({})),
    ] {
        api.put::<Namespace>(json!({"metadata": {"name": ns, "labels": labels}}));
    }
    api.put::<Secret>(json!({
        "metadata": {"name": "sops-age", "namespace": "flux-system"},
        "stringData": {"age.agekey": "AGE-SECRET-KEY-1..."}
    }));
    api.put::<ConfigMap>(json!({
        "metadata": {"name": "stowage-policies", "namespace": NS},
        "data": {"policies.yaml": "hourly: {schedule: \"@hourly\", retention: {keepLast: 1}}\n"}
    }));
    api.put::<Secret>(json!({
        "metadata": {"name": "stowage-credentials", "namespace": NS},
        "stringData": {"master-password": MASTER, "gc-access-key-id": "GK",
                       "gc-secret-access-key": "GS"}
    }));

    // a/data (label): two backups, then a mover killed while it holds its lock.
    pvc(api, "a", "data", json!({"backup": "hourly"}), json!({}));
    let data_url = url("a", "data");
    let data_pw = derive_repository_password(MASTER, &data_url);
    backup(&data_url, &data_pw, &data("data1", 64), ("a", "data"));
    backup(&data_url, &data_pw, &data("data2", 64), ("a", "data"));
    let mut child = mover(
        &data_url,
        &data_pw,
        &data("data3", 2048),
        ("a", "data"),
        Some(16),
    );
    let locks = base.join("a/data/locks");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while files(&locks).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mover took no lock"
        );
        assert!(child.try_wait().unwrap().is_none(), "the mover ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(files(&locks).len(), 1, "the killed mover's lock stays");

    // a/broken (label): one backup whose data is then damaged.
    pvc(api, "a", "broken", json!({"backup": "hourly"}), json!({}));
    let broken_url = url("a", "broken");
    let broken_pw = derive_repository_password(MASTER, &broken_url);
    backup(
        &broken_url,
        &broken_pw,
        &data("broken", 256),
        ("a", "broken"),
    );
    let pack = files(&base.join("a/broken/data"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a pack");
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&pack, bytes).unwrap();

    // a/hand: no policy (backed up by hand); a/gone: its PVC was deleted (orphan).
    pvc(api, "a", "hand", json!({}), json!({}));
    backup(
        &url("a", "hand"),
        &derive_repository_password(MASTER, &url("a", "hand")),
        &data("hand", 16),
        ("a", "hand"),
    );
    backup(
        &url("a", "gone"),
        &derive_repository_password(MASTER, &url("a", "gone")),
        &data("gone", 16),
        ("a", "gone"),
    );
    // b/inherit: the namespace's policy; b/own: a VolSync-style Secret of its own.
    pvc(api, "b", "inherit", json!({}), json!({}));
    backup(
        &url("b", "inherit"),
        &derive_repository_password(MASTER, &url("b", "inherit")),
        &data("inherit", 16),
        ("b", "inherit"),
    );
    let own_url = format!("{}/own", own_base.display());
    api.put::<Secret>(json!({
        "metadata": {"name": "restic-own", "namespace": "b"},
        "stringData": {"RESTIC_REPOSITORY": own_url, "RESTIC_PASSWORD": "own password"}
    }));
    pvc(
        api,
        "b",
        "own",
        json!({}),
        json!({"stowage.io/secret": "restic-own"}),
    );
    backup(&own_url, "own password", &data("own", 16), ("b", "own"));

    // Mover Jobs, each with its per-run Secret: one finished two days ago, one running
    // (its pod is live).
    for (job, done) in [
        ("stowage-backup-data-old", true),
        ("stowage-backup-data-run", false),
    ] {
        let j: Job = api.put(json!({
            "metadata": {"name": job, "namespace": "a",
                         "labels": mover_labels(Operation::Backup, "uid-data")},
            "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "x"}],
                                            "restartPolicy": "Never"}}}
        }));
        api.put::<Secret>(json!({
            "metadata": {"name": job, "namespace": "a",
                         "labels": mover_labels(Operation::Backup, "uid-data"),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                             "name": job, "uid": j.metadata.uid, "controller": true}]},
            "stringData": {"RESTIC_PASSWORD": "x"}
        }));
        if done {
            let two_days_ago =
                (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48)).to_string();
            api.store()
                .modify::<Job>("a", job, |j| {
                    j.status = Some(
                        serde_json::from_value(json!({
                            "completionTime": two_days_ago, "succeeded": 1,
                            "conditions": [{"type": "Complete", "status": "True",
                                            "lastTransitionTime": two_days_ago}]
                        }))
                        .unwrap(),
                    );
                })
                .unwrap();
        } else {
            api.put::<Pod>(json!({
                    "metadata": {"name": format!("{job}-abcde"), "namespace": "a",
                                 "labels": {"job-name": job, "app.kubernetes.io/managed-by": "stowage"}},
                    "spec": {"containers": [{"name": "mover", "image": "m"}]},
                }),
            );
        }
    }
    let now = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    let env = [
        ("STOWAGE_REPOSITORY_BASE", base_s.as_str()),
        ("STOWAGE_CHECK_READ_DATA_PERCENT", "100"),
        ("POD_NAME", "stowage-gc-1-abcde"),
    ];
    let log = run(api, program, &["--now", &now.to_string()], &env);
    let events: Vec<k8s_openapi::api::events::v1::Event> = api.store().list(None);
    let reasons: BTreeSet<String> = events.iter().filter_map(|e| e.reason.clone()).collect();
    for r in ["RepositoryDamaged", "StaleLockRemoved", "RepositoryPruned"] {
        assert!(reasons.contains(r), "no {r} Event: {reasons:?}\n{log}");
    }
    assert!(log.contains("removed stale lock"), "{log}");
    assert!(files(&locks).is_empty(), "{log}");
    assert!(
        api.store()
            .get::<Job>("a", "stowage-backup-data-old")
            .is_none(),
        "{log}"
    );
    // The finished Job's per-run Secret went with it (owner reference); the running
    // Job's stays.
    assert!(
        api.store()
            .get::<Secret>("a", "stowage-backup-data-old")
            .is_none(),
        "{log}"
    );
    assert!(
        api.store()
            .get::<Secret>("a", "stowage-backup-data-run")
            .is_some()
    );
    assert!(
        api.store()
            .get::<Job>("a", "stowage-backup-data-run")
            .is_some()
    );
    let state: ConfigMap = api
        .store()
        .get(NS, "stowage-gc-state")
        .unwrap_or_else(|| panic!("no state ConfigMap\n{log}"));
    let doc = state.data.unwrap_or_default()["state.json"].clone();
    for repo in [
        "a/data",
        "a/broken",
        "a/hand",
        "a/gone",
        "b/inherit",
        "volsync/own",
    ] {
        assert!(doc.contains(repo), "{repo} not maintained: {doc}\n{log}");
    }
    assert!(doc.contains("damaged"), "{doc}");
    // The second pass patches the state (and checks the damaged repository again).
    let later = now + jiff::SignedDuration::from_hours(1);
    let log = run(api, program, &["--now", &later.to_string()], &env);
    assert!(log.contains("repository damaged"), "{log}");

    // Secrets: gc read its credentials and the one Secret a PVC names, by name, and
    // nothing else (no list, no delete, never flux-system's key).
    let user = format!("system:serviceaccount:{NS}:{program}");
    let secret_calls: BTreeSet<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.user == user && r.resource == "secrets")
        .map(|r| format!("{} {}/{}", r.verb, r.namespace, r.name))
        .collect();
    assert_eq!(
        secret_calls,
        BTreeSet::from([
            format!("get {NS}/stowage-credentials"),
            "get b/restic-own".to_string()
        ]),
        "{log}"
    );
}

/// gc may read Secrets only by name (`get`): its credentials and the Secrets PVCs
/// name in `stowage.io/secret` (RBAC cannot name what users choose, so one
/// cluster-wide `get`; a Role for the credentials alone added nothing to it, measured
/// on the real authorizer by `tests/tests/kube/rbac.rs`). It used to list and delete
/// Secrets in every namespace: the per-run Secrets a Job owns go with their Job
/// through the garbage collector.
#[test]
fn gc_may_only_get_secrets() {
    let user = format!("system:serviceaccount:{NS}:stowage-gc");
    let objects = app_objects();
    let secrets: Vec<Grant> = grants(&objects)
        .into_iter()
        .filter(|g| g.user == user && g.resources.iter().any(|r| r == "secrets" || r == "*"))
        .collect();
    assert_eq!(secrets.len(), 1, "one rule for Secrets: {secrets:?}");
    assert_eq!(
        secrets[0].verbs,
        vec!["get".to_string()],
        "{:?}",
        secrets[0]
    );
}

/// A Pending PVC that names the stowage kind.
fn pending_pvc(api: &FakeApi, ns: &str, name: &str, class: &str, annotations: Value) {
    api.put::<PersistentVolumeClaim>(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"backup": "hourly"},
                     "annotations": annotations},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                 "resources": {"requests": {"storage": "1Gi"}},
                 "dataSourceRef": {"apiGroup": "stowage.io", "kind": "Restore", "name": name}}
    }));
}

/// The PV binder's part: every PVC of the stowage namespace (prime PVCs and the probe) gets a volume.
fn bind_primes(api: &FakeApi) {
    bind_claims(api, NS, "");
}

/// The restore Jobs prewarm created in `ns` (newest last).
fn restore_jobs(api: &FakeApi, ns: &str, uid: &str) -> Vec<String> {
    api.store()
        .list::<Job>(Some(ns))
        .into_iter()
        .filter(|j| {
            j.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get("stowage.io/pvc-uid").map(String::as_str) == Some(uid))
        })
        .map(|j| j.metadata.name.unwrap())
        .collect()
}

fn uid_of(api: &FakeApi, ns: &str, name: &str) -> String {
    let p: PersistentVolumeClaim = api.store().get(ns, name).unwrap();
    p.metadata.uid.unwrap()
}

/// prewarm's life: populate from a backup (prime PVC, restore Job and per-run Secret,
/// hand-over), a fresh install bound empty, an unsafe class refused with an Event, a
/// PVC restored with its own VolSync Secret whose restore fails and is retried, then is
/// deleted (abandoned prime and Job removed), the index ConfigMap created then updated,
/// and a manual restore (`restore-now`) refused while the app runs, then served.
fn prewarm_scenario(api: &FakeApi, program: &str) {
    use stowage_common::k8s::credentials::derive_repository_password;

    const MASTER: &str = "master secret";
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("backups");
    let base_s = base.to_str().unwrap().to_string();
    for ns in [NS, "a", "b"] {
        api.put::<Namespace>(json!({"metadata": {"name": ns}}));
    }
    api.put::<Secret>(json!({
        "metadata": {"name": "stowage-credentials", "namespace": NS},
        "stringData": {"master-password": MASTER, "mover-access-key-id": "AK",
                       "mover-secret-access-key": "SK"}
    }));
    for (name, provisioner, binding) in [
        ("local", "local.csi.openebs.io", "Immediate"),
        (
            "local-path",
            "rancher.io/local-path",
            "WaitForFirstConsumer",
        ),
    ] {
        api.put::<k8s_openapi::api::storage::v1::StorageClass>(
            json!({"metadata": {"name": name}, "provisioner": provisioner,
                   "volumeBindingMode": binding}),
        );
    }
    // The probe already found "local" safe; "local-path" is probed (on a Ready node,
    // WaitForFirstConsumer), provisioned, judged unsafe, and its probe and PV deleted.
    api.put::<ConfigMap>(json!({
            "metadata": {"name": "stowage-storage-classes", "namespace": NS},
            "data": {"local": r#"{"verdict":"safe","provisioner":"local.csi.openebs.io","judgedAt":"2026-11-23T09:00:00Z","detail":"probe"}"#}
        }),
    );
    api.put::<k8s_openapi::api::core::v1::Node>(json!({"metadata": {"name": "node-a"},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    // Backups: a/restored under the base (derived password), b/own in a VolSync
    // repository of its own.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f.txt"), "hello").unwrap();
    let restored_url = format!("{base_s}/a/restored");
    backup(
        &restored_url,
        &derive_repository_password(MASTER, &restored_url),
        &data,
        ("a", "restored"),
    );
    let own_url = format!("{}/volsync/own", dir.path().display());
    backup(&own_url, "own password", &data, ("b", "own"));
    api.put::<Secret>(json!({
        "metadata": {"name": "restic-own", "namespace": "b"},
        "stringData": {"RESTIC_REPOSITORY": own_url, "RESTIC_PASSWORD": "own password"}
    }));
    pending_pvc(api, "a", "restored", "local", json!({}));
    pending_pvc(api, "a", "fresh", "local", json!({}));
    pending_pvc(api, "a", "unsafe", "local-path", json!({}));
    pending_pvc(
        api,
        "b",
        "own",
        "local",
        json!({"stowage.io/secret": "restic-own"}),
    );
    let env = [
        ("STOWAGE_REPOSITORY_BASE", base_s.as_str()),
        ("STOWAGE_RESTORE_BACKOFF_SECONDS", "1"),
        ("STOWAGE_POLL_SECONDS", "1"),
        ("POD_NAME", "stowage-prewarm-1-abcde"),
    ];
    let once = |extra: &[&str]| {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        run(api, program, &args, &env)
    };
    // 1. Lookups, prime PVCs, the unsafe class refused (and probed), the index created.
    let log = once(&["--index-now"]);
    assert_eq!(
        api.store().list::<PersistentVolumeClaim>(Some(NS)).len(),
        4,
        "3 primes and a probe\n{log}"
    );
    assert!(
        api.store().get::<ConfigMap>(NS, "stowage-index").is_some(),
        "{log}"
    );
    // 2. Volumes bound: restores start, the fresh install is handed over.
    bind_primes(api);
    let log = once(&["--no-index"]);
    assert!(
        api.store()
            .get::<PersistentVolumeClaim>(NS, "stowage-probe-local-path")
            .is_none(),
        "probe judged and deleted\n{log}"
    );
    let cm: ConfigMap = api.store().get(NS, "stowage-storage-classes").unwrap();
    assert!(
        cm.data.unwrap()["local-path"].contains("\"unsafe\""),
        "{log}"
    );
    let (restored_uid, own_uid) = (uid_of(api, "a", "restored"), uid_of(api, "b", "own"));
    let ok_job = restore_jobs(api, NS, &restored_uid);
    let failing = restore_jobs(api, NS, &own_uid);
    assert_eq!((ok_job.len(), failing.len()), (1, 1), "{log}");
    // 3. One restore succeeds (hand-over: the mover restored the planned snapshot of
    //    the planned repository), one fails (retried after the backoff); the index is
    //    updated.
    let prime: PersistentVolumeClaim = api
        .store()
        .get(NS, &format!("stowage-prime-{restored_uid}"))
        .unwrap();
    let planned = prime.metadata.annotations.unwrap();
    finish(
        api,
        NS,
        &ok_job[0],
        true,
        &json!({"operation": "restore", "ok": true, "restored": true, "files": 1, "bytes": 5,
                "added_bytes": 0, "uploaded_bytes": 0, "downloaded_bytes": 0, "duration_secs": 0.1,
                "snapshot": planned["stowage.io/restore-snapshot"],
                "repository": planned["stowage.io/restore-repository"]})
        .to_string(),
    );
    finish(
        api,
        NS,
        &failing[0],
        false,
        r#"{"ok":false,"error":"bucket gone"}"#,
    );
    let log = once(&["--index-now"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let log2 = once(&["--no-index"]);
    assert_eq!(
        restore_jobs(api, NS, &own_uid).len(),
        2,
        "retried\n{log}\n{log2}"
    );
    // 4. The app with its own Secret is deleted: its prime and restore Job go.
    api.store()
        .delete::<PersistentVolumeClaim>("b", "own")
        .unwrap();
    let log = once(&["--no-index"]);
    assert!(restore_jobs(api, NS, &own_uid).is_empty(), "{log}");

    // 5. Manual restore into an existing PVC: refused while its app runs; refused when a
    //    pod appears after the request was taken (the Job, created suspended, is deleted
    //    unstarted); then served (the Job let start once no pod uses the volume).
    pvc(
        api,
        "a",
        "manual",
        json!({}),
        json!({"stowage.io/restore-now": "latest"}),
    );
    let manual = |api: &FakeApi| run(api, program, &["restore-now", "--duration", "2"], &env);
    let log = manual(api);
    let p: PersistentVolumeClaim = api.store().get("a", "manual").unwrap();
    let ann = p.metadata.annotations.unwrap();
    assert!(
        ann.get("stowage.io/restore-result")
            .is_some_and(|r| r.contains("in use")),
        "{ann:?}\n{log}"
    );
    api.store().delete::<Pod>("a", "app-manual").unwrap();
    let request = |api: &FakeApi| {
        api.store()
            .patch::<PersistentVolumeClaim>(
                "a",
                "manual",
                &json!({"metadata": {"annotations": {"stowage.io/restore-now": "latest"}}}),
            )
            .unwrap();
    };
    request(api);
    let one_round = |api: &FakeApi| run(api, program, &["restore-now", "--duration", "1"], &env);
    let log = one_round(api);
    let job = restore_jobs(api, "a", &uid_of(api, "a", "manual"));
    assert_eq!(job.len(), 1, "{log}");
    let suspended = |api: &FakeApi, name: &str| {
        api.store()
            .get::<Job>("a", name)
            .and_then(|j| j.spec?.suspend)
            == Some(true)
    };
    assert!(suspended(api, &job[0]), "created suspended\n{log}");
    // Flux scales the app up again before the restore started.
    api.put::<Pod>(json!({"metadata": {"name": "app-manual-2", "namespace": "a"},
               "spec": {"containers": [{"name": "app", "image": "app"}],
                        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "manual"}}]},
               "status": {"phase": "Running"}}),
    );
    let log = one_round(api);
    assert!(
        restore_jobs(api, "a", &uid_of(api, "a", "manual")).is_empty(),
        "the unstarted Job is deleted\n{log}"
    );
    let p: PersistentVolumeClaim = api.store().get("a", "manual").unwrap();
    let ann = p.metadata.annotations.unwrap();
    assert!(
        ann.get("stowage.io/restore-result")
            .is_some_and(|r| r.contains("in use")
                && r.contains("flux suspend kustomization")
                && r.contains("nothing was written")),
        "{ann:?}\n{log}"
    );
    api.store().delete::<Pod>("a", "app-manual-2").unwrap();
    request(api);
    let log = manual(api);
    let job = restore_jobs(api, "a", &uid_of(api, "a", "manual"));
    assert_eq!(job.len(), 1, "{log}");
    assert!(
        !suspended(api, &job[0]),
        "started once no pod uses the volume\n{log}"
    );
    finish(
        api,
        "a",
        &job[0],
        true,
        r#"{"operation":"restore","ok":true,"restored":true,"files":1,"bytes":5,"added_bytes":0,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":0.1}"#,
    );
    let log = manual(api);
    let p: PersistentVolumeClaim = api.store().get("a", "manual").unwrap();
    let ann = p.metadata.annotations.unwrap();
    assert!(
        ann.get("stowage.io/restore-result")
            .is_some_and(|r| r.starts_with("restored")),
        "{ann:?}\n{log}"
    );
}

#[test]
fn rbac_grants_exactly_what_each_program_uses() {
    let objects = app_objects();
    let grants = grants(&objects);
    let accounts: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["kind"] == "ServiceAccount")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let known: BTreeSet<String> = PROGRAMS.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(
        accounts, known,
        "every ServiceAccount in kustomize/app is a program of PROGRAMS, and back"
    );

    let mut problems = Vec::new();
    for p in PROGRAMS {
        let user = format!("system:serviceaccount:{NS}:{}", p.name);
        let Some(scenario) = p.scenario else {
            eprintln!(
                "NOT MEASURED: the RBAC of {} ({}/{}): no scenario yet",
                p.name,
                p.krate,
                if root().join(p.krate).exists() {
                    "exists"
                } else {
                    "not in the workspace yet"
                }
            );
            continue;
        };
        let api = FakeApi::start();
        scenario(&api, p.name);
        let requests: Vec<AuditRecord> = api
            .requests()
            .into_iter()
            .filter(|r| r.user == user)
            .collect();
        assert!(!requests.is_empty(), "{} made no API call", p.name);
        let mine: Vec<&Grant> = grants.iter().filter(|g| g.user == user).collect();

        // Nothing missing.
        let mut missing = BTreeMap::new();
        for r in &requests {
            if !mine.iter().any(|g| g.allows(r)) {
                let ns = if r.namespace.is_empty() {
                    "cluster".to_string()
                } else if r.namespace == NS {
                    format!("namespace {NS}")
                } else {
                    "app namespaces".to_string()
                };
                missing.insert(
                    format!(
                        "{} {} {}{} in {ns}{}",
                        r.verb,
                        if r.group.is_empty() { "core" } else { &r.group },
                        r.resource,
                        if r.subresource.is_empty() {
                            String::new()
                        } else {
                            format!("/{}", r.subresource)
                        },
                        if r.name.is_empty() {
                            String::new()
                        } else {
                            format!(" (name {})", r.name)
                        }
                    ),
                    (),
                );
            }
        }
        for m in missing.keys() {
            problems.push(format!("{}: MISSING permission: {m}", p.name));
        }

        // Nothing unused: every verb × group × resource × name of every rule.
        for g in &mine {
            let names: Vec<Option<&String>> = if g.names.is_empty() {
                vec![None]
            } else {
                g.names.iter().map(Some).collect()
            };
            for verb in &g.verbs {
                for group in &g.groups {
                    for res in &g.resources {
                        for name in &names {
                            let used = requests.iter().any(|r| {
                                let one = Grant {
                                    verbs: vec![verb.clone()],
                                    groups: vec![group.clone()],
                                    resources: vec![res.clone()],
                                    names: name.map(|n| vec![n.clone()]).unwrap_or_default(),
                                    ..(*g).clone()
                                };
                                one.allows(r)
                            });
                            if !used {
                                problems.push(format!(
                                    "{}: UNUSED permission ({}): {verb} {} {res}{}",
                                    p.name,
                                    g.origin,
                                    if group.is_empty() { "core" } else { group },
                                    name.map(|n| format!(" name {n}")).unwrap_or_default()
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "RBAC in kustomize/app differs from the API calls the programs make:\n{}",
        problems.join("\n")
    );
}
