//! bunq's wire shapes for the handshake and the provision calls (docs/bunq-api.md §2, §5,
//! §6.1, §8.1).
//!
//! Success bodies are `{"Response":[{"<Type>":{…}}, …]}`; elements are found by type
//! name rather than position, which reads bunq's documented order and survives reordering.

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
pub(crate) struct ResponseBody {
    #[serde(rename = "Response")]
    pub response: Vec<Map<String, Value>>,
}

impl ResponseBody {
    /// The object wrapped under `name`, deserialised.
    pub fn element<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, String> {
        let value = self
            .response
            .iter()
            .find_map(|element| element.get(name))
            .ok_or_else(|| format!("no `{name}` element in Response"))?;
        T::deserialize(value).map_err(|e| format!("`{name}`: {}", crate::redact::json_error(&e, FIELDS)))
    }

    /// Every element wrapped under `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.response.iter().filter_map(move |element| element.get(name))
    }

    /// The first element wrapped under any of `names`, with the name found.
    pub fn first_of(&self, names: &[&'static str]) -> Option<(&'static str, &Value)> {
        self.response.iter().find_map(|element| names.iter().find_map(|n| element.get(*n).map(|v| (*n, v))))
    }
}

/// Field names of the shapes below: a `missing field` error may name these, never a
/// name taken from the body.
pub(crate) const FIELDS: &[&str] = &[
    "id",
    "token",
    "server_public_key",
    "session_timeout",
    "requested_by_user",
    "granted_by_user",
    "Error",
    "status",
    "sub_status",
    "credential",
    "token_value",
    "expiry_time",
];

#[derive(Deserialize)]
pub(crate) struct IdObject {
    pub id: u64,
}

#[derive(Deserialize)]
pub(crate) struct TokenObject {
    pub token: String,
}

#[derive(Deserialize)]
pub(crate) struct ServerPublicKeyObject {
    pub server_public_key: String,
}

/// `UserPerson`, `UserCompany`, `UserPaymentServiceProvider`: the fields the worker needs.
#[derive(Deserialize)]
pub(crate) struct UserObject {
    pub id: u64,
    pub session_timeout: Option<u64>,
}

/// `UserApiKey`: what a Partner credential's session answers with.
#[derive(Deserialize)]
pub(crate) struct UserApiKeyObject {
    pub id: u64,
    pub requested_by_user: Option<Map<String, Value>>,
    pub granted_by_user: Option<Map<String, Value>>,
}

pub(crate) const USER_TYPES: [&str; 3] = ["UserPerson", "UserCompany", "UserPaymentServiceProvider"];

/// The single user wrapped in an anchored-user map (`{"UserCompany":{…}}`).
pub(crate) fn anchored_user(map: &Map<String, Value>) -> Option<UserObject> {
    USER_TYPES.iter().find_map(|name| map.get(*name)).and_then(|value| UserObject::deserialize(value).ok())
}

/// `{"Error":[{"error_description": …}]}`; unknown members are ignored.
#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(rename = "Error")]
    pub error: Vec<ErrorItem>,
}

#[derive(Deserialize)]
pub(crate) struct ErrorItem {
    pub error_description: Option<String>,
}

/// bunq's error text, or a short note when the body is not bunq's error shape (5xx pages).
pub(crate) fn error_description(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => {
            let text =
                parsed.error.iter().filter_map(|e| e.error_description.as_deref()).collect::<Vec<_>>().join("; ");
            if text.is_empty() {
                return "(empty error description)".to_owned();
            }
            // bunq's own words, but verified only when signed: masked and capped as any detail.
            crate::redact::detail(&text)
        }
        Err(_) => format!("non-JSON body of {} bytes", body.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_description_joins_bunq_errors_and_ignores_extra_members() {
        let body = br#"{"Error":[{"error_description":"The request signature is invalid.","error_description_translated":"x","error_additional_parameter":[{"url_together_post":"u"}]}]}"#;
        assert_eq!(error_description(body), "The request signature is invalid.");
    }

    #[test]
    fn error_description_does_not_echo_html_pages() {
        let page = b"<html>502 Bad Gateway</html>";
        assert_eq!(error_description(page), format!("non-JSON body of {} bytes", page.len()));
    }

    #[test]
    fn anchored_user_reads_any_user_type() {
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"UserCompany":{"id":1360,"session_timeout":604800,"display_name":"x"}}"#).unwrap();
        let user = anchored_user(&map).unwrap();
        assert_eq!((user.id, user.session_timeout), (1360, Some(604800)));
    }
}
