//! The work on one repository, in this order (each step only when `Work` asks for it:
//! the pass does all, `stowage-gc repo <verb>` one):
//! 1. stale locks are judged (plan::lock_verdict);
//! 2. retention is decided, and held back when it would forget too much at once
//!    (retention::forget_decision);
//! 3. under an exclusive restic lock (refused while any fresh lock — a running backup
//!    or restore — exists): stale locks removed, forgotten snapshots deleted, and the
//!    repository pruned when due (rustic_core's prune; killed at any point, the next
//!    prune finishes the job: new packs and index first, old index and packs last);
//! 4. under a shared lock: the structure check, with a rotating read-data subset, and
//!    a measure of unused data that brings the next prune forward.
//!
//! Synchronous (rustic_core is); run it on a blocking thread.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use rustic_core::{
    CheckOptions, FileType, LimitOption, PruneOptions, ReadSubsetOption, RepoFileInfos,
};
use stowage_common::locks::{self, LockKey};
use stowage_common::repo::{OpenRepo, RepoAccess};
use stowage_common::{Error, tags};

use crate::plan::{self, LockVerdict, LocksContext};
use crate::progress::LogProgress;
use crate::retention::{self, Confirmation, ForgetDecision, ForgetLimit, Rules, Snap};

/// The hold on retention that forgets too much at once, for one repository.
#[derive(Debug, Clone)]
pub struct ForgetGuard {
    pub limit: ForgetLimit,
    pub confirmation: Confirmation,
    /// How to confirm, for the message; `=<count>` follows it (`kubectl -n a annotate
    /// pvc data --overwrite stowage.io/confirm-forget`).
    pub how: String,
}

/// Retention held back by [`ForgetGuard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// What it would forget: (id, time).
    pub would_forget: Vec<(String, Timestamp)>,
    pub total: usize,
    /// What was found and how to confirm.
    pub why: String,
}

/// What to do with one repository (decided by the pass from its state and settings).
#[derive(Debug, Clone)]
pub struct Work {
    /// How the repository is named in logs, Events and metrics.
    pub name: String,
    pub rules: Rules,
    /// Apply `rules` (forget). `false`: snapshots are neither judged nor forgotten.
    pub forget: bool,
    /// Hold retention back when it forgets too much at once (`None`: no hold — `repo
    /// forget --yes`, whose user saw the list).
    pub guard: Option<ForgetGuard>,
    /// Remove stale locks.
    pub unlock: bool,
    /// Prune in this pass (interval reached, or unused data over the threshold).
    pub prune: bool,
    /// Structure check in this pass; `Some((n, m))`: also read pack data subset n of m.
    pub check: Option<Option<(u32, u32)>>,
    /// Measure unused data during the check (0: never).
    pub unused_threshold_percent: u32,
    pub locks: LocksContext,
    pub dry_run: bool,
    pub progress_interval: Duration,
    /// The pass's clock (`--now`): the age of locks is measured against it.
    pub now: Timestamp,
    /// The end of the pass budget: a prune or check not started by then waits for the
    /// next pass (it stays due). `None`: no limit.
    pub deadline: Option<std::time::Instant>,
}

/// A lock that was (or in a dry run would be) removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedLock {
    pub file: String,
    pub holder: String,
    pub why: String,
}

/// What happened to one repository.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub snapshots_before: usize,
    pub snapshots_after: usize,
    /// Forgotten (or in a dry run: to be forgotten) snapshots: (id, time).
    pub forgotten: Vec<(String, Timestamp)>,
    pub locks_removed: Vec<RemovedLock>,
    /// Set when the exclusive work was skipped because someone holds a lock.
    pub busy: Option<String>,
    pub pruned: bool,
    /// Bytes the prune plan removes (dry run: would remove).
    pub prune_plan_bytes: u64,
    /// Repository size before and after (all files).
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Unused bytes measured during the check.
    pub unused_bytes: Option<u64>,
    /// Whether the unused share passed the threshold (prune at the next pass).
    pub prune_wanted: bool,
    /// `Some(findings)` when a check ran; empty findings: clean.
    pub check: Option<Vec<String>>,
    pub checked_read_data: bool,
    /// The snapshot file names after retention, when it was applied in full (not busy,
    /// not a dry run): the listing a later pass compares with.
    pub snapshot_names: Option<Vec<String>>,
    /// When retention forgets more without a new snapshot (manual-backup TTL).
    pub recheck_at: Option<Timestamp>,
    /// A due prune or check was left for the next pass (pass budget used).
    pub deferred: bool,
    /// Retention was held back: nothing forgotten.
    pub blocked: Option<Blocked>,
    /// The confirmation this run used to forget more than the limit.
    pub confirmed: Option<String>,
}

impl Outcome {
    pub fn reclaimed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
    pub fn damaged(&self) -> bool {
        self.check.as_ref().is_some_and(|f| !f.is_empty())
    }
}

fn rustic(e: Box<rustic_core::RusticError>) -> Error {
    Error::from_rustic(e)
}

fn total_size(infos: &RepoFileInfos) -> u64 {
    infos.repo.iter().map(|i| i.size).sum()
}

fn pack_size(infos: &RepoFileInfos) -> u64 {
    infos
        .repo
        .iter()
        .filter(|i| i.tpe == FileType::Pack)
        .map(|i| i.size)
        .sum()
}

/// Retention group of a snapshot: restic's host and paths, plus the volume it came
/// from (so that PVCs sharing one repository never count as one series).
fn group_of(sn: &rustic_core::repofile::SnapshotFile) -> String {
    let tags: Vec<String> = sn.tags.iter().cloned().collect();
    let paths: Vec<String> = sn.paths.iter().cloned().collect();
    format!(
        "{} {}/{}",
        retention::group_key(&sn.hostname, &paths),
        tags::tag_value(&tags, tags::NAMESPACE).unwrap_or(""),
        tags::tag_value(&tags, tags::PVC).unwrap_or("")
    )
}

/// Runs `work` on the repository behind `access`.
pub fn run(access: &RepoAccess, work: &Work) -> Result<Outcome, Error> {
    let progress = LogProgress::new(&work.name, work.progress_interval);
    let repo = access
        .open(progress)?
        .ok_or_else(|| Error::Repository(format!("no repository at {}", work.name)))?;
    let key = LockKey::from_master(&repo.key())?;
    let mut out = Outcome::default();

    // 1. Locks.
    let now = work.now;
    let mut removable = Vec::new();
    let lock_files = if work.unlock {
        locks::list(&access.storage, &key)?
    } else {
        Vec::new()
    };
    for (file, lock) in lock_files {
        match lock {
            Ok(info) => match plan::lock_verdict(&info, now, &work.locks, &locks::pid_alive) {
                LockVerdict::Remove(why) => removable.push(RemovedLock {
                    file,
                    holder: info.describe(),
                    why,
                }),
                LockVerdict::Keep(why) => {
                    tracing::debug!(repository = %work.name, lock = %file, "lock kept: {why}")
                }
            },
            Err(e) => {
                tracing::warn!(repository = %work.name, lock = %file, "unreadable lock file left alone: {e}")
            }
        }
    }

    // 2. Retention.
    let snapshots = repo.get_all_snapshots().map_err(rustic)?;
    out.snapshots_before = snapshots.len();
    let snaps: Vec<Snap> = snapshots
        .iter()
        .map(|sn| Snap {
            // The whole id: the short form of Display could match two snapshots.
            id: sn.id.to_hex().to_string(),
            time: sn.time.timestamp(),
            group: group_of(sn),
        })
        .collect();
    let verdicts = if work.forget {
        retention::decide(&snaps, &work.rules)
    } else {
        Vec::new()
    };
    let mut forget: BTreeMap<String, Timestamp> = verdicts
        .iter()
        .filter(|v| !v.keep)
        .map(|v| (v.id.clone(), v.time))
        .collect();
    let mut confirmed = None;
    if let Some(g) = &work.guard {
        match retention::forget_decision(
            forget.len(),
            snaps.len(),
            &g.limit,
            &g.confirmation,
            &g.how,
        ) {
            ForgetDecision::Proceed => {}
            ForgetDecision::Confirmed(token) => {
                tracing::warn!(repository = %work.name, count = forget.len(), total = snaps.len(), confirmation = %token, "forgetting more than the limit at once: confirmed");
                confirmed = Some(token);
            }
            ForgetDecision::Blocked { total, why, .. } => {
                tracing::warn!(repository = %work.name, "{why}");
                out.blocked = Some(Blocked {
                    would_forget: forget.iter().map(|(i, t)| (i.clone(), *t)).collect(),
                    total,
                    why,
                });
                forget.clear();
            }
        }
    }
    out.forgotten = forget.iter().map(|(i, t)| (i.clone(), *t)).collect();
    out.snapshots_after = out.snapshots_before - forget.len();
    out.recheck_at = retention::next_expiry(&verdicts, &work.rules, work.now);
    // The listing a later pass compares with: only when retention ran in full (a held
    // back one is judged again at every pass, so a confirmation takes effect).
    let kept_names: Option<Vec<String>> = (work.forget && out.blocked.is_none()).then(|| {
        verdicts
            .iter()
            .filter(|v| v.keep)
            .map(|v| v.id.clone())
            .collect()
    });

    let infos = repo.infos_files().map_err(rustic)?;
    out.bytes_before = total_size(&infos);
    out.bytes_after = out.bytes_before;

    if work.dry_run {
        for l in &removable {
            tracing::info!(repository = %work.name, lock = %l.file, "would remove stale lock ({}): {}", l.holder, l.why);
        }
        for (id, t) in &out.forgotten {
            tracing::info!(repository = %work.name, snapshot = %id, time = %t, "would forget snapshot");
        }
        out.locks_removed = removable;
        if work.prune {
            let plan = repo.prune_plan(&prune_options()).map_err(rustic)?;
            let s = plan.stats.size_sum();
            out.prune_plan_bytes = plan.stats.size_to_delete.remove;
            tracing::info!(
                repository = %work.name,
                unused_bytes = s.unused + plan.stats.size_unref,
                "would prune (before forgetting; forgotten snapshots free more)"
            );
        }
        if let Some(subset) = work.check {
            tracing::info!(repository = %work.name, read_data = ?subset, "would check");
        }
        return Ok(out);
    }

    let exclusive_work = !removable.is_empty() || !forget.is_empty() || work.prune;
    if exclusive_work {
        let ignore: Vec<String> = removable.iter().map(|l| l.file.clone()).collect();
        match locks::acquire_except(&access.storage, &key, true, &ignore) {
            Err(Error::Locked(msg)) => {
                tracing::info!(repository = %work.name, "busy, forget and prune wait for the next pass: {msg}");
                out.busy = Some(msg);
                out.forgotten.clear();
                out.snapshots_after = out.snapshots_before;
            }
            Err(e) => return Err(e),
            Ok(guard) => {
                exclusive(
                    &repo, access, work, &removable, &snapshots, &forget, &mut out,
                )?;
                out.locks_removed = removable;
                guard.release()?;
                out.snapshot_names = kept_names;
                if !forget.is_empty() {
                    out.confirmed = confirmed;
                }
            }
        }
    } else {
        out.snapshot_names = kept_names;
    }

    // 3. Check.
    if work.check.is_some() && !in_time(work) {
        out.deferred = true;
        tracing::info!(repository = %work.name, "pass budget used: the check waits for the next pass");
    } else if let Some(subset) = work.check {
        match locks::acquire(&access.storage, &key, false) {
            Err(Error::Locked(msg)) => {
                tracing::info!(repository = %work.name, "busy, check waits for the next pass: {msg}");
                out.busy.get_or_insert(msg);
            }
            Err(e) => return Err(e),
            Ok(guard) => {
                check(&repo, work, subset, &mut out)?;
                guard.release()?;
            }
        }
    }
    Ok(out)
}

/// Whether a prune or check may still start (before the pass's deadline).
fn in_time(work: &Work) -> bool {
    work.deadline.is_none_or(|d| std::time::Instant::now() < d)
}

fn prune_options() -> PruneOptions {
    // Under an exclusive lock nobody else writes: files can go at once (restic's own
    // prune does the same), which also removes leftovers of an interrupted prune.
    PruneOptions::default()
        .instant_delete(true)
        .max_unused(LimitOption::Percentage(0))
        .keep_delete(jiff::Span::new())
}

fn exclusive(
    repo: &OpenRepo,
    access: &RepoAccess,
    work: &Work,
    removable: &[RemovedLock],
    snapshots: &[rustic_core::repofile::SnapshotFile],
    forget: &BTreeMap<String, Timestamp>,
    out: &mut Outcome,
) -> Result<(), Error> {
    for l in removable {
        locks::remove(&access.storage, &l.file)?;
        tracing::warn!(repository = %work.name, lock = %l.file, holder = %l.holder, "removed stale lock: {}", l.why);
    }
    if !forget.is_empty() {
        let ids: Vec<_> = snapshots
            .iter()
            .filter(|s| forget.contains_key(&s.id.to_hex().to_string()))
            .map(|s| s.id)
            .collect();
        tracing::info!(repository = %work.name, count = ids.len(), "forgetting snapshots");
        repo.delete_snapshots(&ids).map_err(rustic)?;
    }
    if work.prune && !in_time(work) {
        out.deferred = true;
        tracing::info!(repository = %work.name, "pass budget used: the prune waits for the next pass");
    } else if work.prune {
        let opts = prune_options();
        let plan = repo.prune_plan(&opts).map_err(rustic)?;
        let st = &plan.stats;
        out.prune_plan_bytes = st.size_to_delete.remove;
        tracing::info!(
            repository = %work.name,
            packs_to_remove = st.packs_to_delete.remove,
            packs_to_repack = st.packs.repack,
            bytes_to_remove = st.size_to_delete.remove,
            unreferenced_packs = st.packs_unref,
            "pruning"
        );
        repo.prune(&opts, plan).map_err(rustic)?;
        out.pruned = true;
        let infos = repo.infos_files().map_err(rustic)?;
        out.bytes_after = total_size(&infos);
        tracing::info!(
            repository = %work.name,
            reclaimed_bytes = out.reclaimed(),
            size_bytes = out.bytes_after,
            data_bytes = pack_size(&infos),
            "pruned"
        );
    }
    Ok(())
}

/// The storage failure behind a check finding (its source chain holds a rustic_core
/// error of the backend), if that is what it is.
fn storage_failure(finding: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = finding.source();
    while let Some(s) = source {
        let inner = s.downcast_ref::<rustic_core::RusticError>().or_else(|| {
            s.downcast_ref::<Box<rustic_core::RusticError>>()
                .map(|b| &**b)
        });
        if let Some(r) = inner {
            return Error::storage_failure(r);
        }
        source = s.source();
    }
    None
}

fn check(
    repo: &OpenRepo,
    work: &Work,
    subset: Option<(u32, u32)>,
    out: &mut Outcome,
) -> Result<(), Error> {
    let mut opts = CheckOptions::default();
    if let Some(s) = subset {
        opts = opts
            .read_data(true)
            .read_data_subset(ReadSubsetOption::IdSubSet(s));
        out.checked_read_data = true;
    }
    tracing::info!(repository = %work.name, read_data = ?subset, "checking");
    // A read of the storage that failed beyond the retries says nothing about the
    // repository: when that is all the check found, the pass fails with the storage's
    // error instead of calling the repository damaged (which blocks its prunes).
    let unreadable = |what: &str| {
        Error::Storage(format!(
            "the check could not read the repository: {what}. Nothing was found damaged; \
             the next pass checks again"
        ))
    };
    // rustic_core's check can panic after a failed read ("index still in use" while its
    // workers wind down): an error of this pass, not a crash and not damage.
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.check(opts)))
        .map_err(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Error::Repository(format!(
                "the check did not finish: rustic_core failed internally ({what}), as it may \
                 after a failed read of the storage. Nothing was marked damaged; the next pass \
                 checks again"
            ))
        })?;
    let findings: Vec<String> = match checked {
        Ok(results) => {
            let errors: Vec<_> = results
                .0
                .iter()
                // rustic_core does not export the level's type; its Debug name is stable.
                .filter(|(level, _)| format!("{level:?}") == "Error")
                .map(|(_, e)| e)
                .collect();
            let failures: Vec<String> = errors.iter().filter_map(|e| storage_failure(*e)).collect();
            if !errors.is_empty() && failures.len() == errors.len() {
                return Err(unreadable(&failures[0]));
            }
            errors.iter().map(|e| e.to_string()).collect()
        }
        Err(e) => match rustic(e) {
            Error::Storage(m) | Error::StorageTimeout(m) => return Err(unreadable(&m)),
            other => vec![other.to_string()],
        },
    };
    if findings.is_empty() {
        tracing::info!(repository = %work.name, "check: no errors");
    } else {
        for f in &findings {
            tracing::error!(repository = %work.name, "check: {f}");
        }
    }
    out.check = Some(findings);
    if work.unused_threshold_percent > 0 && !out.damaged() {
        let plan = repo.prune_plan(&prune_options()).map_err(rustic)?;
        let s = plan.stats.size_sum();
        let unused = s.unused + plan.stats.size_unref;
        let total = s.used + unused;
        out.unused_bytes = Some(unused);
        out.prune_wanted =
            total > 0 && unused * 100 >= u64::from(work.unused_threshold_percent) * total;
        tracing::info!(repository = %work.name, unused_bytes = unused, total_bytes = total, prune_next_pass = out.prune_wanted, "unused data measured");
    }
    Ok(())
}
