//! bunq's timestamp format: UTC, `YYYY-MM-DD hh:mm:ss.ffffff` (docs/bunq-api.md §5), as
//! in `created`, `updated` and a credential's `expiry_time`.

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// Reading accepts a missing fraction: bunq's examples are not uniform.
const INPUT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]");
/// Writing always gives six digits, as bunq does.
const OUTPUT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]");

/// Parses bunq time as UTC.
pub fn parse(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    PrimitiveDateTime::parse(text, INPUT).map(PrimitiveDateTime::assume_utc)
}

/// Formats a moment in bunq time (converted to UTC).
pub fn format(at: OffsetDateTime) -> String {
    // A valid OffsetDateTime always formats with a fixed, valid description.
    at.to_offset(time::UtcOffset::UTC).format(OUTPUT).unwrap_or_default()
}

/// `#[serde(with = "bunq_protocol::timestamp::option")]` for an optional bunq time field.
pub mod option {
    use serde::{Deserialize, Deserializer};
    use time::OffsetDateTime;

    /// Deserialises `null` or a bunq time string; the error names the field's format, not
    /// the text, so a hostile value is never echoed.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse(&text)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("not bunq time (YYYY-MM-DD hh:mm:ss.ffffff): {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_six_digits() {
        let at = parse("2025-08-13 15:53:11.594918").unwrap();
        assert_eq!(format(at), "2025-08-13 15:53:11.594918");
        assert_eq!(format(parse("2025-03-05 16:12:11.9181").unwrap()), "2025-03-05 16:12:11.918100");
        assert!(parse("2025-08-13 15:53:11").is_ok());
        assert!(parse("2025-08-13T15:53:11Z").is_err());
    }
}
