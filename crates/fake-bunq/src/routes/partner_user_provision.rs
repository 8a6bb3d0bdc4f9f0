//! `PUT`/`GET /v1/partner-user-provision/{id}`: the partner reads a provision and asks
//! for a new token (docs/bunq-api.md §8.1, §12), on its own session only.

use super::auth::authenticate_session;
use super::reply::Reply;
use super::{parse_object, Call, Caller};
use crate::calls::RecordedCall;
use crate::errors::BunqError;
use crate::faults::Endpoint;
use crate::responses::{self as wire, Item};
use crate::state::ProvisionStatus;
use crate::{lock, App};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

pub(super) async fn provision_call(caller: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    caller.dispatch_item(Endpoint::PartnerUserProvision, &id, body).await
}

/// A user's session (a provisioned user's `UserApiKey`) gets 403 like any call its
/// token does not grant (UNCERTAIN, docs/bunq-api.md §10). The PUT must be signed; the
/// GET's signature over the empty body is checked when sent, as on the other reads.
pub(super) fn provision_effect(
    app: &App,
    call: Call,
    headers: &HeaderMap,
    body: &[u8],
    record: &mut RecordedCall,
) -> Result<Reply, BunqError> {
    let session = authenticate_session(app, headers, body, !call.read, record)?;
    if !session.partner {
        return Err(BunqError::InsufficientAuthentication);
    }
    let id = call.item.unwrap_or(0);
    if call.read {
        let provision = lock(&app.state).provision(id).ok_or(BunqError::ProvisionNotFound)?;
        return Ok(Reply::ok(wire::envelope_body(vec![Item::PartnerUserProvision(provision)])));
    }
    let json = parse_object(body)?;
    match json.get("status").and_then(Value::as_str) {
        Some("TOKEN_RESET_REQUESTED") => lock(&app.state).request_token_reset(id, app.config.token_reset_delay)?,
        // bunq's documented way to close a provision.
        Some("CANCELLED") => lock(&app.state).end_provision(id, ProvisionStatus::Closed)?,
        _ => {
            return Err(BunqError::InvalidBody(
                "The field \"status\" must be TOKEN_RESET_REQUESTED or CANCELLED.".to_owned(),
            ))
        }
    }
    Ok(Reply::ok(wire::envelope_body(vec![Item::Id(wire::IdObject { id })])))
}
