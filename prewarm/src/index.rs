//! The backup index: every repository under the base with its newest snapshot (time,
//! id, size), published in a ConfigMap of the stowage namespace and as metrics.
//!
//! Cost grows with the number of repositories, not with the data: discovery lists
//! level by level (`common::discover`), then each repository's `snapshots/` directory
//! is listed (one request); only a repository whose listing changed since the last
//! index is opened and its snapshot files read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustic_core::NoProgressBars;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stowage_common::env::PrewarmConfig;
use stowage_common::k8s::contract::{app, prewarm as pc};
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_common::k8s::naming::{repository_for, short_hash};
use stowage_common::k8s::{describe_kube_error, is_status};
use stowage_common::location::Location;
use stowage_common::metrics::{Registry, prewarm_names as names};
use stowage_common::s3::S3Settings;
use stowage_common::{Error, discover};

use crate::source::{self, RepoCreds};

/// One repository in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub namespace: String,
    pub pvc: String,
    pub repository: String,
    pub snapshots: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Latest>,
    /// Hash of the snapshot file names: unchanged means nothing to read again.
    pub listing: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub id: String,
    pub time: String,
    pub host: String,
    pub bytes: u64,
    pub files: u64,
}

/// The document in the ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub generated: String,
    pub base: String,
    pub repositories: Vec<Entry>,
    pub s3_requests: u64,
    pub duration_secs: f64,
}

/// What an index run did.
#[derive(Debug, Default)]
pub struct IndexReport {
    pub repositories: usize,
    pub opened: usize,
    pub errors: usize,
    pub s3_requests: u64,
    pub duration_secs: f64,
}

/// Whether the index is due at `now` (from the ConfigMap's annotation).
pub fn due(last: Option<Timestamp>, now: Timestamp, interval_minutes: u64) -> bool {
    if interval_minutes == 0 {
        return false;
    }
    match last {
        None => true,
        Some(t) => now.duration_since(t).as_secs() >= (interval_minutes as i64) * 60 - 5,
    }
}

/// The repositories under the base: (namespace, pvc) directories holding a `config`.
async fn discover_all(
    base: &str,
    creds: &RepoCreds,
    cfg: &PrewarmConfig,
    requests: &AtomicU64,
) -> Result<Vec<(String, String)>, Error> {
    let endpoint = cfg
        .restic
        .aws_endpoint_url_s3
        .as_deref()
        .or(cfg.restic.aws_endpoint_url.as_deref());
    match Location::parse(base, endpoint)? {
        Location::S3(loc) => {
            let settings = s3_settings(loc, creds, cfg)?;
            Ok(discover::repositories(&settings, requests)
                .await?
                .into_iter()
                .map(|f| (f.namespace, f.pvc))
                .collect())
        }
        Location::Local(dir) => {
            let mut out = Vec::new();
            let read = |d: &std::path::Path| -> Result<Vec<std::fs::DirEntry>, Error> {
                match std::fs::read_dir(d) {
                    Ok(rd) => Ok(rd.filter_map(|e| e.ok()).collect()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                    Err(e) => Err(Error::Storage(format!("cannot list {}: {e}", d.display()))),
                }
            };
            for ns in read(&dir)? {
                if !ns.path().is_dir() {
                    continue;
                }
                for pvc in read(&ns.path())? {
                    if pvc.path().join("config").is_file() {
                        out.push((
                            ns.file_name().to_string_lossy().into_owned(),
                            pvc.file_name().to_string_lossy().into_owned(),
                        ));
                    }
                }
            }
            out.sort();
            Ok(out)
        }
    }
}

fn s3_settings(
    loc: stowage_common::location::S3Location,
    creds: &RepoCreds,
    cfg: &PrewarmConfig,
) -> Result<S3Settings, Error> {
    let restic = stowage_common::env::ResticEnv {
        aws_access_key_id: Some(creds.access_key_id.clone()),
        aws_secret_access_key: Some(creds.secret_access_key.clone()),
        aws_default_region: creds
            .region
            .clone()
            .or_else(|| cfg.restic.aws_default_region.clone()),
        ..cfg.restic.clone()
    };
    S3Settings::from_env(loc, &restic, &cfg.common)
}

/// Names of the snapshot files of one repository (one LIST request for S3).
async fn snapshot_listing(
    url: &str,
    creds: &RepoCreds,
    cfg: &PrewarmConfig,
    requests: &AtomicU64,
) -> Result<Vec<String>, Error> {
    let endpoint = cfg
        .restic
        .aws_endpoint_url_s3
        .as_deref()
        .or(cfg.restic.aws_endpoint_url.as_deref());
    match Location::parse(url, endpoint)? {
        Location::S3(loc) => {
            let settings = s3_settings(loc.clone(), creds, cfg)?;
            let client = settings.client()?;
            let prefix = loc.key("snapshots/");
            let mut names = Vec::new();
            let mut token = None;
            loop {
                requests.fetch_add(1, Ordering::Relaxed);
                let resp = client
                    .list_objects_v2()
                    .bucket(&loc.bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| {
                        Error::Storage(stowage_common::s3::describe(&e, "list", &prefix, &settings))
                    })?;
                for o in resp.contents() {
                    if let Some(k) = o.key() {
                        names.push(k.rsplit('/').next().unwrap_or(k).to_string());
                    }
                }
                match resp.next_continuation_token() {
                    Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            names.sort();
            Ok(names)
        }
        Location::Local(dir) => {
            let d = dir.join("snapshots");
            let mut names: Vec<String> = match std::fs::read_dir(&d) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::Storage(format!("cannot list {}: {e}", d.display()))),
            };
            names.sort();
            Ok(names)
        }
    }
}

/// Reads every snapshot of a repository (blocking): count and newest.
fn read_repository(
    url: &str,
    creds: &RepoCreds,
    cfg: &PrewarmConfig,
) -> Result<(usize, Option<Latest>, u64), Error> {
    let access = source::access(url, creds, &cfg.restic, &cfg.common)?;
    let repo = access
        .open(NoProgressBars)?
        .ok_or_else(|| Error::Storage(format!("repository {url} vanished while indexing")))?;
    let snaps = repo.get_all_snapshots().map_err(Error::from_rustic)?;
    let requests = access
        .storage
        .stats()
        .map(|s| s.requests.load(Ordering::Relaxed))
        .unwrap_or(0);
    let latest = snaps
        .iter()
        .max_by_key(|s| s.time.timestamp())
        .map(|s| Latest {
            id: s.id.to_hex().to_string(),
            time: s.time.timestamp().to_string(),
            host: s.hostname.clone(),
            bytes: s
                .summary
                .as_ref()
                .map(|x| x.total_bytes_processed)
                .unwrap_or(0),
            files: s
                .summary
                .as_ref()
                .map(|x| x.total_files_processed)
                .unwrap_or(0),
        });
    Ok((snaps.len(), latest, requests))
}

/// Builds the index: `previous` spares reading unchanged repositories.
pub async fn build(
    base: &str,
    master: &str,
    keys: (&str, &str),
    cfg: &PrewarmConfig,
    previous: &Index,
) -> Result<Index> {
    build_with(
        base,
        &|url| derive_repository_password(master, url),
        keys,
        cfg,
        previous,
    )
    .await
}

/// [`build`] with the password of each repository URL given by `password_for`.
pub async fn build_with(
    base: &str,
    password_for: &(dyn Fn(&str) -> String + Sync),
    keys: (&str, &str),
    cfg: &PrewarmConfig,
    previous: &Index,
) -> Result<Index> {
    let started = Instant::now();
    let requests = Arc::new(AtomicU64::new(0));
    let region = cfg
        .restic
        .aws_default_region
        .clone()
        .or_else(|| cfg.restic.aws_region.clone());
    let base_creds = RepoCreds {
        password: String::new(),
        access_key_id: keys.0.to_string(),
        secret_access_key: keys.1.to_string(),
        region,
    };
    let found = discover_all(base, &base_creds, cfg, &requests)
        .await
        .map_err(|e| anyhow!("cannot list the repositories under {base}: {e}"))?;
    tracing::info!(base, repositories = found.len(), "indexing repositories");
    let old: BTreeMap<(String, String), &Entry> = previous
        .repositories
        .iter()
        .filter(|e| e.error.is_none())
        .map(|e| ((e.namespace.clone(), e.pvc.clone()), e))
        .collect();
    let mut out = Vec::with_capacity(found.len());
    let mut last_progress = Instant::now();
    for (i, (ns, pvc)) in found.into_iter().enumerate() {
        if last_progress.elapsed() >= cfg.common.progress_interval() {
            tracing::info!(done = i, "indexing…");
            last_progress = Instant::now();
        }
        let url = repository_for(base, &ns, &pvc);
        let creds = RepoCreds {
            password: password_for(&url),
            ..base_creds.clone()
        };
        let listing = match snapshot_listing(&url, &creds, cfg, &requests).await {
            Ok(names) => short_hash(&names.iter().map(String::as_str).collect::<Vec<_>>()),
            Err(e) => {
                out.push(Entry {
                    namespace: ns,
                    pvc,
                    repository: url,
                    snapshots: 0,
                    latest: None,
                    listing: String::new(),
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        if let Some(prev) = old.get(&(ns.clone(), pvc.clone()))
            && prev.listing == listing
            && prev.repository == url
        {
            out.push((*prev).clone());
            continue;
        }
        let (u, c, cf) = (url.clone(), creds.clone(), cfg.clone());
        let read = tokio::task::spawn_blocking(move || read_repository(&u, &c, &cf)).await;
        let entry = match read {
            Ok(Ok((n, latest, reqs))) => {
                requests.fetch_add(reqs, Ordering::Relaxed);
                Entry {
                    namespace: ns,
                    pvc,
                    repository: url,
                    snapshots: n,
                    latest,
                    listing,
                    error: None,
                }
            }
            Ok(Err(e)) => Entry {
                namespace: ns,
                pvc,
                repository: url,
                snapshots: 0,
                latest: None,
                listing: String::new(),
                error: Some(e.to_string()),
            },
            Err(e) => Entry {
                namespace: ns,
                pvc,
                repository: url,
                snapshots: 0,
                latest: None,
                listing: String::new(),
                error: Some(format!("reading failed: {e}")),
            },
        };
        out.push(entry);
    }
    Ok(Index {
        generated: Timestamp::now().to_string(),
        base: base.to_string(),
        repositories: out,
        s3_requests: requests.load(Ordering::Relaxed),
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

/// A table for people (`kubectl get cm stowage-index -o jsonpath='{.data.index\.txt}'`).
pub fn table(index: &Index) -> String {
    let mut s = format!(
        "{:<24} {:<32} {:>5} {:<10} {:<25} {:>14}\n",
        "NAMESPACE", "PVC", "SNAPS", "LATEST", "TIME", "BYTES"
    );
    for e in &index.repositories {
        match (&e.latest, &e.error) {
            (_, Some(err)) => {
                s.push_str(&format!("{:<24} {:<32} ERROR {err}\n", e.namespace, e.pvc))
            }
            (Some(l), None) => s.push_str(&format!(
                "{:<24} {:<32} {:>5} {:<10} {:<25} {:>14}\n",
                e.namespace,
                e.pvc,
                e.snapshots,
                l.id.get(..8).unwrap_or(&l.id),
                l.time,
                l.bytes
            )),
            (None, None) => s.push_str(&format!(
                "{:<24} {:<32} {:>5} -\n",
                e.namespace, e.pvc, e.snapshots
            )),
        }
    }
    s
}

/// Reads the previous index and the time it was made.
pub async fn load(client: &Client, ns: &str, name: &str) -> Result<(Index, Option<Timestamp>)> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| {
            anyhow!(describe_kube_error(
                &e,
                &format!("get configmap {ns}/{name}")
            ))
        })?;
    let Some(cm) = cm else {
        return Ok((Index::default(), None));
    };
    let at = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(pc::INDEXED_AT))
        .and_then(|v| v.parse().ok());
    let index = cm
        .data
        .as_ref()
        .and_then(|d| d.get(pc::INDEX_KEY))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    Ok((index, at))
}

/// Writes the index ConfigMap (created if missing).
pub async fn store(client: &Client, ns: &str, name: &str, index: &Index) -> Result<()> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let body = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {app::MANAGED_BY: app::STOWAGE, app::PART_OF: app::STOWAGE,
                       app::COMPONENT: "index"},
            "annotations": {pc::INDEXED_AT: index.generated},
        },
        "data": {
            pc::INDEX_KEY: serde_json::to_string(index)?,
            "index.txt": table(index),
        }
    });
    let cm: ConfigMap = serde_json::from_value(body.clone())?;
    match api.create(&PostParams::default(), &cm).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => api
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map(|_| ())
            .map_err(|e| {
                anyhow!(describe_kube_error(
                    &e,
                    &format!("update configmap {ns}/{name}")
                ))
            }),
        Err(e) => Err(anyhow!(describe_kube_error(
            &e,
            &format!("create configmap {ns}/{name}")
        ))),
    }
}

/// Metrics of an index.
pub fn metrics(index: &Index, registry: &mut Registry) {
    registry.gauge(
        names::INDEX_REPOSITORIES,
        "Repositories in the backup index",
        &[],
        index.repositories.len() as f64,
    );
    let mut errors = 0;
    for e in &index.repositories {
        let labels = [
            ("namespace", e.namespace.as_str()),
            ("persistentvolumeclaim", e.pvc.as_str()),
        ];
        if e.error.is_some() {
            errors += 1;
            continue;
        }
        registry.gauge(
            names::INDEX_SNAPSHOTS,
            "Snapshots in a repository",
            &labels,
            e.snapshots as f64,
        );
        if let Some(l) = &e.latest {
            if let Ok(t) = l.time.parse::<Timestamp>() {
                registry.gauge(
                    names::INDEX_LAST_SNAPSHOT,
                    "Time of the newest snapshot of a repository",
                    &labels,
                    t.as_second() as f64,
                );
            }
            registry.gauge(
                names::INDEX_LAST_SNAPSHOT_BYTES,
                "Bytes of the newest snapshot of a repository",
                &labels,
                l.bytes as f64,
            );
        }
    }
    registry.gauge(
        names::INDEX_ERRORS,
        "Repositories the index could not read",
        &[],
        errors as f64,
    );
    registry.gauge(
        names::INDEX_DURATION,
        "Duration of the last index run",
        &[],
        index.duration_secs,
    );
    registry.gauge(
        names::INDEX_S3_REQUESTS,
        "S3 requests of the last index run",
        &[],
        index.s3_requests as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_on_its_own_cadence() {
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        assert!(due(None, now, 15));
        assert!(!due(Some("2026-11-23T09:50:00Z".parse().unwrap()), now, 15));
        assert!(due(Some("2026-11-23T09:45:00Z".parse().unwrap()), now, 15));
        assert!(!due(None, now, 0));
    }

    #[test]
    fn table_lists_each_repository() {
        let idx = Index {
            repositories: vec![Entry {
                namespace: "db".into(),
                pvc: "pg".into(),
                repository: "r".into(),
                snapshots: 3,
                latest: Some(Latest {
                    id: "0123456789abcdef".into(),
                    time: "2026-11-23T03:00:00Z".into(),
                    host: "volsync".into(),
                    bytes: 42,
                    files: 1,
                }),
                listing: "x".into(),
                error: None,
            }],
            ..Default::default()
        };
        let t = table(&idx);
        assert!(
            t.contains("db") && t.contains("01234567") && t.contains("42"),
            "{t}"
        );
    }
}
