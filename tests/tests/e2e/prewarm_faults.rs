//! Zero-touch restore under faults, end to end in the cluster simulator: the real
//! `stowage-prewarm` and the real `stowage-mover` in its restore Jobs talk to Garage
//! through the fault proxy.
//!
//! - S3 faults at rates: a populate and an index run complete through retries.
//! - SIGKILL at each step of a populate: prewarm killed during its S3 lookup and at each
//!   of its API calls (held by the fake API until the process is dead, then dropped),
//!   the restore's mover killed at request N of its S3 traffic. The next prewarm run
//!   continues the work; the volume is never bound before its restore completed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use stowage_common::k8s::contract::{prewarm as pc, status};
use stowage_testkit::fakeapi::{Fault, Gvr, Store};
use stowage_testkit::proxy::Rates;
use stowage_testkit::sim::{NodeSpec, StorageClassSpec, digest};
use stowage_testkit::world::{
    Keys, PREWARM, WAIT, World, WorldBuilder, bound, log_of, restore_pvc,
};
use stowage_testkit::{bins, cli, trees};

const MASTER: &str = "prewarm faults master password";

/// One node, the programs reach Garage through the fault proxy.
fn builder() -> WorldBuilder {
    World::builder(MASTER)
        .node(NodeSpec::new("node-a"))
        // Judged safe by an earlier probe (probing: prewarm_e2e).
        .safe_storage_class(StorageClassSpec::local_csi("local").default_class())
        .mover_keys(Keys::Garage)
        .bucket("prewarm-faults")
        .fault_proxy()
}

fn world() -> World {
    builder().build()
}

/// The world whose mover image runs `mover` (a stand-in that reports what a test
/// needs).
fn world_with_mover(mover: PathBuf) -> World {
    builder().binary("stowage-mover", mover).build()
}

/// The app: its PVC populated through the Restore object `restore` (none: its own
/// backups), and a pod using it on node-a.
fn apply_app(w: &World, ns: &str, pvc: &str, restore: Option<&str>) {
    if w.cluster
        .store()
        .get::<k8s_openapi::api::core::v1::Namespace>("", ns)
        .is_none()
    {
        w.cluster.create_namespace(ns, &[]).unwrap();
    }
    let spec = restore_pvc(pvc, restore.unwrap_or(pvc)).class("local");
    w.cluster.create_pvc(ns, &spec).unwrap();
    w.cluster
        .create_app_pod(ns, &format!("app-{pvc}"), pvc, Some("node-a"), None, &[])
        .unwrap();
}

fn dir(w: &World, ns: &str, pvc: &str) -> PathBuf {
    w.cluster.volume_dir(ns, pvc).unwrap()
}

fn pvc_uid(w: &World, ns: &str, pvc: &str) -> String {
    w.cluster
        .store()
        .get::<PersistentVolumeClaim>(ns, pvc)
        .and_then(|p| p.metadata.uid)
        .unwrap()
}

/// The restore Jobs of the PVC with this UID.
fn jobs_of(s: &Store, uid: &str) -> Vec<Job> {
    s.list::<Job>(Some("stowage"))
        .into_iter()
        .filter(|j| {
            j.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("stowage.io/pvc-uid"))
                .is_some_and(|u| u == uid)
        })
        .collect()
}

fn complete(j: &Job) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

fn prime_of(s: &Store, uid: &str) -> Option<PersistentVolumeClaim> {
    s.list::<PersistentVolumeClaim>(Some("stowage"))
        .into_iter()
        .find(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(pc::prime::FOR_UID))
                .is_some_and(|u| u == uid)
        })
}

fn events(s: &Store, ns: &str, pvc: &str, reason: &str) -> usize {
    s.list::<Event>(Some(ns))
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pvc)
        })
        .count()
}

/// The guard of every wait: a bound volume is a completely restored one. Panics
/// otherwise; `true` when bound.
fn bound_only_when_restored(
    w: &World,
    s: &Store,
    ns: &str,
    pvc: &str,
    expected: &BTreeMap<String, String>,
    case: &str,
) -> bool {
    if !bound(s, ns, pvc) {
        return false;
    }
    let uid = s
        .get::<PersistentVolumeClaim>(ns, pvc)
        .and_then(|p| p.metadata.uid)
        .unwrap_or_default();
    // Its restore Job completed, or went with the prime PVC once it had (the hand-over
    // recorded what was restored).
    let jobs = jobs_of(s, &uid);
    let recorded = s
        .get::<PersistentVolumeClaim>(ns, pvc)
        .and_then(|p| p.metadata.annotations)
        .is_some_and(|a| a.contains_key(status::POPULATED_FROM));
    assert!(
        jobs.iter().any(complete) || (jobs.is_empty() && recorded),
        "{case}: {ns}/{pvc} bound before its restore Job completed"
    );
    assert_eq!(
        &digest::entries(&dir(w, ns, pvc)),
        expected,
        "{case}: {ns}/{pvc} bound with content other than the snapshot's"
    );
    true
}

/// Content with the metadata a restore must bring back.
fn fill(dir: &Path, seed: u64) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("hello.txt"), format!("hello {seed}\n")).unwrap();
    trees::write_random(&dir.join("sub/blob.bin"), 300_000, seed);
    trees::write_random(&dir.join("big.bin"), 3 << 20, seed + 1);
    trees::many_small(&dir.join("small"), 60, seed + 2);
    std::fs::write(dir.join("sub/deeper/secret.conf"), "k=v\n").unwrap();
    std::fs::set_permissions(
        dir.join("sub/deeper/secret.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let _ = std::os::unix::fs::symlink("sub/blob.bin", dir.join("link"));
}

/// Until `ns/pvc` is populated (bound, its prime gone, the Restored Event out unless
/// `no_event`), with the bound-only-when-restored guard on every change.
async fn populated_as(
    w: &World,
    ns: &str,
    pvc: &str,
    expected: &BTreeMap<String, String>,
    case: &str,
    log: &str,
    no_event: bool,
) {
    let r = w
        .cluster
        .wait_for(WAIT, |s| {
            let uid = s
                .get::<PersistentVolumeClaim>(ns, pvc)
                .and_then(|p| p.metadata.uid)?;
            (bound_only_when_restored(w, s, ns, pvc, expected, case)
                && prime_of(s, &uid).is_none()
                && (no_event || events(s, ns, pvc, pc::reason::RESTORED) > 0))
                .then_some(())
        })
        .await;
    if r.is_err() {
        panic!(
            "{case}: {ns}/{pvc} not populated\n--- prewarm\n{}\n--- pods\n{}",
            w.cluster.program_log(log),
            w.cluster.all_pod_logs()
        );
    }
}

async fn populated(
    w: &World,
    ns: &str,
    pvc: &str,
    expected: &BTreeMap<String, String>,
    case: &str,
    log: &str,
) {
    populated_as(w, ns, pvc, expected, case, log, false).await
}

async fn stop(mut child: tokio::process::Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// A stand-in mover: reports `result` as its result line and exits 0 (empty: runs the
/// real mover). Replaced atomically, so a pod never starts a half-written script.
fn fake_mover(path: &Path, result: Option<&str>) {
    use std::os::unix::fs::PermissionsExt;
    let body = match result {
        Some(line) => format!(
            "#!/bin/sh\nprintf '%s\\n' '{line}'\nprintf '%s' '{line}' > \"$STOWAGE_RESULT_FILE\"\n"
        ),
        None => format!(
            "#!/bin/sh\nexec '{}' \"$@\"\n",
            bins::path("stowage-mover").display()
        ),
    };
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, body).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A restore Job whose mover exits 0 without restoring what prewarm planned (nothing:
/// `restored: false`) is a failed attempt: the PVC stays Pending, a
/// `RestoreMismatch` Event says what differed, the restore is retried with backoff, and
/// only an attempt that restored the planned snapshot of the planned repository binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_restored_nothing_or_another_snapshot_is_never_bound() {
    let bin = tempfile::tempdir().unwrap();
    let mover = bin.path().join("fake-mover");
    fake_mover(
        &mover,
        Some(
            r#"{"operation":"restore","ok":true,"files":0,"bytes":0,"added_bytes":0,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":0.1,"restored":false}"#,
        ),
    );
    let w = world_with_mover(mover.clone());
    let src = tempfile::tempdir().unwrap();
    fill(src.path(), 41);
    let expected = digest::entries(src.path());
    w.backup("app", "data", src.path());
    apply_app(&w, "app", "data", None);
    let (child, log) = w.spawn_prewarm(&[]);

    // 1. restored:false: never bound, an Event that says so.
    let note = |s: &Store| {
        s.list::<Event>(Some("app"))
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(pc::reason::RESTORE_MISMATCH))
            .filter_map(|e| e.note)
            .collect::<Vec<_>>()
    };
    let r = w
        .cluster
        .wait_for(WAIT, |s| {
            assert!(
                !bound(s, "app", "data"),
                "bound after a restore that restored nothing"
            );
            note(s)
                .iter()
                .any(|n| n.contains("restored nothing"))
                .then_some(())
        })
        .await;
    if r.is_err() {
        panic!(
            "no RestoreMismatch Event\n{}\n{}",
            w.cluster.program_log(&log),
            w.cluster.all_pod_logs()
        );
    }
    let pvc: PersistentVolumeClaim = w.cluster.store().get("app", "data").unwrap();
    assert_eq!(
        pvc.metadata
            .annotations
            .unwrap_or_default()
            .get(status::POPULATED_FROM),
        None
    );
    // 3. The real mover: the planned snapshot restored, bound with its content.
    fake_mover(&mover, None);
    populated(&w, "app", "data", &expected, "real mover", &log).await;
    stop(child).await;
}

/// Throttling, resets, cut bodies and latency on a fifth of the S3 requests of
/// prewarm's lookup, of the restore mover and of an index run: the PVC is populated
/// with the snapshot's exact content, the index lists the repository with its newest
/// snapshot, and the repository checks clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn populate_and_index_complete_through_s3_faults_at_rates() {
    let w = world();
    let src = tempfile::tempdir().unwrap();
    fill(src.path(), 3);
    let expected = digest::entries(src.path());
    let snapshot = w.backup("db", "pg", src.path());

    w.proxy().set_rates(Rates::mix(21));
    apply_app(&w, "db", "pg", None);
    let (child, log) = w.spawn_prewarm(&[]);
    populated(&w, "db", "pg", &expected, "rates", &log).await;
    stop(child).await;
    let injected = w.proxy().injected();
    eprintln!(
        "populate: {} requests, injected {injected:?}",
        w.proxy().requests()
    );
    assert!(
        injected.slow_down > 0 && injected.total() > 5,
        "{injected:?}"
    );
    let p: PersistentVolumeClaim = w.cluster.store().get("db", "pg").unwrap();
    assert_eq!(
        p.metadata.annotations.unwrap().get(status::POPULATED_FROM),
        Some(&snapshot)
    );

    let before = w.proxy().injected().total();
    let out = w
        .run(
            "stowage-prewarm",
            &["--once", "--index-now"],
            &w.prewarm_env(),
            PREWARM,
        )
        .await;
    let log = log_of(&out);
    assert!(out.status.success(), "{log}");
    w.proxy().clear();
    let cm: ConfigMap = w.cluster.store().get("stowage", "stowage-index").unwrap();
    let idx: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().unwrap()[pc::INDEX_KEY]).unwrap();
    let repos = idx["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 1, "{idx}");
    assert!(repos[0].get("error").is_none(), "{idx}");
    assert_eq!(repos[0]["latest"]["id"].as_str(), Some(snapshot.as_str()));
    eprintln!(
        "index: injected {} faults",
        w.proxy().injected().total() - before
    );
    assert!(
        w.proxy().injected().total() > before,
        "faults during the index"
    );

    let check = cli::restic(
        &w.repository_env("db", "pg"),
        &["check", "--read-data"],
        None,
    );
    assert!(check.status.success(), "{}", log_of(&check));
}

/// Where a populate is interrupted.
enum Kill {
    /// prewarm SIGKILLed while request `n` of its S3 lookup of the backup is held.
    Lookup(u64),
    /// prewarm SIGKILLed while this API call of it is held (verb, resource,
    /// namespace; the user PVC's name when the namespace is the app's).
    Call(&'static str, &'static str, &'static str),
    /// The restore Job's mover SIGKILLed at request `n` of its S3 traffic; prewarm runs
    /// on.
    Mover(u64),
}

impl Kill {
    fn describe(&self) -> String {
        match self {
            Kill::Lookup(n) => format!("prewarm killed at S3 request {n} of its lookup"),
            Kill::Call(v, r, "") => format!("prewarm killed at its {v} {r}"),
            Kill::Call(v, r, ns) => format!("prewarm killed at its {v} {r} in {ns}"),
            Kill::Mover(n) => format!("restore mover killed at its S3 request {n}"),
        }
    }
}

/// A populate interrupted at each of its steps, one PVC per step (each restores the
/// same backup into the namespace `staging` through one Restore object): the next
/// prewarm run finishes it with the snapshot's exact content, one Restored Event, one
/// restore Job; no volume is ever bound before its restore completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populate_killed_at_each_step_is_continued_and_never_binds_a_half_restored_volume() {
    let w = world();
    let src = tempfile::tempdir().unwrap();
    fill(src.path(), 5);
    let expected = digest::entries(src.path());
    let snapshot = w.backup("db", "pg", src.path());
    w.cluster.create_namespace("staging", &[]).unwrap();
    // A restore from another namespace needs that namespace's grant (the source
    // namespace of the data, which this cluster does not otherwise have).
    let db: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
        "metadata": {"name": "db", "annotations": {
            stowage_common::k8s::grant::GRANT_ANNOTATION: "staging"}}}))
    .unwrap();
    w.cluster.store().create(&db).unwrap();
    w.cluster
        .store()
        .create_json(
            &Gvr::new("stowage.io", "v1alpha1", "restores"),
            "staging",
            json!({"apiVersion": "stowage.io/v1alpha1", "kind": "Restore",
                   "metadata": {"name": "from-db", "namespace": "staging"},
                   "spec": {"sourceNamespace": "db", "sourcePvc": "pg"}}),
        )
        .unwrap();

    // The uninterrupted populate, counted: the lookup's requests (until the prime PVC
    // exists) and the mover's (until its Job completed).
    apply_app(&w, "staging", "copy-0", Some("from-db"));
    let uid = pvc_uid(&w, "staging", "copy-0");
    let start = w.proxy().requests();
    let (child, log) = w.spawn_prewarm(&[]);
    let at_prime = w
        .cluster
        .wait_for(WAIT, |s| prime_of(s, &uid).map(|_| w.proxy().requests()))
        .await
        .unwrap();
    let at_done = w
        .cluster
        .wait_for(WAIT, |s| {
            jobs_of(s, &uid)
                .iter()
                .any(complete)
                .then(|| w.proxy().requests())
        })
        .await
        .unwrap();
    populated(&w, "staging", "copy-0", &expected, "uninterrupted", &log).await;
    stop(child).await;
    let lookup = at_prime - start;
    let mover = at_done - at_prime;
    eprintln!("lookup: {lookup} requests, restore: {mover} requests");
    assert!(lookup > 0 && mover > 2);

    let kills = [
        Kill::Lookup(lookup.div_ceil(2)),
        Kill::Call("create", "persistentvolumeclaims", "stowage"),
        Kill::Call("create", "jobs", "stowage"),
        Kill::Call("create", "secrets", "stowage"),
        Kill::Mover(1),
        Kill::Mover(mover / 2),
        Kill::Mover(mover),
        Kill::Call("patch", "persistentvolumeclaims", "staging"),
        Kill::Call("patch", "persistentvolumes", ""),
        Kill::Call("delete", "persistentvolumeclaims", "stowage"),
    ];
    for (i, kill) in kills.iter().enumerate() {
        let pvc = format!("copy-{}", i + 1);
        let case = format!("case {}/{}: {}", i + 1, kills.len(), kill.describe());
        apply_app(&w, "staging", &pvc, Some("from-db"));
        let uid = pvc_uid(&w, "staging", &pvc);
        let store = w.cluster.store();
        match kill {
            Kill::Lookup(n) => {
                let pause = w.proxy().pause_at(w.proxy().requests() + n);
                let (child, _) = w.spawn_prewarm(&[]);
                assert!(pause.wait_async(WAIT).await, "{case}: never reached");
                stop(child).await; // SIGKILL
                drop(pause);
                assert!(prime_of(store, &uid).is_none(), "{case}: no prime yet");
            }
            Kill::Call(verb, resource, ns) => {
                let (fault, pause) = Fault::hold();
                let mut fault = fault.user(PREWARM).verb(verb).resource(resource).times(1);
                if !ns.is_empty() {
                    fault = fault.namespace(ns);
                }
                if *ns == "staging" {
                    fault = fault.name(&pvc);
                }
                w.cluster.api().inject(fault);
                let (child, log) = w.spawn_prewarm(&[]);
                if !pause.wait_async(WAIT).await {
                    panic!("{case}: never reached\n{}", w.cluster.program_log(&log));
                }
                stop(child).await; // SIGKILL
                drop(pause); // the held call is never executed
                let s = store;
                if *verb != "create" {
                    assert!(
                        jobs_of(s, &uid).iter().any(complete),
                        "{case}: the kill came after the restore"
                    );
                }
                if *verb != "delete" {
                    assert!(!bound(s, "staging", &pvc), "{case}: not bound");
                }
                bound_only_when_restored(&w, s, "staging", &pvc, &expected, &case);
            }
            Kill::Mover(n) => {
                let (child, log) = w.spawn_prewarm(&[]);
                w.cluster
                    .wait_for(WAIT, |s| prime_of(s, &uid).map(|_| ()))
                    .await
                    .unwrap();
                // From here on only the restore's mover talks to S3.
                let pause = w.proxy().pause_at(w.proxy().requests() + n);
                if !pause.wait_async(WAIT).await {
                    panic!("{case}: never reached\n{}", w.cluster.all_pod_logs());
                }
                let pod = store
                    .list::<Pod>(Some("stowage"))
                    .into_iter()
                    .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                    .unwrap_or_else(|| panic!("{case}: the mover's pod runs"));
                assert!(
                    w.cluster
                        .kill_pod("stowage", pod.metadata.name.as_deref().unwrap()),
                    "{case}: the mover was running"
                );
                drop(pause);
                // The restore Job as it finished (it goes with the prime once handed over).
                let job = w
                    .cluster
                    .wait_for(WAIT, |s| {
                        jobs_of(s, &uid)
                            .into_iter()
                            .find(|j| j.status.as_ref().and_then(|s| s.succeeded) == Some(1))
                    })
                    .await
                    .unwrap_or_else(|_| panic!("{case}: the restore Job did not finish"));
                populated(&w, "staging", &pvc, &expected, &case, &log).await;
                stop(child).await;
                assert!(jobs_of(store, &uid).len() <= 1, "{case}");
                assert_eq!(
                    job.status.as_ref().unwrap().failed,
                    Some(1),
                    "{case}: one pod killed, the retry finished"
                );
            }
        }
        // Killed between the PV's move and the prime's deletion, the run never got to
        // its Restored Event; the next run only deletes the prime (the PVC is bound and
        // its annotations record the restore).
        let event_lost = matches!(kill, Kill::Call("delete", ..));
        if !matches!(kill, Kill::Mover(_)) {
            let (child, log) = w.spawn_prewarm(&[]);
            populated_as(&w, "staging", &pvc, &expected, &case, &log, event_lost).await;
            stop(child).await;
            assert!(
                jobs_of(store, &uid).len() <= 1,
                "{case}: at most the one restore Job (it goes with its prime)"
            );
        }
        let p: PersistentVolumeClaim = store.get("staging", &pvc).unwrap();
        assert_eq!(
            p.metadata.annotations.unwrap().get(status::POPULATED_FROM),
            Some(&snapshot),
            "{case}"
        );
        assert_eq!(
            events(store, "staging", &pvc, pc::reason::RESTORED),
            usize::from(!event_lost),
            "{case}: one hand-over"
        );
        assert_eq!(events(store, "staging", &pvc, pc::reason::BOUND_EMPTY), 0);
        eprintln!("{case}: ok");
    }
}
