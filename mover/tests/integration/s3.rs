//! The mover against a real S3 server process (Garage on loopback), including the
//! failures a real network and a real server produce.

use crate::support;

use std::fs;
use std::time::Duration;

use stowage_testkit::garage;
use stowage_testkit::proxy::{Fault, FaultProxy};
use stowage_testkit::trees;
use support::*;

fn repo(hint: &str) -> String {
    format!("{}/ns/{hint}", garage::shared().bucket(hint))
}

#[test]
fn round_trip_over_s3() {
    let d = tmp();
    let (src, out) = (join(&d, "src"), join(&d, "out"));
    trees::zoo(&src);
    let env = s3_env(&repo("roundtrip"));
    let b = run(&env, &["backup", path(&src)]).ok().result();
    assert!(b.uploaded_bytes > 24 * 1024 * 1024, "{b:?}");
    let r = run(&env, &["restore", path(&out)]).ok().result();
    assert!(r.downloaded_bytes > 24 * 1024 * 1024, "{r:?}");
    assert_same_tree(&src, &out);
    let img = out.join("large/disk.img");
    assert!(
        trees::allocated(&img) < 8 * 1024 * 1024,
        "sparse file restored sparse"
    );
    restic(&env, &["check", "--read-data"], None).ok();
}

#[test]
fn incremental_uploads_are_measured_in_bytes_sent() {
    let d = tmp();
    let src = join(&d, "src");
    trees::many_small(&src, 2000, 5);
    trees::write_random(&src.join("big/a.bin"), 30 * 1024 * 1024, 6);
    let env = s3_env(&repo("incremental"));
    let first = run(&env, &["backup", path(&src)]).ok().result();
    assert!(first.uploaded_bytes >= first.bytes * 9 / 10, "{first:?}");
    let second = run(&env, &["backup", path(&src)]).ok().result();
    assert!(
        second.uploaded_bytes < 128 * 1024,
        "unchanged re-backup sent {} bytes",
        second.uploaded_bytes
    );
    let changed = trees::change_fraction(&src, 0.01, 77);
    let third = run(&env, &["backup", path(&src)]).ok().result();
    assert!(
        third.uploaded_bytes >= changed * 8 / 10,
        "changed {changed}, sent {}",
        third.uploaded_bytes
    );
    assert!(
        third.uploaded_bytes <= changed * 2 + 512 * 1024,
        "changed {changed}, sent {}",
        third.uploaded_bytes
    );
}

#[test]
fn large_packs_go_up_in_parts() {
    let d = tmp();
    let (src, out) = (join(&d, "src"), join(&d, "out"));
    trees::write_random(&src.join("big.bin"), 40 * 1024 * 1024, 8);
    let env = with(
        s3_env(&repo("multipart")),
        &[
            ("STOWAGE_S3_MULTIPART_THRESHOLD_MIB", "5"),
            ("STOWAGE_S3_PART_SIZE_MIB", "5"),
        ],
    );
    run(&env, &["backup", path(&src)]).ok();
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);
    restic(&env, &["check", "--read-data"], None).ok();
}

#[test]
fn wrong_credentials_are_named_and_nothing_is_written() {
    let d = tmp();
    let src = join(&d, "src");
    trees::many_small(&src, 5, 1);
    let bucket = garage::shared().bucket("creds");
    let env = with(
        s3_env(&format!("{bucket}/x")),
        &[(
            "AWS_SECRET_ACCESS_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        )],
    );
    let r = run(&env, &["backup", path(&src)]).failed(1, "rejected the credentials");
    assert!(!r.stderr.contains("0000000000000000"), "secret not echoed");
    let env = with(
        s3_env(&format!("{bucket}/x")),
        &[("AWS_ACCESS_KEY_ID", "GK000000000000000000000000")],
    );
    run(&env, &["backup", path(&src)]).failed(1, "AWS_ACCESS_KEY_ID");
    // Nothing was created: the repository still does not exist.
    let listed = run(&s3_env(&format!("{bucket}/x")), &["snapshots", "--json"]).ok();
    assert_eq!(listed.stdout.trim(), "[]");
}

#[test]
fn wrong_password_over_s3_is_named_and_writes_nothing() {
    let d = tmp();
    let src = join(&d, "src");
    trees::many_small(&src, 5, 1);
    let repo = repo("password");
    run(&s3_env(&repo), &["backup", path(&src)]).ok();
    let bad = with(s3_env(&repo), &[("RESTIC_PASSWORD", "not the password")]);
    run(&bad, &["backup", path(&src)]).failed(12, "password opens no key");
    run(&bad, &["restore", path(&join(&d, "out"))]).failed(12, "password opens no key");
    let snaps = restic(&s3_env(&repo), &["snapshots", "--json"], None).ok();
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&snaps.stdout)
            .unwrap()
            .len(),
        1
    );
    let locks = restic(&s3_env(&repo), &["list", "locks", "--no-lock"], None).ok();
    assert_eq!(locks.stdout.trim(), "", "no lock left behind");
}

#[test]
fn missing_bucket_is_named_and_not_created() {
    let d = tmp();
    let src = join(&d, "src");
    trees::many_small(&src, 5, 1);
    let env = s3_env("no-such-bucket-here/ns/pvc");
    run(&env, &["backup", path(&src)]).failed(1, "bucket no-such-bucket-here does not exist");
    run(&env, &["restore", path(&join(&d, "out"))]).failed(1, "does not exist");
    assert!(
        !garage::shared()
            .cli(&["bucket", "list"])
            .contains("no-such-bucket-here")
    );
}

#[test]
fn unreachable_endpoint_fails_clearly() {
    let d = tmp();
    let src = join(&d, "src");
    trees::many_small(&src, 5, 1);
    let port = stowage_testkit::free_port();
    let env = with(
        s3_env("b/x"),
        &[
            (
                "RESTIC_REPOSITORY",
                &format!("s3:http://127.0.0.1:{port}/b/x"),
            ),
            ("STOWAGE_S3_MAX_ATTEMPTS", "2"),
        ],
    );
    run(&env, &["backup", path(&src)]).failed(1, "cannot reach http://127.0.0.1");
    // A restore must not mistake an unreachable server for "no backup exists".
    let out = join(&d, "out");
    let r = run(&env, &["restore", path(&out)]).failed(1, "cannot reach");
    assert!(!r.stderr.contains("nothing to restore"));
}

#[test]
fn plain_http_needs_opt_in() {
    let d = tmp();
    let src = join(&d, "src");
    fs::create_dir_all(&src).unwrap();
    let mut env = s3_env(&repo("http"));
    env.retain(|(k, _)| k != "STOWAGE_ALLOW_HTTP");
    run(&env, &["backup", path(&src)]).failed(2, "STOWAGE_ALLOW_HTTP");
}

/// Throttling, 5xx, resets and cut responses on a share of requests: the backup and
/// restore complete through retries, and the repository checks clean.
#[test]
fn survives_injected_faults() {
    let proxy = FaultProxy::start(garage::shared().addr());
    let d = tmp();
    let src = join(&d, "src");
    trees::many_small(&src, 300, 9);
    trees::write_random(&src.join("big.bin"), 12 * 1024 * 1024, 10);
    let repo = repo("faults");
    let mut env = garage::shared().env_via(&proxy.endpoint, &repo);
    env.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    let env = with(env, &[("STOWAGE_S3_MAX_ATTEMPTS", "8")]);
    for (i, fault) in [
        Fault::SlowDown,
        Fault::InternalError,
        Fault::Reset,
        Fault::Truncate(100),
    ]
    .into_iter()
    .enumerate()
    {
        proxy.set(3, Some(fault));
        let before = proxy.faults();
        trees::write_random(
            &src.join(format!("new-{i}.bin")),
            2 * 1024 * 1024,
            20 + i as u64,
        );
        run(&env, &["backup", path(&src)]).ok();
        let out = join(&d, &format!("out-{i}"));
        run(&env, &["restore", path(&out)]).ok();
        assert_same_tree(&src, &out);
        assert!(proxy.faults() > before + 3, "{fault:?} was injected");
    }
    proxy.set(0, None);
    restic(&s3_env(&repo), &["check", "--read-data"], None).ok();
}

#[test]
fn slow_server_still_completes() {
    let proxy = FaultProxy::start(garage::shared().addr());
    proxy.set(2, Some(Fault::Delay(Duration::from_millis(300))));
    let d = tmp();
    let (src, out) = (join(&d, "src"), join(&d, "out"));
    trees::many_small(&src, 50, 4);
    let mut env = garage::shared().env_via(&proxy.endpoint, &repo("slow"));
    env.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    run(&env, &["backup", path(&src)]).ok();
    run(&env, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);
    assert!(proxy.faults() > 0);
}

/// Rate limiting: 2 MiB at 1024 KiB/s takes at least about a second. Measured on the
/// mover's own clock (its result), not asserted as a wall-clock bound of the test.
#[test]
fn upload_limit_is_honoured() {
    let d = tmp();
    let src = join(&d, "src");
    trees::write_random(&src.join("a.bin"), 3 * 1024 * 1024, 3);
    let env = with(s3_env(&repo("limit")), &[("STOWAGE_LIMIT_UPLOAD", "1024")]);
    let r = run(&env, &["backup", path(&src)]).ok().result();
    let expected = (r.uploaded_bytes as f64 / (1024.0 * 1024.0)) - 1.0; // one second of burst
    assert!(
        r.duration_secs >= expected * 0.9,
        "{} s for {} bytes",
        r.duration_secs,
        r.uploaded_bytes
    );
}

/// S3 over TLS with the operator's own CA. Without the CA the certificate is refused
/// with an error that names the fix, and nothing is written; with `STOWAGE_CA_BUNDLE`
/// (or `RESTIC_CACERT`, the name VolSync Secrets use) backup and restore work, and
/// restic reads the repository through the same TLS front.
#[test]
fn tls_with_a_custom_ca() {
    let g = garage::shared();
    let front = stowage_testkit::tls::TlsFront::start(g.addr());
    let repo_path = format!("{}/ns/tls", g.bucket("tls"));
    let mut env: Vec<_> = g
        .env_via(&front.endpoint, &repo_path)
        .into_iter()
        .filter(|(k, _)| k != "STOWAGE_ALLOW_HTTP")
        .collect();
    env.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    let d = tmp();
    let (src, out) = (join(&d, "src"), join(&d, "out"));
    trees::many_small(&src, 50, 3);
    trees::write_random(&src.join("big.bin"), 3 * 1024 * 1024, 4);

    let refused = run(&env, &["backup", path(&src)]);
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("TLS certificate") && refused.stderr.contains("STOWAGE_CA_BUNDLE"),
        "{}",
        refused.stderr
    );
    // Nothing was written: over plain http the repository is still absent.
    let listed = run(&s3_env(&repo_path), &["snapshots", "--json"]).ok();
    assert_eq!(listed.stdout.trim(), "[]", "{}", listed.stdout);

    let ca = front.ca_bundle().to_str().unwrap();
    let with_ca = with(env.clone(), &[("STOWAGE_CA_BUNDLE", ca)]);
    run(&with_ca, &["backup", path(&src)]).ok();
    run(&with_ca, &["restore", path(&out)]).ok();
    assert_same_tree(&src, &out);

    let volsync_style = with(env.clone(), &[("RESTIC_CACERT", ca)]);
    let snaps = run(&volsync_style, &["snapshots", "--json"]).ok();
    assert!(snaps.stdout.contains("\"id\""), "{}", snaps.stdout);
    // restic 0.14 takes the CA as a flag (RESTIC_CACERT came later).
    restic(&env, &["--cacert", ca, "check", "--read-data"], None).ok();
}

fn s3_access(env: &[(String, String)]) -> stowage_common::repo::RepoAccess {
    let cfg = stowage_common::env::MoverConfig::from_vars(env).unwrap();
    stowage_common::repo::RepoAccess::from_env(&cfg.restic, &cfg.common, None, None).unwrap()
}

/// Every object of the repository, by key.
fn objects(s3: &stowage_common::backend::S3Backend) -> Vec<(String, u64)> {
    let mut all = Vec::new();
    for dir in ["keys", "snapshots", "index", "data", "locks"] {
        all.extend(s3.list_keys(dir).unwrap());
    }
    all.sort();
    all
}

#[test]
fn a_repository_without_config_over_s3_is_damaged_and_never_written_over() {
    let d = tmp();
    let src = join(&d, "src");
    trees::many_small(&src, 10, 1);
    let env = s3_env(&repo("noconfig"));
    run(&env, &["backup", path(&src)]).ok();
    let access = s3_access(&env);
    let stowage_common::backend::Storage::S3(s3) = &access.storage else {
        panic!("S3")
    };
    let config = s3.settings().location.key("config");
    s3.delete_key(&config).unwrap();
    let before = objects(s3);

    let r = run(&env, &["backup", path(&src)]).failed(1, "no config object");
    assert_eq!(r.result().reason.as_deref(), Some("DamagedRepository"));
    assert!(r.result().error.unwrap().contains("keys/ (1 file)"));
    let r = run(&env, &["restore", path(&join(&d, "out"))]).failed(1, "no config object");
    assert_eq!(r.result().reason.as_deref(), Some("DamagedRepository"));
    run(&env, &["snapshots"]).failed(1, "no config object");
    assert_eq!(s3.get_key(&config).unwrap(), None, "no new repository");
    assert_eq!(objects(s3), before, "nothing written");
}

#[test]
fn a_damaged_snapshot_object_over_s3_blocks_nothing_else() {
    let d = tmp();
    let (src, out) = (join(&d, "src"), join(&d, "out"));
    trees::many_small(&src, 10, 1);
    let env = s3_env(&repo("badsnap"));
    let b = run(&env, &["backup", path(&src)]).ok().result();
    let access = s3_access(&env);
    let stowage_common::backend::Storage::S3(s3) = &access.storage else {
        panic!("S3")
    };
    let bad = "cd".repeat(32);
    s3.put_key(
        &s3.settings().location.key(&format!("snapshots/{bad}")),
        "garbage".into(),
    )
    .unwrap();
    let r = run(&env, &["restore", path(&out)]).ok();
    assert!(
        r.stderr.contains(&format!("snapshots/{bad}")),
        "{}",
        r.stderr
    );
    assert_eq!(r.result().snapshot, b.snapshot);
    assert_same_tree(&src, &out);
    run(&env, &["backup", path(&src)]).ok();
}
