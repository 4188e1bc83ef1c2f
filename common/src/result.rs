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
}

/// Values of [`RunResult::reason`].
pub mod reason {
    /// Bad configuration (exit 2).
    pub const CONFIG: &str = "Config";
    /// Another process holds a lock (exit 3).
    pub const LOCKED: &str = "Locked";
    /// The password opens no key of the repository.
    pub const WRONG_PASSWORD: &str = "WrongPassword";
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
