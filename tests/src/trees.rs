//! Directory trees with every kind of entry a volume holds, deterministic per seed.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

/// Deterministic pseudo-random bytes (xorshift64*), incompressible enough that
/// compression does not hide what was uploaded.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write_random(path: &Path, len: usize, seed: u64) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, random_bytes(len, seed)).unwrap();
}

/// A sparse file of `size` bytes with data only in the given extents.
pub fn write_sparse(path: &Path, size: u64, extents: &[(u64, usize)]) {
    let mut f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, (off, len)) in extents.iter().enumerate() {
        f.seek(SeekFrom::Start(*off)).unwrap();
        f.write_all(&random_bytes(*len, 1000 + i as u64)).unwrap();
    }
}

/// Bytes actually allocated on disk.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn set_mtime(path: &Path, stamp: &str) {
    // `touch -h -d` sets the time of symlinks themselves too.
    let ok = Command::new("touch")
        .args(["-h", "-d", stamp])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "touch {}", path.display());
}

/// Whether this process may change file owners (root in CI and on the dev machines).
pub fn can_chown() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The full zoo: small and large files, a sparse file, empty files and directories,
/// symlinks (one dangling), hard links, unicode and 255-byte names, unusual modes,
/// foreign owners, `user.*` xattrs, fixed timestamps, and a `lost+found` that must
/// not be backed up.
pub fn zoo(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let p = |s: &str| root.join(s);
    for i in 0..200 {
        write_random(
            &p(&format!("small/dir{}/f{i}.txt", i % 10)),
            (i * 37) % 3000,
            i as u64,
        );
    }
    write_random(&p("large/blob.bin"), 24 * 1024 * 1024 + 123, 7);
    fs::create_dir_all(p("large")).unwrap();
    write_sparse(
        &p("large/disk.img"),
        256 * 1024 * 1024,
        &[(0, 4096), (100 * 1024 * 1024, 65536)],
    );
    fs::write(p("empty-file"), b"").unwrap();
    fs::create_dir_all(p("empty-dir")).unwrap();
    fs::create_dir_all(p("links")).unwrap();
    symlink("../small/dir1/f1.txt", p("links/relative")).unwrap();
    symlink("/nonexistent/target", p("links/dangling")).unwrap();
    fs::write(p("links/original"), b"hard linked content\n").unwrap();
    fs::hard_link(p("links/original"), p("links/hardlink")).unwrap();
    fs::create_dir_all(p("names")).unwrap();
    fs::write(p("names/ünïcødé-日本語-😀.txt"), "unicode\n").unwrap();
    fs::write(p(&format!("names/{}", "l".repeat(255))), "long name\n").unwrap();
    fs::write(p("names/with space and 'quotes'"), "odd\n").unwrap();
    fs::create_dir_all(p("modes")).unwrap();
    for (name, mode) in [
        ("private", 0o600),
        ("exec", 0o755),
        ("none", 0o000),
        ("setgid", 0o2755),
        ("readonly", 0o444),
    ] {
        fs::write(p(&format!("modes/{name}")), name).unwrap();
        fs::set_permissions(
            p(&format!("modes/{name}")),
            fs::Permissions::from_mode(mode),
        )
        .unwrap();
    }
    fs::create_dir_all(p("modes/sticky")).unwrap();
    fs::set_permissions(p("modes/sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(p("xattrs"), "has xattrs\n").unwrap();
    xattr::set(p("xattrs"), "user.stowage.test", b"value-1").unwrap();
    xattr::set(p("xattrs"), "user.empty", b"").unwrap();
    if can_chown() {
        fs::create_dir_all(p("owners")).unwrap();
        fs::write(p("owners/app"), "owned by 1000\n").unwrap();
        chown(&p("owners/app"), 1000, 1000);
        fs::write(p("owners/postgres"), "owned by 999:70\n").unwrap();
        chown(&p("owners/postgres"), 999, 70);
        chown(&p("owners"), 1000, 1000);
        chown(&p("links/dangling"), 1000, 1000);
    }
    fs::create_dir_all(p("lost+found")).unwrap();
    fs::write(p("lost+found/#1234"), "fsck leftovers\n").unwrap();
    // Fixed times last (writing into directories changes theirs).
    for entry in [
        "empty-file",
        "links/relative",
        "links/dangling",
        "names/with space and 'quotes'",
        "xattrs",
        "large/blob.bin",
    ] {
        set_mtime(&p(entry), "2021-03-04 05:06:07.123456789");
    }
}

/// `count` small files spread over directories of 100.
pub fn many_small(root: &Path, count: usize, seed: u64) {
    for i in 0..count {
        write_random(
            &root.join(format!("d{:04}/f{i:06}", i / 100)),
            64 + (i * 131) % 4000,
            seed + i as u64,
        );
    }
}

/// Every regular file under `root` with its length, in path order.
fn files_by_path(root: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files.push((e.path(), e.metadata().unwrap().len()));
            }
        }
    }
    files.sort();
    files
}

/// Rewrites files until at least `fraction` of the total bytes are new; returns bytes
/// changed.
pub fn change_fraction(root: &Path, fraction: f64, seed: u64) -> u64 {
    let files = files_by_path(root);
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    let goal = (total as f64 * fraction) as u64;
    let mut changed = 0;
    for (i, (path, len)) in files.iter().enumerate() {
        if changed >= goal {
            break;
        }
        if i % 7 != 0 || *len == 0 {
            continue;
        }
        write_random(path, *len as usize, seed + i as u64);
        changed += len;
    }
    changed
}

/// Changes `fraction` of the bytes under `root` the way applications do: every 7th
/// file in path order is changed until enough bytes are new, a large file (over 1
/// MiB) by overwriting up to a quarter of it in place (a database's pages), a small
/// one by rewriting it. Returns the bytes changed.
pub fn change_spread(root: &Path, fraction: f64, seed: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let files = files_by_path(root);
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    let goal = (total as f64 * fraction) as u64;
    let mut changed = 0;
    for (i, (path, len)) in files.iter().enumerate().step_by(7) {
        if changed >= goal || *len == 0 {
            continue;
        }
        if *len > 1024 * 1024 {
            let n = (len / 4).min(goal - changed);
            let f = fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(&random_bytes(n as usize, seed + i as u64), (len - n) / 2)
                .unwrap();
            changed += n;
        } else {
            write_random(path, *len as usize, seed + i as u64);
            changed += len;
        }
    }
    changed
}
