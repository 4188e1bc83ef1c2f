//! The real `restic` CLI as the tests run it (Debian's, as an operator would): a clean
//! environment with only `PATH`, `HOME` and what the test gives, one cache directory
//! for the test processes.

use std::path::Path;
use std::process::{Command, Output};

/// `restic <args>` with `env`, in `cwd` when given.
pub fn restic(env: &[(String, String)], args: &[&str], cwd: Option<&Path>) -> Output {
    let mut c = Command::new("restic");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env(
            "RESTIC_CACHE_DIR",
            std::env::temp_dir().join("stowage-test-restic-cache"),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output()
        .expect("restic is installed (scripts/install-test-tools.sh)")
}
