//! The demo (README, first command) end to end, from a work directory under `/tmp`, as
//! every `mktemp -d` checkout has it: each volume comes back with its data. A kubelet
//! that took the local repository's host path for the mover's own `/tmp` made the
//! restores find no repository and bind the volumes empty.

use std::process::Command;

use stowage_testkit::bins;

#[test]
fn the_demo_brings_every_volume_back_from_a_work_dir_under_tmp() {
    // The demo finds the programs next to itself.
    for p in ["stowage-mover", "stowage-scheduler", "stowage-prewarm"] {
        bins::path(p);
    }
    let work = tempfile::Builder::new()
        .prefix("stowage-demo-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stowage-demo"))
        .arg("--work-dir")
        .arg(work.path())
        // Not under `cargo run`: no build of its own.
        .env_remove("CARGO")
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("under {}", work.path().display())),
        "the repositories are under the work dir\n{stdout}"
    );
    for volume in ["db/pg-data", "db/pg-wal", "media/library"] {
        let line = stdout
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with(&format!("{volume}: restored snapshot"))
            })
            .unwrap_or_else(|| panic!("{volume} not restored\n{stdout}"));
        assert!(line.ends_with("= before the rebuild ✓"), "{line}\n{stdout}");
    }
    assert!(
        stdout.contains("Every volume came back identical"),
        "{stdout}"
    );
    // The backups after the restore continue the history.
    let after: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("6. Backups continue"))
        .skip(1)
        .take(3)
        .collect();
    assert!(
        after.iter().all(|l| l.contains("Succeeded")),
        "{after:?}\n{stdout}"
    );
}
