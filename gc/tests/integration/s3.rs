//! `stowage-gc repo <verb>` against the real S3 server (Garage) with `restic` as the
//! peer: forget then prune reclaim space, SIGKILL during prune, stale and fresh locks, a
//! backup during prune, a corrupted pack found by the read-data subset.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rustic_core::NoProgressBars;
use stowage_common::locks::{self, LockInfo, LockKey};
use stowage_common::{Error, backend::Storage};
use stowage_testkit::garage;
use stowage_testkit::proxy::{Fault, FaultProxy};
use support::*;

const TIMES: &[&str] = &[
    "2026-01-01 00:00:00",
    "2026-02-20 00:00:00",
    "2026-03-01 00:00:00",
    "2026-03-15 00:00:00",
];

#[test]
fn forget_and_prune_reclaim_space_and_restic_check_read_data_passes() {
    let b = garage::shared().bucket("gc-prune");
    let env = env(&format!("{b}/ns/pvc"));
    repo_with_snapshots(&env, TIMES, 2, 1);
    // Without --yes: says what it would do, changes nothing.
    let dry = gc_run(&env, &["repo", "forget", "--keep-within", "720h"]).ok();
    assert_eq!(
        dry.json()["forgotten"].as_array().unwrap().len(),
        1,
        "{}",
        dry.stderr
    );
    assert!(
        dry.stderr.contains("would forget snapshot"),
        "{}",
        dry.stderr
    );
    let dry = gc_run(&env, &["repo", "prune", "--dry-run"]).ok();
    assert_eq!(dry.json()["pruned"], false, "{}", dry.stderr);
    assert_eq!(snapshot_count(&env), 4);

    let r = gc_run(&env, &["repo", "forget", "--keep-within", "720h", "--yes"]).ok();
    let j = r.json();
    // keep-within 720h before the newest (03-15): 03-01 and 02-20 (23 days before)
    // stay, 01-01 goes.
    assert_eq!(j["snapshotsAfter"], 3, "{j}");
    assert_eq!(j["forgotten"].as_array().unwrap().len(), 1, "{j}");
    let r = gc_run(&env, &["repo", "prune"]).ok();
    let j = r.json();
    assert_eq!(j["pruned"], true);
    let check = gc_run(&env, &["repo", "check"]).ok();
    assert_eq!(check.json()["check"], serde_json::json!([]));
    let reclaimed = j["reclaimedBytes"].as_u64().unwrap();
    assert!(
        reclaimed > (3 << 20) / 2,
        "reclaimed only {reclaimed} bytes: {j}"
    );
    assert!(
        r.stderr.contains("pruning"),
        "progress logged: {}",
        r.stderr
    );
    assert_eq!(snapshot_count(&env), 3);
    restic(&env, &["check", "--read-data"], None).ok();

    // keep-last 1: everything but the newest goes, and the repository still checks.
    let r = gc_run(&env, &["repo", "forget", "--keep-last", "1", "--yes"]).ok();
    assert_eq!(r.json()["snapshotsAfter"], 1);
    gc_run(&env, &["repo", "prune"]).ok();
    restic(&env, &["check", "--read-data"], None).ok();
    let d = tempfile::tempdir().unwrap();
    restic(
        &env,
        &["restore", "latest", "--target", d.path().to_str().unwrap()],
        None,
    )
    .ok();
    assert_eq!(
        std::fs::read(d.path().join("f3.bin")).unwrap(),
        stowage_testkit::trees::random_bytes(2 << 20, 4)
    );
}

fn killed_during_prune(stage: &str, seed: u64) {
    let b = garage::shared().bucket("gc-kill");
    let env = env(&format!("{b}/ns/pvc"));
    repo_with_snapshots(&env, TIMES, 3, seed);
    gc_run(&env, &["repo", "forget", "--keep-last", "1", "--yes"]).ok();
    let mut child = gc()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("STOWAGE_LIMIT_UPLOAD", "256")
        .args(["repo", "prune"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(stage) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        seen.contains(stage),
        "stage {stage:?} never logged:\n{seen}"
    );

    // `repo unlock` removes the dead process's lock, the next prune finishes the job,
    // the check is clean.
    let r = gc_run(&env, &["repo", "unlock"]).ok();
    assert_eq!(
        r.json()["locksRemoved"].as_array().unwrap().len(),
        1,
        "{}",
        r.stderr
    );
    gc_run(&env, &["repo", "prune"]).ok();
    let r = gc_run(&env, &["repo", "check"]).ok();
    let j = r.json();
    assert_eq!(j["check"], serde_json::json!([]), "{j}");
    assert_eq!(j["snapshotsAfter"], 1);
    restic(&env, &["check", "--read-data"], None).ok();
    let d = tempfile::tempdir().unwrap();
    restic(
        &env,
        &["restore", "latest", "--target", d.path().to_str().unwrap()],
        None,
    )
    .ok();
    assert_eq!(
        std::fs::read(d.path().join("f3.bin")).unwrap(),
        stowage_testkit::trees::random_bytes(3 << 20, seed + 3),
        "the newest snapshot restores whole"
    );
    // Nothing left behind: a further prune finds nothing to remove.
    let again = gc_run(&env, &["repo", "prune"]).ok();
    assert_eq!(again.json()["reclaimedBytes"], 0, "{}", again.stderr);
}

#[test]
fn sigkill_while_planning_prune() {
    killed_during_prune("finding used blobs", 10);
}

#[test]
fn sigkill_while_rebuilding_index() {
    killed_during_prune("rebuilding index", 20);
}

#[test]
fn sigkill_while_removing_old_index() {
    killed_during_prune("removing old index files", 30);
}

#[test]
fn sigkill_while_removing_packs() {
    killed_during_prune("removing old data packs", 40);
}

fn key_of(env: &[(String, String)]) -> (Storage, LockKey) {
    let access = access(env);
    let repo = access.open(NoProgressBars).unwrap().unwrap();
    let key = LockKey::from_master(&repo.key()).unwrap();
    (access.storage.clone(), key)
}

fn put_lock(storage: &Storage, key: &LockKey, host: &str, age_min: i64, exclusive: bool) -> String {
    let info = LockInfo {
        time: Timestamp::now() - SignedDuration::from_mins(age_min),
        exclusive,
        hostname: host.into(),
        username: "mover".into(),
        pid: 1,
        uid: 0,
        gid: 0,
    };
    let (name, data) = locks::encode(key, &info);
    storage.write(locks::LOCKS_DIR, &name, data).unwrap();
    name
}

fn lock_files(storage: &Storage) -> Vec<String> {
    let mut v: Vec<String> = storage
        .list(locks::LOCKS_DIR)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    v.sort();
    v
}

#[test]
fn stale_lock_is_removed_and_fresh_one_respected() {
    let b = garage::shared().bucket("gc-locks");
    let env = env(&format!("{b}/ns/pvc"));
    repo_with_snapshots(&env, &TIMES[..1], 1, 50);
    let (storage, key) = key_of(&env);
    let stale = put_lock(&storage, &key, "stowage-backup-gone-abc12", 120, false);
    let fresh = put_lock(&storage, &key, "stowage-backup-live-def34", 2, false);

    // A running backup (fresh lock) blocks the exclusive work: nothing is removed.
    let r = gc_run(&env, &["repo", "unlock"]);
    assert_eq!(r.code, 11, "busy\n{}", r.stderr);
    assert!(r.stderr.contains("busy"), "{}", r.stderr);
    assert_eq!(lock_files(&storage), {
        let mut v = vec![stale.clone(), fresh.clone()];
        v.sort();
        v
    });

    // The backup ends; the next pass removes the stale lock and says so.
    storage.remove(locks::LOCKS_DIR, &fresh).unwrap();
    let fresh2 = put_lock(&storage, &key, "other-host", 5, false);
    let r = gc_run(&env, &["repo", "unlock"]);
    assert_eq!(
        r.code, 11,
        "the second fresh lock still blocks\n{}",
        r.stderr
    );
    storage.remove(locks::LOCKS_DIR, &fresh2).unwrap();
    let r = gc_run(&env, &["repo", "unlock"]).ok();
    assert_eq!(r.json()["locksRemoved"], serde_json::json!([stale]));
    assert!(
        r.stderr.contains("removed stale lock") && r.stderr.contains("stowage-backup-gone-abc12"),
        "{}",
        r.stderr
    );
    assert!(lock_files(&storage).is_empty(), "gc's own lock is gone too");
    restic(&env, &["check"], None).ok();
}

#[test]
fn backup_during_prune_fails_clearly_and_nothing_is_lost() {
    let g = garage::shared();
    let b = g.bucket("gc-race");
    let repo = format!("{b}/ns/pvc");
    let env = env(&repo);
    repo_with_snapshots(&env, TIMES, 2, 60);
    let proxy = FaultProxy::start(g.addr());
    let mut via = g.env_via(&proxy.endpoint, &repo);
    via.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    gc_run(&via, &["repo", "forget", "--keep-last", "2", "--yes"]).ok();
    let mut child = gc()
        .envs(via.iter().map(|(k, v)| (k, v)))
        .args(["repo", "prune"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("pruning") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("pruning"), "{seen}");
    // gc holds its exclusive lock now; stall its S3 traffic so it keeps holding it.
    proxy.set(1, Some(Fault::Delay(Duration::from_secs(8))));

    // A restic backup (VolSync's mover) refuses clearly...
    let d = tempfile::tempdir().unwrap();
    stowage_testkit::trees::write_random(&d.path().join("new.bin"), 1 << 20, 99);
    let r = restic(&env, &["backup", "--host", "volsync", "."], Some(d.path()));
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("locked exclusively"), "{}", r.stderr);
    // ...and so does stowage's mover lock (what `stowage-mover backup` takes).
    let (storage, key) = key_of(&env);
    let err = locks::acquire(&storage, &key, false).err().expect("locked");
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(err.to_string().contains("exclusive lock"), "{err}");

    proxy.set(0, None);
    let rest = std::io::read_to_string(stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen}{rest}");

    // After gc: the backup goes through; nothing was lost.
    restic(&env, &["backup", "--host", "volsync", "."], Some(d.path())).ok();
    assert_eq!(snapshot_count(&env), 3);
    restic(&env, &["check", "--read-data"], None).ok();
}

#[test]
fn corrupted_pack_is_found_by_the_read_data_subset() {
    let b = garage::shared().bucket("gc-corrupt");
    let env = env(&format!("{b}/ns/pvc"));
    repo_with_snapshots(&env, &TIMES[..1], 2, 70);
    let access = access(&env);
    let Storage::S3(s3) = &access.storage else {
        panic!()
    };
    let (key, size) = s3
        .list_keys("data")
        .unwrap()
        .into_iter()
        .max_by_key(|(_, s)| *s)
        .unwrap();
    let mut data = s3.get_key(&key).unwrap().unwrap().to_vec();
    data[(size / 2) as usize] ^= 0xff;
    s3.put_key(&key, data.into()).unwrap();

    // The structure check cannot see it (sizes and index agree)...
    gc_run(&env, &["repo", "check"]).ok();
    // ...reading the data does, and names the repository and the pack.
    let r = gc_run(&env, &["repo", "check", "--read-data-subset", "1/1"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let pack = key.rsplit('/').next().unwrap();
    assert!(r.stderr.contains("repository damaged"), "{}", r.stderr);
    assert!(r.stderr.contains(&b), "names the repository: {}", r.stderr);
    assert!(
        r.stderr.contains(&pack[..8]),
        "names the pack: {}",
        r.stderr
    );
}
