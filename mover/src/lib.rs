//! stowage-mover: backs up one mounted volume to its restic-format repository, or
//! restores a snapshot into one. `main.rs` only calls [`main`].

pub mod backup;
pub mod cli;
pub mod demo;
pub mod progress;
pub mod report;
pub mod restore;
pub mod select;
pub mod signals;
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

/// Exit status for a failed run (restic's codes where the meaning is the same).
pub const EXIT_FAILURE: u8 = 1;
/// Bad configuration or usage (clap uses 2 for usage errors too).
pub const EXIT_CONFIG: u8 = 2;
/// A backup stored a snapshot but left out entries it could not read.
pub const EXIT_PARTIAL: u8 = 3;
/// No repository at the location where one was required.
pub const EXIT_NO_REPOSITORY: u8 = 10;
/// The repository is locked by another process: retry later.
pub const EXIT_LOCKED: u8 = 11;
/// The password opens no key of the repository.
pub const EXIT_WRONG_PASSWORD: u8 = 12;
/// Stopped by SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM (128 + 15): the Job was deleted or reached its deadline.
pub const EXIT_TERMINATED: u8 = 143;

/// Every exit status, for `--help` and the docs.
pub const EXIT_STATUS_HELP: &str = cli::exit_status_help!();

/// The exit status of a failure of kind `reason` (see [`report::reason`]). Pure, the
/// one table of the mover's exit statuses.
pub fn exit_for_reason(reason: &str) -> u8 {
    use crate::report::reason as r;
    match reason {
        r::CONFIG => EXIT_CONFIG,
        r::PARTIAL => EXIT_PARTIAL,
        r::NO_REPOSITORY => EXIT_NO_REPOSITORY,
        r::LOCKED => EXIT_LOCKED,
        r::WRONG_PASSWORD => EXIT_WRONG_PASSWORD,
        r::TERMINATED => EXIT_TERMINATED,
        _ => EXIT_FAILURE,
    }
}

/// The exit status of a finished run.
pub fn exit_for_result(result: &RunResult) -> u8 {
    match (&result.ok, result.reason.as_deref()) {
        (true, _) => 0,
        (false, Some(reason)) => exit_for_reason(reason),
        (false, None) => EXIT_FAILURE,
    }
}

fn operation_of(command: &Command) -> &'static str {
    match command {
        Command::Backup(_) => "backup",
        Command::Restore(_) => "restore",
        Command::Snapshots(_) => "snapshots",
        Command::Demo(_) => "demo",
    }
}

/// Whether a run of `command` reports a result line (and file).
fn writes_result(command: &Command) -> bool {
    matches!(command, Command::Backup(_) | Command::Restore(_))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let operation = operation_of(&cli.command);
    let vars = stowage_common::env::vars_from_process();
    let cfg = match MoverConfig::from_vars(&vars) {
        Ok(c) => c,
        Err(e) => {
            logging::init("info", Default::default());
            tracing::error!(operation, "{e}");
            // The rest of the environment is unusable; the result file may still be
            // known, and the scheduler reads the reason there.
            if writes_result(&cli.command) {
                RunResult {
                    operation: operation.into(),
                    ok: false,
                    error: Some(e.to_string()),
                    reason: Some(report::reason::CONFIG.into()),
                    ..Default::default()
                }
                .write(stowage_common::env::result_file(&vars).as_deref());
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&cfg.common.log, cfg.common.log_format);
    let result_file = cfg.mover.result_file.clone();
    if let Err(e) = signals::install(
        operation,
        writes_result(&cli.command).then_some(result_file.clone()),
    ) {
        tracing::warn!("cannot handle SIGTERM/SIGINT ({e}): a stopped run leaves its lock");
    }
    match run(&cli, &cfg) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let message = format!("{e:#}");
            tracing::error!(operation, "{message}");
            let reason = failure_reason(&e);
            if writes_result(&cli.command) {
                RunResult {
                    operation: operation.into(),
                    ok: false,
                    error: Some(message),
                    reason: Some(reason.into()),
                    snapshot: e
                        .downcast_ref::<restore::RestoringSnapshot>()
                        .map(|s| s.0.clone()),
                    repository: repository_of(&cli, &cfg),
                    ..Default::default()
                }
                .write(result_file.as_deref());
            }
            ExitCode::from(exit_for_reason(reason))
        }
    }
}

/// Exit status by kind of failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    exit_for_reason(failure_reason(e))
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
        Some(Error::StorageTimeout(_)) => reason::STORAGE_TIMEOUT,
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

/// Runs the command; the exit status of a run that finished with a result.
fn run(cli: &Cli, cfg: &MoverConfig) -> Result<u8> {
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
            return Ok(exit_for_result(&result));
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
            return Ok(exit_for_result(&result));
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
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::reason;

    #[test]
    fn exit_statuses_are_restics_where_the_meaning_is_the_same() {
        for (r, code) in [
            (reason::CONFIG, 2),
            (reason::PARTIAL, 3),
            (reason::NO_REPOSITORY, 10),
            (reason::LOCKED, 11),
            (reason::WRONG_PASSWORD, 12),
            (reason::TERMINATED, 143),
            (reason::STORAGE, 1),
            (reason::STORAGE_TIMEOUT, 1),
            (reason::EMPTY_SOURCE, 1),
            (reason::FAILED, 1),
        ] {
            assert_eq!(exit_for_reason(r), code, "{r}");
        }
        let partial = RunResult {
            ok: false,
            reason: Some(reason::PARTIAL.into()),
            ..Default::default()
        };
        assert_eq!(exit_for_result(&partial), 3);
        let done = RunResult {
            ok: true,
            ..Default::default()
        };
        assert_eq!(exit_for_result(&done), 0);
        for code in ["3", "10", "11", "12", "143"] {
            assert!(EXIT_STATUS_HELP.contains(code), "{code}");
        }
    }

    #[test]
    fn a_stopped_run_is_reported_as_terminated() {
        let r = signals::stopped_result("backup", "SIGTERM");
        assert!(!r.ok);
        assert_eq!(r.reason.as_deref(), Some(reason::TERMINATED));
        assert_eq!(exit_for_result(&r), EXIT_TERMINATED);
        assert!(r.error.unwrap().contains("SIGTERM"));
        assert_eq!(signals::exit_status("SIGINT"), EXIT_INTERRUPTED);
        assert_eq!(signals::exit_status("SIGTERM"), EXIT_TERMINATED);
    }
}
