//! Upstream's side of the worker: provision events published to the input exchange, and
//! downstream's `session.invalid` reports on the same exchange.

use bunq_session_worker::amqp::topology::Names;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};

/// The routing key upstream publishes provision updates with (matched by the input binding).
pub const ROUTING_KEY: &str = "partner_user_provision.updated";

/// Publishes `body` to the input exchange as upstream does: persistent, and mandatory so
/// an input nothing would consume comes back instead of vanishing. Waits for the
/// broker's confirm when `channel` is in confirm mode (`Confirmation::NotRequested` otherwise).
pub async fn publish_input(
    channel: &Channel,
    names: &Names,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Confirmation, lapin::Error> {
    publish_to_input(channel, names, ROUTING_KEY, body, properties).await
}

/// Downstream's report that `session_id` of `user_id` no longer works (bunq said 401/403).
pub async fn publish_invalidation(
    channel: &Channel,
    names: &Names,
    user_id: u64,
    session_id: u64,
) -> Result<Confirmation, lapin::Error> {
    let body = serde_json::json!({ "user_id": user_id, "session_id": session_id }).to_string();
    publish_to_input(channel, names, "session.invalid", body.as_bytes(), BasicProperties::default()).await
}

/// `body` to the input exchange with `routing_key`, persistent and mandatory.
pub async fn publish_to_input(
    channel: &Channel,
    names: &Names,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Confirmation, lapin::Error> {
    channel
        .basic_publish(
            names.input_exchange.as_str().into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            body,
            properties.with_delivery_mode(2),
        )
        .await?
        .await
}
