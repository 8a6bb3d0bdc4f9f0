//! Duration settings, one syntax for all: `500ms`, `30s`, `5m`, `1h`, `14d` (a bare
//! number is seconds). The older names ending in `_MS` or `_SECS`, which took a bare
//! number in that unit, are still read for this release with a warning at start-up
//! (`deprecated_setting`); setting an old and a new name together is refused.

use super::{invalid, ConfigError, WorkerArgs};
use std::time::Duration;

/// The unit an old name's bare number was in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Unit {
    Millis,
    Secs,
}

/// One duration setting as given.
pub(super) struct Setting<'a> {
    pub(super) name: &'static str,
    pub(super) value: Option<&'a str>,
    pub(super) default: &'static str,
    pub(super) old_name: &'static str,
    pub(super) old_value: Option<u64>,
    pub(super) unit: Unit,
}

/// A deprecated name that was used, and what to set instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{old} is deprecated and read for this release only: set {new}={value} instead")]
pub struct Deprecated {
    pub old: &'static str,
    pub new: &'static str,
    pub value: String,
}

/// The duration, the name it was read from (for errors about its value), and the
/// deprecation to warn of when the old name was used.
pub(super) fn resolve(setting: Setting<'_>) -> Result<(Duration, &'static str, Option<Deprecated>), ConfigError> {
    match (setting.value, setting.old_value) {
        (Some(_), Some(_)) => Err(invalid(
            setting.name,
            format!("is set together with {}, its deprecated older name: keep only {}", setting.old_name, setting.name),
        )),
        (None, Some(number)) => {
            let (duration, value) = match setting.unit {
                Unit::Millis => (Duration::from_millis(number), format!("{number}ms")),
                Unit::Secs => (Duration::from_secs(number), format!("{number}s")),
            };
            let deprecated = Deprecated { old: setting.old_name, new: setting.name, value };
            Ok((duration, setting.old_name, Some(deprecated)))
        }
        (value, None) => {
            let text = value.unwrap_or(setting.default);
            let duration = crate::duration::parse(text).map_err(|problem| invalid(setting.name, problem))?;
            Ok((duration, setting.name, None))
        }
    }
}

/// [`resolve`], warning of a deprecated name in the log.
pub(super) fn duration(setting: Setting<'_>) -> Result<(Duration, &'static str), ConfigError> {
    let (duration, name, deprecated) = resolve(setting)?;
    if let Some(deprecated) = deprecated {
        tracing::warn!(event = "deprecated_setting", setting = deprecated.old, "{deprecated}");
    }
    Ok((duration, name))
}

/// Each duration of [`WorkerArgs`] with the name it was read from.
pub(crate) struct Durations {
    pub(crate) bunq_request_timeout: (Duration, &'static str),
    pub(crate) session_ttl_margin: (Duration, &'static str),
    pub(crate) retry_budget: (Duration, &'static str),
    pub(crate) retry_initial_interval: (Duration, &'static str),
    pub(crate) retry_max_interval: (Duration, &'static str),
    pub(crate) retry_queue_delay: (Duration, &'static str),
    pub(crate) retry_queue_max_delay: (Duration, &'static str),
    pub(crate) lock_ttl: (Duration, &'static str),
}

impl WorkerArgs {
    pub(super) fn durations(&self) -> Result<Durations, ConfigError> {
        let setting = |name, value: &Option<String>, default, old_name, old_value: Option<u64>, unit| {
            duration(Setting { name, value: value.as_deref(), default, old_name, old_value, unit })
        };
        let ms = Unit::Millis;
        Ok(Durations {
            bunq_request_timeout: setting(
                "BUNQ_REQUEST_TIMEOUT",
                &self.bunq_request_timeout,
                "10s",
                "BUNQ_REQUEST_TIMEOUT_MS",
                self.bunq_request_timeout_ms,
                ms,
            )?,
            session_ttl_margin: setting(
                "SESSION_TTL_MARGIN",
                &self.session_ttl_margin,
                "60s",
                "SESSION_TTL_MARGIN_SECS",
                self.session_ttl_margin_secs,
                Unit::Secs,
            )?,
            retry_budget: setting(
                "RETRY_BUDGET",
                &self.retry_budget,
                "60s",
                "RETRY_BUDGET_MS",
                self.retry_budget_ms,
                ms,
            )?,
            retry_initial_interval: setting(
                "RETRY_INITIAL_INTERVAL",
                &self.retry_initial_interval,
                "200ms",
                "RETRY_INITIAL_INTERVAL_MS",
                self.retry_initial_interval_ms,
                ms,
            )?,
            retry_max_interval: setting(
                "RETRY_MAX_INTERVAL",
                &self.retry_max_interval,
                "10s",
                "RETRY_MAX_INTERVAL_MS",
                self.retry_max_interval_ms,
                ms,
            )?,
            retry_queue_delay: setting(
                "RETRY_QUEUE_DELAY",
                &self.retry_queue_delay,
                "5s",
                "RETRY_QUEUE_DELAY_MS",
                self.retry_queue_delay_ms,
                ms,
            )?,
            retry_queue_max_delay: setting(
                "RETRY_QUEUE_MAX_DELAY",
                &self.retry_queue_max_delay,
                "5m",
                "RETRY_QUEUE_MAX_DELAY_MS",
                self.retry_queue_max_delay_ms,
                ms,
            )?,
            lock_ttl: setting("LOCK_TTL", &self.lock_ttl, "30s", "LOCK_TTL_MS", self.lock_ttl_ms, ms)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(value: Option<&str>, old_value: Option<u64>, unit: Unit) -> Setting<'_> {
        Setting { name: "LOCK_TTL", value, default: "30s", old_name: "LOCK_TTL_MS", old_value, unit }
    }

    #[test]
    fn the_new_name_takes_every_unit_and_the_default_applies_without_either() {
        let cases = [(Some("1500ms"), 1_500), (Some("2m"), 120_000), (Some("45"), 45_000), (None, 30_000)];
        for (value, ms) in cases {
            let (duration, name, deprecated) = resolve(setting(value, None, Unit::Millis)).unwrap();
            assert_eq!((duration, name, deprecated), (Duration::from_millis(ms), "LOCK_TTL", None), "{value:?}");
        }
    }

    #[test]
    fn the_old_name_is_read_in_its_unit_and_named_for_its_errors_with_a_warning() {
        let (duration, name, deprecated) = resolve(setting(None, Some(999), Unit::Millis)).unwrap();
        assert_eq!((duration, name), (Duration::from_millis(999), "LOCK_TTL_MS"));
        let deprecated = deprecated.expect("a warning");
        assert_eq!(
            deprecated.to_string(),
            "LOCK_TTL_MS is deprecated and read for this release only: set LOCK_TTL=999ms instead"
        );
        let (duration, ..) = resolve(setting(None, Some(60), Unit::Secs)).unwrap();
        assert_eq!(duration, Duration::from_secs(60));
    }

    #[test]
    fn both_names_or_a_bad_value_stop_start_up_naming_the_new_one() {
        for (value, old) in [(Some("30s"), Some(30_000)), (Some("30 seconds"), None), (Some("-1s"), None)] {
            let e = resolve(setting(value, old, Unit::Millis)).unwrap_err();
            assert_eq!(e.variable, "LOCK_TTL", "{e}");
        }
    }
}
