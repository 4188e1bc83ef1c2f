//! The configuration contract: every environment variable a stowage program reads.
//!
//! Variables come in two families:
//! - the ones restic, VolSync and the AWS tools already use (`RESTIC_REPOSITORY`,
//!   `AWS_ACCESS_KEY_ID`, ...), so an existing VolSync Secret works unchanged;
//! - stowage's own, all prefixed `STOWAGE_`. A `STOWAGE_` variable that no program
//!   knows is an error (a typo must not silently fall back to a default).
//!
//! Each struct's field names *are* the variable names (envy upper-cases them), so
//! every name is defined exactly once.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Prefix of stowage's own variables.
pub const PREFIX: &str = "STOWAGE_";

/// Variables shared with restic / VolSync / the AWS tools.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct ResticEnv {
    /// Repository location in any form restic accepts (`s3:https://host/bucket/path`,
    /// `s3:host/bucket/path`, `local:/path`, `/path`), or `s3://bucket/path`.
    pub restic_repository: Option<String>,
    /// Repository password.
    pub restic_password: Option<String>,
    /// File holding the repository password (first line).
    pub restic_password_file: Option<PathBuf>,
    /// PEM bundle of extra trusted CAs for the S3 endpoint (VolSync's custom CA).
    pub restic_cacert: Option<PathBuf>,
    /// Cache directory (restic's variable; `STOWAGE_CACHE_DIR` wins).
    pub restic_cache_dir: Option<PathBuf>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
    pub aws_default_region: Option<String>,
    pub aws_region: Option<String>,
    /// Endpoint for `s3://bucket/path` locations (AWS SDK convention).
    pub aws_endpoint_url_s3: Option<String>,
    pub aws_endpoint_url: Option<String>,
}

/// Settings every program shares: logging and S3 access.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct CommonEnv {
    /// Log filter in `tracing` syntax (`info`, `debug`, `stowage_common=debug,info`).
    pub log: String,
    /// `auto` (JSON unless stderr is a terminal), `json` or `text`.
    pub log_format: LogFormat,
    /// Allow plain `http://` S3 endpoints. Off by default: credentials and metadata
    /// would cross the network unprotected.
    pub allow_http: bool,
    /// Path-style S3 addressing (`host/bucket/key`). Default: on for custom endpoints,
    /// off for AWS.
    pub s3_path_style: Option<bool>,
    /// PEM bundle of extra trusted CAs for the S3 endpoint.
    pub ca_bundle: Option<PathBuf>,
    /// Parallel pack uploads per program. Each holds a pack (32 MiB or more) in
    /// memory; 2 keep a backup under 256 MiB and saturate 2 cores.
    pub s3_concurrency: usize,
    /// Objects larger than this many MiB are uploaded in parts.
    pub s3_multipart_threshold_mib: u64,
    /// Size of one multipart part in MiB (S3 minimum: 5).
    pub s3_part_size_mib: u64,
    /// Attempts per S3 request (throttling, 5xx and dropped connections are retried
    /// with exponential backoff).
    pub s3_max_attempts: u32,
    /// Seconds one attempt of an S3 request may be stuck (no connection, no answer, a
    /// transfer that stopped moving) before it is cut off and retried (restic's
    /// `--stuck-request-timeout`).
    pub s3_stuck_request_timeout_secs: u64,
    /// Upload limit in KiB/s (restic's `--limit-upload` unit). Unset or 0: unlimited.
    pub limit_upload: Option<u64>,
    /// Download limit in KiB/s. Unset or 0: unlimited.
    pub limit_download: Option<u64>,
    /// rustic's cache directory (index and tree cache). Unset: no cache, which is right
    /// for an ephemeral Job; point it at a persistent volume to spare S3 reads.
    pub cache_dir: Option<PathBuf>,
    /// Repository location; overrides `RESTIC_REPOSITORY`.
    pub repository: Option<String>,
    /// Password file; overrides `RESTIC_PASSWORD(_FILE)`.
    pub password_file: Option<PathBuf>,
    /// Seconds between progress log lines during long work.
    pub progress_interval_secs: u64,
    /// MiB of pack data a restore may hold in memory at once (bounds a mover's memory
    /// under its 512Mi limit; more is not faster on one volume).
    pub read_budget_mib: u32,
    /// Seconds one Kubernetes API request may take (scheduler, gc, prewarm).
    pub api_timeout_secs: u64,
    /// Seconds after which a pass starts no new work on repositories (gc's maintenance,
    /// the prewarm index, the storage lookups of one populator round): what is left
    /// waits for the next pass, most overdue first, so that passes stay short however
    /// many repositories there are. Work already started is finished. 0: no limit.
    pub pass_budget_secs: u64,
}

impl CommonEnv {
    /// Checks what parsing alone cannot: the log filter (a typo must not silently log
    /// at another level).
    pub fn validate(&self) -> Result<(), Error> {
        crate::logging::parse_filter(&self.log).map(|_| ())
    }

    /// Time between progress lines (at least a second).
    pub fn progress_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.progress_interval_secs.max(1))
    }

    /// How long a pass may start new repository work (`None`: no limit).
    pub fn pass_budget(&self) -> Option<std::time::Duration> {
        (self.pass_budget_secs > 0).then(|| std::time::Duration::from_secs(self.pass_budget_secs))
    }
}

/// Whether a pass that has run for `elapsed` may still start work on one more
/// repository under `budget` (see [`CommonEnv::pass_budget`]).
pub fn may_start(elapsed: std::time::Duration, budget: Option<std::time::Duration>) -> bool {
    budget.is_none_or(|b| elapsed < b)
}

impl Default for CommonEnv {
    fn default() -> Self {
        Self {
            log: "info,rustic_core=warn".into(),
            log_format: LogFormat::Auto,
            allow_http: false,
            s3_path_style: None,
            ca_bundle: None,
            s3_concurrency: 2,
            s3_multipart_threshold_mib: 64,
            s3_part_size_mib: 16,
            s3_max_attempts: 6,
            s3_stuck_request_timeout_secs: 300,
            limit_upload: None,
            limit_download: None,
            cache_dir: None,
            repository: None,
            password_file: None,
            progress_interval_secs: 10,
            read_budget_mib: 64,
            api_timeout_secs: 30,
            pass_budget_secs: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Json,
    Text,
}

/// The mover's own settings (the Job contract between scheduler/prewarm and mover).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct MoverEnv {
    /// Directory to back up or restore into.
    pub source: PathBuf,
    /// Snapshot host. Fixed per repository (never the pod name) so that parent lookup
    /// and retention see one group; `volsync` continues VolSync's repositories.
    pub snapshot_host: String,
    /// Snapshot path recorded in the repository, whatever the local directory is.
    pub snapshot_path: String,
    /// Identity of the volume, recorded as snapshot tags.
    pub namespace: Option<String>,
    pub pvc: Option<String>,
    pub pvc_uid: Option<String>,
    /// Allow an empty source to become the newest snapshot over a non-empty history.
    pub allow_empty_source: bool,
    /// Let a PVC continue a repository holding another PVC's history (first-backup guard).
    pub adopt_history: bool,
    /// Extra exclude globs, comma separated (restic `--exclude` semantics).
    pub excludes: Option<String>,
    /// Where the one-line JSON result goes (Kubernetes termination message).
    pub result_file: Option<PathBuf>,
    /// Extra snapshot tags, comma separated `key=value` (the scheduler records the copy
    /// method and hook outcomes this way).
    pub extra_tags: Option<String>,
}

impl Default for MoverEnv {
    fn default() -> Self {
        Self {
            source: PathBuf::from(DEFAULT_SOURCE),
            snapshot_host: DEFAULT_SNAPSHOT_HOST.into(),
            snapshot_path: DEFAULT_SOURCE.into(),
            namespace: None,
            pvc: None,
            pvc_uid: None,
            allow_empty_source: false,
            adopt_history: false,
            excludes: None,
            result_file: None,
            extra_tags: None,
        }
    }
}

/// Settings every cluster program (scheduler, gc, prewarm) reads alike, embedded in
/// each one's settings (`#[serde(flatten)]`), so that they cannot disagree on where
/// stowage's objects are (`STOWAGE_` prefix, as the rest).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct ClusterEnv {
    /// Namespace of stowage itself (policies ConfigMap, credentials Secret, gc state,
    /// prime PVCs and restore Jobs, index ConfigMap).
    pub system_namespace: String,
    pub policies_configmap: String,
    pub credentials_secret: String,
    /// Opt-in label key on PVCs and namespaces (its value names the policy).
    pub backup_label: String,
    /// Repositories live under `<base>/<namespace>/<pvc>`, e.g.
    /// `s3:https://s3.lan/volsync-backups` (restic's forms); gc and the index list them
    /// all.
    pub repository_base: Option<String>,
    /// Prometheus Pushgateway base URL (`http://host:9091`); unset: no metrics.
    pub pushgateway_url: Option<String>,
}

impl Default for ClusterEnv {
    fn default() -> Self {
        Self {
            system_namespace: "stowage".into(),
            policies_configmap: "stowage-policies".into(),
            credentials_secret: "stowage-credentials".into(),
            backup_label: "backup".into(),
            repository_base: None,
            pushgateway_url: None,
        }
    }
}

/// The scheduler's settings (`STOWAGE_` prefix).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct SchedulerEnv {
    #[serde(flatten)]
    pub cluster: ClusterEnv,
    /// Mover Jobs running at once across the cluster.
    pub max_concurrent_jobs: usize,
    /// Only these namespaces (comma separated; empty: all).
    pub include_namespaces: Option<String>,
    /// Never these namespaces (comma separated).
    pub exclude_namespaces: Option<String>,
    /// Image of the mover Jobs.
    pub mover_image: String,
    /// VolumeSnapshotClass of the `Snapshot` copy method when the PVC names none
    /// (unset: the cluster's default class).
    pub volume_snapshot_class: Option<String>,
    /// How long a pass waits for a VolumeSnapshot to be taken or a clone to be bound
    /// (the app stays frozen meanwhile when it has hooks).
    pub copy_timeout_secs: u64,
    /// Temporary snapshots and volumes whose mover Job does not exist (a killed pass)
    /// are removed once older than this.
    pub orphan_grace_secs: u64,
}

/// Where the mover image is published (kustomize sets the real tag).
pub const DEFAULT_MOVER_IMAGE: &str = "ghcr.io/stowage-backup/stowage-mover:latest";

impl Default for SchedulerEnv {
    fn default() -> Self {
        Self {
            cluster: ClusterEnv::default(),
            max_concurrent_jobs: 3,
            include_namespaces: None,
            exclude_namespaces: None,
            mover_image: DEFAULT_MOVER_IMAGE.into(),
            volume_snapshot_class: None,
            copy_timeout_secs: 300,
            orphan_grace_secs: 900,
        }
    }
}

/// Everything the scheduler reads from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub restic: ResticEnv,
    pub common: CommonEnv,
    pub scheduler: SchedulerEnv,
}

impl SchedulerConfig {
    pub fn from_vars(vars: &[(String, String)]) -> Result<Self, Error> {
        check_unknown(vars.iter().cloned())?;
        let vars: Vec<(String, String)> = vars
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .cloned()
            .collect();
        let cfg = Self {
            restic: parse(&vars, "")?,
            common: parse(&vars, PREFIX)?,
            scheduler: parse(&vars, PREFIX)?,
        };
        cfg.common.validate()?;
        Ok(cfg)
    }

    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(&vars_from_process())
    }
}

/// stowage-gc's settings (`STOWAGE_` prefix).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct GcEnv {
    #[serde(flatten)]
    pub cluster: ClusterEnv,
    /// ConfigMap (system namespace) where gc records when it last pruned and checked
    /// each repository.
    pub gc_state_configmap: String,
    /// Hours between prunes of one repository (default: weekly).
    pub prune_interval_hours: u64,
    /// Prune earlier when unused data reaches this percentage of the repository
    /// (measured when a structure check runs). 0: only on the interval.
    pub prune_unused_percent: u32,
    /// Hours between structure checks of one repository (default: daily).
    pub check_interval_hours: u64,
    /// Percentage of pack data read back and verified at each check, rotating through
    /// the repository (0: off; reading data costs egress on cloud storage).
    pub check_read_data_percent: u32,
    /// Locks older than this many minutes whose holder is not a running stowage pod
    /// are removed.
    pub stale_lock_minutes: u64,
    /// Finished mover Jobs without a TTL of their own are deleted after this many
    /// hours.
    pub job_history_hours: u64,
    /// Snapshots of a PVC that has no backup policy (no opt-in label, or opted out:
    /// its backups were made by hand) are forgotten this long after they were taken
    /// (restic duration: `720h`, `30d`); the newest snapshot always stays. `off`: the
    /// default retention applies to them instead.
    pub manual_backup_ttl: String,
    /// A pass that would forget more than this percentage of a repository's snapshots
    /// at once holds its retention back (Event `RetentionBlocked`, metric) until it is
    /// confirmed: a policy edited by mistake or a clock far off. 100: never held back.
    pub forget_max_percent: u32,
    /// ... when it would forget at least this many (fewer are never held back: a small
    /// repository under a short policy forgets most of its few snapshots normally).
    pub forget_guard_min: u32,
}

impl Default for GcEnv {
    fn default() -> Self {
        Self {
            cluster: ClusterEnv::default(),
            gc_state_configmap: "stowage-gc-state".into(),
            prune_interval_hours: 7 * 24,
            prune_unused_percent: 20,
            check_interval_hours: 24,
            check_read_data_percent: 0,
            stale_lock_minutes: 30,
            job_history_hours: 24,
            manual_backup_ttl: "720h".into(),
            forget_max_percent: 50,
            forget_guard_min: 5,
        }
    }
}

/// Everything stowage-gc reads from its environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcConfig {
    pub restic: ResticEnv,
    pub common: CommonEnv,
    pub gc: GcEnv,
}

impl GcConfig {
    pub fn from_vars(vars: &[(String, String)]) -> Result<Self, Error> {
        check_unknown(vars.iter().cloned())?;
        let vars: Vec<(String, String)> = vars
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .cloned()
            .collect();
        let cfg = Self {
            restic: parse(&vars, "")?,
            common: parse(&vars, PREFIX)?,
            gc: parse(&vars, PREFIX)?,
        };
        cfg.common.validate()?;
        if cfg.gc.check_read_data_percent > 100 {
            return Err(Error::Config(format!(
                "STOWAGE_CHECK_READ_DATA_PERCENT={} must be between 0 and 100",
                cfg.gc.check_read_data_percent
            )));
        }
        if cfg.gc.forget_max_percent > 100 {
            return Err(Error::Config(format!(
                "STOWAGE_FORGET_MAX_PERCENT={} must be between 0 and 100 (100: never hold \
                 retention back)",
                cfg.gc.forget_max_percent
            )));
        }
        if cfg.gc.prune_interval_hours == 0 || cfg.gc.check_interval_hours == 0 {
            return Err(Error::Config(
                "STOWAGE_PRUNE_INTERVAL_HOURS and STOWAGE_CHECK_INTERVAL_HOURS must be at least 1"
                    .into(),
            ));
        }
        Ok(cfg)
    }

    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(&vars_from_process())
    }
}

/// stowage-prewarm's settings (`STOWAGE_` prefix): the volume populator and the index.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct PrewarmEnv {
    /// (prewarm reads no policies: the policies ConfigMap and the backup label are
    /// unused here.)
    #[serde(flatten)]
    pub cluster: ClusterEnv,
    /// Image of the restore mover Jobs.
    pub mover_image: String,
    /// ConfigMap (system namespace) holding the index of all repositories.
    pub index_configmap: String,
    /// Minutes between index runs (listing every repository); 0: never.
    pub index_interval_minutes: u64,
    /// How long one run keeps polling for Pending PVCs, in seconds (a CronJob every
    /// minute: a bit less than 60).
    pub run_seconds: u64,
    /// Seconds between populator rounds within one run.
    pub poll_seconds: u64,
    /// First delay before a failed restore is retried, in seconds; doubles per failure,
    /// capped at an hour.
    pub restore_backoff_seconds: u64,
    /// Extra provisioners (comma separated) that provision PVCs with a foreign
    /// dataSourceRef at once; PVCs of their classes are refused.
    pub unsafe_provisioners: Option<String>,
    /// How long a storage class probe PVC (a PVC with a dataSourceRef that is never
    /// populated) is given to be provisioned, in seconds: provisioned within that time
    /// → the class ignores populators (unsafe); still Pending → safe.
    pub probe_seconds: u64,
}

impl Default for PrewarmEnv {
    fn default() -> Self {
        Self {
            cluster: ClusterEnv::default(),
            mover_image: DEFAULT_MOVER_IMAGE.into(),
            index_configmap: "stowage-index".into(),
            index_interval_minutes: 15,
            run_seconds: 50,
            poll_seconds: 2,
            restore_backoff_seconds: 30,
            unsafe_provisioners: None,
            probe_seconds: 60,
        }
    }
}

/// Everything stowage-prewarm reads from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrewarmConfig {
    pub restic: ResticEnv,
    pub common: CommonEnv,
    pub prewarm: PrewarmEnv,
}

impl PrewarmConfig {
    pub fn from_vars(vars: &[(String, String)]) -> Result<Self, Error> {
        check_unknown(vars.iter().cloned())?;
        let vars: Vec<(String, String)> = vars
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .cloned()
            .collect();
        let cfg = Self {
            restic: parse(&vars, "")?,
            common: parse(&vars, PREFIX)?,
            prewarm: parse(&vars, PREFIX)?,
        };
        cfg.common.validate()?;
        if cfg.prewarm.poll_seconds == 0 {
            return Err(Error::Config(
                "STOWAGE_POLL_SECONDS must be at least 1".into(),
            ));
        }
        Ok(cfg)
    }

    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(&vars_from_process())
    }
}

/// Comma-separated list (empty entries dropped).
pub fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Where a mover Job mounts the volume, and the path VolSync's mover records.
pub const DEFAULT_SOURCE: &str = "/data";
/// VolSync's mover backs up with `--host volsync`.
pub const DEFAULT_SNAPSHOT_HOST: &str = "volsync";

/// All `STOWAGE_` variables any program reads (without the prefix, lower case).
pub fn known_stowage_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    names.extend(field_names(&CommonEnv::default()));
    names.extend(field_names(&MoverEnv::default()));
    names.extend(field_names(&SchedulerEnv::default()));
    names.extend(field_names(&GcEnv::default()));
    names.extend(field_names(&PrewarmEnv::default()));
    names
}

fn field_names<T: Serialize>(value: &T) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Rejects `STOWAGE_*` variables that no program knows (typos).
pub fn check_unknown<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<(), Error> {
    let known = known_stowage_names();
    let unknown: Vec<String> = vars
        .into_iter()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix(PREFIX)?;
            (!known.contains(&rest.to_ascii_lowercase())).then_some(k)
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut list: Vec<String> = known
        .iter()
        .map(|n| format!("{PREFIX}{}", n.to_ascii_uppercase()))
        .collect();
    list.sort();
    Err(Error::Config(format!(
        "unknown variable(s) {}: not read by any stowage program (typo?). Known: {}",
        unknown.join(", "),
        list.join(", ")
    )))
}

/// Reads one family of variables from `vars`, naming the variable in any error.
fn parse<T: serde::de::DeserializeOwned>(
    vars: &[(String, String)],
    prefix: &str,
) -> Result<T, Error> {
    let result = if prefix.is_empty() {
        envy::from_iter::<_, T>(vars.iter().cloned())
    } else {
        envy::prefixed(prefix).from_iter::<_, T>(vars.iter().cloned())
    };
    result.map_err(|e| {
        let mut msg = describe_envy_error(&e, prefix);
        if !msg.contains(" provided by ") {
            // envy names the variable only for some errors (not for enums): find it by
            // parsing each variable of the family on its own.
            let culprit = vars.iter().find(|(k, _)| {
                k.starts_with(prefix) && parse_one::<T>(k, &vars_value(vars, k), prefix).is_err()
            });
            if let Some((k, _)) = culprit {
                msg = format!("{msg} (variable {k})");
            }
        }
        Error::Config(msg)
    })
}

fn vars_value(vars: &[(String, String)], key: &str) -> String {
    vars.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn parse_one<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &str,
    prefix: &str,
) -> Result<T, envy::Error> {
    let one = std::iter::once((key.to_string(), value.to_string()));
    if prefix.is_empty() {
        envy::from_iter::<_, T>(one)
    } else {
        envy::prefixed(prefix).from_iter::<_, T>(one)
    }
}

fn describe_envy_error(e: &envy::Error, prefix: &str) -> String {
    match e {
        envy::Error::MissingValue(field) => {
            format!("missing variable {prefix}{}", field.to_ascii_uppercase())
        }
        envy::Error::Custom(msg) => {
            // Put the prefix back on the variable name envy reports without it. Secret
            // variables are plain strings: they never fail to parse, so their values
            // cannot appear here.
            let msg = match msg.rsplit_once(" provided by ") {
                Some((head, var)) => format!("{head} provided by {prefix}{var}"),
                None => msg.clone(),
            };
            format!("invalid configuration: {msg}")
        }
    }
}

/// The environment a program starts with, as plain data (tests pass their own).
pub fn vars_from_process() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Everything the mover reads from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoverConfig {
    pub restic: ResticEnv,
    pub common: CommonEnv,
    pub mover: MoverEnv,
}

impl MoverConfig {
    pub fn from_vars(vars: &[(String, String)]) -> Result<Self, Error> {
        check_unknown(vars.iter().cloned())?;
        // Empty values count as unset (Kubernetes renders optional keys as "").
        let vars: Vec<(String, String)> = vars
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .cloned()
            .collect();
        let cfg = Self {
            restic: parse(&vars, "")?,
            common: parse(&vars, PREFIX)?,
            mover: parse(&vars, PREFIX)?,
        };
        cfg.common.validate()?;
        Ok(cfg)
    }

    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(&vars_from_process())
    }
}

/// `STOWAGE_RESULT_FILE` on its own: where a mover whose environment is otherwise
/// unusable still writes its result.
pub fn result_file(vars: &[(String, String)]) -> Option<PathBuf> {
    vars.iter()
        .find(|(k, v)| k == "STOWAGE_RESULT_FILE" && !v.is_empty())
        .map(|(_, v)| PathBuf::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = MoverConfig::from_vars(&[]).unwrap();
        assert_eq!(c.mover.source, PathBuf::from("/data"));
        assert_eq!(c.mover.snapshot_host, "volsync");
        assert_eq!(c.common.s3_concurrency, 2);
        assert!(!c.common.allow_http);
    }

    #[test]
    fn volsync_secret_keys_are_read_unchanged() {
        let c = MoverConfig::from_vars(&vars(&[
            (
                "RESTIC_REPOSITORY",
                "s3:https://minio.example/bucket/ns/app",
            ),
            ("RESTIC_PASSWORD", "pw"),
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_DEFAULT_REGION", "eu-1"),
        ]))
        .unwrap();
        assert_eq!(
            c.restic.restic_repository.as_deref(),
            Some("s3:https://minio.example/bucket/ns/app")
        );
        assert_eq!(c.restic.aws_default_region.as_deref(), Some("eu-1"));
    }

    #[test]
    fn own_variables_are_parsed() {
        let c = MoverConfig::from_vars(&vars(&[
            ("STOWAGE_ALLOW_HTTP", "true"),
            ("STOWAGE_S3_CONCURRENCY", "8"),
            ("STOWAGE_PVC_UID", "1234"),
            ("STOWAGE_LIMIT_UPLOAD", "512"),
        ]))
        .unwrap();
        assert!(c.common.allow_http);
        assert_eq!(c.common.s3_concurrency, 8);
        assert_eq!(c.common.limit_upload, Some(512));
        assert_eq!(c.mover.pvc_uid.as_deref(), Some("1234"));
    }

    #[test]
    fn malformed_value_names_the_variable() {
        let err = MoverConfig::from_vars(&vars(&[("STOWAGE_S3_CONCURRENCY", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("STOWAGE_S3_CONCURRENCY"), "{err}");
        let err = MoverConfig::from_vars(&vars(&[("STOWAGE_LOG_FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("STOWAGE_LOG_FORMAT"), "{err}");
    }

    #[test]
    fn invalid_log_filter_is_an_error_naming_the_variable_and_value_for_every_program() {
        let bad = vars(&[("STOWAGE_LOG", "info,stowage=loud")]);
        let errors = [
            MoverConfig::from_vars(&bad).map(|_| ()),
            SchedulerConfig::from_vars(&bad).map(|_| ()),
            GcConfig::from_vars(&bad).map(|_| ()),
            PrewarmConfig::from_vars(&bad).map(|_| ()),
        ];
        for e in errors {
            let e = e.unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("STOWAGE_LOG"), "{text}");
            assert!(text.contains("info,stowage=loud"), "{text}");
        }
        let good = vars(&[("STOWAGE_LOG", "debug,rustic_core=warn")]);
        assert_eq!(
            MoverConfig::from_vars(&good).unwrap().common.log,
            "debug,rustic_core=warn"
        );
    }

    #[test]
    fn result_file_is_found_without_the_rest_of_the_environment() {
        let v = vars(&[
            ("STOWAGE_S3_CONCURRENCY", "lots"),
            ("STOWAGE_RESULT_FILE", "/dev/termination-log"),
        ]);
        assert!(MoverConfig::from_vars(&v).is_err());
        assert_eq!(result_file(&v), Some(PathBuf::from("/dev/termination-log")));
        assert_eq!(result_file(&vars(&[("STOWAGE_RESULT_FILE", "")])), None);
    }

    #[test]
    fn unknown_stowage_variable_is_an_error_naming_it() {
        let err = MoverConfig::from_vars(&vars(&[("STOWAGE_ALOW_HTTP", "true")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("STOWAGE_ALOW_HTTP"), "{err}");
        assert!(err.contains("STOWAGE_ALLOW_HTTP"), "{err}");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = MoverConfig::from_vars(&vars(&[("STOWAGE_S3_CONCURRENCY", "")])).unwrap();
        assert_eq!(c.common.s3_concurrency, 2);
    }

    #[test]
    fn pass_budget_stops_new_work_once_used() {
        use std::time::Duration;
        let c = GcConfig::from_vars(&vars(&[])).unwrap();
        let budget = c.common.pass_budget();
        assert_eq!(budget, Some(Duration::from_secs(20)));
        assert!(may_start(Duration::from_secs(19), budget));
        assert!(!may_start(Duration::from_secs(20), budget));
        let off = GcConfig::from_vars(&vars(&[("STOWAGE_PASS_BUDGET_SECS", "0")])).unwrap();
        assert_eq!(off.common.pass_budget(), None);
        assert!(may_start(Duration::from_secs(86_400), None));
    }

    #[test]
    fn known_names_cover_every_field() {
        let names = known_stowage_names();
        for n in [
            "allow_http",
            "source",
            "snapshot_host",
            "pvc_uid",
            "cache_dir",
        ] {
            assert!(names.contains(n), "{n}");
        }
    }

    #[test]
    fn cluster_settings_are_read_alike_by_every_cluster_program() {
        let defaults = ClusterEnv {
            system_namespace: "stowage".into(),
            policies_configmap: "stowage-policies".into(),
            credentials_secret: "stowage-credentials".into(),
            backup_label: "backup".into(),
            repository_base: None,
            pushgateway_url: None,
        };
        assert_eq!(
            SchedulerConfig::from_vars(&[]).unwrap().scheduler.cluster,
            defaults
        );
        assert_eq!(GcConfig::from_vars(&[]).unwrap().gc.cluster, defaults);
        assert_eq!(
            PrewarmConfig::from_vars(&[]).unwrap().prewarm.cluster,
            defaults
        );
        let v = vars(&[
            ("STOWAGE_SYSTEM_NAMESPACE", "backup-system"),
            ("STOWAGE_POLICIES_CONFIGMAP", "policies"),
            ("STOWAGE_CREDENTIALS_SECRET", "creds"),
            ("STOWAGE_BACKUP_LABEL", "example.com/backup"),
            ("STOWAGE_REPOSITORY_BASE", "s3:https://s3.lan/b"),
            ("STOWAGE_PUSHGATEWAY_URL", "http://pgw:9091"),
            // Each program's own settings still parse beside them.
            ("STOWAGE_MAX_CONCURRENT_JOBS", "5"),
            ("STOWAGE_PRUNE_INTERVAL_HOURS", "12"),
            ("STOWAGE_POLL_SECONDS", "3"),
        ]);
        let s = SchedulerConfig::from_vars(&v).unwrap().scheduler;
        let g = GcConfig::from_vars(&v).unwrap().gc;
        let p = PrewarmConfig::from_vars(&v).unwrap().prewarm;
        assert_eq!(s.cluster.system_namespace, "backup-system");
        assert_eq!(s.cluster.backup_label, "example.com/backup");
        assert_eq!(
            s.cluster.pushgateway_url.as_deref(),
            Some("http://pgw:9091")
        );
        assert_eq!(s.cluster, g.cluster);
        assert_eq!(s.cluster, p.cluster);
        assert_eq!(
            (
                s.max_concurrent_jobs,
                g.prune_interval_hours,
                p.poll_seconds
            ),
            (5, 12, 3)
        );
        // A malformed own setting is still named.
        let err = SchedulerConfig::from_vars(&vars(&[
            ("STOWAGE_SYSTEM_NAMESPACE", "backup-system"),
            ("STOWAGE_MAX_CONCURRENT_JOBS", "lots"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("STOWAGE_MAX_CONCURRENT_JOBS"), "{err}");
    }

    #[test]
    fn the_embedded_cluster_settings_keep_their_variable_names() {
        let names = known_stowage_names();
        for n in [
            "system_namespace",
            "policies_configmap",
            "credentials_secret",
            "backup_label",
            "repository_base",
            "pushgateway_url",
        ] {
            assert!(names.contains(n), "{n}");
        }
        assert!(!names.contains("cluster"), "{names:?}");
        assert!(
            SchedulerConfig::from_vars(&vars(&[("STOWAGE_CLUSTER", "x")])).is_err(),
            "the field's own name is no variable"
        );
    }
}
