//! Scale measurement of the backup index (not an assertion on time): 1,000 repositories
//! of two snapshots each on Garage, indexed from scratch (every repository opened), then
//! again with nothing changed (one LIST per repository). Prints the time and the S3
//! request count of both.
//!
//! `PREWARM_SCALE_REPOS=1000 cargo test -p stowage-prewarm --test index_scale -- --ignored --nocapture`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use stowage_common::backend::Storage;
use stowage_common::env::PrewarmConfig;
use stowage_common::location::Location;
use stowage_prewarm::index::{self, Index};
use stowage_testkit::{bins, garage};

const PASSWORD: &str = "scale password";

#[test]
#[ignore = "scale measurement; run by hand (see the module doc)"]
fn index_over_many_repositories() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n: usize = std::env::var("PREWARM_SCALE_REPOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let g = garage::shared();
    let bucket = g.bucket("prewarm-scale");
    let vars: Vec<(String, String)> = g.env("x");
    // One template repository of two snapshots written by the real mover, copied object
    // by object to every `<ns>/<pvc>` (same key and password: creating 1,000 with the
    // mover takes long; the index reads each one as if it were its own).
    let template = format!("s3:{}/{bucket}/template/t", g.endpoint);
    let src = tempfile::tempdir().unwrap();
    for i in 0..2 {
        std::fs::write(src.path().join(format!("f{i}")), vec![i as u8; 4096]).unwrap();
        let out = std::process::Command::new(bins::path("stowage-mover"))
            .env_clear()
            .envs(vars.iter().cloned())
            .env("RESTIC_REPOSITORY", &template)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("STOWAGE_NAMESPACE", "t")
            .env("STOWAGE_PVC", "t")
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
    let cfg = PrewarmConfig::from_vars(&vars).unwrap();
    let loc = Location::parse(&template, None).unwrap();
    let Storage::S3(s3) = Storage::open(&loc, &cfg.restic, &cfg.common).unwrap() else {
        panic!("S3")
    };
    let mut objects = vec![(
        "config".to_string(),
        s3.get_key("template/t/config").unwrap().unwrap(),
    )];
    for dir in ["keys", "snapshots", "index", "data"] {
        for (k, _) in s3.list_keys(dir).unwrap() {
            let data = s3.get_key(&k).unwrap().unwrap();
            objects.push((k.trim_start_matches("template/t/").to_string(), data));
        }
    }
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    for (k, d) in &objects {
                        s3.put_key(&format!("backups/ns{}/pvc{i}/{k}", i % 20), d.clone())
                            .unwrap();
                    }
                }
            });
        }
    });
    println!(
        "setup: {n} repositories of {} objects in {:.1}s",
        objects.len(),
        t0.elapsed().as_secs_f64()
    );

    let base = format!("s3:{}/{bucket}/backups", g.endpoint);
    let keys = (g.access_key.as_str(), g.secret_key.as_str());
    let first = rt
        .block_on(index::build_with(
            &base,
            &|_| PASSWORD.to_string(),
            keys,
            &cfg,
            &Index::default(),
        ))
        .unwrap();
    assert_eq!(first.repositories.len(), n);
    let errors: Vec<_> = first
        .repositories
        .iter()
        .filter_map(|e| e.error.clone())
        .collect();
    assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(3)]);
    assert!(first.repositories.iter().all(|e| e.snapshots == 2));
    println!(
        "first index (every repository opened): {n} repositories in {:.1}s, {} S3 requests \
         ({:.1} per repository)",
        first.duration_secs,
        first.s3_requests,
        first.s3_requests as f64 / n as f64
    );
    let second = rt
        .block_on(index::build_with(
            &base,
            &|_| PASSWORD.to_string(),
            keys,
            &cfg,
            &first,
        ))
        .unwrap();
    assert_eq!(second.repositories.len(), n);
    println!(
        "next index (nothing changed): {n} repositories in {:.1}s, {} S3 requests ({:.2} per \
         repository); ConfigMap document {} bytes",
        second.duration_secs,
        second.s3_requests,
        second.s3_requests as f64 / n as f64,
        serde_json::to_string(&second).unwrap().len() + index::table(&second).len()
    );
}
