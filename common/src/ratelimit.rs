//! Byte-rate limiting for repository writes and reads (a backup must not saturate a
//! home uplink). Virtual scheduling: each transfer of `n` bytes reserves the next
//! `n / rate` seconds of the link and waits until its slot starts. Small enough not to
//! need a crate; `governor` counts cells, not bytes of arbitrary size.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    next_free: Mutex<Option<Instant>>,
}

/// Pure slot computation: returns (when the transfer may start, when the link is free
/// again). An idle link grants at most one second of burst.
pub fn reserve(
    now: Instant,
    next_free: Option<Instant>,
    bytes: u64,
    bytes_per_sec: u64,
) -> (Instant, Instant) {
    let burst = Duration::from_secs(1);
    let earliest = now.checked_sub(burst).unwrap_or(now);
    let start = match next_free {
        Some(t) if t > earliest => t,
        _ => earliest,
    };
    let cost = Duration::from_secs_f64(bytes as f64 / bytes_per_sec.max(1) as f64);
    (start, start + cost)
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next_free: Mutex::new(None),
        }
    }

    /// Blocks the calling thread until `bytes` may be transferred.
    pub fn acquire(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().unwrap();
            let (start, free) = reserve(Instant::now(), *next, bytes, self.bytes_per_sec);
            *next = Some(free);
            start
        };
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_transfers_are_spaced_by_their_size() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let (s1, f1) = reserve(t0, None, 1000, 1000);
        assert_eq!(
            s1,
            t0 - Duration::from_secs(1),
            "an idle link grants one second of burst"
        );
        let (s2, f2) = reserve(t0, Some(f1), 1000, 1000);
        assert_eq!(s2, f1);
        assert_eq!(f2 - f1, Duration::from_secs(1));
        // 10 transfers of 1000 bytes at 1000 B/s occupy 10 s of the link, the first
        // second of it as burst.
        let mut free = None;
        let mut last_start = t0;
        for _ in 0..10 {
            let (s, f) = reserve(t0, free, 1000, 1000);
            free = Some(f);
            last_start = s;
        }
        assert_eq!(last_start - t0, Duration::from_secs(8));
    }

    #[test]
    fn idle_link_does_not_bank_more_than_one_second() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let long_ago = t0 - Duration::from_secs(60);
        let (s, f) = reserve(t0, Some(long_ago), 5000, 1000);
        assert_eq!(s, t0 - Duration::from_secs(1));
        assert_eq!(f, t0 + Duration::from_secs(4));
    }
}
