//! `POST /v1/device-server`: registers a secret as a device of the installation.

use super::reply::Reply;
use super::required_string;
use crate::errors::BunqError;
use crate::responses::{self as wire, Item};
use crate::secret::SecretDigest;
use crate::{lock, App};
use serde_json::Value;

pub(super) fn device_server_effect(
    app: &App,
    token: &str,
    json: &serde_json::Map<String, Value>,
    secret: SecretDigest,
) -> Result<Reply, BunqError> {
    required_string(json, "description")?;
    // Optional; the official SDK sends `null` when no IPs are given.
    match json.get("permitted_ips") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ips)) if ips.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(BunqError::InvalidBody("The field \"permitted_ips\" must be an array of strings.".to_owned()))
        }
    }
    let id = lock(&app.state).register_device(token, secret)?;
    Ok(Reply::ok(wire::envelope_body(vec![Item::Id(wire::IdObject { id })])))
}
