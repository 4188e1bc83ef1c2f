//! Kubernetes API errors in the populator's rounds and the index (fake API, real `kube`
//! client, the real pass; repositories are local directories written by the real
//! `stowage-mover`; the binder and the Job controller are played by the test): a 500 or
//! a conflict at each call of a populate, a failed list, a Restore object that cannot
//! be read, an API server that does not answer in time. Each round either fails
//! clearly (it names the call) or converges; the next round converges; a volume is
//! never bound empty or from the wrong source because of an API error.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;
use stowage_common::env::PrewarmConfig;
use stowage_common::k8s::contract::prewarm as pc;
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_prewarm::pass::{self, Ctx, Report};
use stowage_testkit::bins;
use stowage_testkit::fakeapi::{FakeApi, Fault, Gvr};

const NS: &str = "stowage";
const USER: &str = "system:serviceaccount:stowage:stowage-prewarm";
const MASTER: &str = "master secret";
/// What a mover that restored the plan of `job`'s prime PVC reports.
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
        // The probe found the class safe earlier.
        api.put::<ConfigMap>(
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

    /// A backup of `app/<pvc>` under the base, with the derived password.
    fn backup(&self, pvc: &str) {
        let url = format!("{}/app/{pvc}", self.base());
        let data = self.dir.path().join("data").join(pvc);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("f.txt"), "hello").unwrap();
        let out = std::process::Command::new(bins::path("stowage-mover"))
            .env_clear()
            .env("RESTIC_REPOSITORY", &url)
            .env("RESTIC_PASSWORD", derive_repository_password(MASTER, &url))
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

    /// A user PVC populated through the Restore object `restore` (default: its name).
    fn pvc(&self, name: &str, restore: Option<&str>) {
        self.api.put::<PersistentVolumeClaim>(json!({
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                     "resources": {"requests": {"storage": "1Gi"}},
                     "dataSourceRef": {"apiGroup": "stowage.io", "kind": "Restore",
                                       "name": restore.unwrap_or(name)}}
        }));
    }

    fn ctx(&self) -> Ctx {
        let cfg = PrewarmConfig::from_vars(&[
            ("STOWAGE_REPOSITORY_BASE".into(), self.base()),
            ("STOWAGE_RESTORE_BACKOFF_SECONDS".into(), "1".into()),
        ])
        .unwrap();
        Ctx::new(self.api.client_for(USER), cfg)
    }

    async fn round(&self, ctx: &Ctx) -> anyhow::Result<Report> {
        let mut r = Report::default();
        pass::round(ctx, Timestamp::now(), &mut r).await.map(|_| r)
    }

    /// A round that must not fail as a whole.
    async fn ok_round(&self, ctx: &Ctx) -> Report {
        self.round(ctx).await.expect("the round itself succeeds")
    }

    fn primes(&self) -> Vec<PersistentVolumeClaim> {
        self.api
            .store()
            .list::<PersistentVolumeClaim>(Some(NS))
            .into_iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(pc::prime::NAME_PREFIX))
            })
            .collect()
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

    /// The binder, for a user PVC whose volume was handed over.
    fn bind_user(&self, pvc: &str) {
        let uid = self.user(pvc).metadata.uid;
        let pv = self
            .api
            .store()
            .list::<PersistentVolume>(None)
            .into_iter()
            .find(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .and_then(|c| c.uid.clone())
                    == uid
            })
            .and_then(|pv| pv.metadata.name)
            .expect("handed over");
        self.api
            .store()
            .modify::<PersistentVolumeClaim>("app", pvc, |p| {
                p.spec.as_mut().unwrap().volume_name = Some(pv.clone());
                p.status = Some(serde_json::from_value(json!({"phase": "Bound"})).unwrap());
            })
            .unwrap();
    }

    fn jobs(&self) -> Vec<Job> {
        self.api.store().list(Some(NS))
    }

    /// Marks a restore Job done with the mover's result line.
    fn finish(&self, job: &str) {
        let message = restored(&self.api, job);
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
                        "phase": "Succeeded",
                        "containerStatuses": [{"name": "mover", "image": "m", "imageID": "",
                            "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": 0,
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
                    serde_json::from_value(
                        json!({"conditions": [{"type": "Complete", "status": "True"}]}),
                    )
                    .unwrap(),
                );
            })
            .unwrap();
    }

    fn user(&self, name: &str) -> PersistentVolumeClaim {
        self.api.store().get("app", name).unwrap()
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

    fn one_error(&self, r: &Report, needle: &str, what: &str) {
        assert!(
            r.errors
                .iter()
                .any(|e| e.contains(needle) && e.contains(what)),
            "an error naming {needle:?} and {what:?}: {:?}",
            r.errors
        );
    }
}

fn error(code: u16, reason: &str, message: &str) -> Fault {
    Fault::error(code, reason, message)
}

/// A populate with an API error at each of its calls, one at a time: the round fails
/// clearly (names the call and what to do) or goes on, the next round converges, and
/// exactly one restore Job, one per-run Secret and one hand-over result.
#[tokio::test]
async fn an_api_error_at_each_call_of_a_populate_fails_clearly_and_the_next_round_converges() {
    let w = World::new();
    w.backup("db");
    w.pvc("db", None);
    let ctx = w.ctx();
    const LEADER: &str = "etcdserver: leader changed";

    // Listing the PVCs fails: the round fails, naming the call; nothing is created.
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("list")
            .resource("persistentvolumeclaims")
            .times(1),
    );
    let e = w.round(&ctx).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot list persistentvolumeclaims in all namespaces") && e.contains(LEADER),
        "{e}"
    );
    assert!(
        e.contains("retries") || e.contains("again"),
        "says what to do: {e}"
    );
    assert!(w.primes().is_empty());

    // Creating the prime PVC fails (500), then conflicts (409, not AlreadyExists).
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("create")
            .resource("persistentvolumeclaims")
            .namespace(NS)
            .times(1),
    );
    let r = w.ok_round(&ctx).await;
    w.one_error(&r, "cannot create persistentvolumeclaim stowage/", LEADER);
    assert!(w.primes().is_empty());
    w.api.inject(
        error(409, "Conflict", "Operation cannot be fulfilled: try again")
            .verb("create")
            .resource("persistentvolumeclaims")
            .namespace(NS)
            .times(1),
    );
    w.ok_round(&ctx).await;
    if w.primes().is_empty() {
        // Taken for "exists already": the next round sees it does not and creates it.
        let r = w.ok_round(&ctx).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    assert_eq!(w.primes().len(), 1, "the prime PVC, once");
    w.bind_primes();

    // Listing the restore Jobs fails: the round fails, naming the call.
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("list")
            .resource("jobs")
            .times(1),
    );
    let e = w.round(&ctx).await.unwrap_err().to_string();
    assert!(
        e.contains("cannot list jobs in namespace stowage") && e.contains(LEADER),
        "{e}"
    );
    assert!(w.jobs().is_empty());

    // Creating the Job fails; then creating its per-run Secret fails.
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("create")
            .resource("jobs")
            .times(1),
    );
    let r = w.ok_round(&ctx).await;
    w.one_error(&r, "cannot create job stowage/", LEADER);
    assert!(w.jobs().is_empty());
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("create")
            .resource("secrets")
            .namespace(NS)
            .times(1),
    );
    let r = w.ok_round(&ctx).await;
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("secret") && e.contains(LEADER)),
        "{:?}",
        r.errors
    );
    assert_eq!(w.jobs().len(), 1, "the Job exists, its Secret not yet");
    // The next round completes the start: the same Job, its Secret now.
    let r = w.ok_round(&ctx).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(w.jobs().len(), 1);
    let secrets: Vec<Secret> = w.api.store().list(Some(NS));
    assert_eq!(secrets.len(), 2, "credentials and one per-run Secret");
    let job = w.jobs()[0].metadata.name.clone().unwrap();
    w.finish(&job);

    // The hand-over: reading the Job's result, the record on the PVC, the PV move.
    for (fault, call) in [
        (
            error(500, "InternalError", LEADER)
                .verb("list")
                .resource("pods")
                .times(1),
            "cannot list pods of job stowage/",
        ),
        (
            error(500, "InternalError", LEADER)
                .verb("patch")
                .resource("persistentvolumeclaims")
                .namespace("app")
                .times(1),
            "cannot annotate persistentvolumeclaim app/db",
        ),
        (
            error(500, "InternalError", LEADER)
                .verb("patch")
                .resource("persistentvolumes")
                .times(1),
            "cannot move persistentvolume",
        ),
    ] {
        w.api.inject(fault);
        let r = w.ok_round(&ctx).await;
        w.one_error(&r, call, LEADER);
        assert!(!w.handed_over("db"), "{call}: not bound yet");
    }
    // Deleting the prime after the move fails: the volume is the PVC's already; the
    // next round deletes the prime.
    w.api.inject(
        error(500, "InternalError", LEADER)
            .verb("delete")
            .resource("persistentvolumeclaims")
            .namespace(NS)
            .times(1),
    );
    let r = w.ok_round(&ctx).await;
    w.one_error(&r, "persistentvolumeclaim stowage/", LEADER);
    assert!(w.handed_over("db"));
    w.bind_user("db");
    let r = w.ok_round(&ctx).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(w.primes().is_empty(), "the prime is gone after the re-run");
    assert_eq!(w.events("db", pc::reason::RESTORED), 1, "one hand-over");
    assert_eq!(w.events("db", pc::reason::BOUND_EMPTY), 0);
    assert!(w.jobs().is_empty(), "the restore Job goes with its prime");
}

/// The Restore object names another PVC's backups; reading it fails (500). The PVC's
/// own repository does not exist, so reading the error as "no Restore object" would
/// bind it empty: the PVC waits instead, and the next round restores the named source.
#[tokio::test]
async fn a_restore_object_that_cannot_be_read_never_binds_empty_or_from_the_wrong_source() {
    let w = World::new();
    w.backup("src");
    let restores = Gvr::new("stowage.io", "v1alpha1", "restores");
    w.api
        .store()
        .create_json(
            &restores,
            "app",
            json!({"apiVersion": "stowage.io/v1alpha1", "kind": "Restore",
                   "metadata": {"name": "from-src", "namespace": "app"},
                   "spec": {"sourcePvc": "src"}}),
        )
        .unwrap();
    w.pvc("copy", Some("from-src"));
    let ctx = w.ctx();
    w.api.inject(
        error(500, "InternalError", "etcdserver: request timed out")
            .verb("get")
            .resource("restores")
            .times(1),
    );
    let r = w.ok_round(&ctx).await;
    assert!(
        w.primes().is_empty(),
        "no prime PVC from a guess: {:?}",
        w.primes()
            .iter()
            .map(|p| p.metadata.annotations.clone())
            .collect::<Vec<_>>()
    );
    w.one_error(&r, "cannot get restore app/from-src", "request timed out");
    let r = w.ok_round(&ctx).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let primes = w.primes();
    assert_eq!(primes.len(), 1);
    let ann = primes[0].metadata.annotations.clone().unwrap();
    assert!(
        ann[pc::prime::REPOSITORY].ends_with("/app/src"),
        "restores the named source: {ann:?}"
    );
    assert!(!ann[pc::prime::SNAPSHOT].is_empty(), "{ann:?}");
    assert!(!ann.contains_key(pc::prime::EMPTY_REASON), "{ann:?}");
}

/// The binary against an API server that does not answer (delay fault beyond the
/// client timeout): the run fails in time and names the call; with the API back, the
/// next run succeeds. The index: its ConfigMap cannot be written (500), the run fails
/// naming it; the next run stores it.
#[test]
fn a_hung_api_and_a_failed_index_write_fail_the_run_clearly_and_a_rerun_converges() {
    let w = World::new();
    w.backup("db");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-prewarm"))
            .env_clear()
            .env("KUBECONFIG", w.api.kubeconfig_for(USER))
            .env("STOWAGE_REPOSITORY_BASE", w.base())
            .env("STOWAGE_API_TIMEOUT_SECS", "1")
            .env("STOWAGE_LOG_FORMAT", "text")
            .arg("--once")
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Every attempt hangs (the client's own retry of a timed-out request included).
    w.api.inject(
        Fault::delay(std::time::Duration::from_secs(20))
            .verb("list")
            .resource("persistentvolumeclaims"),
    );
    let started = std::time::Instant::now();
    let (code, log) = run(&["--no-index"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot list persistentvolumeclaims in all namespaces")
            && log.contains("did not answer in time"),
        "{log}"
    );
    // Only that the 1 s limit, not the 20 s delay, ended the run.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    w.api.clear_faults();
    let (code, log) = run(&["--no-index"]);
    assert_eq!(code, Some(0), "{log}");

    w.api.inject(
        error(500, "InternalError", "etcdserver: leader changed")
            .verb("create")
            .resource("configmaps")
            .name("")
            .times(1),
    );
    let (code, log) = run(&["--index-now"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot create configmap stowage/stowage-index")
            && log.contains("leader changed"),
        "{log}"
    );
    assert!(
        w.api
            .store()
            .get::<ConfigMap>(NS, "stowage-index")
            .is_none()
    );
    let (code, log) = run(&["--index-now"]);
    assert_eq!(code, Some(0), "{log}");
    let cm: ConfigMap = w.api.store().get(NS, "stowage-index").unwrap();
    assert!(
        cm.data.unwrap()[pc::INDEX_KEY].contains("\"db\""),
        "the index lists the repository"
    );
}

/// Once the volume is handed over and the user PVC is bound, the restore Job goes with
/// the prime PVC: its finished pod names the prime, and on a real cluster the PVC
/// protection controller keeps a PVC Terminating while a pod bound to a node names it
/// (found on the real control plane: the prime PVCs stayed for the Job's day-long TTL).
#[tokio::test]
async fn the_restore_job_goes_with_the_prime_pvc_once_the_volume_is_handed_over() {
    let w = World::new();
    w.backup("db");
    w.pvc("db", None);
    let ctx = w.ctx();
    w.ok_round(&ctx).await;
    w.bind_primes();
    w.ok_round(&ctx).await;
    let jobs = w.jobs();
    assert_eq!(jobs.len(), 1, "one restore Job");
    w.finish(jobs[0].metadata.name.as_deref().unwrap());
    w.ok_round(&ctx).await;
    assert!(w.handed_over("db"));
    w.bind_user("db");
    let r = w.ok_round(&ctx).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(w.primes().is_empty(), "prime PVC deleted");
    assert!(w.jobs().is_empty(), "restore Job deleted with it");
}
