//! The mover against a local repository: round trips, incremental behaviour, guards
//! and bad input.

use crate::support;

use std::fs;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

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

/// Excludes that leave no file over a non-empty history are refused like an empty
/// directory: the guard judges what would be stored (`--exclude '*'` used to store an
/// empty snapshot as the newest).
#[test]
fn excludes_that_leave_no_file_over_history_are_refused_unless_allowed() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    trees::many_small(&src, 10, 1);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    for excludes in [vec!["--exclude", "*"], vec!["--exclude", "f*"]] {
        let mut args = vec!["backup", path(&src)];
        args.extend(&excludes);
        let r = run(&env, &args).failed(1, "after the excludes");
        assert_eq!(
            r.result().reason.as_deref(),
            Some("EmptySource"),
            "{excludes:?}"
        );
        assert!(r.stderr.contains("--allow-empty"), "{}", r.stderr);
    }
    let r = run(
        &with(env.clone(), &[("STOWAGE_EXCLUDES", "*")]),
        &["backup", path(&src)],
    )
    .failed(1, "after the excludes");
    assert_eq!(r.result().reason.as_deref(), Some("EmptySource"));
    let listed = run(&env, &["snapshots", "--json"]).ok();
    let snaps: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(snaps.len(), 1, "no snapshot was added");
    // Excludes that leave files are fine, and --allow-empty still allows.
    run(&env, &["backup", path(&src), "--exclude", "*.tmp"]).ok();
    run(
        &env,
        &["backup", path(&src), "--exclude", "*", "--allow-empty"],
    )
    .ok();
}

/// Entries the mover cannot read (a file it may not open, a directory it may not
/// list) make a partial backup: the snapshot of the rest is stored, but the run is not
/// a success: exit 3, `ok: false`, reason `Partial`, the count and the paths. As root
/// (which reads everything) the mover runs as `nobody` for this.
#[test]
fn unreadable_entries_make_a_partial_backup_with_exit_3() {
    let d = tmp();
    let (src, repo, out, res) = (
        join(&d, "src"),
        join(&d, "repo"),
        join(&d, "out"),
        join(&d, "result"),
    );
    trees::many_small(&src, 10, 1);
    fs::write(src.join("secret.db"), "no entry").unwrap();
    fs::create_dir_all(src.join("private")).unwrap();
    fs::write(src.join("private/inside"), "hidden").unwrap();
    let as_root = trees::can_chown();
    const NOBODY: u32 = 65534;
    if as_root {
        // `nobody` reaches the tree, writes the repository and the result file.
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for dir in [&repo, &out] {
            fs::create_dir_all(dir).unwrap();
            std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        fs::write(&res, "").unwrap();
        std::os::unix::fs::chown(&res, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    fs::set_permissions(src.join("secret.db"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o000)).unwrap();
    let env = with(local_env(&repo), &[("STOWAGE_RESULT_FILE", path(&res))]);
    let mut c = mover();
    if as_root {
        // `nobody` may not reach the build's directory (a checkout under a 0700
        // directory, as `mktemp -d` makes): it runs a copy of the mover from the
        // test's own directory.
        // A hard link writes no file (a copy being written while another test forks
        // could fail to start with ETXTBSY); a copy where the link cannot be made.
        let exe = d.path().join("stowage-mover");
        if fs::hard_link(env!("CARGO_BIN_EXE_stowage-mover"), &exe).is_err() {
            fs::copy(env!("CARGO_BIN_EXE_stowage-mover"), &exe).unwrap();
            fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut own = std::process::Command::new(&exe);
        own.env_clear()
            .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))));
        c = own;
    }
    c.envs(env.iter().map(|(k, v)| (k, v)))
        .args(["backup", path(&src)]);
    if as_root {
        c.uid(NOBODY).gid(NOBODY);
    }
    let r: Run = loop {
        match c.output() {
            // The copy's write fd, inherited by a process another test started at that
            // moment, is closed as soon as that process execs.
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => break r.unwrap().into(),
        }
    };
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o755)).unwrap();
    let r = r.failed(3, "could not be read");
    let result = r.result();
    assert!(!result.ok, "{result:?}");
    assert_eq!(result.reason.as_deref(), Some("Partial"));
    assert_eq!(result.skipped, 2, "{result:?}");
    let mut paths = result.skipped_paths.clone();
    paths.sort();
    assert_eq!(paths, vec!["private".to_string(), "secret.db".to_string()]);
    assert!(result.error.as_deref().unwrap().contains("secret.db"));
    let written: stowage_mover::report::RunResult =
        serde_json::from_str(&fs::read_to_string(&res).unwrap()).unwrap();
    assert_eq!(written, result, "the result file says the same");
    // The snapshot of what could be read is there and restores.
    let id = result.snapshot.expect("the snapshot of the rest is stored");
    run(&env, &["restore", path(&out), "--snapshot", &id]).ok();
    assert!(out.join("d0000").is_dir());
    assert!(!out.join("secret.db").exists());
    assert!(!out.join("private/inside").exists());
}

/// A rate limit of 0 is no limit, as in restic (it meant 1 byte/s: the mover hung
/// without a word).
#[test]
fn rate_limits_of_zero_are_no_limit() {
    let d = tmp();
    let (src, repo, out) = (join(&d, "src"), join(&d, "repo"), join(&d, "out"));
    trees::many_small(&src, 20, 1);
    trees::write_random(&src.join("big.bin"), 2 << 20, 2);
    let env = with(
        local_env(&repo),
        &[
            ("STOWAGE_LIMIT_UPLOAD", "0"),
            ("STOWAGE_LIMIT_DOWNLOAD", "0"),
        ],
    );
    for args in [vec!["backup", path(&src)], vec!["restore", path(&out)]] {
        let mut child = mover()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait().unwrap()));
        // At 1 byte/s the first repository file alone takes minutes.
        let status = rx.recv_timeout(Duration::from_secs(60)).ok();
        if status.is_none() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        assert!(
            status.is_some_and(|s| s.success()),
            "{args:?} with limits of 0: {status:?} (none: still running after 60 s)"
        );
    }
    assert_same_tree(&src, &out);
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
    let r = run(&bad, &["backup", path(&src)]).failed(12, "password opens no key");
    assert!(
        !r.stderr.contains("wrong"),
        "the password is not echoed: {}",
        r.stderr
    );
    run(&bad, &["restore", path(&join(&d, "out"))]).failed(12, "password opens no key");
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

/// An environment the mover cannot use still gets a result (reason `Config`) in the
/// result file, where the scheduler reads why the Job failed.
#[test]
fn environment_errors_write_the_result_with_reason_config() {
    let d = tmp();
    let (src, res) = (join(&d, "src"), join(&d, "result"));
    fs::create_dir_all(&src).unwrap();
    let env = with(
        local_env(&join(&d, "r")),
        &[
            ("STOWAGE_S3_CONCURRENCY", "many"),
            ("STOWAGE_RESULT_FILE", path(&res)),
        ],
    );
    let r = run(&env, &["backup", path(&src)]).failed(2, "STOWAGE_S3_CONCURRENCY");
    let written: stowage_mover::report::RunResult =
        serde_json::from_str(&fs::read_to_string(&res).unwrap()).unwrap();
    assert_eq!(written, r.result());
    assert!(!written.ok);
    assert_eq!(written.reason.as_deref(), Some("Config"));
    assert!(written.error.unwrap().contains("STOWAGE_S3_CONCURRENCY"));
}

/// A repository URL with `user:password@` is refused (it was accepted and logged at
/// INFO); the password appears nowhere: not in the log, the result line or file.
#[test]
fn credentials_in_the_repository_url_are_refused_and_never_shown() {
    let d = tmp();
    let (src, res) = (join(&d, "src"), join(&d, "result"));
    trees::many_small(&src, 3, 1);
    let secret = "hunter2-in-the-url";
    let env = with(
        local_env(&join(&d, "r")),
        &[
            (
                "RESTIC_REPOSITORY",
                &format!("s3:https://AKIDEXAMPLE:{secret}@s3.lan/bucket/ns/pvc"),
            ),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("STOWAGE_RESULT_FILE", path(&res)),
            ("STOWAGE_LOG", "debug"),
        ],
    );
    for cmd in ["backup", "restore"] {
        let r = run(&env, &[cmd, path(&src)]).failed(2, "credentials in the URL are refused");
        assert!(
            r.stderr.contains("s3:https://***@s3.lan/bucket/ns/pvc"),
            "{}",
            r.stderr
        );
        let file = fs::read_to_string(&res).unwrap();
        assert!(file.contains("\"reason\":\"Config\""), "{file}");
        for (what, text) in [
            ("stderr", &r.stderr),
            ("stdout", &r.stdout),
            ("result file", &file),
        ] {
            assert!(
                !text.contains(secret),
                "{cmd}: the password is in {what}: {text}"
            );
        }
    }
}

/// An invalid `STOWAGE_LOG` is a configuration error naming the variable and the value
/// (it silently fell back to `info`).
#[test]
fn invalid_log_filter_is_a_configuration_error() {
    let d = tmp();
    let env = with(
        local_env(&join(&d, "r")),
        &[("STOWAGE_LOG", "info,stowage=loud")],
    );
    let r = run(&env, &["snapshots"]).failed(2, "STOWAGE_LOG");
    assert!(r.stderr.contains("info,stowage=loud"), "{}", r.stderr);
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
fn fresh_exclusive_lock_blocks_with_exit_11_and_stale_one_does_not() {
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
    let r = run(&env, &["backup", path(&src)]).failed(11, "exclusive lock");
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
    run(&bad, &["backup", path(&src)]).failed(12, "password");
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
        for status in [
            "3    partial backup",
            "10   no repository",
            "11   repository locked",
            "12   wrong password",
            "143 stopped by SIGTERM",
        ] {
            assert!(
                r.stdout.contains(status),
                "{cmd:?} lacks {status:?}: {}",
                r.stdout
            );
        }
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
