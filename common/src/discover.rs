//! Finding the repositories under a bucket and prefix: `<prefix>/<namespace>/<pvc>/`
//! holding a restic `config` file. Lists level by level with the `/` delimiter, so the
//! cost is one request per thousand namespaces or PVCs plus one `HEAD` per candidate,
//! never a listing of the packs.

use std::sync::atomic::{AtomicU64, Ordering};

/// The S3 client type, for programs that list many repositories with one client.
pub use aws_sdk_s3::Client;

use crate::Error;
use crate::location::S3Location;
use crate::s3::{Failure, S3Settings, classify, describe};

/// A repository found under the base: its namespace and PVC directory names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub namespace: String,
    pub pvc: String,
    /// The repository's own location (`<prefix>/<namespace>/<pvc>`).
    pub location: S3Location,
}

/// Lists the repositories under `settings.location` (bucket + prefix). `requests`
/// counts the S3 requests sent.
pub async fn repositories(
    settings: &S3Settings,
    requests: &AtomicU64,
) -> Result<Vec<Found>, Error> {
    let client = settings.client()?;
    let base = &settings.location;
    let root = dir_prefix(&base.prefix);
    let mut candidates = Vec::new();
    for ns in common_prefixes(&client, settings, &root, requests).await? {
        let ns_prefix = format!("{root}{ns}/");
        for pvc in common_prefixes(&client, settings, &ns_prefix, requests).await? {
            candidates.push((ns.clone(), pvc));
        }
    }
    // One HEAD per candidate, [`HEAD_CONCURRENCY`] at once: latency, not work.
    let mut out = Vec::new();
    let mut heads = tokio::task::JoinSet::new();
    let mut pending = candidates.into_iter();
    loop {
        while heads.len() < HEAD_CONCURRENCY {
            let Some((ns, pvc)) = pending.next() else {
                break;
            };
            requests.fetch_add(1, Ordering::Relaxed);
            let (client, settings) = (client.clone(), settings.clone());
            heads.spawn(async move {
                let base = &settings.location;
                let prefix = format!("{}{ns}/{pvc}", dir_prefix(&base.prefix));
                let key = format!("{prefix}/config");
                match client
                    .head_object()
                    .bucket(&base.bucket)
                    .key(&key)
                    .send()
                    .await
                {
                    Ok(_) => Ok(Some(Found {
                        namespace: ns,
                        pvc,
                        location: S3Location {
                            endpoint: base.endpoint.clone(),
                            bucket: base.bucket.clone(),
                            prefix,
                        },
                    })),
                    Err(e) if classify(&e) == Failure::NotFound => {
                        tracing::debug!(prefix = %prefix, "no repository config here; skipped");
                        Ok(None)
                    }
                    Err(e) => Err(Error::Storage(describe(&e, "read", &key, &settings))),
                }
            });
        }
        let Some(done) = heads.join_next().await else {
            break;
        };
        match done {
            Ok(Ok(Some(f))) => out.push(f),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Error::Storage(format!("repository discovery failed: {e}"))),
        }
    }
    out.sort();
    Ok(out)
}

/// Candidates checked for a `config` at once in [`repositories`].
const HEAD_CONCURRENCY: usize = 16;

/// Names (last path component, sorted) of the objects under `prefix` in the bucket of
/// `settings`, e.g. a repository's `snapshots/` or `locks/`: one request per thousand.
/// `client` may be shared by every repository reached with the same keys.
pub async fn names(
    client: &Client,
    settings: &S3Settings,
    prefix: &str,
    requests: &AtomicU64,
) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        requests.fetch_add(1, Ordering::Relaxed);
        let resp = client
            .list_objects_v2()
            .bucket(&settings.location.bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| Error::Storage(describe(&e, "list", prefix, settings)))?;
        for o in resp.contents() {
            if let Some(k) = o.key() {
                out.push(k.rsplit('/').next().unwrap_or(k).to_string());
            }
        }
        match resp.next_continuation_token() {
            Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    out.sort();
    Ok(out)
}

/// `prefix/` or empty for the bucket root.
fn dir_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// The next path component of every key under `prefix` (without the slash).
async fn common_prefixes(
    client: &Client,
    settings: &S3Settings,
    prefix: &str,
    requests: &AtomicU64,
) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        requests.fetch_add(1, Ordering::Relaxed);
        let resp = client
            .list_objects_v2()
            .bucket(&settings.location.bucket)
            .prefix(prefix)
            .delimiter("/")
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| {
                Error::Storage(describe(
                    &e,
                    "list",
                    if prefix.is_empty() { "/" } else { prefix },
                    settings,
                ))
            })?;
        for cp in resp.common_prefixes() {
            if let Some(p) = cp.prefix() {
                let name = p[prefix.len()..].trim_end_matches('/');
                if !name.is_empty() {
                    out.push(name.to_string());
                }
            }
        }
        match resp.next_continuation_token() {
            Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(dir_prefix(""), "");
        assert_eq!(dir_prefix("/a/b/"), "a/b/");
    }
}
