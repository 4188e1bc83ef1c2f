//! The populator's I/O edge cases against the fake API server (real `kube` client, the
//! real pass): storage errors never bind empty, resourceVersion conflicts converge on
//! the next round, two runs at once do nothing twice, force-empty, and a restore Job
//! that "succeeded" without restoring anything.
//!
//! The binder's part (a prime PVC gets a volume) is played by the test; repositories are
//! local directories written by the real `stowage-mover`.

use crate::support::*;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;
use stowage_common::env::PrewarmConfig;
use stowage_common::k8s::contract::{prewarm as pc, user};
use stowage_prewarm::pass::{self, Ctx, Report};
use stowage_testkit::fakeapi::Fault;
use stowage_testkit::world::{ApiWorld, restore_pvc};

fn context(w: &ApiWorld, base: &str) -> Ctx {
    context_with_backoff(w, base, 1)
}

fn context_with_backoff(w: &ApiWorld, base: &str, backoff_secs: u32) -> Ctx {
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
    Ctx::new(w.api.client_for(USER), cfg)
}

fn ann(w: &ApiWorld, name: &str, key: &str) -> Option<String> {
    user(w, name).metadata.annotations?.get(key).cloned()
}

#[tokio::test]
async fn storage_errors_and_wrong_credentials_never_bind_empty() {
    let w = world();
    // S3 that does not answer (nothing listens on the port).
    let port = stowage_testkit::free_port();
    let ctx = context(&w, &format!("s3:http://127.0.0.1:{port}/bucket"));
    pvc(&w, "data");
    let r = round(&ctx).await;
    assert!(r.source_unavailable.contains("app/data"), "{r:?}");
    assert!(prime_pvcs(&w).is_empty(), "no prime PVC on an error");
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
    assert_eq!(events(&w, "data", pc::reason::SOURCE_UNAVAILABLE), 1);
    // Again: still Pending, no second Event for the same state.
    round(&ctx).await;
    assert!(prime_pvcs(&w).is_empty());
    assert_eq!(events(&w, "data", pc::reason::SOURCE_UNAVAILABLE), 1);

    // A repository whose password is not the derived one (wrong master password).
    backup(&w, "locked", Some("another password"));
    let ctx = context(&w, &w.base());
    pvc(&w, "locked");
    let r = round(&ctx).await;
    assert!(r.source_unavailable.contains("app/locked"), "{r:?}");
    assert_eq!(events(&w, "locked", pc::reason::SOURCE_UNAVAILABLE), 1);
    assert!(
        prime_pvcs(&w)
            .iter()
            .all(|p| p.metadata.annotations.as_ref().unwrap()[pc::prime::FOR_PVC] != "app/locked"),
        "never bound empty"
    );
    assert_eq!(ann(&w, "locked", pc::status::BOUND_EMPTY), None);
}

#[tokio::test]
async fn conflicts_on_the_claim_ref_move_and_the_pvc_annotation_converge() {
    let w = world();
    let ctx = context(&w, &w.base());
    pvc(&w, "fresh");
    round(&ctx).await;
    assert_eq!(
        prime_pvcs(&w).len(),
        1,
        "fresh install: a prime PVC, no Job"
    );
    bind_primes(&w);
    // The user PVC changes under the hand-over (another writer): 409, next round.
    w.api.inject(
        Fault::error(409, "Conflict", "the object has been modified")
            .verb("patch")
            .resource("persistentvolumeclaims")
            .namespace("app")
            .times(1),
    );
    let r = round(&ctx).await;
    assert!(r.waiting["app/fresh"].contains("PVC changed"), "{r:?}");
    assert!(!handed_over(&w, "fresh"));
    // The PV changes under the claimRef move: 409 after the record was written.
    w.api.inject(
        Fault::error(409, "Conflict", "the object has been modified")
            .verb("patch")
            .resource("persistentvolumes")
            .times(1),
    );
    let r = round(&ctx).await;
    assert!(r.waiting["app/fresh"].contains("PV changed"), "{r:?}");
    assert!(!handed_over(&w, "fresh"));
    assert_eq!(
        prime_pvcs(&w).len(),
        1,
        "the prime stays until the PV moved"
    );
    assert_eq!(
        ann(&w, "fresh", pc::status::BOUND_EMPTY).as_deref(),
        Some(pc::EMPTY_NO_BACKUP)
    );
    // The next round converges.
    let r = round(&ctx).await;
    assert_eq!(
        r.populated.get("app/fresh").map(String::as_str),
        Some("empty: no-backup")
    );
    assert!(handed_over(&w, "fresh"));
    assert!(prime_pvcs(&w).is_empty());
    assert_eq!(events(&w, "fresh", pc::reason::BOUND_EMPTY), 1);
}

#[tokio::test]
async fn two_runs_at_once_do_nothing_twice() {
    let w = world();
    backup(&w, "db", None);
    let (a, b) = (context(&w, &w.base()), context(&w, &w.base()));
    pvc(&w, "db");
    let (ra, rb) = tokio::join!(round(&a), round(&b));
    assert!(
        ra.errors.is_empty() && rb.errors.is_empty(),
        "{ra:?} {rb:?}"
    );
    assert_eq!(prime_pvcs(&w).len(), 1);
    bind_primes(&w);
    let (ra, rb) = tokio::join!(round(&a), round(&b));
    assert!(
        ra.errors.is_empty() && rb.errors.is_empty(),
        "{ra:?} {rb:?}"
    );
    let jobs = restore_jobs(&w);
    assert_eq!(jobs.len(), 1, "one restore Job");
    assert_eq!(ra.jobs_started.len() + rb.jobs_started.len(), 1);
    assert_eq!(events(&w, "db", pc::reason::RESTORE_STARTED), 1);
    let secrets: Vec<Secret> = w.api.store().list(Some(NS));
    assert_eq!(secrets.len(), 2, "credentials and one per-run Secret");
    let job = jobs[0].metadata.name.clone().unwrap();
    finish(&w, &job, true, &restored(&w, &job));
    let (ra, rb) = tokio::join!(round(&a), round(&b));
    assert!(
        ra.errors.is_empty() && rb.errors.is_empty(),
        "{ra:?} {rb:?}"
    );
    // Whichever lost a precondition finishes on its next round; both converge.
    let _ = tokio::join!(round(&a), round(&b));
    assert!(handed_over(&w, "db"));
    assert!(prime_pvcs(&w).is_empty());
    assert_eq!(events(&w, "db", pc::reason::RESTORED), 1, "one hand-over");
    assert!(
        restore_jobs(&w).is_empty(),
        "the restore Job went with the prime"
    );
}

#[tokio::test]
async fn force_empty_binds_empty_without_asking_the_storage() {
    let w = world();
    backup(&w, "db", None);
    // The storage would not even answer: force-empty does not ask it.
    let port = stowage_testkit::free_port();
    let ctx = context(&w, &format!("s3:http://127.0.0.1:{port}/bucket"));
    create(
        &w,
        restore_pvc("db", "db")
            .class("local")
            .annotation(user::FORCE_EMPTY, "true"),
    );
    round(&ctx).await;
    let primes = prime_pvcs(&w);
    assert_eq!(primes.len(), 1);
    assert_eq!(
        primes[0].metadata.annotations.as_ref().unwrap()[pc::prime::EMPTY_REASON],
        pc::EMPTY_FORCED
    );
    bind_primes(&w);
    let r = round(&ctx).await;
    assert_eq!(r.populated["app/db"], "empty: forced");
    assert!(restore_jobs(&w).is_empty(), "no restore Job");
    assert_eq!(
        ann(&w, "db", pc::status::BOUND_EMPTY).as_deref(),
        Some(pc::EMPTY_FORCED)
    );
    assert_eq!(events(&w, "db", pc::reason::SOURCE_UNAVAILABLE), 0);
}

#[tokio::test]
async fn a_restore_that_restored_nothing_is_not_handed_over() {
    let w = world();
    backup(&w, "db", None);
    // A backoff no round of this test reaches: the Event is not repeated.
    let ctx = context_with_backoff(&w, &w.base(), 600);
    pvc(&w, "db");
    round(&ctx).await;
    bind_primes(&w);
    round(&ctx).await;
    let jobs = restore_jobs(&w);
    assert_eq!(jobs.len(), 1);
    // The mover found no repository (moved, or unreachable differently for it).
    finish(
        &w,
        jobs[0].metadata.name.as_deref().unwrap(),
        true,
        r#"{"operation":"restore","ok":true,"restored":false,"files":0,"bytes":0,"added_bytes":0,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":0.1}"#,
    );
    let r = round(&ctx).await;
    assert!(!handed_over(&w, "db"), "{r:?}");
    assert_eq!(prime_pvcs(&w).len(), 1);
    assert_eq!(events(&w, "db", pc::reason::RESTORE_MISMATCH), 1);
    assert!(
        ann(&w, "db", pc::status::POPULATOR_STATUS).is_some_and(|s| s.contains("restored nothing")),
        "{:?}",
        ann(&w, "db", pc::status::POPULATOR_STATUS)
    );
    assert_eq!(ann(&w, "db", pc::status::RESTORED_AT), None);
    // Same on the next round: no second Event, still not bound.
    let r = round(&ctx).await;
    assert!(!handed_over(&w, "db"));
    assert_eq!(events(&w, "db", pc::reason::RESTORE_MISMATCH), 1);
    assert!(r.restore_mismatches.contains("app/db"), "{r:?}");
}

#[tokio::test]
async fn probes_judge_unknown_classes_record_the_verdict_and_clean_up() {
    let w = world();
    for (name, provisioner) in [("odd", "example.com/naive"), ("careful", "example.com/csi")] {
        w.api.put::<StorageClass>(
            json!({"metadata": {"name": name}, "provisioner": provisioner,
                   "volumeBindingMode": "Immediate"}),
        );
    }
    for (name, class) in [("x", "odd"), ("y", "careful")] {
        create(&w, restore_pvc(name, name).class(class));
    }
    // A volume left by the probe of a run killed after deleting its PVC (Retain).
    w.api
        .put::<PersistentVolume>(json!({"metadata": {"name": "pv-old"},
               "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": "/tmp/x"}, "storageClassName": "odd",
                        "claimRef": {"namespace": NS, "name": "stowage-probe-odd",
                                     "uid": "gone"}}}));
    let ctx = context(&w, &w.base());
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
    assert_eq!(events(&w, "x", pc::reason::PROBING_STORAGE_CLASS), 1);
    assert_eq!(events(&w, "x", pc::reason::UNSAFE_STORAGE_CLASS), 0);
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
    assert_eq!(events(&w, "x", pc::reason::UNSAFE_STORAGE_CLASS), 1);
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
    assert_eq!(events(&w, "x", pc::reason::UNSAFE_STORAGE_CLASS), 1, "once");
}

/// Two prewarm runs judge the first class at once: the one whose ConfigMap create
/// meets the other's (409 AlreadyExists) patches it instead of failing its run.
#[tokio::test]
async fn a_verdict_configmap_created_by_another_run_meanwhile_is_patched() {
    use stowage_testkit::fakeapi::Fault;
    let w = world();
    w.api.put::<StorageClass>(
        json!({"metadata": {"name": "odd"}, "provisioner": "example.com/naive",
               "volumeBindingMode": "Immediate"}),
    );
    create(&w, restore_pvc("x", "x").class("odd"));
    let ctx = context(&w, &w.base());
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
    let w = world();
    backup(&w, "a", None);
    backup(&w, "b", None);
    let cfg = PrewarmConfig::from_vars(&[
        ("STOWAGE_REPOSITORY_BASE".into(), w.base()),
        ("STOWAGE_PASS_BUDGET_SECS".into(), "1".into()),
    ])
    .unwrap();
    let ctx = Ctx::new(w.api.client_for(USER), cfg);
    pvc(&w, "a");
    pvc(&w, "b");
    // The round's API answers late: its budget is used before any lookup starts.
    w.api.inject(
        Fault::delay(std::time::Duration::from_millis(1500))
            .verb("list")
            .resource("persistentvolumes")
            .times(1),
    );
    let r = round(&ctx).await;
    assert!(prime_pvcs(&w).is_empty(), "no lookup, no prime");
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
    assert_eq!(events(&w, "a", pc::reason::SOURCE_UNAVAILABLE), 0);
    // The next round looks both up.
    let r = round(&ctx).await;
    assert_eq!(prime_pvcs(&w).len(), 2, "{r:?}");
    // With their prime PVCs made, waiting PVCs cost no Restore read per round.
    w.api.clear_requests();
    round(&ctx).await;
    let reads = w
        .api
        .requests()
        .iter()
        .filter(|r| r.resource == "restores")
        .count();
    assert_eq!(reads, 0);
}
