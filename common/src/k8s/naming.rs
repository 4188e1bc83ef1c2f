//! Deterministic names for the objects stowage creates. A re-run of a pass computes the
//! same name for the same work, so Kubernetes' AlreadyExists tells it the work was
//! started; a hash of the full identity keeps names unique when long names are cut.

use sha2::{Digest, Sha256};

/// Kubernetes limits Job names to 63 characters; the Job controller appends
/// `-xxxxx` for its pods, and pod names end up in labels (63 max), so stay below.
pub const MAX_JOB_NAME: usize = 52;

/// What a mover Job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Backup,
    Restore,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Backup => "backup",
            Operation::Restore => "restore",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Name of the mover Job (and of its per-run Secret) for one piece of work: an
/// operation on the PVC with this UID, for this slot (the scheduled time served, or the
/// `backup-now` value). Readable prefix, then a hash of the whole identity.
pub fn mover_job_name(op: Operation, pvc_name: &str, pvc_uid: &str, slot: &str) -> String {
    let hash = short_hash(&[op.as_str(), pvc_uid, slot]);
    compose(
        &format!("stowage-{}", op.as_str()),
        pvc_name,
        &hash,
        MAX_JOB_NAME,
    )
}

/// `<prefix>-<middle cut to fit>-<hash>`, a valid DNS-1123 label of at most `max`
/// characters.
pub fn compose(prefix: &str, middle: &str, hash: &str, max: usize) -> String {
    let room = max.saturating_sub(prefix.len() + hash.len() + 2);
    let mut mid: String = sanitize(middle).chars().take(room).collect();
    while mid.ends_with('-') {
        mid.pop();
    }
    if mid.is_empty() {
        format!("{prefix}-{hash}")
    } else {
        format!("{prefix}-{mid}-{hash}")
    }
}

/// Lower-case alphanumerics and `-` only (PVC names may contain `.`).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// 10 hex characters (40 bits) of SHA-256 over the parts, separated so that
/// ("ab","c") and ("a","bc") differ.
pub fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Repository of a PVC under the base URL: `<base>/<namespace>/<pvc>` (the VolSync
/// layout when the prefix is empty).
pub fn repository_for(base: &str, namespace: &str, pvc: &str) -> String {
    format!("{}/{namespace}/{pvc}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn job_names_are_deterministic_readable_and_short() {
        let a = mover_job_name(
            Operation::Backup,
            "data-pg-0",
            "uid-1",
            "2026-11-23T03:00:00Z",
        );
        assert_eq!(
            a,
            mover_job_name(
                Operation::Backup,
                "data-pg-0",
                "uid-1",
                "2026-11-23T03:00:00Z"
            )
        );
        assert!(a.starts_with("stowage-backup-data-pg-0-"), "{a}");
        assert!(valid_label(&a), "{a}");
        assert_eq!(a.len(), "stowage-backup-data-pg-0-".len() + 10);
    }

    #[test]
    fn longest_names_fit_and_stay_distinct() {
        // PVC names may be 253 characters, with dots.
        let long_a = format!("{}.a", "x".repeat(250));
        let long_b = format!("{}.b", "x".repeat(250));
        let a = mover_job_name(Operation::Backup, &long_a, "u1", "s");
        let b = mover_job_name(Operation::Backup, &long_b, "u2", "s");
        assert!(valid_label(&a) && valid_label(&b), "{a} {b}");
        assert!(a.len() <= MAX_JOB_NAME && b.len() <= MAX_JOB_NAME);
        assert_ne!(a, b);
        // Names that differ only past the cut still differ (hash of the identity).
        let c = mover_job_name(Operation::Backup, &long_a, "u1", "t");
        assert_ne!(a, c);
        assert_ne!(
            mover_job_name(Operation::Backup, "p", "u1", "s"),
            mover_job_name(Operation::Restore, "p", "u1", "s")
        );
    }

    #[test]
    fn odd_names_are_sanitized() {
        let n = mover_job_name(Operation::Restore, "Data.PG--", "u", "s");
        assert!(n.starts_with("stowage-restore-data-pg-"), "{n}");
        assert!(valid_label(&n), "{n}");
        let n = mover_job_name(Operation::Restore, "---", "u", "s");
        assert!(valid_label(&n), "{n}");
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(short_hash(&["ab", "c"]), short_hash(&["a", "bc"]));
    }

    #[test]
    fn repository_layout() {
        assert_eq!(
            repository_for("s3:https://s3.lan/volsync-backups/", "db", "data"),
            "s3:https://s3.lan/volsync-backups/db/data"
        );
    }
}
