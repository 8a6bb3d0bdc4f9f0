//! Text that leaves a process (logs, AMQP headers, metrics, CLI output) never carries a
//! value from its input: an input may hold a credential anywhere, in any shape.
//!
//! [`json_error`] describes a serde_json error by its kind, position and a vetted phrase,
//! never its message (serde quotes the offending value: a double-encoded webhook put the
//! whole body, `token_value` included, into the error). [`detail`] is the one gate every
//! human-readable detail passes: credential-like runs are masked and the length capped.

/// Longest detail, in bytes, after redaction: a header or log line stays small whatever
/// the input looked like.
pub const DETAIL_LIMIT: usize = 256;

/// What replaces a credential-like run of characters.
pub const MASK: &str = "[redacted]";

/// Runs of token characters at least this long look like a credential (bunq's tokens
/// and keys are 64 hex characters, sandbox keys longer; the schema's own longest name,
/// `UserPaymentServiceProvider`, is 26): masked wherever they appear.
pub const CREDENTIAL_LIKE: usize = 32;

/// Masks credential-like runs and caps the result at [`DETAIL_LIMIT`] bytes.
pub fn detail(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(DETAIL_LIMIT + 8));
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= CREDENTIAL_LIKE {
            out.push_str(MASK);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=') {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            // Control characters (a header or a log line must stay one line) become spaces.
            out.push(if c.is_control() { ' ' } else { c });
        }
        if out.len() > DETAIL_LIMIT + CREDENTIAL_LIKE * 4 {
            break;
        }
    }
    flush(&mut run, &mut out);
    cap(out)
}

fn cap(mut text: String) -> String {
    if text.len() <= DETAIL_LIMIT {
        return text;
    }
    let cut = (0..=DETAIL_LIMIT - '…'.len_utf8()).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    text.truncate(cut);
    text.push('…');
    text
}

/// Whether `text` is free of credential-like runs: what every error and detail must be,
/// checked by the tests and the fuzz targets.
pub fn is_clean(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=')))
        .all(|run| run.len() < CREDENTIAL_LIKE)
}

/// Phrases of serde and serde_json messages that carry no input value; everything after
/// them (the quoted value, an unknown field's name) is dropped.
const SAFE_PHRASES: [&str; 14] = [
    "invalid type",
    "invalid value",
    "invalid length",
    "unknown variant",
    "unknown field",
    "duplicate field",
    "trailing characters",
    "trailing comma",
    "EOF while parsing",
    "expected value",
    "expected",
    "recursion limit exceeded",
    "control character",
    "key must be a string",
];

/// A serde_json error as `kind at line L column C: phrase`, without the value. A
/// `missing field` names the field only when it is one of `known_fields` (the schema's
/// own names, never the input's).
pub fn json_error(err: &serde_json::Error, known_fields: &[&str]) -> String {
    let kind = match err.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    let message = err.to_string();
    let phrase = if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        if known_fields.contains(&name) {
            format!("missing field `{name}`")
        } else {
            "missing field".to_owned()
        }
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        // "invalid type: string \"…\", expected u64": keep the two type words only.
        let found = rest.split([' ', ',']).next().unwrap_or_default();
        let expected = rest.rsplit(", expected ").next().filter(|_| rest.contains(", expected "));
        match expected {
            Some(expected) if is_type_words(expected) => format!("invalid type: {found}, expected {expected}"),
            _ if is_type_words(found) => format!("invalid type: {found}"),
            _ => "invalid type".to_owned(),
        }
    } else {
        SAFE_PHRASES.iter().find(|p| message.starts_with(*p)).map_or_else(|| "rejected".to_owned(), |p| (*p).to_owned())
    };
    if err.line() == 0 {
        return format!("{kind}: {phrase}");
    }
    format!("{kind} at line {} column {}: {phrase}", err.line(), err.column())
}

/// serde's own type descriptions ("u64", "a string", "struct Provision", "a sequence"):
/// short words of the schema, never input.
fn is_type_words(text: &str) -> bool {
    text.len() <= 48 && text.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a0239a79f981bd6d0123456789abcdef0123456789abcdef";

    #[test]
    fn details_mask_credential_like_runs_and_stay_short() {
        let text = format!("bunq answered 400: token {SECRET} is wrong\n");
        let out = detail(&text);
        assert!(!out.contains(SECRET) && out.contains(MASK), "{out}");
        assert_eq!(out, format!("bunq answered 400: token {MASK} is wrong "));
        let long = "word ".repeat(1000);
        assert!(detail(&long).len() <= DETAIL_LIMIT);
        let secret_run = "x".repeat(100_000);
        assert_eq!(detail(&secret_run), MASK);
        assert!(is_clean(&out) && !is_clean(&text));
    }

    #[test]
    fn json_errors_keep_position_and_kind_but_no_value() {
        let inner = format!(r#"{{"PartnerUserProvision":{{"credential":{{"token_value":"{SECRET}"}}}}}}"#);
        let double_encoded = serde_json::to_string(&inner).unwrap();
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Shape {
            id: u64,
        }
        let err = serde_json::from_str::<Shape>(&double_encoded).unwrap_err();
        let text = json_error(&err, &["id"]);
        assert!(!text.contains("token_value") && !text.contains(SECRET), "{text}");
        assert!(text.starts_with("wrong shape at line 1 column"), "{text}");
        assert!(text.contains("invalid type: string, expected struct Shape"), "{text}");

        let err = serde_json::from_str::<Shape>(r#"{"other":1}"#).unwrap_err();
        assert!(json_error(&err, &["id"]).ends_with("missing field `id`"));
        assert!(json_error(&err, &[]).ends_with("missing field"));

        let err = serde_json::from_str::<Shape>(&format!(r#"{{"id":"{SECRET}"}}"#)).unwrap_err();
        let text = json_error(&err, &["id"]);
        assert!(!text.contains(SECRET) && text.contains("invalid type: string, expected u64"), "{text}");
    }
}
