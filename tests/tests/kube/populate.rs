//! Zero-touch restore on the real control plane: PVCs whose `spec.dataSourceRef` names
//! the `Restore` kind, populated by the real `stowage-prewarm` run as users run it
//! (`kubectl create job --from=cronjob/stowage-prewarm`, as its ServiceAccount, through
//! the shipped RBAC and the admission policy), with the real PV controller and
//! scheduler holding the app's pod until its volume is bound. The same scenarios on
//! the simulator are `tests/tests/prewarm_e2e.rs`. prewarm's run is shortened by
//! settings of the install (`install::prewarm_test_settings`).

use std::collections::BTreeMap;
use stowage_testkit::kube::scenario::{
    assert_policy_denied, movers_turn, service_account_client, until_policy_enforced,
};

use serde_json::json;
use stowage_common::k8s::contract::{prewarm as pc, reason, status, user};
use stowage_testkit::kube::install::{self, Options};
use stowage_testkit::kube::populate::{Env, Order, fill, naive_class, running};
use stowage_testkit::kube::{LOCAL_CLASS, NODES};
use stowage_testkit::sim::digest;
use stowage_testkit::tls::TlsFront;

/// A fresh install: the PVC names the `Restore` kind and no backup exists. prewarm
/// binds it empty (annotation and Event `BoundEmpty`), the app's pod starts only once
/// it is bound, and the scheduler's first backup of it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_install_binds_empty_through_the_populator_then_the_first_backup_follows() {
    let _turn = movers_turn().await;
    let env = Env::shared().await;
    let _scope = env.c.cp.scope("populate-fresh");
    let ns = env.c.cp.unique_name("populate-fresh");
    env.namespace(&ns, &[]).await;
    let order = Order::record(&env, &[&ns]).await;
    env.apply_new_app(&ns, "data", NODES[0]).await;
    env.populate(&[(&ns, "data")]).await;
    assert_eq!(
        env.ann(&ns, "data", pc::status::BOUND_EMPTY)
            .await
            .as_deref(),
        Some(pc::EMPTY_NO_BACKUP)
    );
    assert_eq!(env.ann(&ns, "data", status::POPULATED_FROM).await, None);
    assert_eq!(
        env.events(&ns, "data", pc::reason::BOUND_EMPTY).await.len(),
        1
    );
    assert!(env.primes_for(&ns, "data").await.is_empty());
    let dir = env.dir(&ns, "data").await;
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "empty");
    running(&env, &[(&ns, "app-data".to_string())]).await;
    let (bound, started) = (order.bound(&ns, "data"), order.started(&ns, "app-data"));
    assert!(
        bound.is_some() && bound < started,
        "the app's pod was bound to a node (revision {started:?}) only after its PVC (revision {bound:?})"
    );

    // The app writes; the scheduler backs it up (no history: no guard in the way).
    fill(&dir, 1);
    env.opt_in(&ns, "data").await;
    let log = env.backup(&[&ns]).await;
    assert_eq!(
        env.ann(&ns, "data", status::LAST_RESULT).await.as_deref(),
        Some("Succeeded"),
        "{log}\n{}",
        env.logs(&[&ns])
    );
    assert_eq!(env.snapshots(&ns, "data").len(), 1);
}

/// A cluster rebuild: PVCs in two namespaces, on both nodes of a WaitForFirstConsumer
/// node-local class, backed up; then a new control plane (a new etcd) with the same
/// bucket, stowage and the apps re-applied. A scheduler run before prewarm starts no
/// backup; prewarm restores every PVC identical in content and metadata before its
/// app's pod is bound to a node, records `stowage.io/populated-from`, leaves no prime
/// PVC; the next backups continue each history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rebuild_restores_every_pvc_before_its_app_starts_and_before_any_backup() {
    let _turn = movers_turn().await;
    let old = Env::shared().await;
    let _old_scope = old.c.cp.scope("populate-rebuild");
    let (db, web) = (
        old.c.cp.unique_name("rebuild-db"),
        old.c.cp.unique_name("rebuild-web"),
    );
    let apps = [
        (db.as_str(), "pg-data", NODES[0]),
        (db.as_str(), "pg-wal", NODES[1]),
        (web.as_str(), "uploads", NODES[0]),
    ];
    let namespaces = [db.as_str(), web.as_str()];
    for ns in namespaces {
        old.namespace(ns, &[]).await;
    }
    for (ns, pvc, node) in apps {
        old.apply_new_app(ns, pvc, node).await;
    }
    let keys: Vec<(&str, &str)> = apps.iter().map(|(n, p, _)| (*n, *p)).collect();
    old.populate(&keys).await;
    for (i, (ns, pvc, _)) in apps.iter().enumerate() {
        fill(&old.dir(ns, pvc).await, i as u64);
        old.opt_in(ns, pvc).await;
    }
    let log = old.backup(&namespaces).await;
    let mut before = BTreeMap::new();
    for (ns, pvc, _) in apps {
        assert_eq!(
            old.ann(ns, pvc, status::LAST_RESULT).await.as_deref(),
            Some("Succeeded"),
            "{log}"
        );
        before.insert(
            (ns, pvc),
            (
                digest::entries(&old.dir(ns, pvc).await),
                old.ann(ns, pvc, status::LAST_SNAPSHOT).await.unwrap(),
            ),
        );
    }
    // The old cluster is gone (for these apps: the shared one serves other tests).
    for ns in namespaces {
        old.delete_namespace(ns).await;
    }

    // The rebuild: a new etcd, the same S3 bucket, stowage and the apps from Git.
    let new = Env::new(&Options {
        bucket: Some(old.installed.bucket.clone()),
        ..Options::default()
    });
    let _scope = new.c.cp.scope("populate-rebuilt");
    for ns in namespaces {
        new.namespace(ns, &[]).await;
    }
    let order = Order::record(&new, &namespaces).await;
    for (ns, pvc, node) in apps {
        new.apply_app(ns, pvc, LOCAL_CLASS, pvc, node).await;
    }
    // The scheduler runs before prewarm: no backup may race the restore.
    let early = new.run("stowage-scheduler").await;
    assert!(early.ok(), "{}", early.log);
    for ns in namespaces {
        assert!(
            new.backup_jobs(ns).await.is_empty(),
            "no backup of a PVC being restored\n{}",
            early.log
        );
    }
    new.populate(&keys).await;
    for (ns, pvc, _) in apps {
        let (entries, snap) = &before[&(ns, pvc)];
        assert_eq!(
            &digest::entries(&new.dir(ns, pvc).await),
            entries,
            "{ns}/{pvc}"
        );
        assert_eq!(
            new.ann(ns, pvc, status::POPULATED_FROM).await.as_ref(),
            Some(snap)
        );
        assert_eq!(new.events(ns, pvc, pc::reason::RESTORED).await.len(), 1);
        assert_eq!(
            new.events(ns, pvc, pc::reason::RESTORE_STARTED).await.len(),
            1
        );
        assert!(new.primes_for(ns, pvc).await.is_empty(), "prime PVC gone");
    }
    let pods: Vec<(&str, String)> = apps
        .iter()
        .map(|(ns, pvc, _)| (*ns, format!("app-{pvc}")))
        .collect();
    running(&new, &pods).await;
    for (ns, pvc, _) in apps {
        let (bound, started) = (
            order.bound(ns, pvc),
            order.started(ns, &format!("app-{pvc}")),
        );
        assert!(
            bound.is_some() && bound < started,
            "{ns}/app-{pvc} was bound to a node (revision {started:?}) before its PVC was \
             bound (revision {bound:?})"
        );
    }
    // Backups continue the history (the first-backup guard lets populated PVCs through).
    let log = new.backup(&namespaces).await;
    for (ns, pvc, _) in apps {
        assert_eq!(
            new.ann(ns, pvc, status::LAST_RESULT).await.as_deref(),
            Some("Succeeded"),
            "{log}\n{}",
            new.logs(&namespaces)
        );
        assert_eq!(new.snapshots(ns, pvc).len(), 2, "{ns}/{pvc}");
    }
}

/// Restore into another namespace: refused until the source namespace grants it
/// (`stowage.io/grant-repositories-to`), then the latest snapshot and, as of a point
/// in time, the first; then the app is deleted and re-added and gets the latest back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_another_namespace_needs_its_grant_as_of_a_time_and_app_re_added() {
    let _turn = movers_turn().await;
    let env = Env::shared().await;
    let _scope = env.c.cp.scope("populate-grant");
    let (db, staging) = (
        env.c.cp.unique_name("grant-db"),
        env.c.cp.unique_name("grant-staging"),
    );
    env.namespace(&db, &[]).await;
    env.apply_new_app(&db, "pg", NODES[0]).await;
    env.populate(&[(&db, "pg")]).await;
    let dir = env.dir(&db, "pg").await;
    std::fs::write(dir.join("v"), "version 1").unwrap();
    env.opt_in(&db, "pg").await;
    env.backup(&[&db]).await;
    std::fs::write(dir.join("v"), "version 2").unwrap();
    env.annotate_pvc(&db, "pg", &[(user::BACKUP_NOW, "1")])
        .await;
    let log = env.backup(&[&db]).await;
    let snaps = env.snapshots(&db, "pg");
    assert_eq!(snaps.len(), 2, "{log}");
    let first_time: jiff::Timestamp = snaps
        .iter()
        .map(|s| s["time"].as_str().unwrap().to_string())
        .min()
        .unwrap()
        .parse()
        .unwrap();

    // Staging gets prod's latest; "yesterday" gets the first snapshot.
    env.namespace(&staging, &[]).await;
    let restore = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "stowage.io/v1alpha1", "kind": "Restore",
               "metadata": {"name": name, "namespace": staging}, "spec": spec})
    };
    install::apply(
        env.c.cp,
        &[
            restore(
                "from-prod",
                json!({"sourceNamespace": db, "sourcePvc": "pg"}),
            ),
            restore(
                "as-of",
                json!({"sourceNamespace": db, "sourcePvc": "pg", "asOf": first_time.to_string()}),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    env.apply_claim(&staging, "pg-copy", LOCAL_CLASS, "from-prod", false)
        .await;
    env.apply_pod(&staging, "pg-copy", NODES[1]).await;
    env.apply_claim(&staging, "pg-old", LOCAL_CLASS, "as-of", false)
        .await;
    env.apply_pod(&staging, "pg-old", NODES[1]).await;
    // prod has not granted staging its data: refused, with the fix.
    let hint =
        format!("kubectl annotate namespace {db} stowage.io/grant-repositories-to={staging}");
    {
        let (env, staging, hint) = (env, staging.clone(), hint.clone());
        env.prewarm_until("cross-namespace restores refused", true, move || {
            let (staging, hint) = (staging.clone(), hint.clone());
            async move {
                for pvc in ["pg-copy", "pg-old"] {
                    let refused = env
                        .events(&staging, pvc, pc::reason::RESTORE_NOT_GRANTED)
                        .await
                        .iter()
                        .any(|n| n.contains(&hint));
                    if !refused {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }
    for pvc in ["pg-copy", "pg-old"] {
        assert!(!env.bound(&staging, pvc).await, "{pvc} waits for the grant");
        assert!(
            env.primes_for(&staging, pvc).await.is_empty(),
            "nothing read before the grant"
        );
    }
    env.grant(&db, &staging);
    env.populate(&[(&staging, "pg-copy"), (&staging, "pg-old")])
        .await;
    let read = |d: std::path::PathBuf| std::fs::read_to_string(d.join("v")).unwrap();
    assert_eq!(read(env.dir(&staging, "pg-copy").await), "version 2");
    assert_eq!(read(env.dir(&staging, "pg-old").await), "version 1");
    assert_eq!(
        env.ann(&staging, "pg-copy", pc::status::RESTORED_FROM)
            .await,
        Some(env.repository(&db, "pg"))
    );

    // The app is deleted and re-added (same name, new PVC): the latest comes back.
    env.delete_app(&db, "pg").await;
    env.apply_app(&db, "pg", LOCAL_CLASS, "pg", NODES[1]).await;
    env.populate(&[(&db, "pg")]).await;
    assert_eq!(read(env.dir(&db, "pg").await), "version 2");
    assert!(env.ann(&db, "pg", status::POPULATED_FROM).await.is_some());
}

/// A namespace (re)created after the backup index was built: its PVC is restored from
/// the backup the index holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_created_after_the_backup_was_indexed() {
    let _turn = movers_turn().await;
    let env = Env::shared().await;
    let _scope = env.c.cp.scope("populate-index");
    let ns = env.c.cp.unique_name("indexed");
    env.namespace(&ns, &[]).await;
    env.apply_new_app(&ns, "pg", NODES[0]).await;
    env.populate(&[(&ns, "pg")]).await;
    fill(&env.dir(&ns, "pg").await, 7);
    env.opt_in(&ns, "pg").await;
    env.backup(&[&ns]).await;
    let expected = digest::entries(&env.dir(&ns, "pg").await);
    env.delete_namespace(&ns).await;
    // The index is rebuilt (an operator drops it: the next prewarm run builds it anew)
    // while the namespace does not exist.
    let out = install::kubectl(
        env.c.cp,
        &[
            "delete",
            "configmap",
            "-n",
            "stowage",
            "stowage-index",
            "--ignore-not-found",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let needle = format!("\"{ns}\"");
    env.prewarm_until("the index holds the backup", true, || {
        let needle = needle.clone();
        async move {
            use k8s_openapi::api::core::v1::ConfigMap;
            kube::Api::<ConfigMap>::namespaced(env.client().await, "stowage")
                .get_opt("stowage-index")
                .await
                .ok()
                .flatten()
                .and_then(|cm| cm.data?.get(pc::INDEX_KEY).cloned())
                .is_some_and(|i| i.contains(&needle))
        }
    })
    .await;
    // Then the namespace and its PVC appear.
    env.namespace(&ns, &[]).await;
    env.apply_app(&ns, "pg", LOCAL_CLASS, "pg", NODES[1]).await;
    env.populate(&[(&ns, "pg")]).await;
    assert_eq!(digest::entries(&env.dir(&ns, "pg").await), expected);
    assert!(env.ann(&ns, "pg", status::POPULATED_FROM).await.is_some());
}

/// The credentials Secret is missing (a cluster of its own: every other scenario uses
/// the shared install's Secret): one clear Event, the PVC waits and is never bound
/// empty; wrong S3 keys: the storage gives no clear answer, the PVC still waits; the
/// right Secret: it binds (empty: no backup exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_secret_keeps_the_pvc_pending_until_it_exists() {
    let env = Env::new(&Options {
        secret: false,
        ..Options::default()
    });
    let _scope = env.c.cp.scope("populate-secret");
    let ns = "app";
    env.namespace(ns, &[]).await;
    env.apply_app(ns, "data", LOCAL_CLASS, "data", NODES[0])
        .await;
    let run = env
        .prewarm_until("the missing Secret reported", false, || async move {
            !env.events(ns, "data", reason::CREDENTIALS_MISSING)
                .await
                .is_empty()
        })
        .await;
    // The run goes on polling: still one Event, not one per round.
    let missing = env.events(ns, "data", reason::CREDENTIALS_MISSING).await;
    assert_eq!(missing.len(), 1, "{}", run.log);
    assert!(
        missing[0].contains("stowage/stowage-credentials"),
        "{}",
        missing[0]
    );
    assert!(
        !env.bound(ns, "data").await,
        "never bound empty on an error"
    );
    assert!(env.primes_for(ns, "data").await.is_empty());

    // Wrong S3 keys: no clear answer from the storage.
    let bad = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "stowage-credentials", "namespace": "stowage"},
        "stringData": {"master-password": install::MASTER_PASSWORD,
                       "mover-access-key-id": "GKbad", "mover-secret-access-key": "bad"},
    });
    install::apply(env.c.cp, &[bad]).unwrap_or_else(|e| panic!("{e}"));
    env.prewarm_until("the unavailable storage reported", false, || async move {
        !env.events(ns, "data", pc::reason::SOURCE_UNAVAILABLE)
            .await
            .is_empty()
    })
    .await;
    assert!(!env.bound(ns, "data").await);
    assert!(env.primes_for(ns, "data").await.is_empty());

    // Fixed: it binds (no backup exists: empty, on the storage's clear answer).
    let out = install::kubectl(
        env.c.cp,
        &["delete", "secret", "-n", "stowage", "stowage-credentials"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    install::credentials_secret(env.c.cp, env.installed);
    env.populate(&[(ns, "data")]).await;
    assert_eq!(
        env.ann(ns, "data", pc::status::BOUND_EMPTY)
            .await
            .as_deref(),
        Some(pc::EMPTY_NO_BACKUP)
    );
}

/// A storage class in the manner of rancher local-path (it provisions claims that
/// carry a foreign `dataSourceRef`, empty) under a provisioner name no list knows:
/// prewarm's probe judges it unsafe, removes its probe (the volume too: the class
/// retains released volumes), emits the Event on the waiting PVC, and never binds an
/// empty volume for it although its backup exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_that_ignores_populators_is_judged_unsafe_and_never_bound_empty() {
    let _turn = movers_turn().await;
    let env = Env::shared().await;
    let _scope = env.c.cp.scope("populate-unsafe");
    let class = naive_class();
    let ns = env.c.cp.unique_name("unsafe");
    env.namespace(&ns, &[]).await;
    // A backup of the volume exists.
    env.apply_new_app(&ns, "data", NODES[0]).await;
    env.populate(&[(&ns, "data")]).await;
    fill(&env.dir(&ns, "data").await, 3);
    env.opt_in(&ns, "data").await;
    env.backup(&[&ns]).await;
    assert_eq!(env.snapshots(&ns, "data").len(), 1);
    env.delete_app(&ns, "data").await;
    // Re-added on the naive class (no consumer yet: the provisioner waits for one).
    env.apply_claim(&ns, "data", class, "data", true).await;
    {
        let ns = ns.clone();
        env.prewarm_until("class judged unsafe, probe cleaned up", true, move || {
            let ns = ns.clone();
            async move {
                !env.events(&ns, "data", pc::reason::UNSAFE_STORAGE_CLASS)
                    .await
                    .is_empty()
                    && env.probe_leftovers(class).await.is_empty()
            }
        })
        .await;
    }
    assert_eq!(env.verdict(class).await.as_deref(), Some("unsafe"));
    let refused = env
        .events(&ns, "data", pc::reason::UNSAFE_STORAGE_CLASS)
        .await;
    assert!(
        refused.iter().any(
            |m| m.contains(stowage_testkit::kube::storage::NAIVE_PROVISIONER)
                && m.contains("probe")
        ),
        "{refused:?}"
    );
    assert!(!env.bound(&ns, "data").await, "never bound empty");
    assert_eq!(env.ann(&ns, "data", pc::status::BOUND_EMPTY).await, None);
    assert!(
        env.primes_for(&ns, "data").await.is_empty(),
        "never populated"
    );
}

/// The admission policy (shipped component `admission-policy`, in the shared install)
/// on the real API server, for prewarm's ServiceAccount: it may delete the volume of
/// one of its probe PVCs (what prewarm does when the probed class retains released
/// volumes), and no other volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_policy_lets_prewarm_delete_only_the_volumes_of_its_probes() {
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::api::{Api, DeleteParams, PostParams};

    let _turn = movers_turn().await;
    let env = Env::shared().await;
    let _scope = env.c.cp.scope("populate-policy");
    let admin = env.client().await;
    let prewarm = service_account_client(env.c.cp, "stowage", "stowage-prewarm").await;
    // The policy is in force once the API server has loaded it (it type-checks what
    // it loaded: the status' observed generation).
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
    let loaded = kube::runtime::wait::await_condition(
        Api::<ValidatingAdmissionPolicy>::all(admin.clone()),
        "stowage-service-accounts",
        |p: Option<&ValidatingAdmissionPolicy>| {
            p.is_some_and(|p| {
                p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
            })
        },
    );
    tokio::time::timeout(stowage_testkit::kube::WAIT, loaded)
        .await
        .expect("the admission policy loaded")
        .expect("watch");
    let pvs = Api::<PersistentVolume>::all(admin);
    let pv = |name: &str, claim_ns: &str, claim: &str| -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain",
                     "storageClassName": "policy-test",
                     "hostPath": {"path": "/nonexistent"},
                     "claimRef": {"namespace": claim_ns, "name": claim}},
        }))
        .unwrap()
    };
    let probe_pv = env.c.cp.unique_name("policy-probe-pv");
    let user_pv = env.c.cp.unique_name("policy-user-pv");
    pvs.create(
        &PostParams::default(),
        &pv(&probe_pv, "stowage", "stowage-probe-policy-test"),
    )
    .await
    .expect("create PV");
    pvs.create(&PostParams::default(), &pv(&user_pv, "app", "data"))
        .await
        .expect("create PV");
    let as_prewarm = Api::<PersistentVolume>::all(prewarm);
    // Asked with server-side dry runs (nothing is deleted).
    let dry = DeleteParams {
        dry_run: true,
        ..DeleteParams::background()
    };
    until_policy_enforced(|| async { as_prewarm.delete(&user_pv, &dry).await.is_ok() }).await;
    as_prewarm
        .delete(&probe_pv, &DeleteParams::background())
        .await
        .unwrap_or_else(|e| panic!("prewarm may delete its probe's volume: {e}"));
    assert_policy_denied(
        as_prewarm
            .delete(&user_pv, &DeleteParams::background())
            .await,
        "prewarm deleted a volume that is not its probe's",
    );
    let _ = pvs.delete(&user_pv, &DeleteParams::background()).await;
}

/// The admission policy lets the scheduler create and delete its own temporary copies
/// of the Snapshot and Clone copy methods (`stowage_common::k8s::copy::copy_pvc`)
/// next to the PVC they copy, in an app's namespace, and denies it any other PVC
/// there, created or deleted. (The copy methods need a CSI driver: they run on the
/// simulator, `tests/tests/e2e/copy_methods_e2e.rs`; the policy denied their copies
/// until this test showed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_policy_admits_the_schedulers_temporary_copies_in_app_namespaces() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use kube::api::{Api, DeleteParams, PostParams};
    use stowage_common::k8s::copy::{CopyMethod, CopySpec, copy_pvc};

    let env = Env::shared().await;
    let _scope = env.c.cp.scope("policy-copies");
    let ns = env.c.cp.unique_name("policy-copies");
    env.namespace(&ns, &[]).await;
    let scheduler = service_account_client(env.c.cp, "stowage", "stowage-scheduler").await;
    let as_scheduler = Api::<PersistentVolumeClaim>::namespaced(scheduler, &ns);
    let admin = Api::<PersistentVolumeClaim>::namespaced(env.client().await, &ns);
    let copy = |method: CopyMethod, job: &str| {
        copy_pvc(&CopySpec {
            method,
            namespace: ns.clone(),
            pvc: "data".into(),
            pvc_uid: "uid-1".into(),
            job: job.into(),
            snapshot_class: None,
            storage_class: Some(LOCAL_CLASS.into()),
            size: "1Gi".into(),
        })
        .unwrap()
    };
    let foreign: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "not-ours", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": LOCAL_CLASS,
                 "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    until_policy_enforced(|| async { as_scheduler.create(&dry, &foreign).await.is_ok() }).await;
    assert_policy_denied(
        as_scheduler.create(&PostParams::default(), &foreign).await,
        "the scheduler created a PVC that is not its own",
    );
    for (method, job) in [
        (CopyMethod::Snapshot, "stowage-backup-data-snap"),
        (CopyMethod::Clone, "stowage-backup-data-clone"),
    ] {
        as_scheduler
            .create(&PostParams::default(), &copy(method, job))
            .await
            .unwrap_or_else(|e| panic!("the scheduler's {method:?} copy was refused: {e}"));
        as_scheduler
            .delete(job, &DeleteParams::background())
            .await
            .unwrap_or_else(|e| panic!("the scheduler may delete its {method:?} copy: {e}"));
    }
    admin
        .create(&PostParams::default(), &foreign)
        .await
        .expect("the user's PVC");
    assert_policy_denied(
        as_scheduler
            .delete("not-ours", &DeleteParams::background())
            .await,
        "the scheduler deleted a PVC that is not its own",
    );
}

/// stowage installed as on a cluster without the prometheus-operator and with its S3
/// behind a private CA, into another namespace than `stowage` (what Flux's
/// `targetNamespace` renders): the app with the `custom-ca` and `no-monitoring`
/// components (without `no-monitoring` the API server refuses the app there: no
/// PrometheusRule kind), the CA in the ConfigMap `custom-ca` mounts, Garage behind
/// TLS signed by that CA. A new PVC binds empty (prewarm read the bucket), the
/// scheduler's mover Job backs it up, a gc pass succeeds, and the app deleted and
/// re-added gets its data back from prewarm's restore mover: every program and both
/// kinds of mover Job trust the CA and work from that namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_endpoint_without_the_prometheus_operator_in_another_namespace() {
    // The TLS front lives as long as the process, like the cluster; its own runtime
    // can be neither started nor dropped on the test's.
    let tls: &'static TlsFront = std::thread::spawn(|| {
        &*Box::leak(Box::new(TlsFront::start(
            stowage_testkit::garage::shared().addr(),
        )))
    })
    .join()
    .unwrap();
    let home = "backup-system";
    let env = Env::new(&Options {
        components: vec!["custom-ca".into(), "no-monitoring".into()],
        tls: Some((tls.endpoint.clone(), tls.ca_bundle().to_path_buf())),
        namespace: home.into(),
        ..Options::default()
    });
    let _scope = env.c.cp.scope("populate-private-ca");
    assert_eq!(env.ns(), home);
    let tree = install::KustomizeTree::copy();
    let dir = tree.kustomization(
        "with-monitoring",
        &format!(
            "namespace: {home}\n{}",
            install::app_kustomization(&install::app_components(&tree))
        ),
    );
    let with_monitoring = tree
        .flux_build(&dir, &env.installed.vars)
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = install::apply_with(env.c.cp, &with_monitoring, true)
        .expect_err("the app with its PrometheusRule on a cluster without the CRD");
    assert!(refused.contains("PrometheusRule"), "{refused}");

    let ns = "shop";
    env.namespace(ns, &[]).await;
    env.apply_new_app(ns, "data", NODES[0]).await;
    env.populate(&[(ns, "data")]).await;
    assert_eq!(
        env.ann(ns, "data", pc::status::BOUND_EMPTY)
            .await
            .as_deref(),
        Some(pc::EMPTY_NO_BACKUP),
        "{}",
        env.logs(&[ns])
    );
    let dir = env.dir(ns, "data").await;
    fill(&dir, 5);
    let before = digest::entries(&dir);
    env.opt_in(ns, "data").await;
    let log = env.backup(&[ns]).await;
    assert_eq!(
        env.ann(ns, "data", status::LAST_RESULT).await.as_deref(),
        Some("Succeeded"),
        "{log}\n{}",
        env.logs(&[ns])
    );
    assert_eq!(env.snapshots(ns, "data").len(), 1);
    let gc = env.run("stowage-gc").await;
    assert!(gc.ok(), "gc: {:?}\n{}", gc.job.status, gc.log);
    assert!(
        gc.log.contains("maintaining") && gc.log.contains(&env.repository(ns, "data")),
        "gc maintained the repository: {}",
        gc.log
    );

    env.delete_app(ns, "data").await;
    env.apply_app(ns, "data", LOCAL_CLASS, "data", NODES[1])
        .await;
    env.populate(&[(ns, "data")]).await;
    assert_eq!(digest::entries(&env.dir(ns, "data").await), before);
    assert_eq!(
        env.events(ns, "data", pc::reason::RESTORED).await.len(),
        1,
        "{}",
        env.logs(&[ns])
    );
}
