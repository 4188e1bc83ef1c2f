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
fn timed(cmd: Command, what: &str) -> (f64, f64, f64) {
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
    (secs, cpu, rss)
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
    let size = args
        .iter()
        .position(|a| a == "--size")
        .map(|i| parse_size(&args[i + 1]))
        .unwrap_or(2 << 30);
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
    let mut record = |step: &'static str, tool: &'static str, bytes: u64, cmd: Command| {
        eprintln!("{step}: {tool}...");
        let (secs, cpu, rss_mib) = timed(cmd, &format!("{step} with {tool}"));
        steps.push(Step {
            step,
            tool,
            secs,
            bytes,
            cpu,
            rss_mib,
        });
    };
    let total = dir_bytes(&data);
    let d = data.to_str().unwrap();
    record("first backup", "stowage", total, stowage(&["backup", d]));
    record(
        "first backup",
        "restic",
        total,
        restic(&["backup", "--host", "volsync", "."], &data),
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
        restic(&["backup", "--host", "volsync", "."], &data),
    );
    let changed = trees::change_fraction(&data, 0.05, 4242);
    record(
        "backup after 5% change",
        "stowage",
        changed,
        stowage(&["backup", d]),
    );
    record(
        "backup after 5% change",
        "restic",
        changed,
        restic(&["backup", "--host", "volsync", "."], &data),
    );
    let out_s = work.path().join("restore-stowage");
    let out_r = work.path().join("restore-restic");
    std::fs::create_dir_all(&out_r).unwrap();
    record(
        "full restore",
        "stowage",
        total,
        stowage(&["restore", out_s.to_str().unwrap()]),
    );
    record(
        "full restore",
        "restic",
        total,
        restic(
            &["restore", "latest", "--host", "volsync", "-t", "."],
            &out_r,
        ),
    );
    let same = dir_bytes(&out_s) == total && dir_bytes(&out_r) == total;

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
    println!("| step | tool | seconds | MiB/s | CPU s | peak MiB |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for s in &steps {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            s.step,
            s.tool,
            s.secs,
            s.bytes as f64 / (1 << 20) as f64 / s.secs,
            s.cpu,
            s.rss_mib
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
    println!("\nrestored sizes equal the source: {same}");
}
