//! Runs the real `stowage-mover` binary with a controlled environment.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stowage_mover::report::RunResult;

pub const PASSWORD: &str = "correct horse battery staple";

pub fn mover() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stowage-mover"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("STOWAGE_LOG_FORMAT", "text")
        .env("STOWAGE_PROGRESS_INTERVAL_SECS", "1");
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn result(&self) -> RunResult {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "no result line\nstdout: {}\nstderr: {}",
                    self.stdout, self.stderr
                )
            });
        serde_json::from_str(line).unwrap()
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "mover failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn failed(self, code: i32, needle: &str) -> Self {
        assert_eq!(
            self.code, code,
            "unexpected exit\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\nstderr: {}",
            self.stderr
        );
        self
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

/// Runs the mover with `env` and `args`.
pub fn run(env: &[(String, String)], args: &[&str]) -> Run {
    let mut c = mover();
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c.args(args);
    c.output().unwrap().into()
}

/// Environment for a local repository.
pub fn local_env(repo: &Path) -> Vec<(String, String)> {
    vec![
        ("RESTIC_REPOSITORY".into(), repo.display().to_string()),
        ("RESTIC_PASSWORD".into(), PASSWORD.into()),
    ]
}

pub fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

pub fn s3_env(repo: &str) -> Vec<(String, String)> {
    let mut env = stowage_testkit::garage::shared().env(repo);
    env.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
    env
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts that `restored` equals `source` in everything a backup preserves.
pub fn assert_same_tree(source: &Path, restored: &Path) {
    let a = stowage_mover::treecmp::describe(source).unwrap();
    let b = stowage_mover::treecmp::describe(restored).unwrap();
    let diff = stowage_mover::treecmp::differences(&a, &b);
    assert!(
        diff.is_empty(),
        "restored tree differs:\n{}",
        diff.join("\n")
    );
    assert!(!a.is_empty());
}

/// `restic` with the test password and `env`.
pub fn restic(env: &[(String, String)], args: &[&str], cwd: Option<&Path>) -> Run {
    stowage_testkit::cli::restic(env, args, cwd).into()
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn join(d: &tempfile::TempDir, s: &str) -> PathBuf {
    d.path().join(s)
}
