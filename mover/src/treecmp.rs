//! Describes a directory tree with everything a backup must preserve, so two trees can
//! be compared: used by `demo` and by the tests.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// One entry of a tree, as a restore must reproduce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in ns (directories excluded: restoring their content
    /// touches them before their own time is set, in every tool).
    pub mtime_ns: Option<i128>,
    pub size: u64,
    pub content: Option<String>,
    pub link_target: Option<String>,
    /// `user.*` extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For files with several links: the first path (sorted) sharing the inode.
    pub hardlink_of: Option<String>,
}

/// Relative path → entry, skipping `lost+found` at the top.
pub fn describe(root: &Path) -> std::io::Result<BTreeMap<String, EntryInfo>> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut paths = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            if e.file_type()?.is_dir() {
                stack.push(p.clone());
            }
            paths.push((rel, p));
        }
    }
    paths.sort();
    for (rel, p) in paths {
        let m = std::fs::symlink_metadata(&p)?;
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        let mut hardlink_of = None;
        if ft.is_file() && m.nlink() > 1 {
            let first = inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone());
            if *first != rel {
                hardlink_of = Some(first.clone());
            }
        }
        let content = if ft.is_file() {
            let mut h = Sha256::new();
            let mut f = std::fs::File::open(&p)?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
        } else {
            None
        };
        let mut xattrs = BTreeMap::new();
        if !ft.is_symlink()
            && let Ok(names) = xattr::list(&p)
        {
            for n in names {
                let name = n.to_string_lossy().into_owned();
                if name.starts_with("user.") {
                    xattrs.insert(name, xattr::get(&p, &n)?.unwrap_or_default());
                }
            }
        }
        out.insert(
            rel,
            EntryInfo {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: (!ft.is_dir())
                    .then(|| i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())),
                size: if ft.is_dir() { 0 } else { m.size() },
                content,
                link_target: ft
                    .is_symlink()
                    .then(|| std::fs::read_link(&p).map(|t| t.to_string_lossy().into_owned()))
                    .transpose()?,
                xattrs,
                hardlink_of,
            },
        );
    }
    Ok(out)
}

/// Human-readable differences between two descriptions (empty: equal).
pub fn differences(
    a: &BTreeMap<String, EntryInfo>,
    b: &BTreeMap<String, EntryInfo>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => out.push(format!("missing: {k}")),
            Some(vb) if va != vb => out.push(format!(
                "differs: {k}\n  source:   {va:?}\n  restored: {vb:?}"
            )),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(format!("extra: {k}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The comparison must see every kind of difference it claims to check.
    #[test]
    fn detects_each_kind_of_difference() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("f"), "same").unwrap();
        let base = describe(&a).unwrap();
        let check = |change: &dyn Fn(&Path)| {
            let c = d.path().join("c");
            let _ = std::fs::remove_dir_all(&c);
            std::fs::create_dir_all(&c).unwrap();
            std::fs::copy(a.join("f"), c.join("f")).unwrap();
            let t = std::fs::metadata(a.join("f")).unwrap().modified().unwrap();
            std::fs::File::options()
                .write(true)
                .open(c.join("f"))
                .unwrap()
                .set_modified(t)
                .unwrap();
            std::fs::set_permissions(
                c.join("f"),
                std::fs::metadata(a.join("f")).unwrap().permissions(),
            )
            .unwrap();
            assert!(
                differences(&base, &describe(&c).unwrap()).is_empty(),
                "copy equals"
            );
            change(&c);
            assert!(
                !differences(&base, &describe(&c).unwrap()).is_empty(),
                "change not seen"
            );
        };
        check(&|c| std::fs::write(c.join("f"), "diff").unwrap());
        check(&|c| {
            std::fs::set_permissions(c.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap()
        });
        check(&|c| xattr::set(c.join("f"), "user.x", b"1").unwrap());
        check(&|c| {
            std::fs::File::options()
                .write(true)
                .open(c.join("f"))
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH)
                .unwrap()
        });
        check(&|c| std::fs::write(c.join("g"), "").unwrap());
        check(&|c| std::os::unix::fs::symlink("f", c.join("l")).unwrap());
    }
}
