//! The mover against damaged local repositories, restores that must not end empty,
//! and replaces that must leave the snapshot's content.

use crate::support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use stowage_testkit::trees;
use support::*;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The largest pack: the one holding file content (trees are small).
fn largest_pack(repo: &Path) -> PathBuf {
    files_under(&repo.join("data"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("a pack")
}

fn assert_one_line_without_dump(error: &str) {
    assert!(!error.contains('\n'), "one line: {error}");
    for dump in ["RusticError {", "backtrace", "panicked", "Os {"] {
        assert!(!error.contains(dump), "{dump:?} in {error}");
    }
}

#[test]
fn restore_of_a_particular_snapshot_without_repository_fails_with_exit_10() {
    let d = tmp();
    let (none, out) = (join(&d, "none"), join(&d, "out"));
    let env = local_env(&none);
    for args in [
        vec!["restore", path(&out), "--snapshot", "deadbeef"],
        vec!["restore", path(&out), "--as-of", "2d"],
    ] {
        let r = run(&env, &args).failed(10, "no repository at");
        let res = r.result();
        assert!(!res.ok);
        assert_eq!(res.reason.as_deref(), Some("NoRepository"), "{args:?}");
        assert_eq!(
            res.repository.as_deref(),
            Some(format!("local:{}", none.display()).as_str())
        );
        assert_eq!(res.restored, None);
    }
    assert!(!none.exists(), "no repository is created by a restore");
    // The open "latest, if any" restore of a fresh install ends empty, and says where
    // it looked.
    let res = run(&env, &["restore", path(&out)]).ok().result();
    assert_eq!(res.restored, Some(false));
    assert_eq!(
        res.repository.as_deref(),
        Some(format!("local:{}", none.display()).as_str())
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn restore_of_a_snapshot_that_is_not_there_fails_with_no_snapshot() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    let env = local_env(&repo);
    // A repository without any snapshot.
    restic(&env, &["init"], None).ok();
    let res = run(&env, &["restore", path(&join(&d, "a"))]).ok().result();
    assert_eq!(res.restored, Some(false), "open latest: nothing to restore");
    let r = run(
        &env,
        &["restore", path(&join(&d, "b")), "--as-of", "2026-01-01"],
    )
    .failed(1, "holds no snapshot");
    assert_eq!(r.result().reason.as_deref(), Some("NoSnapshot"));

    trees::many_small(&src, 5, 1);
    let backup = run(&env, &["backup", path(&src)]).ok().result();
    let r = run(
        &env,
        &["restore", path(&join(&d, "c")), "--snapshot", "deadbeef"],
    )
    .failed(1, "no snapshot deadbeef");
    assert_eq!(r.result().reason.as_deref(), Some("NoSnapshot"));
    assert!(r.result().repository.is_some());
    let r = run(
        &env,
        &["restore", path(&join(&d, "e")), "--as-of", "2001-01-01"],
    )
    .failed(1, "no snapshot at or before");
    assert_eq!(r.result().reason.as_deref(), Some("NoSnapshot"));

    // A success names the full snapshot id and the repository.
    let id = backup.snapshot.unwrap();
    let res = run(
        &env,
        &["restore", path(&join(&d, "f")), "--snapshot", &id[..8]],
    )
    .ok()
    .result();
    assert_eq!(res.restored, Some(true));
    assert_eq!(res.snapshot.as_deref(), Some(id.as_str()));
    assert_eq!(
        res.repository.as_deref(),
        Some(format!("local:{}", repo.display()).as_str())
    );
}

#[test]
fn a_repository_without_config_is_damaged_and_never_written_over() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    trees::many_small(&src, 10, 1);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    fs::remove_file(repo.join("config")).unwrap();
    let before = files_under(&repo);

    let r = run(&env, &["backup", path(&src)]).failed(1, "no config object");
    let res = r.result();
    assert_eq!(res.reason.as_deref(), Some("DamagedRepository"));
    let error = res.error.unwrap();
    for needle in ["keys/ (1 file)", "snapshots/ (1 file)", "data/", "index/"] {
        assert!(error.contains(needle), "{needle}: {error}");
    }
    assert!(
        !repo.join("config").exists(),
        "no new repository over the old"
    );
    assert_eq!(files_under(&repo), before, "nothing written");

    let r = run(&env, &["restore", path(&join(&d, "out"))]).failed(1, "no config object");
    assert_eq!(r.result().reason.as_deref(), Some("DamagedRepository"));
    assert_eq!(fs::read_dir(join(&d, "out")).unwrap().count(), 0);
    run(&env, &["snapshots"]).failed(1, "no config object");
    assert_eq!(files_under(&repo), before, "nothing written");

    // A location that holds nothing is still a fresh install.
    run(&local_env(&join(&d, "fresh")), &["backup", path(&src)]).ok();
}

#[test]
fn replace_rewrites_content_that_differs_with_the_same_size_and_time() {
    let d = tmp();
    let (src, repo, out) = (join(&d, "src"), join(&d, "repo"), join(&d, "out"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small"), "original content").unwrap();
    trees::write_random(&src.join("big.bin"), 3 * 1024 * 1024, 7);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    run(&env, &["restore", path(&out)]).ok();
    // Bit rot (or a `cp -p` of other content): same size, same mtime.
    for (name, offset) in [("small", 3u64), ("big.bin", 2 * 1024 * 1024)] {
        let p = out.join(name);
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"XYZ", offset).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let res = run(&env, &["restore", path(&out), "--replace"])
        .ok()
        .result();
    assert_same_tree(&src, &out);
    assert_eq!(res.files, 2, "both damaged files were rewritten: {res:?}");
    // An unchanged target costs nothing to write.
    let again = run(&env, &["restore", path(&out), "--replace"])
        .ok()
        .result();
    assert_eq!(again.files, 0, "{again:?}");
}

#[test]
fn replace_keeps_lost_and_found() {
    let d = tmp();
    let (src, repo, out) = (join(&d, "src"), join(&d, "repo"), join(&d, "out"));
    trees::many_small(&src, 5, 1);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    fs::create_dir_all(out.join("lost+found")).unwrap();
    fs::write(out.join("lost+found/#1234"), "recovered by fsck").unwrap();
    fs::write(out.join("extra"), "not in the snapshot").unwrap();
    run(&env, &["restore", path(&out), "--replace"]).ok();
    assert_eq!(
        fs::read_to_string(out.join("lost+found/#1234")).unwrap(),
        "recovered by fsck"
    );
    assert!(!out.join("extra").exists(), "extra files are still deleted");
    assert_same_tree(&src, &out);
}

#[test]
fn a_damaged_snapshot_file_is_skipped_and_named() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    let env = local_env(&repo);
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("v"), "one").unwrap();
    let first = run(&env, &["backup", path(&src)]).ok().result();
    fs::write(src.join("v"), "two").unwrap();
    run(&env, &["backup", path(&src)]).ok();
    let bad = "ab".repeat(32);
    fs::write(repo.join("snapshots").join(&bad), "garbage, not a snapshot").unwrap();

    // Restores of the others work, and the damaged file is named.
    let out = join(&d, "latest");
    let r = run(&env, &["restore", path(&out)]).ok();
    assert!(
        r.stderr.contains(&format!("snapshots/{bad}")),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read_to_string(out.join("v")).unwrap(), "two");
    let id = first.snapshot.unwrap();
    let out = join(&d, "first");
    run(&env, &["restore", path(&out), "--snapshot", &id]).ok();
    assert_eq!(fs::read_to_string(out.join("v")).unwrap(), "one");
    // Asking for the damaged one says so.
    let r = run(
        &env,
        &["restore", path(&join(&d, "bad")), "--snapshot", &bad[..8]],
    )
    .failed(1, "is damaged");
    assert_eq!(r.result().reason.as_deref(), Some("DamagedRepository"));

    // Listings show it; backups go on.
    let table = run(&env, &["snapshots"]).ok();
    assert!(
        table.stdout.contains(&format!("DAMAGED: snapshots/{bad}")),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains("2 snapshot(s), 1 damaged snapshot file skipped"),
        "{}",
        table.stdout
    );
    let json = run(&env, &["snapshots", "--json"]).ok();
    let snaps: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(snaps.len(), 2);
    assert!(
        json.stderr.contains(&format!("snapshots/{bad}")),
        "{}",
        json.stderr
    );
    let r = run(&env, &["backup", path(&src)]).ok();
    assert!(
        r.stderr.contains(&format!("snapshots/{bad}")),
        "{}",
        r.stderr
    );
}

#[test]
fn a_damaged_pack_fails_the_restore_in_one_line_that_names_it() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    fs::create_dir_all(&src).unwrap();
    trees::write_random(&src.join("big.bin"), 6 * 1024 * 1024, 3);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    let pack = largest_pack(&repo);
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();
    let original = fs::read(&pack).unwrap();

    // Garbled in the middle.
    let mut garbled = original.clone();
    let mid = garbled.len() / 2;
    for b in &mut garbled[mid..mid + 64] {
        *b ^= 0xff;
    }
    fs::write(&pack, &garbled).unwrap();
    let out = join(&d, "garbled");
    let r = run(&env, &["restore", path(&out)]).failed(1, "is damaged");
    let res = r.result();
    assert_eq!(res.reason.as_deref(), Some("DamagedRepository"));
    assert!(res.snapshot.is_some(), "the failure names the snapshot");
    let error = res.error.unwrap();
    assert_one_line_without_dump(&error);
    for needle in [&pack_id[..], "big.bin", "restic check", "incomplete"] {
        assert!(error.contains(needle), "{needle}: {error}");
    }

    // Truncated, then missing.
    fs::write(&pack, &original[..original.len() / 3]).unwrap();
    let r = run(&env, &["restore", path(&join(&d, "short"))]).failed(1, &pack_id);
    let error = r.result().error.unwrap();
    assert_one_line_without_dump(&error);
    assert!(error.contains("incomplete"), "{error}");
    fs::remove_file(&pack).unwrap();
    let r = run(&env, &["restore", path(&join(&d, "gone"))]).failed(1, &pack_id);
    assert_eq!(r.result().reason.as_deref(), Some("DamagedRepository"));
    assert_one_line_without_dump(&r.result().error.unwrap());
}

/// A restore into a full filesystem (a 1 MiB tmpfs in a private mount namespace).
#[test]
fn a_full_disk_fails_the_restore_in_one_line_that_says_the_target_is_incomplete() {
    let d = tmp();
    let (src, repo, out) = (join(&d, "src"), join(&d, "repo"), join(&d, "out"));
    fs::create_dir_all(&src).unwrap();
    trees::write_random(&src.join("big.bin"), 4 * 1024 * 1024, 5);
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    fs::create_dir_all(&out).unwrap();
    let probe = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(format!("mount -t tmpfs -o size=1m tmpfs {}", path(&out)))
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot mount a tmpfs here (unshare -rm): {probe:?}");
        return;
    }
    let mut c = mover();
    c.envs(env.iter().map(|(k, v)| (k, v)));
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {} && exec {} restore {}",
        path(&out),
        env!("CARGO_BIN_EXE_stowage-mover"),
        path(&out)
    );
    // `mover()` runs the binary itself; here the shell does, inside the namespace.
    let mut cmd = std::process::Command::new("unshare");
    cmd.env_clear()
        .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(["-rm", "sh", "-c", &script]);
    let r: Run = cmd.output().unwrap().into();
    let r = r.failed(1, "No space left on device");
    let error = r.result().error.unwrap();
    assert_one_line_without_dump(&error);
    assert!(error.contains("big.bin"), "{error}");
    assert!(error.contains("incomplete"), "{error}");
}
