//! `POST`/`GET /v1/user/{userId}/notification-filter-url`: the user's URL notification
//! filters, as that user's session only.

use super::auth::authenticate_session;
use super::reply::Reply;
use super::{parse_object, Call, Caller};
use crate::calls::RecordedCall;
use crate::errors::BunqError;
use crate::faults::Endpoint;
use crate::responses::{self as wire, Item};
use crate::{lock, App};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::Response;

/// `POST`/`GET /v1/user/{userId}/notification-filter-url`, with the user's session token.
pub(super) async fn notification_filters(caller: Caller, Path(user_id): Path<String>, body: Bytes) -> Response {
    caller.dispatch_item(Endpoint::NotificationFilterUrl, &user_id, body).await
}

/// `/user/{userId}/notification-filter-url`: as that user's session only. A POST
/// replaces every filter (bunq's replace-all) and answers the new list; a GET lists.
pub(super) fn filters_effect(
    app: &App,
    call: Call,
    headers: &HeaderMap,
    body: &[u8],
    record: &mut RecordedCall,
) -> Result<Reply, BunqError> {
    let session = authenticate_session(app, headers, body, !call.read, record)?;
    let user_id = call.item.unwrap_or(0);
    if session.user_id != user_id {
        return Err(BunqError::InsufficientAuthentication);
    }
    let filters = if call.read {
        lock(&app.state).filters(user_id)
    } else {
        let requested = crate::filters::parse(&parse_object(body)?)?;
        lock(&app.state).set_filters(user_id, requested)
    };
    let items = filters.into_iter().map(Item::NotificationFilterUrl).collect();
    Ok(Reply::ok(if call.read { wire::listing_body(items) } else { wire::envelope_body(items) }))
}
