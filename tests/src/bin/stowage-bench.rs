//! Benchmark (not a test): stowage-mover and restic side by side, in one run, on the
//! same generated data and the same S3 server (Garage on loopback).
//!
//! Run with `bash scripts/bench.sh [--size 2GiB]`, which builds the release binaries
//! first. Prints a table of seconds, throughput, CPU time and peak memory per step,
//! and the stowage/restic ratios.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use stowage_testkit::{garage, trees};

const PASSWORD: &str = "bench-password";

struct Step {
    step: &'static str,
    tool: &'static str,
    secs: f64,
    bytes: u64,
    cpu: f64,
    rss_mib: f64,
    /// CPU time the S3 server spent during the step: on one machine, the client's
    /// CPU and the server's share the same cores.
    server_cpu: f64,
    /// New data stored (backups).
    added: Option<u64>,
}

/// CPU seconds (user + system) the Garage process serving `config` has used so far
/// (the harness starts it as `garage server` with `GARAGE_CONFIG_FILE=<config>`).
fn server_cpu_secs(config: &Path) -> f64 {
    let needle = format!("GARAGE_CONFIG_FILE={}", config.display());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("garage"))
            || args.get(1).map(String::as_str) != Some("server")
        {
            continue;
        }
        let Ok(environ) = std::fs::read(dir.join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // After the command name in parentheses, utime and stime are the 12th and
        // 13th fields, in clock ticks (100 per second on Linux).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        return (ticks(11) + ticks(12)) / 100.0;
    }
    0.0
}

fn parse_size(s: &str) -> u64 {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = s.strip_suffix("gib") {
        (n, 1u64 << 30)
    } else if let Some(n) = s.strip_suffix("mib") {
        (n, 1 << 20)
    } else {
        (s.as_str(), 1)
    };
    (num.trim().parse::<f64>().expect("size like 2GiB or 500MiB") * mult as f64) as u64
}

/// Runs `cmd` under GNU time; returns (wall secs, user+sys secs, peak RSS MiB).
fn timed(cmd: Command, what: &str) -> (f64, f64, f64, String) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut t = Command::new("/usr/bin/time");
    t.arg("-v")
        .arg("-o")
        .arg(report.path())
        .arg(prog)
        .args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    let start = Instant::now();
    let out = t
        .output()
        .expect("GNU time is installed (scripts/install-test-tools.sh)");
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        panic!(
            "{what} failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(report.path()).unwrap();
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let cpu = field("User time (seconds):") + field("System time (seconds):");
    let rss = field("Maximum resident set size (kbytes):") / 1024.0;
    (
        secs,
        cpu,
        rss,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// New data a backup stored, from its JSON output: stowage's result line
/// (`added_bytes`) or restic's summary (`data_added`, with `--json`).
fn added_bytes(stdout: &str) -> Option<u64> {
    stdout.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v.get("added_bytes")
            .or_else(|| v.get("data_added"))
            .and_then(serde_json::Value::as_u64)
    })
}

fn generate(root: &Path, size: u64) -> u64 {
    // 10% of the bytes in small files (about 2 KiB each: 100,000 files for 2 GiB),
    // the rest in large ones.
    let small_bytes = size / 10;
    let count = (small_bytes / 2064).max(1) as usize;
    trees::many_small(&root.join("small"), count, 1);
    let mut left = size.saturating_sub(small_bytes);
    let mut i = 0;
    while left > 0 {
        let len = left.min(192 << 20);
        trees::write_random(
            &root.join(format!("large/file{i:03}.bin")),
            len as usize,
            500 + i,
        );
        left -= len;
        i += 1;
    }
    eprintln!("generated {count} small files and {i} large files");
    count as u64 + i
}

fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).cloned().unwrap_or_default())
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "stowage-bench: stowage-mover and restic side by side on the same data and S3 server\n\n\
             --size SIZE        data set size (default 2GiB; 10% in small files of ~2 KiB)\n\
             --changes P,P      percentages changed before the incremental backups (default 1,5)\n\
             --memory-growth    instead: the mover's peak memory by file count and by data size\n\
             --serve            start Garage and print a repository environment\n\
             --generate DIR     only write the data set (of --size) into DIR, for manual runs"
        );
        return;
    }
    let size = value("--size").map(|v| parse_size(&v)).unwrap_or(2 << 30);
    let changes: Vec<f64> = value("--changes")
        .unwrap_or_else(|| "1,5".into())
        .split(',')
        .map(|p| p.trim().parse::<f64>().expect("--changes like 1,5") / 100.0)
        .collect();
    if let Some(dir) = value("--generate") {
        generate(Path::new(&dir), size);
        return;
    }
    if args.iter().any(|a| a == "--serve") {
        // For manual experiments: start the server, print a repository environment,
        // keep serving until stdin closes.
        let g = garage::shared();
        let bucket = g.bucket("manual");
        for (k, v) in g.env(&format!("{bucket}/repo")) {
            println!("export {k}={v}");
        }
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
        return;
    }
    let mover: PathBuf = std::env::current_exe()
        .unwrap()
        .with_file_name("stowage-mover");
    assert!(
        mover.exists(),
        "build the mover first: cargo build --release -p stowage-mover"
    );
    if args.iter().any(|a| a == "--memory-growth") {
        memory_growth(&mover);
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    eprintln!(
        "generating {} MiB of test data in {}",
        size >> 20,
        data.display()
    );
    let files = generate(&data, size);
    let g = garage::shared();
    let env = |tool: &str| {
        let bucket = g.bucket(tool);
        let mut e = g.env(&format!("{bucket}/bench/{tool}"));
        e.push(("RESTIC_PASSWORD".into(), PASSWORD.into()));
        e
    };
    let (env_s, env_r) = (env("stowage"), env("restic"));
    let stowage = |args: &[&str]| {
        let mut c = Command::new(&mover);
        // STOWAGE_* settings of the caller apply (for tuning experiments).
        let tuning = std::env::vars().filter(|(k, _)| k.starts_with("STOWAGE_"));
        c.env_clear()
            .envs(env_s.iter().cloned())
            .env("STOWAGE_LOG", "warn")
            .envs(tuning)
            .args(args);
        c
    };
    let restic = |args: &[&str], cwd: &Path| {
        let mut c = Command::new("restic");
        c.env_clear()
            .envs(env_r.iter().cloned())
            .env("HOME", work.path())
            .args(["--no-cache", "-q"])
            .args(args)
            .current_dir(cwd);
        c
    };
    restic(&["init"], work.path()).output().unwrap();
    let mut steps = Vec::new();
    let config = g.config_path().to_path_buf();
    let mut record = |step: &'static str, tool: &'static str, bytes: u64, cmd: Command| {
        eprintln!("{step}: {tool}...");
        let before = server_cpu_secs(&config);
        let (secs, cpu, rss_mib, stdout) = timed(cmd, &format!("{step} with {tool}"));
        // Also as it happens: a long run's figures survive if a later step fails.
        eprintln!("  {secs:.1} s, CPU {cpu:.1} s, peak {rss_mib:.0} MiB");
        steps.push(Step {
            step,
            tool,
            secs,
            bytes,
            cpu,
            rss_mib,
            server_cpu: server_cpu_secs(&config) - before,
            added: added_bytes(&stdout),
        });
    };
    let total = dir_bytes(&data);
    let d = data.to_str().unwrap();
    record("first backup", "stowage", total, stowage(&["backup", d]));
    record(
        "first backup",
        "restic",
        total,
        restic(&["backup", "--json", "--host", "volsync", "."], &data),
    );
    record(
        "unchanged re-backup",
        "stowage",
        total,
        stowage(&["backup", d]),
    );
    record(
        "unchanged re-backup",
        "restic",
        total,
        restic(&["backup", "--json", "--host", "volsync", "."], &data),
    );
    for (i, fraction) in changes.iter().enumerate() {
        let changed = trees::change_spread(&data, *fraction, 4242 + i as u64);
        let step: &'static str =
            Box::leak(format!("backup after {}% change", fraction * 100.0).into_boxed_str());
        record(step, "stowage", changed, stowage(&["backup", d]));
        record(
            step,
            "restic",
            changed,
            restic(&["backup", "--json", "--host", "volsync", "."], &data),
        );
    }
    // Each restore goes to an empty volume, as after a cluster rebuild; one at a time,
    // freed after its size is compared (the disk holds the data set and two
    // repositories: a 10 GiB run needs about 40 GiB).
    let vol_s = Volume::fresh(work.path(), "restore-stowage", total);
    let out_s = vol_s.dir.join("data");
    record(
        "full restore",
        "stowage",
        total,
        stowage(&["restore", out_s.to_str().unwrap()]),
    );
    let same_s = dir_bytes(&out_s) == total;
    let restore_target = vol_s.kind;
    drop(vol_s);
    let vol_r = Volume::fresh(work.path(), "restore-restic", total);
    let out_r = vol_r.dir.join("data");
    std::fs::create_dir_all(&out_r).unwrap();
    record(
        "full restore",
        "restic",
        total,
        restic(
            &["restore", "latest", "--host", "volsync", "-t", "."],
            &out_r,
        ),
    );
    let same = same_s && dir_bytes(&out_r) == total;
    drop(vol_r);

    println!();
    println!(
        "data: {:.2} GiB in {files} files; S3: Garage on loopback; restic {}; {} cores",
        total as f64 / (1u64 << 30) as f64,
        String::from_utf8_lossy(
            &Command::new("restic")
                .arg("version")
                .output()
                .unwrap()
                .stdout
        )
        .split_whitespace()
        .nth(1)
        .unwrap_or("?"),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "| step | tool | seconds | MiB/s | CPU s | peak MiB | S3 server CPU s | new data MiB |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for s in &steps {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {} |",
            s.step,
            s.tool,
            s.secs,
            s.bytes as f64 / (1 << 20) as f64 / s.secs,
            s.cpu,
            s.rss_mib,
            s.server_cpu,
            s.added
                .map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64))
                .unwrap_or_default()
        );
    }
    println!();
    println!("| step | throughput stowage/restic | peak memory stowage/restic |");
    println!("| --- | ---: | ---: |");
    for pair in steps.chunks(2) {
        let (a, b) = (&pair[0], &pair[1]);
        println!(
            "| {} | {:.2}x | {:.2}x |",
            a.step,
            b.secs / a.secs,
            a.rss_mib / b.rss_mib
        );
    }
    println!("\nrestored sizes equal the source: {same}; restores into {restore_target}");
}

/// A restore target. Where the bench runs as root with `mkfs.ext4`, a new ext4
/// filesystem on a loop device (a new volume, as after a rebuild): restoring into a
/// directory of a disk from which 100,000 files were just deleted measures ext4's inode
/// allocator instead (it scans for recently deleted inodes: up to half of the kernel
/// time of a restore here).
struct Volume {
    dir: PathBuf,
    image: Option<PathBuf>,
    kind: &'static str,
}

impl Volume {
    fn fresh(work: &Path, name: &str, data_bytes: u64) -> Self {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let image = work.join(format!("{name}.img"));
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        let size = format!("{}", data_bytes + data_bytes / 2 + (1 << 30));
        let mounted = std::fs::File::create(&image).is_ok()
            && ok(Command::new("truncate").args(["-s", &size]).arg(&image))
            && ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
            // discard: what is deleted in it is freed on the disk below (the image
            // may itself be on a loop filesystem, see scripts/bench.sh).
            && ok(Command::new("mount").args(["-o", "loop,discard"]).arg(&image).arg(&dir));
        if mounted {
            return Self {
                dir,
                image: Some(image),
                kind: "a new ext4 filesystem each (loop device)",
            };
        }
        let _ = std::fs::remove_file(&image);
        eprintln!(
            "note: cannot mount a new ext4 filesystem (needs root, mkfs.ext4 and loop \
             devices): restoring into a directory of the work disk"
        );
        Self {
            dir,
            image: None,
            kind: "a directory of the work disk",
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Some(image) = &self.image {
            let _ = Command::new("umount").arg(&self.dir).status();
            let _ = std::fs::remove_file(image);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How the mover's peak memory grows with the number of files (small files, no large
/// data) and with the amount of data (large files, few files), for backup and
/// restore, against a local repository so that only the mover is measured.
fn memory_growth(mover: &Path) {
    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str], repo: &Path| {
        let mut c = Command::new(mover);
        c.env_clear()
            .env("RESTIC_REPOSITORY", repo)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("STOWAGE_LOG", "warn")
            .args(args);
        timed(c, &format!("mover {}", args[0]))
    };
    println!("| data set | files | chunks (about) | backup peak MiB | restore peak MiB |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    // (small files, GiB of large files): one dimension at a time.
    let sets = [
        (25_000usize, 0u64),
        (50_000, 0),
        (100_000, 0),
        (200_000, 0),
        (0, 1),
        (0, 2),
        (0, 4),
    ];
    for (small, gib) in sets {
        let dir = work.path().join("data");
        let (name, files, chunks) = if small > 0 {
            trees::many_small(&dir, small, 1);
            (format!("{small} small files"), small as u64, small as u64)
        } else {
            let mut left = gib << 30;
            let mut i = 0;
            while left > 0 {
                let len = left.min(256 << 20);
                trees::write_random(&dir.join(format!("f{i}.bin")), len as usize, 900 + i);
                left -= len;
                i += 1;
            }
            // Chunks are 1.5 MiB on average (512 KiB to 8 MiB).
            (
                format!("{gib} GiB in large files"),
                i,
                (gib << 30) / (3 << 19),
            )
        };
        let repo = work.path().join("repo");
        let out = work.path().join("out");
        let (_, _, backup_mib, _) = run(&["backup", dir.to_str().unwrap()], &repo);
        let (_, _, restore_mib, _) = run(&["restore", out.to_str().unwrap()], &repo);
        println!("| {name} | {files} | {chunks} | {backup_mib:.0} | {restore_mib:.0} |");
        for d in [&repo, &out, &dir] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
