//! Provision events as bunq sends them, with fresh ids and tokens so tests never share one.

/// A provision body. `webhook`: wrapped in bunq's `NotificationUrl` envelope, as the
/// webhook delivers it; otherwise the bare `PartnerUserProvision` object. `token`: the
/// credential's `token_value` (`None`: no credential).
pub fn provision_body(
    id: u64,
    status: &str,
    sub_status: &str,
    token: Option<&str>,
    expiry: &str,
    webhook: bool,
) -> Vec<u8> {
    with_credential_id(id, id + 500, status, sub_status, token, expiry, webhook)
}

/// A ready provision's webhook event whose credential has bunq's id `credential_id` (the
/// one the stand-in issued for a registered provision).
pub fn ready_body_with(id: u64, credential_id: u64, token: &str, expiry: &str) -> Vec<u8> {
    with_credential_id(id, credential_id, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(token), expiry, true)
}

fn with_credential_id(
    id: u64,
    credential_id: u64,
    status: &str,
    sub_status: &str,
    token: Option<&str>,
    expiry: &str,
    webhook: bool,
) -> Vec<u8> {
    let credential = match token {
        Some(token) => serde_json::json!(
            {"id": credential_id, "status": "PENDING_FIRST_USE", "expiry_time": expiry, "token_value": token}
        ),
        None => serde_json::Value::Null,
    };
    let object = serde_json::json!({"PartnerUserProvision": {
        "id": id, "created": "2025-09-03 08:24:13.795007", "updated": "2025-09-03 08:24:14.266407",
        "external_uuid": format!("ext-{id}"), "status": status, "sub_status": sub_status,
        "action_required": "USER", "products": ["USER_VERIFIED"], "credential": credential,
    }});
    let body = if webhook {
        serde_json::json!({"NotificationUrl": {"target_url": "https://partner.example/hook", "category": "PARTNER_USER_PROVISION",
            "event_type": "PARTNER_USER_PROVISION_PROCESS_UPDATED", "object": object}})
    } else {
        object
    };
    serde_json::to_vec(&body).expect("JSON values serialise")
}

/// A provision ready for its session (onboarding pending, credential valid for an hour).
pub fn ready_body(id: u64, token: &str) -> Vec<u8> {
    provision_body(id, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(token), &future_expiry(), true)
}

/// A credential expiry `from_now` from now (negative: already expired), in bunq's format.
pub fn expiry_in(from_now: time::Duration) -> String {
    bunq_protocol::timestamp::format(time::OffsetDateTime::now_utc() + from_now)
}

/// An expiry an hour from now, in bunq's format.
pub fn future_expiry() -> String {
    expiry_in(time::Duration::hours(1))
}

/// A credential secret of bunq's length (64 hex digits); fake-bunq accepts any.
pub fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A provision id (never 0).
pub fn random_id() -> u64 {
    u64::from(rand::random::<u32>()) + 1
}
