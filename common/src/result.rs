//! The result of one mover run (the contract between the mover and the programs that
//! start it), as one JSON line: printed on stdout, and written to
//! the Kubernetes termination message file when configured, where the scheduler
//! reads it.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_MESSAGE_MAX: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub operation: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Files in the snapshot (backup) or restored (restore).
    pub files: u64,
    /// Bytes in the snapshot (backup) or restored (restore).
    pub bytes: u64,
    /// New data added to the repository (before compression), backup only.
    pub added_bytes: u64,
    /// Bytes sent to / read from S3 (0 for local repositories).
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
    pub duration_secs: f64,
    /// False when a restore found no repository or no snapshot (a fresh install).
    pub restored: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Machine-readable kind of failure (see [`reason`]), for Events and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The repository the run worked on, as the mover resolved it (credentials never
    /// included): consumers compare it with the one they planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Backup: entries that could not be read and are missing from the snapshot
    /// (a partial backup, reason [`reason::PARTIAL`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
    /// The first of those paths (at most [`SKIPPED_PATHS_MAX`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_paths: Vec<String>,
}

/// How many skipped paths a result names.
pub const SKIPPED_PATHS_MAX: usize = 10;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Values of [`RunResult::reason`].
pub mod reason {
    /// Bad configuration (exit 2).
    pub const CONFIG: &str = "Config";
    /// Another process holds a lock (exit 11, as restic).
    pub const LOCKED: &str = "Locked";
    /// The password opens no key of the repository (exit 12, as restic).
    pub const WRONG_PASSWORD: &str = "WrongPassword";
    /// A restore asked for a particular snapshot, but no repository is at the location
    /// (exit 10, as restic).
    pub const NO_REPOSITORY: &str = "NoRepository";
    /// The repository exists but holds no snapshot that matches what was asked for.
    pub const NO_SNAPSHOT: &str = "NoSnapshot";
    /// The prefix holds repository objects but not a whole repository (a missing
    /// `config`, say): never initialised over, never read as "no backup".
    pub const DAMAGED_REPOSITORY: &str = "DamagedRepository";
    /// A backup stored a snapshot but left out entries it could not read (exit 3, as
    /// restic): a failure of its own kind.
    pub const PARTIAL: &str = "Partial";
    /// Requests to the storage hung and were cut off after the retries.
    pub const STORAGE_TIMEOUT: &str = "StorageTimeout";
    /// The run was stopped by SIGTERM/SIGINT (Job deleted, deadline reached).
    pub const TERMINATED: &str = "Terminated";
    /// S3 or the local directory failed or refused.
    pub const STORAGE: &str = "Storage";
    /// The source is empty over a non-empty history.
    pub const EMPTY_SOURCE: &str = "EmptySource";
    /// The repository holds another PVC's history (first-backup guard).
    pub const FOREIGN_HISTORY: &str = "ForeignHistory";
    /// The restore target is not empty.
    pub const TARGET_NOT_EMPTY: &str = "TargetNotEmpty";
    /// Anything else.
    pub const FAILED: &str = "Failed";
}

impl RunResult {
    /// JSON that fits a termination message (the error is shortened if needed).
    pub fn to_line(&self) -> String {
        let mut r = self.clone();
        loop {
            let line = serde_json::to_string(&r).expect("result serializes");
            match &mut r.error {
                Some(e) if line.len() > TERMINATION_MESSAGE_MAX && e.len() > 16 => {
                    let keep = e
                        .len()
                        .saturating_sub(line.len() - TERMINATION_MESSAGE_MAX + 3);
                    let mut cut = keep.min(e.len());
                    while !e.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    e.truncate(cut);
                    e.push_str("...");
                }
                _ => return line,
            }
        }
    }

    pub fn write(&self, file: Option<&Path>) {
        let line = self.to_line();
        println!("{line}");
        if let Some(p) = file
            && let Err(e) = std::fs::write(p, &line)
        {
            tracing::warn!(path = %p.display(), error = %e, "could not write the result file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_fit_the_termination_message() {
        let r = RunResult {
            operation: "backup".into(),
            error: Some("é".repeat(5000)),
            ..Default::default()
        };
        let line = r.to_line();
        assert!(line.len() <= TERMINATION_MESSAGE_MAX, "{}", line.len());
        let back: RunResult = serde_json::from_str(&line).unwrap();
        assert!(back.error.unwrap().ends_with("..."));
    }
}
