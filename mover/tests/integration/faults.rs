//! The mover under S3 faults at chosen rates, and SIGKILLed at chosen points of a
//! backup and a restore, through the fault proxy in front of Garage. Whatever happens:
//! no snapshot references missing data (`restic check --read-data` is clean), what was
//! backed up before restores byte-identical, and the next run succeeds.
//!
//! Kill points are request numbers of the mover's S3 traffic: an uninterrupted run is
//! counted first, then the proxy holds request N (and all after it) of a new run, which
//! is SIGKILLed while it waits there — from its first request to its last.

use crate::support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use stowage_testkit::garage;
use stowage_testkit::proxy::{FaultProxy, Rates};
use stowage_testkit::trees;
use support::*;

/// How long a run may take to reach its kill point (it takes well under a second).
const REACH: Duration = Duration::from_secs(60);

fn new_repo(hint: &str) -> String {
    format!("{}/ns/{hint}", garage::shared().bucket(hint))
}

/// The environment of `repo` reached through `proxy`.
fn via(proxy: &FaultProxy, repo: &str) -> Vec<(String, String)> {
    let mut env = garage::shared().env_via(&proxy.endpoint, repo);
    env.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    env
}

/// Volume content A: small files and one larger file.
fn content_a(dir: &Path) {
    trees::many_small(dir, 150, 1);
    trees::write_random(&dir.join("big/a.bin"), 3 << 20, 2);
}

/// Content B: A with some files changed and new data added.
fn content_b(dir: &Path) {
    content_a(dir);
    trees::write_random(&dir.join("d0000/f000003"), 5000, 30);
    trees::write_random(&dir.join("big/b.bin"), 4 << 20, 31);
    trees::many_small(&dir.join("new"), 40, 32);
}

fn snapshot_ids(env: &[(String, String)]) -> Vec<String> {
    let out = run(env, &["snapshots", "--json"]).ok();
    let v: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    v.iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `restic check --read-data`, after `restic unlock`: a killed mover leaves its lock
/// behind (as every restic client does), which restic 0.14's exclusive check lock does
/// not override; `unlock` removes it as stale (this host, its process gone).
fn check_read_data(env: &[(String, String)]) -> Run {
    restic(env, &["unlock"], None).ok();
    restic(env, &["check", "--read-data"], None)
}

fn spawn(env: &[(String, String)], args: &[&str]) -> Child {
    mover()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs the mover until the proxy holds request `n`, then SIGKILLs it. `false`: it
/// exited before sending request `n`.
fn kill_at_request(proxy: &FaultProxy, n: u64, env: &[(String, String)], args: &[&str]) -> bool {
    let pause = proxy.pause_at(proxy.requests() + n);
    let mut child = spawn(env, args);
    let deadline = Instant::now() + REACH;
    let reached = loop {
        // Two events to wait for: the held request, or the process's exit.
        if pause.wait(Duration::from_millis(50)) {
            break true;
        }
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        assert!(Instant::now() < deadline, "request {n} never came");
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(pause); // the held requests are never forwarded
    reached
}

/// `count` request numbers spread over a run of `total` requests, the first and the
/// last included.
fn spread(total: u64, count: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..count)
        .map(|i| 1 + (total - 1) * i / (count - 1))
        .collect();
    v.dedup();
    v
}

/// Throttling, resets, cut bodies and latency on a fifth of all requests: a first
/// backup (which creates the repository), an incremental one and a restore all complete
/// through retries, and the repository checks clean with `restic check --read-data`.
#[test]
fn backup_and_restore_complete_through_faults_at_rates() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let d = tmp();
    let (a, b) = (join(&d, "a"), join(&d, "b"));
    content_a(&a);
    content_b(&b);
    let repo = new_repo("rates");
    let env = via(&proxy, &repo);
    proxy.set_rates(Rates::mix(7));
    run(&env, &["backup", path(&a)]).ok();
    let first = snapshot_ids(&s3_env(&repo));
    run(&env, &["backup", path(&b)]).ok();
    let out = join(&d, "out");
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&b, &out);
    let out_a = join(&d, "out-a");
    run(&env, &["restore", "--snapshot", &first[0], path(&out_a)]).ok();
    assert_same_tree(&a, &out_a);
    let injected = proxy.injected();
    proxy.clear();
    eprintln!("{} requests, injected {injected:?}", proxy.requests());
    assert!(
        injected.slow_down > 0 && injected.reset > 0 && injected.truncate > 0 && injected.delay > 0,
        "every kind of fault was injected: {injected:?}"
    );
    assert_eq!(snapshot_ids(&s3_env(&repo)).len(), 2);
    restic(&s3_env(&repo), &["check", "--read-data"], None).ok();
}

/// A storage that accepts connections but does not work: no answer at all, or an
/// answer whose body stops halfway (GETs of the repository's files). Each stuck attempt
/// is cut off after `STOWAGE_S3_STUCK_REQUEST_TIMEOUT_SECS` and retried, and the run
/// fails within bounded time, saying so, with reason `StorageTimeout` (it used to wait
/// silently for over 1,000 s). The repository is unharmed.
#[test]
fn hung_storage_is_cut_off_and_the_run_fails_in_bounded_time() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let d = tmp();
    let a = join(&d, "a");
    content_a(&a);
    let repo = new_repo("hung");
    run(&s3_env(&repo), &["backup", path(&a)]).ok();
    let result = join(&d, "result");
    let env = with(
        via(&proxy, &repo),
        &[
            ("STOWAGE_S3_STUCK_REQUEST_TIMEOUT_SECS", "2"),
            ("STOWAGE_S3_MAX_ATTEMPTS", "2"),
            ("STOWAGE_RESULT_FILE", path(&result)),
        ],
    );
    let cases = [
        (
            "no answer",
            Rates {
                hang: 1.0,
                ..Rates::default()
            },
        ),
        (
            "a body that stops",
            Rates {
                stall_body: 1.0,
                method: Some("GET".into()),
                // The object itself, not a listing (whose query has `%2Fconfig`).
                path: Some("/config".into()),
                ..Rates::default()
            },
        ),
    ];
    for (case, rates) in cases {
        proxy.set_rates(rates);
        let started = Instant::now();
        let r = run(&env, &["backup", path(&a)]);
        let took = started.elapsed();
        let hung = proxy.injected().hang;
        proxy.clear();
        assert!(
            hung >= 2,
            "{case}: the proxy left {hung} request(s) hanging"
        );
        assert_eq!(r.code, 1, "{case}: {}", r.stderr);
        assert!(
            r.stderr.contains("did not answer")
                && r.stderr.contains("STOWAGE_S3_STUCK_REQUEST_TIMEOUT_SECS")
                && r.stderr.contains(&proxy.endpoint),
            "{case}: says what happened and what sets it: {}",
            r.stderr
        );
        let written: stowage_mover::report::RunResult =
            serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
        assert_eq!(written.reason.as_deref(), Some("StorageTimeout"), "{case}");
        // Two attempts of 2 s and a backoff per request; far below the SDK's defaults.
        assert!(took < Duration::from_secs(30), "{case}: took {took:?}");
        eprintln!("{case}: failed after {took:?}");
    }
    assert_eq!(snapshot_ids(&s3_env(&repo)).len(), 1);
    check_read_data(&s3_env(&repo)).ok();
}

/// Faults that outlast the retries, on the pack uploads, the index or the snapshot
/// file: the backup fails with an error naming the S3 write, no snapshot is added, the
/// repository checks clean and the earlier snapshot restores; a restore whose pack
/// reads fail says so and that the target is incomplete.
#[test]
fn faults_beyond_the_retries_fail_clearly_and_lose_nothing() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let d = tmp();
    let (a, b) = (join(&d, "a"), join(&d, "b"));
    content_a(&a);
    content_b(&b);
    let repo = new_repo("hard");
    let direct = s3_env(&repo);
    run(&direct, &["backup", path(&a)]).ok();
    let before = snapshot_ids(&direct);
    let env = with(via(&proxy, &repo), &[("STOWAGE_S3_MAX_ATTEMPTS", "2")]);
    for dir in ["/data/", "/index/", "/snapshots/"] {
        proxy.set_rates(Rates {
            seed: 1,
            internal_error: 1.0,
            method: Some("PUT".into()),
            path: Some(dir.into()),
            ..Rates::default()
        });
        let r = run(&env, &["backup", path(&b)]);
        assert_eq!(r.code, 1, "writes to {dir} fail: {}", r.stderr);
        assert!(
            r.stderr.contains("S3 write") && r.stderr.contains(&proxy.endpoint),
            "names the S3 write and the endpoint ({dir}): {}",
            r.stderr
        );
        assert!(!r.stderr.contains(&garage::shared().secret_key));
        proxy.clear();
        assert_eq!(snapshot_ids(&direct), before, "no snapshot added ({dir})");
        restic(&direct, &["check", "--read-data"], None).ok();
    }
    let out = join(&d, "out");
    run(&direct, &["restore", path(&out)]).ok();
    assert_same_tree(&a, &out);

    proxy.set_rates(Rates {
        seed: 2,
        internal_error: 1.0,
        method: Some("GET".into()),
        path: Some("/data/".into()),
        ..Rates::default()
    });
    let broken = join(&d, "broken");
    let r = run(&env, &["restore", path(&broken)]);
    proxy.clear();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("S3 read") || r.stderr.contains("incomplete"),
        "says what failed: {}",
        r.stderr
    );
    assert!(!r.stdout.contains("\"ok\":true"), "{}", r.stdout);
    run(&direct, &["restore", "--replace", path(&broken)]).ok();
    assert_same_tree(&a, &broken);
}

/// A backup over an earlier snapshot, SIGKILLed at request N for N spread over the
/// whole run: the next backup succeeds, the repository checks clean with read-data,
/// the earlier snapshot and the new one restore byte-identical.
#[test]
fn sigkill_at_chosen_points_of_a_backup() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let d = tmp();
    let (a, b) = (join(&d, "a"), join(&d, "b"));
    content_a(&a);
    content_b(&b);
    // A repository holding snapshot A, as each case starts.
    let seeded = |hint: &str| {
        let repo = new_repo(hint);
        run(&s3_env(&repo), &["backup", path(&a)]).ok();
        repo
    };
    // The uninterrupted run, counted.
    let repo = seeded("kb-count");
    let before = proxy.requests();
    run(&via(&proxy, &repo), &["backup", path(&b)]).ok();
    let total = proxy.requests() - before;
    let points = spread(total, 8);
    eprintln!("backup: {total} requests; kill points {points:?}");
    for (i, &n) in points.iter().enumerate() {
        let case = format!(
            "kill point {}/{} (request {n} of {total})",
            i + 1,
            points.len()
        );
        let repo = seeded(&format!("kb-{n}"));
        let direct = s3_env(&repo);
        let a_id = snapshot_ids(&direct).remove(0);
        assert!(
            kill_at_request(&proxy, n, &via(&proxy, &repo), &["backup", path(&b)]),
            "{case}: the backup ended before it"
        );
        let after_kill = snapshot_ids(&direct);
        assert!(after_kill.contains(&a_id), "{case}: {after_kill:?}");
        let next = run(&direct, &["backup", path(&b)]);
        assert_eq!(next.code, 0, "{case}: the next backup\n{}", next.stderr);
        let check = check_read_data(&direct);
        assert_eq!(check.code, 0, "{case}: {}{}", check.stdout, check.stderr);
        let out_a = join(&d, &format!("a-{n}"));
        run(&direct, &["restore", "--snapshot", &a_id, path(&out_a)]).ok();
        assert_same_tree(&a, &out_a);
        let out_b = join(&d, &format!("b-{n}"));
        run(&direct, &["restore", path(&out_b)]).ok();
        assert_same_tree(&b, &out_b);
        eprintln!(
            "{case}: ok ({} snapshot(s) after the kill)",
            after_kill.len()
        );
    }
}

/// A restore SIGKILLed at request N for N spread over the whole run: the partial
/// target is refused without --replace, the re-run with --replace gives the full
/// content, and the repository checks clean.
#[test]
fn sigkill_at_chosen_points_of_a_restore() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let d = tmp();
    let b = join(&d, "b");
    content_b(&b);
    let repo = new_repo("kr");
    let direct = s3_env(&repo);
    run(&direct, &["backup", path(&b)]).ok();
    let env = via(&proxy, &repo);
    let before = proxy.requests();
    let whole = join(&d, "whole");
    run(&env, &["restore", path(&whole)]).ok();
    assert_same_tree(&b, &whole);
    let total = proxy.requests() - before;
    let points = spread(total, 6);
    eprintln!("restore: {total} requests; kill points {points:?}");
    for (i, &n) in points.iter().enumerate() {
        let case = format!(
            "kill point {}/{} (request {n} of {total})",
            i + 1,
            points.len()
        );
        let target = join(&d, &format!("t-{n}"));
        std::fs::create_dir_all(&target).unwrap();
        assert!(
            kill_at_request(&proxy, n, &env, &["restore", path(&target)]),
            "{case}: the restore ended before it"
        );
        let written = std::fs::read_dir(&target).unwrap().count() > 0;
        if written {
            run(&direct, &["restore", path(&target)]).failed(1, "not empty");
        }
        let r = run(&direct, &["restore", "--replace", path(&target)]);
        assert_eq!(r.code, 0, "{case}: {}", r.stderr);
        assert_same_tree(&b, &target);
        eprintln!("{case}: ok (partial target: {written})");
    }
    check_read_data(&direct).ok();
}
