//! The `/v1` endpoints and the pipeline every call goes through:
//!
//! 1. fault decision (+ latency); faults that replace the answer stop here;
//! 2. `User-Agent` present;
//! 3. rate limit;
//! 4. installation token known (device-server, session-server), or a live session token
//!    (`DELETE /session/{id}`, a user's filters, the partner's provision calls);
//! 5. `X-Bunq-Client-Signature` present and valid over the exact body bytes;
//! 6. `X-Bunq-Client-Request-Id` not reused on this installation;
//! 7. body validation and the endpoint's effect;
//! 8. answer signed with the server key over the exact body bytes (unless a signature
//!    fault says otherwise), with bunq's response headers; call recorded.
//!
//! `pipeline` runs steps 1–7 and dispatches to the endpoints' effects, `auth` checks
//! tokens, signatures and request ids (4–6), `reply` signs and records the answer (8);
//! one module per endpoint holds its effect: `installation`, `device_server`,
//! `session_server`, `session` (`DELETE`), `notification_filter` and
//! `partner_user_provision` (the partner's token reset).

mod auth;
mod device_server;
mod installation;
mod notification_filter;
mod partner_user_provision;
mod pipeline;
mod reply;
mod session;
mod session_server;

use super::conn::Conn;
use super::errors::BunqError;
use super::faults::Endpoint;
use super::{admin, App};
use axum::body::Bytes;
use axum::extract::rejection::ExtensionRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::routing::{delete, post, put};
use axum::Router;
use pipeline::handle;
use reply::{finish, new_record, Reply, Signature};
use serde_json::Value;
use std::sync::Arc;

pub const HEADER_REQUEST_ID: &str = "x-bunq-client-request-id";
pub const HEADER_RESPONSE_ID: &str = "x-bunq-client-response-id";
pub const HEADER_AUTHENTICATION: &str = "x-bunq-client-authentication";
pub const HEADER_CLIENT_SIGNATURE: &str = "x-bunq-client-signature";
pub const HEADER_SERVER_SIGNATURE: &str = "x-bunq-server-signature";

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/{endpoint}", post(bunq_endpoint))
        .route("/v1/session/{id}", delete(session::end_session))
        .route(
            "/v1/partner-user-provision/{id}",
            put(partner_user_provision::provision_call).get(partner_user_provision::provision_call),
        )
        .route(
            "/v1/user/{user_id}/notification-filter-url",
            post(notification_filter::notification_filters).get(notification_filter::notification_filters),
        )
        .nest("/_fake", admin::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// `POST /v1/installation`, `/v1/device-server`, `/v1/session-server`; other paths are
/// bunq's 404.
async fn bunq_endpoint(caller: Caller, Path(path): Path<String>, body: Bytes) -> Response {
    let endpoint = match path.as_str() {
        "installation" => Some(Endpoint::Installation),
        "device-server" => Some(Endpoint::DeviceServer),
        "session-server" => Some(Endpoint::SessionServer),
        _ => None,
    };
    caller.dispatch(endpoint.map(|endpoint| Call { endpoint, item: None, read: false }), body).await
}

/// An endpoint, the id in its path (`DELETE /session/{id}`, `/user/{userId}/…`), and
/// whether it is a read (GET).
#[derive(Clone, Copy)]
struct Call {
    endpoint: Endpoint,
    item: Option<u64>,
    read: bool,
}

/// What every answer needs from a request besides its body, extracted once for all
/// handlers and fallbacks.
struct Caller {
    app: Arc<App>,
    conn: Conn,
    method: Method,
    headers: HeaderMap,
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ExtensionRejection;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let ConnectInfo(conn) = ConnectInfo::<Conn>::from_request_parts(parts, app).await?;
        Ok(Self { app: Arc::clone(app), conn, method: parts.method.clone(), headers: parts.headers.clone() })
    }
}

impl Caller {
    /// A call on the item a path names (`/…/{id}`, read when a GET); an id that is not a
    /// number names no call.
    async fn dispatch_item(self, endpoint: Endpoint, item: &str, body: Bytes) -> Response {
        let read = self.method == Method::GET;
        let call = item.parse().ok().map(|id| Call { endpoint, item: Some(id), read });
        self.dispatch(call, body).await
    }

    /// Runs `call` through the pipeline; `None` (a path naming no call) is bunq's 404.
    async fn dispatch(self, call: Option<Call>, body: Bytes) -> Response {
        match call {
            Some(call) => handle(self.app, call, self.conn, self.method, self.headers, body).await,
            None => self.answer_error(BunqError::NotFound),
        }
    }

    /// Unknown routes and methods: answered like bunq (signed Error body), recorded as
    /// endpoint `other`, never faulted or rate limited.
    fn answer_error(self, error: BunqError) -> Response {
        let record = new_record(Endpoint::Other, &self.conn, &self.method, &self.headers);
        finish(&self.app, Reply::error(&error), Signature::Valid, &self.headers, record)
    }
}

async fn not_found(caller: Caller) -> Response {
    caller.answer_error(BunqError::NotFound)
}

async fn method_not_allowed(caller: Caller) -> Response {
    caller.answer_error(BunqError::MethodNotAllowed)
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, BunqError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BunqError::InvalidBody("The request body must be a JSON object.".to_owned())),
        Err(_) => Err(BunqError::InvalidBody("The request body is not valid JSON.".to_owned())),
    }
}

fn required_string<'a>(json: &'a serde_json::Map<String, Value>, field: &str) -> Result<&'a str, BunqError> {
    match json.get(field).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(BunqError::InvalidBody(format!("The field \"{field}\" is required and must be a non-empty string."))),
    }
}
