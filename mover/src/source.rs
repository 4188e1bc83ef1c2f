//! The backup source: the volume's directory, stored with its contents at the root of
//! the snapshot tree, exactly as VolSync's `cd /data; restic backup .` stores it, so
//! `restic restore <id> -t /data` and VolSync restores put files where they were.
//!
//! rustic_core leaves out what it cannot read (a directory it cannot list, a file it
//! cannot open or read) with a warning and stores the rest. Those entries are counted
//! here ([`Skipped`]), so that such a backup is reported as partial, not as a success.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustic_core::{
    Excludes, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions, ReadSource,
    ReadSourceEntry, ReadSourceOpen, RusticError, RusticResult,
};
use stowage_common::result::SKIPPED_PATHS_MAX;

/// Directory names never backed up: the filesystem's own, recreated by `mkfs`.
pub const SKIPPED: &[&str] = &["lost+found"];

/// Entries left out because they could not be read: how many, and the first paths
/// (relative to the volume).
#[derive(Debug, Default)]
pub struct Skipped {
    inner: Mutex<(u64, Vec<String>)>,
}

impl Skipped {
    fn record(&self, path: String, error: &str) {
        tracing::warn!(path = %path, error, "could not read {path}: left out of the snapshot");
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += 1;
        if s.1.len() < SKIPPED_PATHS_MAX {
            s.1.push(path);
        }
    }

    /// (count, first paths).
    pub fn get(&self) -> (u64, Vec<String>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct VolumeSource {
    inner: LocalSource,
    root: PathBuf,
    seen: Arc<AtomicU64>,
    skipped: Arc<Skipped>,
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
            skipped: Arc::default(),
        })
    }

    /// What could not be read so far.
    pub fn skipped(&self) -> Arc<Skipped> {
        self.skipped.clone()
    }

    /// True when a backup would store no file: nothing but directories is left after
    /// the excludes and the [`SKIPPED`] names (what the empty-source guard judges).
    pub fn stores_nothing(&self) -> bool {
        !self
            .inner
            .entries()
            .any(|e| e.is_ok_and(|e| e.path != self.root && !e.node.is_dir()))
    }
}

type Entry = RusticResult<ReadSourceEntry<CountedOpen>>;

/// A file to open; a failure to open or read it is counted in [`Skipped`].
pub struct CountedOpen {
    inner: <LocalSource as ReadSource>::Open,
    path: String,
    skipped: Arc<Skipped>,
}

impl ReadSourceOpen for CountedOpen {
    type Reader = CountedReader;

    fn open(self) -> RusticResult<Self::Reader> {
        match self.inner.open() {
            Ok(file) => Ok(CountedReader {
                inner: file,
                path: self.path,
                skipped: self.skipped,
                failed: false,
            }),
            Err(e) => {
                self.skipped.record(self.path, &cause(&e));
                Err(e)
            }
        }
    }
}

/// A file's content; a read error is counted once.
pub struct CountedReader {
    inner: <<LocalSource as ReadSource>::Open as ReadSourceOpen>::Reader,
    path: String,
    skipped: Arc<Skipped>,
    failed: bool,
}

impl Read for CountedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = self.inner.read(buf);
        if let Err(e) = &r
            && e.kind() != std::io::ErrorKind::Interrupted
            && !self.failed
        {
            self.failed = true;
            self.skipped.record(self.path.clone(), &e.to_string());
        }
        r
    }
}

/// The messages of a rustic error and its causes, outermost first.
fn chain(e: &RusticError) -> Vec<String> {
    let mut out = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        out.push(err.to_string());
        next = err.source();
    }
    out
}

/// The innermost cause of a rustic error (the OS error), in one line.
fn cause(e: &RusticError) -> String {
    chain(e).pop().unwrap_or_default()
}

/// The path a walk error names ("<path>: <error>"), relative to `root`.
pub fn walk_error_path(root: &Path, message: &str) -> Option<String> {
    let root = format!("{}/", root.display());
    let at = message.find(&root)?;
    let rest = &message[at + root.len()..];
    Some(rest.split(": ").next().unwrap_or(rest).to_string())
}

impl ReadSource for VolumeSource {
    type Open = CountedOpen;
    type Iter = Box<dyn Iterator<Item = Entry> + Send>;

    fn size(&self) -> RusticResult<Option<u64>> {
        self.inner.size()
    }

    fn entries(&self) -> Self::Iter {
        let root = self.root.clone();
        let seen = self.seen.clone();
        let skipped = self.skipped.clone();
        Box::new(self.inner.entries().filter_map(move |e| match e {
            Err(e) => {
                // A directory that cannot be listed: rustic_core stores it empty. The
                // walker's error names the path ("<path>: <error>").
                let texts = chain(&e);
                let path = texts
                    .iter()
                    .find_map(|t| walk_error_path(&root, t))
                    .unwrap_or_else(|| texts.last().cloned().unwrap_or_default());
                skipped.record(path, &cause(&e));
                Some(Err(e))
            }
            Ok(entry) => {
                let rel = entry.path.strip_prefix(&root).ok()?.to_path_buf();
                // The root itself is the snapshot's root tree, not an entry in it.
                if rel.as_os_str().is_empty() {
                    return None;
                }
                seen.fetch_add(1, Ordering::Relaxed);
                let open = entry.open.map(|inner| CountedOpen {
                    inner,
                    path: rel.display().to_string(),
                    skipped: skipped.clone(),
                });
                Some(Ok(ReadSourceEntry {
                    path: rel,
                    node: entry.node,
                    open,
                }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_errors_name_the_path_relative_to_the_volume() {
        let root = Path::new("/data");
        assert_eq!(
            walk_error_path(root, "/data/private/x: Permission denied (os error 13)").as_deref(),
            Some("private/x")
        );
        assert_eq!(walk_error_path(root, "something else"), None);
    }

    #[test]
    fn skipped_counts_all_and_names_the_first() {
        let s = Skipped::default();
        for i in 0..(SKIPPED_PATHS_MAX + 5) {
            s.record(format!("f{i}"), "denied");
        }
        let (n, paths) = s.get();
        assert_eq!(n as usize, SKIPPED_PATHS_MAX + 5);
        assert_eq!(paths.len(), SKIPPED_PATHS_MAX);
        assert_eq!(paths[0], "f0");
    }

    #[test]
    fn stores_nothing_judges_what_is_left_after_excludes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("lost+found")).unwrap();
        std::fs::create_dir_all(d.path().join("empty/dirs")).unwrap();
        let src = |ex: &[&str]| {
            let ex: Vec<String> = ex.iter().map(|s| s.to_string()).collect();
            VolumeSource::new(d.path(), &ex, Arc::default()).unwrap()
        };
        assert!(src(&[]).stores_nothing(), "directories only");
        std::fs::write(d.path().join("lost+found/x"), "x").unwrap();
        assert!(src(&[]).stores_nothing(), "lost+found is never stored");
        std::fs::write(d.path().join("empty/dirs/a.db"), "a").unwrap();
        assert!(!src(&[]).stores_nothing());
        assert!(src(&["*"]).stores_nothing());
        assert!(src(&["*.db"]).stores_nothing());
        assert!(!src(&["*.tmp"]).stores_nothing());
    }
}
