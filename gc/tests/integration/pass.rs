//! A whole gc pass through the real `kube` client against the fake API, with its
//! repositories on Garage: discovery, per-PVC retention, orphans, state, Job cleanup
//! (per-run Secrets go with their Job), dry run, manual backups' TTL, retention held
//! back when it would forget too much at once; the real binary's `--now` and its push
//! to a Pushgateway.

use crate::support;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use serde_json::{Value, json};
use stowage_common::env::GcConfig;
use stowage_common::k8s::mover_job::mover_labels;
use stowage_common::k8s::naming::Operation;
use stowage_common::metrics::names;
use stowage_gc::pass::{self, PassOptions};
use stowage_testkit::fakeapi::store::base64;
use stowage_testkit::garage;
use stowage_testkit::world::ApiWorld as World;
use support::*;

fn ago(h: i64) -> String {
    (Timestamp::now() - SignedDuration::from_hours(h)).to_string()
}

fn world() -> World {
    support::world(
        "gc-pass",
        "hourly: {schedule: \"@hourly\", retention: {keepLast: 1}}\n",
    )
}

fn config(w: &World) -> GcConfig {
    GcConfig::from_vars(&[
        ("STOWAGE_REPOSITORY_BASE".to_string(), w.base()),
        ("STOWAGE_ALLOW_HTTP".into(), "true".into()),
        ("AWS_DEFAULT_REGION".into(), garage::REGION.into()),
        ("STOWAGE_LOG".into(), "info".into()),
    ])
    .unwrap()
}

/// restic's `--time` form of `now - days`.
fn days_before(now: Timestamp, days: i64) -> String {
    (now - SignedDuration::from_hours(24 * days))
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A restic repository at `<base>/<ns>/<pvc>` with the derived password.
fn repository(w: &World, ns: &str, pvc: &str, seed: u64) -> Vec<(String, String)> {
    repository_at(
        w,
        ns,
        pvc,
        seed,
        &[
            "2026-03-01 00:00:00",
            "2026-03-10 00:00:00",
            "2026-03-15 00:00:00",
        ],
    )
}

fn job(w: &World, name: &str, finished_hours_ago: Option<i64>, ttl: Option<i32>) -> Job {
    let job: Job = w.api.put(json!({
        "metadata": {"name": name, "namespace": "a",
                     "labels": mover_labels(Operation::Backup, "uid-data")},
        "spec": {"ttlSecondsAfterFinished": ttl,
                 "template": {"spec": {"containers": [{"name": "m", "image": "x"}],
                                        "restartPolicy": "Never"}}}
    }));
    if let Some(h) = finished_hours_ago {
        w.api
            .store()
            .modify::<Job>("a", name, |j| {
                j.status = Some(serde_json::from_value(json!({
                    "completionTime": ago(h), "succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": ago(h)}]
                })).unwrap());
            })
            .unwrap();
    }
    job
}

fn secret_of(w: &World, name: &str, owner: Option<&Job>) {
    let owners = owner.map(|j| {
        json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": j.metadata.name, "uid": j.metadata.uid, "controller": true}])
    });
    w.api.put::<Secret>(json!({
        "metadata": {"name": name, "namespace": "a",
                     "labels": mover_labels(Operation::Backup, "uid-data"),
                     "ownerReferences": owners},
        "data": {"RESTIC_PASSWORD": base64(b"x")}
    }));
}

/// A pass at `now`.
async fn pass(w: &World, cfg: &GcConfig, now: Timestamp, dry_run: bool) -> pass::PassReport {
    let client = w.api.client_for(USER);
    pass::run(
        client,
        cfg,
        PassOptions {
            dry_run,
            now,
            ..PassOptions::default()
        },
    )
    .await
    .unwrap()
}

/// The real binary, as the CronJob runs it, at `now` (`--now`), pushing its metrics to
/// a one-request Pushgateway. Returns (exit code, stderr, the request the Pushgateway
/// received).
fn run_binary(w: &World, now: Timestamp) -> (i32, String, String) {
    let (port, server) = stowage_testkit::pushgateway::capture_one_request();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-gc"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", w.api.kubeconfig_for(USER))
        .env("STOWAGE_REPOSITORY_BASE", w.base())
        .env("STOWAGE_ALLOW_HTTP", "true")
        .env("AWS_DEFAULT_REGION", garage::REGION)
        .env("STOWAGE_LOG_FORMAT", "text")
        .env(
            "STOWAGE_PUSHGATEWAY_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .args(["--now", &now.to_string()])
        .output()
        .unwrap();
    let req = server.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        req,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_maintains_repositories_reports_orphans_and_cleans_up() {
    let w = world();
    let (cfg, now) = (config(&w), clock());
    w.api.put::<PersistentVolumeClaim>(json!({
        "metadata": {"name": "data", "namespace": "a", "labels": {"backup": "hourly"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }));
    let data = repository(&w, "a", "data", 100);
    let gone = repository(&w, "a", "gone", 200);
    // Backed up by hand only (no policy label): each snapshot lives for the manual TTL
    // (720h) after it was taken, the newest however old.
    w.api.put::<PersistentVolumeClaim>(json!({
        "metadata": {"name": "hand", "namespace": "a"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }));
    let hand = repository_at(
        &w,
        "a",
        "hand",
        300,
        &[
            &days_before(now, 60),
            &days_before(now, 45),
            &days_before(now, 20),
            &days_before(now, 2),
        ],
    );
    let old = job(&w, "stowage-backup-data-old", Some(48), None);
    secret_of(&w, "stowage-backup-data-old", Some(&old));
    let fresh = job(&w, "stowage-backup-data-new", Some(1), None);
    secret_of(&w, "stowage-backup-data-new", Some(&fresh));
    let run = job(&w, "stowage-backup-data-run", None, None);
    secret_of(&w, "stowage-backup-data-run", Some(&run));

    // Dry run: reports, changes nothing.
    let dry = pass(&w, &cfg, now, true).await;
    assert_eq!(dry.repositories.len(), 3, "{dry:#?}");
    assert_eq!(dry.jobs_deleted, vec!["a/stowage-backup-data-old"]);
    assert_eq!(snapshot_count(&data), 3);
    assert!(exists::<Job>(&w, "stowage-backup-data-old"));
    assert!(
        w.api
            .store()
            .get::<ConfigMap>("stowage", "stowage-gc-state")
            .is_none()
    );

    let report = pass(&w, &cfg, now, false).await;
    assert!(!report.failed(), "{:?} {:?}", report.errors, report.damaged);
    // keepLast 1 for the PVC's policy; the orphan keeps 30 days before its newest.
    assert_eq!(snapshot_count(&data), 1);
    assert_eq!(snapshot_count(&gone), 3);
    assert_eq!(
        snapshot_count(&hand),
        2,
        "the 60 and 45 days old manual backups expired"
    );
    assert_eq!(report.orphans.len(), 1);
    assert!(
        report.orphans[0].ends_with("/a/gone"),
        "{:?}",
        report.orphans
    );
    for r in &report.repositories {
        let o = r.outcome.as_ref().unwrap();
        assert!(o.pruned, "first pass prunes (never pruned before)");
        assert_eq!(o.check, Some(vec![]), "first pass checks");
    }
    restic(&data, &["check", "--read-data"], None).ok();
    restic(&gone, &["check"], None).ok();
    // Cleanup: the old finished Job, and with it (garbage collector) its Secret.
    assert!(!exists::<Job>(&w, "stowage-backup-data-old"));
    assert!(!exists::<Secret>(&w, "stowage-backup-data-old"));
    assert!(exists::<Job>(&w, "stowage-backup-data-new"));
    assert!(exists::<Secret>(&w, "stowage-backup-data-new"));
    assert!(exists::<Job>(&w, "stowage-backup-data-run"));
    assert!(exists::<Secret>(&w, "stowage-backup-data-run"));
    // Metrics.
    let text = report.metrics.render();
    assert!(text.contains("stowage_gc_orphan_repository{"), "{text}");
    assert!(text.contains("stowage_gc_snapshots_forgotten 4"), "{text}");
    assert!(text.contains("stowage_gc_check_ok{"), "{text}");
    assert!(
        text.contains("stowage_gc_last_success_timestamp_seconds"),
        "{text}"
    );

    // The state is recorded: the next pass neither prunes nor checks again.
    assert!(
        w.api
            .store()
            .get::<ConfigMap>("stowage", "stowage-gc-state")
            .is_some()
    );
    let again = pass(&w, &cfg, now, false).await;
    assert!(!again.failed(), "{:?}", again.errors);
    for r in &again.repositories {
        let o = r.outcome.as_ref().unwrap();
        assert!(!o.pruned && o.check.is_none(), "{o:?}");
    }
    // ...but still reports the last check's result and the last success (each push
    // replaces the whole group on the Pushgateway).
    let text = again.metrics.render();
    assert!(text.contains("stowage_gc_check_ok{"), "{text}");
    assert_eq!(
        again
            .metrics
            .value(names::GC_LAST_SUCCESS, &[])
            .map(|v| v as i64),
        Some(now.as_second())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_at_its_now_and_pushes_its_metrics() {
    let w = world();
    let now = clock();
    w.api.put::<PersistentVolumeClaim>(json!({
        "metadata": {"name": "data", "namespace": "a", "labels": {"backup": "hourly"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }));
    repository(&w, "a", "data", 400);
    let old = job(&w, "stowage-backup-data-old", Some(30), None);
    secret_of(&w, "stowage-backup-data-old", Some(&old));

    let (code, stderr, req) = run_binary(&w, now);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        req.starts_with("PUT /metrics/job/stowage-gc HTTP/1.1"),
        "{req}"
    );
    let repo = format!("{}/backups/a/data", w.base().rsplit('/').nth(1).unwrap());
    for line in [
        "stowage_gc_repositories{result=\"ok\"} 1".to_string(),
        "stowage_gc_snapshots_forgotten 2".into(),
        "stowage_gc_jobs_deleted 1".into(),
        "stowage_gc_errors 0".into(),
        format!("stowage_gc_check_ok{{repository=\"{repo}\"}} 1"),
        format!(
            "stowage_gc_check_last_timestamp_seconds{{repository=\"{repo}\"}} {}",
            now.as_second()
        ),
        format!(
            "stowage_gc_last_success_timestamp_seconds {}",
            now.as_second()
        ),
        format!(
            "stowage_pass_last_run_timestamp_seconds{{program=\"stowage-gc\"}} {}",
            now.as_second()
        ),
        "stowage_pass_duration_seconds{program=\"stowage-gc\"}".into(),
    ] {
        assert!(req.contains(&line), "{line} missing in:\n{req}");
    }
    assert!(!exists::<Job>(&w, "stowage-backup-data-old"));
    assert!(!exists::<Secret>(&w, "stowage-backup-data-old"));

    // A failing pass (the master password is gone) still pushes the time of the last
    // success, so that the alert on it sees gc failing.
    w.api
        .store()
        .modify::<Secret>("stowage", "stowage-credentials", |s| {
            s.data.as_mut().unwrap().remove("master-password");
        })
        .unwrap();
    let first = now;
    let now = first + SignedDuration::from_hours(1);
    let (code, stderr, req) = run_binary(&w, now);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("master-password"), "{stderr}");
    assert!(!req.contains("stowage_gc_errors 0"), "{req}");
    assert!(
        req.contains(&format!(
            "stowage_gc_last_success_timestamp_seconds {}",
            first.as_second()
        )),
        "{req}"
    );
    assert!(
        req.contains(&format!("stowage_gc_check_ok{{repository=\"{repo}\"}} 0")),
        "a repository that cannot be opened reads as not ok: {req}"
    );
}

/// At scale a pass opens only the repositories with work (two LIST requests show that
/// the others did not change), and starts none once its budget is used: those keep
/// their state, stay due, and are done by the next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_repositories_are_not_opened_and_the_budget_defers_work() {
    let w = world();
    let (cfg, now) = (config(&w), clock());
    let mut repos = Vec::new();
    for (i, pvc) in ["p1", "p2", "p3"].into_iter().enumerate() {
        w.api.put::<PersistentVolumeClaim>(json!({
                "metadata": {"name": pvc, "namespace": "a", "labels": {"backup": "hourly"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            }),
        );
        repos.push(repository(&w, "a", pvc, 500 + i as u64 * 10));
    }
    let first = pass(&w, &cfg, now, false).await;
    assert!(!first.failed(), "{:?}", first.errors);
    assert_eq!((first.unchanged, first.deferred), (0, 0));
    assert!(repos.iter().all(|r| snapshot_count(r) == 1));

    // Nothing changed, nothing due: not one repository opened, their metrics still
    // pushed from the state.
    let again = pass(&w, &cfg, now, false).await;
    assert!(!again.failed(), "{:?}", again.errors);
    assert_eq!(again.unchanged, 3);
    // Discovery (a few LISTs and a HEAD per repository) and two LISTs per repository.
    assert!(again.s3_requests <= 3 + 3 * 3, "{}", again.s3_requests);
    let text = again.metrics.render();
    assert!(
        text.contains("stowage_gc_repositories{result=\"unchanged\"} 3"),
        "{text}"
    );
    assert!(text.contains("stowage_gc_snapshots{"), "{text}");
    assert!(text.contains("stowage_gc_check_ok{"), "{text}");

    // A new backup of p2: only p2 is opened, and its retention runs (the new snapshot
    // has other paths, so it starts a group of its own and nothing is forgotten).
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("new"), "new data").unwrap();
    restic(
        &repos[1],
        &["backup", "--host", "volsync", "."],
        Some(d.path()),
    )
    .ok();
    assert_eq!(snapshot_count(&repos[1]), 2);
    let third = pass(&w, &cfg, now, false).await;
    assert!(!third.failed(), "{:?}", third.errors);
    assert_eq!(third.unchanged, 2);
    let p2 = third
        .repositories
        .iter()
        .find(|r| r.target.repository.ends_with("/a/p2"))
        .unwrap();
    assert_eq!(p2.skipped, None);
    assert_eq!(p2.outcome.as_ref().unwrap().snapshots_before, 2);
    // Its new listing is recorded: the pass after opens nothing again.
    assert_eq!(pass(&w, &cfg, now, false).await.unchanged, 3);

    // A day later every check is due, but the pass has used its one-second budget
    // before it gets to the repositories (its state read answers late): nothing is
    // started, nothing fails, the checks stay due...
    let state = |w: &World| {
        w.api
            .store()
            .get::<ConfigMap>("stowage", "stowage-gc-state")
            .unwrap()
            .data
            .unwrap()["state.json"]
            .clone()
    };
    let before = state(&w);
    let usual = cfg.clone();
    let mut cfg = cfg.clone();
    cfg.common.pass_budget_secs = 1;
    let later = now + SignedDuration::from_hours(25);
    w.api.inject(
        stowage_testkit::fakeapi::Fault::delay(std::time::Duration::from_millis(1500))
            .verb("get")
            .resource("configmaps")
            .name("stowage-gc-state")
            .times(1),
    );
    let budgeted = pass(&w, &cfg, later, false).await;
    assert!(!budgeted.failed(), "{:?}", budgeted.errors);
    assert_eq!((budgeted.deferred, budgeted.unchanged), (3, 0));
    let text = budgeted.metrics.render();
    assert!(
        text.contains("stowage_gc_repositories{result=\"deferred\"} 3"),
        "{text}"
    );
    assert!(text.contains("stowage_gc_check_ok{"), "{text}");
    let after: Value = serde_json::from_str(&state(&w)).unwrap();
    let before: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(after, before, "deferred work leaves the state as it was");
    // ...and the next pass (with the usual budget) does them.
    let next = pass(&w, &usual, later, false).await;
    assert!(!next.failed(), "{:?}", next.errors);
    assert_eq!((next.deferred, next.unchanged), (0, 0));
    for r in &next.repositories {
        assert_eq!(r.outcome.as_ref().unwrap().check, Some(vec![]), "{r:?}");
    }
}

/// Events of `reason` about the object `name`.
fn events(w: &World, reason: &str, name: &str) -> Vec<String> {
    w.api
        .store()
        .list::<k8s_openapi::api::events::v1::Event>(None)
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .filter_map(|e| e.note)
        .collect()
}

/// A retention that would forget more than half of a repository's snapshots at once
/// (6 of 7: a policy cut down by mistake, a clock far off) is held back for that
/// repository: nothing forgotten, a Warning Event on its PVC (on gc's state ConfigMap
/// in the stowage namespace for an orphan) and a metric, the pass itself fine. A
/// confirmation of the count (the PVC's annotation, `--confirm-forget` for an orphan)
/// lets the next pass forget exactly that; used once, it does not confirm a later hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_that_forgets_too_much_waits_for_a_confirmation() {
    let w = world();
    let (cfg, now) = (config(&w), clock());
    w.api.put::<PersistentVolumeClaim>(json!({
        "metadata": {"name": "data", "namespace": "a", "labels": {"backup": "hourly"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }));
    let days = |d: &[i64]| d.iter().map(|d| days_before(now, *d)).collect::<Vec<_>>();
    // keepLast 1 (the world's `hourly`): 6 of 7 go.
    let data_times = days(&[1, 2, 3, 4, 5, 6, 7]);
    let data_refs: Vec<&str> = data_times.iter().map(String::as_str).collect();
    let data = repository_at(&w, "a", "data", 700, &data_refs);
    // An orphan under the default keepWithin 720h: all but its newest are older.
    let gone_times = days(&[1, 40, 50, 60, 70, 80, 90]);
    let gone_refs: Vec<&str> = gone_times.iter().map(String::as_str).collect();
    let gone = repository_at(&w, "a", "gone", 800, &gone_refs);

    let dry = pass(&w, &cfg, now, true).await;
    assert_eq!(dry.blocked.len(), 2, "{:?}", dry.blocked);
    let report = pass(&w, &cfg, now, false).await;
    assert!(
        !report.failed(),
        "a hold is no failure: {:?}",
        report.errors
    );
    assert_eq!(snapshot_count(&data), 7, "nothing forgotten");
    assert_eq!(snapshot_count(&gone), 7, "nothing forgotten");
    let on_pvc = events(&w, "RetentionBlocked", "data");
    assert_eq!(on_pvc.len(), 1, "{on_pvc:?}");
    assert!(
        on_pvc[0].contains("6 of 7")
            && on_pvc[0]
                .contains("kubectl -n a annotate pvc data --overwrite stowage.io/confirm-forget=6"),
        "{}",
        on_pvc[0]
    );
    let on_state = events(&w, "RetentionBlocked", "stowage-gc-state");
    assert_eq!(on_state.len(), 1, "{on_state:?}");
    let gone_id = report
        .repositories
        .iter()
        .find(|r| r.target.is_orphan())
        .unwrap()
        .target
        .identity
        .clone();
    assert!(
        on_state[0].contains(&format!("--confirm-forget {gone_id}=6")),
        "{}",
        on_state[0]
    );
    // No secret in any Event.
    let secrets = [
        MASTER.to_string(),
        garage::shared().secret_key.clone(),
        data.iter()
            .find(|(k, _)| k == "RESTIC_PASSWORD")
            .unwrap()
            .1
            .clone(),
    ];
    for e in w
        .api
        .store()
        .list::<k8s_openapi::api::events::v1::Event>(None)
    {
        let note = e.note.unwrap_or_default();
        assert!(!secrets.iter().any(|s| note.contains(s.as_str())), "{note}");
    }
    let text = report.metrics.render();
    let blocked_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("stowage_gc_retention_blocked{"))
        .collect();
    assert_eq!(blocked_lines.len(), 2, "{text}");
    assert!(
        blocked_lines
            .iter()
            .any(|l| l.contains("persistentvolumeclaim=\"data\"") && l.ends_with(" 6")),
        "{text}"
    );

    // Held back again by the next pass (the repository is opened to judge it again).
    let again = pass(&w, &cfg, now, false).await;
    assert_eq!(again.blocked.len(), 2, "{:?}", again.blocked);
    assert_eq!(snapshot_count(&data), 7);

    // Confirmed: the PVC by its annotation, the orphan by the flag.
    w.api
        .store()
        .modify::<PersistentVolumeClaim>("a", "data", |p| {
            p.metadata
                .annotations
                .get_or_insert_default()
                .insert("stowage.io/confirm-forget".into(), "6".into());
        })
        .unwrap();
    let client = w.api.client_for(USER);
    let confirmed = pass::run(
        client,
        &cfg,
        PassOptions {
            now,
            confirm_forget: [(gone_id.clone(), "6".to_string())].into(),
            ..PassOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(confirmed.blocked.is_empty(), "{:?}", confirmed.blocked);
    assert_eq!(snapshot_count(&data), 1);
    assert_eq!(snapshot_count(&gone), 1);
    assert_eq!(events(&w, "RetentionConfirmed", "data").len(), 1);
    assert!(
        !confirmed
            .metrics
            .render()
            .contains("stowage_gc_retention_blocked{"),
        "the hold is over"
    );

    // Six new backups: the same count again, but the annotation was used once.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f"), "new").unwrap();
    for h in (1..=6).rev() {
        let t = (now - SignedDuration::from_hours(h))
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        restic(
            &data,
            &["backup", "--host", "volsync", "--time", &t, "."],
            Some(d.path()),
        )
        .ok();
    }
    assert_eq!(snapshot_count(&data), 7);
    let later = pass(&w, &cfg, now, false).await;
    let (_, why) = later
        .blocked
        .iter()
        .find(|(r, _)| r.ends_with("/a/data"))
        .expect("held back again");
    assert!(why.contains("used by an earlier run"), "{why}");
    assert_eq!(snapshot_count(&data), 7);
}
