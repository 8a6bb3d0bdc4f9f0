//! Step 8: an answer signed with the server key (or not, under a signature fault), with
//! bunq's response headers; the call recorded and logged.

use super::{HEADER_REQUEST_ID, HEADER_RESPONSE_ID, HEADER_SERVER_SIGNATURE};
use crate::calls::RecordedCall;
use crate::conn::Conn;
use crate::errors::BunqError;
use crate::faults::Endpoint;
use crate::responses as wire;
use crate::{lock, App};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use std::time::Instant;
use uuid::Uuid;

/// An answer before signing and headers.
pub(super) struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    pub(super) fn ok(body: Vec<u8>) -> Self {
        Self { status: StatusCode::OK, content_type: "application/json", body }
    }

    pub(super) fn error(error: &BunqError) -> Self {
        Self { status: error.status(), content_type: "application/json", body: wire::error_body(&error.to_string()) }
    }

    pub(super) fn html(status: StatusCode, html: &str) -> Self {
        Self { status, content_type: "text/html", body: html.as_bytes().to_vec() }
    }
}

/// How the answer is signed.
#[derive(Clone, Copy)]
pub(super) enum Signature {
    Valid,
    Missing,
    /// A well-formed signature over different bytes: it fails verification.
    Corrupt,
}

/// The record of a call as it arrives; the pipeline fills in the rest.
pub(super) fn new_record(endpoint: Endpoint, conn: &Conn, method: &Method, headers: &HeaderMap) -> RecordedCall {
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

/// Step 8: signs, adds bunq's headers, records and logs the call.
pub(super) fn finish(
    app: &App,
    reply: Reply,
    signature: Signature,
    headers: &HeaderMap,
    mut record: RecordedCall,
) -> Response {
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
