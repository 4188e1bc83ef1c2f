//! End to end in the cluster simulator: the real `stowage-scheduler` decides, the
//! simulated Job controller runs the real `stowage-mover` against the real S3 server
//! (Garage), and the results come back as PVC annotations, Events and snapshots.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use stowage_common::k8s::contract::{reason, status, user};
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_testkit::garage;
use stowage_testkit::world::{WAIT, World};

const MASTER: &str = "e2e master password";

fn pvcs() -> [(&'static str, &'static str); 5] {
    [
        ("db", "pg-data"),
        ("db", "pg-wal"),
        ("media", "library"),
        ("media", "covers"),
        ("web", "uploads"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_across_three_namespaces() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("db", &[]).unwrap();
    w.cluster.create_namespace("media", &[]).unwrap();
    // Operator-created PVCs that Git cannot label: the namespace opts them in.
    w.cluster
        .create_namespace("web", &[("backup", "hourly")])
        .unwrap();
    w.cluster.create_namespace("other", &[]).unwrap();
    for (i, (ns, pvc)) in pvcs().into_iter().enumerate() {
        let labels: &[(&str, &str)] = if ns == "web" {
            &[]
        } else {
            &[("backup", "hourly")]
        };
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        w.app(
            ns,
            pvc,
            node,
            labels,
            &[("data.txt", &format!("{ns}/{pvc} v1")), ("other", "x")],
        )
        .await;
    }
    // Not opted in: never backed up.
    w.app("other", "scratch", "node-a", &[], &[("f", "x")])
        .await;

    let mut scheduler_logs = Vec::new();
    // Pass 1: every opted-in PVC is due (never backed up).
    let (ok, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(ok, "{log}");
    scheduler_logs.push(log.clone());
    let jobs = w.jobs_finished().await;
    assert_eq!(jobs.len(), 5, "{log}");
    for j in &jobs {
        // Each mover ran on its volume's node (node-local PVs).
        let ns = j.metadata.namespace.as_deref().unwrap();
        let pods: Vec<k8s_openapi::api::core::v1::Pod> = w.cluster.store().list_labeled(
            Some(ns),
            &format!("job-name={}", j.metadata.name.as_deref().unwrap()),
        );
        assert!(
            pods.iter()
                .all(|p| p.spec.as_ref().unwrap().node_name.is_some())
        );
    }
    // Pass 2, ten minutes later: results recorded, nothing due.
    let (ok, log) = w.scheduler("2026-11-23T10:10:00Z").await;
    assert!(ok, "{log}");
    scheduler_logs.push(log);
    assert_eq!(w.jobs_finished().await.len(), 5, "nothing new started");
    for (ns, pvc) in pvcs() {
        assert_eq!(
            w.ann(ns, pvc, status::LAST_RESULT).as_deref(),
            Some("Succeeded"),
            "{ns}/{pvc}\n{}",
            w.cluster.all_pod_logs()
        );
        let snap = w.ann(ns, pvc, status::LAST_SNAPSHOT).unwrap();
        let snaps = w.snapshots(ns, pvc);
        assert_eq!(snaps.len(), 1, "{ns}/{pvc}");
        assert_eq!(snaps[0]["id"].as_str().unwrap(), snap);
        let tags = snaps[0]["tags"].to_string();
        assert!(
            tags.contains(&format!("pvc={pvc}")) && tags.contains("pvc-uid="),
            "{tags}"
        );
        assert_eq!(w.events(ns, pvc, reason::BACKUP_STARTED).len(), 1);
        assert_eq!(w.events(ns, pvc, reason::BACKUP_SUCCEEDED).len(), 1);
    }
    assert_eq!(w.ann("other", "scratch", status::LAST_JOB), None);

    // Across the due time: a second backup of each, with the new content.
    std::fs::write(
        w.cluster
            .volume_dir("db", "pg-data")
            .unwrap()
            .join("data.txt"),
        "db/pg-data v2",
    )
    .unwrap();
    let (ok, log) = w.scheduler("2026-11-23T11:00:30Z").await;
    assert!(ok, "{log}");
    assert_eq!(w.jobs_finished().await.len(), 10);
    let (ok, log) = w.scheduler("2026-11-23T11:05:00Z").await;
    assert!(ok, "{log}");
    for (ns, pvc) in pvcs() {
        assert_eq!(w.snapshots(ns, pvc).len(), 2, "{ns}/{pvc}");
        assert_eq!(w.events(ns, pvc, reason::BACKUP_SUCCEEDED).len(), 2);
    }

    // No secret in any log line, Event or annotation of the whole run.
    let g = garage::shared();
    let env: BTreeMap<String, String> = g.env("x").into_iter().collect();
    let mut secrets = vec![MASTER.to_string(), env["AWS_SECRET_ACCESS_KEY"].clone()];
    for (ns, pvc) in pvcs() {
        secrets.push(derive_repository_password(MASTER, &w.repository(ns, pvc)));
    }
    let events: Vec<Event> = w.cluster.store().list(None);
    let pvc_objs: Vec<PersistentVolumeClaim> = w.cluster.store().list(None);
    let haystack = format!(
        "{}\n{}\n{}\n{}",
        w.cluster.all_pod_logs(),
        scheduler_logs.join("\n"),
        serde_json::to_string(&events).unwrap(),
        serde_json::to_string(&pvc_objs).unwrap()
    );
    assert!(haystack.len() > 1000, "the scan sees the logs");
    for s in &secrets {
        assert!(
            !haystack.contains(s.as_str()),
            "a secret leaked into logs/Events"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_mover_is_reported_and_retried_at_the_next_due_time() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("db", &[]).unwrap();
    w.app("db", "pg", "node-a", &[("backup", "hourly")], &[("f", "1")])
        .await;
    let (ok, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(ok, "{log}");
    w.jobs_finished().await;
    w.scheduler("2026-11-23T10:05:00Z").await;
    assert_eq!(
        w.ann("db", "pg", status::LAST_RESULT).as_deref(),
        Some("Succeeded")
    );

    // The master password is replaced by mistake: the derived password no longer opens
    // the repository.
    let store = w.cluster.store();
    store
        .modify::<Secret>("stowage", "stowage-credentials", |s| {
            s.data.as_mut().unwrap().insert(
                "master-password".into(),
                k8s_openapi::ByteString(b"wrong master".to_vec()),
            );
        })
        .unwrap();
    let (ok, log) = w.scheduler("2026-11-23T11:00:10Z").await;
    assert!(ok, "{log}");
    w.jobs_finished().await;
    let (ok, log) = w.scheduler("2026-11-23T11:10:00Z").await;
    assert!(ok, "{log}");
    assert_eq!(
        w.ann("db", "pg", status::LAST_RESULT).as_deref(),
        Some("Failed: WrongPassword")
    );
    let failed = w.events("db", "pg", reason::BACKUP_FAILED);
    assert_eq!(failed.len(), 1);
    assert!(failed[0].contains("password"), "{}", failed[0]);
    assert!(!failed[0].contains("wrong master"), "no secret in Events");
    // Not retried in a tight loop: nothing starts before the next scheduled time.
    let jobs_before = w.jobs_finished().await.len();
    w.scheduler("2026-11-23T11:30:00Z").await;
    assert_eq!(w.jobs_finished().await.len(), jobs_before);

    // Fixed; the next due pass retries and succeeds.
    store
        .modify::<Secret>("stowage", "stowage-credentials", |s| {
            s.data.as_mut().unwrap().insert(
                "master-password".into(),
                k8s_openapi::ByteString(MASTER.as_bytes().to_vec()),
            );
        })
        .unwrap();
    w.scheduler("2026-11-23T12:00:05Z").await;
    assert_eq!(w.jobs_finished().await.len(), jobs_before + 1);
    w.scheduler("2026-11-23T12:05:00Z").await;
    assert_eq!(
        w.ann("db", "pg", status::LAST_RESULT).as_deref(),
        Some("Succeeded")
    );
    assert_eq!(w.snapshots("db", "pg").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pvc_incarnation_is_refused_its_first_backup_until_allowed() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("db", &[]).unwrap();
    w.app(
        "db",
        "pg",
        "node-a",
        &[("backup", "hourly")],
        &[("f", "precious data")],
    )
    .await;
    w.scheduler("2026-11-23T10:00:00Z").await;
    w.jobs_finished().await;
    w.scheduler("2026-11-23T10:05:00Z").await;
    assert_eq!(w.snapshots("db", "pg").len(), 1);

    // The app is re-created on a new, re-initialised volume (same names, new UID).
    let store = w.cluster.store();
    store
        .delete::<k8s_openapi::api::core::v1::Pod>("db", "app-pg")
        .unwrap();
    store.delete::<PersistentVolumeClaim>("db", "pg").unwrap();
    w.cluster
        .wait_for(WAIT, |s| {
            s.get::<PersistentVolumeClaim>("db", "pg")
                .is_none()
                .then_some(())
        })
        .await
        .unwrap();
    w.app(
        "db",
        "pg",
        "node-b",
        &[("backup", "hourly")],
        &[("f", "fresh install")],
    )
    .await;

    let (ok, log) = w.scheduler("2026-11-23T10:10:00Z").await;
    assert!(ok, "{log}");
    w.jobs_finished().await;
    w.scheduler("2026-11-23T10:15:00Z").await;
    assert_eq!(
        w.ann("db", "pg", status::LAST_RESULT).as_deref(),
        Some("Failed: ForeignHistory")
    );
    let refused = w.events("db", "pg", reason::FOREIGN_HISTORY);
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].contains("stowage.io/adopt-repository=true"),
        "{}",
        refused[0]
    );
    assert_eq!(w.snapshots("db", "pg").len(), 1, "history untouched");

    // The user says this volume is the one to keep, and asks for a backup now.
    store
        .patch::<PersistentVolumeClaim>(
            "db",
            "pg",
            &json!({"metadata": {"annotations": {
                user::ADOPT_REPOSITORY: "true", user::BACKUP_NOW: "1"}}}),
        )
        .unwrap();
    w.scheduler("2026-11-23T10:20:00Z").await;
    w.jobs_finished().await;
    w.scheduler("2026-11-23T10:25:00Z").await;
    assert_eq!(
        w.ann("db", "pg", status::LAST_RESULT).as_deref(),
        Some("Succeeded")
    );
    assert_eq!(w.snapshots("db", "pg").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_that_is_down_gets_one_probe_per_pass_not_a_failed_job_per_pvc() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("db", &[]).unwrap();
    // The namespace's own repositories, on an endpoint nobody answers (the real
    // mover's classification of the failure feeds the breaker).
    let bucket = w.base().rsplit_once('/').unwrap().1.to_string();
    let pvcs = ["pg-0", "pg-1", "pg-2", "pg-3"];
    for p in pvcs {
        w.app("db", p, "node-a", &[("backup", "hourly")], &[("f", "x")])
            .await;
        w.cluster
            .store()
            .patch::<PersistentVolumeClaim>(
                "db",
                p,
                &json!({"metadata": {"annotations": {
                    user::REPOSITORY: format!("s3:http://127.0.0.1:9/{bucket}/db/{p}")
                }}}),
            )
            .unwrap();
    }
    let (ok, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(ok, "{log}");
    assert_eq!(w.jobs_finished().await.len(), 4);
    let (ok, log) = w.scheduler("2026-11-23T10:05:00Z").await;
    assert!(ok, "one PVC's failed backup does not fail the run: {log}");
    for p in pvcs {
        let result = w.ann("db", p, status::LAST_RESULT).unwrap_or_default();
        // `Storage` (refused) or `StorageTimeout`.
        assert!(result.starts_with("Failed: Storage"), "{result}: {log}");
    }
    let storage_events = || -> Vec<Event> {
        let all: Vec<Event> = w.cluster.store().list(Some("stowage"));
        all.into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason::STORAGE_UNREACHABLE))
            .collect()
    };
    assert_eq!(storage_events().len(), 1, "{log}");
    // Due again: one probe Job, not four failed ones.
    let (ok, log) = w.scheduler("2026-11-23T11:00:10Z").await;
    assert!(ok, "{log}");
    assert_eq!(w.jobs_finished().await.len(), 5, "{log}");
    assert!(log.contains("storage_unreachable"), "{log}");
    let (_, log) = w.scheduler("2026-11-23T11:05:00Z").await;
    assert_eq!(
        storage_events().len(),
        1,
        "one Event for the storage: {log}"
    );
}
