//! Looking up the snapshots of a source repository: one damaged snapshot file must not
//! block a zero-touch restore from the others (restic skips such files too).

use stowage_common::env::PrewarmConfig;
use stowage_prewarm::source::{self, RepoCreds};
use stowage_testkit::bins;

#[test]
fn a_damaged_snapshot_file_does_not_hide_the_others() {
    let repo = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let url = format!("local:{}", repo.path().display());
    for content in ["one", "two"] {
        std::fs::write(src.path().join("f"), content).unwrap();
        let out = std::process::Command::new(bins::path("stowage-mover"))
            .env_clear()
            .env("RESTIC_REPOSITORY", &url)
            .env("RESTIC_PASSWORD", "pw")
            .arg("backup")
            .arg(src.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut files: Vec<_> = std::fs::read_dir(repo.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    std::fs::write(&files[0], b"garbage, not an encrypted snapshot").unwrap();

    let cfg = PrewarmConfig::from_vars(&[]).unwrap();
    let creds = RepoCreds {
        password: "pw".into(),
        access_key_id: String::new(),
        secret_access_key: String::new(),
        region: None,
    };
    let access = source::access(&url, &creds, &cfg.restic, &cfg.common).unwrap();
    let snaps = source::snapshots(&access)
        .expect("one damaged file must not fail the lookup")
        .expect("the repository exists");
    assert_eq!(
        snaps.len(),
        1,
        "{:?}",
        snaps.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
    let damaged = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert_ne!(
        snaps[0].id, damaged,
        "the readable snapshot is the one listed"
    );
}
