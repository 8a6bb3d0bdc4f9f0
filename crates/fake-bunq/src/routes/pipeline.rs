//! Steps 1–7 for every bunq endpoint: faults and latency, `User-Agent`, rate limit, then
//! the endpoint's authentication and effect.

use super::auth::authenticate;
use super::reply::{finish, new_record, Reply, Signature};
use super::{device_server, installation, notification_filter, partner_user_provision, session, session_server};
use super::{header_str, parse_object, required_string, Call, HEADER_AUTHENTICATION};
use crate::calls::RecordedCall;
use crate::conn::Conn;
use crate::errors::BunqError;
use crate::faults::{Endpoint, FaultAction};
use crate::ratelimit::{Limit, RateLimitScope};
use crate::responses as wire;
use crate::secret::SecretDigest;
use crate::{lock, App};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn handle(
    app: Arc<App>,
    call: Call,
    conn: Conn,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let endpoint = call.endpoint;
    let mut record = new_record(endpoint, &conn, &method, &headers);
    let (latency_ms, fault) = {
        let mut faults = lock(&app.faults);
        (faults.latency_ms(), faults.decide(endpoint, call.read))
    };
    record.fault = fault;
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }

    let signature = match fault {
        None | Some(FaultAction::LoseAnswer) => Signature::Valid,
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
            let reply = Reply::error(&rate_limited(limit_for(&app, call)));
            return finish(&app, reply, Signature::Valid, &headers, record);
        }
    };

    let reply = match process(&app, call, &conn, &headers, &body, &mut record) {
        Ok(reply) => reply,
        Err(error) => Reply::error(&error),
    };
    if fault == Some(FaultAction::LoseAnswer) {
        tracing::info!(endpoint = endpoint.as_str(), "fault: answer lost after processing");
        lock(&app.calls).push(record);
        conn.kill.kill();
        return Response::new(Body::empty());
    }
    finish(&app, reply, signature, &headers, record)
}

/// bunq's classic limits: session-server 1/30 s, PUT 2/3 s and GET 3/3 s on the
/// provision calls; every other call shares the POST budget (5/3 s).
fn limit_for(app: &App, call: Call) -> Limit {
    let (calls, window) = match call.endpoint {
        Endpoint::SessionServer => app.config.session_server_limit,
        Endpoint::PartnerUserProvision if call.read => app.config.get_limit,
        Endpoint::PartnerUserProvision => app.config.put_limit,
        _ => app.config.other_post_limit,
    };
    Limit { calls, window }
}

/// The budget a call counts against: its endpoint, and for the provision calls also
/// its method (bunq limits PUT and GET separately).
fn budget_name(call: Call) -> &'static str {
    match call.endpoint {
        Endpoint::PartnerUserProvision if call.read => "partner-user-provision GET",
        Endpoint::PartnerUserProvision => "partner-user-provision PUT",
        endpoint => endpoint.as_str(),
    }
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
    check_rate_limit(app, call, conn, headers, body)?;
    match endpoint {
        Endpoint::Installation => installation::installation_effect(app, body),
        Endpoint::DeviceServer | Endpoint::SessionServer => {
            // Checked on these two only: the docs say installation must not be signed.
            let token = authenticate(app, headers, body, record)?;
            let json = parse_object(body)?;
            let secret = required_string(&json, "secret")?;
            let digest = SecretDigest::of(secret);
            record.secret_hash = Some(digest.short());
            if endpoint == Endpoint::DeviceServer {
                device_server::device_server_effect(app, token, &json, digest)
            } else {
                session_server::session_server_effect(app, token, digest)
            }
        }
        Endpoint::Session => session::end_session_effect(app, headers, body, call.item.unwrap_or(0), record),
        Endpoint::NotificationFilterUrl => notification_filter::filters_effect(app, call, headers, body, record),
        Endpoint::PartnerUserProvision => partner_user_provision::provision_effect(app, call, headers, body, record),
        Endpoint::Other => Err(BunqError::NotFound),
    }
}

/// Who shares a rate-limit budget (see [`RateLimitScope`]).
fn check_rate_limit(app: &App, call: Call, conn: &Conn, headers: &HeaderMap, body: &[u8]) -> Result<(), BunqError> {
    let ip = || conn.peer.ip().to_string();
    let client = match app.config.rate_limit_scope {
        RateLimitScope::Off => return Ok(()),
        RateLimitScope::Ip => ip(),
        RateLimitScope::Device => match call.endpoint {
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
    let limit = limit_for(app, call);
    if lock(&app.limiter).check(budget_name(call), &client, limit, Instant::now()) {
        Ok(())
    } else {
        Err(rate_limited(limit))
    }
}
