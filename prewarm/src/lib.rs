//! stowage-prewarm: the volume populator of the stowage kind (zero-touch restore) and
//! the backup index. One run (a CronJob every minute) polls for Pending PVCs that name
//! the kind for most of the minute; the index runs at its own, slower cadence.
//! `main.rs` only calls [`main`].

pub mod index;
pub mod manual;
pub mod pass;
pub mod plan;
pub mod source;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use stowage_common::env::PrewarmConfig;
use stowage_common::k8s::restore_kind;
use stowage_common::logging;
use stowage_common::metrics::{self, Registry};

#[derive(Debug, Parser)]
#[command(
    name = "stowage-prewarm",
    version,
    about = "Populate new PVCs from their latest backup (zero-touch restore) and index the backups",
    long_about = "Populate new PVCs from their latest backup (zero-touch restore) and index the backups.\n\n\
        A PVC whose spec.dataSourceRef names the stowage kind (apiGroup stowage.io, kind \
        Restore) stays Pending until prewarm has restored its latest backup into a new volume \
        (or found that no backup exists: a fresh install binds empty). Runs as a CronJob every \
        minute in the stowage namespace, polling for most of the minute; running it twice at \
        once or killing it at any point is safe. Configuration comes from STOWAGE_* variables \
        (see the README).\n\n\
        Exit status: 0 run done, 1 some PVC or the index failed (see the log), 2 bad \
        configuration.",
    after_help = "Examples:\n  stowage-prewarm --once\n  stowage-prewarm --index-now --once\n  \
        stowage-prewarm crd > kustomize/app/crd-restore.yaml\n  \
        kubectl -n APP annotate pvc DATA stowage.io/restore-now=latest && stowage-prewarm restore-now"
)]
pub struct Cli {
    /// One populator round, then exit (default: keep polling for STOWAGE_RUN_SECONDS)
    #[arg(long)]
    pub once: bool,
    /// Poll for this many seconds instead of STOWAGE_RUN_SECONDS (restore-now: wait
    /// this long for the restores, default 3300)
    #[arg(long, value_name = "SECONDS", global = true)]
    pub duration: Option<u64>,
    /// Build the index in this run, whether it is due or not
    #[arg(long, conflicts_with = "no_index")]
    pub index_now: bool,
    /// Do not build the index in this run
    #[arg(long)]
    pub no_index: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the populator (and the index when due); the default
    Run,
    /// Print the CustomResourceDefinition of the stowage kind (YAML)
    Crd,
    /// Manual restore: serve the PVCs annotated stowage.io/restore-now (snapshot id or
    /// latest; stowage.io/restore-replace=true to overwrite a non-empty volume), wait for
    /// the restores and record the outcome on each PVC (stowage.io/restore-result). Run
    /// by `kubectl -n stowage create job --from=cronjob/stowage-manual-restore NAME`
    RestoreNow,
}

/// Repositories opened at once by the whole program (index and populator lookups run
/// side by side). Each open derives the repository's key with scrypt: 128 MiB and a
/// third of a CPU second, so two use the cores prewarm may get and keep it well inside
/// its 512 MiB limit.
pub const OPEN_CONCURRENCY: usize = 2;
pub(crate) static OPENS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(OPEN_CONCURRENCY);
/// Storage lookups of Pending PVCs queued and not started yet: the index opens no new
/// repository meanwhile (an app waiting for its volume goes before the index).
pub(crate) static LOOKUPS_QUEUED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
/// How long `restore-now` waits for its restores (the template's Job deadline is longer).
pub const MANUAL_RESTORE_SECONDS: u64 = 3300;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", restore_kind::crd_yaml());
        return ExitCode::SUCCESS;
    }
    let cfg = match PrewarmConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            logging::init("info", Default::default());
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&cfg.common.log, cfg.common.log_format);
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

async fn run(cli: Cli, cfg: PrewarmConfig) -> ExitCode {
    // STOWAGE_API_TIMEOUT_SECS, as for the scheduler: a hung API server fails the run.
    let timeout = std::time::Duration::from_secs(cfg.common.api_timeout_secs.max(1));
    let client = match stowage_common::k8s::client_with_timeout(timeout).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let started = std::time::Instant::now();
    let poll = Duration::from_secs(cfg.prewarm.poll_seconds);
    if let Some(Command::RestoreNow) = cli.command {
        let budget = Duration::from_secs(cli.duration.unwrap_or(MANUAL_RESTORE_SECONDS));
        let ctx = pass::Ctx::new(client, cfg.clone());
        let s = manual::run(&ctx, budget, poll).await;
        for (pvc, what) in &s.done {
            tracing::info!(pvc = %pvc, "{what}");
        }
        for (pvc, why) in &s.pending {
            tracing::warn!(pvc = %pvc, "not finished in this run (the next run continues): {why}");
        }
        if s.done.is_empty() && s.pending.is_empty() && s.errors.is_empty() {
            tracing::warn!(
                "no PVC is annotated {}: annotate the PVC to restore first (docs/runbooks.md)",
                manual::REQUEST
            );
        }
        let ok = s.errors.is_empty()
            && s.pending.is_empty()
            && s.done.values().all(|v| v.starts_with("restored"));
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILURE)
        };
    }
    let duration = Duration::from_secs(cli.duration.unwrap_or(cfg.prewarm.run_seconds));

    // The index runs alongside the populator, which must not wait for it.
    let index_task = {
        let (client, cfg) = (client.clone(), cfg.clone());
        let (force, skip) = (cli.index_now, cli.no_index);
        tokio::spawn(async move { run_index(&client, &cfg, force, skip).await })
    };

    let mut ctx = pass::Ctx::new(client, cfg.clone());
    ctx.run_deadline = Some(started + duration);
    let mut report = pass::Report::default();
    let mut fatal = None;
    loop {
        let now = jiff::Timestamp::now();
        if let Err(e) = pass::round(&ctx, now, &mut report).await {
            tracing::error!("round failed: {e:#}");
            fatal = Some(e.to_string());
        }
        if cli.once || started.elapsed() + poll >= duration {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    let mut registry = Registry::default();
    pass::metrics(&report, &mut registry);
    let index = match index_task.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("index task failed: {e}")),
    };
    let mut failed = fatal.is_some() || !report.errors.is_empty();
    match &index {
        Ok(Some(idx)) => index::metrics(idx, &mut registry),
        Ok(None) => {}
        Err(e) => {
            tracing::error!("index failed: {e:#}");
            failed = true;
        }
    }
    for e in &report.errors {
        tracing::error!("{e}");
    }
    for (pvc, why) in &report.waiting {
        tracing::info!(pvc = %pvc, "still waiting: {why}");
    }
    tracing::info!(
        rounds = report.rounds,
        populated = report.populated.len(),
        jobs_started = report.jobs_started.len(),
        waiting = report.waiting.len(),
        refused = report.refused.len(),
        errors = report.errors.len(),
        "run done"
    );
    if let Some(url) = &cfg.prewarm.cluster.pushgateway_url
        && let Err(e) = metrics::push(url, pass::PROGRAM, &registry).await
    {
        tracing::warn!("metrics not pushed: {e}");
    }
    if failed {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Builds and stores the index when due (or forced). `Ok(None)`: not due.
async fn run_index(
    client: &kube::Client,
    cfg: &PrewarmConfig,
    force: bool,
    skip: bool,
) -> anyhow::Result<Option<index::Index>> {
    let p = &cfg.prewarm;
    if skip {
        return Ok(None);
    }
    let Some(base) = &p.cluster.repository_base else {
        if force {
            anyhow::bail!("no index without STOWAGE_REPOSITORY_BASE (the base to list)");
        }
        return Ok(None);
    };
    let (previous, at) =
        index::load(client, &p.cluster.system_namespace, &p.index_configmap).await?;
    if !force
        && !index::due(
            at,
            jiff::Timestamp::now(),
            p.index_interval_minutes,
            previous.complete,
        )
    {
        return Ok(None);
    }
    use stowage_common::k8s::contract::secret_keys as keys;
    use stowage_common::k8s::credentials::{self, CentralError};
    let central = credentials::central_secret(client, &p.cluster)
        .await
        .map_err(|e| match e {
            CentralError::NotFound { .. } => {
                anyhow::anyhow!("{e}; the index needs the master password and S3 keys")
            }
            e => e.into(),
        })?;
    let master = central.require(keys::MASTER_PASSWORD)?;
    let get = |k: &str| central.value(k).unwrap_or_default();
    // gc's keys list everything; the mover's read as well.
    let (mut ak, mut sk) = (get(keys::GC_ACCESS_KEY_ID), get(keys::GC_SECRET_ACCESS_KEY));
    if ak.is_empty() {
        (ak, sk) = (
            get(keys::MOVER_ACCESS_KEY_ID),
            get(keys::MOVER_SECRET_ACCESS_KEY),
        );
    }
    let idx = index::build(base, &master, (&ak, &sk), cfg, &previous).await?;
    index::store(
        client,
        &p.cluster.system_namespace,
        &p.index_configmap,
        &idx,
    )
    .await?;
    tracing::info!(
        repositories = idx.repositories.len(),
        errors = idx
            .repositories
            .iter()
            .filter(|e| e.error.is_some())
            .count(),
        pending = idx.pending(),
        s3_requests = idx.s3_requests,
        seconds = format!("{:.2}", idx.duration_secs),
        "index stored in ConfigMap {}/{}",
        p.cluster.system_namespace,
        p.index_configmap
    );
    Ok(Some(idx))
}
