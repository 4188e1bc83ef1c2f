//! Rate limits for any backend: writes wait for their slot before they are handed on
//! (for S3 that is before the pack joins the upload queue, so the queue drains at the
//! limit), reads after their data arrived.

use std::sync::Arc;

use bytes::Bytes;
use rustic_core::{BytesList, FileType, Id, ReadBackend, RusticResult, WriteBackend};

use crate::ratelimit::RateLimiter;

#[derive(Debug)]
pub struct Throttled {
    inner: Arc<dyn WriteBackend>,
    up: Option<RateLimiter>,
    down: Option<RateLimiter>,
}

impl Throttled {
    /// Limits in KiB/s (restic's unit); `None` is unlimited.
    pub fn new(inner: Arc<dyn WriteBackend>, up_kib: Option<u64>, down_kib: Option<u64>) -> Self {
        Self {
            inner,
            up: up_kib.map(|k| RateLimiter::new(k * 1024)),
            down: down_kib.map(|k| RateLimiter::new(k * 1024)),
        }
    }

    fn got(&self, b: Bytes) -> Bytes {
        if let Some(l) = &self.down {
            l.acquire(b.len() as u64);
        }
        b
    }
}

impl ReadBackend for Throttled {
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
        self.inner
            .read_partial(tpe, id, cacheable, offset, length)
            .map(|b| self.got(b))
    }
    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }
}

impl WriteBackend for Throttled {
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
        if let Some(l) = &self.up {
            l.acquire(buf.size() as u64);
        }
        self.inner.write_bytes(tpe, id, cacheable, buf)
    }
    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(tpe, id, cacheable)
    }
}
