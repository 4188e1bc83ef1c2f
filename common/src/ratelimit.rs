//! Byte-rate limiting for uploads and downloads (a backup must not saturate a home
//! uplink). Virtual scheduling: each transfer of `n` bytes reserves the next `n / rate`
//! seconds of the link and waits until its slot starts. Small enough not to need a
//! crate; `governor` counts cells, not bytes of arbitrary size.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    next_free: Mutex<Option<Instant>>,
}

/// Pure slot computation: returns (when the transfer may start, when the link is free
/// again). An idle link does not bank credit beyond one second of burst.
pub fn reserve(
    now: Instant,
    next_free: Option<Instant>,
    bytes: u64,
    bytes_per_sec: u64,
) -> (Instant, Instant) {
    let burst = Duration::from_secs(1);
    let start = match next_free {
        Some(t) if t > now => t,
        Some(t) if now.duration_since(t) < burst => t,
        _ => now.checked_sub(burst).unwrap_or(now),
    };
    let cost = Duration::from_secs_f64(bytes as f64 / bytes_per_sec.max(1) as f64);
    (
        start.max(now.checked_sub(burst).unwrap_or(now)),
        start + cost,
    )
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next_free: Mutex::new(None),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().unwrap();
            let (start, free) = reserve(Instant::now(), *next, bytes, self.bytes_per_sec);
            *next = Some(free);
            start
        };
        // The transfer may begin when the link's earlier reservations are used up.
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_transfers_are_spaced_by_their_size() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let (s1, f1) = reserve(t0, None, 1000, 1000);
        assert!(s1 <= t0);
        let (s2, f2) = reserve(t0, Some(f1), 1000, 1000);
        assert_eq!(s2, f1);
        assert_eq!(f2 - f1, Duration::from_secs(1));
        // 10 transfers of 1000 bytes at 1000 B/s occupy 10 s of the link, minus the
        // one second of burst an idle link grants.
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

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_the_slot() {
        let l = RateLimiter::new(1000);
        let t0 = Instant::now();
        l.acquire(3000).await; // within the burst
        l.acquire(1000).await; // waits for the first 3000 bytes: 2 s after burst credit
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    }
}
