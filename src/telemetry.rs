//! Logging: `tracing` with JSON in production, pretty for people; `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Targets that would print message bodies.
const QUIET: [&str; 3] = ["lapin::channels=info", "lapin::frames=info", "lapin::returned_messages=error"];

/// Installs the global subscriber. Logs go to stderr, so stdout stays for command output.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // lapin logs whole frames at trace and returned messages at warn, bodies included;
    // a body carries the credential's `token_value`, so those stay off whatever RUST_LOG says.
    let filter = QUIET
        .iter()
        .fold(filter, |filter, directive| filter.add_directive(directive.parse().expect("a valid directive")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}
