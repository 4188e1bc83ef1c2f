//! rustic_core storage backend on `aws-sdk-s3`.
//!
//! rustic_core writes packs one at a time from its archiver threads; throughput comes
//! from uploading packs concurrently here. Crash safety of the restic format rests on
//! order (packs, then the index naming them, then the snapshot naming the index), so a
//! pack write returns as soon as its upload is queued, and every write of any other
//! file first waits until all queued packs are stored. A failed pack upload fails that
//! next write, so no index or snapshot ever names a pack that is not stored.
//!
//! A pack is sent as the list of buffers rustic_core built it from (no copy into one
//! buffer). Over plain http its SigV4 payload hash is its name: a pack's id is the
//! SHA-256 of its content, so the server checks every byte without a hashing pass here.
//!
//! Tree packs (rustic_core asks for them as "cacheable") are read whole once and kept in
//! memory (bounded): walking a snapshot reads its trees one by one, in order, and one
//! request per directory was most of a restore's preparation (1,044 directories: 4.7 s
//! of GETs one after the other; now two GETs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::{Bytes, BytesMut};
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::s3::{Failure, S3Error, S3Settings, stuck_message};

/// Byte and request counters, for progress, summaries and tests.
#[derive(Debug, Default)]
pub struct TransferStats {
    pub uploaded_bytes: AtomicU64,
    pub uploaded_objects: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    pub requests: AtomicU64,
    pub multipart_uploads: AtomicU64,
}

impl TransferStats {
    pub fn uploaded(&self) -> u64 {
        self.uploaded_bytes.load(Ordering::Relaxed)
    }
    pub fn downloaded(&self) -> u64 {
        self.downloaded_bytes.load(Ordering::Relaxed)
    }
}

struct Inner {
    client: Client,
    settings: S3Settings,
    stats: Arc<TransferStats>,
    started: std::time::Instant,
    last_progress: Mutex<std::time::Instant>,
}

impl Inner {
    /// Logs upload progress every `progress_interval` (packs finish in the
    /// background, after the archiver has long counted them as read).
    fn report_upload(&self) {
        let Ok(mut last) = self.last_progress.try_lock() else {
            return;
        };
        if last.elapsed() < self.settings.progress_interval {
            return;
        }
        *last = std::time::Instant::now();
        let sent = self.stats.uploaded();
        let rate = sent as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            uploaded_bytes = sent,
            objects = self.stats.uploaded_objects.load(Ordering::Relaxed),
            "uploading: {:.1} MiB sent, {:.1} MiB/s",
            sent as f64 / 1048576.0,
            rate / 1048576.0
        );
    }
}

/// A queued pack upload.
type Upload = JoinHandle<Result<(), S3Error>>;

/// The S3 backend. Cheap to clone; clones share the runtime and the upload queue.
#[derive(Clone)]
pub struct S3Backend {
    inner: Arc<Inner>,
    rt: Arc<Runtime>,
    permits: Arc<Semaphore>,
    pending: Arc<Mutex<Vec<Upload>>>,
    failed: Arc<Mutex<Option<S3Error>>>,
    tree_packs: Arc<TreePacks>,
}

/// Whole tree packs by id, at most [`TREE_PACK_CACHE_BYTES`] (a pack's content never
/// changes: its id is its hash).
type TreePacks = quick_cache::sync::Cache<Id, Bytes, PackWeight>;

/// Room for two full-size packs: trees of one snapshot are stored together, in the
/// order they are walked.
pub const TREE_PACK_CACHE_BYTES: u64 = 32 << 20;

#[derive(Clone, Copy)]
struct PackWeight;

impl quick_cache::Weighter<Id, Bytes> for PackWeight {
    fn weight(&self, _: &Id, pack: &Bytes) -> u64 {
        (pack.len() as u64).max(1)
    }
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("location", &self.inner.settings.location)
            .finish_non_exhaustive()
    }
}

fn backend_error(msg: String) -> Box<RusticError> {
    RusticError::new(ErrorKind::Backend, msg)
}

/// A failed request as rustic_core carries it; a stuck one keeps its kind (see
/// [`crate::Error::StorageTimeout`]).
fn request_error(e: S3Error) -> Box<RusticError> {
    let stuck = e.failure == Failure::Timeout;
    let err = backend_error(e.message);
    if stuck {
        err.attach_error_code(crate::error::STUCK_REQUEST_CODE)
    } else {
        err
    }
}

impl S3Backend {
    /// Sets up the client and its runtime; no request is sent yet.
    pub fn new(settings: S3Settings) -> Result<Self, crate::Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stowage-s3")
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Config(format!("cannot start the S3 runtime: {e}")))?;
        let client = {
            let _guard = rt.enter();
            settings.client()?
        };
        Ok(Self {
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            inner: Arc::new(Inner {
                client,
                stats: Arc::new(TransferStats::default()),
                started: std::time::Instant::now(),
                last_progress: Mutex::new(std::time::Instant::now()),
                settings,
            }),
            rt: Arc::new(rt),
            pending: Arc::new(Mutex::new(Vec::new())),
            failed: Arc::new(Mutex::new(None)),
            tree_packs: Arc::new(TreePacks::with_weighter(
                16,
                TREE_PACK_CACHE_BYTES,
                PackWeight,
            )),
        })
    }

    pub fn stats(&self) -> Arc<TransferStats> {
        self.inner.stats.clone()
    }

    pub fn settings(&self) -> &S3Settings {
        &self.inner.settings
    }

    /// Object key of a repository file.
    pub fn key_of(&self, tpe: FileType, id: &Id) -> String {
        let loc = &self.inner.settings.location;
        match tpe {
            FileType::Config => loc.key("config"),
            FileType::Pack => {
                let hex = id.to_hex();
                loc.key(&format!("data/{}/{}", &hex[..2], &*hex))
            }
            _ => loc.key(&format!("{}/{}", tpe.dirname(), &*id.to_hex())),
        }
    }

    /// Runs a future on the backend's runtime from synchronous code.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Waits until every queued pack upload is stored; the first failure is returned
    /// (and remembered, so later writes fail too).
    pub fn flush(&self) -> RusticResult<()> {
        let handles: Vec<_> = std::mem::take(&mut *self.pending.lock().unwrap());
        self.settle(handles);
        match &*self.failed.lock().unwrap() {
            Some(e) => Err(request_error(S3Error::new(
                e.failure,
                format!(
                    "an earlier pack upload failed, so nothing that refers to it is written: {e}"
                ),
            ))),
            None => Ok(()),
        }
    }

    /// Waits for the given uploads; the first failure is remembered.
    fn settle(&self, handles: Vec<Upload>) {
        for h in handles {
            let err = match self.rt.block_on(h) {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(join) => {
                    S3Error::new(Failure::Other, format!("pack upload task failed: {join}"))
                }
            };
            self.failed.lock().unwrap().get_or_insert(err);
        }
    }

    /// Lists `(key, size)` of all objects under `dir/` of the repository.
    pub fn list_keys(&self, dir: &str) -> Result<Vec<(String, u64)>, S3Error> {
        let inner = self.inner.clone();
        let prefix = format!("{}/", inner.settings.location.key(dir));
        self.rt
            .block_on(async move { list_prefix(&inner, &prefix).await })
    }

    /// Reads a whole object by key. `Ok(None)` when it does not exist.
    pub fn get_key(&self, key: &str) -> Result<Option<Bytes>, S3Error> {
        let inner = self.inner.clone();
        let key = key.to_string();
        self.rt.block_on(async move {
            match get_object(&inner, &key, None).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.failure == Failure::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    pub fn put_key(&self, key: &str, body: Bytes) -> Result<(), S3Error> {
        let inner = self.inner.clone();
        let key = key.to_string();
        self.rt
            .block_on(async move { put_object(&inner, &key, Payload::Whole(body)).await })
    }

    pub fn delete_key(&self, key: &str) -> Result<(), S3Error> {
        let inner = self.inner.clone();
        let key = key.to_string();
        self.rt.block_on(async move {
            inner.stats.requests.fetch_add(1, Ordering::Relaxed);
            inner
                .client
                .delete_object()
                .bucket(&inner.settings.location.bucket)
                .key(&key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| S3Error::from_sdk(&e, "delete", &key, &inner.settings))
        })
    }

    /// Checks that the bucket exists and the keys may use it.
    pub fn check_bucket(&self) -> Result<(), S3Error> {
        let inner = self.inner.clone();
        self.rt.block_on(async move {
            inner.stats.requests.fetch_add(1, Ordering::Relaxed);
            // ListObjectsV2 (not HeadBucket) so a missing bucket and wrong keys come
            // back with their error codes instead of a bare 404/403.
            inner
                .client
                .list_objects_v2()
                .bucket(&inner.settings.location.bucket)
                .prefix(inner.settings.location.key("config"))
                .max_keys(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| S3Error::from_sdk(&e, "access to", "the bucket", &inner.settings))
        })
    }
}

async fn list_prefix(inner: &Inner, prefix: &str) -> Result<Vec<(String, u64)>, S3Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = inner
            .client
            .list_objects_v2()
            .bucket(&inner.settings.location.bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(&e, "list", prefix, &inner.settings))?;
        for obj in resp.contents() {
            if let Some(k) = obj.key() {
                out.push((k.to_string(), obj.size().unwrap_or(0).max(0) as u64));
            }
        }
        match resp.next_continuation_token() {
            Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// GET with retries that also cover a connection dropped while the body streams
/// (the SDK retries only until the response headers arrive) and a body that stops
/// moving for the stuck-request timeout.
async fn get_object(inner: &Inner, key: &str, range: Option<(u64, u32)>) -> Result<Bytes, S3Error> {
    let settings = &inner.settings;
    let mut attempt = 0;
    loop {
        attempt += 1;
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = inner
            .client
            .get_object()
            .bucket(&settings.location.bucket)
            .key(key);
        if let Some((offset, len)) = range {
            if len == 0 {
                return Ok(Bytes::new());
            }
            req = req.range(format!("bytes={}-{}", offset, offset + u64::from(len) - 1));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(S3Error::from_sdk(&e, "read", key, settings)),
        };
        let body = match read_body(resp.body, settings.stall_timeout).await {
            Ok(b) => b,
            Err(e) if attempt < settings.max_attempts => {
                tracing::warn!(key, attempt, error = %e, "S3 read interrupted, retrying");
                backoff(settings, attempt).await;
                continue;
            }
            Err(BodyError::Stuck) => {
                return Err(S3Error::new(
                    Failure::Timeout,
                    stuck_message("read", key, settings),
                ));
            }
            Err(BodyError::Lost(e)) => {
                return Err(S3Error::new(
                    Failure::Unreachable,
                    format!(
                        "S3 read {key}: connection lost while reading ({e}), gave up after {attempt} attempts"
                    ),
                ));
            }
        };
        if let Some((_, len)) = range
            && body.len() != len as usize
        {
            if attempt < settings.max_attempts {
                tracing::warn!(
                    key,
                    attempt,
                    got = body.len(),
                    want = len,
                    "short read from S3, retrying"
                );
                backoff(settings, attempt).await;
                continue;
            }
            return Err(S3Error::new(
                Failure::Other,
                format!("S3 read {key}: got {} bytes, expected {len}", body.len()),
            ));
        }
        inner
            .stats
            .downloaded_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        return Ok(body);
    }
}

/// Why a response body could not be read.
#[derive(Debug)]
enum BodyError {
    /// Nothing arrived for the stuck-request timeout.
    Stuck,
    /// The connection failed.
    Lost(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Stuck => f.write_str("no data for the stuck-request timeout"),
            BodyError::Lost(e) => f.write_str(e),
        }
    }
}

/// Reads a whole body; each piece must arrive within `stuck` of the one before (the
/// SDK's stalled-stream protection is off for downloads so that this is known for what
/// it is).
async fn read_body(mut body: ByteStream, stuck: Duration) -> Result<Bytes, BodyError> {
    let mut parts = Vec::new();
    loop {
        match tokio::time::timeout(stuck, body.next()).await {
            Err(_) => return Err(BodyError::Stuck),
            Ok(None) => return Ok(concat(parts)),
            Ok(Some(Ok(b))) => parts.push(b),
            Ok(Some(Err(e))) => return Err(BodyError::Lost(e.to_string())),
        }
    }
}

async fn backoff(settings: &S3Settings, attempt: u32) {
    let ms = settings.initial_backoff.as_millis() as u64 * (1u64 << attempt.min(7));
    tokio::time::sleep(Duration::from_millis(ms.min(20_000))).await;
}

/// What a PUT sends: one buffer, or a pack as rustic_core's list of buffers together
/// with its SHA-256 (its id).
#[derive(Clone)]
enum Payload {
    Whole(Bytes),
    Pack { parts: Vec<Bytes>, sha256: String },
}

impl Payload {
    fn len(&self) -> u64 {
        match self {
            Payload::Whole(b) => b.len() as u64,
            Payload::Pack { parts, .. } => parts.iter().map(|p| p.len() as u64).sum(),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Payload::Whole(b) => b,
            Payload::Pack { parts, .. } => concat(parts),
        }
    }
}

async fn put_object(inner: &Inner, key: &str, payload: Payload) -> Result<(), S3Error> {
    let settings = &inner.settings;
    let len = payload.len();
    if len > settings.multipart_threshold {
        put_multipart(inner, key, payload.into_bytes()).await?;
    } else {
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let (body, sha256) = match payload {
            Payload::Whole(b) => (ByteStream::from(b), None),
            Payload::Pack { parts, sha256 } => (parts_body(parts), Some(sha256)),
        };
        let req = inner
            .client
            .put_object()
            .bucket(&settings.location.bucket)
            .key(key)
            .content_length(len as i64)
            .body(body);
        let req = with_timeout(req.customize(), settings, len);
        let req = match (settings.sign_payload(), sha256) {
            // Over TLS the payload needs no SigV4 hash of its own.
            (false, _) => req.disable_payload_signing(),
            (true, Some(sha256)) => req.interceptor(PayloadHash(sha256)),
            (true, None) => req,
        };
        req.send()
            .await
            .map_err(|e| S3Error::from_sdk(&e, "write", key, settings))?;
    }
    inner.stats.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
    inner.stats.uploaded_objects.fetch_add(1, Ordering::Relaxed);
    inner.report_upload();
    Ok(())
}

/// A body that sends the buffers one after the other, and again on a retry.
fn parts_body(parts: Vec<Bytes>) -> ByteStream {
    let parts = Arc::new(parts);
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(PartsBody {
            parts: parts.clone(),
            next: 0,
        })
    }))
}

/// `http_body::Body` over shared buffers (cloning a `Bytes` copies no data).
struct PartsBody {
    parts: Arc<Vec<Bytes>>,
    next: usize,
}

impl http_body::Body for PartsBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let part = self.parts.get(self.next).cloned();
        self.next += 1;
        std::task::Poll::Ready(part.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.parts.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let left: u64 = self.parts[self.next.min(self.parts.len())..]
            .iter()
            .map(|p| p.len() as u64)
            .sum();
        http_body::SizeHint::with_exact(left)
    }
}

/// Signs a request with a payload hash known beforehand (a pack's id).
#[derive(Debug)]
struct PayloadHash(String);

impl Intercept for PayloadHash {
    fn name(&self) -> &'static str {
        "stowage-pack-payload-hash"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

async fn put_multipart(inner: &Inner, key: &str, body: Bytes) -> Result<(), S3Error> {
    let settings = &inner.settings;
    let bucket = &settings.location.bucket;
    inner.stats.requests.fetch_add(1, Ordering::Relaxed);
    let created = inner
        .client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| S3Error::from_sdk(&e, "start multipart upload of", key, settings))?;
    inner
        .stats
        .multipart_uploads
        .fetch_add(1, Ordering::Relaxed);
    let upload_id = created
        .upload_id()
        .ok_or_else(|| {
            S3Error::new(
                Failure::Other,
                format!("S3 multipart upload of {key}: server returned no upload id"),
            )
        })?
        .to_string();
    let result = async {
        let mut parts = Vec::new();
        for (i, chunk) in body.chunks(settings.part_size as usize).enumerate() {
            let n = i as i32 + 1;
            inner.stats.requests.fetch_add(1, Ordering::Relaxed);
            let req = inner
                .client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(n)
                .body(ByteStream::from(body.slice_ref(chunk)));
            let part = {
                let c = with_timeout(req.customize(), settings, chunk.len() as u64);
                if settings.sign_payload() {
                    c
                } else {
                    c.disable_payload_signing()
                }
            }
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(&e, &format!("upload part {n} of"), key, settings))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build(),
            );
        }
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        inner
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(&e, "complete multipart upload of", key, settings))?;
        Ok::<(), S3Error>(())
    }
    .await;
    if result.is_err() {
        // Best effort: an abandoned upload only costs storage until the bucket's
        // lifecycle rule removes it.
        let _ = inner
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    result
}

/// The attempt timeout of an upload of `len` bytes: the stuck-request timeout plus
/// the time the body takes over a slow home uplink (at least 64 KiB/s assumed). A body
/// that stops moving is cut off sooner, after the stuck-request timeout (the client's
/// stalled-stream protection, see `S3Settings::client`).
pub fn upload_attempt_timeout(stuck: Duration, len: u64) -> Duration {
    stuck + Duration::from_secs(len / (64 * 1024))
}

fn with_timeout<T, E, B>(
    req: aws_sdk_s3::client::customize::CustomizableOperation<T, E, B>,
    settings: &S3Settings,
    len: u64,
) -> aws_sdk_s3::client::customize::CustomizableOperation<T, E, B> {
    let secs = upload_attempt_timeout(settings.stuck_timeout, len).as_secs();
    req.config_override(
        aws_sdk_s3::config::Builder::default().timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_attempt_timeout(Duration::from_secs(secs))
                .build(),
        ),
    )
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for p in parts {
        buf.extend_from_slice(&p);
    }
    buf.freeze()
}

impl ReadBackend for S3Backend {
    fn location(&self) -> String {
        let l = &self.inner.settings.location;
        format!(
            "s3:{}/{}",
            l.endpoint.as_deref().unwrap_or("aws"),
            l.key("")
        )
        .trim_end_matches('/')
        .to_string()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            let key = self.key_of(tpe, &Id::default());
            let inner = self.inner.clone();
            let found = self
                .rt
                .block_on(async move {
                    let prefix = key.clone();
                    list_prefix(&inner, &prefix)
                        .await
                        .map(|v| v.into_iter().find(|(k, _)| *k == key))
                })
                .map_err(request_error)?;
            return Ok(found
                .map(|(_, size)| vec![(Id::default(), u32::try_from(size).unwrap_or(u32::MAX))])
                .unwrap_or_default());
        }
        let keys = self.list_keys(tpe.dirname()).map_err(request_error)?;
        Ok(keys
            .into_iter()
            .filter_map(|(k, size)| {
                let name = k.rsplit('/').next()?;
                let id = name.parse::<Id>().ok()?;
                Some((id, u32::try_from(size).ok()?))
            })
            .collect())
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let key = self.key_of(tpe, id);
        let inner = self.inner.clone();
        self.rt
            .block_on(async move { get_object(&inner, &key, None).await })
            .map_err(request_error)
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        if cacheable && tpe == FileType::Pack {
            let pack = self
                .tree_packs
                .get_or_insert_with(id, || self.read_full(tpe, id))?;
            let range = offset as usize..offset as usize + length as usize;
            return match pack.get(range.clone()) {
                Some(_) => Ok(pack.slice(range)),
                None => Err(backend_error(format!(
                    "pack {} is {} bytes long, shorter than the index says ({} bytes at {}): \
                     the repository is damaged; run `restic check`",
                    self.key_of(tpe, id),
                    pack.len(),
                    length,
                    offset
                ))),
            };
        }
        let key = self.key_of(tpe, id);
        let inner = self.inner.clone();
        self.rt
            .block_on(
                async move { get_object(&inner, &key, Some((u64::from(offset), length))).await },
            )
            .map_err(request_error)
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.key_of(tpe, id)
    }
}

impl WriteBackend for S3Backend {
    fn create(&self) -> RusticResult<()> {
        // S3 has no directories; only make sure the bucket is there and usable.
        self.check_bucket().map_err(request_error)
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        buf: BytesList,
    ) -> RusticResult<()> {
        let key = self.key_of(tpe, id);
        if tpe != FileType::Pack {
            let body = Payload::Whole(concat(buf.into_vec()));
            // Ordering barrier: see the module comment.
            self.flush()?;
            let inner = self.inner.clone();
            return self
                .rt
                .block_on(async move { put_object(&inner, &key, body).await })
                .map_err(request_error);
        }
        let body = Payload::Pack {
            parts: buf.into_vec(),
            sha256: id.to_hex().to_string(),
        };
        if let Some(e) = &*self.failed.lock().unwrap() {
            return Err(request_error(S3Error::new(
                e.failure,
                format!("an earlier pack upload failed: {e}"),
            )));
        }
        // Bounded queue: at most `concurrency` packs in flight (and in memory).
        let permit = self
            .rt
            .block_on(self.permits.clone().acquire_owned())
            .map_err(|e| backend_error(format!("upload queue closed: {e}")))?;
        let inner = self.inner.clone();
        let handle = self.rt.spawn(async move {
            let r = put_object(&inner, &key, body).await;
            drop(permit);
            r
        });
        let mut pending = self.pending.lock().unwrap();
        // Collect finished uploads so the list stays short on long backups; their
        // errors are remembered for the next barrier.
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *pending)
            .into_iter()
            .partition(JoinHandle::is_finished);
        *pending = running;
        self.settle(done);
        pending.push(handle);
        Ok(())
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        self.flush()?;
        let key = self.key_of(tpe, id);
        self.delete_key(&key).map_err(request_error)
    }
}
