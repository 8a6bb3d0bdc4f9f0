//! Logging: `tracing` with JSON in production, pretty for people; `RUST_LOG` filters.
//!
//! Some of lapin's targets log what must never be written: whole frames at trace
//! (message bodies with the credential's `token_value`; `connection.start-ok` with the
//! AMQP password) and returned messages at warn (bodies). Those are capped by a filter
//! of its own, checked after `RUST_LOG`'s, so no directive (however specific) lifts it.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterExt as _};
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

/// Whether an event or span may be written at all, whatever `RUST_LOG` says.
pub fn allowed(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    CAPS.iter()
        .find(|(prefix, _)| target.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
        .is_none_or(|(_, cap)| metadata.level() <= cap)
}

/// `RUST_LOG` (or `default` without it), then the caps above. Production and the tests
/// use this one filter.
pub fn filter(default: &str) -> impl Filter<Registry> {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    env.and(filter_fn(allowed))
}

/// Installs the global subscriber. Logs go to stderr, so stdout stays for command output.
pub fn init(format: LogFormat) {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => {
            let layer = layer.json().with_current_span(true).with_span_list(false);
            tracing_subscriber::registry().with(layer.with_filter(filter("info"))).init();
        }
        LogFormat::Pretty => tracing_subscriber::registry().with(layer.compact().with_filter(filter("info"))).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::callsite::Identifier;
    use tracing::metadata::Kind;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
    static SITE: Site = Site;

    fn event(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "e",
            target,
            level,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], Identifier(&SITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn lapin_frames_and_returned_messages_stay_off_at_any_level_asked() {
        for (target, level, expected) in [
            ("lapin::frames", Level::TRACE, false),
            ("lapin::channel", Level::DEBUG, false),
            ("lapin", Level::INFO, true),
            ("lapin::returned_messages", Level::WARN, false),
            ("lapin::returned_messages", Level::ERROR, true),
            ("amq_protocol::frame", Level::TRACE, false),
            ("lapinx", Level::TRACE, true),
            ("bunq_session_worker::handler", Level::TRACE, true),
        ] {
            assert_eq!(allowed(&event(target, level)), expected, "{target} at {level}");
        }
    }
}
