//! SIGTERM (Kubernetes deletes the Job or its deadline passes) and SIGINT: the run
//! stops, its repository lock is removed at once (not left to turn stale in 30
//! minutes), the result says `Terminated`, and the mover exits 143 (SIGINT: 130).
//!
//! Stopping in the middle is safe for the repository: rustic_core writes packs, then
//! the index that names them, then the snapshot that names the index, so a run cut
//! anywhere leaves at most unreferenced packs (prune removes them), the same state a
//! SIGKILL leaves (`tests/kill.rs`, `tests/faults.rs`).

use std::path::PathBuf;
use std::time::Duration;

use stowage_common::locks;
use tokio::signal::unix::{SignalKind, signal};

use crate::report::{RunResult, reason};
use crate::{EXIT_INTERRUPTED, EXIT_TERMINATED};

/// How long removing the locks may take (a hung storage must not keep a stopped
/// mover alive past the pod's grace period, 30 s by default).
const CLEANUP_BUDGET: Duration = Duration::from_secs(10);

/// The exit status for `signal`.
pub fn exit_status(signal: &str) -> u8 {
    if signal == "SIGINT" {
        EXIT_INTERRUPTED
    } else {
        EXIT_TERMINATED
    }
}

/// The result of a run stopped by `signal`.
pub fn stopped_result(operation: &str, signal: &str) -> RunResult {
    RunResult {
        operation: operation.into(),
        ok: false,
        error: Some(format!(
            "stopped by {signal} before the {operation} was done (the Job was deleted or reached \
             its deadline?); the repository lock was released and nothing of this run is a \
             snapshot. The next run starts over"
        )),
        reason: Some(reason::TERMINATED.into()),
        ..Default::default()
    }
}

/// Handles SIGTERM and SIGINT from now on. `result_file`: `Some` when the run writes a
/// result (backup, restore), with the file it goes to (if any).
pub fn install(
    operation: &'static str,
    result_file: Option<Option<PathBuf>>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    // Registered here, before the work starts, so no signal meets the default action.
    let (mut term, mut int) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    std::thread::Builder::new()
        .name("stowage-signals".into())
        .spawn(move || {
            let name = rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                }
            });
            tracing::warn!(
                signal = name,
                "{name} received: stopping, releasing the repository lock"
            );
            release_locks();
            if let Some(file) = result_file {
                stopped_result(operation, name).write(file.as_deref());
            }
            std::process::exit(i32::from(exit_status(name)));
        })?;
    Ok(())
}

/// Removes every lock this process holds, within [`CLEANUP_BUDGET`].
fn release_locks() {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("stowage-unlock".into())
        .spawn(move || {
            let _ = tx.send(locks::release_all());
        });
    if spawned.is_err() {
        tracing::warn!("could not release the repository lock; it turns stale in 30 minutes");
        return;
    }
    match rx.recv_timeout(CLEANUP_BUDGET) {
        Ok(Ok(n)) => tracing::info!(locks = n, "repository lock released"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not remove the repository lock; it turns stale in 30 minutes")
        }
        Err(_) => tracing::warn!(
            "the storage did not confirm the removal of the repository lock in {} s; it turns \
             stale in 30 minutes",
            CLEANUP_BUDGET.as_secs()
        ),
    }
}
