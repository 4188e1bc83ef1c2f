//! Zero-touch restore end to end in the cluster simulator: the real `stowage-prewarm`
//! populates PVCs that name the stowage kind, the simulated Job controller runs the
//! real `stowage-mover` restores against the real S3 server (Garage), and the real
//! `stowage-scheduler` backs the volumes up before and after.

use std::collections::BTreeMap;
use std::path::PathBuf;
use stowage_testkit::obj;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use stowage_common::k8s::contract::{prewarm as pc, reason, status, user};
use stowage_testkit::fakeapi::{Gvr, Store};
use stowage_testkit::sim::{NodeSpec, PvcSpec, StorageClassSpec, digest};
use stowage_testkit::world::{
    Keys, POLICIES, PREWARM, WAIT, World, bound, log_of, prime_pvcs, restore_pvc,
};
use stowage_testkit::{bins, garage, trees};

const MASTER: &str = "prewarm e2e master password";
/// The simulated provisioners answer within a fraction of a second.
const PROBE_SECONDS: (&str, &str) = ("STOWAGE_PROBE_SECONDS", "3");

fn world() -> World {
    world_with_classes(vec![])
}

/// The world with more storage classes.
fn world_with_classes(extra: Vec<StorageClassSpec>) -> World {
    let mut builder = World::builder(MASTER)
        .node(NodeSpec::new("node-a"))
        .node(NodeSpec::new("node-b"))
        .storage_class(StorageClassSpec::local_csi("local").default_class())
        .storage_class(StorageClassSpec::local_path("local-path"));
    for c in extra {
        builder = builder.storage_class(c);
    }
    builder
        .policies(POLICIES)
        .mover_keys(Keys::Garage)
        .bucket("prewarm-e2e")
        // The manual restore template's Job runs stowage-prewarm as a pod.
        .binary("stowage-prewarm", bins::path("stowage-prewarm"))
        .build()
}

/// The PVC as written in Git: restore from backup, back up hourly.
fn pvc_spec(name: &str) -> PvcSpec {
    restore_pvc(name, name)
        .class("local")
        .label("backup", "hourly")
}

/// Applies the PVC and an app pod using it on `node`.
fn apply_app(w: &World, ns: &str, spec: &PvcSpec, node: &str) {
    if w.cluster
        .store()
        .get::<k8s_openapi::api::core::v1::Namespace>("", ns)
        .is_none()
    {
        w.cluster.create_namespace(ns, &[]).unwrap();
    }
    w.cluster.create_pvc(ns, spec).unwrap();
    w.cluster
        .create_app_pod(
            ns,
            &format!("app-{}", spec.name),
            &spec.name,
            Some(node),
            Some((1000, 1000)),
            &[],
        )
        .unwrap();
}

/// prewarm's environment in these scenarios.
fn prewarm_env(w: &World) -> Vec<(String, String)> {
    let mut env = w.prewarm_env();
    env.push((PROBE_SECONDS.0.into(), PROBE_SECONDS.1.into()));
    env
}

/// One prewarm round (`--once`).
async fn prewarm_once(w: &World, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--once"];
    args.extend_from_slice(extra);
    let out = w
        .run("stowage-prewarm", &args, &prewarm_env(w), PREWARM)
        .await;
    (out.status.success(), log_of(&out))
}

/// A prewarm run (polling every second, as the CronJob's run does) until `check`
/// holds; then the run is stopped.
async fn prewarm_until<T>(w: &World, what: &str, check: impl FnMut(&Store) -> Option<T>) -> T {
    let mut child = spawn_prewarm(w);
    let r = w.cluster.wait_for(WAIT, check).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    match r {
        Ok(t) => t,
        Err(e) => panic!(
            "{what}: {e}\n--- prewarm\n{}\n--- pods\n{}",
            w.last_prewarm_log(),
            w.cluster.all_pod_logs()
        ),
    }
}

fn spawn_prewarm(w: &World) -> tokio::process::Child {
    w.spawn_prewarm(&[PROBE_SECONDS]).0
}

async fn populate(w: &World, pvcs: &[(&str, &str)]) {
    let list: Vec<(String, String)> = pvcs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    // Bound, prime PVCs gone, and the closing Event published: the populate is over.
    prewarm_until(w, "PVCs bound", move |s| {
        let done = list.iter().all(|(ns, p)| {
            bound(s, ns, p)
                && s.list::<Event>(Some(ns)).iter().any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(p.as_str())
                        && matches!(
                            e.reason.as_deref(),
                            Some(pc::reason::RESTORED) | Some(pc::reason::BOUND_EMPTY)
                        )
                        && e.regarding.as_ref().and_then(|r| r.uid.as_deref())
                            == s.get::<PersistentVolumeClaim>(ns, p)
                                .and_then(|x| x.metadata.uid)
                                .as_deref()
                })
        });
        (done && s.list::<PersistentVolumeClaim>(Some("stowage")).is_empty()).then_some(())
    })
    .await;
}

fn backup_jobs(w: &World) -> Vec<Job> {
    w.cluster
        .store()
        .list::<Job>(None)
        .into_iter()
        .filter(|j| {
            j.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("stowage.io/operation"))
                .is_some_and(|o| o == "backup")
        })
        .collect()
}

/// A backup of every opted-in PVC through the scheduler, results recorded.
async fn backup(w: &World, now: &str, then: &str) {
    let (ok, log) = w.scheduler(now).await;
    assert!(ok, "{log}");
    eprintln!("scheduler at {now}:\n{log}");
    w.jobs_finished().await;
    let (ok, log) = w.scheduler(then).await;
    assert!(ok, "{log}");
}

fn dir(w: &World, ns: &str, pvc: &str) -> PathBuf {
    w.cluster.volume_dir(ns, pvc).unwrap()
}

fn primes(w: &World) -> Vec<PersistentVolumeClaim> {
    prime_pvcs(w.cluster.store(), "stowage")
}

/// A prewarm run until the probe judged `class` (a PVC of the class waits).
async fn judged(w: &World, class: &str) {
    let class = class.to_string();
    prewarm_until(w, "storage class judged", move |s| {
        let cm: ConfigMap = s.get("stowage", pc::probe::CONFIGMAP)?;
        cm.data?.contains_key(&class).then_some(())
    })
    .await;
}

/// The probe verdict recorded for a storage class (`safe`/`unsafe`).
fn verdict(w: &World, class: &str) -> Option<String> {
    let cm: ConfigMap = w.cluster.store().get("stowage", pc::probe::CONFIGMAP)?;
    let v: serde_json::Value = serde_json::from_str(cm.data?.get(class)?).expect("verdict JSON");
    v["verdict"].as_str().map(str::to_string)
}

/// Content with the metadata a restore must bring back.
fn fill(dir: &std::path::Path, seed: u64) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("hello.txt"), format!("hello {seed}\n")).unwrap();
    trees::write_random(&dir.join("sub/blob.bin"), 300_000, seed);
    std::fs::write(dir.join("sub/deeper/secret.conf"), "k=v\n").unwrap();
    std::fs::set_permissions(
        dir.join("sub/deeper/secret.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let _ = std::os::unix::fs::symlink("sub/blob.bin", dir.join("link"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_install_binds_empty_then_the_scheduler_backs_it_up() {
    let w = world();
    apply_app(&w, "app", &pvc_spec("data"), "node-a");
    populate(&w, &[("app", "data")]).await;
    assert_eq!(
        w.ann("app", "data", pc::status::BOUND_EMPTY).as_deref(),
        Some(pc::EMPTY_NO_BACKUP)
    );
    assert_eq!(w.ann("app", "data", status::POPULATED_FROM), None);
    assert_eq!(w.events("app", "data", pc::reason::BOUND_EMPTY).len(), 1);
    assert!(primes(&w).is_empty(), "prime PVC deleted");
    assert_eq!(
        std::fs::read_dir(dir(&w, "app", "data")).unwrap().count(),
        0
    );
    // The app writes; the scheduler backs it up (no history: no guard in the way).
    fill(&dir(&w, "app", "data"), 1);
    backup(&w, "2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z").await;
    assert_eq!(
        w.ann("app", "data", status::LAST_RESULT).as_deref(),
        Some("Succeeded"),
        "{}",
        w.cluster.all_pod_logs()
    );
    assert_eq!(w.snapshots("app", "data").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rebuild_restores_every_pvc_before_any_backup() {
    let w = world();
    let apps = [
        ("db", "pg-data", "node-a"),
        ("db", "pg-wal", "node-b"),
        ("web", "uploads", "node-a"),
    ];
    for (ns, pvc, node) in apps {
        apply_app(&w, ns, &pvc_spec(pvc), node);
    }
    let keys: Vec<(&str, &str)> = apps.iter().map(|(n, p, _)| (*n, *p)).collect();
    populate(&w, &keys).await;
    for (i, (ns, pvc, _)) in apps.iter().enumerate() {
        fill(&dir(&w, ns, pvc), i as u64);
    }
    backup(&w, "2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z").await;
    let mut before = BTreeMap::new();
    for (ns, pvc, _) in apps {
        assert_eq!(
            w.ann(ns, pvc, status::LAST_RESULT).as_deref(),
            Some("Succeeded")
        );
        before.insert(
            (ns, pvc),
            (
                digest::entries(&dir(&w, ns, pvc)),
                w.ann(ns, pvc, status::LAST_SNAPSHOT).unwrap(),
            ),
        );
    }

    // The cluster is rebuilt from Git: S3 stays, the volumes are gone.
    w.cluster.wipe(false).await;
    w.reinstall();
    for (ns, pvc, node) in apps {
        apply_app(&w, ns, &pvc_spec(pvc), node);
    }
    // The scheduler runs before prewarm: no backup may race the restore.
    let (ok, log) = w.scheduler("2026-11-23T12:00:00Z").await;
    assert!(ok, "{log}");
    assert!(
        backup_jobs(&w).is_empty(),
        "no backup of a PVC being restored"
    );
    populate(&w, &keys).await;
    for (ns, pvc, _) in apps {
        let (entries, snap) = &before[&(ns, pvc)];
        assert_eq!(&digest::entries(&dir(&w, ns, pvc)), entries, "{ns}/{pvc}");
        assert_eq!(w.ann(ns, pvc, status::POPULATED_FROM).as_ref(), Some(snap));
        assert_eq!(w.events(ns, pvc, pc::reason::RESTORED).len(), 1);
        assert_eq!(w.events(ns, pvc, pc::reason::RESTORE_STARTED).len(), 1);
    }
    assert!(primes(&w).is_empty(), "prime PVCs deleted");
    // The app pods run where the restored volumes are.
    w.cluster
        .wait_for(WAIT, |s| {
            s.list::<Pod>(None)
                .iter()
                .filter(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("app-"))
                })
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(())
        })
        .await
        .unwrap();
    // Backups continue the history (the first-backup guard lets populated PVCs through).
    backup(&w, "2026-11-23T12:10:00Z", "2026-11-23T12:15:00Z").await;
    for (ns, pvc, _) in apps {
        assert_eq!(
            w.ann(ns, pvc, status::LAST_RESULT).as_deref(),
            Some("Succeeded"),
            "{}",
            w.cluster.all_pod_logs()
        );
        assert_eq!(w.snapshots(ns, pvc).len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_another_namespace_needs_its_grant_as_of_a_time_and_app_re_added() {
    let w = world();
    apply_app(&w, "db", &pvc_spec("pg"), "node-a");
    populate(&w, &[("db", "pg")]).await;
    std::fs::write(dir(&w, "db", "pg").join("v"), "version 1").unwrap();
    backup(&w, "2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z").await;
    std::fs::write(dir(&w, "db", "pg").join("v"), "version 2").unwrap();
    w.cluster
        .store()
        .patch::<PersistentVolumeClaim>(
            "db",
            "pg",
            &json!({"metadata": {"annotations": {user::BACKUP_NOW: "1"}}}),
        )
        .unwrap();
    backup(&w, "2026-11-23T10:10:00Z", "2026-11-23T10:15:00Z").await;
    let snaps = w.snapshots("db", "pg");
    assert_eq!(snaps.len(), 2);
    let first_time = snaps
        .iter()
        .map(|s| s["time"].as_str().unwrap().to_string())
        .min()
        .unwrap();
    let first_time: jiff::Timestamp = first_time.parse().unwrap();

    // Staging gets prod's latest; "yesterday" gets the first snapshot.
    w.cluster.create_namespace("staging", &[]).unwrap();
    let restores = Gvr::new("stowage.io", "v1alpha1", "restores");
    w.cluster
        .store()
        .create_json(
            &restores,
            "staging",
            json!({"apiVersion": "stowage.io/v1alpha1", "kind": "Restore",
            "metadata": {"name": "from-prod", "namespace": "staging"},
            "spec": {"sourceNamespace": "db", "sourcePvc": "pg"}}),
        )
        .unwrap();
    w.cluster
        .store()
        .create_json(
            &restores,
            "staging",
            json!({"apiVersion": "stowage.io/v1alpha1", "kind": "Restore",
            "metadata": {"name": "as-of", "namespace": "staging"},
            "spec": {"sourceNamespace": "db", "sourcePvc": "pg", "asOf": first_time.to_string()}}),
        )
        .unwrap();
    let copy = restore_pvc("pg-copy", "from-prod").class("local");
    let old = restore_pvc("pg-old", "as-of").class("local");
    apply_app(&w, "staging", &copy, "node-b");
    apply_app(&w, "staging", &old, "node-b");
    // prod (namespace db) has not granted staging its data: refused, with the fix.
    prewarm_until(&w, "cross-namespace restores refused", |s| {
        let refused = |pvc: &str| {
            s.list::<Event>(Some("staging")).iter().any(|e| {
                e.reason.as_deref() == Some(pc::reason::RESTORE_NOT_GRANTED)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pvc)
                    && e.note.as_deref().is_some_and(|n| {
                        n.contains("kubectl annotate namespace db stowage.io/grant-repositories-to=staging")
                    })
            })
        };
        (refused("pg-copy") && refused("pg-old")).then_some(())
    })
    .await;
    assert!(!bound(w.cluster.store(), "staging", "pg-copy"));
    assert!(primes(&w).is_empty(), "nothing read before the grant");
    w.cluster
        .store()
        .patch::<k8s_openapi::api::core::v1::Namespace>(
            "",
            "db",
            &json!({"metadata": {"annotations": {"stowage.io/grant-repositories-to": "staging"}}}),
        )
        .unwrap();
    populate(&w, &[("staging", "pg-copy"), ("staging", "pg-old")]).await;
    assert_eq!(
        std::fs::read_to_string(dir(&w, "staging", "pg-copy").join("v")).unwrap(),
        "version 2"
    );
    assert_eq!(
        std::fs::read_to_string(dir(&w, "staging", "pg-old").join("v")).unwrap(),
        "version 1"
    );
    assert_eq!(
        w.ann("staging", "pg-copy", pc::status::RESTORED_FROM),
        Some(w.repository("db", "pg"))
    );

    // The app is deleted and re-added (same name, new PVC): the latest comes back.
    let store = w.cluster.store();
    store.delete::<Pod>("db", "app-pg").unwrap();
    store.delete::<PersistentVolumeClaim>("db", "pg").unwrap();
    w.cluster
        .wait_for(WAIT, |s| {
            s.get::<PersistentVolumeClaim>("db", "pg")
                .is_none()
                .then_some(())
        })
        .await
        .unwrap();
    apply_app(&w, "db", &pvc_spec("pg"), "node-b");
    populate(&w, &[("db", "pg")]).await;
    assert_eq!(
        std::fs::read_to_string(dir(&w, "db", "pg").join("v")).unwrap(),
        "version 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_keeps_the_pvc_pending_until_it_exists() {
    let g = garage::shared();
    let w = world();
    w.cluster
        .store()
        .delete::<Secret>("stowage", "stowage-credentials")
        .unwrap();
    apply_app(&w, "app", &pvc_spec("data"), "node-a");
    w.cluster
        .wait_for(WAIT, |s| {
            w.ann("app", "data", "volume.kubernetes.io/selected-node")
                .map(|_| s.resource_version())
        })
        .await
        .unwrap();
    // The class is probed first (an unknown provisioner).
    judged(&w, "local").await;
    let (_, log) = prewarm_once(&w, &[]).await;
    let (_, log2) = prewarm_once(&w, &[]).await;
    let missing = w.events("app", "data", reason::CREDENTIALS_MISSING);
    assert_eq!(
        missing.len(),
        1,
        "one Event, not one per round\n{log}\n{log2}"
    );
    assert!(
        missing[0].contains("stowage/stowage-credentials"),
        "{}",
        missing[0]
    );
    assert!(
        !bound(w.cluster.store(), "app", "data"),
        "never bound empty on an error"
    );
    assert!(primes(&w).is_empty());
    // Wrong S3 keys: the storage does not answer clearly either.
    w.cluster
        .store()
        .create::<Secret>(&obj(json!({
            "metadata": {"name": "stowage-credentials", "namespace": "stowage"},
            "stringData": {"master-password": MASTER, "mover-access-key-id": "GKbad",
                           "mover-secret-access-key": "bad"}
        })))
        .unwrap();
    let (_, log) = prewarm_once(&w, &[]).await;
    assert_eq!(
        w.events("app", "data", pc::reason::SOURCE_UNAVAILABLE)
            .len(),
        1,
        "{log}"
    );
    assert!(!bound(w.cluster.store(), "app", "data"));
    assert!(primes(&w).is_empty());
    // Fixed: it binds (no backup exists: empty, on the storage's clear answer).
    w.cluster
        .store()
        .delete::<Secret>("stowage", "stowage-credentials")
        .unwrap();
    w.cluster.store().create(&w.credentials()).unwrap();
    let _ = g;
    populate(&w, &[("app", "data")]).await;
    assert_eq!(
        w.ann("app", "data", pc::status::BOUND_EMPTY).as_deref(),
        Some(pc::EMPTY_NO_BACKUP)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_storage_class_is_refused_with_an_event() {
    let w = world();
    w.cluster.create_namespace("app", &[]).unwrap();
    w.cluster
        .create_pvc("app", &restore_pvc("data", "data").class("local-path"))
        .unwrap();
    let (ok, log) = prewarm_once(&w, &[]).await;
    assert!(ok, "{log}");
    let refused = w.events("app", "data", pc::reason::UNSAFE_STORAGE_CLASS);
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains("rancher.io/local-path"),
        "{}",
        refused[0]
    );
    assert!(primes(&w).is_empty(), "no action");
}

/// A volume with a backup, deleted: the next PVC of that name restores it.
async fn backed_up(w: &World, size: usize) -> BTreeMap<String, String> {
    apply_app(w, "db", &pvc_spec("pg"), "node-a");
    populate(w, &[("db", "pg")]).await;
    fill(&dir(w, "db", "pg"), 7);
    trees::write_random(&dir(w, "db", "pg").join("big.bin"), size, 9);
    backup(w, "2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z").await;
    let entries = digest::entries(&dir(w, "db", "pg"));
    w.cluster.wipe(false).await;
    w.reinstall();
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_halfway_is_completed_and_never_bound_half_done() {
    let w = world();
    let expected = backed_up(&w, 48 << 20).await;
    apply_app(&w, "db", &pvc_spec("pg"), "node-a");
    // Kill the restore's process as soon as it runs.
    let mut prewarm = spawn_prewarm(&w);
    let pod = w
        .cluster
        .wait_for(WAIT, |s| {
            s.list::<Pod>(Some("stowage"))
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        })
        .await
        .unwrap();
    let killed = w
        .cluster
        .kill_pod("stowage", pod.metadata.name.as_deref().unwrap());
    // The restore Job as it finished (it goes with the prime PVC once handed over).
    let job = w
        .cluster
        .wait_for(WAIT, |s| {
            s.list::<Job>(Some("stowage"))
                .into_iter()
                .find(|j| j.status.as_ref().and_then(|s| s.succeeded) == Some(1))
        })
        .await
        .unwrap_or_else(|_| panic!("{}\n{}", w.last_prewarm_log(), w.cluster.all_pod_logs()));
    w.cluster
        .wait_for(WAIT, |s| bound(s, "db", "pg").then_some(()))
        .await
        .unwrap_or_else(|_| panic!("{}\n{}", w.last_prewarm_log(), w.cluster.all_pod_logs()));
    let _ = prewarm.start_kill();
    let _ = prewarm.wait().await;
    assert!(killed, "the restore was still running when killed");
    assert_eq!(digest::entries(&dir(&w, "db", "pg")), expected);
    assert_eq!(
        job.status.as_ref().unwrap().failed,
        Some(1),
        "one pod killed, the retry finished"
    );
    assert_eq!(w.events("db", "pg", pc::reason::RESTORE_STARTED).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_killed_between_restore_and_hand_over_is_continued() {
    let w = world();
    let expected = backed_up(&w, 1 << 20).await;
    apply_app(&w, "db", &pvc_spec("pg"), "node-a");
    // Step 3 done by a run that is then killed (SIGKILL) before step 4: killed while
    // the restore runs, so it cannot see it finish.
    let mut prewarm = spawn_prewarm(&w);
    w.cluster
        .wait_for(WAIT, |s| {
            s.list::<Pod>(Some("stowage"))
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(())
        })
        .await
        .unwrap();
    prewarm.kill().await.unwrap();
    w.jobs_finished().await;
    assert!(
        !bound(w.cluster.store(), "db", "pg"),
        "nobody handed the volume over"
    );
    assert_eq!(primes(&w).len(), 1);
    // The next run picks the finished restore up.
    populate(&w, &[("db", "pg")]).await;
    assert_eq!(digest::entries(&dir(&w, "db", "pg")), expected);
    assert!(primes(&w).is_empty());
    // Counted by the Jobs the API server created (the Job goes with its prime PVC at
    // the hand-over; the killed run may have died before its RestoreStarted Event).
    let created = w
        .cluster
        .api()
        .requests()
        .into_iter()
        .filter(|r| {
            r.verb == "create" && r.resource == "jobs" && r.namespace == "stowage" && r.code < 300
        })
        .count();
    assert_eq!(created, 1, "the restore ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_lists_every_repository_with_its_newest_snapshot() {
    let w = world();
    for (ns, pvc, node) in [("db", "pg", "node-a"), ("web", "www", "node-b")] {
        apply_app(&w, ns, &pvc_spec(pvc), node);
    }
    populate(&w, &[("db", "pg"), ("web", "www")]).await;
    fill(&dir(&w, "db", "pg"), 1);
    fill(&dir(&w, "web", "www"), 2);
    backup(&w, "2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z").await;
    let (ok, log) = prewarm_once(&w, &["--index-now"]).await;
    assert!(ok, "{log}");
    let cm: ConfigMap = w.cluster.store().get("stowage", "stowage-index").unwrap();
    let idx: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().unwrap()[pc::INDEX_KEY]).unwrap();
    let repos = idx["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 2, "{idx}");
    for r in repos {
        let (ns, pvc) = (r["namespace"].as_str().unwrap(), r["pvc"].as_str().unwrap());
        assert_eq!(
            r["latest"]["id"].as_str(),
            w.ann(ns, pvc, status::LAST_SNAPSHOT).as_deref(),
            "{r}"
        );
        assert!(r["latest"]["bytes"].as_u64().unwrap() > 300_000);
    }
    let first_requests = idx["s3_requests"].as_u64().unwrap();
    // Unchanged repositories are not opened again.
    let (ok, log) = prewarm_once(&w, &["--index-now"]).await;
    assert!(ok, "{log}");
    let cm: ConfigMap = w.cluster.store().get("stowage", "stowage-index").unwrap();
    let idx: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().unwrap()[pc::INDEX_KEY]).unwrap();
    let second = idx["s3_requests"].as_u64().unwrap();
    assert!(second < first_requests, "{second} < {first_requests}");
    assert!(cm.data.as_ref().unwrap()["index.txt"].contains("www"));
}

/// The manual restore's annotations and Event reasons (stowage-prewarm's `manual`).
mod manual {
    pub const REQUEST: &str = "stowage.io/restore-now";
    pub const REPLACE: &str = "stowage.io/restore-replace";
    pub const JOB: &str = "stowage.io/restore-job";
    pub const RESULT: &str = "stowage.io/restore-result";
    pub mod reason {
        pub const SUCCEEDED: &str = "ManualRestoreSucceeded";
        pub const REFUSED: &str = "ManualRestoreRefused";
    }
}

/// The objects of a file of kustomize/app.
fn app_file(name: &str) -> Vec<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kustomize/app")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The shipped `stowage-settings` ConfigMap with the values a user's ks.yaml would
/// substitute (this test's S3), as the template's Job reads it through `envFrom`.
fn install_settings(w: &World) {
    let mut cm = app_file("settings.yaml").remove(0);
    let mut env = prewarm_env(w);
    env.push(("STOWAGE_MAX_CONCURRENT_JOBS".into(), "10".into()));
    let data = cm["data"].as_object_mut().unwrap();
    for (k, v) in data.iter_mut() {
        if let Some((_, x)) = env.iter().find(|(n, _)| n == k) {
            *v = json!(x);
        } else if v.as_str().is_some_and(|v| v.contains("${")) {
            // Flux's default after `:=`.
            let d = v.as_str().unwrap();
            let default = d.split(":=").nth(1).map(|x| x.trim_end_matches('}'));
            *v = json!(default.unwrap_or(""));
        }
    }
    data.insert("STOWAGE_ALLOW_HTTP".into(), json!("true"));
    data.insert("STOWAGE_LOG_FORMAT".into(), json!("text"));
    data.insert("STOWAGE_POLL_SECONDS".into(), json!("1"));
    cm["metadata"]["namespace"] = json!("stowage");
    w.cluster.store().create::<ConfigMap>(&obj(cm)).unwrap();
}

/// What `kubectl -n stowage create job --from=cronjob/stowage-manual-restore NAME`
/// creates from the template in kustomize/app/restore-template.yaml; waits for the
/// Job to finish and returns whether it succeeded and the run's log.
async fn manual_restore_job(w: &World, name: &str) -> (bool, String) {
    let cj = app_file("restore-template.yaml")
        .into_iter()
        .find(|o| o["kind"] == "CronJob" && o["metadata"]["name"] == "stowage-manual-restore")
        .expect("CronJob stowage-manual-restore");
    assert_eq!(cj["spec"]["suspend"], true);
    let job = json!({
        "metadata": {
            "name": name, "namespace": "stowage",
            "labels": cj["spec"]["jobTemplate"]["metadata"]["labels"],
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
        },
        "spec": cj["spec"]["jobTemplate"]["spec"],
    });
    w.cluster.store().create::<Job>(&obj(job)).unwrap();
    let ok = w
        .cluster
        .wait_for(WAIT, |s| {
            let j = s.get::<Job>("stowage", name)?;
            j.status?.conditions?.iter().find_map(|c| {
                (c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
                    .then(|| c.type_ == "Complete")
            })
        })
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish\n{}", w.cluster.all_pod_logs()));
    let pod = w
        .cluster
        .store()
        .list::<Pod>(Some("stowage"))
        .into_iter()
        .find(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("job-name"))
                .is_some_and(|j| j == name)
        })
        .unwrap();
    (
        ok,
        w.cluster
            .pod_logs("stowage", pod.metadata.name.as_deref().unwrap()),
    )
}

fn annotate(w: &World, ns: &str, pvc: &str, kv: &[(&str, &str)]) {
    let mut m = serde_json::Map::new();
    for (k, v) in kv {
        m.insert(k.to_string(), json!(v));
    }
    w.cluster
        .store()
        .patch::<PersistentVolumeClaim>(ns, pvc, &json!({"metadata": {"annotations": m}}))
        .unwrap();
}

/// Manual restore from the shipped template, as the runbook says: the PVC names the
/// snapshot, a Job is created from the suspended CronJob; refused while the app runs,
/// refused on a non-empty volume, restored with replace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_restore_from_the_template_refuses_a_non_empty_volume_unless_told_to_replace() {
    let w = world();
    install_settings(&w);
    w.cluster
        .create_namespace("db", &[("stowage.io/privileged-mover", "true")])
        .unwrap();
    apply_app(&w, "db", &pvc_spec("pg"), "node-a");
    populate(&w, &[("db", "pg")]).await;
    fill(&dir(&w, "db", "pg"), 3);
    backup(&w, "2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z").await;
    let expected = digest::entries(&dir(&w, "db", "pg"));
    let snapshot = w.ann("db", "pg", status::LAST_SNAPSHOT).unwrap();
    // The incident: the data is damaged.
    std::fs::write(dir(&w, "db", "pg").join("damage.txt"), "oops").unwrap();
    let first = std::fs::read_dir(dir(&w, "db", "pg"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_file() && e.file_name() != "damage.txt")
        .unwrap()
        .path();
    std::fs::write(&first, "overwritten").unwrap();
    let damaged = digest::entries(&dir(&w, "db", "pg"));
    assert_ne!(damaged, expected);

    // 1. The app still runs: refused, nothing written.
    annotate(&w, "db", "pg", &[(manual::REQUEST, &snapshot[..8])]);
    let (ok, log) = manual_restore_job(&w, "restore-1").await;
    assert!(!ok, "{log}");
    let result = w.ann("db", "pg", manual::RESULT).unwrap_or_default();
    assert!(
        result.contains("in use by pod(s) app-pg"),
        "{result}\n{log}"
    );
    assert_eq!(w.ann("db", "pg", manual::REQUEST), None, "request served");
    assert_eq!(digest::entries(&dir(&w, "db", "pg")), damaged);

    // 2. Scaled down, no replace: the mover refuses the non-empty volume.
    w.cluster.store().delete::<Pod>("db", "app-pg").unwrap();
    w.cluster
        .wait_for(WAIT, |s| {
            s.get::<Pod>("db", "app-pg").is_none().then_some(())
        })
        .await
        .unwrap();
    annotate(&w, "db", "pg", &[(manual::REQUEST, &snapshot[..8])]);
    let (ok, log) = manual_restore_job(&w, "restore-2").await;
    assert!(!ok, "{log}");
    let result = w.ann("db", "pg", manual::RESULT).unwrap_or_default();
    assert!(
        result.starts_with("refused") && result.contains("not empty"),
        "{result}\n{log}\n{}",
        w.cluster.all_pod_logs()
    );
    assert_eq!(w.events("db", "pg", manual::reason::REFUSED).len(), 2);
    assert_eq!(
        digest::entries(&dir(&w, "db", "pg")),
        damaged,
        "nothing written"
    );

    // 3. Told to replace: the volume equals the snapshot again.
    annotate(
        &w,
        "db",
        "pg",
        &[(manual::REQUEST, &snapshot), (manual::REPLACE, "true")],
    );
    let (ok, log) = manual_restore_job(&w, "restore-3").await;
    assert!(ok, "{log}\n{}", w.cluster.all_pod_logs());
    let result = w.ann("db", "pg", manual::RESULT).unwrap_or_default();
    assert!(result.starts_with("restored snapshot"), "{result}");
    assert!(result.contains(&snapshot), "{result}");
    assert_eq!(digest::entries(&dir(&w, "db", "pg")), expected);
    assert_eq!(w.events("db", "pg", manual::reason::SUCCEEDED).len(), 1);
    for k in [manual::REQUEST, manual::REPLACE, manual::JOB] {
        assert_eq!(w.ann("db", "pg", k), None, "{k} removed");
    }
    // The restore ran in the PVC's namespace with a per-run Secret owned by its Job.
    let restores: Vec<Job> = w
        .cluster
        .store()
        .list::<Job>(Some("db"))
        .into_iter()
        .filter(|j| {
            j.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("stowage.io/operation"))
                .is_some_and(|o| o == "restore")
        })
        .collect();
    assert_eq!(restores.len(), 2, "the refused and the replacing restore");
    for j in &restores {
        let sec: Secret = w
            .cluster
            .store()
            .get("db", j.metadata.name.as_deref().unwrap())
            .expect("per-run Secret");
        assert_eq!(
            sec.metadata.owner_references.unwrap()[0].uid,
            j.metadata.uid.clone().unwrap()
        );
    }
    // A run with nothing to do does nothing.
    let (_, log) = manual_restore_job(&w, "restore-4").await;
    assert!(log.contains("no PVC is annotated"), "{log}");
}

/// A VolSync-style PVC: its own Secret (`stowage.io/secret`) names the repository and
/// password. The populator restores from it; only what the mover needs is copied into
/// a per-run Secret of the stowage namespace, owned by the restore Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn populate_with_the_pvcs_own_volsync_secret() {
    let g = garage::shared();
    let w = world();
    // Data backed up by someone else (VolSync, restic) into a repository of its own.
    let src = tempfile::tempdir().unwrap();
    fill(src.path(), 5);
    let expected = digest::entries(src.path());
    let repo = format!("{}/volsync/pg-own", w.base());
    let out = std::process::Command::new(bins::path("stowage-mover"))
        .arg("backup")
        .arg(src.path())
        .env_clear()
        .envs(g.env("x"))
        .env("RESTIC_REPOSITORY", &repo)
        .env("RESTIC_PASSWORD", "own volsync password")
        .env("STOWAGE_NAMESPACE", "db")
        .env("STOWAGE_PVC", "pg")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    w.cluster.create_namespace("db", &[]).unwrap();
    let spec = pvc_spec("pg").annotation("stowage.io/secret", "restic-pg");
    apply_app(&w, "db", &spec, "node-a");
    // The Secret is missing at first: a clear Event, the PVC waits (once its class,
    // an unknown provisioner, was probed).
    judged(&w, "local").await;
    let (_, log) = prewarm_once(&w, &[]).await;
    let missing = w.events("db", "pg", reason::CREDENTIALS_MISSING);
    assert_eq!(missing.len(), 1, "{log}");
    assert!(missing[0].contains("db/restic-pg"), "{}", missing[0]);
    assert!(!bound(w.cluster.store(), "db", "pg"));
    w.cluster
        .store()
        .create::<Secret>(&obj(json!({
            "metadata": {"name": "restic-pg", "namespace": "db"},
            "stringData": {
                "RESTIC_REPOSITORY": repo,
                "RESTIC_PASSWORD": "own volsync password",
                "AWS_ACCESS_KEY_ID": g.access_key,
                "AWS_SECRET_ACCESS_KEY": g.secret_key,
                "UNRELATED": "not copied",
            }
        })))
        .unwrap();
    // The per-run Secret, while its restore Job runs (both go once the volume is
    // handed over): only restic's and S3's keys, the Secret's own password, owned by
    // the restore Job.
    let (job, sec) = prewarm_until(&w, "the restore Job and its Secret", |s| {
        let jobs: Vec<Job> = s.list(Some("stowage"));
        let job = jobs.into_iter().next()?;
        let sec: Secret = s.get("stowage", job.metadata.name.as_deref()?)?;
        Some((job, sec))
    })
    .await;
    assert_eq!(w.cluster.store().list::<Job>(Some("stowage")).len(), 1);
    populate(&w, &[("db", "pg")]).await;
    assert_eq!(digest::entries(&dir(&w, "db", "pg")), expected);
    assert_eq!(
        w.ann("db", "pg", pc::status::RESTORED_FROM).as_deref(),
        Some(repo.as_str())
    );
    let data = sec.data.unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_DEFAULT_REGION",
            "AWS_SECRET_ACCESS_KEY",
            "RESTIC_PASSWORD",
            "RESTIC_REPOSITORY"
        ]
    );
    assert_eq!(data["RESTIC_PASSWORD"].0, b"own volsync password");
    assert_eq!(
        sec.metadata.owner_references.unwrap()[0].uid,
        job.metadata.uid.clone().unwrap()
    );
}

/// The user PVC is deleted while its restore runs: prewarm deletes the abandoned prime
/// PVC and the restore Job (with its pod and per-run Secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_prime_pvc_and_restore_job_are_cleaned_up() {
    let w = world();
    let _ = backed_up(&w, 48 << 20).await;
    apply_app(&w, "db", &pvc_spec("pg"), "node-a");
    let mut prewarm = spawn_prewarm(&w);
    w.cluster
        .wait_for(WAIT, |s| {
            s.list::<Pod>(Some("stowage"))
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(())
        })
        .await
        .unwrap();
    assert_eq!(primes(&w).len(), 1);
    // The app is removed from Git while its volume is being restored.
    w.cluster.store().delete::<Pod>("db", "app-pg").unwrap();
    w.cluster
        .store()
        .delete::<PersistentVolumeClaim>("db", "pg")
        .unwrap();
    let r = w
        .cluster
        .wait_for(WAIT, |s| {
            (s.list::<PersistentVolumeClaim>(None).is_empty()
                && s.list::<Job>(Some("stowage")).is_empty()
                && s.list::<Pod>(Some("stowage")).is_empty())
            .then_some(())
        })
        .await;
    let _ = prewarm.start_kill();
    let _ = prewarm.wait().await;
    let log = w.last_prewarm_log();
    r.unwrap_or_else(|_| {
        panic!(
            "PVCs {:?} Jobs {:?}\n{log}",
            w.cluster
                .store()
                .list::<PersistentVolumeClaim>(None)
                .iter()
                .map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>(),
            w.cluster
                .store()
                .list::<Job>(Some("stowage"))
                .iter()
                .map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>()
        )
    });
    assert!(log.contains("its PVC was deleted"), "{log}");
    assert!(
        w.cluster.store().list::<Secret>(Some("stowage")).len() == 1,
        "only stowage-credentials is left"
    );
}

/// Probe PVCs and the volumes provisioned for them.
fn probe_leftovers(s: &stowage_testkit::fakeapi::Store) -> Vec<String> {
    let pvcs = s
        .list::<PersistentVolumeClaim>(Some("stowage"))
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with(pc::probe::NAME_PREFIX));
    let pvs = s
        .list::<k8s_openapi::api::core::v1::PersistentVolume>(None)
        .into_iter()
        .filter(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| c.name.as_deref())
                .is_some_and(|n| n.starts_with(pc::probe::NAME_PREFIX))
        })
        .filter_map(|pv| pv.metadata.name);
    pvcs.chain(pvs).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_naive_class_is_found_unsafe_by_the_probe() {
    // A provisioner no list knows, which provisions PVCs with a foreign dataSourceRef
    // at once (WaitForFirstConsumer, as rancher.io/local-path).
    let w = world_with_classes(vec![StorageClassSpec {
        provisioner: "example.com/naive".into(),
        ..StorageClassSpec::local_path("odd")
    }]);
    w.cluster.create_namespace("app", &[]).unwrap();
    w.cluster
        .create_pvc("app", &restore_pvc("data", "data").class("odd"))
        .unwrap();
    // Not refused at once (unknown), never populated either: it waits for the probe.
    let (ok, log) = prewarm_once(&w, &[]).await;
    assert!(ok, "{log}");
    assert!(
        w.events("app", "data", pc::reason::UNSAFE_STORAGE_CLASS)
            .is_empty()
    );
    assert!(primes(&w).is_empty(), "{log}");
    assert!(!probe_leftovers(w.cluster.store()).is_empty(), "{log}");
    prewarm_until(&w, "class judged unsafe, probe cleaned up", |s| {
        let refused = s.list::<Event>(Some("app")).iter().any(|e| {
            e.reason.as_deref() == Some(pc::reason::UNSAFE_STORAGE_CLASS)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("data")
        });
        (refused && probe_leftovers(s).is_empty()).then_some(())
    })
    .await;
    assert_eq!(verdict(&w, "odd").as_deref(), Some("unsafe"));
    let refused = w.events("app", "data", pc::reason::UNSAFE_STORAGE_CLASS);
    assert!(
        refused
            .iter()
            .any(|m| m.contains("example.com/naive") && m.contains("probe")),
        "{refused:?}"
    );
    assert!(!bound(w.cluster.store(), "app", "data"));
    assert!(primes(&w).is_empty(), "never populated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_populator_respecting_class_is_found_safe_and_restored() {
    let w = world_with_classes(vec![StorageClassSpec {
        provisioner: "example.com/careful".into(),
        ..StorageClassSpec::local_csi("careful")
    }]);
    let expected = backed_up(&w, 1 << 20).await;
    apply_app(&w, "db", &pvc_spec("pg").class("careful"), "node-a");
    populate(&w, &[("db", "pg")]).await;
    assert_eq!(verdict(&w, "careful").as_deref(), Some("safe"));
    assert!(probe_leftovers(w.cluster.store()).is_empty());
    assert!(w.ann("db", "pg", status::POPULATED_FROM).is_some());
    assert_eq!(digest::entries(&dir(&w, "db", "pg")), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_created_after_the_backup_was_indexed() {
    let w = world();
    let expected = backed_up(&w, 1 << 20).await;
    // The index runs on the rebuilt cluster, before the namespace exists.
    let (ok, log) = prewarm_once(&w, &["--index-now"]).await;
    assert!(ok, "{log}");
    let cm: ConfigMap = w.cluster.store().get("stowage", "stowage-index").unwrap();
    assert!(
        cm.data.as_ref().unwrap()[pc::INDEX_KEY].contains("\"pg\""),
        "{cm:?}"
    );
    assert!(
        w.cluster
            .store()
            .get::<k8s_openapi::api::core::v1::Namespace>("", "db")
            .is_none()
    );
    // Then the namespace and its PVC appear.
    apply_app(&w, "db", &pvc_spec("pg"), "node-b");
    populate(&w, &[("db", "pg")]).await;
    assert_eq!(digest::entries(&dir(&w, "db", "pg")), expected);
    assert!(w.ann("db", "pg", status::POPULATED_FROM).is_some());
}
