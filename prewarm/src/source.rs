//! Asking the storage about a source repository: does it exist, which snapshots does
//! it hold. Only a clear answer from the storage counts as "no backup"; every error is
//! "unavailable" (retry), never "empty".

use std::time::Duration;

use jiff::Timestamp;
use rustic_core::NoProgressBars;
use stowage_common::Error;
use stowage_common::backend::{BackendOptions, Storage};
use stowage_common::env::{CommonEnv, ResticEnv};
use stowage_common::location::Location;
use stowage_common::repo::RepoAccess;

use crate::plan::{Selector, Snap, SourceAnswer, select};

/// Keys and password for one repository.
#[derive(Clone)]
pub struct RepoCreds {
    pub password: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: Option<String>,
}

/// Access to `url` with explicit credentials (no request sent yet).
pub fn access(
    url: &str,
    creds: &RepoCreds,
    restic: &ResticEnv,
    common: &CommonEnv,
) -> Result<RepoAccess, Error> {
    let endpoint = restic
        .aws_endpoint_url_s3
        .as_deref()
        .or(restic.aws_endpoint_url.as_deref());
    let location = Location::parse(url, endpoint)?;
    let restic = ResticEnv {
        aws_access_key_id: Some(creds.access_key_id.clone()),
        aws_secret_access_key: Some(creds.secret_access_key.clone()),
        aws_default_region: creds
            .region
            .clone()
            .or_else(|| restic.aws_default_region.clone()),
        ..restic.clone()
    };
    let storage = Storage::open(&location, &restic, common)?;
    let mut a = RepoAccess::new(location, storage, creds.password.clone(), None);
    a.backend_options = BackendOptions::from_env(common);
    Ok(a)
}

/// The snapshots of a repository; `Ok(None)`: no repository (the storage said so).
pub fn snapshots(access: &RepoAccess) -> Result<Option<Vec<Snap>>, Error> {
    let Some(repo) = access.open(NoProgressBars)? else {
        return Ok(None);
    };
    // Tolerant: one garbled snapshot file must not block restoring from the others.
    let listing = stowage_common::repo::list_snapshots(&repo)?;
    if let Some(summary) = stowage_common::repo::damaged_summary(&listing.damaged) {
        tracing::warn!(repository = %access.location, "{summary}");
    }
    let snaps = listing.snapshots;
    Ok(Some(
        snaps
            .iter()
            .map(|s| Snap {
                id: s.id.to_hex().to_string(),
                time: s.time.timestamp(),
                host: s.hostname.clone(),
            })
            .collect(),
    ))
}

/// How long one lookup may take before it counts as unavailable.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Looks the source up on a blocking thread, within [`LOOKUP_TIMEOUT`].
pub async fn lookup(
    url: String,
    creds: RepoCreds,
    restic: ResticEnv,
    common: CommonEnv,
    selector: Selector,
) -> SourceAnswer {
    let task = tokio::task::spawn_blocking(move || {
        let a = access(&url, &creds, &restic, &common)?;
        snapshots(&a)
    });
    match tokio::time::timeout(LOOKUP_TIMEOUT, task).await {
        Err(_) => SourceAnswer::Unavailable(format!(
            "the storage did not answer within {}s",
            LOOKUP_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => SourceAnswer::Unavailable(format!("lookup failed: {e}")),
        Ok(Ok(Err(e))) => SourceAnswer::Unavailable(e.to_string()),
        Ok(Ok(Ok(None))) => match selector {
            Selector::Latest => SourceAnswer::NoBackup,
            other => SourceAnswer::Invalid(format!(
                "the repository does not exist, so {} cannot be restored",
                match other {
                    Selector::Id(id) => format!("snapshot {id}"),
                    Selector::AsOf(t) => format!("the state as of {t}"),
                    Selector::Latest => unreachable!(),
                }
            )),
        },
        Ok(Ok(Ok(Some(snaps)))) => select(&snaps, &selector),
    }
}

/// Parses an RFC 3339 time from an annotation.
pub fn parse_time(v: Option<&String>) -> Option<Timestamp> {
    v.and_then(|s| s.parse().ok())
}
