//! `stowage-mover restore`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustic_core::repofile::{Node, NodeType, SnapshotFile};
use rustic_core::{IndexedFull, LocalDestination, LsOptions, Repository, RestoreOptions};
use stowage_common::repo::RepoAccess;
use stowage_common::{Error, locks};

use crate::progress::{LogProgressBars, human_bytes};
use crate::report::RunResult;
use crate::select::{self, Selector};
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

pub fn run(access: &RepoAccess, plan: &RestorePlan) -> Result<RunResult> {
    let started = Instant::now();
    let target = &plan.target;
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
        // What the consumers (prewarm) compare with the repository they planned.
        repository: Some(access.location.to_string()),
        ..Default::default()
    };

    let bars = LogProgressBars::new(plan.progress_interval);
    let Some(repo) = access.open(bars)? else {
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

    let snaps = repo.get_all_snapshots().map_err(Error::from_rustic)?;
    let infos: Vec<_> = snaps.iter().map(snap_info).collect();
    let Some(picked) = select::select(&infos, &plan.host, &plan.selector)
        .with_context(|| format!("repository {}", access.location))?
    else {
        tracing::info!(repository = %access.location, "the repository holds no snapshot: nothing to restore");
        lock.release()?;
        result.duration_secs = started.elapsed().as_secs_f64();
        return Ok(result);
    };
    let snap = snaps
        .iter()
        .find(|s| s.id.to_hex().as_str() == picked.id)
        .expect("selected from this list")
        .clone();
    tracing::info!(
        snapshot = %picked.id,
        time = %picked.time,
        host = %picked.host,
        target = %target.display(),
        "restoring snapshot {} of {}",
        &picked.id[..8],
        picked.time
    );

    let repo = repo.to_indexed().map_err(Error::from_rustic)?;
    let node = content_root(&repo, &snap)?;
    let ls = repo
        .ls(&node, &LsOptions::default())
        .map_err(Error::from_rustic)?;
    let dest_str = format!("{}/", target.display());
    let dest = LocalDestination::new(&dest_str, true, false).map_err(Error::from_rustic)?;
    let opts = restore_options(plan.replace, is_root());
    let restore_plan = repo
        .prepare_restore(&opts, ls.clone(), &dest, false)
        .map_err(Error::from_rustic)?;
    let (files, bytes) = (restore_plan.stats.files.restore, restore_plan.restore_size);
    // rustic_core's restore unwraps I/O errors inside its worker pool; turn such a
    // panic into an error that says what happened instead of aborting with a trace.
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
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.restore(restore_plan, &opts, ls_noting, &dest)))
        .map_err(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow!("restore into {} failed while reading or writing data: {what}. The target is incomplete; run the restore again with --replace", target.display())
        })?
        .map_err(Error::from_rustic)?;
    for p in zero_mode.into_inner().unwrap().into_iter().rev() {
        let full = target.join(&p);
        if let Err(e) = std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o0)) {
            tracing::warn!(path = %full.display(), error = %e, "could not restore mode 0");
        }
    }
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
