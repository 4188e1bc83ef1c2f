//! Scale measurement (not an assertion on time): discovery and a full first pass
//! (forget, prune, structure check: everything due) over many repositories of a few
//! snapshots each on Garage. Prints the time and the S3 request count.
//!
//! `GC_SCALE_REPOS=1000 cargo test -p stowage-gc --release --test scale -- --ignored --nocapture`

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use jiff::SignedDuration;
use stowage_common::backend::Storage;
use stowage_common::discover;
use stowage_common::env::GcConfig;
use stowage_common::location::{Location, S3Location};
use stowage_common::s3::S3Settings;
use stowage_gc::maintain::{self, Work};
use stowage_gc::pass::{self, RepoCreds};
use stowage_gc::plan::LocksContext;
use stowage_gc::retention::Rules;
use stowage_testkit::garage;
use support::*;

#[test]
#[ignore = "scale measurement; run by hand (see the module doc)"]
fn pass_over_many_repositories() {
    let n: usize = std::env::var("GC_SCALE_REPOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let g = garage::shared();
    let bucket = g.bucket("gc-scale");
    // One template repository of three snapshots, copied object by object to every
    // `<ns>/<pvc>` (same key, same password: creating 1,000 with restic takes long).
    let template = env(&format!("{bucket}/template/t"));
    repo_with_snapshots(
        &template,
        &[
            "2026-01-01 00:00:00",
            "2026-03-01 00:00:00",
            "2026-03-15 00:00:00",
        ],
        1,
        1,
    );
    let tmpl = access(&template);
    let Storage::S3(s3) = &tmpl.storage else {
        panic!()
    };
    let mut objects: Vec<(String, bytes::Bytes)> = vec![(
        "config".into(),
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

    let cfg = GcConfig::from_vars(&g.env("x")).unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let settings = S3Settings::from_env(
        S3Location {
            endpoint: Some(g.endpoint.clone()),
            bucket: bucket.clone(),
            prefix: "backups".into(),
        },
        &cfg.restic,
        &cfg.common,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let found = rt
        .block_on(discover::repositories(&settings, &requests))
        .unwrap();
    drop(rt);
    let discovery = started.elapsed();
    let discovery_requests = requests.load(Ordering::Relaxed);
    assert_eq!(found.len(), n);

    let creds = RepoCreds {
        password: PASSWORD.into(),
        access_key_id: Some(g.access_key.clone()),
        secret_access_key: Some(g.secret_key.clone()),
        region: Some(garage::REGION.into()),
    };
    let next = AtomicUsize::new(0);
    let (forgotten, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..pass::REPO_CONCURRENCY {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(f) = found.get(i) else { break };
                    let url = Location::S3(f.location.clone()).to_string();
                    let access = pass::access_for(&url, &creds, &cfg).unwrap();
                    let work = Work {
                        name: url.clone(),
                        rules: Rules::from_policy(&Default::default()).unwrap(),
                        prune: true,
                        check: Some(None),
                        unused_threshold_percent: 20,
                        locks: LocksContext {
                            stale_after: SignedDuration::from_mins(30),
                            live_pods: Some(Default::default()),
                            this_host: "gc".into(),
                        },
                        dry_run: false,
                        progress_interval: std::time::Duration::from_secs(60),
                        now: jiff::Timestamp::now(),
                    };
                    match maintain::run(&access, &work) {
                        Ok(o) => {
                            forgotten.fetch_add(o.forgotten.len(), Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("{url}: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let st = access.storage.stats().unwrap();
                    requests.fetch_add(st.requests.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            });
        }
    });
    let total = started.elapsed();
    println!(
        "gc scale: {n} repositories; discovery {:.1}s / {discovery_requests} S3 requests; \
         full first pass (forget {} snapshots, prune, check each) {:.1}s / {} S3 requests in \
         total ({:.1} per repository); {} failed",
        discovery.as_secs_f64(),
        forgotten.load(Ordering::Relaxed),
        total.as_secs_f64(),
        requests.load(Ordering::Relaxed),
        requests.load(Ordering::Relaxed) as f64 / n as f64,
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}
