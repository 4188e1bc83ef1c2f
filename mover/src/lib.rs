//! stowage-mover: backs up one mounted volume to its restic-format repository, or
//! restores a snapshot into one. `main.rs` only calls [`main`].

pub mod backup;
pub mod cli;
pub mod demo;
pub mod progress;
pub mod report;
pub mod restore;
pub mod select;
pub mod snapshots;
pub mod source;
pub mod treecmp;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use stowage_common::env::MoverConfig;
use stowage_common::repo::RepoAccess;
use stowage_common::{Error, logging, tags};

use crate::cli::{Cli, Command};
use crate::report::RunResult;
use crate::select::Selector;

/// Exit status for a failed run.
pub const EXIT_FAILURE: u8 = 1;
/// Bad configuration or usage (clap uses 2 for usage errors too).
pub const EXIT_CONFIG: u8 = 2;
/// The repository is locked by another process: retry later.
pub const EXIT_LOCKED: u8 = 3;
/// A restore of a particular snapshot found no repository (as restic).
pub const EXIT_NO_REPOSITORY: u8 = 10;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match MoverConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            logging::init("info", Default::default());
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&cfg.common.log, cfg.common.log_format);
    let operation = match &cli.command {
        Command::Backup(_) => "backup",
        Command::Restore(_) => "restore",
        Command::Snapshots(_) => "snapshots",
        Command::Demo(_) => "demo",
    };
    match run(&cli, &cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            tracing::error!(operation, "{message}");
            if matches!(cli.command, Command::Backup(_) | Command::Restore(_)) {
                RunResult {
                    operation: operation.into(),
                    ok: false,
                    error: Some(message),
                    reason: Some(failure_reason(&e).into()),
                    snapshot: e
                        .downcast_ref::<restore::RestoringSnapshot>()
                        .map(|s| s.0.clone()),
                    repository: repository_of(&cli, &cfg),
                    ..Default::default()
                }
                .write(cfg.mover.result_file.as_deref());
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit status by kind of failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::Config(_)) => EXIT_CONFIG,
        Some(Error::Locked(_)) => EXIT_LOCKED,
        _ if e.downcast_ref::<restore::NoRepository>().is_some() => EXIT_NO_REPOSITORY,
        _ => EXIT_FAILURE,
    }
}

/// The machine-readable reason of a failure, for the result's `reason`.
pub fn failure_reason(e: &anyhow::Error) -> &'static str {
    use crate::report::reason;
    if e.downcast_ref::<backup::EmptySourceRefused>().is_some() {
        return reason::EMPTY_SOURCE;
    }
    if e.downcast_ref::<backup::ForeignHistoryRefused>().is_some() {
        return reason::FOREIGN_HISTORY;
    }
    if e.downcast_ref::<restore::TargetNotEmpty>().is_some() {
        return reason::TARGET_NOT_EMPTY;
    }
    if e.downcast_ref::<restore::NoRepository>().is_some() {
        return reason::NO_REPOSITORY;
    }
    if e.downcast_ref::<restore::NoSnapshot>().is_some() {
        return reason::NO_SNAPSHOT;
    }
    match e.downcast_ref::<Error>() {
        Some(Error::Config(_)) => reason::CONFIG,
        Some(Error::Locked(_)) => reason::LOCKED,
        Some(Error::WrongPassword(_)) => reason::WRONG_PASSWORD,
        Some(Error::Storage(_)) => reason::STORAGE,
        Some(Error::Damaged(_)) => reason::DAMAGED_REPOSITORY,
        _ => reason::FAILED,
    }
}

/// The repository location for a failure result (never with credentials), when it
/// resolves.
fn repository_of(cli: &Cli, cfg: &MoverConfig) -> Option<String> {
    stowage_common::repo::resolve_location(&cfg.restic, &cfg.common, cli.global.repo.as_deref())
        .ok()
        .map(|l| l.to_string())
}

fn access(cli: &Cli, cfg: &MoverConfig) -> Result<RepoAccess> {
    Ok(RepoAccess::from_env(
        &cfg.restic,
        &cfg.common,
        cli.global.repo.as_deref(),
        cli.global.password_file.as_deref(),
    )?)
}

fn run(cli: &Cli, cfg: &MoverConfig) -> Result<()> {
    let interval = cfg.common.progress_interval();
    let m = &cfg.mover;
    match &cli.command {
        Command::Backup(a) => {
            let mut excludes: Vec<String> = m
                .excludes
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            excludes.extend(a.exclude.iter().cloned());
            let plan = backup::BackupPlan {
                source: a.path.clone().unwrap_or_else(|| m.source.clone()),
                host: a.host.clone().unwrap_or_else(|| m.snapshot_host.clone()),
                snapshot_path: m.snapshot_path.clone(),
                tags: {
                    let mut t = tags::volume_tags(
                        m.namespace.as_deref(),
                        m.pvc.as_deref(),
                        m.pvc_uid.as_deref(),
                    );
                    t.extend(tags::extra_tags(m.extra_tags.as_deref()));
                    t
                },
                excludes,
                allow_empty: a.allow_empty || m.allow_empty_source,
                pvc_uid: m.pvc_uid.clone().filter(|u| !u.is_empty()),
                adopt_history: a.adopt_history || m.adopt_history,
                progress_interval: interval,
            };
            let result = backup::run(&access(cli, cfg)?, &plan)?;
            result.write(m.result_file.as_deref());
        }
        Command::Restore(a) => {
            let selector = match (&a.as_of, a.snapshot.as_str()) {
                (Some(t), _) => Selector::AsOf(
                    select::parse_as_of(t, jiff::Timestamp::now()).map_err(Error::Config)?,
                ),
                (None, "latest") => Selector::Latest,
                (None, id) => Selector::Id(id.to_string()),
            };
            let plan = restore::RestorePlan {
                target: a.path.clone().unwrap_or_else(|| m.source.clone()),
                selector,
                host: a.host.clone().unwrap_or_else(|| m.snapshot_host.clone()),
                replace: a.replace,
                progress_interval: interval,
            };
            let result = restore::run(&access(cli, cfg)?, &plan)?;
            result.write(m.result_file.as_deref());
        }
        Command::Snapshots(a) => {
            let (snaps, damaged) = snapshots::list(&access(cli, cfg)?)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
            } else {
                print!("{}", snapshots::table(&snaps, &damaged));
            }
        }
        Command::Demo(a) => demo::run(a, interval)?,
    }
    Ok(())
}
