//! What the day-2 scenarios on the real control plane share (`tests/tests/kube/
//! operations.rs`): runs started as an operator starts them (`kubectl create job
//! --from=cronjob/...`, `kubectl annotate`), their outcome and logs, Events, and the
//! restic repositories behind the PVCs, read with the restic CLI.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use ::kube::api::{Api, ListParams};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;

use super::scenario::{finished_job, first_with_labels, job_has};
use super::{Cluster, ControlPlane, WAIT, install};

/// The operations scenarios take turns, and run alone on the shared install: a gc pass
/// works on every repository of the cluster (it would prune or lock one under another
/// scenario's mover, and meet the fault proxy of another), so the scenarios that start
/// gc, movers or faults hold this ([`super::scenario::gc_turn`]).
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    super::scenario::gc_turn().await
}

/// Runs kubectl as the administrator; panics with its stderr if it fails.
pub fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = install::kubectl(cp, args, None);
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl -n ns annotate pvc name k=v... --overwrite` (an empty value removes `k`).
pub fn annotate(cp: &ControlPlane, ns: &str, pvc: &str, kv: &[(&str, &str)]) {
    let pairs: Vec<String> = kv
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                format!("{k}-")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    let mut args = vec!["-n", ns, "annotate", "pvc", pvc, "--overwrite"];
    args.extend(pairs.iter().map(String::as_str));
    kubectl_ok(cp, &args);
}

/// The annotations of PVC `ns/name`.
pub async fn annotations(
    client: &::kube::Client,
    ns: &str,
    name: &str,
) -> BTreeMap<String, String> {
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get pvc {ns}/{name}: {e}"))
        .metadata
        .annotations
        .unwrap_or_default()
}

/// A run of a program: its Job once finished, its pod's name and log.
pub struct Run {
    pub name: String,
    pub job: Job,
    pub pod: String,
    pub log: String,
}

impl Run {
    pub fn succeeded(&self) -> bool {
        job_has(&self.job, "Complete")
    }
}

/// The pod of Job `ns/job` and its log (stdout and stderr, as the kubelet kept them).
pub async fn job_pod_log(
    c: &Cluster,
    client: &::kube::Client,
    ns: &str,
    job: &str,
) -> (Pod, String) {
    let pod = first_with_labels(
        Api::<Pod>::namespaced(client.clone(), ns),
        &format!("batch.kubernetes.io/job-name={job}"),
        &format!("pod of Job {ns}/{job}"),
    )
    .await;
    let log = c
        .kubelet
        .log(ns, pod.metadata.name.as_deref().unwrap_or_default());
    (pod, log)
}

/// Every pod of Job `ns/job` with its log, oldest first (a Job with a backoff limit
/// runs several).
pub async fn job_logs(c: &Cluster, client: &::kube::Client, ns: &str, job: &str) -> String {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut out = String::new();
    for p in pods {
        let name = p.metadata.name.unwrap_or_default();
        out.push_str(&format!(
            "--- pod {ns}/{name} ---\n{}\n",
            c.kubelet.log(ns, &name)
        ));
    }
    out
}

/// `kubectl -n stowage create job --from=cronjob/<cronjob> <hint>-<n>`, as an operator
/// starts a run; waits until the Job finished.
pub async fn run_from(c: &Cluster, client: &::kube::Client, cronjob: &str, hint: &str) -> Run {
    let name = c.cp.unique_name(hint);
    install::create_job_from(c.cp, cronjob, &name)
        .unwrap_or_else(|e| panic!("kubectl create job --from=cronjob/{cronjob}: {e}"));
    finish_run(c, client, name).await
}

/// Waits for the Job `stowage/name` a run started.
pub async fn finish_run(c: &Cluster, client: &::kube::Client, name: String) -> Run {
    let job = finished_job(client, "stowage", &name).await;
    let (pod, log) = job_pod_log(c, client, "stowage", &name).await;
    Run {
        name,
        job,
        pod: pod.metadata.name.unwrap_or_default(),
        log,
    }
}

/// Notes of the Events (events.k8s.io/v1) of `reason` about the object `name` in `ns`.
pub async fn events(client: &::kube::Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .filter_map(|e| e.note)
        .collect()
}

/// Names of the Jobs of `ns` with `labels`.
pub async fn job_names(client: &::kube::Client, ns: &str, labels: &str) -> Vec<String> {
    let mut names: Vec<String> = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(labels))
        .await
        .expect("list jobs")
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    names.sort();
    names
}

/// The first Job of `ns` with `labels` whose name is not in `known`, awaited through a
/// watch.
pub async fn new_job(client: &::kube::Client, ns: &str, labels: &str, known: &[String]) -> Job {
    let api = Api::<Job>::namespaced(client.clone(), ns);
    let mut stream = watcher(api, watcher::Config::default().labels(labels))
        .applied_objects()
        .boxed();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(j) = stream.next().await {
            let j = j.unwrap_or_else(|e| panic!("watch jobs in {ns}: {e}"));
            if !known.iter().any(|k| Some(k) == j.metadata.name.as_ref()) {
                return j;
            }
        }
        panic!("watch of jobs in {ns} ended")
    })
    .await;
    found.unwrap_or_else(|_| panic!("no new Job ({labels}) in {ns} after {WAIT:?}"))
}

/// Waits until pod `ns/name` is gone (the kubelet killed its process and removed it).
pub async fn pod_gone(client: &::kube::Client, ns: &str, name: &str) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let gone = ::kube::runtime::wait::await_condition(api, name, |p: Option<&Pod>| p.is_none());
    tokio::time::timeout(WAIT, gone)
        .await
        .unwrap_or_else(|_| panic!("pod {ns}/{name} still there after {WAIT:?}"))
        .expect("watch pod");
}

/// Waits until Job `ns/name` is gone.
pub async fn job_gone(client: &::kube::Client, ns: &str, name: &str) {
    let api = Api::<Job>::namespaced(client.clone(), ns);
    let gone = ::kube::runtime::wait::await_condition(api, name, |j: Option<&Job>| j.is_none());
    tokio::time::timeout(WAIT, gone)
        .await
        .unwrap_or_else(|_| panic!("Job {ns}/{name} still there after {WAIT:?}"))
        .expect("watch job");
}

/// The environment of the restic CLI for repository `url` with `password` on the
/// shared Garage (directly, not through any proxy).
pub fn restic_env(url: &str, password: &str) -> Vec<(String, String)> {
    let g = crate::garage::shared();
    vec![
        ("RESTIC_REPOSITORY".into(), url.to_string()),
        ("RESTIC_PASSWORD".into(), password.to_string()),
        ("AWS_ACCESS_KEY_ID".into(), g.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), g.secret_key.clone()),
        ("AWS_DEFAULT_REGION".into(), crate::garage::REGION.into()),
        // restic reads --time in local time.
        ("TZ".into(), "UTC".into()),
    ]
}

/// Runs the restic CLI with `env` in `cwd`; panics with its output if it fails.
pub fn restic(env: &[(String, String)], args: &[&str], cwd: Option<&Path>) -> String {
    let mut cmd = Command::new("restic");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "RESTIC_CACHE_DIR",
            std::env::temp_dir().join("stowage-kube-restic-cache"),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(Stdio::null());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd
        .output()
        .expect("run restic (the restic CLI from Debian)");
    assert!(
        out.status.success(),
        "restic {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The snapshots of the repository (restic's JSON), oldest first.
pub fn snapshots(env: &[(String, String)]) -> Vec<serde_json::Value> {
    let text = restic(env, &["snapshots", "--json", "--no-lock"], None);
    let mut v: Vec<serde_json::Value> = serde_json::from_str(&text).expect("snapshots --json");
    v.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    v
}

/// Deletes namespace `ns` (without waiting) when dropped: a scenario whose PVCs point
/// at something that ends with it (a fault proxy) leaves nothing for later passes.
pub struct DeleteNamespace {
    pub cp: &'static ControlPlane,
    pub ns: String,
}

impl Drop for DeleteNamespace {
    fn drop(&mut self) {
        // First what names the proxy (a gc pass reads a PVC's own Secret), then the rest.
        let _ = install::kubectl(
            self.cp,
            &[
                "-n",
                &self.ns,
                "annotate",
                "pvc",
                "--all",
                "stowage.io/secret-",
            ],
            None,
        );
        let _ = install::kubectl(
            self.cp,
            &["delete", "namespace", &self.ns, "--wait=false"],
            None,
        );
    }
}
