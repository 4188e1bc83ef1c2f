//! Kubernetes API errors in a gc pass (fake API through the real `kube` client, the
//! real pass, repositories on Garage written by `restic`): failed lists and gets, 500s
//! and conflicts on deletes and on the state, an API server that does not answer in
//! time. A pass either fails clearly — it names the call and what to do — and then has
//! changed nothing, or it goes on with what it could do and fails at its end; the
//! re-run converges.

use crate::support;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use rustic_core::NoProgressBars;
use serde_json::json;
use stowage_common::env::GcConfig;
use stowage_common::k8s::mover_job::mover_labels;
use stowage_common::k8s::naming::Operation;
use stowage_common::locks::{self, LockInfo, LockKey};
use stowage_gc::pass::{self, PassOptions};
use stowage_testkit::fakeapi::Fault;
use stowage_testkit::garage;
use stowage_testkit::world::ApiWorld as World;
use support::*;

const LEADER: &str = "etcdserver: leader changed";
/// `data` keeps its newest snapshot; `long` keeps three, more than the default
/// retention (720 h before the newest) would.
const POLICIES: &str = "hourly: {schedule: \"@hourly\", retention: {keepLast: 1}}\n\
                        long: {schedule: \"@daily\", retention: {keepLast: 3}}\n";

/// The world of these tests: the PVCs `data` and `long` of their policies, each with
/// three snapshots.
fn world() -> World {
    let w = support::world("gc-api", POLICIES);
    for (name, policy) in [("data", "hourly"), ("long", "long")] {
        w.api.put::<PersistentVolumeClaim>(
            json!({"metadata": {"name": name, "namespace": "a", "labels": {"backup": policy}},
                   "spec": {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}}}}),
        );
    }
    repository_at(
        &w,
        "a",
        "data",
        10,
        &[
            "2026-03-01 00:00:00",
            "2026-03-10 00:00:00",
            "2026-03-15 00:00:00",
        ],
    );
    repository_at(
        &w,
        "a",
        "long",
        20,
        &[
            "2025-11-01 00:00:00",
            "2026-01-15 00:00:00",
            "2026-03-15 00:00:00",
        ],
    );
    w
}

fn data(w: &World) -> Vec<(String, String)> {
    w.repository_env("a", "data")
}

async fn pass(w: &World, now: Timestamp) -> anyhow::Result<pass::PassReport> {
    let cfg = GcConfig::from_vars(&[
        ("STOWAGE_REPOSITORY_BASE".to_string(), w.base()),
        ("STOWAGE_ALLOW_HTTP".into(), "true".into()),
        ("AWS_DEFAULT_REGION".into(), garage::REGION.into()),
    ])
    .unwrap();
    let opts = PassOptions {
        dry_run: false,
        now,
        ..PassOptions::default()
    };
    pass::run(w.api.client_for(USER), &cfg, opts).await
}

/// Snapshots of `data` and `long`.
fn counts(w: &World) -> (usize, usize) {
    (
        snapshot_count(&data(w)),
        snapshot_count(&w.repository_env("a", "long")),
    )
}

/// The lock files of a repository (the storage client blocks: off the runtime).
async fn lock_files(env: &[(String, String)]) -> Vec<String> {
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || lock_files_now(&env))
        .await
        .unwrap()
}

fn lock_files_now(env: &[(String, String)]) -> Vec<String> {
    access(env)
        .storage
        .list(locks::LOCKS_DIR)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// A lock of a mover pod that is long gone (two hours old).
async fn stale_lock(env: &[(String, String)]) -> String {
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || stale_lock_now(&env))
        .await
        .unwrap()
}

fn stale_lock_now(env: &[(String, String)]) -> String {
    let a = access(env);
    let repo = a.open(NoProgressBars).unwrap().unwrap();
    let key = LockKey::from_master(&repo.key()).unwrap();
    let info = LockInfo {
        time: Timestamp::now() - SignedDuration::from_mins(120),
        exclusive: false,
        hostname: "stowage-backup-data-gone-abc12".into(),
        username: "mover".into(),
        pid: 1,
        uid: 0,
        gid: 0,
    };
    let (name, bytes) = locks::encode(&key, &info);
    a.storage.write(locks::LOCKS_DIR, &name, bytes).unwrap();
    name
}

/// Each fact the pass cannot do without (PVCs, namespaces, the credentials, the
/// policies) failing in turn: the pass fails naming the call and what to do, and no
/// snapshot was forgotten — unreadable policies above all, which the default retention
/// would have cut down. With the API back the pass converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_without_its_facts_fails_clearly_and_forgets_nothing() {
    let w = world();
    // Two hours after the objects were created.
    let now = clock();
    for (fault, call) in [
        (
            Fault::error(500, "InternalError", LEADER)
                .verb("list")
                .resource("persistentvolumeclaims"),
            "cannot list persistentvolumeclaims in all namespaces",
        ),
        (
            Fault::error(500, "InternalError", LEADER)
                .verb("list")
                .resource("namespaces"),
            "cannot list namespaces",
        ),
        (
            Fault::error(500, "InternalError", LEADER)
                .verb("get")
                .resource("secrets")
                .name("stowage-credentials"),
            "cannot get secret stowage/stowage-credentials",
        ),
        (
            Fault::error(500, "InternalError", LEADER)
                .verb("get")
                .resource("configmaps")
                .name("stowage-policies"),
            "cannot get configmap stowage/stowage-policies",
        ),
    ] {
        w.api.inject(fault.times(1));
        let e = pass(&w, now).await.unwrap_err().to_string();
        assert!(e.contains(call) && e.contains(LEADER), "{e}");
        assert!(e.contains("the next run retries"), "says what to do: {e}");
        assert_eq!(counts(&w), (3, 3), "{call}: nothing forgotten");
    }
    let r = pass(&w, now).await.unwrap();
    assert!(!r.failed(), "{:?} {:?}", r.errors, r.damaged);
    assert_eq!(counts(&w), (1, 3), "each PVC's own policy applied");
}

/// Errors where the pass acts on the cluster — the pod list (the holders of locks), the
/// deletion of a finished Job, the state ConfigMap (500) — fail the pass at its end,
/// naming each call; the repositories were still maintained, and no lock was removed
/// for its age without the pod list. The re-run converges: Job (and with it its
/// per-run Secret) and stale lock gone, the state recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_while_cleaning_up_fail_the_pass_and_the_rerun_converges() {
    let w = world();
    // Two hours after the objects were created.
    let now = clock();
    let stale = stale_lock(&data(&w)).await;
    let job: Job = w.api.put(
        json!({"metadata": {"name": "stowage-backup-data-old", "namespace": "a",
                            "labels": mover_labels(Operation::Backup, "uid-data")},
               "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "x"}],
                                              "restartPolicy": "Never"}}}}),
    );
    let done = (Timestamp::now() - SignedDuration::from_hours(48)).to_string();
    w.api
        .store()
        .modify::<Job>("a", "stowage-backup-data-old", |j| {
            j.status = Some(
                serde_json::from_value(json!({"completionTime": done, "succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True",
                                    "lastTransitionTime": done}]}))
                .unwrap(),
            );
        })
        .unwrap();
    w.api.put::<Secret>(
        json!({"metadata": {"name": "stowage-backup-data-old", "namespace": "a",
                            "labels": mover_labels(Operation::Backup, "uid-data"),
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                "name": "stowage-backup-data-old", "uid": job.metadata.uid,
                                "controller": true}]},
               "stringData": {"RESTIC_PASSWORD": "x"}}),
    );
    w.api.inject(
        Fault::error(500, "InternalError", LEADER)
            .verb("list")
            .resource("pods")
            .times(1),
    );
    w.api.inject(
        Fault::error(500, "InternalError", LEADER)
            .verb("delete")
            .resource("jobs")
            .times(1),
    );
    w.api.inject(
        Fault::error(500, "InternalError", LEADER)
            .verb("patch")
            .resource("configmaps")
            .name("stowage-gc-state")
            .times(1),
    );
    let r = pass(&w, now).await.unwrap();
    assert!(r.failed());
    for call in [
        "cannot delete job a/stowage-backup-data-old",
        "cannot write configmap stowage/stowage-gc-state",
    ] {
        assert!(
            r.errors
                .iter()
                .any(|e| e.contains(call) && e.contains("the next run")),
            "{call}: {:?}",
            r.errors
        );
    }
    assert_eq!(counts(&w), (1, 3), "the repositories were maintained");
    assert!(
        lock_files(&data(&w)).await.contains(&stale),
        "no pod list: no lock removed for its age"
    );
    assert!(exists::<Job>(&w, "stowage-backup-data-old"));
    assert!(exists::<Secret>(&w, "stowage-backup-data-old"));

    let r = pass(&w, now).await.unwrap();
    assert!(!r.failed(), "{:?} {:?}", r.errors, r.damaged);
    assert!(
        !lock_files(&data(&w)).await.contains(&stale),
        "the stale lock went"
    );
    assert!(!exists::<Job>(&w, "stowage-backup-data-old"));
    assert!(!exists::<Secret>(&w, "stowage-backup-data-old"));
    assert!(
        w.api
            .store()
            .get::<ConfigMap>("stowage", "stowage-gc-state")
            .is_some()
    );
    restic(&data(&w), &["check"], None).ok();
}

/// The binary against an API server that does not answer its PVC list (a delay
/// fault far beyond the client timeout): the pass fails in time, names the call and
/// what to do, and has changed nothing; the next run succeeds.
#[test]
fn a_hung_api_server_fails_the_pass_in_time_and_the_next_run_converges() {
    let w = world();
    // Two hours after the objects were created.
    let now = clock();
    let run = || {
        let out = gc()
            .env("KUBECONFIG", w.api.kubeconfig_for(USER))
            .env("STOWAGE_REPOSITORY_BASE", w.base())
            .env("STOWAGE_ALLOW_HTTP", "true")
            .env("AWS_DEFAULT_REGION", garage::REGION)
            .env("STOWAGE_API_TIMEOUT_SECS", "1")
            .args(["--now", &now.to_string()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Every attempt hangs (the client's own retry of a timed-out request included).
    w.api.inject(
        Fault::delay(std::time::Duration::from_secs(20))
            .verb("list")
            .resource("persistentvolumeclaims"),
    );
    let started = std::time::Instant::now();
    let (code, log) = run();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot list persistentvolumeclaims in all namespaces")
            && log.contains("did not answer in time")
            && log.contains("STOWAGE_API_TIMEOUT_SECS"),
        "{log}"
    );
    // Only that the 1 s limit, not the 20 s delay, ended the pass.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(counts(&w), (3, 3));
    w.api.clear_faults();
    let (code, log) = run();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(counts(&w), (1, 3));
}
