//! restic-compatible repository locks.
//!
//! rustic_core neither takes nor honours restic's `locks/` files, but restic and
//! VolSync's mover do: a backup holds a non-exclusive lock, prune an exclusive one.
//! Lock files are JSON, encrypted with the repository key like any repository file,
//! stored under `locks/<sha256 of the encrypted bytes>`; they are refreshed every
//! 5 minutes and count as stale after 30.

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::{Aead, AeadInPlace};
use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use rustic_core::repofile::MasterKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::backend::Storage;

pub const LOCKS_DIR: &str = "locks";
/// restic refreshes its locks every 5 minutes...
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// ...and considers a lock older than 30 minutes stale.
pub const STALE_AFTER: SignedDuration = SignedDuration::from_mins(30);

/// A lock file's content, field for field as restic writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub time: Timestamp,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: i64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// The (uid, gid) this process runs as, if /proc tells.
pub fn process_owner() -> Option<(u32, u32)> {
    std::fs::metadata("/proc/self")
        .ok()
        .map(|m| (m.uid(), m.gid()))
}

impl LockInfo {
    /// A lock for this process, taken now.
    pub fn for_this_process(exclusive: bool) -> Self {
        let (uid, gid) = process_owner().unwrap_or((0, 0));
        Self {
            time: Timestamp::now(),
            exclusive,
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            username: std::env::var("USER").unwrap_or_else(|_| "stowage".into()),
            pid: i64::from(std::process::id()),
            uid,
            gid,
        }
    }

    pub fn is_stale(&self, now: Timestamp) -> bool {
        now.duration_since(self.time) > STALE_AFTER
    }

    pub fn describe(&self) -> String {
        format!(
            "{} lock of {}@{} (pid {}) taken {}",
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.username,
            self.hostname,
            self.pid,
            self.time
        )
    }
}

/// Whether a new lock (`exclusive` or not) conflicts with an existing fresh one.
/// Stale locks never conflict. Pure, for the decision tests.
pub fn conflicts(existing: &LockInfo, want_exclusive: bool, now: Timestamp) -> bool {
    !existing.is_stale(now) && (existing.exclusive || want_exclusive)
}

/// The repository key in the form restic's crypto (AES-256-CTR + Poly1305-AES) uses.
#[derive(Clone)]
pub struct LockKey([u8; 64]);

impl LockKey {
    pub fn from_master(key: &MasterKey) -> Result<Self, Error> {
        let mut k = [0u8; 64];
        if key.encrypt.len() != 32 || key.mac.k.len() != 16 || key.mac.r.len() != 16 {
            return Err(Error::Repository(
                "repository key has an unexpected size".into(),
            ));
        }
        k[..32].copy_from_slice(&key.encrypt);
        k[32..48].copy_from_slice(&key.mac.k);
        k[48..].copy_from_slice(&key.mac.r);
        Ok(Self(k))
    }

    fn cipher(&self) -> Aes256CtrPoly1305Aes {
        Aes256CtrPoly1305Aes::new(aes256ctr_poly1305aes::Key::from_slice(&self.0))
    }

    /// nonce (16) | ciphertext | MAC (16), as restic stores every file.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(plain.len() + 32);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .cipher()
            .encrypt_in_place_detached(
                aes256ctr_poly1305aes::aead::Nonce::<Aes256CtrPoly1305Aes>::from_slice(&nonce),
                &[],
                &mut out[16..],
            )
            .expect("encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(&tag);
        out
    }

    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, Error> {
        if data.len() < 32 {
            return Err(Error::Repository("lock file too short".into()));
        }
        let nonce =
            aes256ctr_poly1305aes::aead::Nonce::<Aes256CtrPoly1305Aes>::from_slice(&data[..16]);
        self.cipher().decrypt(nonce, &data[16..]).map_err(|_| {
            Error::Repository("lock file does not decrypt with the repository key".into())
        })
    }
}

/// Encodes a lock the way restic stores it; returns (file name, bytes).
pub fn encode(key: &LockKey, info: &LockInfo) -> (String, Bytes) {
    let json = serde_json::to_vec(info).expect("lock info serializes");
    let data = key.encrypt(&json);
    let name = hex(&Sha256::digest(&data));
    (name, Bytes::from(data))
}

/// Decodes a lock file; understands restic's compressed form (version byte 2 + zstd).
pub fn decode(key: &LockKey, data: &[u8]) -> Result<LockInfo, Error> {
    let plain = key.decrypt(data)?;
    let json = match plain.first() {
        Some(b'{') | Some(b'[') => plain,
        Some(2) => zstd::decode_all(&plain[1..])
            .map_err(|e| Error::Repository(format!("lock file does not decompress: {e}")))?,
        _ => {
            return Err(Error::Repository(
                "lock file has an unknown encoding".into(),
            ));
        }
    };
    serde_json::from_slice(&json)
        .map_err(|e| Error::Repository(format!("lock file is not valid JSON: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A lock file's name and its decoded content (or why it could not be read).
pub type LockEntry = (String, Result<LockInfo, Error>);

/// All locks of a repository; unreadable ones are reported with their error.
pub fn list(storage: &Storage, key: &LockKey) -> Result<Vec<LockEntry>, Error> {
    let mut out = Vec::new();
    for (name, _) in storage.list(LOCKS_DIR)? {
        if let Some(data) = storage.read(LOCKS_DIR, &name)? {
            out.push((name, decode(key, &data)));
        }
    }
    Ok(out)
}

/// Removes the lock file `locks/<name>` (a stale lock; see stowage-gc).
pub fn remove(storage: &Storage, name: &str) -> Result<(), Error> {
    storage.remove(LOCKS_DIR, name)
}

/// Whether process `pid` exists on this host (restic's test for its own host's locks).
pub fn pid_alive(pid: i64) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// This host's name, as lock files record it.
pub fn this_hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// A lock file this process holds: where, and its current name (`None` once removed).
/// The refresher renames it under the same mutex, so [`release_all`] never races a
/// refresh into leaving a file behind.
struct Held {
    storage: Storage,
    name: Mutex<Option<String>>,
}

impl Held {
    /// Removes the lock file, once.
    fn remove(&self) -> Result<bool, Error> {
        let mut name = self.name.lock().unwrap_or_else(|e| e.into_inner());
        match name.take() {
            Some(n) => self.storage.remove(LOCKS_DIR, &n).map(|()| true),
            None => Ok(false),
        }
    }
}

/// Every lock this process holds (see [`release_all`]).
static HELD: Mutex<Vec<Arc<Held>>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Arc<Held>>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

fn forget(h: &Arc<Held>) {
    registry().retain(|x| !Arc::ptr_eq(x, h));
}

/// Removes every lock this process holds, now: for a process told to stop (SIGTERM)
/// that will not reach its guards' release. Returns how many were removed.
pub fn release_all() -> Result<usize, Error> {
    release_where(|_| true)
}

/// [`release_all`] for the locks on storages `which` selects.
fn release_where(which: impl Fn(&Storage) -> bool) -> Result<usize, Error> {
    let all: Vec<Arc<Held>> = registry()
        .iter()
        .filter(|h| which(&h.storage))
        .cloned()
        .collect();
    let mut removed = 0;
    let mut first_err = None;
    for h in all {
        match h.remove() {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        forget(&h);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// A held lock, refreshed in the background; removed on `release` or drop.
pub struct LockGuard {
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
    held: Arc<Held>,
}

impl LockGuard {
    /// Removes the lock now. Errors are returned (drop only logs them).
    pub fn release(mut self) -> Result<(), Error> {
        self.stop_and_remove()
    }

    fn stop_and_remove(&mut self) -> Result<(), Error> {
        drop(self.stop.take());
        let joined = self.refresher.take().map(JoinHandle::join);
        let removed = self.held.remove();
        forget(&self.held);
        match joined {
            Some(Err(_)) => Err(Error::Repository("lock refresher panicked".into())),
            _ => removed.map(|_| ()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_remove() {
            tracing::warn!(error = %e, "could not remove the repository lock; it turns stale in 30 minutes");
        }
    }
}

/// Takes a lock: refuses while a conflicting fresh lock exists, writes ours, then
/// checks again (another process may have locked in between; restic does the same).
pub fn acquire(storage: &Storage, key: &LockKey, exclusive: bool) -> Result<LockGuard, Error> {
    acquire_except(storage, key, exclusive, &[])
}

/// Like [`acquire`], but disregards the lock files named in `ignore`: locks whose
/// holder is known to be gone, which the caller removes once it holds its own lock
/// (stowage-gc's stale-lock removal).
pub fn acquire_except(
    storage: &Storage,
    key: &LockKey,
    exclusive: bool,
    ignore: &[String],
) -> Result<LockGuard, Error> {
    check_conflicts(storage, key, exclusive, None, ignore)?;
    let info = LockInfo::for_this_process(exclusive);
    let (name, data) = encode(key, &info);
    // Known before it is written: a stop in between still removes it.
    let held = Arc::new(Held {
        storage: storage.clone(),
        name: Mutex::new(Some(name.clone())),
    });
    registry().push(held.clone());
    let written = storage
        .write(LOCKS_DIR, &name, data)
        .and_then(|()| check_conflicts(storage, key, exclusive, Some(&name), ignore));
    if let Err(e) = written {
        let _ = held.remove();
        forget(&held);
        return Err(e);
    }
    tracing::debug!(lock = %name, exclusive, "repository locked");
    let (tx, rx) = mpsc::channel::<()>();
    let (k, h) = (key.clone(), held.clone());
    let refresher = match std::thread::Builder::new()
        .name("stowage-lock".into())
        .spawn(move || refresh_loop(&h, &k, info, &rx))
    {
        Ok(t) => t,
        Err(e) => {
            let _ = held.remove();
            forget(&held);
            return Err(Error::Repository(format!(
                "cannot start the lock refresher: {e}"
            )));
        }
    };
    Ok(LockGuard {
        stop: Some(tx),
        refresher: Some(refresher),
        held,
    })
}

fn refresh_loop(held: &Held, key: &LockKey, mut info: LockInfo, stop: &mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(REFRESH_EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let mut name = held.name.lock().unwrap_or_else(|e| e.into_inner());
        let Some(old) = name.clone() else {
            return; // released meanwhile
        };
        // restic refreshes by writing a new lock file and removing the old one.
        info.time = Timestamp::now();
        let (new_name, data) = encode(key, &info);
        match held.storage.write(LOCKS_DIR, &new_name, data) {
            Ok(()) => {
                if let Err(e) = held.storage.remove(LOCKS_DIR, &old) {
                    tracing::warn!(error = %e, "could not remove the old lock file after refresh");
                }
                *name = Some(new_name);
            }
            Err(e) => tracing::warn!(error = %e, "could not refresh the repository lock"),
        }
    }
}

fn check_conflicts(
    storage: &Storage,
    key: &LockKey,
    exclusive: bool,
    ours: Option<&str>,
    ignore: &[String],
) -> Result<(), Error> {
    let now = Timestamp::now();
    for (name, lock) in list(storage, key)? {
        if Some(name.as_str()) == ours || ignore.contains(&name) {
            continue;
        }
        match lock {
            Ok(l) if conflicts(&l, exclusive, now) => {
                return Err(Error::Locked(format!(
                    "repository is locked: {} (lock file locks/{name}). Try again later; if \
                     its holder is gone, the lock turns stale after 30 minutes and stowage-gc \
                     removes it (or run `restic unlock`)",
                    l.describe()
                )));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(lock = %name, error = %e, "ignoring unreadable lock file"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(exclusive: bool, age_min: i64) -> LockInfo {
        let mut l = LockInfo::for_this_process(exclusive);
        l.time = Timestamp::now() - SignedDuration::from_mins(age_min);
        l
    }

    #[test]
    fn conflict_rules() {
        let now = Timestamp::now();
        assert!(
            conflicts(&lock(true, 1), false, now),
            "fresh exclusive blocks a backup"
        );
        assert!(
            !conflicts(&lock(false, 1), false, now),
            "shared locks coexist"
        );
        assert!(
            conflicts(&lock(false, 1), true, now),
            "a prune waits for a backup"
        );
        assert!(
            !conflicts(&lock(true, 31), false, now),
            "stale locks never block"
        );
        assert!(
            conflicts(&lock(true, 29), false, now),
            "29 minutes is still fresh"
        );
    }

    #[test]
    fn encode_decode_round_trip_and_name_is_content_hash() {
        let key = LockKey::from_master(&MasterKey::new()).unwrap();
        let info = lock(true, 0);
        let (name, data) = encode(&key, &info);
        assert_eq!(name, hex(&Sha256::digest(&data)));
        assert_eq!(decode(&key, &data).unwrap(), info);
        let other = LockKey::from_master(&MasterKey::new()).unwrap();
        assert!(decode(&other, &data).is_err());
    }

    #[test]
    fn decodes_restic_compressed_form_and_go_timestamps() {
        let key = LockKey::from_master(&MasterKey::new()).unwrap();
        let json = br#"{"time":"2026-11-23T15:10:14.454962584+01:00","exclusive":true,"hostname":"h","username":"u","pid":7}"#;
        let mut plain = vec![2u8];
        plain.extend(zstd::encode_all(&json[..], 3).unwrap());
        let info = decode(&key, &key.encrypt(&plain)).unwrap();
        assert!(info.exclusive);
        assert_eq!(info.time, "2026-11-23T14:10:14.454962584Z".parse().unwrap());
        assert_eq!((info.uid, info.gid), (0, 0));
    }

    #[test]
    fn release_all_removes_held_locks_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::Local(dir.path().to_path_buf());
        let key = LockKey::from_master(&MasterKey::new()).unwrap();
        let guard = acquire(&storage, &key, false).unwrap();
        assert_eq!(storage.list(LOCKS_DIR).unwrap().len(), 1);
        // (Only this test's storage: other tests of this process hold locks too.)
        let ours = |s: &Storage| matches!(s, Storage::Local(p) if p == dir.path());
        assert_eq!(release_where(ours).unwrap(), 1);
        assert!(storage.list(LOCKS_DIR).unwrap().is_empty());
        // The guard's own release finds nothing left to do.
        guard.release().unwrap();
        assert!(storage.list(LOCKS_DIR).unwrap().is_empty());
    }

    #[test]
    fn acquire_refuses_fresh_exclusive_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::Local(dir.path().to_path_buf());
        let key = LockKey::from_master(&MasterKey::new()).unwrap();
        let (name, data) = encode(&key, &lock(true, 1));
        storage.write(LOCKS_DIR, &name, data).unwrap();
        let err = acquire(&storage, &key, false).err().unwrap();
        assert!(matches!(err, Error::Locked(_)), "{err}");
        assert_eq!(
            storage.list(LOCKS_DIR).unwrap().len(),
            1,
            "nothing of ours left behind"
        );

        storage.remove(LOCKS_DIR, &name).unwrap();
        let (stale, data) = encode(&key, &lock(true, 45));
        storage.write(LOCKS_DIR, &stale, data).unwrap();
        let guard = acquire(&storage, &key, false).unwrap();
        assert_eq!(storage.list(LOCKS_DIR).unwrap().len(), 2);
        guard.release().unwrap();
        let left: Vec<_> = storage
            .list(LOCKS_DIR)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            left,
            vec![stale],
            "only the stale lock remains; ours is gone"
        );
    }
}
