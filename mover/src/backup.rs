//! `stowage-mover backup`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustic_core::{BackupOptions, SnapshotOptions};
use stowage_common::repo::RepoAccess;
use stowage_common::{Error, locks, tags};

use crate::progress::{LogProgressBars, human_bytes};
use crate::report::{RunResult, reason};
use crate::select::{self, Selector};
use crate::snapshots::snap_info;
use crate::source::{self, VolumeSource};

/// What to back up and how to label it.
#[derive(Debug, Clone)]
pub struct BackupPlan {
    pub source: PathBuf,
    /// Snapshot host and path: fixed per repository, never the pod's name.
    pub host: String,
    pub snapshot_path: String,
    pub tags: Vec<String>,
    pub excludes: Vec<String>,
    pub allow_empty: bool,
    /// The PVC's UID when known: the first-backup guard compares it with the history.
    pub pvc_uid: Option<String>,
    /// Let this PVC continue a repository that holds another PVC's history.
    pub adopt_history: bool,
    pub progress_interval: Duration,
}

/// The first-backup guard's refusal.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing the first backup of PVC {pvc_uid}: the repository holds another volume's history \
     (newest snapshot {snapshot} of {origin}, {time}) and no snapshot of this PVC. This happens \
     when an app comes up on a new, empty or re-initialised volume, e.g. after a cluster rebuild \
     without restore. If this volume's data is the one to keep, allow it: annotate the PVC \
     stowage.io/adopt-repository=true (mover: STOWAGE_ADOPT_HISTORY=true)"
)]
pub struct ForeignHistoryRefused {
    pub pvc_uid: String,
    pub snapshot: String,
    pub origin: String,
    pub time: String,
}

/// The empty-source guard's refusal (its own type so callers and tests can tell it).
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to back up {path}: it is empty{how}, while the repository's latest snapshot \
     {snapshot} holds data. A volume that came up empty must not become the newest backup. If \
     the volume really is meant to be empty now, allow it: --allow-empty \
     (STOWAGE_ALLOW_EMPTY_SOURCE=true)"
)]
pub struct EmptySourceRefused {
    pub path: String,
    pub snapshot: String,
    /// What made it empty when the directory itself is not ("after the excludes ...").
    pub how: String,
}

/// The message of a partial backup: what was stored, and what was left out.
pub fn partial_message(snapshot: &str, skipped: u64, first: &[String]) -> String {
    format!(
        "backup incomplete: snapshot {snapshot} was stored, but {skipped} entr{} could not be read \
         and {} missing from it (first: {}). Make them readable for the mover (permissions, a \
         file that vanished or an I/O error: see the warnings above) and back up again",
        if skipped == 1 { "y" } else { "ies" },
        if skipped == 1 { "is" } else { "are" },
        first.join(", ")
    )
}

pub fn run(access: &RepoAccess, plan: &BackupPlan) -> Result<RunResult> {
    let started = Instant::now();
    let source = check_source(&plan.source)?;
    let bars = LogProgressBars::new(plan.progress_interval);
    let (repo, created) = access.open_or_init(bars.clone())?;
    let key = locks::LockKey::from_master(&repo.key())?;
    let lock = locks::acquire(&access.storage, &key, false)?;

    // Damaged snapshot files are skipped with a warning (one listing for every command).
    let listing = stowage_common::repo::list_snapshots(&repo)?;
    listing.warn(&access.location);
    let snaps = listing.snapshots;
    let infos: Vec<_> = snaps.iter().map(snap_info).collect();
    if let Some(uid) = plan.pvc_uid.as_deref()
        && !plan.adopt_history
        && let Some(newest) = select::foreign_history(&infos, uid)
    {
        let tag = |k| tags::tag_value(&newest.tags, k).unwrap_or("?").to_string();
        return Err(ForeignHistoryRefused {
            pvc_uid: uid.to_string(),
            snapshot: newest.id[..8].to_string(),
            origin: format!(
                "{}/{} uid {}",
                tag(tags::NAMESPACE),
                tag(tags::PVC),
                tag(tags::PVC_UID)
            ),
            time: newest.time.to_string(),
        }
        .into());
    }
    let repo = repo.to_indexed_ids().map_err(Error::from_rustic)?;

    let src = VolumeSource::new(&source, &plan.excludes, bars.files.clone())
        .map_err(Error::from_rustic)?;
    // The guard judges what would be stored: excludes can empty a full directory.
    if !created && src.stores_nothing() {
        let latest = select::select(&infos, &plan.host, &Selector::Latest)?;
        if let Some(latest) = latest {
            let snap = snaps
                .iter()
                .find(|s| s.id.to_hex().as_str() == latest.id)
                .expect("listed");
            let has_data = !repo
                .get_tree(&snap.tree)
                .map_err(Error::from_rustic)?
                .nodes
                .is_empty();
            if select::refuse_empty_source(true, has_data, plan.allow_empty) {
                let raw_empty = source::is_empty(&source)
                    .with_context(|| format!("cannot read {}", source.display()))?;
                return Err(EmptySourceRefused {
                    path: source.display().to_string(),
                    snapshot: latest.id[..8].to_string(),
                    how: match (raw_empty, plan.excludes.is_empty()) {
                        (true, _) => String::new(),
                        (false, true) => " of files (it holds only directories)".into(),
                        (false, false) => format!(
                            " of files after the excludes ({})",
                            plan.excludes.join(", ")
                        ),
                    },
                }
                .into());
            }
        }
    }

    let mut snap_opts = SnapshotOptions::default().host(plan.host.clone());
    if !plan.tags.is_empty() {
        snap_opts = snap_opts
            .add_tags(&plan.tags.join(","))
            .map_err(Error::from_rustic)?;
    }
    let snap = snap_opts.to_snapshot().map_err(Error::from_rustic)?;
    let skipped = src.skipped();
    tracing::info!(source = %source.display(), repository = %access.location, host = %plan.host, "backup started");
    let snap = repo
        .archive(
            &BackupOptions::default(),
            &src,
            snap,
            &[PathBuf::from(&plan.snapshot_path)],
        )
        .map_err(Error::from_rustic)?;
    access.storage.flush()?;
    lock.release()?;

    let summary = snap.summary.clone().unwrap_or_default();
    let stats = access.storage.stats();
    let (skipped, skipped_paths) = skipped.get();
    let id = snap.id.to_hex().to_string();
    let partial = (skipped > 0).then(|| partial_message(&id[..8], skipped, &skipped_paths));
    let result = RunResult {
        operation: "backup".into(),
        ok: partial.is_none(),
        reason: partial.is_some().then(|| reason::PARTIAL.to_string()),
        error: partial.clone(),
        skipped,
        skipped_paths,
        snapshot: Some(id),
        repository: Some(access.location.to_string()),
        files: summary.total_files_processed,
        bytes: summary.total_bytes_processed,
        added_bytes: summary.data_added,
        uploaded_bytes: stats.as_ref().map_or(0, |s| s.uploaded()),
        downloaded_bytes: stats.as_ref().map_or(0, |s| s.downloaded()),
        duration_secs: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    tracing::info!(
        snapshot = %&*snap.id.to_hex(),
        files = summary.total_files_processed,
        new_files = summary.files_new,
        changed_files = summary.files_changed,
        unchanged_files = summary.files_unmodified,
        bytes = summary.total_bytes_processed,
        added = summary.data_added,
        added_packed = summary.data_added_packed,
        uploaded = result.uploaded_bytes,
        "backup done: snapshot {} of {} files ({}), {} new data ({} stored) in {:.1}s",
        &snap.id.to_hex()[..8],
        summary.total_files_processed,
        human_bytes(summary.total_bytes_processed),
        human_bytes(summary.data_added),
        human_bytes(summary.data_added_packed),
        result.duration_secs
    );
    if let Some(message) = partial {
        tracing::error!(skipped, "{message}");
    }
    Ok(result)
}

fn check_source(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot back up {}: it does not exist or is not readable",
            path.display()
        )
    })?;
    if !meta.is_dir() {
        bail!(
            "cannot back up {}: not a directory (a mover backs up a mounted volume)",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}
