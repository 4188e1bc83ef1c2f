//! stowage-gc: one maintenance pass per CronJob run. Finds every repository, forgets
//! snapshots by the PVC's policy (the newest of every volume always stays), prunes on
//! its interval under an exclusive restic lock, removes stale locks, checks integrity,
//! deletes finished mover Jobs and their Secrets, reports orphans and damage.
//! `main.rs` only calls [`main`].

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
        Runs hourly as a CronJob in the stowage namespace; `kubectl create job --from=cronjob/\
        stowage-gc now` runs a pass by hand, and a pass may be run again at any time. \
        Repositories are never deleted; the newest snapshot of every volume is always kept. \
        Configuration comes from STOWAGE_* variables (docs/policies.md, \
        \"Retention and gc\").\n\n\
        Exit status: 0 pass done, 1 a repository is damaged or something failed (see the \
        log; the other repositories were still maintained), 2 bad configuration.",
    after_help = "Examples:\n  stowage-gc --dry-run\n  \
        stowage-gc --dry-run --now 2026-12-01T00:00:00Z\n  \
        RESTIC_REPOSITORY=s3:https://s3.lan/b/ns/pvc RESTIC_PASSWORD=... stowage-gc repo --prune --check"
)]
pub struct Cli {
    /// Print what would be forgotten, pruned and cleaned; change nothing
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Act as if it were this time (RFC 3339): what is due, how old locks, Jobs and
    /// Secrets are, manual backups' TTL. What-if runs with --dry-run, and tests
    #[arg(long, global = true, value_name = "TIME")]
    pub now: Option<jiff::Timestamp>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one pass over the cluster's repositories (the default)
    Run,
    /// Maintain one repository given by RESTIC_REPOSITORY / RESTIC_PASSWORD and the
    /// AWS variables, without the cluster (incidents, tests)
    Repo(RepoArgs),
}

#[derive(Debug, Args)]
pub struct RepoArgs {
    /// Prune after forgetting
    #[arg(long)]
    pub prune: bool,
    /// Check the structure afterwards
    #[arg(long)]
    pub check: bool,
    /// With --check: also read pack data subset N/M (e.g. 1/10; 1/1 reads everything)
    #[arg(long, value_name = "N/M", value_parser = parse_subset)]
    pub read_data_subset: Option<(u32, u32)>,
    /// Keep snapshots within this span of the newest (restic duration: 720h, 30d)
    #[arg(long, value_name = "DURATION", default_value = "720h")]
    pub keep_within: String,
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
    /// Remove locks older than this many minutes (locks of dead processes on this
    /// host at once); without a cluster, the holder cannot be asked otherwise
    #[arg(long, value_name = "MINUTES", default_value_t = 30)]
    pub stale_lock_minutes: u64,
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
    if let Some(Command::Repo(args)) = &cli.command {
        return repo_command(&cfg, args, cli.dry_run, cli.now);
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
    };
    let report = match pass::run(client, &cfg, opts).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("pass failed: {e:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    summarize(&report, cli.dry_run);
    if let Some(url) = &cfg.gc.pushgateway_url
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
    tracing::info!(
        repositories = report.repositories.len(),
        forgotten,
        reclaimed_bytes = reclaimed,
        orphans = report.orphans.len(),
        damaged = report.damaged.len(),
        errors = report.errors.len(),
        jobs_deleted = report.jobs_deleted.len(),
        secrets_deleted = report.secrets_deleted.len(),
        s3_requests = report.s3_requests,
        dry_run,
        "pass done"
    );
}

fn repo_command(
    cfg: &GcConfig,
    a: &RepoArgs,
    dry_run: bool,
    now: Option<jiff::Timestamp>,
) -> ExitCode {
    let retention = Retention {
        keep_within: Some(a.keep_within.clone()).filter(|s| !s.is_empty() && s != "0"),
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
    };
    let rules = match retention::Rules::from_policy(&retention) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
        prune: a.prune,
        check: a.check.then_some(a.read_data_subset),
        unused_threshold_percent: 0,
        locks: plan::LocksContext {
            stale_after: SignedDuration::from_mins(a.stale_lock_minutes as i64),
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
            if o.damaged() {
                tracing::error!(repository = %work.name, "repository damaged: {}", o.check.unwrap_or_default().join("; "));
                ExitCode::from(EXIT_FAILURE)
            } else if o.busy.is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            tracing::error!(repository = %work.name, "{e}");
            match e {
                Error::Config(_) => ExitCode::from(EXIT_CONFIG),
                Error::Locked(_) => ExitCode::from(3),
                _ => ExitCode::from(EXIT_FAILURE),
            }
        }
    }
}
