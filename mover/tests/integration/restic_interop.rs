//! Interoperability with Debian's `restic`, both ways, on local and S3 repositories.

use crate::support;

use std::fs;

use stowage_testkit::{garage, trees};
use support::*;

/// Trees restic 0.14 round-trips exactly (it restores no sparse holes, so the zoo's
/// sparse image is compared by content only).
fn sample(root: &std::path::Path) {
    trees::zoo(root);
}

fn ours_then_restic(env: Vec<(String, String)>) {
    let d = tmp();
    let (src, out) = (join(&d, "src"), join(&d, "out"));
    sample(&src);
    run(&env, &["backup", path(&src)]).ok();
    restic(&env, &["check", "--read-data"], None).ok();
    let snaps = restic(&env, &["snapshots", "--json"], None).ok();
    let v: serde_json::Value = serde_json::from_str(&snaps.stdout).unwrap();
    assert_eq!(v[0]["hostname"], "volsync");
    assert_eq!(v[0]["paths"], serde_json::json!(["/data"]));
    // VolSync restores with `restic restore <id> -t .` in the volume.
    fs::create_dir_all(&out).unwrap();
    restic(
        &env,
        &["restore", "latest", "--host", "volsync", "-t", "."],
        Some(&out),
    )
    .ok();
    assert_same_tree(&src, &out);
}

fn restic_then_ours(env: Vec<(String, String)>) {
    let d = tmp();
    let (src, out) = (join(&d, "src"), join(&d, "out"));
    sample(&src);
    restic(&env, &["init"], None).ok();
    // What VolSync's mover runs, in the volume's directory.
    restic(
        &env,
        &[
            "backup",
            "--host",
            "volsync",
            "--exclude",
            "lost+found",
            ".",
        ],
        Some(&src),
    )
    .ok();
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);
    // And we continue the repository: our backup lands beside restic's, restic checks it.
    fs::write(src.join("added-later"), "new").unwrap();
    run(&env, &["backup", path(&src)]).ok();
    let snaps = restic(&env, &["snapshots", "--json"], None).ok();
    let v: serde_json::Value = serde_json::from_str(&snaps.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    restic(&env, &["check", "--read-data"], None).ok();
    let out2 = join(&d, "out2");
    run(&env, &["restore", path(&out2)]).ok();
    assert_same_tree(&src, &out2);
}

/// `restic backup /abs/path` nests the content under the path; restoring that
/// snapshot still puts the content at the target's root.
#[test]
fn restic_absolute_path_snapshot_restores_at_target_root() {
    let d = tmp();
    let (src, out, repo) = (join(&d, "src"), join(&d, "out"), join(&d, "repo"));
    trees::many_small(&src, 20, 1);
    let env = local_env(&repo);
    restic(&env, &["init"], None).ok();
    restic(&env, &["backup", "--host", "volsync", path(&src)], None).ok();
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn restic_reads_ours_local() {
    let d = tmp();
    ours_then_restic(local_env(&join(&d, "repo")));
}

#[test]
fn ours_reads_restic_local() {
    let d = tmp();
    restic_then_ours(local_env(&join(&d, "repo")));
}

#[test]
fn restic_reads_ours_s3() {
    let b = garage::shared().bucket("interop1");
    ours_then_restic(s3_env(&format!("{b}/db/pg")));
}

#[test]
fn ours_reads_restic_s3() {
    let b = garage::shared().bucket("interop2");
    restic_then_ours(s3_env(&format!("{b}/db/pg")));
}

/// restic's `data_added` for one `restic backup --json` run.
fn restic_added(env: &[(String, String)], src: &std::path::Path) -> u64 {
    let out = restic(
        env,
        &["backup", "--json", "--host", "volsync", "."],
        Some(src),
    )
    .ok();
    let summary = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .unwrap_or_else(|| panic!("no summary from restic:\n{}", out.stdout));
    summary["data_added"].as_u64().unwrap()
}

/// Our chunks are restic's chunks (stowage carries its own, faster chunker loop in
/// its rustic_core patch): after our backup, restic backing up the same files stores
/// no new file data, and the other way round. Any difference in a chunk boundary
/// would make the other tool store the file again.
#[test]
fn restic_and_ours_cut_the_same_chunks() {
    let d = tmp();
    let (src, repo) = (join(&d, "src"), join(&d, "repo"));
    // Large files are cut into many chunks (1 MiB on average, 512 KiB to 8 MiB); one
    // of only zeros cuts at the minimum size, a run of 0xff at the maximum.
    trees::write_random(&src.join("a.bin"), 40 * 1024 * 1024 + 17, 1);
    trees::write_random(&src.join("b/c.bin"), 3 * 1024 * 1024 + 5, 2);
    fs::write(src.join("zeros"), vec![0u8; 5 * 1024 * 1024]).unwrap();
    fs::write(src.join("ones"), vec![0xffu8; 20 * 1024 * 1024]).unwrap();
    let env = local_env(&repo);
    run(&env, &["backup", path(&src)]).ok();
    let added = restic_added(&env, &src);
    // Only restic's own tree blobs are new (a few hundred bytes).
    assert!(
        added < 16 * 1024,
        "restic stored {added} bytes of ours again"
    );

    // The other way: files restic chunked first, backed up by us.
    let src2 = join(&d, "src2");
    trees::write_random(&src2.join("d.bin"), 30 * 1024 * 1024 + 3, 3);
    restic_added(&env, &src2);
    let ours = run(&env, &["backup", path(&src2)]).ok().result();
    assert!(
        ours.added_bytes < 16 * 1024,
        "we stored {} bytes of restic's again",
        ours.added_bytes
    );
}
