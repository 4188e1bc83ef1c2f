//! Paths of the workspace's real binaries for end-to-end scenarios. `cargo test` builds
//! every binary of the workspace before it runs any test (`scripts/test.sh` tests the
//! whole workspace), so they sit next to the test executable's directory.

use std::path::PathBuf;

/// `target/<profile>/<name>`, found from the running executable: a test binary lives
/// in `target/<profile>/deps/`, a binary of the workspace (the demo) next to the
/// others. Panics with what to do when it was not built.
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("the executable's directory");
    let beside = here.join(name);
    if beside.exists() {
        return beside;
    }
    let dir = here.parent().unwrap_or(here);
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` (or the whole suite with \
         `cargo test --workspace`)",
        p.display()
    );
    p
}
