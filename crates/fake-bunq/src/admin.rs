//! `/_fake/…`: the test-control API. Not part of bunq: never rate limited, faulted or
//! signed, and plain JSON (`{"error": "…"}` on bad input).

use super::faults::Faults;
use super::state::{CredentialState, NewProvision, ProvisionAdminError, ProvisionStatus};
use super::{lock, App};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub(crate) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/calls", get(get_calls).delete(clear_calls))
        .route("/faults", get(get_faults).put(put_faults))
        .route("/credentials", post(post_credential))
        .route("/provisions", post(post_provision))
        .route("/provisions/{id}", get(get_provision).put(put_provision))
        .route("/stats", get(get_stats))
        .route("/server-public-key", get(get_server_public_key))
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message.into() }))).into_response()
}

/// Parses a JSON body with serde's message on failure (axum's `Json` would answer 422
/// with a text body).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

async fn get_calls(State(app): State<Arc<App>>) -> Response {
    Json(lock(&app.calls).all()).into_response()
}

async fn clear_calls(State(app): State<Arc<App>>) -> StatusCode {
    lock(&app.calls).clear();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(app): State<Arc<App>>) -> Response {
    Json(lock(&app.faults).current()).into_response()
}

async fn put_faults(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let faults: Faults = match parse(&body) {
        Ok(f) => f,
        Err(message) => return bad_request(message),
    };
    if let Err(message) = faults.validate() {
        return bad_request(message);
    }
    tracing::info!(rules = faults.rules.len(), latency_ms = faults.latency_ms, "faults replaced");
    app.set_faults(faults.clone());
    Json(faults).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRequest {
    secret: String,
    state: CredentialState,
}

/// Answers with the short hash, never the secret.
async fn post_credential(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let request: CredentialRequest = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    if request.secret.trim().is_empty() {
        return bad_request("secret must be a non-empty string");
    }
    let secret_hash = app.register_credential(&request.secret, request.state);
    tracing::info!(%secret_hash, state = ?request.state, "credential registered");
    Json(json!({ "secret_hash": secret_hash, "state": request.state })).into_response()
}

async fn get_stats(State(app): State<Arc<App>>) -> Response {
    Json(app.stats()).into_response()
}

async fn get_server_public_key(State(app): State<Arc<App>>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], app.server_key.public_key_pem().to_owned())
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionRequest {
    id: u64,
    token_value: String,
    /// bunq time, UTC.
    #[serde(default, with = "bunq_protocol::timestamp::option")]
    expiry_time: Option<time::OffsetDateTime>,
    external_uuid: Option<String>,
}

fn provision_error(error: ProvisionAdminError) -> Response {
    let status = match error {
        ProvisionAdminError::NotFound(_) => StatusCode::NOT_FOUND,
        ProvisionAdminError::Exists(_) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({ "error": error.to_string() }))).into_response()
}

/// The provision as bunq's GET shows it, with the resets started.
fn provision_view(app: &App, id: u64) -> Response {
    let mut state = lock(&app.state);
    match state.provision(id) {
        Some(provision) => {
            Json(json!({ "PartnerUserProvision": provision, "token_resets": state.token_resets(id) })).into_response()
        }
        None => provision_error(ProvisionAdminError::NotFound(id)),
    }
}

/// Registers a provision ready for onboarding; its default expiry is the configured
/// first-use window (`credential_ttl`, else bunq's sandbox hour).
async fn post_provision(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let request: ProvisionRequest = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    let window = app.config.credential_ttl.unwrap_or(std::time::Duration::from_secs(3600));
    let new = NewProvision {
        id: request.id,
        token: request.token_value,
        expiry_time: request.expiry_time.unwrap_or_else(|| time::OffsetDateTime::now_utc() + window),
        external_uuid: request.external_uuid,
    };
    if let Err(error) = lock(&app.state).register_provision(new) {
        return provision_error(error);
    }
    tracing::info!(provision_id = request.id, "provision registered");
    provision_view(&app, request.id)
}

async fn get_provision(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    provision_view(&app, id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionStatusRequest {
    status: ProvisionStatus,
}

/// Ends a provision (`CANCELLED`, `CLOSED`, `FAILED`), as the user or bunq would.
async fn put_provision(State(app): State<Arc<App>>, Path(id): Path<u64>, body: Bytes) -> Response {
    let request: ProvisionStatusRequest = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    if let Err(error) = lock(&app.state).set_provision_status(id, request.status) {
        return provision_error(error);
    }
    tracing::info!(provision_id = id, status = ?request.status, "provision ended");
    provision_view(&app, id)
}
