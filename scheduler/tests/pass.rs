//! Scheduler passes through the real `kube` client against the stateful fake API:
//! which PVCs get Jobs, skips by reason, the concurrency limit, idempotent re-runs,
//! results read back from finished Jobs, and clear errors.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use serde_json::{Value, json};
use stowage_common::env::SchedulerConfig;
use stowage_common::k8s::contract::{self, status};
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_common::k8s::pod_security::restricted_violations;
use stowage_scheduler::pass::{self, PassOptions, PassReport};
use stowage_testkit::fakeapi::Fault;
use stowage_testkit::fakeapi::store::base64;
use stowage_testkit::obj;
use stowage_testkit::world::{ApiWorld, Keys, World, bound_app_pvc};

const USER: &str = "system:serviceaccount:stowage:stowage-scheduler";

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn world() -> ApiWorld {
    World::builder("master")
        .namespace("a")
        .namespace("b")
        .policies("hourly: {schedule: \"@hourly\"}\ndaily: {schedule: \"0 3 * * *\"}\n")
        .mover_keys(Keys::Fixed("AKMOVER", "SKMOVER"))
        .build_api()
}

fn namespace(w: &ApiWorld, name: &str, labels: Value) {
    w.api
        .put::<Namespace>(json!({"metadata": {"name": name, "labels": labels}}));
}

/// A bound PVC with a running app pod (uid 1000) on node-a.
fn pvc(
    w: &ApiWorld,
    ns: &str,
    name: &str,
    labels: Value,
    annotations: Value,
) -> PersistentVolumeClaim {
    bound_app_pvc(&w.api, ns, name, labels, annotations)
}

fn get_pvc(w: &ApiWorld, ns: &str, name: &str) -> PersistentVolumeClaim {
    w.api.store().get(ns, name).unwrap()
}

fn annotation(w: &ApiWorld, ns: &str, name: &str, key: &str) -> Option<String> {
    get_pvc(w, ns, name)
        .metadata
        .annotations
        .unwrap_or_default()
        .get(key)
        .cloned()
}

fn jobs(w: &ApiWorld) -> Vec<Job> {
    w.api.store().list::<Job>(None)
}

fn events(w: &ApiWorld, reason: &str) -> Vec<Event> {
    w.api
        .store()
        .list::<Event>(None)
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

async fn pass(w: &ApiWorld, cfg: &SchedulerConfig, now: &str) -> anyhow::Result<PassReport> {
    pass::run(
        w.api.client_for(USER),
        cfg,
        PassOptions {
            dry_run: false,
            now: t(now),
        },
    )
    .await
}

/// Marks a Job finished with the mover's result as its pod's termination message.
fn finish(w: &ApiWorld, job: &Job, ok: bool, message: &str) {
    let ns = job.metadata.namespace.clone().unwrap();
    let name = job.metadata.name.clone().unwrap();
    w.api.put::<Pod>(json!({
        "metadata": {"name": format!("{name}-abcde"), "namespace": ns,
                     "labels": {"job-name": name, "app.kubernetes.io/managed-by": "stowage"}},
        "spec": {"containers": [{"name": "mover", "image": "m"}]},
    }));
    w.api
        .store()
        .modify::<Pod>(&ns, &format!("{name}-abcde"), |p| {
            p.status = Some(obj(json!({
                "phase": if ok { "Succeeded" } else { "Failed" },
                "containerStatuses": [{"name": "mover", "image": "m", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": if ok {0} else {1},
                        "finishedAt": "2026-11-23T10:05:00Z", "message": message}}}]
            })));
        })
        .unwrap();
    w.api
        .store()
        .modify::<Job>(&ns, &name, |j| {
            j.status = Some(obj(json!({"conditions": [{
                "type": if ok { "Complete" } else { "Failed" }, "status": "True"}]})));
        })
        .unwrap();
}

fn config(extra: &[(&str, &str)]) -> SchedulerConfig {
    let mut vars = vec![
        (
            "STOWAGE_REPOSITORY_BASE".to_string(),
            "s3:https://s3.lan/volsync-backups".to_string(),
        ),
        ("AWS_DEFAULT_REGION".to_string(), "garage".to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    SchedulerConfig::from_vars(&vars).unwrap()
}

fn secret_value(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[tokio::test]
async fn opted_in_pvcs_get_a_job_with_narrow_credentials() {
    let w = world();
    namespace(&w, "c", json!({"backup": "daily"}));
    pvc(&w, "a", "labelled", json!({"backup": "hourly"}), json!({}));
    pvc(&w, "a", "unlabelled", json!({}), json!({}));
    pvc(&w, "c", "by-namespace", json!({}), json!({}));
    pvc(&w, "c", "opted-out", json!({"backup": "none"}), json!({}));
    let report = pass(&w, &config(&[]), "2026-11-23T10:00:00Z")
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut started: Vec<_> = report
        .started
        .iter()
        .map(|(ns, p, _)| format!("{ns}/{p}"))
        .collect();
    started.sort();
    assert_eq!(started, vec!["a/labelled", "c/by-namespace"]);

    let jobs = jobs(&w);
    assert_eq!(jobs.len(), 2);
    let job = jobs
        .iter()
        .find(|j| j.metadata.namespace.as_deref() == Some("a"))
        .unwrap();
    let name = job.metadata.name.clone().unwrap();
    assert!(name.starts_with("stowage-backup-labelled-"), "{name}");
    let pod = job.spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_user,
        Some(1000)
    );

    // The per-run Secret: owned by the Job, this repository's derived password, the
    // mover's keys, and nothing of the master.
    let secret: Secret = w.api.store().get("a", &name).unwrap();
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, job.metadata.uid.clone().unwrap());
    let repo = "s3:https://s3.lan/volsync-backups/a/labelled";
    assert_eq!(secret_value(&secret, "RESTIC_REPOSITORY"), repo);
    assert_eq!(
        secret_value(&secret, "RESTIC_PASSWORD"),
        derive_repository_password("master", repo)
    );
    assert_eq!(secret_value(&secret, "AWS_ACCESS_KEY_ID"), "AKMOVER");
    assert_eq!(secret_value(&secret, "AWS_DEFAULT_REGION"), "garage");
    assert!(
        !serde_json::to_string(&secret)
            .unwrap()
            .contains(&base64(b"master"))
    );

    assert_eq!(
        annotation(&w, "a", "labelled", status::LAST_JOB).as_deref(),
        Some(name.as_str())
    );
    assert_eq!(
        annotation(&w, "a", "labelled", status::LAST_ATTEMPT).as_deref(),
        Some("2026-11-23T10:00:00Z")
    );
    assert_eq!(events(&w, contract::reason::BACKUP_STARTED).len(), 2);
}

#[tokio::test]
async fn a_rerun_of_the_pass_starts_nothing_twice() {
    let w = world();
    pvc(&w, "a", "p", json!({"backup": "hourly"}), json!({}));
    let cfg = config(&[]);
    let first = pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    assert_eq!(first.started.len(), 1);
    // Same pass again (kubectl create job --from=cronjob/...): the Job is running.
    let again = pass(&w, &cfg, "2026-11-23T10:00:30Z").await.unwrap();
    assert_eq!(again.started.len(), 0);
    assert_eq!(again.skipped.get("job_running"), Some(&1));
    assert_eq!(jobs(&w).len(), 1);

    // Two passes at the same time (a manual run while the CronJob runs): both decide
    // the same work under the same name; one creates it, the other meets AlreadyExists.
    let w = world();
    for p in ["p1", "p2", "p3"] {
        pvc(
            &w,
            "a",
            p,
            json!({"backup": "hourly"}),
            json!({status::LAST_ATTEMPT: "2026-11-23T09:00:05Z"}),
        );
    }
    let (x, y) = tokio::join!(
        pass(&w, &cfg, "2026-11-23T10:00:01Z"),
        pass(&w, &cfg, "2026-11-23T10:00:02Z")
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(
        x.errors.is_empty() && y.errors.is_empty(),
        "{:?} {:?}",
        x.errors,
        y.errors
    );
    assert_eq!(jobs(&w).len(), 3, "one Job per PVC");
    assert_eq!(x.started.len() + y.started.len(), 3, "each reported once");
    assert_eq!(events(&w, contract::reason::BACKUP_STARTED).len(), 3);
    let creates = w
        .api
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.resource == "jobs")
        .map(|r| r.code)
        .collect::<Vec<_>>();
    // Whether the second pass saw the Jobs already (JobRunning) or raced into
    // AlreadyExists depends on timing; either way exactly three were created.
    assert_eq!(
        creates.iter().filter(|c| **c == 201).count(),
        3,
        "{creates:?}"
    );
}

#[tokio::test]
async fn skips_are_recorded_with_events_and_other_pvcs_go_on() {
    let w = world();
    pvc(&w, "a", "unknown", json!({"backup": "weekly"}), json!({}));
    pvc(&w, "a", "good", json!({"backup": "hourly"}), json!({}));
    pvc(
        &w,
        "a",
        "bad-user",
        json!({"backup": "hourly"}),
        json!({contract::user::MOVER_USER: "www-data"}),
    );
    let _unbound: PersistentVolumeClaim = w.api.put(json!({
        "metadata": {"name": "unbound", "namespace": "b", "labels": {"backup": "hourly"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }));
    let cfg = config(&[]);
    let r = pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    assert_eq!(r.started.len(), 1, "{r:?}");
    assert_eq!(r.skipped.get("unknown_policy"), Some(&1));
    assert_eq!(r.skipped.get("no_mover_user"), Some(&1));
    assert_eq!(r.skipped.get("unbound"), Some(&1));
    let ev = events(&w, contract::reason::UNKNOWN_POLICY);
    assert_eq!(ev.len(), 1);
    let note = ev[0].note.clone().unwrap();
    assert!(
        note.contains("\"weekly\"") && note.contains("daily, hourly"),
        "{note}"
    );
    assert_eq!(
        ev[0].regarding.as_ref().unwrap().name.as_deref(),
        Some("unknown")
    );
    assert_eq!(events(&w, contract::reason::MOVER_USER_UNKNOWN).len(), 1);
    assert!(
        annotation(&w, "a", "unknown", status::SKIPPED)
            .unwrap()
            .starts_with("UnknownPolicy")
    );
    // The next pass does not repeat the same warning.
    pass(&w, &cfg, "2026-11-23T10:01:00Z").await.unwrap();
    assert_eq!(events(&w, contract::reason::UNKNOWN_POLICY).len(), 1);
}

#[tokio::test]
async fn concurrency_limit_across_the_cluster() {
    let w = world();
    for (ns, p, last) in [
        ("a", "p1", "2026-11-23T08:00:01Z"),
        ("a", "p2", "2026-11-20T08:00:01Z"),
        ("b", "p3", "2026-11-22T08:00:01Z"),
        ("b", "p4", "2026-11-23T09:00:01Z"),
    ] {
        pvc(
            &w,
            ns,
            p,
            json!({"backup": "hourly"}),
            json!({status::LAST_ATTEMPT: last}),
        );
    }
    let cfg = config(&[("STOWAGE_MAX_CONCURRENT_JOBS", "2")]);
    let r = pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    let mut started: Vec<_> = r.started.iter().map(|(_, p, _)| p.clone()).collect();
    started.sort();
    assert_eq!(started, vec!["p2", "p3"], "most overdue first");
    assert_eq!(r.skipped.get("concurrency_limit"), Some(&2));
    // Slots are still taken: nothing more starts.
    let r = pass(&w, &cfg, "2026-11-23T10:01:00Z").await.unwrap();
    assert!(r.started.is_empty());
    // One finishes: the next most overdue starts.
    let j = jobs(&w).into_iter().next().unwrap();
    finish(
        &w,
        &j,
        true,
        r#"{"operation":"backup","ok":true,"snapshot":"abcdef0123","files":1,"bytes":1,"added_bytes":1,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":1.0,"restored":null}"#,
    );
    let r = pass(&w, &cfg, "2026-11-23T10:02:00Z").await.unwrap();
    assert_eq!(r.started.len(), 1);
    assert_eq!(r.started[0].1, "p1");
}

#[tokio::test]
async fn results_of_finished_jobs_are_recorded_once() {
    let w = world();
    pvc(&w, "a", "ok", json!({"backup": "hourly"}), json!({}));
    pvc(&w, "a", "bad", json!({"backup": "hourly"}), json!({}));
    let cfg = config(&[]);
    pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    for j in jobs(&w) {
        if j.metadata.name.as_deref().unwrap().contains("-ok-") {
            finish(
                &w,
                &j,
                true,
                r#"{"operation":"backup","ok":true,"snapshot":"5f3c9a1e77","files":12,"bytes":3400,"added_bytes":3400,"uploaded_bytes":1,"downloaded_bytes":0,"duration_secs":2.5,"restored":null}"#,
            );
        } else {
            finish(
                &w,
                &j,
                false,
                r#"{"operation":"backup","ok":false,"files":0,"bytes":0,"added_bytes":0,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":0.5,"restored":null,"error":"refusing the first backup of PVC x: ... annotate the PVC stowage.io/adopt-repository=true","reason":"ForeignHistory"}"#,
            );
        }
    }
    let r = pass(&w, &cfg, "2026-11-23T10:10:00Z").await.unwrap();
    assert_eq!(r.recorded.len(), 2);
    assert_eq!(
        annotation(&w, "a", "ok", status::LAST_RESULT).as_deref(),
        Some("Succeeded")
    );
    assert_eq!(
        annotation(&w, "a", "ok", status::LAST_SNAPSHOT).as_deref(),
        Some("5f3c9a1e77")
    );
    assert_eq!(
        annotation(&w, "a", "ok", status::LAST_BACKUP).as_deref(),
        Some("2026-11-23T10:10:00Z")
    );
    assert_eq!(
        annotation(&w, "a", "bad", status::LAST_RESULT).as_deref(),
        Some("Failed: ForeignHistory")
    );
    assert_eq!(annotation(&w, "a", "bad", status::LAST_BACKUP), None);
    let ev = events(&w, contract::reason::FOREIGN_HISTORY);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].note.as_ref().unwrap().contains("adopt-repository"));
    assert_eq!(events(&w, contract::reason::BACKUP_SUCCEEDED).len(), 1);
    // Recorded once; the failed one is not retried before its next scheduled time.
    let r = pass(&w, &cfg, "2026-11-23T10:20:00Z").await.unwrap();
    assert!(r.recorded.is_empty());
    assert!(r.started.is_empty());
    let r = pass(&w, &cfg, "2026-11-23T11:00:01Z").await.unwrap();
    assert_eq!(r.started.len(), 2);
}

#[tokio::test]
async fn adopt_and_populated_pvcs_tell_the_mover_to_continue_the_history() {
    let w = world();
    pvc(
        &w,
        "a",
        "adopted",
        json!({"backup": "hourly"}),
        json!({contract::user::ADOPT_REPOSITORY: "true"}),
    );
    pvc(
        &w,
        "a",
        "restored",
        json!({"backup": "hourly"}),
        json!({status::POPULATED_FROM: "abcd1234"}),
    );
    pvc(&w, "a", "plain", json!({"backup": "hourly"}), json!({}));
    pass(&w, &config(&[]), "2026-11-23T10:00:00Z")
        .await
        .unwrap();
    for j in jobs(&w) {
        let env = j.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let adopt = env
            .iter()
            .any(|e| e.name == "STOWAGE_ADOPT_HISTORY" && e.value.as_deref() == Some("true"));
        let name = j.metadata.name.unwrap();
        assert_eq!(adopt, !name.contains("-plain-"), "{name}");
    }
}

#[tokio::test]
async fn missing_credentials_and_permissions_are_clear_errors() {
    let w = world();
    pvc(&w, "a", "p", json!({"backup": "hourly"}), json!({}));
    pvc(
        &w,
        "a",
        "own",
        json!({"backup": "hourly"}),
        json!({contract::user::SECRET: "restic-own"}),
    );
    w.api
        .store()
        .delete::<Secret>("stowage", "stowage-credentials")
        .unwrap();
    let r = pass(&w, &config(&[]), "2026-11-23T10:00:00Z")
        .await
        .unwrap();
    assert!(r.started.is_empty());
    // The central Secret is everyone's: the run fails, once. The PVC's own missing
    // Secret is its problem only.
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        r.errors[0].contains("stowage/stowage-credentials not found"),
        "{:?}",
        r.errors
    );
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    assert!(
        r.problems.iter().any(|p| p.pvc == "own"
            && p.reason == "credentials_missing"
            && p.message.contains("a/restic-own")
            && p.message.contains("does not exist")),
        "{:?}",
        r.problems
    );
    assert_eq!(events(&w, contract::reason::CREDENTIALS_MISSING).len(), 2);

    // A VolSync-style Secret of the PVC's own is used as it is.
    w.api
        .put::<Secret>(json!({"metadata": {"name": "restic-own", "namespace": "a"}, "data": {}}));
    let r = pass(&w, &config(&[]), "2026-11-23T10:01:00Z")
        .await
        .unwrap();
    assert_eq!(r.started.len(), 1);
    let job = jobs(&w).remove(0);
    let from = job.spec.unwrap().template.spec.unwrap().containers[0]
        .env_from
        .clone()
        .unwrap();
    assert_eq!(from[0].secret_ref.as_ref().unwrap().name, "restic-own");
    assert!(
        w.api
            .store()
            .get::<Secret>("a", job.metadata.name.as_deref().unwrap())
            .is_none()
    );

    // Listing PVCs forbidden: the pass fails and says which permission is missing.
    w.api.inject(
        Fault::forbidden()
            .resource("persistentvolumeclaims")
            .verb("list"),
    );
    let e = pass(&w, &config(&[]), "2026-11-23T10:02:00Z")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("permission denied to list persistentvolumeclaims"),
        "{e}"
    );
    assert!(
        e.contains("cannot list resource \"persistentvolumeclaims\""),
        "{e}"
    );
    assert!(e.contains("RBAC"), "{e}");
}

#[tokio::test]
async fn block_and_read_write_once_pod_volumes_are_skipped_with_events() {
    let w = world();
    pvc(&w, "a", "blk", json!({"backup": "hourly"}), json!({}));
    w.api
        .store()
        .modify::<PersistentVolumeClaim>("a", "blk", |p| {
            p.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        })
        .unwrap();
    pvc(&w, "a", "rwop", json!({"backup": "hourly"}), json!({}));
    w.api
        .store()
        .modify::<PersistentVolumeClaim>("a", "rwop", |p| {
            p.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteOncePod".into()]);
        })
        .unwrap();
    let r = pass(&w, &config(&[]), "2026-11-23T10:00:00Z")
        .await
        .unwrap();
    assert!(r.started.is_empty());
    assert_eq!(events(&w, contract::reason::BLOCK_VOLUME).len(), 1);
    assert_eq!(events(&w, contract::reason::VOLUME_IN_USE).len(), 1);
}

#[test]
fn repo_password_command_prints_the_derived_password() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-scheduler"))
        .args(["repo-password", "s3:https://s3.lan/b/ns/pvc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"correct horse\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        derive_repository_password("correct horse", "s3:https://s3.lan/b/ns/pvc")
    );
}

#[test]
fn pushgateway_down_fails_the_run_after_the_pass() {
    let w = world();
    pvc(&w, "a", "p", json!({"backup": "hourly"}), json!({}));
    let port = stowage_testkit::free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-scheduler"))
        .env_clear()
        .env("KUBECONFIG", w.api.kubeconfig_for(USER))
        .env("STOWAGE_REPOSITORY_BASE", "s3:https://s3.lan/b")
        .env(
            "STOWAGE_PUSHGATEWAY_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("STOWAGE_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The alerts on pushed metrics are blind: the failed Job says so (exit 3), after
    // the pass did its work.
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    let log = format!("{stdout}{stderr}");
    assert!(
        log.contains("metrics not pushed") && log.contains("unreachable"),
        "{log}"
    );
    assert_eq!(jobs(&w).len(), 1);
}

#[test]
fn metrics_are_pushed_to_the_pushgateway() {
    let w = world();
    pvc(&w, "a", "p", json!({"backup": "hourly"}), json!({}));
    pvc(&w, "a", "q", json!({"backup": "weekly"}), json!({}));
    let (port, server) = stowage_testkit::pushgateway::capture_one_request();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-scheduler"))
        .env_clear()
        .env("KUBECONFIG", w.api.kubeconfig_for(USER))
        .env("STOWAGE_REPOSITORY_BASE", "s3:https://s3.lan/b")
        .env(
            "STOWAGE_PUSHGATEWAY_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = server.join().unwrap();
    assert!(
        req.starts_with("PUT /metrics/job/stowage-scheduler HTTP/1.1"),
        "{req}"
    );
    for line in [
        "stowage_scheduler_pvcs 2",
        "stowage_scheduler_due 1",
        "stowage_scheduler_jobs_started 1",
        "stowage_scheduler_skipped{reason=\"unknown_policy\"} 1",
        "stowage_scheduler_errors 0",
        "stowage_pass_last_run_timestamp_seconds{program=\"stowage-scheduler\"}",
        // Every opted-in PVC has a series from its first pass, never-succeeded too.
        "stowage_backup_opted_in_timestamp_seconds{namespace=\"a\",persistentvolumeclaim=\"p\",policy=\"hourly\"}",
        "stowage_backup_opted_in_timestamp_seconds{namespace=\"a\",persistentvolumeclaim=\"q\",policy=\"weekly\"}",
        "stowage_backup_expected_interval_seconds{namespace=\"a\",persistentvolumeclaim=\"p\",policy=\"hourly\"} 3600",
        "stowage_backup_problem{namespace=\"a\",persistentvolumeclaim=\"q\",reason=\"unknown_policy\"} 1",
    ] {
        assert!(req.contains(line), "{line} missing in:\n{req}");
    }
    assert!(
        !req.contains("stowage_backup_last_success_timestamp_seconds{"),
        "no success yet: {req}"
    );
}

#[tokio::test]
async fn api_errors_fail_clearly_and_a_rerun_converges() {
    let cfg = config(&[]);
    // A 500 on one Job creation: that PVC fails with the API's message, the other goes on.
    let w = world();
    pvc(&w, "a", "p1", json!({"backup": "hourly"}), json!({}));
    pvc(&w, "a", "p2", json!({"backup": "hourly"}), json!({}));
    w.api.inject(
        Fault::error(500, "InternalError", "etcdserver: leader changed")
            .verb("create")
            .resource("jobs")
            .times(1),
    );
    let r = pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    assert_eq!(r.started.len(), 1);
    assert!(r.errors.is_empty(), "one PVC's problem: {:?}", r.errors);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].reason, "api_error");
    assert!(
        r.problems[0]
            .message
            .contains("cannot create job a/stowage-backup-")
            && r.problems[0].message.contains("etcdserver: leader changed"),
        "{}",
        r.problems[0]
    );
    assert_eq!(events(&w, contract::reason::BACKUP_NOT_STARTED).len(), 1);
    let r = pass(&w, &cfg, "2026-11-23T10:01:00Z").await.unwrap();
    assert!(
        r.errors.is_empty() && r.problems.is_empty(),
        "{:?}",
        r.problems
    );
    assert_eq!(r.started.len(), 1);
    assert_eq!(jobs(&w).len(), 2, "one Job per PVC after the re-run");

    // A conflict when recording the start on the PVC: the Job exists but the PVC does
    // not know it. The re-run adopts it; its result is recorded; no second backup.
    let w = world();
    pvc(&w, "a", "p", json!({"backup": "hourly"}), json!({}));
    w.api.inject(
        Fault::error(409, "Conflict", "the object has been modified")
            .verb("patch")
            .resource("persistentvolumeclaims")
            .times(1),
    );
    let r = pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(
        r.problems[0]
            .message
            .contains("patch persistentvolumeclaim a/p"),
        "{}",
        r.problems[0]
    );
    assert_eq!(annotation(&w, "a", "p", status::LAST_JOB), None);
    let job = jobs(&w).remove(0);
    finish(
        &w,
        &job,
        true,
        r#"{"operation":"backup","ok":true,"snapshot":"0123456789","files":1,"bytes":1,"added_bytes":1,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":1.0,"restored":null}"#,
    );
    let r = pass(&w, &cfg, "2026-11-23T10:05:00Z").await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.started.is_empty(), "adopted, not due again");
    assert_eq!(jobs(&w).len(), 1);
    assert_eq!(
        annotation(&w, "a", "p", status::LAST_RESULT).as_deref(),
        Some("Succeeded")
    );

    // A list that fails: the pass fails and says what it tried.
    w.api.inject(
        Fault::error(500, "InternalError", "boom")
            .verb("list")
            .resource("pods"),
    );
    let e = pass(&w, &cfg, "2026-11-23T10:06:00Z")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot list pods in all namespaces") && e.contains("boom"),
        "{e}"
    );
}

#[test]
fn a_hung_api_server_fails_the_pass_in_time() {
    let w = world();
    w.api.inject(
        Fault::delay(std::time::Duration::from_secs(20))
            .verb("list")
            .resource("namespaces"),
    );
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-scheduler"))
        .env_clear()
        .env("KUBECONFIG", w.api.kubeconfig_for(USER))
        .env("STOWAGE_API_TIMEOUT_SECS", "1")
        .env("STOWAGE_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("cannot list namespaces") && log.contains("did not answer in time"),
        "{log}"
    );
    // Not a timing assertion on the product: only that the 1 s limit, not the 20 s
    // delay, ended the run.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// The mover's result line of a partial backup: a snapshot stored, entries missing.
const PARTIAL: &str = r#"{"operation":"backup","ok":false,"snapshot":"9a8b7c6d5e4f","files":10,"bytes":100,"added_bytes":100,"uploaded_bytes":100,"downloaded_bytes":0,"duration_secs":1.0,"restored":null,"error":"12 entries could not be read","reason":"Partial","skipped":12,"skipped_paths":["secret/a.key","secret/b.key"]}"#;

#[tokio::test]
async fn a_partial_backup_is_a_failure_of_its_own_kind() {
    let w = world();
    pvc(&w, "a", "p", json!({"backup": "hourly"}), json!({}));
    let cfg = config(&[]);
    pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    let job = jobs(&w).remove(0);
    finish(&w, &job, false, PARTIAL);
    let r = pass(&w, &cfg, "2026-11-23T10:10:00Z").await.unwrap();
    assert_eq!(r.recorded.len(), 1);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        annotation(&w, "a", "p", status::LAST_RESULT).as_deref(),
        Some("Failed: Partial")
    );
    // The snapshot it stored is recorded; the last success does not advance.
    assert_eq!(
        annotation(&w, "a", "p", status::LAST_PARTIAL_SNAPSHOT).as_deref(),
        Some("9a8b7c6d5e4f")
    );
    assert_eq!(annotation(&w, "a", "p", status::LAST_BACKUP), None);
    assert_eq!(annotation(&w, "a", "p", status::LAST_SNAPSHOT), None);
    let ev = events(&w, contract::reason::BACKUP_PARTIAL);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].type_.as_deref(), Some("Warning"));
    let note = ev[0].note.clone().unwrap();
    for needle in [
        "9a8b7c6d",
        "12 entries",
        "secret/a.key, secret/b.key",
        "and 10 more",
    ] {
        assert!(note.contains(needle), "{needle:?} in {note}");
    }
    assert!(events(&w, contract::reason::BACKUP_FAILED).is_empty());
    assert!(events(&w, contract::reason::BACKUP_SUCCEEDED).is_empty());
    assert_eq!(
        r.metrics
            .value("stowage_backup_results", &[("result", "partial")]),
        Some(1.0)
    );
    let labels = [
        ("namespace", "a"),
        ("persistentvolumeclaim", "p"),
        ("policy", "hourly"),
    ];
    assert_eq!(
        r.metrics
            .value("stowage_backup_last_success_timestamp_seconds", &labels),
        None
    );
    // Only partial backups: the alert's reference stays the opt-in time.
    assert_eq!(
        r.metrics
            .value("stowage_backup_opted_in_timestamp_seconds", &labels),
        Some(t("2026-11-23T10:00:00Z").as_second() as f64)
    );

    // A complete backup afterwards is the success (and its time is pushed in the
    // pass that records it).
    let r = pass(&w, &cfg, "2026-11-23T11:00:10Z").await.unwrap();
    assert_eq!(r.started.len(), 1);
    let job = jobs(&w)
        .into_iter()
        .find(|j| j.metadata.name.as_deref() != job.metadata.name.as_deref())
        .unwrap();
    finish(
        &w,
        &job,
        true,
        r#"{"operation":"backup","ok":true,"snapshot":"1111222233","files":1,"bytes":1,"added_bytes":1,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":1.0,"restored":null}"#,
    );
    let r = pass(&w, &cfg, "2026-11-23T11:10:00Z").await.unwrap();
    assert_eq!(
        r.metrics
            .value("stowage_backup_last_success_timestamp_seconds", &labels),
        Some(t("2026-11-23T11:10:00Z").as_second() as f64)
    );
}

#[test]
fn one_bad_pvc_fails_neither_the_run_nor_the_others() {
    let w = world();
    pvc(&w, "a", "good-1", json!({"backup": "hourly"}), json!({}));
    pvc(&w, "b", "good-2", json!({"backup": "daily"}), json!({}));
    pvc(
        &w,
        "a",
        "bad",
        json!({"backup": "hourly"}),
        json!({contract::user::SECRET: "does-not-exist"}),
    );
    let (port, server) = stowage_testkit::pushgateway::capture_one_request();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage-scheduler"))
        .env_clear()
        .env("KUBECONFIG", w.api.kubeconfig_for(USER))
        .env("STOWAGE_REPOSITORY_BASE", "s3:https://s3.lan/b")
        .env(
            "STOWAGE_PUSHGATEWAY_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("STOWAGE_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{log}");
    let mut started: Vec<String> = jobs(&w)
        .iter()
        .map(|j| {
            let l = j.metadata.name.clone().unwrap();
            format!("{}/{l}", j.metadata.namespace.clone().unwrap())
        })
        .collect();
    started.sort();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(
        started[0].starts_with("a/stowage-backup-good-1-"),
        "{started:?}"
    );
    assert!(
        started[1].starts_with("b/stowage-backup-good-2-"),
        "{started:?}"
    );
    let ev = events(&w, contract::reason::CREDENTIALS_MISSING);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0].regarding.as_ref().unwrap().name.as_deref(),
        Some("bad")
    );
    let req = server.join().unwrap();
    for line in [
        "stowage_backup_problem{namespace=\"a\",persistentvolumeclaim=\"bad\",reason=\"credentials_missing\"} 1",
        "stowage_scheduler_errors 0",
        "stowage_scheduler_jobs_started 2",
    ] {
        assert!(req.contains(line), "{line} missing in:\n{req}");
    }
    assert!(
        !req.contains("persistentvolumeclaim=\"good-1\",reason"),
        "{req}"
    );
}

#[tokio::test]
async fn an_unknown_policy_or_a_missing_policies_configmap() {
    // One PVC's unknown policy: its problem, not the pass's.
    let w = world();
    pvc(&w, "a", "typo", json!({"backup": "hourlly"}), json!({}));
    pvc(&w, "a", "fine", json!({"backup": "hourly"}), json!({}));
    let r = pass(&w, &config(&[]), "2026-11-23T10:00:00Z")
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.started.len(), 1);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].reason, "unknown_policy");
    // No policies at all stops every PVC: the run fails, and no PVC is told that its
    // policy is unknown.
    w.api
        .store()
        .delete::<ConfigMap>("stowage", "stowage-policies")
        .unwrap();
    let r = pass(&w, &config(&[]), "2026-11-23T11:00:10Z")
        .await
        .unwrap();
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].contains("stowage/stowage-policies not found"));
    assert!(r.started.is_empty());
    assert_eq!(events(&w, contract::reason::UNKNOWN_POLICY).len(), 1);
}

#[tokio::test]
async fn an_unreachable_storage_is_probed_once_per_pass_and_resumes_by_itself() {
    let w = world();
    for p in ["p1", "p2", "p3", "p4"] {
        pvc(&w, "a", p, json!({"backup": "hourly"}), json!({}));
    }
    let cfg = config(&[("STOWAGE_MAX_CONCURRENT_JOBS", "10")]);
    let r = pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    assert_eq!(r.started.len(), 4);
    let unreachable = r#"{"operation":"backup","ok":false,"files":0,"bytes":0,"added_bytes":0,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":30.0,"restored":null,"error":"S3 s3.lan did not answer","reason":"StorageTimeout"}"#;
    for j in jobs(&w) {
        finish(&w, &j, false, unreachable);
    }
    let r = pass(&w, &cfg, "2026-11-23T10:10:00Z").await.unwrap();
    assert_eq!(r.recorded.len(), 4);
    // One Event and one series for the storage, on the scheduler's CronJob.
    let ev = events(&w, contract::reason::STORAGE_UNREACHABLE);
    assert_eq!(ev.len(), 1);
    let on = ev[0].regarding.clone().unwrap();
    assert_eq!(
        (
            on.kind.as_deref(),
            on.namespace.as_deref(),
            on.name.as_deref()
        ),
        (Some("CronJob"), Some("stowage"), Some("stowage-scheduler"))
    );
    assert!(
        ev[0]
            .note
            .as_ref()
            .unwrap()
            .contains("s3.lan/volsync-backups"),
        "{:?}",
        ev[0].note
    );
    let storage = [("storage", "s3.lan/volsync-backups")];
    assert_eq!(
        r.metrics.value("stowage_storage_unreachable", &storage),
        Some(1.0)
    );
    assert_eq!(
        r.metrics
            .value("stowage_storage_consecutive_failures", &storage),
        Some(4.0)
    );

    // Due again: one probe Job, the others wait (no failed Job each).
    let r = pass(&w, &cfg, "2026-11-23T11:00:10Z").await.unwrap();
    assert_eq!(r.started.len(), 1, "{r:?}");
    assert_eq!(r.skipped.get("storage_unreachable"), Some(&3));
    assert!(
        r.problems.is_empty(),
        "no per-PVC problem: {:?}",
        r.problems
    );
    let probe = jobs(&w).into_iter().find(facts_unfinished).unwrap();
    // While the probe runs nothing else of that storage starts; no second Event.
    let r = pass(&w, &cfg, "2026-11-23T11:05:00Z").await.unwrap();
    assert!(r.started.is_empty());
    assert_eq!(r.skipped.get("storage_unreachable"), Some(&3));
    assert_eq!(events(&w, contract::reason::STORAGE_UNREACHABLE).len(), 1);

    // The probe reaches the storage: backups resume in the same pass.
    finish(
        &w,
        &probe,
        true,
        r#"{"operation":"backup","ok":true,"snapshot":"abcdef0123","files":1,"bytes":1,"added_bytes":1,"uploaded_bytes":0,"downloaded_bytes":0,"duration_secs":1.0,"restored":null}"#,
    );
    let r = pass(&w, &cfg, "2026-11-23T11:10:00Z").await.unwrap();
    assert_eq!(r.started.len(), 3, "{r:?}");
    assert_eq!(events(&w, contract::reason::STORAGE_REACHABLE).len(), 1);
    assert_eq!(
        r.metrics.value("stowage_storage_unreachable", &storage),
        Some(0.0)
    );
}

fn facts_unfinished(j: &Job) -> bool {
    stowage_scheduler::facts::job_finished(j).is_none()
}

#[tokio::test]
async fn another_namespaces_repository_needs_its_grant() {
    let w = world();
    let victim = "s3:s3.lan/volsync-backups//b/data/";
    pvc(
        &w,
        "a",
        "thief",
        json!({"backup": "hourly"}),
        json!({contract::user::REPOSITORY: victim}),
    );
    pvc(
        &w,
        "a",
        "outside",
        json!({"backup": "hourly"}),
        json!({contract::user::REPOSITORY: "s3:https://s3.lan/elsewhere/b/data"}),
    );
    let cfg = config(&[]);
    let r = pass(&w, &cfg, "2026-11-23T10:00:00Z").await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.started.is_empty());
    assert!(jobs(&w).is_empty());
    assert!(
        w.api.store().list::<Secret>(Some("a")).is_empty(),
        "no Secret with b's password in a"
    );
    let ev = events(&w, contract::reason::REPOSITORY_NOT_GRANTED);
    assert_eq!(ev.len(), 1);
    let note = ev[0].note.clone().unwrap();
    assert!(
        note.contains("kubectl annotate namespace b stowage.io/grant-repositories-to=a"),
        "{note}"
    );
    let refused = events(&w, contract::reason::REPOSITORY_REFUSED);
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]
            .note
            .as_ref()
            .unwrap()
            .contains("stowage.io/secret"),
        "{:?}",
        refused[0].note
    );
    let mut reasons: Vec<_> = r.problems.iter().map(|p| p.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec!["repository_not_granted", "repository_refused"]
    );

    // b grants a: the backup starts, with the repository's derived password.
    w.api
        .store()
        .modify::<Namespace>("", "b", |n| {
            n.metadata.annotations = Some(
                [(
                    stowage_common::k8s::grant::GRANT_ANNOTATION.to_string(),
                    "a".to_string(),
                )]
                .into(),
            );
        })
        .unwrap();
    let r = pass(&w, &cfg, "2026-11-23T10:01:00Z").await.unwrap();
    assert_eq!(r.started.len(), 1, "{r:?}");
    let job = jobs(&w).remove(0);
    let secret: Secret = w
        .api
        .store()
        .get("a", job.metadata.name.as_deref().unwrap())
        .unwrap();
    assert_eq!(secret_value(&secret, "RESTIC_REPOSITORY"), victim);
    assert_eq!(
        secret_value(&secret, "RESTIC_PASSWORD"),
        derive_repository_password("master", "s3:https://s3.lan/volsync-backups/b/data")
    );
}
