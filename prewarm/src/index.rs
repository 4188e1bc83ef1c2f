//! The backup index: every repository under the base with its newest snapshot (time,
//! id, size), published in a ConfigMap of the stowage namespace and as metrics.
//!
//! Cost grows with the number of repositories, not with the data: discovery lists
//! level by level (`common::discover`), then each repository's `snapshots/` directory
//! is listed (one request, many at once); only a repository whose listing changed since
//! the last index is opened and its snapshot files read. Opening costs a key derivation
//! (scrypt: about a third of a CPU second and 128 MiB), so a run opens a few at a time
//! and starts no new one after the pass budget (`STOWAGE_PASS_BUDGET_SECS`): the others
//! keep their last entry, marked pending, and the next run (due at once while the index
//! is incomplete) reads them first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustic_core::NoProgressBars;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stowage_common::env::{PrewarmConfig, may_start};
use stowage_common::k8s::contract::{app, prewarm as pc};
use stowage_common::k8s::credentials::derive_repository_password;
use stowage_common::k8s::naming::{repository_for, short_hash};
use stowage_common::k8s::{describe_kube_error, is_status};
use stowage_common::location::{Location, S3Location};
use stowage_common::metrics::{Registry, prewarm_names as names};
use stowage_common::s3::S3Settings;
use stowage_common::{Error, discover};
use tokio::sync::Semaphore;

use crate::source::{self, RepoCreds};

/// Repositories the index opens at once (within [`crate::OPENS`]).
pub const OPEN_CONCURRENCY: usize = crate::OPEN_CONCURRENCY;
/// `snapshots/` listings at once (S3 latency only).
pub const LIST_CONCURRENCY: usize = 16;

/// One repository in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub namespace: String,
    pub pvc: String,
    pub repository: String,
    pub snapshots: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Latest>,
    /// Hash of the snapshot file names at the last read: unchanged means nothing to
    /// read again.
    pub listing: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the repository was last read (opened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<Timestamp>,
    /// Its listing changed (or it was never read) and it waits for a later run: the
    /// other fields are from the last read, if any.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub id: String,
    pub time: String,
    pub host: String,
    pub bytes: u64,
    pub files: u64,
}

fn yes() -> bool {
    true
}

/// The document in the ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub generated: String,
    pub base: String,
    pub repositories: Vec<Entry>,
    pub s3_requests: u64,
    pub duration_secs: f64,
    /// Every repository was read (no entry pending). Documents written before this
    /// field existed were complete.
    #[serde(default = "yes")]
    pub complete: bool,
}

impl Index {
    /// Entries waiting for a later run.
    pub fn pending(&self) -> usize {
        self.repositories.iter().filter(|e| e.pending).count()
    }
}

/// Whether the index is due at `now` (from the ConfigMap's annotation). An unfinished
/// index is due at once: the next run continues it.
pub fn due(last: Option<Timestamp>, now: Timestamp, interval_minutes: u64, complete: bool) -> bool {
    if interval_minutes == 0 {
        return false;
    }
    match last {
        None => true,
        Some(_) if !complete => true,
        Some(t) => now.duration_since(t).as_secs() >= (interval_minutes as i64) * 60 - 5,
    }
}

/// Whether `previous` still describes the repository at `url` whose `snapshots/`
/// listing hashes to `listing`: snapshot files are named by the hash of their content,
/// so the same names are the same snapshots.
pub fn unchanged(previous: Option<&Entry>, url: &str, listing: &str) -> bool {
    previous.is_some_and(|p| p.error.is_none() && p.repository == url && p.listing == listing)
}

/// The order in which changed repositories are read: never read (or unreadable last
/// time) first, since a new PVC may wait for its backup, then the one read longest ago.
pub fn read_order(changed: &[Option<&Entry>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..changed.len()).collect();
    order.sort_by_key(|&i| {
        (
            changed[i]
                .filter(|e| e.error.is_none())
                .and_then(|e| e.read_at),
            i,
        )
    });
    order
}

/// The entry of a repository not read in this run: its last read, marked pending (its
/// old listing hash keeps it "changed" for the next run).
pub fn pending_entry(ns: &str, pvc: &str, url: &str, previous: Option<&Entry>) -> Entry {
    match previous.filter(|p| p.error.is_none() && p.repository == url) {
        Some(p) => Entry {
            pending: true,
            ..p.clone()
        },
        None => Entry {
            namespace: ns.to_string(),
            pvc: pvc.to_string(),
            repository: url.to_string(),
            snapshots: 0,
            latest: None,
            listing: String::new(),
            error: None,
            read_at: None,
            pending: true,
        },
    }
}

fn error_entry(ns: &str, pvc: &str, url: &str, error: String) -> Entry {
    Entry {
        namespace: ns.to_string(),
        pvc: pvc.to_string(),
        repository: url.to_string(),
        snapshots: 0,
        latest: None,
        listing: String::new(),
        error: Some(error),
        read_at: None,
        pending: false,
    }
}

/// Where the repositories are listed: one S3 client for all of them, or a directory.
enum Lister {
    S3 {
        client: discover::Client,
        settings: Box<S3Settings>,
    },
    Local(std::path::PathBuf),
}

/// The repositories under the base: (namespace, pvc) directories holding a `config`.
async fn discover_all(
    base: &str,
    creds: &RepoCreds,
    cfg: &PrewarmConfig,
    requests: &AtomicU64,
) -> Result<(Vec<(String, String)>, Lister), Error> {
    let endpoint = cfg
        .restic
        .aws_endpoint_url_s3
        .as_deref()
        .or(cfg.restic.aws_endpoint_url.as_deref());
    match Location::parse(base, endpoint)? {
        Location::S3(loc) => {
            let settings = s3_settings(loc, creds, cfg)?;
            let found = discover::repositories(&settings, requests)
                .await?
                .into_iter()
                .map(|f| (f.namespace, f.pvc))
                .collect();
            let client = settings.client()?;
            Ok((
                found,
                Lister::S3 {
                    client,
                    settings: Box::new(settings),
                },
            ))
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
            Ok((out, Lister::Local(dir)))
        }
    }
}

fn s3_settings(
    loc: S3Location,
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

/// Hashes of the `snapshots/` listing of every repository (one LIST each for S3,
/// [`LIST_CONCURRENCY`] at once), in the order of `found`.
async fn listings(
    lister: &Lister,
    found: &[(String, String)],
    requests: &Arc<AtomicU64>,
) -> Vec<Result<String, String>> {
    let hash = |names: &[String]| short_hash(&names.iter().map(String::as_str).collect::<Vec<_>>());
    match lister {
        Lister::Local(dir) => found
            .iter()
            .map(|(ns, pvc)| {
                let d = dir.join(ns).join(pvc).join("snapshots");
                let mut names: Vec<String> = match std::fs::read_dir(&d) {
                    Ok(rd) => rd
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(format!("cannot list {}: {e}", d.display())),
                };
                names.sort();
                Ok(hash(&names))
            })
            .collect(),
        Lister::S3 { client, settings } => {
            let sem = Arc::new(Semaphore::new(LIST_CONCURRENCY));
            let mut tasks = Vec::with_capacity(found.len());
            for (ns, pvc) in found {
                let prefix = settings.location.key(&format!("{ns}/{pvc}/snapshots/"));
                let (sem, client, settings, requests) = (
                    sem.clone(),
                    client.clone(),
                    settings.clone(),
                    requests.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    discover::names(&client, &settings, &prefix, &requests).await
                }));
            }
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(match t.await {
                    Ok(Ok(names)) => Ok(hash(&names)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("listing failed: {e}")),
                });
            }
            out
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
    // Tolerant: one garbled snapshot file must not hide the others from the index.
    let listing = stowage_common::repo::list_snapshots(&repo)?;
    if let Some(summary) = stowage_common::repo::damaged_summary(&listing.damaged) {
        tracing::warn!(repository = %url, "{summary}");
    }
    let snaps = listing.snapshots;
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

/// One repository to read: (position in `found`, listing hash, URL, credentials).
type ToRead = (usize, String, String, RepoCreds);

/// [`build`] with the password of each repository URL given by `password_for`.
pub async fn build_with(
    base: &str,
    password_for: &(dyn Fn(&str) -> String + Sync),
    keys: (&str, &str),
    cfg: &PrewarmConfig,
    previous: &Index,
) -> Result<Index> {
    let started = Instant::now();
    let budget = cfg.common.pass_budget();
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
    let (found, lister) = discover_all(base, &base_creds, cfg, &requests)
        .await
        .map_err(|e| anyhow!("cannot list the repositories under {base}: {e}"))?;
    tracing::info!(base, repositories = found.len(), "indexing repositories");
    let old: BTreeMap<(String, String), &Entry> = previous
        .repositories
        .iter()
        .map(|e| ((e.namespace.clone(), e.pvc.clone()), e))
        .collect();
    let prev_of = |i: usize| old.get(&found[i]).copied();
    let lists = listings(&lister, &found, &requests).await;

    let mut out: Vec<Option<Entry>> = vec![None; found.len()];
    let mut changed: Vec<(usize, String)> = Vec::new();
    for (i, listing) in lists.into_iter().enumerate() {
        let (ns, pvc) = &found[i];
        let url = repository_for(base, ns, pvc);
        match listing {
            Err(e) => out[i] = Some(error_entry(ns, pvc, &url, e)),
            Ok(h) if unchanged(prev_of(i), &url, &h) => {
                out[i] = prev_of(i).map(|p| Entry {
                    pending: false,
                    ..p.clone()
                })
            }
            Ok(h) => changed.push((i, h)),
        }
    }
    let order = read_order(&changed.iter().map(|(i, _)| prev_of(*i)).collect::<Vec<_>>());
    let queue: Vec<ToRead> = order
        .into_iter()
        .map(|k| {
            let (i, h) = changed[k].clone();
            let url = repository_for(base, &found[i].0, &found[i].1);
            let creds = RepoCreds {
                password: password_for(&url),
                ..base_creds.clone()
            };
            (i, h, url, creds)
        })
        .collect();
    let total = queue.len();
    let results = read_all(queue, cfg, started, budget).await;
    let mut opened = 0;
    for (i, h, url, result) in results {
        let (ns, pvc) = &found[i];
        out[i] = Some(match result {
            None => pending_entry(ns, pvc, &url, prev_of(i)),
            Some(r) => {
                opened += 1;
                match r {
                    Ok((n, latest, reqs)) => {
                        requests.fetch_add(reqs, Ordering::Relaxed);
                        Entry {
                            namespace: ns.clone(),
                            pvc: pvc.clone(),
                            repository: url,
                            snapshots: n,
                            latest,
                            listing: h,
                            error: None,
                            read_at: Some(Timestamp::now()),
                            pending: false,
                        }
                    }
                    Err(e) => error_entry(ns, pvc, &url, e),
                }
            }
        });
    }
    let repositories: Vec<Entry> = out.into_iter().flatten().collect();
    let pending = repositories.iter().filter(|e| e.pending).count();
    if pending > 0 {
        tracing::info!(
            opened,
            changed = total,
            pending,
            "pass budget used: {pending} changed repositories keep their last entry and are \
             read by the next runs, oldest first"
        );
    }
    Ok(Index {
        generated: Timestamp::now().to_string(),
        base: base.to_string(),
        complete: pending == 0,
        repositories,
        s3_requests: requests.load(Ordering::Relaxed),
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

/// Reads the queued repositories in their order, [`OPEN_CONCURRENCY`] at once, none
/// started once the budget is used (`None` for those).
async fn read_all(
    queue: Vec<ToRead>,
    cfg: &PrewarmConfig,
    started: Instant,
    budget: Option<std::time::Duration>,
) -> Vec<(
    usize,
    String,
    String,
    Option<Result<(usize, Option<Latest>, u64), String>>,
)> {
    let total = queue.len();
    let queue = Arc::new(queue);
    let next = Arc::new(AtomicUsize::new(0));
    let cfg = Arc::new(cfg.clone());
    let progress = cfg.common.progress_interval();
    let mut workers = Vec::new();
    for _ in 0..OPEN_CONCURRENCY {
        let (queue, next, cfg) = (queue.clone(), next.clone(), cfg.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut last_progress = Instant::now();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((i, h, url, creds)) = queue.get(k).cloned() else {
                    break;
                };
                if !may_start(started.elapsed(), budget) {
                    done.push((i, h, url, None));
                    continue;
                }
                if last_progress.elapsed() >= progress {
                    tracing::info!(done = k, of = total, "indexing…");
                    last_progress = Instant::now();
                }
                // Pending PVCs go first: wait while their lookups are queued.
                while crate::LOOKUPS_QUEUED.load(Ordering::SeqCst) > 0
                    && may_start(started.elapsed(), budget)
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                if !may_start(started.elapsed(), budget) {
                    done.push((i, h, url, None));
                    continue;
                }
                let (u, cf) = (url.clone(), cfg.clone());
                // Shared with the populator: never more key derivations at once.
                let _open = crate::OPENS.acquire().await;
                let r = tokio::task::spawn_blocking(move || read_repository(&u, &creds, &cf))
                    .await
                    .map_err(|e| format!("reading failed: {e}"))
                    .and_then(|r| r.map_err(|e| e.to_string()));
                done.push((i, h, url, Some(r)));
            }
            done
        }));
    }
    let mut all = Vec::with_capacity(total);
    for w in workers {
        // A worker cannot panic short of a bug; its repositories then stay pending.
        all.extend(w.await.unwrap_or_default());
    }
    all
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
        names::INDEX_PENDING,
        "Repositories whose change the index has not read yet (the next runs continue)",
        &[],
        index.pending() as f64,
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
        assert!(due(None, now, 15, true));
        assert!(!due(
            Some("2026-11-23T09:50:00Z".parse().unwrap()),
            now,
            15,
            true
        ));
        assert!(due(
            Some("2026-11-23T09:45:00Z".parse().unwrap()),
            now,
            15,
            true
        ));
        assert!(!due(None, now, 0, true));
    }

    #[test]
    fn an_unfinished_index_is_due_at_once() {
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let a_minute_ago = Some("2026-11-23T09:59:00Z".parse().unwrap());
        assert!(due(a_minute_ago, now, 15, false));
        assert!(!due(a_minute_ago, now, 15, true));
        // Off stays off.
        assert!(!due(a_minute_ago, now, 0, false));
        // Documents from before the field existed were complete.
        let old: Index = serde_json::from_str(
            r#"{"generated":"x","base":"b","repositories":[],"s3_requests":0,"duration_secs":0}"#,
        )
        .unwrap();
        assert!(old.complete);
    }

    fn entry(listing: &str, read_at: Option<&str>, error: Option<&str>) -> Entry {
        Entry {
            namespace: "ns".into(),
            pvc: "p".into(),
            repository: "s3:https://s3/b/ns/p".into(),
            snapshots: 2,
            latest: None,
            listing: listing.into(),
            error: error.map(str::to_string),
            read_at: read_at.map(|t| t.parse().unwrap()),
            pending: false,
        }
    }

    #[test]
    fn only_a_changed_listing_is_read_again() {
        let url = "s3:https://s3/b/ns/p";
        let e = entry("h1", Some("2026-11-23T09:00:00Z"), None);
        assert!(unchanged(Some(&e), url, "h1"));
        assert!(!unchanged(Some(&e), url, "h2"));
        assert!(!unchanged(None, url, "h1"));
        // Another repository URL (annotation changed) or an unreadable one: read.
        assert!(!unchanged(Some(&e), "s3:https://s3/b/other/p", "h1"));
        assert!(!unchanged(
            Some(&entry("h1", None, Some("wrong password"))),
            url,
            "h1"
        ));
        // A pending entry keeps the listing of its last read: it is accurate again
        // when the listing went back to it.
        let p = Entry {
            pending: true,
            ..e.clone()
        };
        assert!(unchanged(Some(&p), url, "h1"));
    }

    #[test]
    fn never_read_first_then_longest_unread() {
        let old = entry("a", Some("2026-11-23T08:00:00Z"), None);
        let newer = entry("b", Some("2026-11-23T09:00:00Z"), None);
        let failed = entry("c", Some("2026-11-23T07:00:00Z"), Some("timeout"));
        let changed = [Some(&newer), None, Some(&old), Some(&failed)];
        assert_eq!(read_order(&changed), vec![1, 3, 2, 0]);
    }

    #[test]
    fn a_repository_left_for_later_keeps_its_last_read() {
        let url = "s3:https://s3/b/ns/p";
        let e = entry("h1", Some("2026-11-23T09:00:00Z"), None);
        let p = pending_entry("ns", "p", url, Some(&e));
        assert!(p.pending);
        assert_eq!((p.snapshots, p.listing.as_str()), (2, "h1"));
        // Nothing known yet: pending, empty, and its listing never matches.
        let fresh = pending_entry("ns", "p", url, None);
        assert!(fresh.pending && fresh.snapshots == 0 && fresh.listing.is_empty());
        assert!(!unchanged(Some(&fresh), url, &short_hash(&[])));
        // An error of last time is not data to keep.
        let f = pending_entry("ns", "p", url, Some(&entry("h1", None, Some("x"))));
        assert!(f.error.is_none() && f.snapshots == 0);
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
                read_at: None,
                pending: false,
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
