//! What rustic_core sees of the storage: a memory budget for pack reads and optional
//! rate limits, for any backend.
//!
//! rustic_core's restore reads pack ranges on 20 threads and hands the decrypted blobs
//! to writer tasks without a bound, so on a large restore the data in flight grows
//! with the volume (measured: 1.1 GiB peak for a 1 GiB restore from S3). A mover Job runs
//! under a 512Mi limit. Here every pack read first reserves its size from a budget
//! and gives it back when the last reference to the data is dropped, so at most the
//! budget's worth of pack data is held at once, whatever drives the reads.

use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use rustic_core::{BytesList, FileType, Id, ReadBackend, RusticResult, WriteBackend};

use crate::ratelimit::RateLimiter;

#[derive(Debug)]
pub struct Shaped {
    inner: Arc<dyn WriteBackend>,
    pool: Arc<Pool>,
    up: Option<RateLimiter>,
    down: Option<RateLimiter>,
}

/// A counting semaphore in KiB for plain threads (rustic's reader pool).
#[derive(Debug)]
struct Pool {
    free: Mutex<u32>,
    released: Condvar,
    total: u32,
}

/// A reservation; dropping it returns the KiB to the pool.
struct Permit {
    pool: Arc<Pool>,
    kib: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.pool.free.lock().unwrap() += self.kib;
        self.pool.released.notify_all();
    }
}

/// Pack data that returns its share of the budget when dropped.
struct Held {
    data: Bytes,
    _permit: Permit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Shaped {
    /// `budget_mib`: pack data held by reads at once; limits in KiB/s (restic's
    /// unit), `None` is unlimited.
    pub fn new(
        inner: Arc<dyn WriteBackend>,
        budget_mib: u32,
        up_kib: Option<u64>,
        down_kib: Option<u64>,
    ) -> Self {
        let total = budget_mib.max(1).saturating_mul(1024);
        Self {
            inner,
            pool: Arc::new(Pool {
                free: Mutex::new(total),
                released: Condvar::new(),
                total,
            }),
            // 0 is no limit (restic's meaning).
            up: up_kib
                .filter(|&k| k > 0)
                .map(|k| RateLimiter::new(k * 1024)),
            down: down_kib
                .filter(|&k| k > 0)
                .map(|k| RateLimiter::new(k * 1024)),
        }
    }

    /// Waits for the download limit after data arrived.
    fn got(&self, b: Bytes) -> Bytes {
        if let Some(l) = &self.down {
            l.acquire(b.len() as u64);
        }
        b
    }

    /// KiB to reserve for `len` bytes: rounded up, and never more than the whole budget
    /// (a single read larger than the budget waits until nothing else is held).
    pub fn cost(len: u32, total_kib: u32) -> u32 {
        len.div_ceil(1024).clamp(1, total_kib)
    }

    fn reserve(&self, len: u32) -> Permit {
        let kib = Self::cost(len, self.pool.total);
        let mut free = self.pool.free.lock().unwrap();
        while *free < kib {
            free = self.pool.released.wait(free).unwrap();
        }
        *free -= kib;
        Permit {
            pool: self.pool.clone(),
            kib,
        }
    }

    /// KiB currently available (for tests).
    pub fn available_kib(&self) -> u32 {
        *self.pool.free.lock().unwrap()
    }
}

impl ReadBackend for Shaped {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.inner.list_with_size(tpe)
    }
    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        self.inner.read_full(tpe, id).map(|b| self.got(b))
    }
    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        if tpe != FileType::Pack {
            return self
                .inner
                .read_partial(tpe, id, cacheable, offset, length)
                .map(|b| self.got(b));
        }
        let permit = self.reserve(length);
        let data = self.got(
            self.inner
                .read_partial(tpe, id, cacheable, offset, length)?,
        );
        Ok(Bytes::from_owner(Held {
            data,
            _permit: permit,
        }))
    }
    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }
}

impl WriteBackend for Shaped {
    fn create(&self) -> RusticResult<()> {
        self.inner.create()
    }
    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        buf: BytesList,
    ) -> RusticResult<()> {
        // Writes wait for their slot before they are handed on: for S3 that is before
        // the pack joins the upload queue, so the queue drains at the limit.
        if let Some(l) = &self.up {
            l.acquire(buf.size() as u64);
        }
        self.inner.write_bytes(tpe, id, cacheable, buf)
    }
    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(tpe, id, cacheable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local repository directory holding one pack of `len` bytes.
    fn local_with_pack(len: usize) -> (tempfile::TempDir, rustic_backend::local::LocalBackend, Id) {
        let dir = tempfile::tempdir().unwrap();
        let local =
            rustic_backend::local::LocalBackend::new(dir.path().to_str().unwrap(), Vec::new())
                .unwrap();
        local.create().unwrap();
        let id = Id::random();
        local
            .write_bytes(
                FileType::Pack,
                &id,
                false,
                Bytes::from(vec![5u8; len]).into(),
            )
            .unwrap();
        (dir, local, id)
    }

    #[test]
    fn cost_rounds_up_and_is_capped_by_the_budget() {
        assert_eq!(Shaped::cost(0, 100), 1);
        assert_eq!(Shaped::cost(1, 100), 1);
        assert_eq!(Shaped::cost(1025, 100), 2);
        assert_eq!(Shaped::cost(10 << 20, 100), 100);
    }

    #[test]
    fn budget_is_held_until_the_data_is_dropped() {
        let (_dir, local, id) = local_with_pack(3 << 20);
        let b = Shaped::new(Arc::new(local), 4, None, None);
        let a = b
            .read_partial(FileType::Pack, &id, false, 0, 2 << 20)
            .unwrap();
        assert_eq!(b.available_kib(), 2048);
        let slice = a.slice(10..20);
        drop(a);
        assert_eq!(b.available_kib(), 2048, "a slice still holds the data");
        drop(slice);
        assert_eq!(b.available_kib(), 4096);
        // A read larger than the budget takes all of it, then gives it back.
        let big = b
            .read_partial(FileType::Pack, &id, false, 0, 3 << 20)
            .unwrap();
        assert_eq!(big.len(), 3 << 20);
        assert_eq!(b.available_kib(), 4096 - 3072);
    }

    #[test]
    fn a_blocked_reader_proceeds_when_data_is_released() {
        let (_dir, local, id) = local_with_pack(2 << 20);
        let b = Arc::new(Shaped::new(Arc::new(local), 2, None, None));
        let first = b
            .read_partial(FileType::Pack, &id, false, 0, 2 << 20)
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            let second = b2
                .read_partial(FileType::Pack, &id, false, 0, 1 << 20)
                .unwrap();
            tx.send(second.len()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "second read waits"
        );
        drop(first);
        assert_eq!(rx.recv().unwrap(), 1 << 20);
        t.join().unwrap();
    }
}
