//! Keeps the memory a program returns from staying in glibc's heap.
//!
//! glibc raises its mmap threshold to the size of each large buffer freed (up to
//! 32 MiB), after which pack-sized buffers come from per-thread arenas and stay there:
//! a 1 GiB restore with a 96 MiB data budget peaked at 300 MiB (8 MiB budget: 330
//! MiB). With a fixed threshold large buffers are mapped and unmapped, and the peak
//! follows the live data (measured on 8 x 128 MiB files: 210 MiB at 4 MiB, 158 MiB
//! at 256 KiB but 50% slower). The threshold can only be set before
//! the process starts (or through `mallopt`, which is `unsafe`), so the program
//! re-executes itself once with the variable set. Other libcs ignore the variable.

use std::os::unix::process::CommandExt;

pub const VARIABLE: &str = "MALLOC_MMAP_THRESHOLD_";
/// 4 MiB: pack-sized buffers are mapped on their own; chunk-sized ones (1 MiB on
/// average) stay in the heap, where reuse is cheap (256 KiB cost a third of the speed).
pub const THRESHOLD: &str = "4194304";

/// Call first thing in `main`. Returns only if the variable is already set or the
/// re-execution failed (then the program runs with glibc's defaults, and says so).
pub fn tune() {
    if std::env::var_os(VARIABLE).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VARIABLE, THRESHOLD)
        .exec();
    eprintln!(
        "note: could not re-execute with {VARIABLE}={THRESHOLD} ({err}); memory use may be higher"
    );
}
