//! Command line, restic-like. The environment is the Job contract; flags serve manual
//! runs and win over it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The exit statuses, as a literal for `after_help` (and [`crate::EXIT_STATUS_HELP`]).
macro_rules! exit_status_help {
    () => {
        "Exit status (restic's where the meaning is the same):\n  \
        0    success\n  \
        1    failure (the log and the result line say what failed)\n  \
        2    bad configuration or usage\n  \
        3    partial backup: a snapshot was stored, but some entries could not be read\n  \
        10   no repository at the location\n  \
        11   repository locked by another process (retry later)\n  \
        12   wrong password\n  \
        130  stopped by SIGINT, 143 stopped by SIGTERM (lock released, result written)"
    };
}
pub(crate) use exit_status_help;

#[derive(Debug, Parser)]
#[command(
    name = "stowage-mover",
    version,
    about = "Back up one volume to its restic-format repository, or restore a snapshot into one",
    long_about = "Back up one volume to its restic-format repository, or restore a snapshot into one.\n\n\
        The repository and its password come from RESTIC_REPOSITORY and RESTIC_PASSWORD (or \
        RESTIC_PASSWORD_FILE, STOWAGE_REPOSITORY, STOWAGE_PASSWORD_FILE), S3 keys from \
        AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION: an existing VolSync \
        Secret works unchanged. See the README for every STOWAGE_* variable.",
    after_help = concat!("Examples:\n  \
        RESTIC_REPOSITORY=s3:https://s3.lan/backups/db/pg RESTIC_PASSWORD=... stowage-mover backup /data\n  \
        stowage-mover --repo /srv/repo --password-file pw restore /data --as-of 2026-11-22 --replace\n  \
        stowage-mover snapshots --json\n\n", exit_status_help!())
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Repository (overrides STOWAGE_REPOSITORY and RESTIC_REPOSITORY)
    #[arg(short = 'r', long = "repo", global = true, value_name = "REPOSITORY")]
    pub repo: Option<String>,
    /// File whose first line is the repository password
    #[arg(short = 'p', long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot a directory into the repository (created on first use)
    #[command(after_help = exit_status_help!())]
    Backup(BackupArgs),
    /// Restore a snapshot into a directory
    #[command(after_help = exit_status_help!())]
    Restore(RestoreArgs),
    /// List the repository's snapshots
    #[command(after_help = exit_status_help!())]
    Snapshots(SnapshotsArgs),
    /// Back up a sample directory to a local repository, restore it and compare (no
    /// cluster, no S3 account needed)
    #[command(after_help = exit_status_help!())]
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Directory to back up [default: STOWAGE_SOURCE or /data]
    pub path: Option<PathBuf>,
    /// Allow an empty directory to become the newest snapshot over a non-empty history
    #[arg(long)]
    pub allow_empty: bool,
    /// Exclude files matching this pattern (restic --exclude syntax; repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Snapshot host [default: STOWAGE_SNAPSHOT_HOST or volsync]
    #[arg(long)]
    pub host: Option<String>,
    /// Let this PVC (STOWAGE_PVC_UID) continue a repository that holds another
    /// volume's history (the first-backup guard refuses that otherwise)
    #[arg(long)]
    pub adopt_history: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Directory to restore into [default: STOWAGE_SOURCE or /data]
    pub path: Option<PathBuf>,
    /// Snapshot id (or unique prefix), or `latest`
    #[arg(
        long,
        short = 's',
        value_name = "ID",
        default_value = "latest",
        conflicts_with = "as_of"
    )]
    pub snapshot: String,
    /// Restore the newest snapshot taken at or before this time: RFC 3339, a date
    /// (end of that day, UTC) or an age such as 36h or 2d
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<String>,
    /// Replace the target's content (files not in the snapshot are deleted); without
    /// it a non-empty target is refused
    #[arg(long)]
    pub replace: bool,
    /// Snapshot host whose snapshots `latest` and --as-of consider [default:
    /// STOWAGE_SNAPSHOT_HOST or volsync]
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory to back up [default: a generated sample tree]
    pub path: Option<PathBuf>,
    /// Where the demo keeps its repository and restored copy
    #[arg(long, default_value = "stowage-demo")]
    pub workdir: PathBuf,
}
