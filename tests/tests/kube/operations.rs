//! Day-2 operations on the real control plane, run as an operator runs them: the
//! shipped templates' Jobs created with `kubectl create job --from=cronjob/...`, what
//! to do written on the PVC with `kubectl annotate`, the real binaries as their
//! ServiceAccounts through the shipped RBAC. Manual backup
//! (kustomize/app/backup-template.yaml), manual restore (restore-template.yaml,
//! docs/runbooks.md), gc's retention over 30 days of snapshots, S3 faults during a
//! backup and a restore. The scenarios take turns ([`ops::exclusive`]): a gc pass
//! works on every repository of the cluster.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use stowage_common::k8s::contract::{reason, status, user};
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_common::k8s::naming::repository_for;
use stowage_common::result::RunResult;
use stowage_testkit::kube::ops::{self, Run};
use stowage_testkit::kube::scenario::{app_volume, finished_job, job_has, restricted_pod_spec};
use stowage_testkit::kube::{self as cluster, Cluster, install};
use stowage_testkit::sim::digest;

const RESTRICTED: (&str, &str) = ("pod-security.kubernetes.io/enforce", "restricted");
/// The backup mover Jobs of a namespace.
const BACKUPS: &str = "app.kubernetes.io/name=stowage-mover,stowage.io/operation=backup";
/// The restore mover Jobs of a namespace.
const RESTORES: &str = "app.kubernetes.io/name=stowage-mover,stowage.io/operation=restore";

/// The manual restore's annotations and Event reasons (stowage-prewarm's `manual`).
mod manual {
    pub const REQUEST: &str = "stowage.io/restore-now";
    pub const REPLACE: &str = "stowage.io/restore-replace";
    pub const JOB: &str = "stowage.io/restore-job";
    pub const RESULT: &str = "stowage.io/restore-result";
    pub mod reason {
        pub const SUCCEEDED: &str = "ManualRestoreSucceeded";
        pub const REFUSED: &str = "ManualRestoreRefused";
        pub const FAILED: &str = "ManualRestoreFailed";
    }
}

/// The repository URL of PVC `ns/pvc` under the shared install's base, and the restic
/// CLI's environment for it with the password derived from the master password.
fn repository(ns: &str, pvc: &str) -> (String, Vec<(String, String)>) {
    let installed = install::stowage(cluster::shared());
    let base = format!(
        "s3:{}/{}",
        installed.vars["STOWAGE_S3_ENDPOINT"], installed.bucket
    );
    let url = repository_for(&base, ns, pvc);
    let env = ops::restic_env(&url, &derive_repository_password(&installed.master, &url));
    (url, env)
}

/// A pass of the backup template and the backup mover Job it started, if any
/// (finished), with that Job's pods' logs.
struct BackupNow {
    run: Run,
    mover: Option<Job>,
    mover_log: String,
}

/// Marks PVC `ns/pvc` with `stowage.io/backup-now=<mark>` (none if empty) and runs
/// the template's Job, as kustomize/app/backup-template.yaml documents it.
async fn backup_now(
    c: &Cluster,
    client: &kube::Client,
    ns: &str,
    pvc: &str,
    mark: &str,
) -> BackupNow {
    let known = ops::job_names(client, ns, BACKUPS).await;
    if !mark.is_empty() {
        ops::annotate(c.cp, ns, pvc, &[(user::BACKUP_NOW, mark)]);
    }
    let run = ops::run_from(c, client, "stowage-backup-now", "backup").await;
    assert!(
        run.succeeded(),
        "backup-now Job {} failed: {:?}\n{}",
        run.name,
        run.job.status,
        run.log
    );
    let started: Vec<String> = ops::job_names(client, ns, BACKUPS)
        .await
        .into_iter()
        .filter(|n| !known.contains(n))
        .collect();
    assert!(
        started.len() <= 1,
        "one pass started {started:?}\n{}",
        run.log
    );
    let (mover, mover_log) = match started.first() {
        Some(name) => {
            let job = finished_job(client, ns, name).await;
            let log = ops::job_logs(c, client, ns, name).await;
            (Some(job), log)
        }
        None => (None, String::new()),
    };
    BackupNow {
        run,
        mover,
        mover_log,
    }
}

/// The result line and exit code of the newest pod of mover Job `ns/job`.
async fn mover_result(client: &kube::Client, ns: &str, job: &str) -> (i32, RunResult) {
    let mut pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("batch.kubernetes.io/job-name={job}")),
        )
        .await
        .expect("list pods")
        .items;
    pods.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    let pod = pods.pop().expect("a pod of the mover Job");
    let terminated = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .expect("the mover's container terminated");
    let message = terminated.message.unwrap_or_default();
    let result = serde_json::from_str(message.trim())
        .unwrap_or_else(|e| panic!("result line of {ns}/{job}: {e}: {message:?}"));
    (terminated.exit_code, result)
}

/// An app pod `name` (Pod Security `restricted`) that mounts PVC `pvc`.
async fn app_pod(client: &kube::Client, ns: &str, name: &str, pvc: &str) {
    let mut spec = restricted_pod_spec();
    spec["containers"][0]["image"] = json!("example.invalid/app:1");
    spec["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/srv"}]);
    spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}]);
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("app pod");
}

/// Deletes pod `ns/name` as `kubectl scale --replicas=0` would have its controller do,
/// and waits until it is gone.
async fn stop_app(client: &kube::Client, ns: &str, name: &str) {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete app pod");
    ops::pod_gone(client, ns, name).await;
}

/// What an app wrote.
fn fill(dir: &std::path::Path, version: &str) {
    std::fs::write(dir.join("table.dat"), format!("rows of {version}")).unwrap();
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    std::fs::write(
        dir.join("wal/000001"),
        format!("log of {version}").repeat(100),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{version}.txt")), version).unwrap();
}

/// A manual backup as kustomize/app/backup-template.yaml documents it: the PVC is
/// marked `stowage.io/backup-now`, a Job is created from the suspended CronJob
/// `stowage-backup-now`. The mark starts one backup (a weekly policy is not due); the
/// next run records its result (annotations, Event) and starts no second backup for the
/// same mark; a new mark starts one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_backup_from_the_template_runs_once_per_mark() {
    let c = cluster::cluster();
    let scope = c.cp.scope("backup-now");
    let client = c.cp.client().await;
    install::stowage(c.cp);
    let _turn = ops::exclusive().await;
    let ns = scope.namespace(&client, &[RESTRICTED]).await;
    let (_, dir) = app_volume(&client, &ns, "data", &[("backup", "weekly")]).await;
    fill(&dir, "v1");
    let (_, env) = repository(&ns, "data");

    let first = backup_now(c, &client, &ns, "data", "1").await;
    let mover = first
        .mover
        .as_ref()
        .unwrap_or_else(|| panic!("the mark started no backup\n{}", first.run.log));
    assert!(
        job_has(mover, "Complete"),
        "mover failed: {:?}\n{}",
        mover.status,
        first.mover_log
    );

    // The same Job again: it records the result and starts nothing.
    let second = backup_now(c, &client, &ns, "data", "").await;
    assert!(
        second.mover.is_none(),
        "a second backup for the same mark\n{}",
        second.run.log
    );
    let ann = ops::annotations(&client, &ns, "data").await;
    assert_eq!(
        ann.get(status::LAST_RESULT).map(String::as_str),
        Some("Succeeded"),
        "{ann:?}\n{}",
        second.run.log
    );
    assert_eq!(
        ann.get(status::BACKUP_NOW_SERVED).map(String::as_str),
        Some("1")
    );
    let s1 = ann[status::LAST_SNAPSHOT].clone();
    let snaps = ops::snapshots(&env);
    assert_eq!(snaps.len(), 1, "{snaps:#?}");
    assert!(
        snaps[0]["id"].as_str().unwrap().starts_with(&s1)
            || s1.starts_with(snaps[0]["short_id"].as_str().unwrap()),
        "{s1} vs {snaps:#?}"
    );
    let succeeded = ops::events(&client, &ns, "data", reason::BACKUP_SUCCEEDED).await;
    assert_eq!(succeeded.len(), 1, "{succeeded:?}");

    // A new mark: one more backup, with what the app wrote since.
    fill(&dir, "v2");
    let third = backup_now(c, &client, &ns, "data", "2").await;
    let mover = third
        .mover
        .as_ref()
        .unwrap_or_else(|| panic!("the new mark started no backup\n{}", third.run.log));
    assert!(job_has(mover, "Complete"), "{}", third.mover_log);
    let fourth = backup_now(c, &client, &ns, "data", "").await;
    assert!(fourth.mover.is_none(), "{}", fourth.run.log);
    let ann = ops::annotations(&client, &ns, "data").await;
    assert_eq!(
        ann.get(status::BACKUP_NOW_SERVED).map(String::as_str),
        Some("2")
    );
    assert_ne!(ann[status::LAST_SNAPSHOT], s1, "{ann:?}");
    assert_eq!(ops::snapshots(&env).len(), 2);
    assert_eq!(ops::job_names(&client, &ns, BACKUPS).await.len(), 2);
}

/// A manual restore as kustomize/app/restore-template.yaml and docs/runbooks.md
/// document it. Refused while the app's pod uses the volume; refused (the restore Job
/// deleted before it started) when a pod appears after the request was taken: the
/// restore Job is created suspended and released only when no pod uses the volume;
/// refused by the mover on a non-empty volume without `restore-replace`; with it, the
/// named snapshot's content exactly. Nothing is written by a refused restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_restore_waits_for_a_free_volume_and_replaces_only_when_told() {
    let c = cluster::cluster();
    let scope = c.cp.scope("restore-now");
    let client = c.cp.client().await;
    install::stowage(c.cp);
    let _turn = ops::exclusive().await;
    let ns = scope.namespace(&client, &[RESTRICTED]).await;
    let (_, dir) = app_volume(&client, &ns, "db", &[("backup", "weekly")]).await;
    fill(&dir, "v1");
    let b = backup_now(c, &client, &ns, "db", "1").await;
    assert!(
        b.mover.as_ref().is_some_and(|j| job_has(j, "Complete")),
        "{}\n{}",
        b.run.log,
        b.mover_log
    );
    backup_now(c, &client, &ns, "db", "").await;
    let snapshot = ops::annotations(&client, &ns, "db").await[status::LAST_SNAPSHOT].clone();
    let expected = digest::entries(&dir);
    // The incident: the data is damaged.
    std::fs::write(dir.join("damage.txt"), "oops").unwrap();
    std::fs::write(dir.join("table.dat"), "overwritten").unwrap();
    let damaged = digest::entries(&dir);
    assert_ne!(damaged, expected);
    let restore = |hint: &'static str| {
        let client = client.clone();
        async move { ops::run_from(c, &client, "stowage-manual-restore", hint).await }
    };
    let result = |client: kube::Client, ns: String| async move {
        ops::annotations(&client, &ns, "db")
            .await
            .get(manual::RESULT)
            .cloned()
            .unwrap_or_default()
    };

    // 1. The app still runs: refused, no restore Job, nothing written.
    ops::annotate(c.cp, &ns, "db", &[(manual::REQUEST, &snapshot[..8])]);
    let run = restore("restore").await;
    assert!(!run.succeeded(), "{}", run.log);
    let r = result(client.clone(), ns.clone()).await;
    assert!(r.contains("in use by pod(s) app-db"), "{r}\n{}", run.log);
    assert!(
        !ops::annotations(&client, &ns, "db")
            .await
            .contains_key(manual::REQUEST),
        "request served"
    );
    assert!(ops::job_names(&client, &ns, RESTORES).await.is_empty());
    assert_eq!(digest::entries(&dir), damaged);

    // 2. Scaled down, but a pod comes back (Flux not suspended) after the request was
    // taken: the suspended restore Job is deleted before it started.
    stop_app(&client, &ns, "app-db").await;
    ops::annotate(c.cp, &ns, "db", &[(manual::REQUEST, &snapshot[..8])]);
    let name = c.cp.unique_name("restore");
    install::create_job_from(c.cp, "stowage-manual-restore", &name)
        .unwrap_or_else(|e| panic!("{e}"));
    let prepared = ops::new_job(&client, &ns, RESTORES, &[]).await;
    assert_eq!(
        prepared.spec.as_ref().and_then(|s| s.suspend),
        Some(true),
        "the restore Job is created suspended: {prepared:?}"
    );
    app_pod(&client, &ns, "app-db-again", "db").await;
    let run = ops::finish_run(c, &client, name).await;
    assert!(!run.succeeded(), "{}", run.log);
    let r = result(client.clone(), ns.clone()).await;
    assert!(
        r.starts_with("refused")
            && r.contains("deleted before it started")
            && r.contains("app-db-again"),
        "{r}\n{}",
        run.log
    );
    let prepared_name = prepared.metadata.name.clone().unwrap();
    ops::job_gone(&client, &ns, &prepared_name).await;
    let ran: Vec<_> = c
        .kubelet
        .runs()
        .into_iter()
        .filter(|(n, p)| *n == ns && p.starts_with(&prepared_name))
        .collect();
    assert!(ran.is_empty(), "the suspended restore Job ran {ran:?}");
    assert_eq!(digest::entries(&dir), damaged, "nothing written");

    // 3. No pod, no replace: the restore Job is released, the mover refuses the
    // non-empty volume.
    stop_app(&client, &ns, "app-db-again").await;
    ops::annotate(c.cp, &ns, "db", &[(manual::REQUEST, &snapshot[..8])]);
    let run = restore("restore").await;
    assert!(!run.succeeded(), "{}", run.log);
    let r = result(client.clone(), ns.clone()).await;
    let restores = ops::job_names(&client, &ns, RESTORES).await;
    assert_eq!(restores.len(), 1, "{restores:?}");
    let mover_log = ops::job_logs(c, &client, &ns, &restores[0]).await;
    assert!(
        r.starts_with("refused") && r.contains("not empty"),
        "{r}\n{}\n{mover_log}",
        run.log
    );
    let (code, mover) = mover_result(&client, &ns, &restores[0]).await;
    assert_eq!(
        mover.reason.as_deref(),
        Some(stowage_common::result::reason::TARGET_NOT_EMPTY),
        "{mover:?}"
    );
    assert_eq!(code, 1, "exit 1: failure (README, Operations)");
    assert_eq!(digest::entries(&dir), damaged, "nothing written");
    let refused = ops::events(&client, &ns, "db", manual::reason::REFUSED).await;
    assert_eq!(refused.len(), 3, "{refused:#?}");

    // 4. Told to replace: the volume equals the snapshot again.
    ops::annotate(
        c.cp,
        &ns,
        "db",
        &[(manual::REQUEST, &snapshot), (manual::REPLACE, "true")],
    );
    let run = restore("restore").await;
    let r = result(client.clone(), ns.clone()).await;
    assert!(run.succeeded(), "{r}\n{}", run.log);
    assert!(
        r.starts_with("restored snapshot") && r.contains(&snapshot),
        "{r}"
    );
    assert_eq!(digest::entries(&dir), expected);
    assert_eq!(
        ops::events(&client, &ns, "db", manual::reason::SUCCEEDED)
            .await
            .len(),
        1
    );
    let ann = ops::annotations(&client, &ns, "db").await;
    for k in [manual::REQUEST, manual::REPLACE, manual::JOB] {
        assert!(!ann.contains_key(k), "{k} removed: {ann:?}");
    }
    // The restore ran in the PVC's namespace with a per-run Secret owned by its Job.
    for j in ops::job_names(&client, &ns, RESTORES).await {
        let job = Api::<Job>::namespaced(client.clone(), &ns)
            .get(&j)
            .await
            .unwrap();
        let sec = Api::<Secret>::namespaced(client.clone(), &ns)
            .get(&j)
            .await
            .unwrap_or_else(|e| panic!("per-run Secret {j}: {e}"));
        assert_eq!(
            sec.metadata.owner_references.unwrap()[0].uid,
            job.metadata.uid.unwrap()
        );
    }
    // A run with nothing to do does nothing.
    let run = restore("restore").await;
    assert!(run.log.contains("no PVC is annotated"), "{}", run.log);
}

/// `2026-03-<day> 12:00:00` (UTC), restic's `--time` form.
fn march(day: u32) -> String {
    format!("2026-03-{day:02} 12:00:00")
}

/// The days of March of the snapshots of a repository.
fn days(env: &[(String, String)]) -> Vec<u32> {
    ops::snapshots(env)
        .iter()
        .map(|s| s["time"].as_str().unwrap()[8..10].parse().unwrap())
        .collect()
}

/// A repository for PVC `ns/pvc` at its place under the base, with the derived
/// password, holding one snapshot a day from March 1 to 30 (noon UTC) of a volume that
/// changes every day, as a mover would have made them over 30 days (restic's
/// `--time`; one group: host `volsync`, one path).
fn thirty_days(ns: &str, pvc: &str) -> Vec<(String, String)> {
    let (_, env) = repository(ns, pvc);
    ops::restic(&env, &["init"], None);
    let d = tempfile::tempdir().unwrap();
    for day in 1..=30 {
        std::fs::write(d.path().join("day.txt"), format!("{pvc} on day {day}")).unwrap();
        ops::restic(
            &env,
            &["backup", "--host", "volsync", "--time", &march(day), "."],
            Some(d.path()),
        );
    }
    env
}

/// gc's retention over a simulated 30 days, run as an operator runs it (`kubectl
/// create job --from=cronjob/stowage-gc`, the shipped policies): the `daily` policy
/// (keepDaily 14, keepWeekly 8, keepMonthly 12) forgets exactly the 13 snapshots it
/// does not keep (March 2-7, 9-14, 16) and keeps the newest; the `weekly` policy
/// (keepWeekly 8, keepMonthly 12, keepYearly 2) would forget 24 of 30 at once, more
/// than STOWAGE_FORGET_MAX_PERCENT (50): held back with a RetentionBlocked Event that
/// says how to confirm, the pass itself fine; confirmed on the PVC, the next pass
/// forgets exactly those 24 (RetentionConfirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_retention_over_thirty_days_forgets_what_the_policy_says() {
    let c = cluster::cluster();
    let scope = c.cp.scope("gc");
    let client = c.cp.client().await;
    install::stowage(c.cp);
    let _turn = ops::exclusive().await;
    let ns = scope.namespace(&client, &[]).await;
    // The PVCs (no pod needs them: gc maps repositories to PVCs and their policies).
    for (pvc, policy) in [("daily", "daily"), ("weekly", "weekly")] {
        let obj = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": pvc, "namespace": ns, "labels": {"backup": policy}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": cluster::LOCAL_CLASS,
                     "resources": {"requests": {"storage": "1Gi"}}},
        });
        install::apply(c.cp, &[obj]).unwrap_or_else(|e| panic!("{e}"));
    }
    let daily = thirty_days(&ns, "daily");
    let weekly = thirty_days(&ns, "weekly");

    let run = ops::run_from(c, &client, "stowage-gc", "gc").await;
    assert!(
        run.succeeded(),
        "gc failed: {:?}\n{}",
        run.job.status,
        run.log
    );
    let kept: Vec<u32> = [1, 8, 15].into_iter().chain(17..=30).collect();
    assert_eq!(
        days(&daily),
        kept,
        "daily: forgets March 2-7, 9-14, 16\n{}",
        run.log
    );
    assert_eq!(days(&weekly).len(), 30, "weekly: held back\n{}", run.log);
    let blocked = ops::events(&client, &ns, "weekly", reason::RETENTION_BLOCKED).await;
    assert_eq!(blocked.len(), 1, "{blocked:?}\n{}", run.log);
    assert!(
        blocked[0].contains("24 of 30")
            && blocked[0].contains(&format!(
                "kubectl -n {ns} annotate pvc weekly --overwrite {}=24",
                user::CONFIRM_FORGET
            )),
        "{}",
        blocked[0]
    );
    assert!(
        ops::events(&client, &ns, "daily", reason::RETENTION_BLOCKED)
            .await
            .is_empty()
    );
    let pruned = ops::events(&client, &ns, "daily", reason::REPOSITORY_PRUNED).await;
    assert_eq!(pruned.len(), 1, "the first pass prunes: {pruned:?}");
    ops::restic(&daily, &["check"], None);

    // Confirmed as the Event says.
    ops::annotate(c.cp, &ns, "weekly", &[(user::CONFIRM_FORGET, "24")]);
    let run = ops::run_from(c, &client, "stowage-gc", "gc").await;
    assert!(
        run.succeeded(),
        "gc failed: {:?}\n{}",
        run.job.status,
        run.log
    );
    assert_eq!(days(&weekly), [1, 8, 15, 22, 29, 30], "{}", run.log);
    assert_eq!(days(&daily), kept, "nothing more to forget");
    let confirmed = ops::events(&client, &ns, "weekly", reason::RETENTION_CONFIRMED).await;
    assert_eq!(confirmed.len(), 1, "{confirmed:?}\n{}", run.log);
    assert!(confirmed[0].contains("forgot 24 of 30"), "{}", confirmed[0]);
    ops::restic(&weekly, &["check"], None);
}

/// S3 faults through the fault proxy during a backup and during a restore, for a PVC
/// whose own Secret (VolSync style, `stowage.io/secret`) names a repository behind the
/// proxy (the shared install keeps talking to Garage directly). Every S3 request fails
/// with `500 InternalError` from the moment the mover Job exists: the backup's mover
/// fails with a typed result (reason `Storage`, non-zero exit), the next pass records
/// `Failed: Storage` with a BackupFailed Event, and nothing of it is a snapshot or the
/// PVC's last snapshot; the restore fails (`failed`, ManualRestoreFailed), never
/// reported restored. Once the faults stop, the next backup succeeds; under
/// intermittent faults (Rates::mix: throttling, resets, cut bodies, latency) a backup
/// and the restore complete through retries, the repository checks clean with its
/// data read and the volume holds the newest snapshot's content exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults_fail_a_backup_and_a_restore_cleanly_and_later_runs_succeed() {
    use stowage_testkit::proxy::{Fault, FaultProxy, Rates};

    let c = cluster::cluster();
    let scope = c.cp.scope("faults");
    let client = c.cp.client().await;
    install::stowage(c.cp);
    let _turn = ops::exclusive().await;
    let g = stowage_testkit::garage::shared();
    let proxy = FaultProxy::start(g.addr());
    let ns = scope.namespace(&client, &[RESTRICTED]).await;
    let _cleanup = ops::DeleteNamespace {
        cp: c.cp,
        ns: ns.clone(),
    };
    let bucket = g.bucket("kube-faults");
    let url = format!("s3:{}/{bucket}/{ns}/data", proxy.endpoint);
    let password = "own volsync password";
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "restic-data"},
        "stringData": {
            "RESTIC_REPOSITORY": url,
            "RESTIC_PASSWORD": password,
            "AWS_ACCESS_KEY_ID": g.access_key,
            "AWS_SECRET_ACCESS_KEY": g.secret_key,
            "AWS_DEFAULT_REGION": stowage_testkit::garage::REGION,
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let direct = ops::restic_env(&format!("s3:{}/{bucket}/{ns}/data", g.endpoint), password);
    let (_, dir) = app_volume(&client, &ns, "data", &[("backup", "weekly")]).await;
    ops::annotate(c.cp, &ns, "data", &[(user::SECRET, "restic-data")]);
    fill(&dir, "v1");
    let b = backup_now(c, &client, &ns, "data", "1").await;
    assert!(
        b.mover.as_ref().is_some_and(|j| job_has(j, "Complete")),
        "{}\n{}",
        b.run.log,
        b.mover_log
    );
    backup_now(c, &client, &ns, "data", "").await;
    let s1 = ops::annotations(&client, &ns, "data").await[status::LAST_SNAPSHOT].clone();
    assert!(proxy.requests() > 0, "the backup went through the proxy");

    // The backup: faults from the moment its mover Job exists.
    fill(&dir, "v2");
    let known = ops::job_names(&client, &ns, BACKUPS).await;
    ops::annotate(c.cp, &ns, "data", &[(user::BACKUP_NOW, "2")]);
    let pass = c.cp.unique_name("backup");
    install::create_job_from(c.cp, "stowage-backup-now", &pass).unwrap_or_else(|e| panic!("{e}"));
    let mover = ops::new_job(&client, &ns, BACKUPS, &known).await;
    proxy.set(1, Some(Fault::InternalError));
    let run = ops::finish_run(c, &client, pass).await;
    assert!(run.succeeded(), "the pass itself is fine: {}", run.log);
    let mover_name = mover.metadata.name.clone().unwrap();
    let done = finished_job(&client, &ns, &mover_name).await;
    let mover_log = ops::job_logs(c, &client, &ns, &mover_name).await;
    assert!(job_has(&done, "Failed"), "{:?}\n{mover_log}", done.status);
    let (code, result) = mover_result(&client, &ns, &mover_name).await;
    assert!(!result.ok, "{result:?}");
    assert_eq!(
        result.reason.as_deref(),
        Some(stowage_common::result::reason::STORAGE),
        "{result:?}\n{mover_log}"
    );
    assert_eq!(result.snapshot, None, "{result:?}");
    assert_eq!(code, 1, "exit 1: failure (README, Operations)");
    assert!(proxy.faults() > 0);
    proxy.clear();
    // The next pass records the failure; the last snapshot stays the good one.
    let record = backup_now(c, &client, &ns, "data", "").await;
    assert!(record.mover.is_none(), "{}", record.run.log);
    let ann = ops::annotations(&client, &ns, "data").await;
    assert_eq!(
        ann.get(status::LAST_RESULT).map(String::as_str),
        Some("Failed: Storage"),
        "{ann:?}\n{}",
        record.run.log
    );
    assert_eq!(ann[status::LAST_SNAPSHOT], s1);
    let failed = ops::events(&client, &ns, "data", reason::BACKUP_FAILED).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        ops::snapshots(&direct).len(),
        1,
        "nothing half-done is a snapshot"
    );
    // Faults over: the next mark backs up.
    let b = backup_now(c, &client, &ns, "data", "3").await;
    assert!(
        b.mover.as_ref().is_some_and(|j| job_has(j, "Complete")),
        "{}\n{}",
        b.run.log,
        b.mover_log
    );
    backup_now(c, &client, &ns, "data", "").await;
    let ann = ops::annotations(&client, &ns, "data").await;
    assert_eq!(
        ann.get(status::LAST_RESULT).map(String::as_str),
        Some("Succeeded")
    );
    let s3 = ann[status::LAST_SNAPSHOT].clone();
    assert_ne!(s3, s1);
    assert_eq!(ops::snapshots(&direct).len(), 2);
    ops::restic(&direct, &["check"], None);

    // Intermittent faults (throttling, resets, cut bodies, latency; at most two in a
    // row per request): the next backup completes through retries.
    fill(&dir, "v3");
    let expected = digest::entries(&dir);
    let before = proxy.faults();
    proxy.set_rates(Rates::mix(16));
    let b = backup_now(c, &client, &ns, "data", "4").await;
    proxy.clear();
    assert!(
        b.mover.as_ref().is_some_and(|j| job_has(j, "Complete")),
        "{}\n{}",
        b.run.log,
        b.mover_log
    );
    assert!(
        proxy.faults() > before,
        "faults were injected during the backup"
    );
    backup_now(c, &client, &ns, "data", "").await;
    let ann = ops::annotations(&client, &ns, "data").await;
    assert_eq!(
        ann.get(status::LAST_RESULT).map(String::as_str),
        Some("Succeeded")
    );
    let s4 = ann[status::LAST_SNAPSHOT].clone();
    assert_ne!(s4, s3);
    assert_eq!(ops::snapshots(&direct).len(), 3);
    ops::restic(&direct, &["check", "--read-data"], None);

    // The restore: the volume is lost (the app stopped, the volume empty); faults from
    // the moment the restore Job exists (created suspended).
    stop_app(&client, &ns, "app-data").await;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    ops::annotate(c.cp, &ns, "data", &[(manual::REQUEST, "latest")]);
    let name = c.cp.unique_name("restore");
    install::create_job_from(c.cp, "stowage-manual-restore", &name)
        .unwrap_or_else(|e| panic!("{e}"));
    let restore = ops::new_job(&client, &ns, RESTORES, &[]).await;
    proxy.set(1, Some(Fault::InternalError));
    let run = ops::finish_run(c, &client, name).await;
    let restore_name = restore.metadata.name.clone().unwrap();
    let mover_log = ops::job_logs(c, &client, &ns, &restore_name).await;
    assert!(!run.succeeded(), "{}\n{mover_log}", run.log);
    let r = ops::annotations(&client, &ns, "data")
        .await
        .get(manual::RESULT)
        .cloned()
        .unwrap_or_default();
    assert!(r.starts_with("failed"), "{r}\n{}\n{mover_log}", run.log);
    let (code, result) = mover_result(&client, &ns, &restore_name).await;
    assert!(!result.ok && result.restored != Some(true), "{result:?}");
    assert_eq!(
        result.reason.as_deref(),
        Some(stowage_common::result::reason::STORAGE),
        "{result:?}\n{mover_log}"
    );
    assert_eq!(code, 1, "exit 1: failure (README, Operations)");
    assert_eq!(
        ops::events(&client, &ns, "data", manual::reason::FAILED)
            .await
            .len(),
        1
    );
    proxy.clear();
    // The restore again (replacing whatever the failed one left), through intermittent
    // faults: it completes through retries.
    ops::annotate(
        c.cp,
        &ns,
        "data",
        &[(manual::REQUEST, "latest"), (manual::REPLACE, "true")],
    );
    let before = proxy.faults();
    proxy.set_rates(Rates::mix(17));
    let run = ops::run_from(c, &client, "stowage-manual-restore", "restore").await;
    proxy.clear();
    assert!(
        proxy.faults() > before,
        "faults were injected during the restore"
    );
    let r = ops::annotations(&client, &ns, "data")
        .await
        .get(manual::RESULT)
        .cloned()
        .unwrap_or_default();
    assert!(run.succeeded(), "{r}\n{}", run.log);
    assert!(r.starts_with("restored snapshot") && r.contains(&s4), "{r}");
    assert_eq!(digest::entries(&dir), expected);
}

/// An app deleted after its backup: the finished mover pod still names the PVC, and
/// the real PVC protection controller keeps a PVC that a pod names, finished or not,
/// so the PVC stays Terminating (for the mover Job's day of history; the simulator
/// never showed it). The next gc run deletes the finished mover Jobs of PVCs being
/// deleted, and the PVC goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_apps_pvc_is_released_by_the_next_gc_run() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let c = cluster::cluster();
    let scope = c.cp.scope("released");
    let client = c.cp.client().await;
    install::stowage(c.cp);
    let _turn = ops::exclusive().await;
    let ns = scope.namespace(&client, &[RESTRICTED]).await;
    let (_, dir) = app_volume(&client, &ns, "data", &[("backup", "weekly")]).await;
    fill(&dir, "v1");
    let backup = backup_now(c, &client, &ns, "data", "1").await;
    let mover = backup.mover.expect("the mark started a backup");
    assert!(job_has(&mover, "Complete"), "{}", backup.mover_log);

    // The user deletes the app from Git: its pod and its PVC.
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("app-data", &DeleteParams::default())
        .await
        .expect("delete the app pod");
    ops::pod_gone(&client, &ns, "app-data").await;
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    pvcs.delete("data", &DeleteParams::default())
        .await
        .expect("delete the PVC");
    let held = pvcs.get("data").await.expect("the PVC is still there");
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "Terminating: {:?}",
        held.metadata
    );

    let gc = ops::run_from(c, &client, "stowage-gc", "gc").await;
    assert!(gc.succeeded(), "gc failed: {:?}\n{}", gc.job.status, gc.log);
    ops::job_gone(&client, &ns, mover.metadata.name.as_deref().unwrap()).await;
    let gone =
        kube::runtime::wait::await_condition(pvcs, "data", |p: Option<&PersistentVolumeClaim>| {
            p.is_none()
        });
    tokio::time::timeout(cluster::WAIT, gone)
        .await
        .unwrap_or_else(|_| panic!("PVC {ns}/data still there after gc\n{}", gc.log))
        .expect("watch PVCs");
}
