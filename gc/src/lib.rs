//! stowage-gc: one maintenance pass per CronJob run. Finds every repository, forgets
//! snapshots by the PVC's policy (the newest of every volume always stays), prunes on
//! its interval under an exclusive restic lock, removes stale locks, checks integrity,
//! deletes finished mover Jobs (their per-run Secrets go with them), reports orphans and
//! damage, holds back retention that would forget too much at once. `repo <verb>` does
//! one of these on one repository. `main.rs` only calls [`main`].

pub mod maintain;
pub mod pass;
pub mod plan;
pub mod progress;
pub mod retention;
pub mod state;
pub mod triage;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use jiff::SignedDuration;
use stowage_common::env::GcConfig;
use stowage_common::k8s::policy::Retention;
use stowage_common::repo::RepoAccess;
use stowage_common::{Error, locks, logging, metrics};

#[derive(Debug, Parser)]
#[command(
    name = "stowage-gc",
    version,
    about = "Retention, prune, stale locks, integrity checks and Job cleanup (one pass)",
    long_about = "Retention, prune, stale locks, integrity checks and Job cleanup (one pass).\n\n\
        Without a command (or with `run`): one pass over the cluster's repositories, as the \
        hourly CronJob in the stowage namespace runs it; `kubectl create job --from=cronjob/\
        stowage-gc now` runs one by hand, and a pass may be run again at any time. \
        Repositories are never deleted; the newest snapshot of every volume is always kept; a \
        retention that would forget more than STOWAGE_FORGET_MAX_PERCENT of a repository's \
        snapshots at once is held back until confirmed (Event RetentionBlocked). \
        Configuration comes from STOWAGE_* variables (docs/policies.md, \"Retention and gc\").\n\n\
        `repo <verb>` works on one repository given by RESTIC_REPOSITORY / RESTIC_PASSWORD \
        and the AWS variables, without the cluster: `check` only reads, `forget` only lists \
        unless given --yes, `prune` and `unlock` do one thing each.\n\n\
        Exit status: 0 done, 1 a repository is damaged or something failed (see the log; a \
        pass still maintained the other repositories), 2 bad configuration or usage, 11 \
        (`repo`) the repository is locked by someone else: retry later.",
    after_help = "Examples:\n  \
        stowage-gc --dry-run                                   # what a pass would do\n  \
        stowage-gc --dry-run --now 2026-12-01T00:00:00Z        # ... at another time\n  \
        stowage-gc --confirm-forget volsync-backups/ns/gone=40 # a pass that may forget 40 there\n  \
        stowage-gc repo check --read-data-subset 1/10          # one repository, read-only\n  \
        stowage-gc repo forget --keep-daily 7                  # lists what it would forget\n  \
        stowage-gc repo forget --keep-daily 7 --yes            # forgets exactly that\n  \
        stowage-gc repo prune\n  \
        stowage-gc repo unlock"
)]
pub struct Cli {
    /// Print what would be forgotten, pruned, unlocked and cleaned; change nothing
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Act as if it were this time (RFC 3339): what is due, how old locks and Jobs are,
    /// manual backups' TTL. What-if runs with --dry-run, and tests
    #[arg(long, global = true, value_name = "TIME")]
    pub now: Option<jiff::Timestamp>,
    /// Confirm a held-back retention of the pass for repository REPO (`bucket/prefix`, as
    /// its RetentionBlocked Event and the metric's `repository` label name it): forget
    /// up to COUNT snapshots there at once. For repositories without a PVC; a PVC takes
    /// the annotation stowage.io/confirm-forget=COUNT instead. Repeatable
    #[arg(long, value_name = "REPO=COUNT", value_parser = parse_confirm)]
    pub confirm_forget: Vec<(String, String)>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one pass over the cluster's repositories (the default; what the CronJob runs)
    Run,
    /// Work on one repository given by RESTIC_REPOSITORY / RESTIC_PASSWORD and the AWS
    /// variables, without the cluster (incidents, tests): one verb, one effect
    #[command(subcommand)]
    Repo(RepoVerb),
}

#[derive(Debug, Subcommand)]
pub enum RepoVerb {
    /// Check the repository's structure, and with --read-data[-subset] its data, as
    /// `restic check` does. Read-only: never forgets, prunes or removes a lock (it
    /// takes a shared lock of its own while it reads, and removes only that)
    #[command(after_help = "Examples:\n  \
        stowage-gc repo check\n  \
        stowage-gc repo check --read-data-subset 1/10   # and a tenth of the data\n  \
        stowage-gc repo check --read-data               # and all of it\n\n\
        Exit status: 0 clean, 1 damaged (the findings are logged) or failed, 2 bad \
        configuration, 11 locked exclusively by someone else (a prune): retry later.")]
    Check(CheckArgs),
    /// Apply retention rules (restic's --keep-*). Lists the snapshots the rules would
    /// forget and changes nothing, unless given --yes: then it forgets exactly those.
    /// The newest snapshot of every volume always stays. Run `repo prune` afterwards
    /// to free their data
    #[command(after_help = "Examples:\n  \
        stowage-gc repo forget --keep-within 720h        # what gc's default retention forgets\n  \
        stowage-gc repo forget --keep-daily 7 --keep-weekly 4\n  \
        stowage-gc repo forget --keep-daily 7 --keep-weekly 4 --yes\n\n\
        Exit status: 0 done (or listed), 1 failed, 2 bad configuration or no rule given, 11 \
        locked by someone else: retry later.")]
    Forget(ForgetArgs),
    /// Remove data that no snapshot uses any more (after a forget), under an exclusive
    /// lock; refused while anyone else holds a fresh lock (stale ones are passed over,
    /// as by restic, and left for `repo unlock`). Nothing a snapshot needs goes
    #[command(after_help = "Examples:\n  \
        stowage-gc repo prune --dry-run   # how much it would remove\n  \
        stowage-gc repo prune\n\n\
        Exit status: 0 done, 1 failed, 2 bad configuration, 11 locked by someone else (a \
        backup runs): retry later.")]
    Prune,
    /// Remove stale locks: those of processes of this host that are gone, and those
    /// older than --stale-lock-minutes (without a cluster, their holder cannot be asked
    /// otherwise). Fresh locks of other hosts are never removed
    #[command(after_help = "Examples:\n  \
        stowage-gc repo unlock --dry-run\n  \
        stowage-gc repo unlock --stale-lock-minutes 120\n\n\
        Exit status: 0 done, 1 failed, 2 bad configuration, 11 a fresh lock is held (a \
        backup or prune runs): nothing removed, retry later.")]
    Unlock(UnlockArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read all pack data and verify it (egress: the whole repository)
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Also read pack data subset N/M (e.g. 1/10; 1/1 reads everything)
    #[arg(long, value_name = "N/M", value_parser = parse_subset)]
    pub read_data_subset: Option<(u32, u32)>,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Forget the listed snapshots (without it: list them, change nothing)
    #[arg(long)]
    pub yes: bool,
    /// Keep snapshots within this span of the newest (restic duration: 720h, 30d)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N latest hours that have one
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// ... of each of the N latest days (UTC)
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// ... of each of the N latest ISO weeks
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// ... of each of the N latest months
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// ... of each of the N latest years
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove locks older than this many minutes (locks of dead processes on this
    /// host at once)
    #[arg(long, value_name = "MINUTES", default_value_t = 30)]
    pub stale_lock_minutes: u64,
}

fn parse_confirm(s: &str) -> Result<(String, String), String> {
    let (repo, count) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected REPO=COUNT, such as volsync-backups/ns/pvc=40"))?;
    let count = count.trim();
    if repo.trim().is_empty() || count.parse::<usize>().is_err() {
        return Err(format!(
            "{s:?}: expected REPO=COUNT, such as volsync-backups/ns/pvc=40 (COUNT: the number \
             of snapshots the RetentionBlocked Event names)"
        ));
    }
    Ok((repo.trim().to_string(), count.to_string()))
}

fn parse_subset(s: &str) -> Result<(u32, u32), String> {
    let (n, m) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected N/M, such as 1/10"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: N is not a number"))?;
    let m: u32 = m
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: M is not a number"))?;
    if m == 0 || n == 0 || n > m {
        return Err(format!("{s:?}: need 1 <= N <= M"));
    }
    Ok((n - 1, m))
}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
/// `repo`: someone else holds a lock; retry later (restic's and the mover's code).
pub const EXIT_BUSY: u8 = 11;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match GcConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            logging::init("info", Default::default());
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&cfg.common.log, cfg.common.log_format);
    let ttl = cfg.gc.manual_backup_ttl.trim();
    if !ttl.is_empty()
        && !ttl.eq_ignore_ascii_case("off")
        && let Err(e) = retention::Rules::manual_ttl(ttl, jiff::Timestamp::now())
    {
        tracing::error!("STOWAGE_MANUAL_BACKUP_TTL: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Some(Command::Repo(verb)) = &cli.command {
        if !cli.confirm_forget.is_empty() {
            tracing::error!(
                "--confirm-forget confirms a held-back retention of a pass; `repo forget` \
                 asks with --yes instead"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        return repo_command(&cfg, verb, cli.dry_run, cli.now);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    rt.block_on(run(cli, cfg))
}

async fn run(cli: Cli, cfg: GcConfig) -> ExitCode {
    // STOWAGE_API_TIMEOUT_SECS, as for the scheduler: a hung API server fails the run.
    let timeout = std::time::Duration::from_secs(cfg.common.api_timeout_secs.max(1));
    let client = match stowage_common::k8s::client_with_timeout(timeout).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let opts = pass::PassOptions {
        dry_run: cli.dry_run,
        now: cli.now.unwrap_or_else(jiff::Timestamp::now),
        confirm_forget: cli.confirm_forget.iter().cloned().collect(),
    };
    let report = match pass::run(client, &cfg, opts).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("pass failed: {e:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    summarize(&report, cli.dry_run);
    if let Some(url) = &cfg.gc.cluster.pushgateway_url
        && !cli.dry_run
        && let Err(e) = metrics::push(url, pass::PROGRAM, &report.metrics).await
    {
        tracing::warn!("metrics not pushed: {e}");
    }
    if report.failed() {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

fn summarize(report: &pass::PassReport, dry_run: bool) {
    let forgotten: usize = report
        .repositories
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .map(|o| o.forgotten.len())
        .sum();
    let reclaimed: u64 = report
        .repositories
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .map(|o| o.reclaimed())
        .sum();
    for (repo, what) in &report.damaged {
        tracing::error!(repository = %repo, "repository damaged: {what}");
    }
    for e in &report.errors {
        tracing::error!("{e}");
    }
    for (repo, why) in &report.blocked {
        tracing::warn!(repository = %repo, "retention held back: {why}");
    }
    tracing::info!(
        repositories = report.repositories.len(),
        forgotten,
        reclaimed_bytes = reclaimed,
        orphans = report.orphans.len(),
        damaged = report.damaged.len(),
        errors = report.errors.len(),
        jobs_deleted = report.jobs_deleted.len(),
        retention_blocked = report.blocked.len(),
        s3_requests = report.s3_requests,
        dry_run,
        "pass done"
    );
}

/// The one-repository verbs: each does one thing (`Work` asks for nothing else).
fn repo_command(
    cfg: &GcConfig,
    verb: &RepoVerb,
    dry_run: bool,
    now: Option<jiff::Timestamp>,
) -> ExitCode {
    let mut rules = retention::Rules::default();
    let (mut forget, mut prune, mut unlock, mut check) = (false, false, false, None);
    let mut stale_after = SignedDuration::from_mins(30);
    // `forget` lists only, unless --yes; every other verb acts unless --dry-run.
    let mut dry_run = dry_run;
    match verb {
        RepoVerb::Check(a) => {
            check = Some(if a.read_data {
                Some((0, 1))
            } else {
                a.read_data_subset
            });
        }
        RepoVerb::Forget(a) => {
            let retention = Retention {
                keep_within: a.keep_within.clone().filter(|s| !s.is_empty() && s != "0"),
                keep_last: a.keep_last,
                keep_hourly: a.keep_hourly,
                keep_daily: a.keep_daily,
                keep_weekly: a.keep_weekly,
                keep_monthly: a.keep_monthly,
                keep_yearly: a.keep_yearly,
            };
            rules = match retention::Rules::from_policy(&retention) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if rules.is_empty() {
                tracing::error!(
                    "no retention rule given: name at least one --keep-* rule (gc's default \
                     retention is --keep-within 720h); nothing was forgotten"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            forget = true;
            dry_run |= !a.yes;
        }
        RepoVerb::Prune => prune = true,
        RepoVerb::Unlock(a) => {
            unlock = true;
            stale_after = SignedDuration::from_mins(a.stale_lock_minutes as i64);
        }
    }
    let access = match RepoAccess::from_env(&cfg.restic, &cfg.common, None, None) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let work = maintain::Work {
        name: access.location.to_string(),
        rules,
        forget,
        // The user sees the list and answers with --yes: that is the confirmation.
        guard: None,
        unlock,
        prune,
        check,
        unused_threshold_percent: 0,
        locks: plan::LocksContext {
            stale_after,
            // No cluster to ask: any holder might run; only age (and dead processes
            // of this host) count.
            live_pods: Some(Default::default()),
            this_host: locks::this_hostname(),
        },
        dry_run,
        progress_interval: cfg.common.progress_interval(),
        now: now.unwrap_or_else(jiff::Timestamp::now),
        // One repository by hand: no budget.
        deadline: None,
    };
    match maintain::run(&access, &work) {
        Ok(o) => {
            let line = serde_json::json!({
                "repository": work.name,
                "snapshotsBefore": o.snapshots_before,
                "snapshotsAfter": o.snapshots_after,
                "forgotten": o.forgotten.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                "locksRemoved": o.locks_removed.iter().map(|l| &l.file).collect::<Vec<_>>(),
                "busy": o.busy,
                "pruned": o.pruned,
                "bytesBefore": o.bytes_before,
                "bytesAfter": o.bytes_after,
                "reclaimedBytes": o.reclaimed(),
                "check": o.check,
                "dryRun": dry_run,
            });
            println!("{line}");
            if matches!(verb, RepoVerb::Forget(_)) && dry_run {
                tracing::info!(
                    repository = %work.name,
                    "dry run: {} of {} snapshots would be forgotten (listed above); nothing \
                     was changed. Run the same command with --yes to forget them",
                    o.forgotten.len(),
                    o.snapshots_before
                );
            }
            if o.damaged() {
                tracing::error!(repository = %work.name, "repository damaged: {}", o.check.unwrap_or_default().join("; "));
                ExitCode::from(EXIT_FAILURE)
            } else if o.busy.is_some() {
                ExitCode::from(EXIT_BUSY)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            tracing::error!(repository = %work.name, "{e}");
            match e {
                Error::Config(_) => ExitCode::from(EXIT_CONFIG),
                Error::Locked(_) => ExitCode::from(EXIT_BUSY),
                _ => ExitCode::from(EXIT_FAILURE),
            }
        }
    }
}
