//! Bad input, one test per row of docs/bad-input.md: the real binaries get what users
//! get wrong. Each test asserts the clear error (what failed, on which object, what to
//! do), the exit status (or the Event and annotation where a CronJob program skips a
//! PVC), that nothing was lost or written, and that no secret value in use appears in
//! any output, Event, annotation or termination message of the run.

use std::path::Path;
use std::process::{Command, Output};
use stowage_testkit::obj;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use serde_json::{Value, json};
use stowage_common::k8s::contract::{prewarm as pc, reason, status, user};
use stowage_testkit::fakeapi::Fault;
use stowage_testkit::secrets::SecretScan;
use stowage_testkit::sim::digest;
use stowage_testkit::world::{SCHEDULER, WAIT, World, log_of, restore_pvc};
use stowage_testkit::{bins, garage, trees};

const MASTER: &str = "bad input master password";
const PASSWORD: &str = "bad input repository password";
const GC: &str = stowage_testkit::world::GC;
const PREWARM: &str = "system:serviceaccount:stowage:stowage-prewarm";

/// A program of the workspace with only `env` (and PATH, HOME), logs as text.
fn program(name: &str, env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(bins::path(name))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("STOWAGE_LOG_FORMAT", "text")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .expect("run program")
}

fn mover(env: &[(String, String)], args: &[&str]) -> Output {
    program("stowage-mover", env, args)
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit status and that stderr holds every needle.
fn failed(o: &Output, exit: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(code(o), exit, "{}", log_of(o));
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", log_of(o));
}

fn with(mut env: Vec<(String, String)>, set: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in set {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn without(mut env: Vec<(String, String)>, key: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env
}

/// Whether a restore target is absent or empty.
fn nothing_in(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A new repository `bucket/ns/pvc` on the shared Garage, with [`PASSWORD`].
fn garage_repo(hint: &str) -> Vec<(String, String)> {
    let g = garage::shared();
    let mut env = g.env(&format!("{}/ns/{hint}", g.bucket(hint)));
    env.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    env
}

/// Snapshots of a repository, through the mover's listing.
fn snapshots(env: &[(String, String)]) -> Vec<Value> {
    let out = mover(env, &["snapshots", "--json"]);
    ok(&out);
    serde_json::from_slice(&out.stdout).expect("snapshot list")
}

/// `restic` with `env` (Debian's, as an operator would use it).
fn restic(env: &[(String, String)], args: &[&str], cwd: Option<&Path>) -> Output {
    let args: Vec<&str> = ["--no-cache"].iter().chain(args).copied().collect();
    stowage_testkit::cli::restic(env, &args, cwd)
}

/// Lock files in a repository (none may be left behind by a refused run).
fn locks(env: &[(String, String)]) -> String {
    let out = restic(env, &["list", "locks", "--no-lock"], None);
    ok(&out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A source directory with a few files.
fn source(d: &tempfile::TempDir) -> std::path::PathBuf {
    let src = d.path().join("src");
    trees::many_small(&src, 5, 1);
    src
}

/// A scan of the outputs of direct mover runs, with the secrets of [`garage_repo`].
fn mover_scan(outputs: &[&Output]) -> SecretScan {
    let mut scan = SecretScan::new();
    scan.secret("repository password", PASSWORD)
        .secret("S3 secret key", &garage::shared().secret_key);
    for (i, o) in outputs.iter().enumerate() {
        scan.output(&format!("run {i}"), o);
    }
    scan
}

fn result_reason(file: &Path) -> String {
    let line = std::fs::read_to_string(file).expect("result file");
    let v: Value = serde_json::from_str(&line).expect("result JSON");
    v["reason"].as_str().unwrap_or_default().to_string()
}

fn pvc_jobs(w: &World, ns: &str) -> Vec<String> {
    w.cluster
        .store()
        .list::<Job>(Some(ns))
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect()
}

/// gc's environment in the world: the scheduler's, less what only the scheduler reads.
fn gc_env(w: &World) -> Vec<(String, String)> {
    let mut env = w.scheduler_env();
    env.retain(|(k, _)| k != "STOWAGE_MOVER_IMAGE" && k != "STOWAGE_MAX_CONCURRENT_JOBS");
    env
}

// ---------------------------------------------------------------- policies ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_cron_skips_the_pvc_with_an_event_and_gc_forgets_nothing() {
    let w = World::new(MASTER);
    w.set_policies(
        "hourly:\n  schedule: \"@hourly\"\n\
         nightly:\n  schedule: \"0 3 * * 8\"\n  retention: {keepLast: 1}\n",
    );
    w.cluster.create_namespace("shop", &[]).unwrap();
    w.app("shop", "orders", "node-a", &[("backup", "nightly")], &[])
        .await;
    w.app("shop", "carts", "node-b", &[("backup", "hourly")], &[])
        .await;
    // History made before the policy broke: three snapshots, months apart.
    let dir = w.cluster.volume_dir("shop", "orders").unwrap();
    std::fs::write(dir.join("orders.db"), "precious").unwrap();
    let env = w.repository_env("shop", "orders");
    ok(&restic(&env, &["init"], None));
    for days in [150, 90, 30] {
        let time = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days))
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        let out = restic(
            &env,
            &["backup", "--host", "volsync", "--time", &time, "."],
            Some(&dir),
        );
        ok(&out);
    }
    assert_eq!(w.snapshots("shop", "orders").len(), 3);

    let (ok_, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(ok_, "a skipped PVC does not fail the pass: {log}");
    let ev = w.events("shop", "orders", reason::INVALID_SCHEDULE);
    assert_eq!(ev.len(), 1, "{log}");
    for needle in [
        "backup policy \"nightly\"",
        "day-of-week 8 is out of range",
        "Fix the policy",
    ] {
        assert!(ev[0].contains(needle), "{needle:?} in {}", ev[0]);
    }
    assert!(
        w.ann("shop", "orders", status::SKIPPED)
            .unwrap()
            .starts_with("InvalidSchedule: "),
    );
    let jobs = pvc_jobs(&w, "shop");
    assert_eq!(jobs.len(), 1, "only the other PVC: {jobs:?}");
    assert!(jobs[0].starts_with("stowage-backup-carts-"), "{jobs:?}");
    w.jobs_finished().await;

    // gc must not read the broken policy as "the default retention": that would forget
    // the two older snapshots.
    let out = w.run("stowage-gc", &[], &gc_env(&w), GC).await;
    ok(&out);
    let log = log_of(&out);
    assert!(
        log.contains("shop/orders") && log.contains("nothing is forgotten"),
        "{log}"
    );
    assert_eq!(w.snapshots("shop", "orders").len(), 3, "{log}");

    w.scan(&[("shop", "orders"), ("shop", "carts")])
        .assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_policy_skips_the_pvc_with_an_event_and_gc_forgets_nothing() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("shop", &[]).unwrap();
    w.app("shop", "orders", "node-a", &[("backup", "weekly")], &[])
        .await;
    w.app("shop", "carts", "node-b", &[("backup", "hourly")], &[])
        .await;
    let (ok_, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(ok_, "{log}");
    let ev = w.events("shop", "orders", reason::UNKNOWN_POLICY);
    assert_eq!(ev.len(), 1, "{log}");
    for needle in [
        "no backup policy \"weekly\"",
        "known: hourly",
        "fix the PVC's label or add the policy",
    ] {
        assert!(ev[0].contains(needle), "{needle:?} in {}", ev[0]);
    }
    assert!(
        w.ann("shop", "orders", status::SKIPPED)
            .unwrap()
            .starts_with("UnknownPolicy: ")
    );
    let jobs = pvc_jobs(&w, "shop");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].starts_with("stowage-backup-carts-"), "{jobs:?}");
    w.jobs_finished().await;
    assert!(
        w.snapshots("shop", "orders").is_empty(),
        "nothing written for it"
    );
    // Not repeated by the next pass.
    let (ok_, log) = w.scheduler("2026-11-23T10:05:00Z").await;
    assert!(ok_, "{log}");
    assert_eq!(w.events("shop", "orders", reason::UNKNOWN_POLICY).len(), 1);

    // History from before the label's typo (three snapshots, months apart) is not cut
    // down to the default retention by gc.
    let dir = w.cluster.volume_dir("shop", "orders").unwrap();
    std::fs::write(dir.join("orders.db"), "precious").unwrap();
    let env = w.repository_env("shop", "orders");
    ok(&restic(&env, &["init"], None));
    for days in [150, 90, 30] {
        let time = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days))
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        ok(&restic(
            &env,
            &["backup", "--host", "volsync", "--time", &time, "."],
            Some(&dir),
        ));
    }
    let out = w.run("stowage-gc", &[], &gc_env(&w), GC).await;
    ok(&out);
    let log = log_of(&out);
    assert!(
        log.contains("shop/orders") && log.contains("nothing is forgotten"),
        "{log}"
    );
    assert_eq!(w.snapshots("shop", "orders").len(), 3, "{log}");
    w.scan(&[("shop", "orders"), ("shop", "carts")])
        .assert_clean();
}

// ---------------------------------------------------------------- credentials -------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_named_with_what_to_create_and_no_job_starts() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("shop", &[]).unwrap();
    w.app("shop", "orders", "node-a", &[("backup", "hourly")], &[])
        .await;
    w.app("shop", "own", "node-b", &[("backup", "hourly")], &[])
        .await;
    w.cluster
        .store()
        .patch::<PersistentVolumeClaim>(
            "shop",
            "own",
            &json!({"metadata": {"annotations": {user::SECRET: "restic-own"}}}),
        )
        .unwrap();
    w.cluster
        .store()
        .delete::<Secret>("stowage", "stowage-credentials")
        .unwrap();

    let (ok_, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(!ok_, "the pass fails: {log}");
    let central = w.events("shop", "orders", reason::CREDENTIALS_MISSING);
    assert_eq!(central.len(), 1, "{log}");
    for needle in [
        "credentials Secret stowage/stowage-credentials not found",
        "create it",
        "master-password",
        "mover-secret-access-key",
    ] {
        assert!(central[0].contains(needle), "{needle:?} in {}", central[0]);
    }
    let own = w.events("shop", "own", reason::CREDENTIALS_MISSING);
    assert_eq!(own.len(), 1, "{log}");
    for needle in [
        "Secret shop/restic-own named by annotation stowage.io/secret does not exist",
        "create it",
        "or remove the annotation",
    ] {
        assert!(own[0].contains(needle), "{needle:?} in {}", own[0]);
    }
    assert!(
        log.contains("stowage-credentials not found") && log.contains("shop/restic-own"),
        "{log}"
    );
    assert!(
        w.ann("shop", "orders", status::SKIPPED)
            .unwrap()
            .starts_with("CredentialsMissing: ")
    );
    assert!(pvc_jobs(&w, "shop").is_empty(), "no Job started");
    assert!(
        w.cluster.store().list::<Secret>(Some("shop")).is_empty(),
        "no per-run Secret"
    );
    w.scan(&[("shop", "orders"), ("shop", "own")])
        .assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_secret_names_the_missing_key_and_nothing_is_written() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("shop", &[]).unwrap();
    w.app("shop", "orders", "node-a", &[("backup", "hourly")], &[])
        .await;
    w.app(
        "shop",
        "own",
        "node-b",
        &[("backup", "hourly")],
        &[("f", "x")],
    )
    .await;
    // The central Secret lost a key; the PVC's own VolSync-style Secret lacks one.
    w.cluster
        .store()
        .modify::<Secret>("stowage", "stowage-credentials", |s| {
            s.data.as_mut().unwrap().remove("mover-secret-access-key");
        })
        .unwrap();
    let own_password = "the own repository's password";
    let g = garage::shared();
    w.cluster
        .store()
        .create::<Secret>(&obj(json!({
            "metadata": {"name": "restic-own", "namespace": "shop"},
            "stringData": {
                "RESTIC_REPOSITORY": w.repository("shop", "own"),
                "RESTIC_PASSWORD": own_password,
                "AWS_ACCESS_KEY_ID": g.access_key,
            }
        })))
        .unwrap();
    w.cluster
        .store()
        .patch::<PersistentVolumeClaim>(
            "shop",
            "own",
            &json!({"metadata": {"annotations": {user::SECRET: "restic-own"}}}),
        )
        .unwrap();

    let (ok_, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(!ok_, "{log}");
    let ev = w.events("shop", "orders", reason::CREDENTIALS_MISSING);
    assert_eq!(ev.len(), 1, "{log}");
    for needle in [
        "credentials Secret stowage/stowage-credentials has no key mover-secret-access-key",
        "add it",
    ] {
        assert!(ev[0].contains(needle), "{needle:?} in {}", ev[0]);
    }
    // The own Secret is used as it is: its mover fails on the missing key.
    let jobs = pvc_jobs(&w, "shop");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].starts_with("stowage-backup-own-"), "{jobs:?}");
    w.jobs_finished().await;
    let (_, log) = w.scheduler("2026-11-23T10:05:00Z").await;
    assert_eq!(
        w.ann("shop", "own", status::LAST_RESULT).as_deref(),
        Some("Failed: Config"),
        "{log}"
    );
    let failed = w.events("shop", "own", reason::BACKUP_FAILED);
    assert_eq!(failed.len(), 1, "{log}");
    assert!(
        failed[0].contains("AWS_SECRET_ACCESS_KEY is not set")
            && failed[0].contains("add the key AWS_SECRET_ACCESS_KEY to the Secret"),
        "{}",
        failed[0]
    );
    assert!(w.snapshots("shop", "orders").is_empty());
    assert!(w.snapshots("shop", "own").is_empty(), "nothing written");
    let mut scan = w.scan(&[("shop", "orders"), ("shop", "own")]);
    scan.secret("own repository password", own_password)
        .assert_clean();
}

// ---------------------------------------------------------------- storage -----------

#[test]
fn wrong_repository_password_is_named_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let src = source(&d);
    let env = garage_repo("password");
    let first = mover(&env, &["backup", path(&src)]);
    ok(&first);
    let result = d.path().join("result");
    let wrong = "not the repository password";
    let bad = with(
        env.clone(),
        &[
            ("RESTIC_PASSWORD", wrong),
            ("STOWAGE_RESULT_FILE", path(&result)),
        ],
    );
    let needles = [
        "the password opens no key of this repository",
        "check RESTIC_PASSWORD",
    ];
    let backup = mover(&bad, &["backup", path(&src)]);
    failed(&backup, 12, &needles);
    assert_eq!(result_reason(&result), "WrongPassword");
    let target = d.path().join("out");
    let restore = mover(&bad, &["restore", path(&target)]);
    failed(&restore, 12, &needles);
    assert!(nothing_in(&target), "nothing restored");
    assert_eq!(snapshots(&env).len(), 1, "nothing written");
    assert_eq!(locks(&env), "", "no lock left behind");
    let mut scan = mover_scan(&[&first, &backup, &restore]);
    scan.secret("wrong password", wrong)
        .text("result", std::fs::read_to_string(&result).unwrap())
        .assert_clean();
}

/// An invalid `STOWAGE_LOG` filter is refused by every program, naming the variable
/// and the value (it silently fell back to `info`).
#[test]
fn invalid_log_filter_is_refused_by_every_program() {
    let env = vec![("STOWAGE_LOG".to_string(), "info,stowage=loud".to_string())];
    for (name, args) in [
        ("stowage-mover", &["snapshots"][..]),
        ("stowage-scheduler", &[][..]),
        ("stowage-gc", &[][..]),
        ("stowage-prewarm", &[][..]),
    ] {
        let o = program(name, &env, args);
        assert_eq!(code(&o), 2, "{name}: {}", log_of(&o));
        let err = stderr(&o);
        for needle in ["STOWAGE_LOG", "info,stowage=loud", "not a valid log filter"] {
            assert!(
                err.contains(needle),
                "{name}: stderr lacks {needle:?}:\n{err}"
            );
        }
    }
}

#[test]
fn wrong_s3_credentials_are_named_and_nothing_is_written() {
    let d = tempfile::tempdir().unwrap();
    let src = source(&d);
    let env = garage_repo("creds");
    let first = mover(&env, &["backup", path(&src)]);
    ok(&first);
    let wrong_secret = "0000000000000000000000000000000000000000000000000000000000000000";
    let bad_secret = with(env.clone(), &[("AWS_SECRET_ACCESS_KEY", wrong_secret)]);
    let bucket = env
        .iter()
        .find(|(k, _)| k == "RESTIC_REPOSITORY")
        .map(|(_, v)| v.rsplit('/').nth(2).unwrap().to_string())
        .unwrap();
    let needles = [
        "rejected the credentials for bucket",
        bucket.as_str(),
        "Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    ];
    let backup = mover(&bad_secret, &["backup", path(&src)]);
    failed(&backup, 1, &needles);
    let bad_id = with(
        env.clone(),
        &[("AWS_ACCESS_KEY_ID", "GK000000000000000000000000")],
    );
    let backup2 = mover(&bad_id, &["backup", path(&src)]);
    failed(&backup2, 1, &needles);
    // A restore never mistakes refused keys for "no backup exists".
    let target = d.path().join("out");
    let restore = mover(&bad_secret, &["restore", path(&target)]);
    failed(&restore, 1, &needles);
    assert!(!stderr(&restore).contains("nothing to restore"));
    assert!(nothing_in(&target), "nothing restored");
    assert_eq!(snapshots(&env).len(), 1, "nothing written");
    assert_eq!(locks(&env), "");
    let mut scan = mover_scan(&[&first, &backup, &backup2, &restore]);
    scan.secret("wrong S3 secret key", wrong_secret)
        .assert_clean();
}

#[test]
fn missing_bucket_is_named_and_not_created() {
    let d = tempfile::tempdir().unwrap();
    let src = source(&d);
    let g = garage::shared();
    let name = format!("no-such-bucket-{}", std::process::id());
    let mut env = g.env(&format!("{name}/ns/pvc"));
    env.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    let named = format!("bucket {name} does not exist at {}", g.endpoint);
    let needles = [
        named.as_str(),
        "Create it first (stowage never creates buckets)",
    ];
    let backup = mover(&env, &["backup", path(&src)]);
    failed(&backup, 1, &needles);
    let target = d.path().join("out");
    let restore = mover(&env, &["restore", path(&target)]);
    failed(&restore, 1, &needles);
    assert!(!stderr(&restore).contains("nothing to restore"));
    assert!(nothing_in(&target), "nothing restored");
    assert!(
        !g.cli(&["bucket", "list"]).contains(&name),
        "the bucket was not created"
    );
    mover_scan(&[&backup, &restore]).assert_clean();
}

#[test]
fn plain_http_is_refused_without_opt_in_before_anything_is_sent() {
    let d = tempfile::tempdir().unwrap();
    let src = source(&d);
    let env = garage_repo("http");
    let refused = without(env.clone(), "STOWAGE_ALLOW_HTTP");
    let result = d.path().join("result");
    let needles = [
        "is plain http: refused",
        "Use https, or set STOWAGE_ALLOW_HTTP=true",
    ];
    let backup = mover(
        &with(refused.clone(), &[("STOWAGE_RESULT_FILE", path(&result))]),
        &["backup", path(&src)],
    );
    failed(&backup, 2, &needles);
    assert_eq!(result_reason(&result), "Config");
    let target = d.path().join("out");
    let restore = mover(&refused, &["restore", path(&target)]);
    failed(&restore, 2, &needles);
    assert!(nothing_in(&target), "nothing restored");
    // gc's one-repository mode refuses the same way.
    let gc = program("stowage-gc", &refused, &["repo", "check"]);
    failed(&gc, 2, &needles);
    // Nothing reached the server: the repository does not exist.
    assert!(snapshots(&env).is_empty());
    let mut scan = mover_scan(&[&backup, &restore, &gc]);
    scan.text("result", std::fs::read_to_string(&result).unwrap())
        .assert_clean();
}

// ---------------------------------------------------------------- restore -----------

/// A repository with one snapshot of a small tree; (repository env, source).
fn backed_up(d: &tempfile::TempDir, hint: &str) -> (Vec<(String, String)>, Output) {
    let src = source(d);
    let env = garage_repo(hint);
    let out = mover(&env, &["backup", path(&src)]);
    ok(&out);
    (env, out)
}

#[test]
fn non_empty_restore_target_is_refused_and_left_untouched() {
    let d = tempfile::tempdir().unwrap();
    let (env, first) = backed_up(&d, "nonempty");
    let target = d.path().join("target");
    std::fs::create_dir_all(target.join("sub")).unwrap();
    std::fs::write(target.join("precious"), "do not lose me").unwrap();
    std::fs::write(target.join("sub/also"), "nor me").unwrap();
    let before = digest::tree(&target);
    let result = d.path().join("result");
    let out = mover(
        &with(env.clone(), &[("STOWAGE_RESULT_FILE", path(&result))]),
        &["restore", path(&target)],
    );
    failed(
        &out,
        1,
        &[
            format!(
                "refusing to restore into {}: it is not empty",
                target.display()
            )
            .as_str(),
            "pass --replace",
        ],
    );
    assert_eq!(result_reason(&result), "TargetNotEmpty");
    assert_eq!(digest::tree(&target), before, "target untouched");
    assert_eq!(locks(&env), "");
    let mut scan = mover_scan(&[&first, &out]);
    scan.text("result", std::fs::read_to_string(&result).unwrap())
        .assert_clean();
}

#[test]
fn unknown_snapshot_id_is_refused_and_nothing_is_restored() {
    let d = tempfile::tempdir().unwrap();
    let (env, first) = backed_up(&d, "snapid");
    let target = d.path().join("target");
    let out = mover(&env, &["restore", path(&target), "--snapshot", "deadbeef"]);
    failed(
        &out,
        1,
        &[
            "no snapshot deadbeef in the repository",
            "`stowage-mover snapshots` lists them",
        ],
    );
    assert!(nothing_in(&target), "nothing restored");
    assert_eq!(snapshots(&env).len(), 1);
    assert_eq!(locks(&env), "", "no lock left behind");
    mover_scan(&[&first, &out]).assert_clean();
}

#[test]
fn as_of_before_the_first_snapshot_is_refused_and_nothing_is_restored() {
    let d = tempfile::tempdir().unwrap();
    let (env, first) = backed_up(&d, "asof");
    let target = d.path().join("target");
    let out = mover(&env, &["restore", path(&target), "--as-of", "2001-01-01"]);
    failed(
        &out,
        1,
        &[
            "no snapshot at or before 2001-01-01T23:59:59",
            "the oldest is from 20",
            "give a later --as-of, or a snapshot id with --snapshot",
        ],
    );
    assert!(nothing_in(&target), "nothing restored");
    assert_eq!(snapshots(&env).len(), 1);
    assert_eq!(locks(&env), "", "no lock left behind");
    mover_scan(&[&first, &out]).assert_clean();
}

// ---------------------------------------------------------------- cluster -----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_namespace_and_pvc_names_are_backed_up_and_restored() {
    let w = World::new(MASTER);
    let ns = format!("team-{}", "a".repeat(58));
    let pvc = format!("data.{}.{}", "b".repeat(120), "c".repeat(127));
    assert_eq!((ns.len(), pvc.len()), (63, 253));
    w.cluster.create_namespace(&ns, &[]).unwrap();
    w.app(
        &ns,
        &pvc,
        "node-a",
        &[("backup", "hourly")],
        &[("orders.db", "v1")],
    )
    .await;
    let (ok_, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(ok_, "{log}");
    let jobs = w.jobs_finished().await;
    assert_eq!(jobs.len(), 1, "{log}");
    let (ok_, log) = w.scheduler("2026-11-23T10:05:00Z").await;
    assert!(ok_, "{log}");
    assert_eq!(
        w.ann(&ns, &pvc, status::LAST_RESULT).as_deref(),
        Some("Succeeded"),
        "{log}\n{}",
        w.cluster.all_pod_logs()
    );
    // Events on the PVC despite its name filling every character Kubernetes allows.
    assert_eq!(
        w.events(&ns, &pvc, reason::BACKUP_STARTED).len(),
        1,
        "{log}"
    );
    assert_eq!(
        w.events(&ns, &pvc, reason::BACKUP_SUCCEEDED).len(),
        1,
        "{log}"
    );
    let snaps = w.snapshots(&ns, &pvc);
    assert_eq!(snaps.len(), 1);
    let tags = snaps[0]["tags"].to_string();
    assert!(
        tags.contains(&format!("namespace={ns}")) && tags.contains(&format!("pvc={pvc}")),
        "{tags}"
    );

    // Rebuilt: the same PVC comes back through prewarm with its data.
    let store = w.cluster.store();
    store.delete::<Pod>(&ns, &World::app_pod(&pvc)).unwrap();
    store.delete::<PersistentVolumeClaim>(&ns, &pvc).unwrap();
    w.cluster
        .wait_for(WAIT, |s| {
            s.get::<PersistentVolumeClaim>(&ns, &pvc)
                .is_none()
                .then_some(())
        })
        .await
        .unwrap();
    let spec = restore_pvc(&pvc, &pvc)
        .class("local")
        .label("backup", "hourly");
    w.cluster.create_pvc(&ns, &spec).unwrap();
    w.cluster
        .create_app_pod(
            &ns,
            &World::app_pod(&pvc),
            &pvc,
            Some("node-a"),
            Some((1000, 1000)),
            &[],
        )
        .unwrap();
    let mut env = w.scheduler_env();
    env.retain(|(k, _)| k != "STOWAGE_MAX_CONCURRENT_JOBS");
    for (k, v) in [
        ("STOWAGE_POLL_SECONDS", "1"),
        ("STOWAGE_RESTORE_BACKOFF_SECONDS", "1"),
        ("STOWAGE_PROBE_SECONDS", "3"),
    ] {
        env.push((k.into(), v.into()));
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut prewarm = w.cluster.spawn_program(
        &bins::path("stowage-prewarm"),
        &["--duration", "300", "--no-index"],
        &env_ref,
        PREWARM,
        "prewarm",
    );
    let restored = w
        .cluster
        .wait_for(WAIT, |s| {
            let p = s.get::<PersistentVolumeClaim>(&ns, &pvc)?;
            let bound = p.status.as_ref()?.phase.as_deref() == Some("Bound");
            let ev = s
                .list::<k8s_openapi::api::events::v1::Event>(Some(&ns))
                .into_iter()
                .any(|e| {
                    e.reason.as_deref() == Some(pc::reason::RESTORED)
                        && e.regarding.as_ref().and_then(|r| r.uid.as_deref())
                            == p.metadata.uid.as_deref()
                });
            (bound && ev).then_some(())
        })
        .await;
    let _ = prewarm.start_kill();
    let _ = prewarm.wait().await;
    w.keep("stowage-prewarm", w.cluster.program_log("prewarm"));
    assert!(
        restored.is_ok(),
        "not restored:\n{}\n{}",
        w.cluster.program_log("prewarm"),
        w.cluster.all_pod_logs()
    );
    let dir = w.cluster.volume_dir(&ns, &pvc).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("orders.db")).unwrap(),
        "v1"
    );
    assert!(w.ann(&ns, &pvc, status::POPULATED_FROM).is_some());
    w.scan(&[(&ns, &pvc)]).assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_namespace_is_skipped_without_errors_and_its_backups_kept() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("shop", &[]).unwrap();
    w.app(
        "shop",
        "orders",
        "node-a",
        &[("backup", "hourly")],
        &[("orders.db", "v1")],
    )
    .await;
    let (ok_, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(ok_, "{log}");
    w.jobs_finished().await;
    let (ok_, log) = w.scheduler("2026-11-23T10:05:00Z").await;
    assert!(ok_, "{log}");
    assert_eq!(w.snapshots("shop", "orders").len(), 1);

    let store = w.cluster.store();
    store.hold_namespace_deletion("shop");
    store.delete::<Namespace>("", "shop").unwrap();
    // Due again, but the namespace is going away: nothing starts, nothing fails.
    let (ok_, log) = w.scheduler("2026-11-23T11:00:30Z").await;
    assert!(ok_, "{log}");
    assert!(
        log.contains("not backed up: the namespace is being deleted"),
        "{log}"
    );
    assert_eq!(pvc_jobs(&w, "shop").len(), 1, "no new Job");
    let forbidden: Vec<_> = w
        .cluster
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.user == SCHEDULER && r.code >= 400 && r.code != 404)
        .collect();
    assert!(forbidden.is_empty(), "{forbidden:?}");

    // The namespace is gone: its repository is kept by gc, history and all.
    store.release_namespace_deletion("shop");
    w.cluster
        .wait_for(WAIT, |s| {
            s.get::<Namespace>("", "shop").is_none().then_some(())
        })
        .await
        .unwrap();
    let out = w.run("stowage-gc", &[], &gc_env(&w), GC).await;
    ok(&out);
    assert!(log_of(&out).contains("orphan"), "{}", log_of(&out));
    assert_eq!(w.snapshots("shop", "orders").len(), 1);
    w.scan(&[("shop", "orders")]).assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_deleted_while_its_backup_runs_completes_and_keeps_the_snapshot() {
    let w = World::new(MASTER);
    // A slow upload keeps the mover busy while the PVC is deleted.
    w.set_policies("hourly:\n  schedule: \"@hourly\"\n  limits: {uploadKibPerSec: 128}\n");
    w.cluster.create_namespace("shop", &[]).unwrap();
    w.app("shop", "orders", "node-a", &[("backup", "hourly")], &[])
        .await;
    let dir = w.cluster.volume_dir("shop", "orders").unwrap();
    trees::write_random(&dir.join("orders.db"), 640 * 1024, 7);
    let before = digest::tree(&dir);

    let (ok_, log) = w.scheduler("2026-11-23T10:00:00Z").await;
    assert!(ok_, "{log}");
    let job = pvc_jobs(&w, "shop").pop().expect("a backup Job");
    let running = |s: &stowage_testkit::fakeapi::Store| {
        s.list_labeled::<Pod>(Some("shop"), &format!("job-name={job}"))
            .into_iter()
            .any(|p| p.status.and_then(|st| st.phase).as_deref() == Some("Running"))
    };
    w.cluster
        .wait_for(WAIT, |s| running(s).then_some(()))
        .await
        .unwrap();
    let store = w.cluster.store();
    store.delete::<Pod>("shop", "app-orders").unwrap();
    store
        .delete::<PersistentVolumeClaim>("shop", "orders")
        .unwrap();
    let held: PersistentVolumeClaim = store.get("shop", "orders").expect("held by the mover");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(running(store), "the backup was still running");

    // A pass meanwhile starts nothing for the PVC being deleted and does not fail.
    let (ok_, log) = w.scheduler("2026-11-23T10:01:00Z").await;
    assert!(ok_, "{log}");
    assert!(
        log.contains("not backed up: the PVC is being deleted"),
        "{log}"
    );
    let jobs = w.jobs_finished().await;
    assert_eq!(jobs.len(), 1);
    let complete = jobs[0]
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        });
    assert!(
        complete,
        "the backup completed:\n{}",
        w.cluster.all_pod_logs()
    );
    w.cluster
        .wait_for(WAIT, |s| {
            s.get::<PersistentVolumeClaim>("shop", "orders")
                .is_none()
                .then_some(())
        })
        .await
        .unwrap();
    // Later passes find the PVC gone and are fine.
    let (ok_, log) = w.scheduler("2026-11-23T11:00:30Z").await;
    assert!(ok_, "{log}");
    assert_eq!(pvc_jobs(&w, "shop").len(), 1);

    // The snapshot is whole: it restores to what the volume held.
    let snaps = w.snapshots("shop", "orders");
    assert_eq!(snaps.len(), 1);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("restored");
    let r = mover(
        &w.repository_env("shop", "orders"),
        &["restore", path(&target)],
    );
    ok(&r);
    w.keep("restore", log_of(&r));
    assert_eq!(digest::tree(&target), before);
    w.scan(&[("shop", "orders")]).assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_runs_at_once_start_each_backup_once() {
    let w = World::new(MASTER);
    w.cluster.create_namespace("shop", &[]).unwrap();
    let pvcs = ["orders", "carts", "users"];
    for (i, p) in pvcs.iter().enumerate() {
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        w.app("shop", p, node, &[("backup", "hourly")], &[("f", p)])
            .await;
    }
    // Both runs are held at their last look at the cluster (the list of Jobs) and let
    // go together: they decide on the same state, so both go for the same backups.
    let (hold, pause) = Fault::hold();
    w.cluster
        .api()
        .inject(hold.user(SCHEDULER).verb("list").resource("jobs"));
    let env = w.scheduler_env();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bin = bins::path("stowage-scheduler");
    let args = ["--now", "2026-11-23T10:00:00Z"];
    let mut a = w
        .cluster
        .spawn_program(&bin, &args, &env_ref, SCHEDULER, "scheduler-a");
    let mut b = w
        .cluster
        .spawn_program(&bin, &args, &env_ref, SCHEDULER, "scheduler-b");
    w.cluster
        .wait_for(WAIT, |_| (pause.held() >= 2).then_some(()))
        .await
        .expect("both runs reach the list of Jobs");
    pause.release();
    let (sa, sb) = (a.wait().await.unwrap(), b.wait().await.unwrap());
    let (la, lb) = (
        w.cluster.program_log("scheduler-a"),
        w.cluster.program_log("scheduler-b"),
    );
    w.keep("scheduler-a", la.clone());
    w.keep("scheduler-b", lb.clone());
    assert!(sa.success() && sb.success(), "{la}\n{lb}");

    let creates: Vec<u16> = w
        .cluster
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.user == SCHEDULER && r.verb == "create" && r.resource == "jobs")
        .map(|r| r.code)
        .collect();
    assert_eq!(
        creates.iter().filter(|c| **c == 201).count(),
        3,
        "{creates:?}"
    );
    assert!(
        creates.iter().all(|c| *c == 201 || *c == 409),
        "{creates:?}"
    );
    assert_eq!(pvc_jobs(&w, "shop").len(), 3);
    for p in pvcs {
        assert_eq!(w.events("shop", p, reason::BACKUP_STARTED).len(), 1, "{p}");
    }
    w.jobs_finished().await;
    let (ok_, log) = w.scheduler("2026-11-23T10:05:00Z").await;
    assert!(ok_, "{log}");
    for p in pvcs {
        assert_eq!(w.snapshots("shop", p).len(), 1, "{p}: one backup, not two");
        assert_eq!(w.events("shop", p, reason::BACKUP_SUCCEEDED).len(), 1);
    }
    let repos: Vec<(&str, &str)> = pvcs.iter().map(|p| ("shop", *p)).collect();
    w.scan(&repos).assert_clean();
}

// ---------------------------------------------------------------- the table ---------

/// Every row of docs/bad-input.md names a test (`file::function`) that exists.
#[test]
fn bad_input_table_names_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("docs/bad-input.md")).unwrap();
    let rows: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| ---") && !l.starts_with("| input"))
        .collect();
    assert!(rows.len() >= 15, "{} rows", rows.len());
    for row in rows {
        let cell = row
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap()
            .trim()
            .trim_matches('`');
        let (file, function) = cell
            .split_once("::")
            .unwrap_or_else(|| panic!("no file::function in the last cell of: {row}"));
        let source = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{file} named by the row {row:?}: {e}"));
        let defined = source.lines().any(|l| {
            let l = l.trim_start();
            ["fn ", "async fn "].iter().any(|k| {
                l.strip_prefix(k)
                    .and_then(|r| r.strip_prefix(function))
                    .is_some_and(|r| r.starts_with('('))
            })
        });
        assert!(defined, "{file} has no function {function} (row: {row})");
    }
}
