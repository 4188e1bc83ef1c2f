//! CronJob passes at scale (a measurement, not a test: nothing here asserts a time).
//!
//! Worlds of 100 PVCs in 10 namespaces and 1,000 PVCs in 100 namespaces in the fake
//! Kubernetes API, each PVC with a repository on Garage (100 / 1,000 repositories, each
//! with its own key under the password derived from the master, as in a cluster). The
//! real release binaries run one pass each under GNU time; the table gives wall time,
//! CPU time, Kubernetes API requests (fake API audit log), S3 requests (counted by
//! Garage itself) and peak RSS.
//!
//! `bash scripts/bench-scale.sh` builds the binaries and runs this; by hand:
//! `cargo build --release --bins -p stowage-scheduler -p stowage-gc -p stowage-prewarm
//! -p stowage-mover && cargo bench -p stowage-testkit --bench scale -- [--sizes
//! 100,1000] [--only scheduler,populator,rebuild,index,gc,rebuild-run]` (`rebuild-run`,
//! whole 50-second prewarm runs after a rebuild, is not in the default set). `STOWAGE_BENCH_BINS=DIR`
//! runs other builds of the binaries (before/after comparisons).
//!
//! Repository keys take one scrypt derivation each to create (about a third of a
//! second): they are made once and kept in `target/scale-bench-cache/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::api::storage::v1::StorageClass;
use rustic_core::{KeyOptions, NoProgressBars};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stowage_common::backend::Storage;
use stowage_common::env::CommonEnv;
use stowage_common::k8s::contract::prewarm as pc;
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_common::location::Location;
use stowage_common::repo::RepoAccess;
use stowage_testkit::fakeapi::FakeApi;
use stowage_testkit::garage::{self, Garage};

const MASTER: &str = "scale bench master password";
const TEMPLATE_PASSWORD: &str = "scale bench template password";
const BUCKET: &str = "stowage-scale";
const SCHEDULER: &str = "system:serviceaccount:stowage:stowage-scheduler";
const GC: &str = "system:serviceaccount:stowage:stowage-gc";
const PREWARM: &str = "system:serviceaccount:stowage:stowage-prewarm";

struct Opts {
    sizes: Vec<usize>,
    only: BTreeSet<String>,
    bins: PathBuf,
    cache: PathBuf,
}

fn main() {
    let mut sizes = vec![100, 1000];
    let mut only: BTreeSet<String> = ["scheduler", "populator", "rebuild", "index", "gc"]
        .into_iter()
        .map(String::from)
        .collect();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .expect("--sizes N,M")
                    .split(',')
                    .map(|s| s.trim().parse().expect("a number"))
                    .collect()
            }
            "--only" => {
                only = args
                    .next()
                    .expect("--only a,b")
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            }
            // cargo bench passes --bench
            _ => {}
        }
    }
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/scale-<hash>
    let release = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bins = std::env::var_os("STOWAGE_BENCH_BINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| release.clone());
    let cache = release.parent().unwrap().join("scale-bench-cache");
    let opts = Opts {
        sizes,
        only,
        bins,
        cache,
    };
    machine();
    let g = garage::shared();
    g.cli(&["bucket", "create", BUCKET]);
    g.cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        BUCKET,
        "--key",
        &g.access_key,
    ]);
    let mut table = Table::default();
    for &n in &opts.sizes {
        bench_size(&opts, g, n, &mut table);
    }
    println!();
    println!("## Results");
    println!();
    table.print();
}

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("machine: {nproc} cores, {cpu}; load average at start: {load}");
}

/// Whether loopback answers delayed ACKs at once (`quickack`, set by the scripts for
/// the run): without it every GET to Garage waits 40 ms, a measure of that artefact.
fn loopback_quickack() -> &'static str {
    let out = Command::new("ip")
        .args(["route", "show", "table", "local"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    match out.lines().find(|l| l.starts_with("local 127.0.0.1 ")) {
        Some(l) if l.contains("quickack 1") => "on",
        Some(_) => "off",
        None => "unknown",
    }
}

/// Where the repositories of a world of `n` PVCs live.
fn base(g: &Garage, n: usize) -> String {
    format!("s3:{}/{BUCKET}/n{n}", g.endpoint)
}

fn ns_of(i: usize) -> String {
    format!("ns-{:03}", i / 10)
}

fn pvc_of(i: usize) -> String {
    format!("data-{i}")
}

fn bench_size(opts: &Opts, g: &Garage, n: usize, table: &mut Table) {
    let t = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "[{n}] loopback quickack {}; load average {}",
        loopback_quickack(),
        load.trim()
    );
    upload_repositories(opts, g, n);
    println!(
        "[{n}] {n} repositories on Garage in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let world_label = format!("{n} PVCs / {} ns", n / 10);

    if opts.only.contains("scheduler") {
        let api = world(g, n, Pending::None);
        for (pass, now) in [
            ("all due (starts a Job per PVC)", "2026-11-23T10:00:30Z"),
            ("none due", "2026-11-23T10:10:00Z"),
        ] {
            let m = run(
                opts,
                "stowage-scheduler",
                &["--now", now],
                &[("STOWAGE_MAX_CONCURRENT_JOBS", "100000")],
                &api,
                SCHEDULER,
                g,
                n,
            );
            table.row("scheduler", &world_label, pass, &m);
        }
    }

    if opts.only.contains("populator") {
        // Most PVCs bound, every tenth Pending with a dataSourceRef (new apps).
        let api = world(g, n, Pending::Some);
        let pending = n / 10;
        let mut done = false;
        for round in 1..=40 {
            let m = run(
                opts,
                "stowage-prewarm",
                &["--once", "--no-index"],
                &[],
                &api,
                PREWARM,
                g,
                n,
            );
            let p = primes(&api);
            let what = if done {
                "every prime made, they wait for a volume"
            } else {
                "looks up Pending PVCs"
            };
            table.row(
                "prewarm populator",
                &world_label,
                &format!("round {round}: {what}; primes {p}/{pending}"),
                &m,
            );
            if done || m.code != 0 {
                break;
            }
            done = p >= pending;
        }
    }

    if opts.only.contains("rebuild") {
        // Cluster rebuild: every PVC Pending with a dataSourceRef.
        let api = world(g, n, Pending::All);
        for round in 1..=40 {
            let m = run(
                opts,
                "stowage-prewarm",
                &["--once", "--no-index"],
                &[],
                &api,
                PREWARM,
                g,
                n,
            );
            let p = primes(&api);
            table.row(
                "prewarm populator, rebuild",
                &world_label,
                &format!("round {round}; primes {p}/{n}"),
                &m,
            );
            if p >= n || m.code != 0 && round > 1 {
                break;
            }
        }
    }

    if opts.only.contains("rebuild-run") {
        // The same rebuild as the CronJob runs it: whole runs (polling for
        // STOWAGE_RUN_SECONDS, 50), the index due at the same time.
        let api = world(g, n, Pending::All);
        for run_no in 1..=20 {
            let m = run(opts, "stowage-prewarm", &[], &[], &api, PREWARM, g, n);
            let p = primes(&api);
            let (read, total) = index_progress(&api);
            table.row(
                "prewarm run (polls 50 s), rebuild",
                &world_label,
                &format!("run {run_no}; primes {p}/{n}; index read {read}/{total}"),
                &m,
            );
            if (p >= n && read >= n) || m.code != 0 {
                break;
            }
        }
    }

    if opts.only.contains("index") {
        let api = world(g, n, Pending::None);
        let mut run_no = 0;
        loop {
            run_no += 1;
            // The first run is forced (no index yet anyway); the next ones run when
            // the program finds the index due (an unfinished index is).
            let args: &[&str] = if run_no == 1 {
                &["--once", "--index-now"]
            } else {
                &["--once"]
            };
            let m = run(opts, "stowage-prewarm", args, &[], &api, PREWARM, g, n);
            let (read, total) = index_progress(&api);
            table.row(
                "prewarm index",
                &world_label,
                &format!("run {run_no}; read {read}/{total}"),
                &m,
            );
            if read >= n || run_no >= 40 || m.code != 0 {
                break;
            }
        }
        let m = run(
            opts,
            "stowage-prewarm",
            &["--once", "--index-now"],
            &[],
            &api,
            PREWARM,
            g,
            n,
        );
        let (read, total) = index_progress(&api);
        table.row(
            "prewarm index",
            &world_label,
            &format!("again, nothing changed; read {read}/{total}"),
            &m,
        );
    }

    if opts.only.contains("gc") {
        let api = world(g, n, Pending::None);
        let start = Timestamp::now();
        let mut pass_no = 0;
        loop {
            pass_no += 1;
            // Hourly passes, on gc's clock.
            let now = (start + SignedDuration::from_hours(pass_no - 1)).to_string();
            let m = run(opts, "stowage-gc", &["--now", &now], &[], &api, GC, g, n);
            let (pruned, checked) = gc_progress(&api);
            table.row(
                "gc",
                &world_label,
                &format!(
                    "pass {pass_no} (+{}h); pruned {pruned}, checked {checked}",
                    pass_no - 1
                ),
                &m,
            );
            if (pruned >= n && checked >= n) || pass_no >= 40 || m.code != 0 {
                break;
            }
        }
        let now = (start + SignedDuration::from_hours(pass_no)).to_string();
        let m = run(opts, "stowage-gc", &["--now", &now], &[], &api, GC, g, n);
        let (pruned, checked) = gc_progress(&api);
        table.row(
            "gc",
            &world_label,
            &format!("next hour, nothing due; pruned {pruned}, checked {checked}"),
            &m,
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "[{n}] done; loopback quickack {}; load average {}",
        loopback_quickack(),
        load.trim()
    );
}

#[derive(Debug, Default)]
struct Measured {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
    api: usize,
    s3: u64,
    code: i32,
}

#[allow(clippy::too_many_arguments)]
fn run(
    opts: &Opts,
    bin: &str,
    args: &[&str],
    extra_env: &[(&str, &str)],
    api: &FakeApi,
    user: &str,
    g: &Garage,
    n: usize,
) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let time_file = dir.path().join("time");
    let log_file = opts.cache.join(format!("last-{bin}-{n}.log"));
    api.clear_requests();
    let s3_before = g.s3_requests();
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(&time_file)
        .arg(opts.bins.join(bin))
        .args(args)
        .env_clear()
        .env("KUBECONFIG", api.kubeconfig_for(user))
        .env("STOWAGE_REPOSITORY_BASE", base(g, n))
        .env("STOWAGE_ALLOW_HTTP", "true")
        .env("AWS_DEFAULT_REGION", garage::REGION)
        .env("STOWAGE_LOG", "info,rustic_core=warn")
        .env("STOWAGE_LOG_FORMAT", "text")
        .env("POD_NAME", format!("{bin}-bench"))
        .envs(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .output()
        .expect("GNU time (apt-get install time)");
    let wall = t.elapsed().as_secs_f64();
    let s3 = g.s3_requests() - s3_before;
    std::fs::write(&log_file, &out.stderr).unwrap();
    let time = std::fs::read_to_string(&time_file).unwrap_or_default();
    let field = |name: &str| -> f64 {
        time.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let code = out.status.code().unwrap_or(-1);
    let m = Measured {
        wall,
        cpu: field("User time (seconds):") + field("System time (seconds):"),
        rss_mib: field("Maximum resident set size (kbytes):") / 1024.0,
        api: api.requests().iter().filter(|r| r.user == user).count(),
        s3,
        code,
    };
    if code != 0 {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        eprintln!(
            "{bin} {args:?} exited {code}; last lines ({}):\n{}",
            log_file.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    m
}

#[derive(Default)]
struct Table {
    rows: Vec<String>,
}

impl Table {
    fn row(&mut self, program: &str, world: &str, pass: &str, m: &Measured) {
        let line = format!(
            "| {program} | {world} | {pass} | {:.2} | {:.2} | {} | {} | {:.0} | {} |",
            m.wall, m.cpu, m.api, m.s3, m.rss_mib, m.code
        );
        println!("{line}");
        self.rows.push(line);
    }

    fn print(&self) {
        println!(
            "| program | world | pass | wall (s) | CPU (s) | API requests | S3 requests | peak RSS (MiB) | exit |"
        );
        println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for r in &self.rows {
            println!("{r}");
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Pending {
    None,
    /// Every tenth PVC.
    Some,
    All,
}

/// The cluster: stowage's namespace, policies, credentials, a safe storage class, and
/// `n` PVCs (10 per namespace) labelled for hourly backups, bound with an app pod each,
/// or Pending with a dataSourceRef to the stowage kind.
fn world(g: &Garage, n: usize, pending: Pending) -> FakeApi {
    let api = FakeApi::start();
    api.put::<Namespace>(json!({"metadata": {"name": "stowage"}}));
    api.put::<ConfigMap>(
        json!({"metadata": {"name": "stowage-policies", "namespace": "stowage"},
               "data": {"policies.yaml":
                   "hourly: {schedule: \"@hourly\", retention: {keepLast: 2}}\n"}}),
    );
    api.put::<Secret>(
        json!({"metadata": {"name": "stowage-credentials", "namespace": "stowage"},
               "stringData": {"master-password": MASTER,
                              "mover-access-key-id": g.access_key,
                              "mover-secret-access-key": g.secret_key,
                              "gc-access-key-id": g.access_key,
                              "gc-secret-access-key": g.secret_key}}),
    );
    api.put::<StorageClass>(
        json!({"metadata": {"name": "local"}, "provisioner": "local.csi.openebs.io",
               "volumeBindingMode": "Immediate"}),
    );
    api.put::<ConfigMap>(
        json!({"metadata": {"name": pc::probe::CONFIGMAP, "namespace": "stowage"},
               "data": {"local": json!({"verdict": pc::probe::SAFE,
                                        "provisioner": "local.csi.openebs.io",
                                        "judgedAt": "2026-11-23T09:00:00Z",
                                        "detail": "probe"}).to_string()}}),
    );
    for i in 0..n {
        let ns = ns_of(i);
        if i % 10 == 0 {
            api.put::<Namespace>(json!({"metadata": {"name": ns}}));
        }
        let name = pvc_of(i);
        let waits = match pending {
            Pending::None => false,
            Pending::Some => i % 10 == 9,
            Pending::All => true,
        };
        let mut spec = json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                              "resources": {"requests": {"storage": "1Gi"}}});
        if waits {
            spec["dataSourceRef"] = json!({"apiGroup": "stowage.io", "kind": "Restore",
                                           "name": name});
        } else {
            spec["volumeName"] = json!(format!("pv-{i}"));
        }
        api.put::<PersistentVolumeClaim>(
            json!({"metadata": {"name": name, "namespace": ns, "labels": {"backup": "hourly"},
                                "annotations": {"stowage.io/last-attempt": "2026-11-23T09:30:00Z"}},
                   "spec": spec}),
        );
        if waits {
            continue;
        }
        api.put::<PersistentVolume>(json!({"metadata": {"name": format!("pv-{i}")},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "storageClassName": "local",
                            "hostPath": {"path": format!("/var/pv/{i}")},
                            "claimRef": {"namespace": ns, "name": name}}}));
        api.store()
            .modify::<PersistentVolumeClaim>(&ns, &name, |p| {
                p.status = Some(serde_json::from_value(json!({"phase": "Bound"})).unwrap());
            })
            .unwrap();
        api.put::<Pod>(json!({"metadata": {"name": format!("app-{i}"), "namespace": ns},
                   "spec": {"nodeName": "node-a", "securityContext": {"runAsUser": 1000},
                            "containers": [{"name": "app", "image": "app",
                                            "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
                            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": name}}]}}),
        );
    }
    api
}

fn primes(api: &FakeApi) -> usize {
    api.store()
        .list::<PersistentVolumeClaim>(Some("stowage"))
        .iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(pc::prime::NAME_PREFIX))
        })
        .count()
}

/// (repositories read, repositories listed) of the index ConfigMap.
fn index_progress(api: &FakeApi) -> (usize, usize) {
    let cms = api.store().list::<ConfigMap>(Some("stowage"));
    let Some(doc) = cms
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("stowage-index"))
        .and_then(|c| c.data.as_ref()?.get(pc::INDEX_KEY).cloned())
    else {
        return (0, 0);
    };
    let v: Value = serde_json::from_str(&doc).unwrap_or_default();
    let repos = v["repositories"].as_array().cloned().unwrap_or_default();
    let read = repos
        .iter()
        .filter(|e| {
            e["error"].is_null()
                && !e["pending"].as_bool().unwrap_or(false)
                && e["snapshots"].as_u64().unwrap_or(0) > 0
        })
        .count();
    (read, repos.len())
}

/// (repositories pruned once, checked once) according to gc's state ConfigMap.
fn gc_progress(api: &FakeApi) -> (usize, usize) {
    let cms = api.store().list::<ConfigMap>(Some("stowage"));
    let Some(doc) = cms
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("stowage-gc-state"))
        .and_then(|c| c.data.as_ref()?.get("state.json").cloned())
    else {
        return (0, 0);
    };
    let v: Value = serde_json::from_str(&doc).unwrap_or_default();
    let repos = v.as_object().cloned().unwrap_or_default();
    let pruned = repos.values().filter(|r| !r["lastPrune"].is_null()).count();
    let checked = repos.values().filter(|r| !r["lastCheck"].is_null()).count();
    (pruned, checked)
}

// ---------------------------------------------------------------------------------
// Repositories: one template written by the real mover (three snapshots), copied to
// every `<base>/<ns>/<pvc>` with a key file of its own under the derived password.

fn mover(opts: &Opts, repo: &Path, src: &Path) {
    let out = Command::new(opts.bins.join("stowage-mover"))
        .env_clear()
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", TEMPLATE_PASSWORD)
        .env("STOWAGE_NAMESPACE", "t")
        .env("STOWAGE_PVC", "t")
        .env("STOWAGE_LOG", "warn")
        .arg("backup")
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn template(opts: &Opts) -> PathBuf {
    let dir = opts.cache.join("template");
    if dir.join("config").is_file() && dir.join("done").is_file() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = tempfile::tempdir().unwrap();
    for i in 0..3u8 {
        std::fs::write(src.path().join(format!("f{i}")), vec![i; 4096]).unwrap();
        mover(opts, &dir, src.path());
    }
    std::fs::write(dir.join("done"), "").unwrap();
    dir
}

fn template_repo(dir: &Path) -> stowage_common::repo::OpenRepo {
    let loc = Location::Local(dir.to_path_buf());
    RepoAccess::new(
        loc,
        Storage::Local(dir.to_path_buf()),
        TEMPLATE_PASSWORD.to_string(),
        None,
    )
    .open(NoProgressBars)
    .unwrap()
    .expect("template repository")
}

fn key_name(identity: &str) -> String {
    stowage_common::k8s::naming::short_hash(&[identity])
}

/// Key files of every repository of a world of `n` (made once, kept in the cache).
fn keys(opts: &Opts, g: &Garage, n: usize, tmpl: &Path) -> PathBuf {
    let keys = opts.cache.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let missing: Vec<(String, String)> = (0..n)
        .map(|i| format!("{}/{}/{}", base(g, n), ns_of(i), pvc_of(i)))
        .filter_map(|url| {
            let id = stowage_common::k8s::credentials::repository_identity(&url);
            (!keys.join(key_name(&id)).is_file())
                .then(|| (id, derive_repository_password(MASTER, &url)))
        })
        .collect();
    if missing.is_empty() {
        return keys;
    }
    let t = Instant::now();
    println!(
        "making {} repository keys (scrypt each; kept in {})",
        missing.len(),
        keys.display()
    );
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let repo = template_repo(tmpl);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, pw)) = missing.get(i) else {
                        break;
                    };
                    let kid = repo.add_key(pw, &KeyOptions::default()).unwrap();
                    let file = tmpl.join("keys").join(&*kid.to_hex());
                    std::fs::rename(&file, keys.join(key_name(id))).unwrap();
                }
            });
        }
    });
    println!("keys made in {:.1}s", t.elapsed().as_secs_f64());
    keys
}

/// Every file of the template except its keys: (relative path, content).
fn template_files(dir: &Path) -> Vec<(String, Bytes)> {
    let mut out = vec![(
        "config".to_string(),
        Bytes::from(std::fs::read(dir.join("config")).unwrap()),
    )];
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Bytes)>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, Bytes::from(std::fs::read(&p).unwrap())));
            }
        }
    }
    for sub in ["snapshots", "index", "data"] {
        walk(dir, &dir.join(sub), &mut out);
    }
    out
}

fn upload_repositories(opts: &Opts, g: &Garage, n: usize) {
    let tmpl = template(opts);
    let keys = keys(opts, g, n, &tmpl);
    let files = template_files(&tmpl);
    let loc = Location::parse(&format!("{}/x", base(g, n)), None).unwrap();
    let restic = stowage_common::env::ResticEnv {
        aws_access_key_id: Some(g.access_key.clone()),
        aws_secret_access_key: Some(g.secret_key.clone()),
        aws_default_region: Some(garage::REGION.into()),
        ..Default::default()
    };
    let common = CommonEnv {
        allow_http: true,
        ..Default::default()
    };
    let Storage::S3(s3) = Storage::open(&loc, &restic, &common).unwrap() else {
        panic!("S3")
    };
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let url = format!("{}/{}/{}", base(g, n), ns_of(i), pvc_of(i));
                    let id = stowage_common::k8s::credentials::repository_identity(&url);
                    let prefix = id.split_once('/').unwrap().1.to_string();
                    for (k, d) in &files {
                        s3.put_key(&format!("{prefix}/{k}"), d.clone()).unwrap();
                    }
                    let key = std::fs::read(keys.join(key_name(&id))).unwrap();
                    // restic names a key file by the SHA-256 of its content.
                    let name: String = Sha256::digest(&key)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    s3.put_key(&format!("{prefix}/keys/{name}"), key.into())
                        .unwrap();
                }
            });
        }
    });
}
