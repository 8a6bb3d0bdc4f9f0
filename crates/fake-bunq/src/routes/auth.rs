//! Steps 4–6: the installation or session token, the request signature over the exact
//! body bytes, and the request id, claimed once per installation.

use super::{header_str, HEADER_AUTHENTICATION, HEADER_CLIENT_SIGNATURE};
use crate::calls::RecordedCall;
use crate::errors::BunqError;
use crate::state::SessionAuth;
use crate::{lock, App};
use axum::http::HeaderMap;

/// Steps 4–6: installation token, request signature, request id. Returns the token.
pub(super) fn authenticate<'h>(
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

/// A call authenticated by a session token: the session must be live (not past its
/// timeout, not ended). A signature is checked when sent, and required when `signed`
/// (calls with a body; bunq leaves signing a body-less call optional: the Python SDK
/// signs the empty body, others do not). Claims the request id on the installation.
pub(super) fn authenticate_session(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    signed: bool,
    record: &mut RecordedCall,
) -> Result<SessionAuth, BunqError> {
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
