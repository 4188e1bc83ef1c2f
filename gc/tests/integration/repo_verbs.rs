//! `stowage-gc repo <verb>` on a local repository written by `restic`: each verb does
//! its one thing. `check` only reads (it used to apply the default retention and forget
//! snapshots), `forget` lists what it would forget and forgets exactly that only with
//! `--yes`, `prune` and `unlock` do nothing else.

use crate::support;

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use rustic_core::NoProgressBars;
use stowage_common::backend::Storage;
use stowage_common::locks::{self, LockInfo, LockKey};
use support::*;

/// 01-01 is more than 720h before the newest (03-15): the default `keep-within`
/// forgets it.
const TIMES: &[&str] = &[
    "2026-01-01 00:00:00",
    "2026-02-20 00:00:00",
    "2026-03-01 00:00:00",
    "2026-03-15 00:00:00",
];

struct Repo {
    _dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn repo(seed: u64) -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        (
            "RESTIC_REPOSITORY".to_string(),
            dir.path().join("repo").display().to_string(),
        ),
        ("RESTIC_PASSWORD".to_string(), PASSWORD.to_string()),
    ];
    repo_with_snapshots(&env, TIMES, 1, seed);
    Repo { _dir: dir, env }
}

/// Snapshot ids (full) and their times, as restic lists them.
fn snapshots(env: &[(String, String)]) -> Vec<(String, String)> {
    let r = restic(env, &["snapshots", "--json"], None).ok();
    let v: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let mut out: Vec<(String, String)> = v
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["time"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn ids(list: &serde_json::Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A shared lock of another host, two hours old: stale by age.
fn stale_lock(env: &[(String, String)]) -> (Storage, String) {
    lock_of_age(env, 120)
}

/// A shared lock of another host, `minutes` old.
fn lock_of_age(env: &[(String, String)], minutes: i64) -> (Storage, String) {
    let access = access(env);
    let repo = access.open(NoProgressBars).unwrap().unwrap();
    let key = LockKey::from_master(&repo.key()).unwrap();
    let info = LockInfo {
        time: Timestamp::now() - SignedDuration::from_mins(minutes),
        exclusive: false,
        hostname: "stowage-backup-gone-abc12".into(),
        username: "mover".into(),
        pid: 1,
        uid: 0,
        gid: 0,
    };
    let (name, data) = locks::encode(&key, &info);
    access.storage.write(locks::LOCKS_DIR, &name, data).unwrap();
    (access.storage.clone(), name)
}

/// The repository password never shows in what a run prints.
fn no_secret(r: &Run) {
    assert!(
        !r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD),
        "the password leaked:\n{}\n{}",
        r.stdout,
        r.stderr
    );
}

fn lock_files(storage: &Storage) -> Vec<String> {
    storage
        .list(locks::LOCKS_DIR)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn repo_check_never_forgets_prunes_or_unlocks() {
    let r = repo(10);
    let before = snapshots(&r.env);
    assert_eq!(before.len(), 4);
    let (storage, lock) = stale_lock(&r.env);

    for args in [
        &["repo", "check"][..],
        &["repo", "check", "--read-data"],
        &["repo", "check", "--read-data-subset", "1/2"],
    ] {
        let out = gc_run(&r.env, args).ok();
        no_secret(&out);
        let j = out.json();
        assert_eq!(j["check"], serde_json::json!([]), "{args:?}: {j}");
        assert_eq!(j["forgotten"], serde_json::json!([]), "{args:?}: {j}");
        assert_eq!(j["locksRemoved"], serde_json::json!([]), "{args:?}: {j}");
        assert_eq!(j["pruned"], false, "{args:?}: {j}");
        assert_eq!(j["snapshotsAfter"], 4, "{args:?}: {j}");
        assert_eq!(j["bytesAfter"], j["bytesBefore"], "{args:?}: {j}");
        assert_eq!(snapshots(&r.env), before, "{args:?}: every snapshot stays");
        assert_eq!(
            lock_files(&storage),
            vec![lock.clone()],
            "{args:?}: the stale lock stays (only `repo unlock` removes it)"
        );
    }
}

#[test]
fn repo_forget_lists_without_yes_and_forgets_exactly_those_with_it() {
    let r = repo(20);
    let before = snapshots(&r.env);
    let oldest = before[0].0.clone();

    // Without --yes: the list, nothing changed.
    let dry = gc_run(&r.env, &["repo", "forget", "--keep-within", "720h"]).ok();
    no_secret(&dry);
    let listed = ids(&dry.json()["forgotten"]);
    assert_eq!(listed, BTreeSet::from([oldest.clone()]), "{}", dry.stderr);
    assert_eq!(dry.json()["dryRun"], true);
    assert!(
        dry.stderr.contains("would forget snapshot") && dry.stderr.contains(&oldest),
        "the full id is printed: {}",
        dry.stderr
    );
    assert!(dry.stderr.contains("--yes"), "{}", dry.stderr);
    assert_eq!(snapshots(&r.env), before, "nothing forgotten without --yes");
    // --dry-run wins over --yes.
    gc_run(
        &r.env,
        &[
            "repo",
            "forget",
            "--keep-within",
            "720h",
            "--yes",
            "--dry-run",
        ],
    )
    .ok();
    assert_eq!(snapshots(&r.env), before);

    // With --yes: exactly the listed ones.
    let done = gc_run(
        &r.env,
        &["repo", "forget", "--keep-within", "720h", "--yes"],
    )
    .ok();
    assert_eq!(ids(&done.json()["forgotten"]), listed, "{}", done.stderr);
    assert_eq!(done.json()["dryRun"], false);
    let after: BTreeSet<String> = snapshots(&r.env).into_iter().map(|(i, _)| i).collect();
    let expected: BTreeSet<String> = before
        .iter()
        .map(|(i, _)| i.clone())
        .filter(|i| !listed.contains(i))
        .collect();
    assert_eq!(after, expected);
    // Forget does not prune: the forgotten snapshot's data is still there.
    assert_eq!(done.json()["pruned"], false);
    restic(&r.env, &["check"], None).ok();
}

#[test]
fn repo_prune_and_unlock_do_one_thing_each() {
    let r = repo(30);
    gc_run(&r.env, &["repo", "forget", "--keep-last", "1", "--yes"]).ok();
    let kept = snapshots(&r.env);
    assert_eq!(kept.len(), 1);

    // A fresh lock (a backup runs): the prune waits, nothing removed.
    let (storage, fresh) = lock_of_age(&r.env, 2);
    let busy = gc_run(&r.env, &["repo", "prune"]);
    assert_eq!(busy.code, 11, "{}", busy.stderr);
    assert_eq!(lock_files(&storage), vec![fresh.clone()]);
    storage.remove(locks::LOCKS_DIR, &fresh).unwrap();

    // A stale lock does not hold a prune back (as for restic), and the prune leaves it.
    let (_, lock) = stale_lock(&r.env);
    let prune = gc_run(&r.env, &["repo", "prune"]).ok();
    let j = prune.json();
    assert_eq!(j["pruned"], true, "{j}");
    assert!(j["reclaimedBytes"].as_u64().unwrap() > 2 << 20, "{j}");
    assert_eq!(j["forgotten"], serde_json::json!([]), "{j}");
    assert_eq!(j["locksRemoved"], serde_json::json!([]), "{j}");
    assert_eq!(snapshots(&r.env), kept, "prune forgets nothing");
    assert_eq!(
        lock_files(&storage),
        vec![lock.clone()],
        "only unlock removes it"
    );

    // Unlock: removes it, and does nothing else.
    let dry = gc_run(&r.env, &["repo", "unlock", "--dry-run"]).ok();
    assert_eq!(dry.json()["locksRemoved"], serde_json::json!([lock]));
    assert_eq!(lock_files(&storage), vec![lock.clone()]);
    let unlock = gc_run(&r.env, &["repo", "unlock"]).ok();
    let j = unlock.json();
    assert_eq!(j["locksRemoved"], serde_json::json!([lock]), "{j}");
    assert_eq!(j["pruned"], false, "{j}");
    assert_eq!(j["forgotten"], serde_json::json!([]), "{j}");
    assert_eq!(j["bytesAfter"], j["bytesBefore"], "{j}");
    assert!(lock_files(&storage).is_empty(), "{}", unlock.stderr);
    assert_eq!(snapshots(&r.env), kept);
    restic(&r.env, &["check", "--read-data"], None).ok();
}

#[test]
fn repo_verbs_refuse_what_they_cannot_mean() {
    let r = repo(40);
    let before = snapshots(&r.env);
    // The old flag form, and no verb: usage errors, nothing done.
    for args in [&["repo"][..], &["repo", "--check"], &["repo", "--prune"]] {
        let out = gc_run(&r.env, args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    // A forget without a rule names what to give.
    let out = gc_run(&r.env, &["repo", "forget", "--yes"]);
    no_secret(&out);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no retention rule given"),
        "{}",
        out.stderr
    );
    // The pass's confirmation is no `repo` flag.
    let out = gc_run(
        &r.env,
        &[
            "--confirm-forget",
            "b/ns/pvc=3",
            "repo",
            "forget",
            "--keep-last",
            "1",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(snapshots(&r.env), before);
    // --help of each verb shows examples.
    for verb in ["check", "forget", "prune", "unlock"] {
        let out = gc_run(&r.env, &["repo", verb, "--help"]).ok();
        assert!(
            out.stdout.contains("Examples:") && out.stdout.contains("Exit status"),
            "{verb}: {}",
            out.stdout
        );
    }
}
