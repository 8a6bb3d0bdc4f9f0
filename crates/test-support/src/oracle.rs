//! What the worker should have kept of an input, computed from the input alone: the
//! tests compare the worker's outputs with these, never with the worker's own functions
//! (docs/contracts.md §3.5 is the rule written down).

use serde_json::Value;

/// The credential of a provision body as the tests write them: `credential.token_value`
/// of the bare object or of bunq's webhook body.
pub fn credential_of(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let provision = match value.get("NotificationUrl").and_then(|n| n.get("object")) {
        Some(object) => object.get("PartnerUserProvision")?,
        None => value.get("PartnerUserProvision")?,
    };
    provision.get("credential")?.get("token_value")?.as_str().map(str::to_owned)
}

/// A body in a form two equal JSON documents share (object keys sorted); anything that is
/// not JSON stays as it is.
pub fn canonical(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => serde_json::to_vec(&value).expect("JSON"),
        Err(_) => body.to_vec(),
    }
}

/// The dead letter of `body` without an encryption key, in [`canonical`] form. `decodes`:
/// the test wrote it as a valid provision event (a malformed one is dead-lettered
/// `malformed`, and the tests' malformed bodies hold nothing credential-like, so they are
/// kept as they came). A decoding body with a credential keeps everything but the
/// credential, each string equal to it set to `null`; one without is kept as it came.
pub fn dead_letter_without_key(body: &[u8], decodes: bool) -> Vec<u8> {
    let Some(token) = credential_of(body).filter(|_| decodes) else { return canonical(body) };
    let mut value: Value = serde_json::from_slice(body).expect("a body with a credential is JSON");
    null_every(&mut value, &token);
    serde_json::to_vec(&value).expect("JSON")
}

fn null_every(value: &mut Value, token: &str) {
    match value {
        Value::String(s) if s == token => *value = Value::Null,
        Value::Array(items) => items.iter_mut().for_each(|v| null_every(v, token)),
        Value::Object(map) => map.values_mut().for_each(|v| null_every(v, token)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_the_credential_wherever_it_stands_and_keeps_the_rest() {
        let body = br#"{"PartnerUserProvision":{"id":7,"note":"tok","credential":{"token_value":"tok"}}}"#;
        assert_eq!(credential_of(body).as_deref(), Some("tok"));
        let kept: Value = serde_json::from_slice(&dead_letter_without_key(body, true)).unwrap();
        assert_eq!(
            kept,
            serde_json::json!({"PartnerUserProvision":{"id":7,"note":null,"credential":{"token_value":null}}})
        );
        assert_eq!(dead_letter_without_key(b"garbage 1", false), b"garbage 1");
        let malformed = br#"{"PartnerUserProvision":{"credential":{"token_value":"x","expiry_time":"yesterday"}}}"#;
        assert_eq!(dead_letter_without_key(malformed, false), canonical(malformed));
    }
}
