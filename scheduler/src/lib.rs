//! stowage-scheduler: one pass per CronJob run. Finds the PVCs that opted in to
//! backups, decides which are due, starts mover Jobs for them within a concurrency
//! limit, and records the results of finished ones. `main.rs` only calls [`main`].

pub mod consistency;
pub mod facts;
pub mod pass;
pub mod plan;

use std::io::Read as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stowage_common::env::SchedulerConfig;
use stowage_common::{logging, metrics};

#[derive(Debug, Parser)]
#[command(
    name = "stowage-scheduler",
    version,
    about = "Start mover Jobs for the PVCs whose backups are due (one pass)",
    long_about = "Start mover Jobs for the PVCs whose backups are due (one pass).\n\n\
        Runs as a CronJob in the stowage namespace; `kubectl create job --from=cronjob/\
        stowage-scheduler now` runs a pass by hand, and running it twice starts nothing twice. \
        Configuration comes from STOWAGE_* variables (see the README).\n\n\
        Exit status: 0 pass done (one PVC's problems are Events on it and \
        stowage_backup_problem series, not a failed run), 1 the pass failed for every PVC \
        (API down, policies ConfigMap unreadable, central Secret missing; see the log), 2 bad \
        configuration, 3 the pass was done but its metrics could not be pushed to \
        STOWAGE_PUSHGATEWAY_URL (the failed Job is what alerts: a Pushgateway that is down \
        cannot carry that news).",
    after_help = "Examples:\n  stowage-scheduler --dry-run\n  \
        stowage-scheduler repo-password s3:https://s3.lan/backups/db/data-pg-0 < master-password"
)]
pub struct Cli {
    /// Decide and print, but create and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Decide as if it were this time (RFC 3339): what-if runs with --dry-run, and the
    /// simulator's clock
    #[arg(long, value_name = "TIME")]
    pub now: Option<jiff::Timestamp>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one pass (the default)
    Run,
    /// Print the password of a stowage-managed repository (derived from the master
    /// password read from stdin), for the restic CLI: `restic -r <repo> -p <(...)`
    RepoPassword {
        /// Repository URL, e.g. s3:https://s3.lan/backups/<namespace>/<pvc>
        repository: String,
    },
}

/// Exit status for a failed pass.
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
/// The pass was done, its metrics were not pushed.
pub const EXIT_METRICS_NOT_PUSHED: u8 = 3;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::RepoPassword { repository }) = &cli.command {
        let mut master = String::new();
        if std::io::stdin().read_to_string(&mut master).is_err() || master.trim().is_empty() {
            eprintln!(
                "stowage-scheduler repo-password: pass the master password on stdin, e.g. \
                 kubectl -n stowage get secret stowage-credentials -o jsonpath='{{.data.master-password}}' \
                 | base64 -d | stowage-scheduler repo-password {repository}"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        println!(
            "{}",
            pass::repo_password(master.trim_end_matches(['\n', '\r']), repository)
        );
        return ExitCode::SUCCESS;
    }
    let cfg = match SchedulerConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            logging::init("info", Default::default());
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&cfg.common.log, cfg.common.log_format);
    let rt = match tokio::runtime::Builder::new_current_thread()
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

async fn run(cli: Cli, cfg: SchedulerConfig) -> ExitCode {
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
    for e in &report.errors {
        tracing::error!("{e}");
    }
    for p in &report.problems {
        tracing::warn!(namespace = %p.namespace, pvc = %p.pvc, reason = %p.reason, "{}", p.message);
    }
    tracing::info!(
        started = report.started.len(),
        recorded = report.recorded.len(),
        errors = report.errors.len(),
        problems = report.problems.len(),
        skipped = ?report.skipped,
        dry_run = cli.dry_run,
        "pass done"
    );
    let mut pushed = true;
    if let Some(url) = &cfg.scheduler.cluster.pushgateway_url
        && !cli.dry_run
        && let Err(e) = metrics::push(url, pass::PROGRAM, &report.metrics).await
    {
        // The alerts on pushed metrics are blind now, and a Pushgateway that is down
        // cannot say so: the failed Job is what StowageJobFailed and
        // StowageCronJobNotSucceeding (kube-state-metrics) see.
        tracing::error!("metrics not pushed: {e}");
        pushed = false;
    }
    if !report.errors.is_empty() {
        ExitCode::from(EXIT_FAILURE)
    } else if !pushed {
        ExitCode::from(EXIT_METRICS_NOT_PUSHED)
    } else {
        ExitCode::SUCCESS
    }
}
