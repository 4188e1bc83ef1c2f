//! The mover against a local repository: round trips, incremental behaviour, guards
//! and bad input.

mod support;

use std::fs;

use stowage_common::locks;
use stowage_testkit::trees;
use support::*;

#[test]
fn round_trip_preserves_everything() {
    let d = tmp();
    let (src, repo, out) = (join(&d, "src"), join(&d, "repo"), join(&d, "out"));
    trees::zoo(&src);
    let env = local_env(&repo);
    let b = run(&env, &["backup", path(&src)]).ok().result();
    assert!(b.ok && b.snapshot.is_some());
    assert!(b.files > 200, "{b:?}");
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);
    assert!(
        !out.join("lost+found").exists(),
        "lost+found is never backed up"
    );
    // A 256 MiB sparse image with 68 KiB of data comes back sparse.
    let img = out.join("large/disk.img");
    assert_eq!(fs::metadata(&img).unwrap().len(), 256 * 1024 * 1024);
    assert!(
        trees::allocated(&img) < 8 * 1024 * 1024,
        "allocated {}",
        trees::allocated(&img)
    );
}

#[test]
fn second_backup_of_unchanged_tree_adds_almost_nothing_and_one_percent_change_adds_about_that() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    trees::many_small(&src, 3000, 1);
    trees::write_random(&src.join("big/a.bin"), 20 * 1024 * 1024, 2);
    let env = local_env(&repo);
    let first = run(&env, &["backup", path(&src)]).ok().result();
    assert!(first.added_bytes > first.bytes * 9 / 10, "{first:?}");

    let second = run(&env, &["backup", path(&src)]).ok().result();
    assert_eq!(second.bytes, first.bytes);
    assert!(
        second.added_bytes < 64 * 1024,
        "unchanged re-backup added {} bytes",
        second.added_bytes
    );

    let changed = trees::change_fraction(&src, 0.01, 99);
    let third = run(&env, &["backup", path(&src)]).ok().result();
    // Content-defined chunks: a rewritten file costs about its size, plus trees.
    assert!(
        third.added_bytes >= changed * 8 / 10,
        "changed {changed}, added {}",
        third.added_bytes
    );
    assert!(
        third.added_bytes <= changed * 2 + 256 * 1024,
        "changed {changed}, added {}",
        third.added_bytes
    );
}

#[test]
fn empty_source_over_history_is_refused_unless_allowed() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    trees::many_small(&src, 10, 1);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    fs::remove_dir_all(&src).unwrap();
    fs::create_dir_all(src.join("lost+found")).unwrap();
    let r = run(&env, &["backup", path(&src)]).failed(1, "is empty");
    assert!(r.stderr.contains("--allow-empty"), "{}", r.stderr);
    assert!(!r.result().ok);
    assert_eq!(r.result().reason.as_deref(), Some("EmptySource"));
    let listed = run(&env, &["snapshots", "--json"]).ok();
    let snaps: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(snaps.len(), 1, "no snapshot was added");
    run(&env, &["backup", path(&src), "--allow-empty"]).ok();
    run(
        &with(env, &[("STOWAGE_ALLOW_EMPTY_SOURCE", "true")]),
        &["backup", path(&src)],
    )
    .ok();
}

#[test]
fn first_backup_of_a_new_pvc_over_foreign_history_is_refused_unless_adopted() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    trees::many_small(&src, 10, 1);
    let old = with(local_env(&repo), &[("STOWAGE_PVC_UID", "uid-old")]);
    run(&old, &["backup", path(&src)]).ok();
    // The old PVC keeps backing up.
    run(&old, &["backup", path(&src)]).ok();
    // A new incarnation (new UID, e.g. a fresh volume after a rebuild) is refused.
    let new = with(
        local_env(&repo),
        &[("STOWAGE_PVC_UID", "uid-new"), ("STOWAGE_NAMESPACE", "db")],
    );
    let r = run(&new, &["backup", path(&src)]).failed(1, "refusing the first backup");
    assert!(
        r.stderr.contains("stowage.io/adopt-repository=true"),
        "{}",
        r.stderr
    );
    let result = r.result();
    assert_eq!(result.reason.as_deref(), Some("ForeignHistory"));
    assert!(result.error.unwrap().contains("uid uid-old"));
    let listed = run(&old, &["snapshots", "--json"]).ok();
    let snaps: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(snaps.len(), 2, "no snapshot was added");
    // Allowed by the user (annotation -> STOWAGE_ADOPT_HISTORY), then it has its own
    // history and needs no permission any more.
    run(
        &with(new.clone(), &[("STOWAGE_ADOPT_HISTORY", "true")]),
        &["backup", path(&src)],
    )
    .ok();
    run(&new, &["backup", path(&src)]).ok();
    // Without a UID (manual runs) there is no guard.
    run(&local_env(&repo), &["backup", path(&src)]).ok();
}

#[test]
fn empty_source_into_new_repository_is_fine() {
    let d = tmp();
    let src = join(&d, "src");
    fs::create_dir_all(&src).unwrap();
    run(&local_env(&join(&d, "repo")), &["backup", path(&src)]).ok();
}

#[test]
fn restore_refuses_non_empty_target_and_replace_makes_it_equal() {
    let d = tmp();
    let (src, repo, out) = (join(&d, "src"), join(&d, "repo"), join(&d, "out"));
    trees::many_small(&src, 50, 3);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("precious"), "do not lose me").unwrap();
    run(&env, &["restore", path(&out)]).failed(1, "not empty");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1, "nothing written");
    assert_eq!(
        fs::read_to_string(out.join("precious")).unwrap(),
        "do not lose me"
    );
    run(&env, &["restore", path(&out), "--replace"]).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn restore_target_with_only_lost_and_found_counts_as_empty() {
    let d = tmp();
    let (src, repo, out) = (join(&d, "src"), join(&d, "repo"), join(&d, "out"));
    trees::many_small(&src, 5, 3);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    fs::create_dir_all(out.join("lost+found")).unwrap();
    run(&env, &["restore", path(&out)]).ok();
    assert!(out.join("d0000").is_dir());
}

#[test]
fn restore_without_repository_is_success_with_empty_target() {
    let d = tmp();
    let out = join(&d, "out");
    let r = run(&local_env(&join(&d, "none")), &["restore", path(&out)]).ok();
    assert_eq!(r.result().restored, Some(false));
    assert!(r.stderr.contains("nothing to restore"), "{}", r.stderr);
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    assert!(
        !join(&d, "none").exists(),
        "no repository is created by a restore"
    );
}

#[test]
fn restore_picks_snapshot_by_id_and_by_time() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    let env = local_env(&repo);
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("v"), "one").unwrap();
    let first = run(&env, &["backup", path(&src)]).ok().result();
    let between = jiff::Timestamp::now().to_string();
    fs::write(src.join("v"), "two").unwrap();
    run(&env, &["backup", path(&src)]).ok();

    let out = join(&d, "latest");
    run(&env, &["restore", path(&out)]).ok();
    assert_eq!(fs::read_to_string(out.join("v")).unwrap(), "two");
    let out = join(&d, "byid");
    let id = first.snapshot.unwrap();
    run(&env, &["restore", path(&out), "--snapshot", &id[..8]]).ok();
    assert_eq!(fs::read_to_string(out.join("v")).unwrap(), "one");
    let out = join(&d, "asof");
    run(&env, &["restore", path(&out), "--as-of", &between]).ok();
    assert_eq!(fs::read_to_string(out.join("v")).unwrap(), "one");

    run(
        &env,
        &["restore", path(&join(&d, "x")), "--snapshot", "deadbeef"],
    )
    .failed(1, "no snapshot deadbeef");
    run(
        &env,
        &["restore", path(&join(&d, "y")), "--as-of", "2001-01-01"],
    )
    .failed(1, "no snapshot at or before");
    run(
        &env,
        &["restore", path(&join(&d, "z")), "--as-of", "whenever"],
    )
    .failed(2, "not a time");
}

#[test]
fn snapshots_carry_host_path_and_volume_tags() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    trees::many_small(&src, 5, 1);
    let env = with(
        local_env(&repo),
        &[
            ("STOWAGE_NAMESPACE", "db"),
            ("STOWAGE_PVC", "data-pg-0"),
            ("STOWAGE_PVC_UID", "1f2e3d"),
        ],
    );
    run(&env, &["backup", path(&src)]).ok();
    let listed = run(&env, &["snapshots", "--json"]).ok();
    let snaps: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(snaps[0]["host"], "volsync", "host never the pod's name");
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/data"]));
    assert_eq!(
        snaps[0]["tags"],
        serde_json::json!(["namespace=db", "pvc-uid=1f2e3d", "pvc=data-pg-0"])
    );
    let table = run(&env, &["snapshots"]).ok();
    assert!(table.stdout.contains("1 snapshot(s)"), "{}", table.stdout);
    assert!(table.stdout.contains("pvc=data-pg-0"), "{}", table.stdout);
}

#[test]
fn wrong_password_is_a_clear_error_and_changes_nothing() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    trees::many_small(&src, 5, 1);
    run(&local_env(&repo), &["backup", path(&src)]).ok();
    let before = fs::read_dir(repo.join("snapshots")).unwrap().count();
    let bad = with(local_env(&repo), &[("RESTIC_PASSWORD", "wrong")]);
    let r = run(&bad, &["backup", path(&src)]).failed(1, "password opens no key");
    assert!(
        !r.stderr.contains("wrong"),
        "the password is not echoed: {}",
        r.stderr
    );
    run(&bad, &["restore", path(&join(&d, "out"))]).failed(1, "password opens no key");
    assert_eq!(
        fs::read_dir(repo.join("snapshots")).unwrap().count(),
        before
    );
    assert_eq!(
        fs::read_dir(repo.join("locks"))
            .map(|r| r.count())
            .unwrap_or(0),
        0,
        "no lock left"
    );
}

#[test]
fn bad_configuration_exits_2_and_names_the_problem() {
    let d = tmp();
    let src = join(&d, "src");
    fs::create_dir_all(&src).unwrap();
    run(&[], &["backup", path(&src)]).failed(2, "RESTIC_REPOSITORY");
    let no_pw = vec![(
        "RESTIC_REPOSITORY".to_string(),
        path(&join(&d, "r")).to_string(),
    )];
    run(&no_pw, &["backup", path(&src)]).failed(2, "RESTIC_PASSWORD");
    run(
        &with(local_env(&join(&d, "r")), &[("STOWAGE_ALOW_HTTP", "1")]),
        &["snapshots"],
    )
    .failed(2, "STOWAGE_ALOW_HTTP");
    run(
        &with(
            local_env(&join(&d, "r")),
            &[("STOWAGE_S3_CONCURRENCY", "many")],
        ),
        &["snapshots"],
    )
    .failed(2, "STOWAGE_S3_CONCURRENCY");
    run(
        &local_env(&join(&d, "r")),
        &["backup", path(&join(&d, "missing"))],
    )
    .failed(1, "does not exist");
    run(
        &with(
            local_env(&join(&d, "r")),
            &[("RESTIC_REPOSITORY", "sftp:host:/x")],
        ),
        &["snapshots"],
    )
    .failed(2, "not supported");
}

#[test]
fn password_file_and_repo_flags_work() {
    let d = tmp();
    let (src, repo, pw) = (join(&d, "src"), join(&d, "repo"), join(&d, "pw"));
    trees::many_small(&src, 5, 1);
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    run(
        &[],
        &[
            "--repo",
            path(&repo),
            "--password-file",
            path(&pw),
            "backup",
            path(&src),
        ],
    )
    .ok();
    let env = vec![("RESTIC_PASSWORD_FILE".to_string(), path(&pw).to_string())];
    run(&env, &["-r", path(&repo), "snapshots"]).ok();
}

#[test]
fn fresh_exclusive_lock_blocks_with_exit_3_and_stale_one_does_not() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    trees::many_small(&src, 5, 1);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    // Take an exclusive lock the way a prune would, with the repository's key.
    let access = stowage_common::repo::RepoAccess::new(
        stowage_common::location::Location::Local(repo.clone()),
        stowage_common::backend::Storage::Local(repo.clone()),
        PASSWORD.into(),
        None,
    );
    let open = access.open(rustic_core::NoProgressBars).unwrap().unwrap();
    let key = locks::LockKey::from_master(&open.key()).unwrap();
    let mut info = locks::LockInfo::for_this_process(true);
    info.hostname = "prune-host".into();
    let (name, data) = locks::encode(&key, &info);
    access.storage.write(locks::LOCKS_DIR, &name, data).unwrap();
    let r = run(&env, &["backup", path(&src)]).failed(3, "exclusive lock");
    assert!(r.stderr.contains("prune-host"), "{}", r.stderr);
    // restic sees our lock file the same way.
    let listed = restic(&env, &["list", "locks", "--no-lock"], None).ok();
    assert!(listed.stdout.contains(&name), "{}", listed.stdout);

    access.storage.remove(locks::LOCKS_DIR, &name).unwrap();
    info.time = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(40);
    let (stale, data) = locks::encode(&key, &info);
    access
        .storage
        .write(locks::LOCKS_DIR, &stale, data)
        .unwrap();
    run(&env, &["backup", path(&src)]).ok();
    let left: Vec<_> = fs::read_dir(repo.join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from(stale)],
        "our own lock was removed"
    );
}

#[test]
fn excludes_from_flag_and_environment() {
    let d = tmp();
    let (src, repo, out) = (join(&d, "src"), join(&d, "repo"), join(&d, "out"));
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("keep.txt"), "k").unwrap();
    fs::write(src.join("skip.tmp"), "s").unwrap();
    fs::write(src.join("cache/x"), "c").unwrap();
    let env = with(local_env(&repo), &[("STOWAGE_EXCLUDES", "*.tmp")]);
    run(&env, &["backup", path(&src), "--exclude", "cache"]).ok();
    run(&env, &["restore", path(&out)]).ok();
    assert!(out.join("keep.txt").exists());
    assert!(!out.join("skip.tmp").exists());
    assert!(!out.join("cache").exists());
}

#[test]
fn result_file_gets_the_json_line() {
    let d = tmp();
    let (src, repo, res) = (join(&d, "src"), join(&d, "repo"), join(&d, "result"));
    trees::many_small(&src, 5, 1);
    let env = with(local_env(&repo), &[("STOWAGE_RESULT_FILE", path(&res))]);
    let r = run(&env, &["backup", path(&src)]).ok().result();
    let written: stowage_mover::report::RunResult =
        serde_json::from_str(&fs::read_to_string(&res).unwrap()).unwrap();
    assert_eq!(written, r);
    let bad = with(env, &[("RESTIC_PASSWORD", "nope")]);
    run(&bad, &["backup", path(&src)]).failed(1, "password");
    let failed: stowage_mover::report::RunResult =
        serde_json::from_str(&fs::read_to_string(&res).unwrap()).unwrap();
    assert!(!failed.ok && failed.error.unwrap().contains("password"));
}

#[test]
fn help_is_there_for_every_command() {
    for cmd in [
        vec!["--help"],
        vec!["backup", "--help"],
        vec!["restore", "--help"],
        vec!["snapshots", "--help"],
        vec!["demo", "--help"],
    ] {
        let r = run(&[], &cmd).ok();
        assert!(r.stdout.contains("Usage:"), "{cmd:?}: {}", r.stdout);
    }
}

#[test]
fn cache_directory_is_used_when_configured() {
    let d = tmp();
    let (src, repo, cache) = (join(&d, "src"), join(&d, "repo"), join(&d, "cache"));
    trees::many_small(&src, 300, 1);
    let env = with(local_env(&repo), &[("STOWAGE_CACHE_DIR", path(&cache))]);
    run(&env, &["backup", path(&src)]).ok();
    trees::write_random(&src.join("new.bin"), 10_000, 5);
    let second = run(&env, &["backup", path(&src)]).ok().result();
    assert!(second.added_bytes >= 10_000);
    // rustic keeps index and snapshot files of the repository in the cache.
    let cached: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| p.contains("/index/"))
        .collect();
    assert!(
        !cached.is_empty(),
        "index files cached under {}",
        cache.display()
    );
    let out = join(&d, "out");
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}
