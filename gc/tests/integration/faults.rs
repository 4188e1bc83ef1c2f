//! `stowage-gc repo forget`, `prune` and `check` under S3 faults at chosen rates and
//! SIGKILLed at chosen points, through the fault proxy in front of Garage, with
//! `restic` as the peer that wrote the snapshots and checks the result.
//!
//! Kill points are request numbers of gc's S3 traffic: an uninterrupted forget and
//! prune are counted first, then the proxy holds request N (and all after it) of a new
//! forget-then-prune, whose process is SIGKILLed while it waits there — from the
//! forget's first request to the prune's last.

use crate::support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use stowage_common::backend::Storage;
use stowage_testkit::garage;
use stowage_testkit::proxy::{FaultProxy, Rates};
use stowage_testkit::trees;
use support::*;

const TIMES: &[&str] = &[
    "2026-01-01 00:00:00",
    "2026-02-01 00:00:00",
    "2026-03-01 00:00:00",
    "2026-03-15 00:00:00",
];
/// Keep the two newest: snapshots 3 and 4 (holding f2.bin and f3.bin) stay.
const FORGET: &[&str] = &["repo", "forget", "--keep-last", "2", "--yes"];
const PRUNE: &[&str] = &["repo", "prune"];

fn via(proxy: &FaultProxy, repo: &str) -> Vec<(String, String)> {
    let mut e = garage::shared().env_via(&proxy.endpoint, repo);
    e.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    e
}

/// The four snapshots of `TIMES` (1 MiB each, seed `seed`), written once by restic
/// into a local repository: each case copies it into a fresh bucket (a few PUTs
/// instead of five restic runs).
struct Template {
    dir: tempfile::TempDir,
    seed: u64,
}

impl Template {
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let e = vec![
            (
                "RESTIC_REPOSITORY".to_string(),
                dir.path().join("repo").display().to_string(),
            ),
            ("RESTIC_PASSWORD".into(), PASSWORD.into()),
        ];
        repo_with_snapshots(&e, TIMES, 1, seed);
        Template { dir, seed }
    }

    /// A fresh repository on Garage with the template's content.
    fn seeded(&self, hint: &str) -> (String, Vec<(String, String)>) {
        let b = garage::shared().bucket(hint);
        let repo = format!("{b}/ns/pvc");
        let e = env(&repo);
        let access = access(&e);
        let Storage::S3(s3) = &access.storage else {
            panic!("an S3 repository")
        };
        let root = self.dir.path().join("repo");
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&root).unwrap().to_str().unwrap();
                let key = s3.settings().location.key(rel);
                s3.put_key(&key, std::fs::read(&p).unwrap().into()).unwrap();
            }
        }
        (repo, e)
    }
}

/// The kept snapshots restore whole: snapshot 3 holds f2.bin, snapshot 4 f3.bin.
fn kept_snapshots_restore(e: &[(String, String)], seed: u64, case: &str) {
    let r = restic(e, &["snapshots", "--json"], None).ok();
    let mut snaps: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    snaps.sort_by_key(|s| s["time"].as_str().unwrap().to_string());
    let ids: Vec<&str> = snaps
        .iter()
        .map(|s| s["short_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{case}: {ids:?}");
    for (i, id) in ids.iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        restic(
            e,
            &["restore", id, "--target", d.path().to_str().unwrap()],
            None,
        )
        .ok();
        let file = format!("f{}.bin", i + 2);
        assert_eq!(
            std::fs::read(d.path().join(&file)).unwrap(),
            trees::random_bytes(1 << 20, seed + i as u64 + 2),
            "{case}: {file} of snapshot {id} restores byte-identical"
        );
    }
}

/// The end state after any interrupted or failed run: `repo unlock` removes a killed
/// run's lock, forget and prune again finish the work, the check is clean, the kept
/// snapshots restore, nothing is left to prune.
fn next_pass_converges(e: &[(String, String)], seed: u64, case: &str) {
    for args in [&["repo", "unlock"][..], FORGET, PRUNE] {
        let r = gc_run(e, args);
        assert_eq!(r.code, 0, "{case}: {args:?} after it\n{}", r.stderr);
    }
    let r = gc_run(e, &["repo", "check"]);
    assert_eq!(r.code, 0, "{case}: the check after it\n{}", r.stderr);
    let j = r.json();
    assert_eq!(j["check"], serde_json::json!([]), "{case}: {j}");
    assert_eq!(j["snapshotsAfter"], 2, "{case}: {j}");
    let c = restic(e, &["check", "--read-data"], None);
    assert_eq!(c.code, 0, "{case}: {}{}", c.stdout, c.stderr);
    kept_snapshots_restore(e, seed, case);
    let again = gc_run(e, PRUNE).ok();
    assert_eq!(
        again.json()["reclaimedBytes"],
        0,
        "{case}: {}",
        again.stderr
    );
}

/// Throttling, resets, cut bodies and latency on a fifth of all requests: forget,
/// prune and a full read-data check complete through retries; `restic check
/// --read-data` agrees.
#[test]
fn forget_prune_and_check_complete_through_faults_at_rates() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let t = Template::new(100);
    let (repo, direct) = t.seeded("gc-rates");
    proxy.set_rates(Rates::mix(11));
    let e = via(&proxy, &repo);
    let forget = gc_run(&e, FORGET);
    let prune = gc_run(&e, PRUNE);
    let check = gc_run(&e, &["repo", "check", "--read-data-subset", "1/1"]);
    let injected = proxy.injected();
    proxy.clear();
    for r in [&forget, &prune, &check] {
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let j = forget.json();
    assert_eq!(j["forgotten"].as_array().unwrap().len(), 2, "{j}");
    let j = prune.json();
    assert_eq!(j["pruned"], true, "{j}");
    assert!(j["reclaimedBytes"].as_u64().unwrap() > 1 << 20, "{j}");
    let j = check.json();
    assert_eq!(j["check"], serde_json::json!([]), "{j}");
    eprintln!("{} requests, injected {injected:?}", proxy.requests());
    assert!(
        injected.slow_down > 0 && injected.reset > 0 && injected.truncate > 0,
        "{injected:?}"
    );
    restic(&direct, &["check", "--read-data"], None).ok();
    kept_snapshots_restore(&direct, t.seed, "rates");
}

/// Faults that outlast the retries where forget and prune write and delete: the pass
/// fails with an error naming the S3 call, and the next pass converges.
#[test]
fn faults_beyond_the_retries_fail_clearly_and_the_next_pass_converges() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let t = Template::new(200);
    for (i, (method, dir)) in [
        ("DELETE", "/snapshots/"),
        ("PUT", "/index/"),
        ("DELETE", "/data/"),
    ]
    .into_iter()
    .enumerate()
    {
        let case = format!("{method} {dir} failing");
        let (repo, direct) = t.seeded("gc-hard");
        proxy.set_rates(Rates {
            seed: i as u64,
            internal_error: 1.0,
            method: Some(method.into()),
            path: Some(dir.into()),
            ..Rates::default()
        });
        let failing = with_env(via(&proxy, &repo), "STOWAGE_S3_MAX_ATTEMPTS", "2");
        // The forget fails on its deletes; with those fine, the prune on its writes.
        let mut r = gc_run(&failing, FORGET);
        if r.code == 0 {
            r = gc_run(&failing, PRUNE);
        }
        proxy.clear();
        assert_eq!(r.code, 1, "{case}: {}", r.stderr);
        let op = if method == "PUT" {
            "S3 write"
        } else {
            "S3 delete"
        };
        assert!(
            r.stderr.contains(op) && r.stderr.contains(&proxy.endpoint),
            "{case}: names the call and the endpoint: {}",
            r.stderr
        );
        assert!(!r.stderr.contains(&garage::shared().secret_key));
        let c = restic(&direct, &["check"], None);
        assert_eq!(c.code, 0, "{case}: {}{}", c.stdout, c.stderr);
        next_pass_converges(&direct, t.seed, &case);
        eprintln!("{case}: ok");
    }
}

fn with_env(mut e: Vec<(String, String)>, k: &str, v: &str) -> Vec<(String, String)> {
    e.retain(|(n, _)| n != k);
    e.push((k.into(), v.into()));
    e
}

/// Forget then prune SIGKILLed at request N, for N spread over both: `repo unlock`
/// removes the dead run's lock, forget and prune again finish the work and the check is
/// clean; the kept snapshots restore byte-identical; nothing is left to prune.
#[test]
fn sigkill_at_chosen_points_of_forget_and_prune() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let t = Template::new(300);
    let (repo, _) = t.seeded("gc-kcount");
    let before = proxy.requests();
    gc_run(&via(&proxy, &repo), FORGET).ok();
    let forget_requests = proxy.requests() - before;
    gc_run(&via(&proxy, &repo), PRUNE).ok();
    let total = proxy.requests() - before;
    let count = 8;
    let points: Vec<u64> = (0..count)
        .map(|i| 1 + (total - 1) * i / (count - 1))
        .collect();
    eprintln!(
        "forget + prune: {total} requests ({forget_requests} forget); kill points {points:?}"
    );
    for (i, &n) in points.iter().enumerate() {
        let (repo, direct) = t.seeded("gc-kill");
        let via = via(&proxy, &repo);
        // A point in the prune: the forget runs to its end first.
        let (args, n) = if n > forget_requests {
            gc_run(&via, FORGET).ok();
            (PRUNE, n - forget_requests)
        } else {
            (FORGET, n)
        };
        let case = format!(
            "kill point {}/{} (request {n} of {}, total {total})",
            i + 1,
            points.len(),
            args[1]
        );
        let pause = proxy.pause_at(proxy.requests() + n);
        let mut child = gc()
            .envs(via.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Two events to wait for: the held request, or the process's exit.
            if pause.wait(Duration::from_millis(50)) {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{case}: the pass ended before it"
            );
            assert!(Instant::now() < deadline, "{case}: never reached");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        drop(pause);
        next_pass_converges(&direct, t.seed, &case);
        eprintln!("{case}: ok");
    }
}

/// Pack reads that fail beyond the retries during a read-data check: the pass fails
/// clearly — naming the storage's error, or that the check did not finish when
/// rustic_core panics after the failed read — and says nothing was found damaged (a
/// "damaged" verdict would raise the damage alert and hold back prunes); the next check
/// is clean.
#[test]
fn a_check_whose_reads_fail_is_a_storage_error_not_damage() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let t = Template::new(500);
    let (repo, direct) = t.seeded("gc-check");
    proxy.set_rates(Rates {
        seed: 5,
        internal_error: 1.0,
        method: Some("GET".into()),
        path: Some("/data/".into()),
        ..Rates::default()
    });
    let failing = with_env(via(&proxy, &repo), "STOWAGE_S3_MAX_ATTEMPTS", "2");
    let args = ["repo", "check", "--read-data-subset", "1/1"];
    let r = gc_run(&failing, &args);
    proxy.clear();
    assert_eq!(r.code, 1, "{}", r.stderr);
    // rustic_core either reports the failed read or, racing its workers, panics.
    let read = r.stderr.contains("the check could not read the repository")
        && r.stderr.contains("S3 read")
        && r.stderr.contains("Nothing was found damaged");
    let stopped = r.stderr.contains("the check did not finish")
        && r.stderr.contains("Nothing was marked damaged");
    assert!(read || stopped, "{}", r.stderr);
    eprintln!(
        "reported as: {}",
        if read {
            "the failed read"
        } else {
            "an unfinished check"
        }
    );
    assert!(!r.stderr.contains("repository damaged"), "{}", r.stderr);
    let ok = gc_run(&direct, &args).ok();
    assert_eq!(ok.json()["check"], serde_json::json!([]));
}
