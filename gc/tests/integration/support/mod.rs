//! Runs the real `stowage-gc` binary and `restic` against Garage; the world of the passes
//! on the fake API.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use stowage_common::env::GcConfig;
use stowage_common::repo::RepoAccess;
use stowage_testkit::world::{ApiWorld, Keys, World};
use stowage_testkit::{garage, trees};

pub const PASSWORD: &str = "gc test password";

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "no result\nstdout: {}\nstderr: {}",
                    self.stdout, self.stderr
                )
            });
        serde_json::from_str(line).unwrap()
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Environment of a repository `bucket/prefix` on the shared Garage.
pub fn env(repo: &str) -> Vec<(String, String)> {
    let mut e = garage::shared().env(repo);
    e.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    e
}

pub fn gc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stowage-gc"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("STOWAGE_LOG_FORMAT", "text")
        .env("STOWAGE_LOG", "info")
        .env("STOWAGE_PROGRESS_INTERVAL_SECS", "1");
    c
}

pub fn gc_run(env: &[(String, String)], args: &[&str]) -> Run {
    let mut c = gc();
    c.envs(env.iter().map(|(k, v)| (k, v))).args(args);
    c.output().unwrap().into()
}

pub fn restic(env: &[(String, String)], args: &[&str], cwd: Option<&Path>) -> Run {
    stowage_testkit::cli::restic(env, args, cwd).into()
}

/// A repository with one snapshot per entry of `times` (`--time`), each adding
/// `mib` MiB of new random data, as VolSync's mover writes them (`--host volsync`).
pub fn repo_with_snapshots(env: &[(String, String)], times: &[&str], mib: usize, seed: u64) {
    restic(env, &["init"], None).ok();
    let d = tempfile::tempdir().unwrap();
    for (i, t) in times.iter().enumerate() {
        trees::write_random(
            &d.path().join(format!("f{i}.bin")),
            mib << 20,
            seed + i as u64,
        );
        if i > 0 {
            std::fs::remove_file(d.path().join(format!("f{}.bin", i - 1))).unwrap();
        }
        restic(
            env,
            &["backup", "--host", "volsync", "--time", t, "."],
            Some(d.path()),
        )
        .ok();
    }
}

pub fn snapshot_count(env: &[(String, String)]) -> usize {
    let r = restic(env, &["snapshots", "--json"], None).ok();
    serde_json::from_str::<Vec<serde_json::Value>>(&r.stdout)
        .unwrap()
        .len()
}

/// Access to the repository from the test process (lock files, raw objects).
pub fn access(env: &[(String, String)]) -> RepoAccess {
    let cfg = GcConfig::from_vars(env).unwrap();
    RepoAccess::from_env(&cfg.restic, &cfg.common, None, None).unwrap()
}

pub const USER: &str = "system:serviceaccount:stowage:stowage-gc";
pub const MASTER: &str = "master secret";

/// gc's world on the fake API: the namespace `a`, `policies`, gc's keys of the shared
/// Garage, repositories under `backups/` of a fresh bucket named after `bucket`.
pub fn world(bucket: &str, policies: &str) -> ApiWorld {
    World::builder(MASTER)
        .namespace("a")
        .policies(policies)
        .gc_keys(Keys::Garage)
        .bucket(bucket)
        .bucket_prefix("backups")
        .build_api()
}

/// The clock of the passes (`--now`): two hours after the fake API stamped the
/// objects' creation times (it stamps them itself, with the real clock), so that a
/// Secret left without its Job is past its one-hour grace.
pub fn clock() -> Timestamp {
    Timestamp::now() + SignedDuration::from_hours(2)
}

/// The repository of `ns/pvc` with the derived password and one snapshot per entry of
/// `times` (see [`repo_with_snapshots`]); its environment.
pub fn repository_at(
    w: &ApiWorld,
    ns: &str,
    pvc: &str,
    seed: u64,
    times: &[&str],
) -> Vec<(String, String)> {
    let env = w.repository_env(ns, pvc);
    repo_with_snapshots(&env, times, 1, seed);
    env
}

/// Whether the object `a/<name>` exists.
pub fn exists<K: k8s_openapi::Resource + DeserializeOwned>(w: &ApiWorld, name: &str) -> bool {
    w.api.store().get::<K>("a", name).is_some()
}
