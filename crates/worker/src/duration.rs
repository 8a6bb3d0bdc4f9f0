//! Human durations in settings: `500ms`, `30s`, `2m`, `1h`, `14d`; a bare number means seconds.

use std::time::Duration;

pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let problem = || format!("`{text}` is not a duration like 500ms, 30s, 2m, 1h or 14d");
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else if let Some(n) = text.strip_suffix('d') {
        (n, 86_400_000)
    } else {
        (text, 1_000)
    };
    let number: u64 = number.trim().parse().map_err(|_| problem())?;
    number.checked_mul(unit_ms).map(Duration::from_millis).ok_or_else(problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse(" 2m ").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3_600));
        assert_eq!(parse("14d").unwrap(), Duration::from_secs(14 * 86_400));
        for bad in ["", "s", "1w", "h", "-1s", "1.5s", "99999999999999999999m"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
