//! Logging set-up: JSON lines in a cluster (stderr is not a terminal), human-readable
//! on a terminal; the filter comes from `STOWAGE_LOG`. rustic_core logs through the
//! `log` crate; those records are bridged into the same output.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::env::LogFormat;

/// Installs the global subscriber. Safe to call twice (the second call is a no-op).
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("STOWAGE_LOG={filter:?} is not a valid filter ({e}); using info");
        EnvFilter::new("info")
    });
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
