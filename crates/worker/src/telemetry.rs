//! Logging: `tracing` with JSON in production, pretty for people; `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Targets that would print message bodies.
const QUIET: [&str; 3] = ["lapin::channels=info", "lapin::frames=info", "lapin::returned_messages=error"];

/// `RUST_LOG` (or `default` without it), with lapin's body-carrying targets held off.
/// Production and the tests use this one filter.
pub fn env_filter(default: &str) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // lapin logs whole frames at trace and returned messages at warn, bodies included;
    // a body carries the credential's `token_value`, so those stay off whatever RUST_LOG says.
    QUIET.iter().fold(filter, |filter, directive| filter.add_directive(directive.parse().expect("a valid directive")))
}

/// Installs the global subscriber. Logs go to stderr, so stdout stays for command output.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter("info")).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}
