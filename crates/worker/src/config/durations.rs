//! Duration settings, one syntax for all: `500ms`, `30s`, `5m`, `1h`, `14d` (a bare
//! number is seconds). The older names ending in `_MS` or `_SECS`, which took a bare
//! number in that unit, are still read for this release with a warning at start-up
//! (`deprecated_setting`); setting an old and a new name together is refused.

use super::{invalid, ConfigError};
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
