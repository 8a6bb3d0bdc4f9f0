//! Upstream's side of the worker: provision events published to the input exchange.

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
    channel
        .basic_publish(
            names.input_exchange.as_str().into(),
            ROUTING_KEY.into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            body,
            properties.with_delivery_mode(2),
        )
        .await?
        .await
}
