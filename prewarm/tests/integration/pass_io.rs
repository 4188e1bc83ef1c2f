//! The populator's I/O edge cases against the fake API server (real `kube` client, the
//! real pass): storage errors never bind empty, resourceVersion conflicts converge on
//! the next round, two runs at once do nothing twice, force-empty, and a restore Job
//! that "succeeded" without restoring anything.
//!
//! The binder's part (a prime PVC gets a volume) is played by the test; repositories are
//! local directories written by the real `stowage-mover`.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{Value, json};
use stowage_common::env::PrewarmConfig;
use stowage_common::k8s::contract::{prewarm as pc, user};
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_prewarm::pass::{self, Ctx, Report};
use stowage_testkit::bins;
use stowage_testkit::fakeapi::{FakeApi, Fault};

const NS: &str = "stowage";
const USER: &str = "system:serviceaccount:stowage:stowage-prewarm";
const MASTER: &str = "master secret";

struct World {
    api: FakeApi,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let api = FakeApi::start();
        for ns in [NS, "app"] {
            api.put::<Namespace>(json!({"metadata": {"name": ns}}));
        }
        api.put::<StorageClass>(
            json!({"metadata": {"name": "local"}, "provisioner": "local.csi.openebs.io",
                   "volumeBindingMode": "Immediate"}),
        );
        // The probe found the class safe earlier (probing: plan.rs, prewarm_e2e).
        api.put::<k8s_openapi::api::core::v1::ConfigMap>(
            json!({"metadata": {"name": pc::probe::CONFIGMAP, "namespace": NS},
                   "data": {"local": json!({"verdict": pc::probe::SAFE,
                                            "provisioner": "local.csi.openebs.io",
                                            "judgedAt": "2026-11-23T09:00:00Z",
                                            "detail": "probe"}).to_string()}}),
        );
        api.put::<Secret>(
            json!({"metadata": {"name": "stowage-credentials", "namespace": NS},
                   "stringData": {"master-password": MASTER, "mover-access-key-id": "AK",
                                  "mover-secret-access-key": "SK"}}),
        );
        World {
            api,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn base(&self) -> String {
        self.dir.path().join("backups").display().to_string()
    }

    /// A backup of `app/<pvc>` under the base, with `password` (default: derived).
    fn backup(&self, pvc: &str, password: Option<&str>) {
        let url = format!("{}/app/{pvc}", self.base());
        let data = self.dir.path().join("data").join(pvc);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("f.txt"), "hello").unwrap();
        let pw = password
            .map(str::to_string)
            .unwrap_or_else(|| derive_repository_password(MASTER, &url));
        let out = std::process::Command::new(bins::path("stowage-mover"))
            .env_clear()
            .env("RESTIC_REPOSITORY", &url)
            .env("RESTIC_PASSWORD", pw)
            .env("STOWAGE_NAMESPACE", "app")
            .env("STOWAGE_PVC", pvc)
            .arg("backup")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pvc(&self, name: &str, annotations: Value) {
        self.api.put::<PersistentVolumeClaim>(json!({
            "metadata": {"name": name, "namespace": "app", "annotations": annotations},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                     "resources": {"requests": {"storage": "1Gi"}},
                     "dataSourceRef": {"apiGroup": "stowage.io", "kind": "Restore",
                                       "name": name}}
        }));
    }

    fn ctx(&self, base: &str) -> Ctx {
        self.ctx_with_backoff(base, 1)
    }

    fn ctx_with_backoff(&self, base: &str, backoff_secs: u32) -> Ctx {
        let cfg = PrewarmConfig::from_vars(&[
            ("STOWAGE_REPOSITORY_BASE".into(), base.into()),
            (
                "STOWAGE_RESTORE_BACKOFF_SECONDS".into(),
                backoff_secs.to_string(),
            ),
            ("STOWAGE_ALLOW_HTTP".into(), "true".into()),
            ("AWS_DEFAULT_REGION".into(), "garage".into()),
        ])
        .unwrap();
        Ctx::new(self.api.client_for(USER), cfg)
    }

    async fn round(&self, ctx: &Ctx) -> Report {
        let mut r = Report::default();
        pass::round(ctx, Timestamp::now(), &mut r).await.unwrap();
        r
    }

    fn primes(&self) -> Vec<PersistentVolumeClaim> {
        self.api.store().list(Some(NS))
    }

    /// The binder: every prime PVC gets a volume.
    fn bind_primes(&self) {
        for p in self.primes() {
            if p.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_ref())
                .is_some()
            {
                continue;
            }
            let name = p.metadata.name.clone().unwrap();
            let pv = format!("pv-{name}");
            self.api
                .put::<PersistentVolume>(json!({"metadata": {"name": pv},
                       "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                                "hostPath": {"path": "/tmp/x"}, "storageClassName": "local",
                                "claimRef": {"namespace": NS, "name": name,
                                             "uid": p.metadata.uid}}}));
            self.api
                .store()
                .modify::<PersistentVolumeClaim>(NS, &name, |p| {
                    p.spec.as_mut().unwrap().volume_name = Some(pv.clone());
                    p.status = Some(serde_json::from_value(json!({"phase": "Bound"})).unwrap());
                })
                .unwrap();
        }
    }

    fn jobs(&self) -> Vec<Job> {
        self.api.store().list(Some(NS))
    }

    /// Marks a restore Job done with the mover's result line.
    fn finish(&self, job: &str, ok: bool, message: &str) {
        self.api.put::<Pod>(
            json!({"metadata": {"name": format!("{job}-x"), "namespace": NS,
                                "labels": {"job-name": job}},
                   "spec": {"containers": [{"name": "mover", "image": "m"}]}}),
        );
        self.api
            .store()
            .modify::<Pod>(NS, &format!("{job}-x"), |p| {
                p.status = Some(
                    serde_json::from_value(json!({
                        "phase": if ok { "Succeeded" } else { "Failed" },
                        "containerStatuses": [{"name": "mover", "image": "m", "imageID": "",
                            "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": if ok {0} else {1},
                                "finishedAt": "2026-11-23T10:05:00Z", "message": message}}}]
                    }))
                    .unwrap(),
                );
            })
            .unwrap();
        self.api
            .store()
            .modify::<Job>(NS, job, |j| {
                j.status = Some(
                    serde_json::from_value(json!({"conditions": [{
                        "type": if ok { "Complete" } else { "Failed" }, "status": "True"}]}))
                    .unwrap(),
                );
            })
            .unwrap();
    }

    fn user(&self, name: &str) -> PersistentVolumeClaim {
        self.api.store().get("app", name).unwrap()
    }

    fn ann(&self, name: &str, key: &str) -> Option<String> {
        self.user(name).metadata.annotations?.get(key).cloned()
    }

    fn events(&self, pvc: &str, reason: &str) -> usize {
        self.api
            .store()
            .list::<Event>(Some("app"))
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pvc)
            })
            .count()
    }

    /// The PV now claimed by the user PVC.
    fn handed_over(&self, pvc: &str) -> bool {
        let uid = self.user(pvc).metadata.uid;
        self.api
            .store()
            .list::<PersistentVolume>(None)
            .iter()
            .any(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .and_then(|c| c.uid.clone())
                    == uid
            })
    }
}

/// What a mover that restored the plan of `job`'s prime PVC reports (its snapshot id
/// and repository).
fn restored(api: &FakeApi, job: &str) -> String {
    let j: Job = api.store().get(NS, job).unwrap();
    let uid = j.metadata.labels.unwrap()["stowage.io/pvc-uid"].clone();
    let prime: PersistentVolumeClaim = api
        .store()
        .get(NS, &format!("{}{uid}", pc::prime::NAME_PREFIX))
        .unwrap();
    let a = prime.metadata.annotations.unwrap();
    json!({"operation": "restore", "ok": true, "restored": true, "files": 1, "bytes": 5,
           "added_bytes": 0, "uploaded_bytes": 0, "downloaded_bytes": 0, "duration_secs": 0.1,
           "snapshot": a[pc::prime::SNAPSHOT], "repository": a[pc::prime::REPOSITORY]})
    .to_string()
}

#[tokio::test]
async fn storage_errors_and_wrong_credentials_never_bind_empty() {
    let w = World::new();
    // S3 that does not answer (nothing listens on the port).
    let port = stowage_testkit::free_port();
    let ctx = w.ctx(&format!("s3:http://127.0.0.1:{port}/bucket"));
    w.pvc("data", json!({}));
    let r = w.round(&ctx).await;
    assert!(r.source_unavailable.contains("app/data"), "{r:?}");
    assert!(w.primes().is_empty(), "no prime PVC on an error");
    // The PVC waits because of stowage: its age is pushed (StowagePvcPendingTooLong).
    let mut reg = stowage_common::metrics::Registry::default();
    pass::metrics(&r, &mut reg);
    let age = reg
        .value(
            stowage_common::metrics::prewarm_names::PENDING_SECONDS,
            &[("namespace", "app"), ("persistentvolumeclaim", "data")],
        )
        .expect("pending age pushed");
    assert!((0.0..600.0).contains(&age), "{age}");
    assert_eq!(w.events("data", pc::reason::SOURCE_UNAVAILABLE), 1);
    // Again: still Pending, no second Event for the same state.
    w.round(&ctx).await;
    assert!(w.primes().is_empty());
    assert_eq!(w.events("data", pc::reason::SOURCE_UNAVAILABLE), 1);

    // A repository whose password is not the derived one (wrong master password).
    w.backup("locked", Some("another password"));
    let ctx = w.ctx(&w.base());
    w.pvc("locked", json!({}));
    let r = w.round(&ctx).await;
    assert!(r.source_unavailable.contains("app/locked"), "{r:?}");
    assert_eq!(w.events("locked", pc::reason::SOURCE_UNAVAILABLE), 1);
    assert!(
        w.primes()
            .iter()
            .all(|p| p.metadata.annotations.as_ref().unwrap()[pc::prime::FOR_PVC] != "app/locked"),
        "never bound empty"
    );
    assert_eq!(w.ann("locked", pc::status::BOUND_EMPTY), None);
}

#[tokio::test]
async fn conflicts_on_the_claim_ref_move_and_the_pvc_annotation_converge() {
    let w = World::new();
    let ctx = w.ctx(&w.base());
    w.pvc("fresh", json!({}));
    w.round(&ctx).await;
    assert_eq!(w.primes().len(), 1, "fresh install: a prime PVC, no Job");
    w.bind_primes();
    // The user PVC changes under the hand-over (another writer): 409, next round.
    w.api.inject(
        Fault::error(409, "Conflict", "the object has been modified")
            .verb("patch")
            .resource("persistentvolumeclaims")
            .namespace("app")
            .times(1),
    );
    let r = w.round(&ctx).await;
    assert!(r.waiting["app/fresh"].contains("PVC changed"), "{r:?}");
    assert!(!w.handed_over("fresh"));
    // The PV changes under the claimRef move: 409 after the record was written.
    w.api.inject(
        Fault::error(409, "Conflict", "the object has been modified")
            .verb("patch")
            .resource("persistentvolumes")
            .times(1),
    );
    let r = w.round(&ctx).await;
    assert!(r.waiting["app/fresh"].contains("PV changed"), "{r:?}");
    assert!(!w.handed_over("fresh"));
    assert_eq!(w.primes().len(), 1, "the prime stays until the PV moved");
    assert_eq!(
        w.ann("fresh", pc::status::BOUND_EMPTY).as_deref(),
        Some(pc::EMPTY_NO_BACKUP)
    );
    // The next round converges.
    let r = w.round(&ctx).await;
    assert_eq!(
        r.populated.get("app/fresh").map(String::as_str),
        Some("empty: no-backup")
    );
    assert!(w.handed_over("fresh"));
    assert!(w.primes().is_empty());
    assert_eq!(w.events("fresh", pc::reason::BOUND_EMPTY), 1);
}

#[tokio::test]
async fn two_runs_at_once_do_nothing_twice() {
    let w = World::new();
    w.backup("db", None);
    let (a, b) = (w.ctx(&w.base()), w.ctx(&w.base()));
    w.pvc("db", json!({}));
    let (ra, rb) = tokio::join!(w.round(&a), w.round(&b));
    assert!(
        ra.errors.is_empty() && rb.errors.is_empty(),
        "{ra:?} {rb:?}"
    );
    assert_eq!(w.primes().len(), 1);
    w.bind_primes();
    let (ra, rb) = tokio::join!(w.round(&a), w.round(&b));
    assert!(
        ra.errors.is_empty() && rb.errors.is_empty(),
        "{ra:?} {rb:?}"
    );
    let jobs = w.jobs();
    assert_eq!(jobs.len(), 1, "one restore Job");
    assert_eq!(ra.jobs_started.len() + rb.jobs_started.len(), 1);
    assert_eq!(w.events("db", pc::reason::RESTORE_STARTED), 1);
    let secrets: Vec<Secret> = w.api.store().list(Some(NS));
    assert_eq!(secrets.len(), 2, "credentials and one per-run Secret");
    let job = jobs[0].metadata.name.clone().unwrap();
    w.finish(&job, true, &restored(&w.api, &job));
    let (ra, rb) = tokio::join!(w.round(&a), w.round(&b));
    assert!(
        ra.errors.is_empty() && rb.errors.is_empty(),
        "{ra:?} {rb:?}"
    );
    // Whichever lost a precondition finishes on its next round; both converge.
    let _ = tokio::join!(w.round(&a), w.round(&b));
    assert!(w.handed_over("db"));
    assert!(w.primes().is_empty());
    assert_eq!(w.events("db", pc::reason::RESTORED), 1, "one hand-over");
    assert!(w.jobs().is_empty(), "the restore Job went with the prime");
}

#[tokio::test]
async fn force_empty_binds_empty_without_asking_the_storage() {
    let w = World::new();
    w.backup("db", None);
    // The storage would not even answer: force-empty does not ask it.
    let port = stowage_testkit::free_port();
    let ctx = w.ctx(&format!("s3:http://127.0.0.1:{port}/bucket"));
    w.pvc("db", json!({user::FORCE_EMPTY: "true"}));
    w.round(&ctx).await;
    let primes = w.primes();
    assert_eq!(primes.len(), 1);
    assert_eq!(
        primes[0].metadata.annotations.as_ref().unwrap()[pc::prime::EMPTY_REASON],
        pc::EMPTY_FORCED
    );
    w.bind_primes();
    let r = w.round(&ctx).await;
    assert_eq!(r.populated["app/db"], "empty: forced");
    assert!(w.jobs().is_empty(), "no restore Job");
    assert_eq!(
        w.ann("db", pc::status::BOUND_EMPTY).as_deref(),
        Some(pc::EMPTY_FORCED)
    );
    assert_eq!(w.events("db", pc::reason::SOURCE_UNAVAILABLE), 0);
}

#[tokio::test]
async fn a_restore_that_restored_nothing_is_not_handed_over() {
    let w = World::new();
    w.backup("db", None);
    // A backoff no round of this test reaches: the Event is not repeated.
    let ctx = w.ctx_with_backoff(&w.base(), 600);
    w.pvc("db", json!({}));
    w.round(&ctx).await;
    w.bind_primes();
    w.round(&ctx).await;
    let jobs = w.jobs();
    assert_eq!(jobs.len(), 1);
    // The mover found no repository (moved, or unreachable differently for it).
    w.finish(
        jobs[0].metadata.name.as_deref().unwrap(),
        true,
        r#"{"operation":"restore","ok":true,"restored":false,"files":0,"bytes":0,"added_bytes":0,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":0.1}"#,
    );
    let r = w.round(&ctx).await;
    assert!(!w.handed_over("db"), "{r:?}");
    assert_eq!(w.primes().len(), 1);
    assert_eq!(w.events("db", pc::reason::RESTORE_MISMATCH), 1);
    assert!(
        w.ann("db", pc::status::POPULATOR_STATUS)
            .is_some_and(|s| s.contains("restored nothing")),
        "{:?}",
        w.ann("db", pc::status::POPULATOR_STATUS)
    );
    assert_eq!(w.ann("db", pc::status::RESTORED_AT), None);
    // Same on the next round: no second Event, still not bound.
    let r = w.round(&ctx).await;
    assert!(!w.handed_over("db"));
    assert_eq!(w.events("db", pc::reason::RESTORE_MISMATCH), 1);
    assert!(r.restore_mismatches.contains("app/db"), "{r:?}");
}

#[tokio::test]
async fn probes_judge_unknown_classes_record_the_verdict_and_clean_up() {
    let w = World::new();
    for (name, provisioner) in [("odd", "example.com/naive"), ("careful", "example.com/csi")] {
        w.api.put::<StorageClass>(
            json!({"metadata": {"name": name}, "provisioner": provisioner,
                   "volumeBindingMode": "Immediate"}),
        );
    }
    for (name, class) in [("x", "odd"), ("y", "careful")] {
        w.api.put::<PersistentVolumeClaim>(json!({
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "1Gi"}},
                     "dataSourceRef": {"apiGroup": "stowage.io", "kind": "Restore",
                                       "name": name}}
        }));
    }
    // A volume left by the probe of a run killed after deleting its PVC (Retain).
    w.api
        .put::<PersistentVolume>(json!({"metadata": {"name": "pv-old"},
               "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": "/tmp/x"}, "storageClassName": "odd",
                        "claimRef": {"namespace": NS, "name": "stowage-probe-odd",
                                     "uid": "gone"}}}));
    let ctx = w.ctx(&w.base());
    let t0 = Timestamp::now();
    let mut r = Report::default();
    pass::round(&ctx, t0, &mut r).await.unwrap();
    let probes: Vec<String> = w
        .api
        .store()
        .list::<PersistentVolumeClaim>(Some(NS))
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    // Only the probes: the PVCs of unknown classes wait for them (no prime PVC).
    assert_eq!(probes, ["stowage-probe-careful", "stowage-probe-odd"]);
    assert_eq!(w.events("x", pc::reason::PROBING_STORAGE_CLASS), 1);
    assert_eq!(w.events("x", pc::reason::UNSAFE_STORAGE_CLASS), 0);
    assert!(
        w.api
            .store()
            .get::<PersistentVolume>("", "pv-old")
            .is_none(),
        "swept"
    );
    // The naive provisioner provisions its probe at once.
    let probe: PersistentVolumeClaim = w.api.store().get(NS, "stowage-probe-odd").unwrap();
    w.api
        .put::<PersistentVolume>(json!({"metadata": {"name": "pv-probe"},
               "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": "/tmp/x"}, "storageClassName": "odd",
                        "persistentVolumeReclaimPolicy": "Retain",
                        "claimRef": {"namespace": NS, "name": "stowage-probe-odd",
                                     "uid": probe.metadata.uid}}}));
    // Before the wait is over: the provisioned one is judged, the other still waits.
    let mut r = Report::default();
    pass::round(&ctx, t0 + jiff::SignedDuration::from_secs(5), &mut r)
        .await
        .unwrap();
    assert_eq!(r.class_verdicts["odd"], ("example.com/naive".into(), false));
    assert!(!r.class_verdicts.contains_key("careful"));
    assert!(
        w.api
            .store()
            .get::<PersistentVolume>("", "pv-probe")
            .is_none()
    );
    assert!(
        w.api
            .store()
            .get::<PersistentVolumeClaim>(NS, "stowage-probe-odd")
            .is_none()
    );
    assert_eq!(w.events("x", pc::reason::UNSAFE_STORAGE_CLASS), 1);
    // Still Pending after the wait: safe, and its PVC goes on (no backup: a prime).
    let mut r = Report::default();
    pass::round(&ctx, t0 + jiff::SignedDuration::from_secs(61), &mut r)
        .await
        .unwrap();
    assert_eq!(
        r.class_verdicts["careful"],
        ("example.com/csi".into(), true)
    );
    let left: Vec<String> = w
        .api
        .store()
        .list::<PersistentVolumeClaim>(Some(NS))
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(pc::prime::NAME_PREFIX), "{left:?}");
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        w.api.store().get(NS, pc::probe::CONFIGMAP).unwrap();
    let data = cm.data.unwrap();
    assert!(data["odd"].contains("\"unsafe\""), "{data:?}");
    assert!(data["careful"].contains("\"safe\""), "{data:?}");
    assert_eq!(w.events("x", pc::reason::UNSAFE_STORAGE_CLASS), 1, "once");
}

/// Two prewarm runs judge the first class at once: the one whose ConfigMap create
/// meets the other's (409 AlreadyExists) patches it instead of failing its run.
#[tokio::test]
async fn a_verdict_configmap_created_by_another_run_meanwhile_is_patched() {
    use stowage_testkit::fakeapi::Fault;
    let w = World::new();
    w.api.put::<StorageClass>(
        json!({"metadata": {"name": "odd"}, "provisioner": "example.com/naive",
               "volumeBindingMode": "Immediate"}),
    );
    w.api.put::<PersistentVolumeClaim>(json!({
        "metadata": {"name": "x", "namespace": "app"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "odd",
                 "resources": {"requests": {"storage": "1Gi"}},
                 "dataSourceRef": {"apiGroup": "stowage.io", "kind": "Restore", "name": "x"}}
    }));
    let ctx = w.ctx(&w.base());
    let t0 = Timestamp::now();
    pass::round(&ctx, t0, &mut Report::default()).await.unwrap();
    let probe: PersistentVolumeClaim = w.api.store().get(NS, "stowage-probe-odd").unwrap();
    w.api
        .put::<PersistentVolume>(json!({"metadata": {"name": "pv-probe"},
               "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": "/tmp/x"}, "storageClassName": "odd",
                        "claimRef": {"namespace": NS, "name": "stowage-probe-odd",
                                     "uid": probe.metadata.uid}}}));
    // This run finds no ConfigMap (the other run's create lands right after).
    w.api.inject(
        Fault::error(
            404,
            "NotFound",
            "configmaps \"stowage-storage-classes\" not found",
        )
        .verb("patch")
        .resource("configmaps")
        .name(pc::probe::CONFIGMAP)
        .times(1),
    );
    let mut r = Report::default();
    pass::round(&ctx, t0 + jiff::SignedDuration::from_secs(5), &mut r)
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.class_verdicts["odd"], ("example.com/naive".into(), false));
    let cm: k8s_openapi::api::core::v1::ConfigMap =
        w.api.store().get(NS, pc::probe::CONFIGMAP).unwrap();
    let data = cm.data.unwrap();
    assert!(data["odd"].contains("\"unsafe\""), "{data:?}");
    assert!(
        data.contains_key("local"),
        "the other run's verdicts stay: {data:?}"
    );
}

#[tokio::test]
async fn lookups_beyond_the_pass_budget_wait_for_the_next_round() {
    let w = World::new();
    w.backup("a", None);
    w.backup("b", None);
    let cfg = PrewarmConfig::from_vars(&[
        ("STOWAGE_REPOSITORY_BASE".into(), w.base()),
        ("STOWAGE_PASS_BUDGET_SECS".into(), "1".into()),
    ])
    .unwrap();
    let ctx = Ctx::new(w.api.client_for(USER), cfg);
    w.pvc("a", json!({}));
    w.pvc("b", json!({}));
    // The round's API answers late: its budget is used before any lookup starts.
    w.api.inject(
        Fault::delay(std::time::Duration::from_millis(1500))
            .verb("list")
            .resource("persistentvolumes")
            .times(1),
    );
    let r = w.round(&ctx).await;
    assert!(w.primes().is_empty(), "no lookup, no prime");
    for pvc in ["app/a", "app/b"] {
        assert_eq!(
            r.waiting.get(pvc).map(String::as_str),
            Some(pass::LOOKUP_DEFERRED),
            "{r:?}"
        );
    }
    assert!(
        r.errors.is_empty() && r.source_unavailable.is_empty(),
        "{r:?}"
    );
    assert_eq!(w.events("a", pc::reason::SOURCE_UNAVAILABLE), 0);
    // The next round looks both up.
    let r = w.round(&ctx).await;
    assert_eq!(w.primes().len(), 2, "{r:?}");
    // With their prime PVCs made, waiting PVCs cost no Restore read per round.
    w.api.clear_requests();
    w.round(&ctx).await;
    let reads = w
        .api
        .requests()
        .iter()
        .filter(|r| r.resource == "restores")
        .count();
    assert_eq!(reads, 0);
}
