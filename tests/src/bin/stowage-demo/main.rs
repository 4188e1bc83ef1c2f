//! stowage-demo: the whole promise on a fresh machine, in the cluster simulator (or, with
//! `--control-plane`, on a real Kubernetes control plane: `real.rs`). Three
//! apps get volumes (a fresh install: empty), write data and are backed up; the cluster
//! is wiped; the same PVCs are applied again, and each comes back with its data before
//! any app could start. Real stowage-scheduler, stowage-mover and stowage-prewarm
//! binaries; repositories in a local directory (no S3 account needed).
//!
//! Run: `scripts/demo.sh` (one `cargo build --release` of the programs, then this
//! binary, which finds the others next to itself; it passes `--control-plane` when the
//! test bed is built). Options: `--work-dir DIR` (simulator: where the repositories go;
//! default: a new directory under the system's temporary directory), `--control-plane`,
//! `--simulator` (the default).

mod real;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use stowage_testkit::fakeapi::Store;
use stowage_testkit::sim::{Cluster, ClusterOptions, NodeSpec, PvcSpec, StorageClassSpec, digest};
use stowage_testkit::trees;

pub(crate) const APPS: [(&str, &str, &str); 3] = [
    ("db", "pg-data", "node-a"),
    ("db", "pg-wal", "node-b"),
    ("media", "library", "node-a"),
];
const WAIT: Duration = Duration::from_secs(180);
const PROGRAMS: [&str; 4] = [
    "stowage-mover",
    "stowage-scheduler",
    "stowage-prewarm",
    "stowage-gc",
];

pub(crate) fn say(s: impl AsRef<str>) {
    println!("{}", s.as_ref());
}

/// The real binaries, next to this one (`scripts/demo.sh` builds all four at once).
/// Under `cargo run` they are (re)built first, with cargo's own progress on the
/// terminal (a no-op when up to date), so the demo never runs stale programs.
fn binaries() -> Result<BTreeMap<&'static str, PathBuf>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no binary directory")?.to_path_buf();
    if let Ok(cargo) = std::env::var("CARGO") {
        say(format!("building {} (if needed) …", PROGRAMS.join(", ")));
        let mut cmd = std::process::Command::new(cargo);
        cmd.arg("build");
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        for p in PROGRAMS {
            cmd.args(["-p", p]);
        }
        let st = cmd.status().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("building the stowage programs failed".into());
        }
    }
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| !dir.join(p).exists())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} not found in {}: build them first (scripts/demo.sh does)",
            missing.join(", "),
            dir.display()
        ));
    }
    Ok(PROGRAMS.iter().map(|p| (*p, dir.join(p))).collect())
}

fn bound(s: &Store, ns: &str, pvc: &str) -> bool {
    s.get::<PersistentVolumeClaim>(ns, pvc)
        .and_then(|p| p.status?.phase)
        .as_deref()
        == Some("Bound")
}

fn ann(c: &Cluster, ns: &str, pvc: &str, key: &str) -> String {
    c.store()
        .get::<PersistentVolumeClaim>(ns, pvc)
        .and_then(|p| p.metadata.annotations?.get(key).cloned())
        .unwrap_or_default()
}

fn pvc_spec(name: &str) -> PvcSpec {
    PvcSpec::new(name)
        .class("local")
        .label("backup", "hourly")
        .data_source_ref("stowage.io", "Restore", name)
}

struct Demo {
    cluster: Cluster,
    bins: BTreeMap<&'static str, PathBuf>,
    repos: PathBuf,
}

impl Demo {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STOWAGE_REPOSITORY_BASE", self.repos.display().to_string()),
            ("STOWAGE_MOVER_IMAGE", "stowage-mover:demo".into()),
            ("STOWAGE_LOG_FORMAT", "text".into()),
            ("STOWAGE_LOG", "warn".into()),
            ("STOWAGE_POLL_SECONDS", "1".into()),
        ]
    }

    /// What Git holds: the policies, the credentials, the apps.
    fn apply_git(&self) {
        let store = self.cluster.store();
        let _ = store.create::<ConfigMap>(
            &serde_json::from_value(json!({
                "metadata": {"name": "stowage-policies", "namespace": "stowage"},
                "data": {"policies.yaml": "hourly:\n  schedule: \"@hourly\"\n"}
            }))
            .unwrap(),
        );
        let _ = store.create::<Secret>(
            &serde_json::from_value(json!({
                "metadata": {"name": "stowage-credentials", "namespace": "stowage"},
                // Local repositories need no S3 keys; the master password is the one secret.
                "stringData": {"master-password": "demo master password",
                               "mover-access-key-id": "unused-for-local",
                               "mover-secret-access-key": "unused-for-local"}
            }))
            .unwrap(),
        );
        for (ns, pvc, node) in APPS {
            let _ = self.cluster.create_namespace(ns, &[]);
            self.cluster.create_pvc(ns, &pvc_spec(pvc)).unwrap();
            self.cluster
                .create_app_pod(
                    ns,
                    &format!("app-{pvc}"),
                    pvc,
                    Some(node),
                    Some((1000, 1000)),
                    &[],
                )
                .unwrap();
        }
    }

    async fn scheduler(&self, now: &str) -> Result<(), String> {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = self
            .cluster
            .run_program(
                &self.bins["stowage-scheduler"],
                &["--now", now],
                &env,
                "system:serviceaccount:stowage:stowage-scheduler",
            )
            .await;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "stowage-scheduler failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    async fn jobs_done(&self) -> Result<(), String> {
        self.cluster
            .wait_for(WAIT, |s| {
                s.list::<Job>(None)
                    .iter()
                    .all(|j| {
                        j.status
                            .as_ref()
                            .and_then(|st| st.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| {
                                    (c.type_ == "Complete" || c.type_ == "Failed")
                                        && c.status == "True"
                                })
                            })
                    })
                    .then_some(())
            })
            .await
            .map_err(|e| format!("mover Jobs did not finish: {e}"))
    }

    /// A prewarm run (as its CronJob would start it) until every app's PVC is bound.
    async fn prewarm(&self) -> Result<(), String> {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut child = self.cluster.spawn_program(
            &self.bins["stowage-prewarm"],
            &["--duration", "300"],
            &env,
            "system:serviceaccount:stowage:stowage-prewarm",
            "prewarm",
        );
        let r = self
            .cluster
            .wait_for(WAIT, |s| {
                let done = APPS.iter().all(|(ns, pvc, _)| {
                    let uid = s
                        .get::<PersistentVolumeClaim>(ns, pvc)
                        .and_then(|p| p.metadata.uid);
                    bound(s, ns, pvc)
                        && s.list::<Event>(Some(ns)).iter().any(|e| {
                            e.regarding.as_ref().and_then(|r| r.uid.clone()) == uid
                                && matches!(e.reason.as_deref(), Some("Restored" | "BoundEmpty"))
                        })
                });
                (done && s.list::<PersistentVolumeClaim>(Some("stowage")).is_empty()).then_some(())
            })
            .await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        r.map_err(|e| {
            format!(
                "PVCs not populated: {e}\n{}\n{}",
                self.cluster.program_log("prewarm"),
                self.cluster.all_pod_logs()
            )
        })
    }

    fn dir(&self, ns: &str, pvc: &str) -> PathBuf {
        self.cluster.volume_dir(ns, pvc).expect("bound volume")
    }
}

/// Sample data with the metadata a restore must bring back.
fn fill(dir: &Path, seed: u64) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("README"), format!("app data, seed {seed}\n")).unwrap();
    trees::write_random(&dir.join("sub/blob.bin"), 2 << 20, seed);
    trees::many_small(&dir.join("small"), 200, seed);
    std::fs::write(dir.join("sub/deeper/secret.conf"), "password=hunter2\n").unwrap();
    std::fs::set_permissions(
        dir.join("sub/deeper/secret.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let _ = std::os::unix::fs::symlink("sub/blob.bin", dir.join("latest-blob"));
}

pub(crate) fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

/// Where the demo runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bed {
    Simulator,
    ControlPlane,
}

const USAGE: &str = "usage: stowage-demo [--work-dir DIR] [--control-plane | --simulator]  \
                     (run it with scripts/demo.sh)";

/// The command line: `--work-dir DIR` (the directory under which the simulator's
/// demo directory goes; default: the system's temporary directory) and the bed.
fn args() -> Result<(PathBuf, Bed), String> {
    let mut args = std::env::args().skip(1);
    let mut dir = std::env::temp_dir();
    let mut bed = Bed::Simulator;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--work-dir" => {
                dir = PathBuf::from(args.next().ok_or("--work-dir needs a directory")?);
            }
            "--control-plane" => bed = Bed::ControlPlane,
            "--simulator" => bed = Bed::Simulator,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    Ok((dir, bed))
}

async fn run() -> Result<bool, String> {
    let (parent, bed) = args()?;
    let bins = binaries()?;
    if bed == Bed::ControlPlane {
        // The test kit panics with what failed; a task turns that into an error.
        return tokio::spawn(real::run())
            .await
            .map_err(|e| format!("the demo on the control plane stopped: {e}"))?;
    }
    let work = tempfile::Builder::new()
        .prefix("stowage-demo-")
        .tempdir_in(&parent)
        .map_err(|e| {
            format!(
                "cannot create a work directory in {}: {e}",
                parent.display()
            )
        })?;
    let repos = work.path().join("backups");
    let cluster = Cluster::start(
        ClusterOptions::new()
            .node(NodeSpec::new("node-a"))
            .node(NodeSpec::new("node-b"))
            .storage_class(StorageClassSpec::local_csi("local").default_class())
            .namespace("stowage")
            .binary("stowage-mover", &bins["stowage-mover"]),
    );
    let demo = Demo {
        cluster,
        bins,
        repos,
    };
    say("stowage demo: zero-touch restore after a cluster rebuild");
    say(format!(
        "  simulated cluster: nodes node-a, node-b; storage class `local` (node-local, \
         WaitForFirstConsumer)\n  backups: restic repositories under {} (stand-in for S3)\n",
        demo.repos.display()
    ));

    say("1. Fresh install: Git applies 3 PVCs (dataSourceRef → stowage.io/Restore) and their apps");
    demo.apply_git();
    demo.prewarm().await?;
    for (ns, pvc, _) in APPS {
        say(format!(
            "   {ns}/{pvc}: no backup exists → bound empty ({})",
            ann(&demo.cluster, ns, pvc, "stowage.io/bound-empty")
        ));
    }

    say("\n2. The apps write their data; the scheduler backs every volume up");
    let mut before = BTreeMap::new();
    for (i, (ns, pvc, _)) in APPS.iter().enumerate() {
        fill(&demo.dir(ns, pvc), i as u64 + 1);
    }
    demo.scheduler("2026-11-23T10:00:00Z").await?;
    demo.jobs_done().await?;
    demo.scheduler("2026-11-23T10:05:00Z").await?;
    for (ns, pvc, _) in APPS {
        let result = ann(&demo.cluster, ns, pvc, "stowage.io/last-result");
        if result != "Succeeded" {
            return Err(format!(
                "backup of {ns}/{pvc}: {result}\n{}",
                demo.cluster.all_pod_logs()
            ));
        }
        let sum = digest::tree(&demo.dir(ns, pvc));
        let files = digest::entries(&demo.dir(ns, pvc)).len();
        say(format!(
            "   {ns}/{pvc}: backed up as snapshot {} ({files} entries, checksum {})",
            short(&ann(&demo.cluster, ns, pvc, "stowage.io/last-snapshot")),
            short(&sum)
        ));
        before.insert((ns, pvc), sum);
    }

    say("\n3. The cluster is destroyed: every object and volume is gone; the backups stay");
    demo.cluster.wipe(false).await;

    say("\n4. The cluster is rebuilt from Git: the same PVCs and apps are applied again");
    demo.apply_git();
    demo.scheduler("2026-11-23T12:00:00Z").await?;
    let backups = demo.cluster.store().list::<Job>(None).len();
    say(format!(
        "   scheduler ran first: {backups} backups started (PVCs being restored are never \
         backed up, so an empty volume can never become the newest backup)"
    ));
    let pending: Vec<String> = demo
        .cluster
        .store()
        .list::<Pod>(None)
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running"))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    say(format!(
        "   apps waiting for their volumes (Pending): {}",
        pending.join(", ")
    ));
    demo.prewarm().await?;

    say("\n5. Restored before any app could start:");
    let mut all_equal = true;
    for (ns, pvc, _) in APPS {
        let sum = digest::tree(&demo.dir(ns, pvc));
        let equal = before[&(ns, pvc)] == sum;
        all_equal &= equal;
        say(format!(
            "   {ns}/{pvc}: restored snapshot {} → checksum {} {}",
            short(&ann(&demo.cluster, ns, pvc, "stowage.io/populated-from")),
            short(&sum),
            if equal {
                "= before the rebuild ✓"
            } else {
                "≠ before the rebuild ✗"
            }
        ));
    }
    demo.cluster
        .wait_for(WAIT, |s| {
            s.list::<Pod>(None)
                .iter()
                .filter(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("app-"))
                })
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(())
        })
        .await
        .map_err(|e| format!("apps did not start: {e}"))?;
    say("   apps running, on the nodes that hold their restored volumes");

    say("\n6. Backups continue the history after the restore");
    demo.scheduler("2026-11-23T12:10:00Z").await?;
    demo.jobs_done().await?;
    demo.scheduler("2026-11-23T12:15:00Z").await?;
    for (ns, pvc, _) in APPS {
        say(format!(
            "   {ns}/{pvc}: {} (snapshot {})",
            ann(&demo.cluster, ns, pvc, "stowage.io/last-result"),
            short(&ann(&demo.cluster, ns, pvc, "stowage.io/last-snapshot"))
        ));
    }
    say(if all_equal {
        "\nEvery volume came back identical (content, modes, owners, times, links)."
    } else {
        "\nSOME VOLUMES DIFFER: this is a bug, please report it."
    });
    Ok(all_equal)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("stowage-demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
