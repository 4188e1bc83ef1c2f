//! The backup source: the volume's directory, stored with its contents at the root of
//! the snapshot tree, exactly as VolSync's `cd /data; restic backup .` stores it, so
//! `restic restore <id> -t /data` and VolSync restores put files where they were.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustic_core::{
    Excludes, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions, ReadSource,
    ReadSourceEntry, RusticResult,
};

/// Directory names never backed up: the filesystem's own, recreated by `mkfs`.
pub const SKIPPED: &[&str] = &["lost+found"];

pub struct VolumeSource {
    inner: LocalSource,
    root: PathBuf,
    seen: Arc<AtomicU64>,
}

impl VolumeSource {
    /// `excludes` are restic-style patterns (`*.tmp`, `cache/`).
    pub fn new(root: &Path, excludes: &[String], seen: Arc<AtomicU64>) -> RusticResult<Self> {
        let globs: Vec<String> = SKIPPED
            .iter()
            .map(|s| (*s).to_string())
            .chain(excludes.iter().cloned())
            .map(|p| format!("!{p}"))
            .collect();
        let inner = LocalSource::new(
            LocalSourceSaveOptions::default(),
            &Excludes::default().globs(globs),
            &LocalSourceFilterOptions::default(),
            &[root],
        )?;
        Ok(Self {
            inner,
            root: root.to_path_buf(),
            seen,
        })
    }
}

type Entry = RusticResult<ReadSourceEntry<<LocalSource as ReadSource>::Open>>;

impl ReadSource for VolumeSource {
    type Open = <LocalSource as ReadSource>::Open;
    type Iter = Box<dyn Iterator<Item = Entry> + Send>;

    fn size(&self) -> RusticResult<Option<u64>> {
        self.inner.size()
    }

    fn entries(&self) -> Self::Iter {
        let root = self.root.clone();
        let seen = self.seen.clone();
        Box::new(self.inner.entries().filter_map(move |e| match e {
            Err(e) => Some(Err(e)),
            Ok(mut entry) => {
                let rel = entry.path.strip_prefix(&root).ok()?.to_path_buf();
                // The root itself is the snapshot's root tree, not an entry in it.
                if rel.as_os_str().is_empty() {
                    return None;
                }
                seen.fetch_add(1, Ordering::Relaxed);
                entry.path = rel;
                Some(Ok(entry))
            }
        }))
    }
}

/// True when the directory holds nothing but what is never backed up.
pub fn is_empty(dir: &Path) -> std::io::Result<bool> {
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        if !SKIPPED.iter().any(|s| name == *s) {
            return Ok(false);
        }
    }
    Ok(true)
}
