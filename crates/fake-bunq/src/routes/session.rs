//! `DELETE /v1/session/{id}`: ends a session, authenticated by its own session token.

use super::auth::authenticate_session;
use super::reply::Reply;
use super::{header_str, Caller, HEADER_AUTHENTICATION};
use crate::calls::RecordedCall;
use crate::errors::BunqError;
use crate::faults::Endpoint;
use crate::responses as wire;
use crate::{lock, App};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;

/// `DELETE /v1/session/{id}`: authenticated by the session token, not the installation's.
pub(super) async fn end_session(caller: Caller, Path(id): Path<String>, body: Bytes) -> Response {
    caller.dispatch_item(Endpoint::Session, &id, body).await
}

/// `DELETE /session/{id}` with the session's own token.
pub(super) fn end_session_effect(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    id: u64,
    record: &mut RecordedCall,
) -> Result<Reply, BunqError> {
    authenticate_session(app, headers, body, false, record)?;
    let token = header_str(headers, HEADER_AUTHENTICATION).unwrap_or_default();
    lock(&app.state).end_session(token, id)?;
    Ok(Reply::ok(wire::envelope_body(Vec::new())))
}
