//! The backup index against Garage: a run that has used its pass budget keeps the
//! repositories it did not read as pending entries and the next run reads them; an
//! index over unchanged repositories opens none.

use std::time::Duration;

use stowage_common::env::PrewarmConfig;
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_prewarm::index::{self, Index};
use stowage_testkit::proxy::{Fault, FaultProxy};
use stowage_testkit::{bins, garage};

const MASTER: &str = "index master password";

#[test]
fn an_index_past_its_budget_is_finished_by_the_next_run() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let g = garage::shared();
    let bucket = g.bucket("prewarm-index");
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), "data").unwrap();
    for pvc in ["a", "b", "c"] {
        let url = format!("s3:{}/{bucket}/backups/ns/{pvc}", g.endpoint);
        let out = std::process::Command::new(bins::path("stowage-mover"))
            .env_clear()
            .envs(g.env("x"))
            .env("RESTIC_REPOSITORY", &url)
            .env("RESTIC_PASSWORD", derive_repository_password(MASTER, &url))
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
    // Through a proxy that delays every request: discovery alone (five requests one
    // after the other) outlasts a one-second budget.
    let proxy = FaultProxy::start(g.addr());
    proxy.set(1, Some(Fault::Delay(Duration::from_millis(400))));
    let mut vars = g.env_via(&proxy.endpoint, "x");
    vars.push(("STOWAGE_PASS_BUDGET_SECS".into(), "1".into()));
    let cfg = PrewarmConfig::from_vars(&vars).unwrap();
    let base = format!("s3:{}/{bucket}/backups", proxy.endpoint);
    let keys = (g.access_key.as_str(), g.secret_key.as_str());

    let first = rt
        .block_on(index::build(&base, MASTER, keys, &cfg, &Index::default()))
        .unwrap();
    assert_eq!(first.repositories.len(), 3);
    assert!(!first.complete);
    assert_eq!(first.pending(), 3, "{first:#?}");
    assert!(first.repositories.iter().all(|e| e.error.is_none()));

    // The next run (no delay, the usual budget) reads them.
    proxy.set(0, None);
    let cfg = PrewarmConfig::from_vars(&g.env_via(&proxy.endpoint, "x")).unwrap();
    let second = rt
        .block_on(index::build(&base, MASTER, keys, &cfg, &first))
        .unwrap();
    assert!(second.complete, "{second:#?}");
    for e in &second.repositories {
        assert!(!e.pending && e.error.is_none(), "{e:?}");
        assert_eq!(e.snapshots, 1, "{e:?}");
        assert!(e.latest.is_some() && e.read_at.is_some(), "{e:?}");
    }

    // Nothing changed: none opened (discovery and one LIST per repository).
    let before = proxy.requests();
    let third = rt
        .block_on(index::build(&base, MASTER, keys, &cfg, &second))
        .unwrap();
    assert!(third.complete);
    assert_eq!(third.repositories, second.repositories);
    assert_eq!(third.s3_requests, proxy.requests() - before);
    assert!(third.s3_requests <= 5 + 3, "{}", third.s3_requests);
}
