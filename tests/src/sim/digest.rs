//! Checksums of a volume's tree: content and metadata (type, mode, owner, mtime,
//! symlink target) of every entry, so a test or the demo can prove that a restored
//! volume equals the backed-up one.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// One line per entry (relative path → description with the content's SHA-256).
pub fn entries(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if rel == "lost+found" {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = if m.file_type().is_symlink() {
            format!(
                "link->{}",
                std::fs::read_link(&path)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        } else if m.is_dir() {
            "dir".to_string()
        } else if m.is_file() {
            let data = std::fs::read(&path).unwrap_or_default();
            format!("file {} {}", m.len(), hex(&Sha256::digest(&data)))
        } else {
            "special".to_string()
        };
        let mtime = if m.file_type().is_symlink() || m.is_dir() {
            // Directory times change with their content's restore order; links' are
            // not restored by every tool.
            String::new()
        } else {
            format!(" mtime={}", m.mtime())
        };
        out.insert(
            rel,
            format!(
                "{kind} mode={:o} owner={}:{}{mtime}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ),
        );
        if m.is_dir() && !m.file_type().is_symlink() {
            walk(root, &path, out);
        }
    }
}

/// One SHA-256 over every entry: equal trees have equal checksums.
pub fn tree(root: &Path) -> String {
    let mut h = Sha256::new();
    for (k, v) in entries(root) {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([b'\n']);
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
