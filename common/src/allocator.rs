//! Keeps the memory a program returns from staying in glibc's heap.
//!
//! glibc raises its mmap threshold to the size of each large buffer freed (up to
//! 32 MiB), after which pack-sized buffers come from per-thread arenas and stay there:
//! a 1 GiB restore with a 96 MiB data budget peaked at 300 MiB (8 MiB budget: 330
//! MiB). With a fixed threshold large buffers are mapped and unmapped, and the peak
//! follows the live data (measured on 8 x 128 MiB files: 210 MiB at 4 MiB, 158 MiB
//! at 256 KiB but 50% slower; a 2 GiB backup to S3 of 104,054 files: 170-276 MiB at
//! 4 MiB, 143-144 MiB at 2 MiB in 21.7 s instead of 24 s, 1 MiB as small but 10-20%
//! slower; restores the same at 2 and 4 MiB). A restore runs 20 reader threads, and glibc gives each
//! of them an arena of its own (up to 8 per core), each keeping what its thread freed:
//! two arenas took a restore of 50,000 small files from 202-253 MiB to 161-186 MiB.
//! Both settings can only be made before the process starts (or through `mallopt`,
//! which is `unsafe`), so the program re-executes itself once with the variables set.
//! Other libcs ignore them.

use std::os::unix::process::CommandExt;

/// The variables and their values.
pub const SETTINGS: [(&str, &str); 2] = [
    // 2 MiB: pack-sized buffers and large chunks (up to 8 MiB) are mapped on their
    // own; chunks of up to 2 MiB (most of them: 1 MiB on average) stay in the heap,
    // where reuse is cheap (256 KiB cost a third of the speed).
    ("MALLOC_MMAP_THRESHOLD_", "2097152"),
    ("MALLOC_ARENA_MAX", "2"),
];

/// Call first thing in `main`. Returns only if the variables are already set (a value
/// given by the caller wins) or the re-execution failed (then the program runs with
/// glibc's defaults, and says so).
pub fn tune() {
    let missing: Vec<_> = SETTINGS
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    for (k, v) in &missing {
        cmd.env(k, v);
    }
    let err = cmd.exec();
    eprintln!(
        "note: could not re-execute with the allocator settings {SETTINGS:?} ({err}); memory \
         use may be higher"
    );
}
