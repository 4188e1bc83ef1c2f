//! Zero-touch restore end to end in the cluster simulator: the real `stowage-prewarm`
//! populates PVCs that name the stowage kind, the simulated Job controller runs the
//! real `stowage-mover` restores against the real S3 server (Garage), and the real
//! `stowage-scheduler` backs the volumes up before and after.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use stowage_common::k8s::contract::{prewarm as pc, reason, status, user};
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_testkit::fakeapi::Gvr;
use stowage_testkit::sim::{Cluster, ClusterOptions, NodeSpec, PvcSpec, StorageClassSpec, digest};
use stowage_testkit::{bins, garage, trees};

const SCHEDULER: &str = "system:serviceaccount:stowage:stowage-scheduler";
const PREWARM: &str = "system:serviceaccount:stowage:stowage-prewarm";
const MASTER: &str = "prewarm e2e master password";
const WAIT: Duration = Duration::from_secs(120);

struct World {
    cluster: Cluster,
    bucket: String,
    endpoint: String,
    keys: BTreeMap<String, String>,
    runs: std::sync::atomic::AtomicUsize,
}

fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn bound(s: &stowage_testkit::fakeapi::Store, ns: &str, pvc: &str) -> bool {
    s.get::<PersistentVolumeClaim>(ns, pvc)
        .and_then(|p| p.status?.phase)
        .as_deref()
        == Some("Bound")
}

impl World {
    fn new() -> Self {
        let g = garage::shared();
        let bucket = g.bucket("prewarm-e2e");
        let cluster = Cluster::start(
            ClusterOptions::new()
                .node(NodeSpec::new("node-a"))
                .node(NodeSpec::new("node-b"))
                .storage_class(StorageClassSpec::local_csi("local").default_class())
                .storage_class(StorageClassSpec::local_path("local-path"))
                .namespace("stowage")
                .binary("stowage-mover", bins::path("stowage-mover")),
        );
        let keys: BTreeMap<String, String> = g.env("x").into_iter().collect();
        let w = World {
            cluster,
            bucket,
            endpoint: format!("http://{}", g.addr()),
            keys,
            runs: Default::default(),
        };
        w.install(true);
        w
    }

    /// What the GitOps repository re-applies after a rebuild: policies, credentials.
    fn install(&self, with_secret: bool) {
        let store = self.cluster.store();
        let _ = store.create::<ConfigMap>(&obj(json!({
            "metadata": {"name": "stowage-policies", "namespace": "stowage"},
            "data": {"policies.yaml": "hourly:\n  schedule: \"@hourly\"\n"}
        })));
        if with_secret {
            self.create_secret();
        }
    }

    fn create_secret(&self) {
        self.cluster
            .store()
            .create::<Secret>(&obj(json!({
                "metadata": {"name": "stowage-credentials", "namespace": "stowage"},
                "stringData": {
                    "master-password": MASTER,
                    "mover-access-key-id": self.keys["AWS_ACCESS_KEY_ID"],
                    "mover-secret-access-key": self.keys["AWS_SECRET_ACCESS_KEY"],
                }
            })))
            .unwrap();
    }

    fn base(&self) -> String {
        format!("s3:{}/{}", self.endpoint, self.bucket)
    }

    fn repository(&self, ns: &str, pvc: &str) -> String {
        format!("{}/{ns}/{pvc}", self.base())
    }

    /// The PVC as written in Git: restore from backup, back up hourly.
    fn pvc_spec(name: &str) -> PvcSpec {
        PvcSpec::new(name)
            .class("local")
            .label("backup", "hourly")
            .data_source_ref("stowage.io", "Restore", name)
    }

    /// Applies the PVC and an app pod using it on `node`.
    fn apply_app(&self, ns: &str, spec: &PvcSpec, node: &str) {
        if self
            .cluster
            .store()
            .get::<k8s_openapi::api::core::v1::Namespace>("", ns)
            .is_none()
        {
            self.cluster.create_namespace(ns, &[]).unwrap();
        }
        self.cluster.create_pvc(ns, spec).unwrap();
        self.cluster
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

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STOWAGE_REPOSITORY_BASE", self.base()),
            ("STOWAGE_ALLOW_HTTP", "true".into()),
            ("AWS_DEFAULT_REGION", "garage".into()),
            (
                "STOWAGE_MOVER_IMAGE",
                "ghcr.io/stowage-backup/stowage-mover:e2e".into(),
            ),
            ("STOWAGE_LOG_FORMAT", "text".into()),
            ("STOWAGE_POLL_SECONDS", "1".into()),
            ("STOWAGE_RESTORE_BACKOFF_SECONDS", "1".into()),
            ("STOWAGE_MAX_CONCURRENT_JOBS", "10".into()),
        ]
    }

    /// One prewarm round (`--once`).
    async fn prewarm_once(&self, extra: &[&str]) -> (bool, String) {
        let env = self.env();
        let env: Vec<(&str, &str)> = env
            .iter()
            .filter(|(k, _)| *k != "STOWAGE_MAX_CONCURRENT_JOBS")
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        let out = self
            .cluster
            .run_program(&bins::path("stowage-prewarm"), &args, &env, PREWARM)
            .await;
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// A prewarm run (polling every second, as the CronJob's run does) until `check`
    /// holds; then the run is stopped.
    async fn prewarm_until<T>(
        &self,
        what: &str,
        check: impl FnMut(&stowage_testkit::fakeapi::Store) -> Option<T>,
    ) -> T {
        let mut child = self.spawn_prewarm();
        let r = self.cluster.wait_for(WAIT, check).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        match r {
            Ok(t) => t,
            Err(e) => panic!(
                "{what}: {e}\n--- prewarm\n{}\n--- pods\n{}",
                self.last_prewarm_log(),
                self.cluster.all_pod_logs()
            ),
        }
    }

    fn spawn_prewarm(&self) -> tokio::process::Child {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let env = self.env();
        let env: Vec<(&str, &str)> = env
            .iter()
            .filter(|(k, _)| *k != "STOWAGE_MAX_CONCURRENT_JOBS")
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.cluster.spawn_program(
            &bins::path("stowage-prewarm"),
            &["--duration", "300", "--no-index"],
            &env,
            PREWARM,
            &format!("prewarm-{n}"),
        )
    }

    fn last_prewarm_log(&self) -> String {
        let n = self.runs.load(std::sync::atomic::Ordering::Relaxed);
        self.cluster.program_log(&format!("prewarm-{n}"))
    }

    async fn populate(&self, pvcs: &[(&str, &str)]) {
        let list: Vec<(String, String)> = pvcs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        // Bound, prime PVCs gone, and the closing Event published: the populate is over.
        self.prewarm_until("PVCs bound", move |s| {
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

    async fn scheduler(&self, now: &str) -> (bool, String) {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = self
            .cluster
            .run_program(
                &bins::path("stowage-scheduler"),
                &["--now", now],
                &env,
                SCHEDULER,
            )
            .await;
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn backup_jobs(&self) -> Vec<Job> {
        self.cluster
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

    async fn jobs_finished(&self) {
        let r = self
            .cluster
            .wait_for(WAIT, |s| {
                s.list::<Job>(None)
                    .iter()
                    .all(|j| {
                        j.status
                            .as_ref()
                            .and_then(|st| st.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| {
                                    (c.type_ == "Complete" || c.type_ == "Failed")
                                        && c.status == "True"
                                })
                            })
                    })
                    .then_some(())
            })
            .await;
        if r.is_err() {
            panic!("Jobs did not finish:\n{}", self.cluster.all_pod_logs());
        }
    }

    /// A backup of every opted-in PVC through the scheduler, results recorded.
    async fn backup(&self, now: &str, then: &str) {
        let (ok, log) = self.scheduler(now).await;
        assert!(ok, "{log}");
        eprintln!("scheduler at {now}:\n{log}");
        self.jobs_finished().await;
        let (ok, log) = self.scheduler(then).await;
        assert!(ok, "{log}");
    }

    fn ann(&self, ns: &str, pvc: &str, key: &str) -> Option<String> {
        let p: PersistentVolumeClaim = self.cluster.store().get(ns, pvc)?;
        p.metadata.annotations.unwrap_or_default().get(key).cloned()
    }

    fn events(&self, ns: &str, pvc: &str, reason: &str) -> Vec<String> {
        let all: Vec<Event> = self.cluster.store().list(Some(ns));
        all.into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pvc)
            })
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }

    fn dir(&self, ns: &str, pvc: &str) -> std::path::PathBuf {
        self.cluster.volume_dir(ns, pvc).unwrap()
    }

    fn snapshots(&self, ns: &str, pvc: &str) -> Vec<serde_json::Value> {
        let repo = self.repository(ns, pvc);
        let out = std::process::Command::new(bins::path("stowage-mover"))
            .args(["snapshots", "--json"])
            .env_clear()
            .envs(garage::shared().env("x"))
            .env("RESTIC_REPOSITORY", &repo)
            .env("RESTIC_PASSWORD", derive_repository_password(MASTER, &repo))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn primes(&self) -> Vec<PersistentVolumeClaim> {
        self.cluster
            .store()
            .list::<PersistentVolumeClaim>(Some("stowage"))
    }
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
    let w = World::new();
    w.apply_app("app", &World::pvc_spec("data"), "node-a");
    w.populate(&[("app", "data")]).await;
    assert_eq!(
        w.ann("app", "data", pc::status::BOUND_EMPTY).as_deref(),
        Some(pc::EMPTY_NO_BACKUP)
    );
    assert_eq!(w.ann("app", "data", status::POPULATED_FROM), None);
    assert_eq!(w.events("app", "data", pc::reason::BOUND_EMPTY).len(), 1);
    assert!(w.primes().is_empty(), "prime PVC deleted");
    assert_eq!(std::fs::read_dir(w.dir("app", "data")).unwrap().count(), 0);
    // The app writes; the scheduler backs it up (no history: no guard in the way).
    fill(&w.dir("app", "data"), 1);
    w.backup("2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z")
        .await;
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
    let w = World::new();
    let apps = [
        ("db", "pg-data", "node-a"),
        ("db", "pg-wal", "node-b"),
        ("web", "uploads", "node-a"),
    ];
    for (ns, pvc, node) in apps {
        w.apply_app(ns, &World::pvc_spec(pvc), node);
    }
    let keys: Vec<(&str, &str)> = apps.iter().map(|(n, p, _)| (*n, *p)).collect();
    w.populate(&keys).await;
    for (i, (ns, pvc, _)) in apps.iter().enumerate() {
        fill(&w.dir(ns, pvc), i as u64);
    }
    w.backup("2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z")
        .await;
    let mut before = BTreeMap::new();
    for (ns, pvc, _) in apps {
        assert_eq!(
            w.ann(ns, pvc, status::LAST_RESULT).as_deref(),
            Some("Succeeded")
        );
        before.insert(
            (ns, pvc),
            (
                digest::entries(&w.dir(ns, pvc)),
                w.ann(ns, pvc, status::LAST_SNAPSHOT).unwrap(),
            ),
        );
    }

    // The cluster is rebuilt from Git: S3 stays, the volumes are gone.
    w.cluster.wipe(false).await;
    w.install(true);
    for (ns, pvc, node) in apps {
        w.apply_app(ns, &World::pvc_spec(pvc), node);
    }
    // The scheduler runs before prewarm: no backup may race the restore.
    let (ok, log) = w.scheduler("2026-11-23T12:00:00Z").await;
    assert!(ok, "{log}");
    assert!(
        w.backup_jobs().is_empty(),
        "no backup of a PVC being restored"
    );
    w.populate(&keys).await;
    for (ns, pvc, _) in apps {
        let (entries, snap) = &before[&(ns, pvc)];
        assert_eq!(&digest::entries(&w.dir(ns, pvc)), entries, "{ns}/{pvc}");
        assert_eq!(w.ann(ns, pvc, status::POPULATED_FROM).as_ref(), Some(snap));
        assert_eq!(w.events(ns, pvc, pc::reason::RESTORED).len(), 1);
        assert_eq!(w.events(ns, pvc, pc::reason::RESTORE_STARTED).len(), 1);
    }
    assert!(w.primes().is_empty(), "prime PVCs deleted");
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
    w.backup("2026-11-23T12:10:00Z", "2026-11-23T12:15:00Z")
        .await;
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
async fn restore_into_another_namespace_as_of_a_time_and_app_re_added() {
    let w = World::new();
    w.apply_app("db", &World::pvc_spec("pg"), "node-a");
    w.populate(&[("db", "pg")]).await;
    std::fs::write(w.dir("db", "pg").join("v"), "version 1").unwrap();
    w.backup("2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z")
        .await;
    std::fs::write(w.dir("db", "pg").join("v"), "version 2").unwrap();
    w.cluster
        .store()
        .patch::<PersistentVolumeClaim>(
            "db",
            "pg",
            &json!({"metadata": {"annotations": {user::BACKUP_NOW: "1"}}}),
        )
        .unwrap();
    w.backup("2026-11-23T10:10:00Z", "2026-11-23T10:15:00Z")
        .await;
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
    let copy = PvcSpec::new("pg-copy").class("local").data_source_ref(
        "stowage.io",
        "Restore",
        "from-prod",
    );
    let old =
        PvcSpec::new("pg-old")
            .class("local")
            .data_source_ref("stowage.io", "Restore", "as-of");
    w.apply_app("staging", &copy, "node-b");
    w.apply_app("staging", &old, "node-b");
    w.populate(&[("staging", "pg-copy"), ("staging", "pg-old")])
        .await;
    assert_eq!(
        std::fs::read_to_string(w.dir("staging", "pg-copy").join("v")).unwrap(),
        "version 2"
    );
    assert_eq!(
        std::fs::read_to_string(w.dir("staging", "pg-old").join("v")).unwrap(),
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
    w.apply_app("db", &World::pvc_spec("pg"), "node-b");
    w.populate(&[("db", "pg")]).await;
    assert_eq!(
        std::fs::read_to_string(w.dir("db", "pg").join("v")).unwrap(),
        "version 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_keeps_the_pvc_pending_until_it_exists() {
    let g = garage::shared();
    let w = World::new();
    w.cluster
        .store()
        .delete::<Secret>("stowage", "stowage-credentials")
        .unwrap();
    w.apply_app("app", &World::pvc_spec("data"), "node-a");
    w.cluster
        .wait_for(WAIT, |s| {
            w.ann("app", "data", "volume.kubernetes.io/selected-node")
                .map(|_| s.resource_version())
        })
        .await
        .unwrap();
    let (_, log) = w.prewarm_once(&[]).await;
    let (_, log2) = w.prewarm_once(&[]).await;
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
    assert!(w.primes().is_empty());
    // Wrong S3 keys: the storage does not answer clearly either.
    w.cluster
        .store()
        .create::<Secret>(&obj(json!({
            "metadata": {"name": "stowage-credentials", "namespace": "stowage"},
            "stringData": {"master-password": MASTER, "mover-access-key-id": "GKbad",
                           "mover-secret-access-key": "bad"}
        })))
        .unwrap();
    let (_, log) = w.prewarm_once(&[]).await;
    assert_eq!(
        w.events("app", "data", pc::reason::SOURCE_UNAVAILABLE)
            .len(),
        1,
        "{log}"
    );
    assert!(!bound(w.cluster.store(), "app", "data"));
    assert!(w.primes().is_empty());
    // Fixed: it binds (no backup exists: empty, on the storage's clear answer).
    w.cluster
        .store()
        .delete::<Secret>("stowage", "stowage-credentials")
        .unwrap();
    w.create_secret();
    let _ = g;
    w.populate(&[("app", "data")]).await;
    assert_eq!(
        w.ann("app", "data", pc::status::BOUND_EMPTY).as_deref(),
        Some(pc::EMPTY_NO_BACKUP)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_storage_class_is_refused_with_an_event() {
    let w = World::new();
    w.cluster.create_namespace("app", &[]).unwrap();
    w.cluster
        .create_pvc(
            "app",
            &PvcSpec::new("data").class("local-path").data_source_ref(
                "stowage.io",
                "Restore",
                "data",
            ),
        )
        .unwrap();
    let (ok, log) = w.prewarm_once(&[]).await;
    assert!(ok, "{log}");
    let refused = w.events("app", "data", pc::reason::UNSAFE_STORAGE_CLASS);
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains("rancher.io/local-path"),
        "{}",
        refused[0]
    );
    assert!(w.primes().is_empty(), "no action");
}

/// A volume with a backup, deleted: the next PVC of that name restores it.
async fn backed_up(w: &World, size: usize) -> BTreeMap<String, String> {
    w.apply_app("db", &World::pvc_spec("pg"), "node-a");
    w.populate(&[("db", "pg")]).await;
    fill(&w.dir("db", "pg"), 7);
    trees::write_random(&w.dir("db", "pg").join("big.bin"), size, 9);
    w.backup("2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z")
        .await;
    let entries = digest::entries(&w.dir("db", "pg"));
    w.cluster.wipe(false).await;
    w.install(true);
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_halfway_is_completed_and_never_bound_half_done() {
    let w = World::new();
    let expected = backed_up(&w, 48 << 20).await;
    w.apply_app("db", &World::pvc_spec("pg"), "node-a");
    // Kill the restore's process as soon as it runs.
    let mut prewarm = w.spawn_prewarm();
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
    w.cluster
        .wait_for(WAIT, |s| bound(s, "db", "pg").then_some(()))
        .await
        .unwrap_or_else(|_| panic!("{}\n{}", w.last_prewarm_log(), w.cluster.all_pod_logs()));
    let _ = prewarm.start_kill();
    let _ = prewarm.wait().await;
    assert!(killed, "the restore was still running when killed");
    assert_eq!(digest::entries(&w.dir("db", "pg")), expected);
    let job: Vec<Job> = w.cluster.store().list(Some("stowage"));
    assert_eq!(job.len(), 1);
    assert_eq!(
        job[0].status.as_ref().unwrap().failed,
        Some(1),
        "one pod killed, the retry finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_killed_between_restore_and_hand_over_is_continued() {
    let w = World::new();
    let expected = backed_up(&w, 1 << 20).await;
    w.apply_app("db", &World::pvc_spec("pg"), "node-a");
    // Step 3 done by a run that is then killed (SIGKILL) before step 4: killed while
    // the restore runs, so it cannot see it finish.
    let mut prewarm = w.spawn_prewarm();
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
    assert_eq!(w.primes().len(), 1);
    // The next run picks the finished restore up.
    w.populate(&[("db", "pg")]).await;
    assert_eq!(digest::entries(&w.dir("db", "pg")), expected);
    assert!(w.primes().is_empty());
    let jobs: Vec<Job> = w.cluster.store().list(Some("stowage"));
    assert_eq!(jobs.len(), 1, "the restore ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_lists_every_repository_with_its_newest_snapshot() {
    let w = World::new();
    for (ns, pvc, node) in [("db", "pg", "node-a"), ("web", "www", "node-b")] {
        w.apply_app(ns, &World::pvc_spec(pvc), node);
    }
    w.populate(&[("db", "pg"), ("web", "www")]).await;
    fill(&w.dir("db", "pg"), 1);
    fill(&w.dir("web", "www"), 2);
    w.backup("2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z")
        .await;
    let (ok, log) = w.prewarm_once(&["--index-now"]).await;
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
    let (ok, log) = w.prewarm_once(&["--index-now"]).await;
    assert!(ok, "{log}");
    let cm: ConfigMap = w.cluster.store().get("stowage", "stowage-index").unwrap();
    let idx: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().unwrap()[pc::INDEX_KEY]).unwrap();
    let second = idx["s3_requests"].as_u64().unwrap();
    assert!(second < first_requests, "{second} < {first_requests}");
    assert!(cm.data.as_ref().unwrap()["index.txt"].contains("www"));
}
