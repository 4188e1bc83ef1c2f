//! Progress of long work as log lines every few seconds (a Job has no terminal).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustic_core::{Progress, ProgressBars, ProgressType, RusticProgress};

/// Hands rustic_core progress reporters that log.
#[derive(Debug, Clone)]
pub struct LogProgressBars {
    interval: Duration,
    /// Entries the source has yielded so far (files and directories), if known.
    pub files: Arc<AtomicU64>,
}

impl LogProgressBars {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            files: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl ProgressBars for LogProgressBars {
    fn progress(&self, progress_type: ProgressType, prefix: &str) -> Progress {
        Progress::new(LogProgress {
            prefix: prefix.trim_end_matches("...").trim().to_string(),
            bytes: matches!(progress_type, ProgressType::Bytes),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            start: Instant::now(),
            last: Mutex::new(Instant::now()),
            interval: self.interval,
            files: self.files.clone(),
        })
    }
}

#[derive(Debug)]
struct LogProgress {
    prefix: String,
    bytes: bool,
    total: AtomicU64,
    done: AtomicU64,
    start: Instant,
    last: Mutex<Instant>,
    interval: Duration,
    files: Arc<AtomicU64>,
}

/// One progress line: "1.2 GiB of 2.0 GiB (60%), 45.0 MiB/s, about 18s left".
pub fn describe(done: u64, total: u64, elapsed: Duration, bytes: bool) -> String {
    let fmt = |n: u64| if bytes { human_bytes(n) } else { n.to_string() };
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let mut s = fmt(done);
    if total > 0 {
        s += &format!(" of {} ({}%)", fmt(total), (done.min(total) * 100) / total);
    }
    if bytes {
        s += &format!(", {}/s", human_bytes(rate as u64));
    } else {
        s += &format!(", {rate:.0}/s");
    }
    if total > done && rate > 0.0 {
        s += &format!(
            ", about {}s left",
            ((total - done) as f64 / rate).ceil() as u64
        );
    }
    s
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl RusticProgress for LogProgress {
    fn is_hidden(&self) -> bool {
        false
    }
    fn set_length(&self, len: u64) {
        self.total.store(len, Ordering::Relaxed);
    }
    fn set_title(&self, title: &str) {
        tracing::debug!("{title}");
    }
    fn inc(&self, inc: u64) {
        let done = self.done.fetch_add(inc, Ordering::Relaxed) + inc;
        // try_lock: a busy reporter never slows the worker threads down.
        if let Ok(mut last) = self.last.try_lock()
            && last.elapsed() >= self.interval
        {
            *last = Instant::now();
            let total = self.total.load(Ordering::Relaxed);
            let line = describe(done, total, self.start.elapsed(), self.bytes);
            tracing::info!(
                step = %self.prefix,
                done,
                total,
                entries = self.files.load(Ordering::Relaxed),
                "{}: {line}",
                self.prefix
            );
        }
    }
    fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed);
        if done > 0 {
            tracing::debug!(step = %self.prefix, done, "{} finished in {:.1}s", self.prefix, self.start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line() {
        let s = describe(
            512 * 1024 * 1024,
            1024 * 1024 * 1024,
            Duration::from_secs(8),
            true,
        );
        assert_eq!(s, "512.0 MiB of 1.0 GiB (50%), 64.0 MiB/s, about 8s left");
        assert_eq!(describe(10, 0, Duration::from_secs(5), false), "10, 2/s");
        assert_eq!(human_bytes(1023), "1023 B");
    }
}
