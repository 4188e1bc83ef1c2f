//! A backup killed with SIGKILL in the middle leaves a repository that checks clean,
//! and the next backup succeeds and restores completely. One stopped with SIGTERM (a
//! deleted Job, a deadline) also releases its lock at once and reports `Terminated`.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use stowage_testkit::{garage, trees};
use support::*;

fn killed_mid_backup(env: Vec<(String, String)>) {
    let d = tmp();
    let (src, out) = (join(&d, "src"), join(&d, "out"));
    trees::many_small(&src, 500, 11);
    // More than two data packs (32 MiB each), so the archiver must wait for the
    // throttled writes and reports progress while the kill lands.
    for i in 0..18 {
        trees::write_random(&src.join(format!("big/{i}.bin")), 8 * 1024 * 1024, 100 + i);
    }
    // Slow the upload so the kill lands mid-way.
    let slow = with(env.clone(), &[("STOWAGE_LIMIT_UPLOAD", "4096")]);
    let mut child = mover()
        .envs(slow.iter().map(|(k, v)| (k, v)))
        .args(["backup", path(&src)])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the event "backup is under way and has made progress", then kill.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("backing up:") {
            break;
        }
    }
    assert!(
        seen.contains("backing up:"),
        "no progress line before exit:\n{seen}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let listed = run(&env, &["snapshots", "--json"]).ok();
    assert_eq!(
        listed.stdout.trim(),
        "[]",
        "no snapshot from the killed run"
    );
    // The killed mover's lock stays behind (every restic client leaves one when
    // killed); restic recognises it as stale (same host, dead pid) and removes it.
    let unlocked = restic(&env, &["unlock"], None).ok();
    assert!(
        unlocked.stdout.contains("successfully removed locks"),
        "{}",
        unlocked.stdout
    );
    restic(&env, &["check"], None).ok();
    run(&env, &["backup", path(&src)]).ok();
    restic(&env, &["check", "--read-data"], None).ok();
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn sigkill_during_s3_backup() {
    let b = garage::shared().bucket("kill");
    killed_mid_backup(s3_env(&format!("{b}/ns/pvc")));
}

#[test]
fn sigkill_during_local_backup() {
    let d = tmp();
    killed_mid_backup(local_env(&join(&d, "repo")));
}

/// A tree that takes long to back up at 4 MiB/s (about 40 s of uploads).
fn big_tree(src: &std::path::Path) {
    trees::many_small(src, 200, 12);
    for i in 0..20 {
        trees::write_random(&src.join(format!("big/{i}.bin")), 8 * 1024 * 1024, 200 + i);
    }
}

/// SIGTERM once the backup holds its lock and has started: the mover exits promptly
/// with 143, no lock is left, the result (line and file) says `Terminated`, no snapshot
/// was added, the repository checks clean and the next backup succeeds.
fn terminated_mid_backup(env: Vec<(String, String)>, locks_left: impl Fn() -> usize) {
    let d = tmp();
    let (src, res) = (join(&d, "src"), join(&d, "result"));
    big_tree(&src);
    let slow = with(
        env.clone(),
        &[
            ("STOWAGE_LIMIT_UPLOAD", "4096"),
            ("STOWAGE_RESULT_FILE", path(&res)),
        ],
    );
    let mut child = mover()
        .envs(slow.iter().map(|(k, v)| (k, v)))
        .args(["backup", path(&src)])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // "backup started" is logged once the lock is held.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            if line.contains("backup started") {
                let _ = tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the backup starts");
    assert_eq!(locks_left(), 1, "the running backup holds its lock");
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let log = reader.join().unwrap();
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(
        took < Duration::from_secs(15),
        "exited {took:?} after SIGTERM\n{log}"
    );
    assert!(log.contains("SIGTERM received"), "{log}");
    assert_eq!(locks_left(), 0, "the lock was released\n{log}");
    let written: stowage_mover::report::RunResult =
        serde_json::from_str(&std::fs::read_to_string(&res).unwrap()).unwrap();
    assert_eq!(written.reason.as_deref(), Some("Terminated"));
    assert!(!written.ok);
    assert!(stdout.contains("\"reason\":\"Terminated\""), "{stdout}");
    let listed = run(&env, &["snapshots", "--json"]).ok();
    assert_eq!(
        listed.stdout.trim(),
        "[]",
        "no snapshot from the stopped run"
    );
    // No `restic unlock` needed: nothing is left to unlock.
    restic(&env, &["check"], None).ok();
    run(&env, &["backup", path(&src)]).ok();
    let out = join(&d, "out");
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn sigterm_during_local_backup_releases_the_lock_and_reports_terminated() {
    let d = tmp();
    let repo = join(&d, "repo");
    let locks = repo.join("locks");
    terminated_mid_backup(local_env(&repo), || {
        std::fs::read_dir(&locks).map_or(0, |d| d.count())
    });
}

#[test]
fn sigterm_during_s3_backup_releases_the_lock_and_reports_terminated() {
    let b = garage::shared().bucket("term");
    let env = s3_env(&format!("{b}/ns/pvc"));
    let listing = env.clone();
    terminated_mid_backup(env, move || {
        let out = restic(&listing, &["list", "locks", "--no-lock"], None).ok();
        out.stdout.lines().filter(|l| !l.trim().is_empty()).count()
    });
}
