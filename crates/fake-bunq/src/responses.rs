//! bunq's wire shapes: the `{"Response":[…]}` envelopes of the three handshake calls and
//! of the partner's provision calls, the `{"Error":[…]}` body, and the timestamp format
//! (docs/bunq-api.md §2, §5, §6.1, §8.1).
//!
//! Typed structs rather than `serde_json::json!` because serde_json's map sorts keys;
//! structs keep bunq's field order, and the envelopes are arrays whose element order
//! the official SDK relies on (it deserialises by index).

pub use bunq_protocol::timestamp::format as bunq_timestamp;
use serde::Serialize;

/// `{"Response":[…]}`, with `Pagination` for a listing.
#[derive(Debug, Serialize)]
pub struct Envelope {
    #[serde(rename = "Response")]
    pub response: Vec<Item>,
    #[serde(rename = "Pagination", skip_serializing_if = "Option::is_none")]
    pub pagination: Option<Pagination>,
}

/// A listing's links to more pages: the fake's lists are always one page.
#[derive(Debug, Serialize)]
pub struct Pagination {
    pub future_url: Option<String>,
    pub newer_url: Option<String>,
    pub older_url: Option<String>,
}

/// One element of `Response`: an object with a single key naming its type.
#[derive(Debug, Serialize)]
pub enum Item {
    Id(IdObject),
    Token(TokenObject),
    ServerPublicKey(ServerPublicKeyObject),
    // Boxed: much larger than the other variants.
    UserApiKey(Box<UserApiKeyObject>),
    /// The partner's own session (its company API key).
    UserCompany(UserObject),
    NotificationFilterUrl(crate::filters::Filter),
    PartnerUserProvision(ProvisionObject),
}

#[derive(Debug, Serialize)]
pub struct IdObject {
    pub id: u64,
}

#[derive(Debug, Serialize)]
pub struct TokenObject {
    pub id: u64,
    pub created: String,
    pub updated: String,
    pub token: String,
}

#[derive(Debug, Serialize)]
pub struct ServerPublicKeyObject {
    pub server_public_key: String,
}

/// The session-server user object for a Partner-provisioned credential (docs/bunq-api.md §5).
#[derive(Debug, Serialize)]
pub struct UserApiKeyObject {
    pub id: u64,
    pub created: String,
    pub updated: String,
    pub requested_by_user: AnchoredUser,
    pub granted_by_user: AnchoredUser,
}

/// `UserApiKeyAnchoredUser`: exactly one of the user kinds, keyed by its type name.
#[derive(Debug, Serialize)]
pub enum AnchoredUser {
    UserCompany(UserObject),
    UserPerson(UserObject),
}

/// The subset of `UserPerson` / `UserCompany` fields the handshake needs. All of them
/// are attributes the official SDK's `UserPersonApiObject` / `UserCompanyApiObject`
/// declare, so it deserialises them without "unknown key" warnings.
#[derive(Debug, Serialize)]
pub struct UserObject {
    pub id: u64,
    pub created: String,
    pub updated: String,
    pub public_uuid: String,
    pub display_name: String,
    pub public_nick_name: String,
    pub session_timeout: u64,
}

/// `PartnerUserProvision` with the fields the token reset needs (docs/bunq-api.md §8.1);
/// `label_user` and `oauth_request` are left out.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisionObject {
    pub id: u64,
    pub created: String,
    pub updated: String,
    pub external_uuid: String,
    pub status: crate::state::ProvisionStatus,
    pub sub_status: &'static str,
    pub action_required: &'static str,
    pub products: Vec<&'static str>,
    pub credential: Option<ProvisionCredentialObject>,
}

/// A provision's credential: `token_value` is null once used or retired.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisionCredentialObject {
    pub id: u64,
    pub created: String,
    pub updated: String,
    pub status: crate::state::CredentialState,
    pub expiry_time: String,
    pub token_value: Option<String>,
    pub permitted_device: Option<serde_json::Value>,
}

/// `{"Error":[{"error_description":…,"error_description_translated":…}]}`.
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope {
    #[serde(rename = "Error")]
    pub error: Vec<ErrorItem>,
}

#[derive(Debug, Serialize)]
pub struct ErrorItem {
    pub error_description: String,
    pub error_description_translated: String,
}

/// Serialises an error body. Only `en_US` exists in the fake, so the translated text
/// equals the description (bunq falls back to `en_US` for unknown languages too).
pub fn error_body(description: &str) -> Vec<u8> {
    to_bytes(&ErrorEnvelope {
        error: vec![ErrorItem {
            error_description: description.to_owned(),
            error_description_translated: description.to_owned(),
        }],
    })
}

/// Serialises a success envelope.
pub fn envelope_body(items: Vec<Item>) -> Vec<u8> {
    to_bytes(&Envelope { response: items, pagination: None })
}

/// Serialises a one-page listing.
pub fn listing_body(items: Vec<Item>) -> Vec<u8> {
    let pagination = Pagination { future_url: None, newer_url: None, older_url: None };
    to_bytes(&Envelope { response: items, pagination: Some(pagination) })
}

fn to_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // These types hold only strings and integers; serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The body of the injected HTTP 500: a proxy-style HTML page, because bunq's 5xx
/// bodies are not always JSON (docs/bunq-api.md §6.1).
pub const HTML_500: &str = "<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n\
<body>\r\n<center><h1>500 Internal Server Error</h1></center>\r\n<hr><center>nginx</center>\r\n\
</body>\r\n</html>\r\n";

/// The body of the injected HTTP 503, again HTML as a load balancer would send it.
pub const HTML_503: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n\
<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n\
</body>\r\n</html>\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn timestamp_has_microseconds_and_is_utc() {
        let at = datetime!(2025-03-05 17:12:11.9181 +01:00);
        assert_eq!(bunq_timestamp(at), "2025-03-05 16:12:11.918100");
    }

    #[test]
    fn installation_envelope_keeps_element_and_field_order() {
        let body = envelope_body(vec![
            Item::Id(IdObject { id: 1 }),
            Item::Token(TokenObject { id: 1, created: "c".into(), updated: "u".into(), token: "t".into() }),
            Item::ServerPublicKey(ServerPublicKeyObject { server_public_key: "k".into() }),
        ]);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"Response":[{"Id":{"id":1}},{"Token":{"id":1,"created":"c","updated":"u","token":"t"}},{"ServerPublicKey":{"server_public_key":"k"}}]}"#
        );
    }

    #[test]
    fn user_api_key_nests_anchored_users_under_their_type_names() {
        let user = |id| UserObject {
            id,
            created: "c".into(),
            updated: "u".into(),
            public_uuid: "p".into(),
            display_name: "d".into(),
            public_nick_name: "n".into(),
            session_timeout: 604800,
        };
        let body = envelope_body(vec![Item::UserApiKey(Box::new(UserApiKeyObject {
            id: 9,
            created: "c".into(),
            updated: "u".into(),
            requested_by_user: AnchoredUser::UserCompany(user(1)),
            granted_by_user: AnchoredUser::UserPerson(user(2)),
        }))]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let key = &v["Response"][0]["UserApiKey"];
        assert_eq!(key["requested_by_user"]["UserCompany"]["session_timeout"], 604800);
        assert_eq!(key["granted_by_user"]["UserPerson"]["id"], 2);
    }

    #[test]
    fn error_body_has_bunq_shape() {
        assert_eq!(
            std::str::from_utf8(&error_body("Nope.")).unwrap(),
            r#"{"Error":[{"error_description":"Nope.","error_description_translated":"Nope."}]}"#
        );
    }
}
