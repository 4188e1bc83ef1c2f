//! Logging set-up: JSON lines in a cluster (stderr is not a terminal), human-readable
//! on a terminal; the filter comes from `STOWAGE_LOG`. rustic_core logs through the
//! `log` crate; those records are bridged into the same output.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::Error;
use crate::env::LogFormat;

/// Parses a `STOWAGE_LOG` filter; the error names the variable and the value.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, Error> {
    EnvFilter::try_new(filter).map_err(|e| {
        Error::Config(format!(
            "STOWAGE_LOG={filter:?} is not a valid log filter ({e}): give a level (error, \
                 warn, info, debug, trace) or directives such as info,rustic_core=warn"
        ))
    })
}

/// Installs the global subscriber. Safe to call twice (the second call is a no-op).
/// The filter was checked with the configuration ([`parse_filter`]); should it fail
/// here all the same, `info` is used.
pub fn init(filter: &str, format: LogFormat) {
    let filter = parse_filter(filter).unwrap_or_else(|e| {
        eprintln!("{e}; using info");
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
