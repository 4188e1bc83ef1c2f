//! Progress of long repository work as log lines: rustic_core names each stage
//! ("finding used blobs...", "repacking...", "removing old data packs..."); each is
//! logged with the repository when it starts and when it ends, with its count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustic_core::{Progress, ProgressBars, ProgressType, RusticProgress};

/// Logs rustic_core's stages for one repository.
#[derive(Debug, Clone)]
pub struct LogProgress {
    repository: Arc<str>,
    interval: Duration,
}

impl LogProgress {
    pub fn new(repository: &str, interval: Duration) -> Self {
        Self {
            repository: repository.into(),
            interval,
        }
    }
}

impl ProgressBars for LogProgress {
    fn progress(&self, progress_type: ProgressType, prefix: &str) -> Progress {
        let stage = prefix.trim_end_matches("...").trim().to_string();
        tracing::info!(repository = %self.repository, "{stage}");
        Progress::new(Stage {
            repository: self.repository.clone(),
            stage,
            bytes: matches!(progress_type, ProgressType::Bytes),
            done: Arc::new(AtomicU64::new(0)),
            total: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            last: Arc::new(std::sync::Mutex::new(Instant::now())),
            interval: self.interval,
        })
    }
}

#[derive(Debug)]
struct Stage {
    repository: Arc<str>,
    stage: String,
    bytes: bool,
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    started: Instant,
    last: Arc<std::sync::Mutex<Instant>>,
    interval: Duration,
}

impl Stage {
    fn amount(&self, n: u64) -> String {
        if self.bytes {
            format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
        } else {
            n.to_string()
        }
    }
}

impl RusticProgress for Stage {
    fn is_hidden(&self) -> bool {
        false
    }
    fn set_length(&self, len: u64) {
        self.total.store(len, Ordering::Relaxed);
    }
    fn set_title(&self, _title: &str) {}
    fn inc(&self, inc: u64) {
        let done = self.done.fetch_add(inc, Ordering::Relaxed) + inc;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= self.interval {
            *last = Instant::now();
            tracing::info!(
                repository = %self.repository,
                "{}: {} of {}",
                self.stage,
                self.amount(done),
                self.amount(self.total.load(Ordering::Relaxed))
            );
        }
    }
    fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed);
        tracing::debug!(
            repository = %self.repository,
            secs = self.started.elapsed().as_secs_f64(),
            "{}: done ({})",
            self.stage,
            self.amount(done)
        );
    }
}
