//! `stowage-mover restore`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustic_core::repofile::{Node, NodeType, SnapshotFile};
use rustic_core::{IndexedFull, LocalDestination, LsOptions, Repository, RestoreOptions};
use stowage_common::repo::{DamagedSnapshot, RepoAccess, damaged_summary, list_snapshots};
use stowage_common::{Error, locks};

use crate::progress::{LogProgressBars, human_bytes};
use crate::report::RunResult;
use crate::select::{self, SelectError, Selector, SnapInfo};
use crate::snapshots::snap_info;
use crate::source;

#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub target: PathBuf,
    pub selector: Selector,
    pub host: String,
    pub replace: bool,
    pub progress_interval: Duration,
}

/// A refusal to write into a target that holds data.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to restore into {0}: it is not empty. Restore into an empty directory, or pass \
     --replace to make its content equal to the snapshot (files not in the snapshot are deleted)"
)]
pub struct TargetNotEmpty(pub String);

/// A restore that asked for a particular snapshot found no repository (exit 10, as
/// restic): never an empty success, which would hand over an empty volume.
#[derive(Debug, thiserror::Error)]
#[error(
    "no repository at {location}: cannot restore {asked}. Check the repository location \
     (RESTIC_REPOSITORY / stowage.io/repository) and that the storage holds it; only a \
     restore of the latest snapshot, if any (no --snapshot, no --as-of), may find none"
)]
pub struct NoRepository {
    pub location: String,
    pub asked: String,
}

/// The repository holds no snapshot that matches what the restore asked for.
#[derive(Debug, thiserror::Error)]
#[error("repository {location}: {detail}")]
pub struct NoSnapshot {
    pub location: String,
    pub detail: String,
}

/// Context of a failure after the snapshot was chosen: the failure result names it.
#[derive(Debug, Clone)]
pub struct RestoringSnapshot(pub String);

impl std::fmt::Display for RestoringSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "restoring snapshot {}", &self.0[..self.0.len().min(8)])
    }
}

/// What the selector names, for messages.
fn asked(sel: &Selector) -> String {
    match sel {
        Selector::Latest => "the latest snapshot".into(),
        Selector::Id(id) => format!("snapshot {id}"),
        Selector::AsOf(t) => format!("the snapshot as of {t}"),
    }
}

/// Outcome of choosing the snapshot, as a pure decision over the listing.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice<'a> {
    Restore(&'a SnapInfo),
    /// The open "latest, if any" restore of a repository without any snapshot.
    Nothing,
}

/// Chooses the snapshot to restore from the readable snapshots and the ids of damaged
/// snapshot files. Only `Latest` over a repository without any snapshot file may
/// restore nothing; an id or time that matches nothing is [`NoSnapshot`], a damaged
/// snapshot that was asked for (or that leaves nothing readable) is damage.
pub fn choose<'a>(
    infos: &'a [SnapInfo],
    damaged: &[DamagedSnapshot],
    host: &str,
    sel: &Selector,
    location: &str,
) -> Result<Choice<'a>> {
    if let Selector::Id(id) = sel
        && !infos
            .iter()
            .any(|s| s.id.starts_with(&id.to_ascii_lowercase()))
        && let Some(d) = damaged
            .iter()
            .find(|d| d.id.starts_with(&id.to_ascii_lowercase()))
    {
        return Err(Error::Damaged(format!(
            "repository {location}: snapshot {id} is damaged: snapshots/{} cannot be read ({}). \
             Restore another snapshot (`stowage-mover snapshots` lists the readable ones) or \
             put the file back from a copy of the bucket",
            d.id, d.error
        ))
        .into());
    }
    match select::select(infos, host, sel) {
        Ok(Some(s)) => Ok(Choice::Restore(s)),
        Ok(None) if !damaged.is_empty() => Err(Error::Damaged(format!(
            "repository {location}: no snapshot can be read ({}); nothing was restored. Put \
             the snapshot files back from a copy of the bucket (`restic check` lists them)",
            damaged_summary(damaged).unwrap_or_default()
        ))
        .into()),
        Ok(None) if *sel == Selector::Latest => Ok(Choice::Nothing),
        Ok(None) => Err(NoSnapshot {
            location: location.to_string(),
            detail: format!("holds no snapshot: cannot restore {}", asked(sel)),
        }
        .into()),
        Err(e @ SelectError::Ambiguous(..)) => {
            Err(anyhow::Error::new(e).context(format!("repository {location}")))
        }
        Err(e) => Err(NoSnapshot {
            location: location.to_string(),
            detail: e.to_string(),
        }
        .into()),
    }
}

pub fn run(access: &RepoAccess, plan: &RestorePlan) -> Result<RunResult> {
    let started = Instant::now();
    let target = &plan.target;
    let location = access.location.to_string();
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create the restore target {}", target.display()))?;
    if !target.is_dir() {
        bail!("cannot restore into {}: not a directory", target.display());
    }
    // Checked before anything is read or written.
    if !plan.replace
        && !source::is_empty(target).with_context(|| format!("cannot read {}", target.display()))?
    {
        return Err(TargetNotEmpty(target.display().to_string()).into());
    }
    let mut result = RunResult {
        operation: "restore".into(),
        ok: true,
        restored: Some(false),
        repository: Some(location.clone()),
        ..Default::default()
    };

    let bars = LogProgressBars::new(plan.progress_interval);
    let Some(repo) = access.open(bars)? else {
        if plan.selector != Selector::Latest {
            return Err(NoRepository {
                location,
                asked: asked(&plan.selector),
            }
            .into());
        }
        tracing::info!(
            repository = %access.location,
            "no repository at {}: nothing to restore (a first install has no backup yet); {} stays empty",
            access.location,
            target.display()
        );
        result.duration_secs = started.elapsed().as_secs_f64();
        return Ok(result);
    };
    let key = locks::LockKey::from_master(&repo.key())?;
    let lock = locks::acquire(&access.storage, &key, false)?;

    let listing = list_snapshots(&repo)?;
    listing.warn(&access.location);
    let infos: Vec<_> = listing.snapshots.iter().map(snap_info).collect();
    let picked = match choose(
        &infos,
        &listing.damaged,
        &plan.host,
        &plan.selector,
        &location,
    )? {
        Choice::Restore(p) => p,
        Choice::Nothing => {
            tracing::info!(repository = %access.location, "the repository holds no snapshot: nothing to restore");
            lock.release()?;
            result.duration_secs = started.elapsed().as_secs_f64();
            return Ok(result);
        }
    };
    let snap = listing
        .snapshots
        .iter()
        .find(|s| s.id.to_hex().as_str() == picked.id)
        .expect("selected from this list")
        .clone();
    if let Some(skipped) = listing.damaged_summary() {
        tracing::warn!(
            repository = %access.location,
            "{skipped}; restoring snapshot {} of the readable ones",
            &picked.id[..8]
        );
    }
    tracing::info!(
        snapshot = %picked.id,
        time = %picked.time,
        host = %picked.host,
        target = %target.display(),
        "restoring snapshot {} of {}",
        &picked.id[..8],
        picked.time
    );
    let (files, bytes) = restore_snapshot(access, repo, &snap, plan)
        .context(RestoringSnapshot(picked.id.clone()))?;
    lock.release()?;

    let stats = access.storage.stats();
    result.snapshot = Some(picked.id.clone());
    result.restored = Some(true);
    result.files = files;
    result.bytes = bytes;
    result.downloaded_bytes = stats.as_ref().map_or(0, |s| s.downloaded());
    result.duration_secs = started.elapsed().as_secs_f64();
    tracing::info!(
        snapshot = %picked.id,
        files,
        bytes,
        "restore done: {} files ({}) from snapshot {} in {:.1}s",
        files,
        human_bytes(bytes),
        &picked.id[..8],
        result.duration_secs
    );
    Ok(result)
}

/// Writes the snapshot's content into the target; returns (files written, bytes
/// written).
fn restore_snapshot(
    access: &RepoAccess,
    repo: stowage_common::repo::OpenRepo,
    snap: &SnapshotFile,
    plan: &RestorePlan,
) -> Result<(u64, u64)> {
    let target = &plan.target;
    let repo = repo.to_indexed().map_err(Error::from_rustic)?;
    let node = content_root(&repo, snap)?;
    let ls = repo
        .ls(&node, &LsOptions::default())
        .map_err(Error::from_rustic)?;
    let dest_str = format!("{}/", target.display());
    let dest = LocalDestination::new(&dest_str, true, false).map_err(Error::from_rustic)?;
    let opts = restore_options(plan.replace, is_root());
    let restore_plan = repo
        .prepare_restore(&opts, ls.clone(), &dest, false)
        .map_err(Error::from_rustic)?;
    // Files written anew and files whose content differed from the snapshot.
    let files = restore_plan.stats.files.restore + restore_plan.stats.files.modify;
    let bytes = restore_plan.restore_size;
    // restic omits a mode of 0 from its trees (Go `omitempty`) and reads the absence
    // back as 0; rustic_core reads it as "unknown" and leaves the default mode. Note
    // such entries and give them mode 0 at the end, as restic would.
    let zero_mode = std::sync::Mutex::new(Vec::new());
    let ls_noting = ls.inspect(|item| {
        if let Ok((p, n)) = item
            && n.meta.mode.is_none()
            && matches!(n.node_type, NodeType::File | NodeType::Dir)
        {
            zero_mode.lock().unwrap().push(p.clone());
        }
    });
    // rustic_core's restore reports failures as errors (vendored patch); a panic left
    // anywhere in it still becomes one line, not a debug dump.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        repo.restore(restore_plan, &opts, ls_noting, &dest)
    }))
    .map_err(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        anyhow!(
            "restore into {} failed: {}. {}",
            target.display(),
            first_line(&what),
            incomplete(target)
        )
    })?
    .map_err(|e| restore_failure(e, access, target))?;
    for p in zero_mode.into_inner().unwrap().into_iter().rev() {
        let full = target.join(&p);
        if let Err(e) = std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o0)) {
            tracing::warn!(path = %full.display(), error = %e, "could not restore mode 0");
        }
    }
    Ok((files, bytes))
}

/// The first line of a message, at most 300 characters (a panic payload may hold a
/// whole debug dump).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

fn incomplete(target: &Path) -> String {
    format!(
        "The target {} is incomplete: files may exist at full size with parts of their content \
         missing (holes); do not use it. Run the restore again with --replace once the cause is \
         fixed",
        target.display()
    )
}

/// A failed restore in one line that names the pack or file and what to do.
pub fn restore_failure(
    e: Box<rustic_core::RusticError>,
    access: &RepoAccess,
    target: &Path,
) -> anyhow::Error {
    use rustic_core::{RESTORE_PACK_DAMAGED, RESTORE_PACK_UNREADABLE};
    let damaged = e.is_code(RESTORE_PACK_DAMAGED);
    let unreadable = e.is_code(RESTORE_PACK_UNREADABLE);
    let storage = Error::storage_failure(&e).is_some();
    let line = Error::from_rustic(e).to_string();
    let left = incomplete(target);
    let check = "run `restic check --read-data` (or `stowage-gc check`) on it to see what is lost, \
                 or restore another snapshot";
    let local = matches!(access.storage, stowage_common::backend::Storage::Local(_));
    if damaged || (unreadable && (local || !storage)) {
        return Error::Damaged(format!(
            "repository {} is damaged: {line}; {check}. {left}",
            access.location
        ))
        .into();
    }
    if unreadable {
        return Error::Storage(format!(
            "repository {}: {line}. If the storage answers again, run the restore again; if the \
             pack is gone, {check}. {left}",
            access.location
        ))
        .into();
    }
    anyhow!("restore into {} failed: {line}. {left}", target.display())
}

fn is_root() -> bool {
    locks::process_owner().is_some_and(|(uid, _)| uid == 0)
}

/// Restore options: numeric ids (container user names mean nothing), ownership only
/// when running as root (anyone else could only chown to themselves), sparse files
/// kept sparse.
pub fn restore_options(replace: bool, root: bool) -> RestoreOptions {
    let mut opts = RestoreOptions::default();
    opts.delete = replace;
    opts.numeric_id = true;
    opts.no_ownership = !root;
    // Existing files are read and compared, not trusted by size and time: a replace
    // must leave content equal to the snapshot (bit rot, a `cp -p` keep both).
    opts.verify_existing = replace;
    // The filesystem's own directory, never in a snapshot: fsck expects it.
    opts.keep_lost_found = true;
    // rustic_core does not export its `SparseRestore` type; the field's type is known,
    // so its serde form names the variant.
    opts.sparse = serde_json::from_str("\"ByContent\"").ok();
    opts
}

/// The node whose content is the volume. Snapshots written like VolSync's (`restic
/// backup .`) and by stowage hold the content at the root; `restic backup /data` nests
/// it under `data/`: descend when the tree is exactly that chain.
fn content_root<S: IndexedFull>(repo: &Repository<S>, snap: &SnapshotFile) -> Result<Node> {
    let root = repo
        .node_from_snapshot_and_path(snap, "")
        .map_err(Error::from_rustic)?;
    let paths: Vec<_> = snap.paths.iter().collect();
    if paths.len() != 1 {
        return Ok(root);
    }
    let comps: Vec<String> = Path::new(paths[0])
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let mut tree_id = snap.tree;
    let mut node = root.clone();
    for c in &comps {
        let tree = repo.get_tree(&tree_id).map_err(Error::from_rustic)?;
        match tree.nodes.as_slice() {
            [only] if only.is_dir() && only.name == *c => match only.subtree {
                Some(sub) => {
                    tree_id = sub;
                    node = only.clone();
                }
                None => return Ok(root),
            },
            _ => return Ok(root),
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, time: &str) -> SnapInfo {
        SnapInfo {
            id: id.into(),
            time: time.parse().unwrap(),
            host: "volsync".into(),
            paths: vec!["/data".into()],
            tags: vec![],
            files: Some(1),
            bytes: Some(1),
        }
    }

    fn damaged(id: &str) -> DamagedSnapshot {
        DamagedSnapshot {
            id: id.into(),
            error: "does not decrypt".into(),
        }
    }

    fn reason(e: &anyhow::Error) -> &'static str {
        crate::failure_reason(e)
    }

    #[test]
    fn only_the_open_latest_restore_of_an_empty_repository_restores_nothing() {
        let l = "local:/r";
        assert_eq!(
            choose(&[], &[], "volsync", &Selector::Latest, l).unwrap(),
            Choice::Nothing
        );
        let e = choose(&[], &[], "volsync", &Selector::Id("ab12".into()), l).unwrap_err();
        assert_eq!(reason(&e), "NoSnapshot", "{e:#}");
        let t = Selector::AsOf("2026-11-22T00:00:00Z".parse().unwrap());
        let e = choose(&[], &[], "volsync", &t, l).unwrap_err();
        assert_eq!(reason(&e), "NoSnapshot", "{e:#}");
        assert!(format!("{e:#}").contains("holds no snapshot"), "{e:#}");
    }

    #[test]
    fn a_snapshot_that_is_not_there_is_no_snapshot() {
        let s = [snap("aaaa1111", "2026-11-20T10:00:00Z")];
        let e = choose(&s, &[], "volsync", &Selector::Id("dead".into()), "x").unwrap_err();
        assert_eq!(reason(&e), "NoSnapshot");
        let t = Selector::AsOf("2001-01-01T00:00:00Z".parse().unwrap());
        let e = choose(&s, &[], "volsync", &t, "x").unwrap_err();
        assert_eq!(reason(&e), "NoSnapshot");
        assert!(
            format!("{e:#}").contains("no snapshot at or before"),
            "{e:#}"
        );
    }

    #[test]
    fn damaged_snapshot_files_never_block_the_others() {
        let s = [
            snap("aaaa1111", "2026-11-20T10:00:00Z"),
            snap("bbbb2222", "2026-11-21T10:00:00Z"),
        ];
        let d = [damaged("cccc3333")];
        assert_eq!(
            choose(&s, &d, "volsync", &Selector::Latest, "x").unwrap(),
            Choice::Restore(&s[1])
        );
        assert_eq!(
            choose(&s, &d, "volsync", &Selector::Id("aaaa".into()), "x").unwrap(),
            Choice::Restore(&s[0])
        );
        // Asking for the damaged one says so.
        let e = choose(&s, &d, "volsync", &Selector::Id("cccc".into()), "x").unwrap_err();
        assert_eq!(reason(&e), "DamagedRepository");
        assert!(format!("{e:#}").contains("snapshots/cccc3333"), "{e:#}");
        // Nothing readable at all is damage, not a fresh install.
        let e = choose(&[], &d, "volsync", &Selector::Latest, "x").unwrap_err();
        assert_eq!(reason(&e), "DamagedRepository", "{e:#}");
    }

    #[test]
    fn replace_verifies_content_and_keeps_lost_and_found() {
        let o = restore_options(true, false);
        assert!(o.delete && o.verify_existing && o.keep_lost_found);
        let o = restore_options(false, false);
        assert!(!o.delete && o.keep_lost_found);
    }

    #[test]
    fn first_line_cuts_dumps() {
        assert_eq!(first_line("a\nb"), "a");
        assert_eq!(first_line(&"x".repeat(500)).len(), 303);
    }
}
