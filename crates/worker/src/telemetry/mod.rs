//! Logging: `tracing` with JSON in production, pretty for people; `RUST_LOG` filters.
//! Traces, when asked for: [`trace`].
//!
//! Some of lapin's targets log what must never be written: whole frames at trace
//! (message bodies with the credential's `token_value`; `connection.start-ok` with the
//! AMQP password) and returned messages at warn (bodies). Those are capped by a filter
//! of its own, checked after `RUST_LOG`'s, so no directive (however specific) lifts it.

pub mod trace;

use tracing::Level;
use tracing_subscriber::filter::{FilterExt as _, Targets};
use tracing_subscriber::layer::{Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The most verbose level allowed per target prefix, most specific first.
const CAPS: [(&str, Level); 3] =
    [("lapin::returned_messages", Level::ERROR), ("lapin", Level::INFO), ("amq_protocol", Level::INFO)];

/// The caps as a filter: whatever `RUST_LOG` says, nothing above them is written.
pub(crate) fn caps() -> Targets {
    CAPS.iter()
        .fold(Targets::new().with_default(Level::TRACE), |caps, (target, level)| caps.with_target(*target, *level))
}

/// What becomes a span or span event when traces are on: `info` and above, whatever
/// `RUST_LOG` says (quieter logs must not thin out traces), under the same caps.
fn span_filter() -> Targets {
    CAPS.iter()
        .fold(Targets::new().with_default(Level::INFO), |caps, (target, level)| caps.with_target(*target, *level))
}

/// `RUST_LOG` (or `default` without it), then the caps above. Production and the tests
/// use this one filter. The caps are a `Targets` filter rather than a closure: it decides
/// per callsite, once, and keeps the level hint, so a capped trace callsite in lapin's hot
/// path costs nothing at run time instead of a filter call per event.
pub fn filter(default: &str) -> impl Filter<Registry> {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    env.and(caps())
}

/// Colour codes only for a person at a terminal: never into a file, a pipe or a log
/// collector, and not with `NO_COLOR` set (no-color.org).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

type BoxedLayer = Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>;

/// Installs the global subscriber, with the OpenTelemetry layer when the environment asks
/// for traces ([`trace`]). Logs go to stderr, so stdout stays for command output. A
/// tracing setting the worker cannot use is returned after logging is installed, so it
/// is reported like any other setting.
pub fn init(format: LogFormat) -> Result<Option<trace::Tracing>, trace::TraceSettingError> {
    use std::io::IsTerminal as _;
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs: BoxedLayer = match format {
        // The current span's fields carry `trace_id` and `span_id` when traces are on.
        LogFormat::Json => {
            layer.json().with_current_span(true).with_span_list(false).with_filter(filter("info")).boxed()
        }
        LogFormat::Pretty => layer.compact().with_filter(filter("info")).boxed(),
    };
    let tracing = match trace::wanted(|name| std::env::var(name).ok()) {
        Ok(true) => trace::Tracing::start().map(Some),
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    };
    let mut layers = vec![logs];
    if let Ok(Some(tracing)) = &tracing {
        // The same caps as the logs: lapin's frames never become span events either.
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracing.tracer())
            .with_location(false)
            .with_threads(false)
            .with_filter(span_filter())
            .boxed();
        layers.push(spans);
    }
    tracing_subscriber::registry().with(layers).init();
    tracing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or a pipe gets no escape codes");
        assert!(!colour(true, Some("1".into())));
        assert!(colour(true, Some("".into())), "an empty NO_COLOR is unset");
    }

    #[test]
    fn spans_keep_the_caps_and_ignore_a_quieter_rust_log() {
        let spans = span_filter();
        assert!(spans.would_enable("bunq_session_worker::amqp::consume", &Level::INFO));
        assert!(!spans.would_enable("bunq_session_worker::amqp::consume", &Level::DEBUG));
        assert!(!spans.would_enable("lapin::frames", &Level::DEBUG));
        assert!(!spans.would_enable("lapin::returned_messages", &Level::WARN));
        assert!(!spans.would_enable("amq_protocol::frame", &Level::DEBUG));
    }

    #[test]
    fn lapin_frames_and_returned_messages_stay_off_at_any_level_asked() {
        let caps = caps();
        for (target, level, expected) in [
            ("lapin::frames", Level::TRACE, false),
            ("lapin::channel", Level::DEBUG, false),
            ("lapin", Level::INFO, true),
            ("lapin::returned_messages", Level::WARN, false),
            ("lapin::returned_messages", Level::ERROR, true),
            ("amq_protocol::frame", Level::TRACE, false),
            ("amq_protocol_tcp", Level::TRACE, false),
            ("bunq_session_worker::handler", Level::TRACE, true),
        ] {
            assert_eq!(caps.would_enable(target, &level), expected, "{target} at {level}");
        }
    }
}
