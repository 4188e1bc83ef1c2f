//! Metrics of a run, pushed to a Prometheus Pushgateway at its end (the programs are
//! short-lived Jobs: nothing stays up to be scraped). Every metric name is defined here.
//! The text exposition format is small enough to write directly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::Error;

/// Metric names (the PrometheusRule and dashboard use these).
pub mod names {
    pub const SCHEDULER_PVCS: &str = "stowage_scheduler_pvcs";
    pub const SCHEDULER_DUE: &str = "stowage_scheduler_due";
    pub const SCHEDULER_STARTED: &str = "stowage_scheduler_jobs_started";
    pub const SCHEDULER_SKIPPED: &str = "stowage_scheduler_skipped";
    pub const SCHEDULER_MISSED: &str = "stowage_scheduler_missed_intervals";
    pub const SCHEDULER_ERRORS: &str = "stowage_scheduler_errors";
    /// Hooks run by the scheduler outside a backup (post hooks of interrupted ones).
    pub const SCHEDULER_HOOKS: &str = "stowage_scheduler_hooks_total";
    pub const BACKUP_RESULTS: &str = "stowage_backup_results";
    pub const BACKUP_LAST_SUCCESS: &str = "stowage_backup_last_success_timestamp_seconds";
    pub const BACKUP_LAST_FAILED: &str = "stowage_backup_last_failed";
    /// Per opted-in PVC: the longest gap between two scheduled times of its policy.
    pub const BACKUP_EXPECTED_INTERVAL: &str = "stowage_backup_expected_interval_seconds";
    /// Per opted-in PVC: when the scheduler first saw it opted in.
    pub const BACKUP_OPTED_IN: &str = "stowage_backup_opted_in_timestamp_seconds";
    /// Per PVC with a problem in this pass (1), by reason.
    pub const BACKUP_PROBLEM: &str = "stowage_backup_problem";
    /// Per storage (endpoint/bucket): 1 while the circuit breaker is open.
    pub const STORAGE_UNREACHABLE: &str = "stowage_storage_unreachable";
    /// Per storage: consecutive backup results that failed to reach it.
    pub const STORAGE_FAILURES: &str = "stowage_storage_consecutive_failures";
    pub const PASS_DURATION: &str = "stowage_pass_duration_seconds";
    pub const PASS_LAST_RUN: &str = "stowage_pass_last_run_timestamp_seconds";
    pub const GC_REPOSITORIES: &str = "stowage_gc_repositories";
    pub const GC_SNAPSHOTS: &str = "stowage_gc_snapshots";
    pub const GC_REPOSITORY_BYTES: &str = "stowage_gc_repository_bytes";
    pub const GC_FORGOTTEN: &str = "stowage_gc_snapshots_forgotten";
    pub const GC_RECLAIMED_BYTES: &str = "stowage_gc_reclaimed_bytes";
    pub const GC_UNUSED_BYTES: &str = "stowage_gc_unused_bytes";
    pub const GC_CHECK_OK: &str = "stowage_gc_check_ok";
    pub const GC_CHECK_LAST: &str = "stowage_gc_check_last_timestamp_seconds";
    pub const GC_ORPHAN: &str = "stowage_gc_orphan_repository";
    pub const GC_LOCKS_REMOVED: &str = "stowage_gc_stale_locks_removed";
    pub const GC_JOBS_DELETED: &str = "stowage_gc_jobs_deleted";
    pub const GC_RETENTION_BLOCKED: &str = "stowage_gc_retention_blocked";
    pub const GC_ERRORS: &str = "stowage_gc_errors";
    pub const GC_LAST_SUCCESS: &str = "stowage_gc_last_success_timestamp_seconds";
}

/// Label set and value of one sample.
type Sample = (BTreeMap<String, String>, f64);

/// Gauges with labels, by metric name (with their help text).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    families: BTreeMap<String, (String, Vec<Sample>)>,
}

impl Registry {
    /// Sets a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let fam = self
            .families
            .entry(name.to_string())
            .or_insert_with(|| (help.to_string(), Vec::new()));
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(s) = fam.1.iter_mut().find(|(l, _)| *l == labels) {
            s.1 = value;
        } else {
            fam.1.push((labels, value));
        }
    }

    /// Adds to a gauge sample (creating it at 0).
    pub fn add(&mut self, name: &str, help: &str, labels: &[(&str, &str)], delta: f64) {
        let cur = self.value(name, labels).unwrap_or(0.0);
        self.gauge(name, help, labels, cur + delta);
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let fam = self.families.get(name)?;
        fam.1
            .iter()
            .find(|(l, _)| {
                l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, (help, samples)) in &self.families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let l: Vec<String> = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                        .collect();
                    let _ = writeln!(out, "{name}{{{}}} {v}", l.join(","));
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Replaces the group `job=<job>` on the Pushgateway with `registry` (PUT). Plain
/// http only (the Pushgateway runs in the cluster).
pub async fn push(url: &str, job: &str, registry: &Registry) -> Result<(), Error> {
    let base = url.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(Error::Config(format!(
            "STOWAGE_PUSHGATEWAY_URL {url:?}: expected http://host:port (the in-cluster \
             Pushgateway service)"
        )));
    }
    let uri = format!("{base}/metrics/job/{job}");
    let req = hyper::Request::put(&uri)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(bytes::Bytes::from(registry.render())))
        .map_err(|e| Error::Config(format!("bad Pushgateway URL {uri}: {e}")))?;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| Error::Storage(format!("Pushgateway {uri} did not answer in 10 s")))?
        .map_err(|e| Error::Storage(format!("Pushgateway {uri} unreachable: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(Error::Storage(format!(
            "Pushgateway {uri} refused the metrics: {status} {}",
            body.trim()
        )));
    }
    Ok(())
}

/// Metric names of stowage-prewarm (populator and index).
pub mod prewarm_names {
    /// PVCs waiting for the populator, by state.
    pub const PENDING: &str = "stowage_prewarm_pending_pvcs";
    /// Populates finished in this run, by result (`restored`, `empty`).
    pub const POPULATED: &str = "stowage_prewarm_populated";
    /// Restore Jobs that failed (seen in this run).
    pub const RESTORE_FAILURES: &str = "stowage_prewarm_restore_failures";
    /// 1 for each PVC whose restore Job succeeded without restoring what was planned
    /// (nothing, another snapshot or repository): not bound, retried.
    pub const RESTORE_MISMATCHES: &str = "stowage_prewarm_restore_mismatches";
    /// 1 for each PVC whose restore reads another namespace's data without its grant.
    pub const NOT_GRANTED: &str = "stowage_prewarm_restore_not_granted";
    /// Seconds each PVC that waits for the populator has been Pending (its age), with
    /// the reason it waits: the "Pending too long because of stowage" alert reads it.
    pub const PENDING_SECONDS: &str = "stowage_prewarm_pending_seconds";
    /// 1 for each PVC refused because its storage class ignores populators.
    pub const UNSAFE_CLASS: &str = "stowage_prewarm_unsafe_storage_class";
    /// Probe verdict per storage class: 1 safe for populating, 0 unsafe.
    pub const CLASS_SAFE: &str = "stowage_prewarm_storage_class_safe";
    /// 1 for each PVC whose backup source could not be read (retried).
    pub const SOURCE_UNAVAILABLE: &str = "stowage_prewarm_source_unavailable";
    /// Errors in this run.
    pub const ERRORS: &str = "stowage_prewarm_errors";
    /// Repositories in the index.
    pub const INDEX_REPOSITORIES: &str = "stowage_index_repositories";
    /// Time of the newest snapshot of a repository.
    pub const INDEX_LAST_SNAPSHOT: &str = "stowage_index_last_snapshot_timestamp_seconds";
    /// Bytes of the newest snapshot of a repository.
    pub const INDEX_LAST_SNAPSHOT_BYTES: &str = "stowage_index_last_snapshot_bytes";
    /// Snapshots in a repository.
    pub const INDEX_SNAPSHOTS: &str = "stowage_index_snapshots";
    /// Repositories the index could not read.
    pub const INDEX_ERRORS: &str = "stowage_index_errors";
    /// Repositories whose change the index has not read yet (pass budget used).
    pub const INDEX_PENDING: &str = "stowage_index_pending_repositories";
    /// Duration of the last index run.
    pub const INDEX_DURATION: &str = "stowage_index_duration_seconds";
    /// S3 requests of the last index run.
    pub const INDEX_S3_REQUESTS: &str = "stowage_index_s3_requests";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let mut r = Registry::default();
        r.gauge(names::SCHEDULER_DUE, "PVCs due", &[], 3.0);
        r.add(
            names::SCHEDULER_SKIPPED,
            "Skipped",
            &[("reason", "not_due")],
            1.0,
        );
        r.add(
            names::SCHEDULER_SKIPPED,
            "Skipped",
            &[("reason", "not_due")],
            1.0,
        );
        r.gauge(names::BACKUP_LAST_SUCCESS, "t", &[("pvc", "a\"b")], 5.0);
        let text = r.render();
        assert!(
            text.contains("# TYPE stowage_scheduler_due gauge\nstowage_scheduler_due 3\n"),
            "{text}"
        );
        assert!(
            text.contains("stowage_scheduler_skipped{reason=\"not_due\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("pvc=\"a\\\"b\""), "{text}");
    }
}
