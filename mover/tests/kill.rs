//! A backup killed with SIGKILL in the middle leaves a repository that checks clean,
//! and the next backup succeeds and restores completely.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

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
