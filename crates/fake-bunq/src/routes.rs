//! The `/v1` endpoints and the pipeline every call goes through:
//!
//! 1. fault decision (+ latency); faults that replace the answer stop here;
//! 2. `User-Agent` present;
//! 3. rate limit;
//! 4. installation token known (device-server, session-server), or a live session token
//!    (`DELETE /session/{id}`);
//! 5. `X-Bunq-Client-Signature` present and valid over the exact body bytes;
//! 6. `X-Bunq-Client-Request-Id` not reused on this installation;
//! 7. body validation and the endpoint's effect;
//! 8. answer signed with the server key over the exact body bytes (unless a signature
//!    fault says otherwise), with bunq's response headers; call recorded.

use super::calls::RecordedCall;
use super::conn::Conn;
use super::errors::BunqError;
use super::faults::{Endpoint, FaultAction};
use super::ratelimit::{Limit, RateLimitScope};
use super::responses::{self as wire, AnchoredUser, Item, UserObject};
use super::secret::SecretDigest;
use super::state::NewSession;
use super::{admin, lock, App};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{delete, post};
use axum::Router;
use bunq_protocol::signing::PublicKey;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const HEADER_REQUEST_ID: &str = "x-bunq-client-request-id";
pub const HEADER_RESPONSE_ID: &str = "x-bunq-client-response-id";
pub const HEADER_AUTHENTICATION: &str = "x-bunq-client-authentication";
pub const HEADER_CLIENT_SIGNATURE: &str = "x-bunq-client-signature";
pub const HEADER_SERVER_SIGNATURE: &str = "x-bunq-server-signature";

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/{endpoint}", post(bunq_endpoint))
        .route("/v1/session/{id}", delete(end_session))
        .route("/v1/user/{user_id}/notification-filter-url", post(notification_filters).get(notification_filters))
        .nest("/_fake", admin::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// `POST /v1/installation`, `/v1/device-server`, `/v1/session-server`; other paths are
/// bunq's 404.
async fn bunq_endpoint(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let endpoint = match path.as_str() {
        "installation" => Endpoint::Installation,
        "device-server" => Endpoint::DeviceServer,
        "session-server" => Endpoint::SessionServer,
        _ => return answer_error(app, conn, method, headers, BunqError::NotFound),
    };
    handle(app, Call { endpoint, item: None, read: false }, conn, method, headers, body).await
}

/// An endpoint, the id in its path (`DELETE /session/{id}`, `/user/{userId}/…`), and
/// whether it is a read (GET).
#[derive(Clone, Copy)]
struct Call {
    endpoint: Endpoint,
    item: Option<u64>,
    read: bool,
}

/// `DELETE /v1/session/{id}`: authenticated by the session token, not the installation's.
async fn end_session(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return answer_error(app, conn, method, headers, BunqError::NotFound);
    };
    handle(app, Call { endpoint: Endpoint::Session, item: Some(id), read: false }, conn, method, headers, body).await
}

/// `POST`/`GET /v1/user/{userId}/notification-filter-url`, with the user's session token.
async fn notification_filters(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(user_id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(user_id) = user_id.parse::<u64>() else {
        return answer_error(app, conn, method, headers, BunqError::NotFound);
    };
    let call = Call { endpoint: Endpoint::NotificationFilterUrl, item: Some(user_id), read: method == Method::GET };
    handle(app, call, conn, method, headers, body).await
}

async fn not_found(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    answer_error(app, conn, method, headers, BunqError::NotFound)
}

async fn method_not_allowed(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    answer_error(app, conn, method, headers, BunqError::MethodNotAllowed)
}

/// Unknown routes and methods: answered like bunq (signed Error body), recorded as
/// endpoint `other`, never faulted or rate limited.
fn answer_error(app: Arc<App>, conn: Conn, method: Method, headers: HeaderMap, error: BunqError) -> Response {
    let record = new_record(Endpoint::Other, &conn, &method, &headers);
    finish(&app, Reply::error(&error), Signature::Valid, &headers, record)
}

/// An answer before signing and headers.
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn ok(body: Vec<u8>) -> Self {
        Self { status: StatusCode::OK, content_type: "application/json", body }
    }

    fn error(error: &BunqError) -> Self {
        Self { status: error.status(), content_type: "application/json", body: wire::error_body(&error.to_string()) }
    }

    fn html(status: StatusCode, html: &str) -> Self {
        Self { status, content_type: "text/html", body: html.as_bytes().to_vec() }
    }
}

/// How the answer is signed.
#[derive(Clone, Copy)]
enum Signature {
    Valid,
    Missing,
    /// A well-formed signature over different bytes: it fails verification.
    Corrupt,
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn new_record(endpoint: Endpoint, conn: &Conn, method: &Method, headers: &HeaderMap) -> RecordedCall {
    RecordedCall {
        seq: 0,
        endpoint,
        method: method.to_string(),
        request_id: headers.get(HEADER_REQUEST_ID).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        signature_valid: None,
        status: None,
        installation_id: None,
        secret_hash: None,
        session_id: None,
        fault: None,
        peer: conn.peer.to_string(),
        received: Instant::now(),
        handled_us: 0,
    }
}

async fn handle(app: Arc<App>, call: Call, conn: Conn, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    let endpoint = call.endpoint;
    let mut record = new_record(endpoint, &conn, &method, &headers);
    let (latency_ms, fault) = {
        let mut faults = lock(&app.faults);
        (faults.latency_ms(), faults.decide(endpoint))
    };
    record.fault = fault;
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }

    let signature = match fault {
        None => Signature::Valid,
        Some(FaultAction::MissingSignature) => Signature::Missing,
        Some(FaultAction::CorruptSignature) => Signature::Corrupt,
        Some(FaultAction::Hang) => {
            tracing::info!(endpoint = endpoint.as_str(), "fault: hanging until shutdown");
            lock(&app.calls).push(record);
            app.shutdown.cancelled().await;
            conn.kill.kill();
            return Response::new(Body::empty());
        }
        Some(FaultAction::DropConnection) => {
            tracing::info!(endpoint = endpoint.as_str(), "fault: dropping connection");
            lock(&app.calls).push(record);
            // The response below is never written: the stream refuses all I/O now.
            conn.kill.kill();
            return Response::new(Body::empty());
        }
        // The remaining faults replace the answer; nothing is processed.
        Some(FaultAction::Http500Html) => {
            let reply = Reply::html(StatusCode::INTERNAL_SERVER_ERROR, wire::HTML_500);
            return finish(&app, reply, Signature::Valid, &headers, record);
        }
        Some(FaultAction::Http503) => {
            let reply = Reply::html(StatusCode::SERVICE_UNAVAILABLE, wire::HTML_503);
            return finish(&app, reply, Signature::Valid, &headers, record);
        }
        Some(FaultAction::Maintenance491) => {
            let reply = Reply::error(&BunqError::Maintenance);
            return finish(&app, reply, Signature::Valid, &headers, record);
        }
        Some(FaultAction::RateLimited429) => {
            let reply = Reply::error(&rate_limited(limit_for(&app, endpoint)));
            return finish(&app, reply, Signature::Valid, &headers, record);
        }
    };

    let reply = match process(&app, call, &conn, &headers, &body, &mut record) {
        Ok(reply) => reply,
        Err(error) => Reply::error(&error),
    };
    finish(&app, reply, signature, &headers, record)
}

fn limit_for(app: &App, endpoint: Endpoint) -> Limit {
    let (calls, window) = match endpoint {
        Endpoint::SessionServer => app.config.session_server_limit,
        _ => app.config.other_post_limit,
    };
    Limit { calls, window }
}

fn rate_limited(limit: Limit) -> BunqError {
    BunqError::RateLimited { calls: limit.calls, per_secs: limit.window.as_secs() }
}

/// Steps 2–7 of the pipeline.
fn process(
    app: &App,
    call: Call,
    conn: &Conn,
    headers: &HeaderMap,
    body: &[u8],
    record: &mut RecordedCall,
) -> Result<Reply, BunqError> {
    let endpoint = call.endpoint;
    if header_str(headers, header::USER_AGENT.as_str()).is_none_or(|ua| ua.trim().is_empty()) {
        return Err(BunqError::MissingUserAgent);
    }
    check_rate_limit(app, endpoint, conn, headers, body)?;
    match endpoint {
        Endpoint::Installation => installation_effect(app, body),
        Endpoint::DeviceServer | Endpoint::SessionServer => {
            // Checked on these two only: the docs say installation must not be signed.
            let token = authenticate(app, headers, body, record)?;
            let json = parse_object(body)?;
            let secret = required_string(&json, "secret")?;
            let digest = SecretDigest::of(secret);
            record.secret_hash = Some(digest.short());
            if endpoint == Endpoint::DeviceServer {
                device_server_effect(app, token, &json, digest)
            } else {
                session_server_effect(app, token, digest)
            }
        }
        Endpoint::Session => end_session_effect(app, headers, body, call.item.unwrap_or(0), record),
        Endpoint::NotificationFilterUrl => filters_effect(app, call, headers, body, record),
        Endpoint::Other => Err(BunqError::NotFound),
    }
}

/// `DELETE /session/{id}` with the session's own token.
fn end_session_effect(
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

/// `/user/{userId}/notification-filter-url`: as that user's session only. A POST
/// replaces every filter (bunq's replace-all) and answers the new list; a GET lists.
fn filters_effect(
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

/// A call authenticated by a session token: the session must be live (not past its
/// timeout, not ended). A signature is checked when sent, and required when `signed`
/// (calls with a body; bunq leaves signing a body-less call optional: the Python SDK
/// signs the empty body, others do not). Claims the request id on the installation.
fn authenticate_session(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    signed: bool,
    record: &mut RecordedCall,
) -> Result<crate::state::SessionAuth, BunqError> {
    let token = header_str(headers, HEADER_AUTHENTICATION);
    let session = lock(&app.state).authenticate_session(token)?;
    record.installation_id = Some(session.installation.installation_id);
    record.session_id = Some(session.session_id);
    match header_str(headers, HEADER_CLIENT_SIGNATURE) {
        Some(signature) => {
            let valid = session.installation.client_key.verify(body, signature).is_ok();
            record.signature_valid = Some(valid);
            if !valid {
                return Err(BunqError::SignatureInvalid);
            }
        }
        None if signed => {
            record.signature_valid = Some(false);
            return Err(BunqError::SignatureRequired);
        }
        None => {}
    }
    if let Some(request_id) = &record.request_id {
        lock(&app.state).claim_request_id(&session.installation_token, request_id)?;
    }
    Ok(session)
}

/// Who shares a rate-limit budget (see [`RateLimitScope`]).
fn check_rate_limit(
    app: &App,
    endpoint: Endpoint,
    conn: &Conn,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), BunqError> {
    let ip = || conn.peer.ip().to_string();
    let client = match app.config.rate_limit_scope {
        RateLimitScope::Off => return Ok(()),
        RateLimitScope::Ip => ip(),
        RateLimitScope::Device => match endpoint {
            // No token exists yet: the key pair being installed is the device.
            Endpoint::Installation => parse_object(body)
                .ok()
                .and_then(|v| {
                    v.get("client_public_key")
                        .and_then(Value::as_str)
                        .map(|k| format!("key:{}", SecretDigest::of(k).short()))
                })
                .unwrap_or_else(ip),
            _ => header_str(headers, HEADER_AUTHENTICATION)
                .map(|t| format!("token:{}", SecretDigest::of(t).short()))
                .unwrap_or_else(ip),
        },
    };
    let limit = limit_for(app, endpoint);
    if lock(&app.limiter).check(endpoint.as_str(), &client, limit, Instant::now()) {
        Ok(())
    } else {
        Err(rate_limited(limit))
    }
}

/// Steps 4–6: installation token, request signature, request id. Returns the token.
fn authenticate<'h>(
    app: &App,
    headers: &'h HeaderMap,
    body: &[u8],
    record: &mut RecordedCall,
) -> Result<&'h str, BunqError> {
    let token = header_str(headers, HEADER_AUTHENTICATION);
    let auth = lock(&app.state).authenticate(token)?;
    // `authenticate` succeeded, so the header was present.
    let token = token.ok_or(BunqError::InsufficientAuthentication)?;
    record.installation_id = Some(auth.installation_id);

    let Some(signature) = header_str(headers, HEADER_CLIENT_SIGNATURE) else {
        record.signature_valid = Some(false);
        return Err(BunqError::SignatureRequired);
    };
    let valid = auth.client_key.verify(body, signature).is_ok();
    record.signature_valid = Some(valid);
    if !valid {
        return Err(BunqError::SignatureInvalid);
    }

    if let Some(request_id) = &record.request_id {
        lock(&app.state).claim_request_id(token, request_id)?;
    }
    Ok(token)
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

fn installation_effect(app: &App, body: &[u8]) -> Result<Reply, BunqError> {
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

fn device_server_effect(
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

fn session_server_effect(app: &App, token: &str, secret: SecretDigest) -> Result<Reply, BunqError> {
    let session = lock(&app.state).open_session(token, secret, app.config.allow_credential_reuse)?;
    Ok(Reply::ok(session_body(app, &session)))
}

fn session_body(app: &App, session: &NewSession) -> Vec<u8> {
    let config = &app.config;
    let created = wire::bunq_timestamp(session.created);
    let users_created = wire::bunq_timestamp(session.users.created);
    let partner = UserObject {
        id: config.partner_company_id,
        created: users_created.clone(),
        updated: users_created.clone(),
        public_uuid: Uuid::new_v5(&Uuid::NAMESPACE_OID, config.partner_display_name.as_bytes()).to_string(),
        display_name: config.partner_display_name.clone(),
        public_nick_name: config.partner_display_name.clone(),
        session_timeout: config.session_timeout_secs,
    };
    let name = format!("Fake User {}", session.users.user_person_id);
    let person = UserObject {
        id: session.users.user_person_id,
        created: users_created.clone(),
        updated: users_created.clone(),
        public_uuid: session.users.user_person_uuid.to_string(),
        display_name: name.clone(),
        public_nick_name: name,
        session_timeout: config.session_timeout_secs,
    };
    wire::envelope_body(vec![
        Item::Id(wire::IdObject { id: session.id }),
        Item::Token(wire::TokenObject {
            id: session.id,
            created: created.clone(),
            updated: created,
            token: session.token.clone(),
        }),
        Item::UserApiKey(Box::new(wire::UserApiKeyObject {
            id: session.users.user_api_key_id,
            created: users_created.clone(),
            updated: users_created,
            requested_by_user: AnchoredUser::UserCompany(partner),
            granted_by_user: AnchoredUser::UserPerson(person),
        })),
    ])
}

/// Step 8: signs, adds bunq's headers, records and logs the call.
fn finish(app: &App, reply: Reply, signature: Signature, headers: &HeaderMap, mut record: RecordedCall) -> Response {
    let signature = match signature {
        Signature::Valid => app.server_key.sign(&reply.body).ok(),
        Signature::Missing => None,
        Signature::Corrupt => {
            let mut other = reply.body.clone();
            other.extend_from_slice(b"corrupted");
            app.server_key.sign(&other).ok()
        }
    };
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = reply.status;
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if let Some(request_id) = headers.get(HEADER_REQUEST_ID) {
        out.insert(HeaderName::from_static(HEADER_REQUEST_ID), request_id.clone());
    }
    if let Ok(id) = HeaderValue::from_str(&Uuid::new_v4().to_string()) {
        out.insert(HeaderName::from_static(HEADER_RESPONSE_ID), id);
    }
    if let Some(sig) = signature.and_then(|s| HeaderValue::from_str(&s).ok()) {
        out.insert(HeaderName::from_static(HEADER_SERVER_SIGNATURE), sig);
    }

    record.status = Some(reply.status.as_u16());
    record.handled_us = record.received.elapsed().as_micros() as u64;
    tracing::info!(
        endpoint = record.endpoint.as_str(),
        status = reply.status.as_u16(),
        installation_id = record.installation_id,
        request_id = record.request_id.as_deref(),
        fault = ?record.fault,
        "answered"
    );
    lock(&app.calls).push(record);
    response
}
