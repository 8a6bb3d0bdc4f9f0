//! `POST /v1/installation`: registers the client's public key; unsigned, no token yet.

use super::parse_object;
use super::reply::Reply;
use crate::errors::BunqError;
use crate::responses::{self as wire, Item};
use crate::{lock, App};
use bunq_protocol::signing::PublicKey;
use serde_json::Value;

pub(super) fn installation_effect(app: &App, body: &[u8]) -> Result<Reply, BunqError> {
    let json = parse_object(body)?;
    let pem = json
        .get("client_public_key")
        .and_then(Value::as_str)
        .ok_or_else(|| BunqError::InvalidPublicKey("field \"client_public_key\" is missing".to_owned()))?;
    if !pem.contains("-----BEGIN PUBLIC KEY-----") {
        // The SDK rewrites PKCS#1 headers to SPKI; bunq documents SPKI only.
        return Err(BunqError::InvalidPublicKey("expected a PEM \"PUBLIC KEY\" (SubjectPublicKeyInfo)".to_owned()));
    }
    let key = PublicKey::from_pem(pem)
        .and_then(PublicKey::require_client_size)
        .map_err(|e| BunqError::InvalidPublicKey(e.to_string()))?;
    let created = lock(&app.state).install(key);
    let at = wire::bunq_timestamp(created.created);
    Ok(Reply::ok(wire::envelope_body(vec![
        Item::Id(wire::IdObject { id: created.id }),
        Item::Token(wire::TokenObject { id: created.id, created: at.clone(), updated: at, token: created.token }),
        Item::ServerPublicKey(wire::ServerPublicKeyObject {
            server_public_key: app.server_key.public_key_pem().to_owned(),
        }),
    ])))
}
