//! Publishing session-ready, -renewed and -closed events with publisher confirms: the
//! lifecycle's [`Announcer`]. (Retry and dead-letter copies are published and confirmed
//! before their original is acked: see [`super::settle`].)

use super::topology::Names;
use super::trace_context;
use crate::event::{SessionClosed, SessionReady, SESSION_CLOSED_ROUTING_KEY, SESSION_RENEWED_ROUTING_KEY};
use crate::failure::{Failure, Reason};
use crate::lifecycle::announce::Announcer;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use std::sync::{Arc, RwLock};
use tracing::Instrument as _;

/// Why a publish did not become the broker's responsibility.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error("not connected to RabbitMQ")]
    Disconnected,
    #[error("no queue is bound for exchange `{exchange}` and routing key `{routing_key}`")]
    Unroutable { exchange: String, routing_key: String },
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ did not confirm the message: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not confirm the message within {} s (a memory or disk alarm blocks publishers?)", CONFIRM_TIMEOUT.as_secs())]
    TimedOut,
}

/// How long a publish may wait for its confirm. A broker under a memory or disk alarm
/// blocks publishers without a word to them; this turns that into a retry, not a hang.
pub(crate) const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The current confirm-mode channel, replaced on reconnect.
#[derive(Clone, Default)]
pub(crate) struct PublishChannel(Arc<RwLock<Option<Channel>>>);

impl PublishChannel {
    pub(crate) fn set(&self, channel: Option<Channel>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = channel;
    }

    pub(crate) fn take(&self) -> Option<Channel> {
        self.0.write().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn get(&self) -> Option<Channel> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes `mandatory` and waits for the confirm: `Ok` means the broker has routed
    /// the message to at least one queue and taken responsibility for it.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self.get().ok_or(PublishError::Disconnected)?;
        let options = BasicPublishOptions {
            mandatory: true,  // unroutable is an error, not a silent loss
            immediate: false, // unsupported by RabbitMQ
        };
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            channel.basic_publish(exchange.into(), routing_key.into(), options, body, properties).await?.await
        })
        .await
        .map_err(|_| PublishError::TimedOut)??;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => {
                Err(PublishError::Unroutable { exchange: exchange.to_owned(), routing_key: routing_key.to_owned() })
            }
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::NotRequested => unreachable!("the publish channel is always in confirm mode"),
        }
    }
}

/// Announces sessions on the output exchange.
pub(crate) struct AmqpAnnouncer {
    channel: PublishChannel,
    exchange: String,
    routing_key: String,
}

impl AmqpAnnouncer {
    pub(crate) fn new(channel: PublishChannel, names: &Names) -> Self {
        Self { channel, exchange: names.output_exchange.clone(), routing_key: names.output_routing_key.clone() }
    }
}

impl AmqpAnnouncer {
    /// One persistent JSON event, its id as `message_id` and its type as `type`.
    async fn publish_event(
        &self,
        routing_key: &str,
        body: Vec<u8>,
        (event_id, event_type, occurred_at): (uuid::Uuid, &str, time::OffsetDateTime),
        correlation_id: Option<&str>,
    ) -> Result<(), Failure> {
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2) // persistent
            .with_message_id(event_id.to_string().into())
            .with_type(event_type.into())
            .with_timestamp(occurred_at.unix_timestamp().max(0) as u64)
            .with_app_id("bunq-session-worker".into());
        if let Some(correlation_id) = correlation_id {
            properties = properties.with_correlation_id(correlation_id.into());
        }
        // The producer span (OpenTelemetry's messaging conventions); the event carries its
        // context, so a consumer's span continues the trace.
        let span = tracing::info_span!(
            "publish",
            otel.name = format!("send {}", self.exchange),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.destination.name = self.exchange.as_str(),
            messaging.rabbitmq.destination.routing_key = routing_key,
            messaging.message.id = %event_id,
            messaging.message.conversation_id = correlation_id,
            event_type,
        );
        let properties = trace_context::inject(properties, &span);
        let published =
            self.channel.publish(&self.exchange, routing_key, &body, properties).instrument(span.clone()).await;
        published.map_err(|e| {
            span.record("otel.status_code", "ERROR");
            match e {
                PublishError::Unroutable { .. } => Failure::transient(Reason::OutputUnroutable, e.to_string()),
                _ => Failure::transient(Reason::PublishFailed, e.to_string()),
            }
        })
    }
}

#[async_trait::async_trait]
impl Announcer for AmqpAnnouncer {
    async fn announce(&self, event: &SessionReady, correlation_id: Option<&str>) -> Result<(), Failure> {
        let body = serde_json::to_vec(event).expect("events serialise");
        let meta = (event.event_id, event.event_type.as_str(), event.occurred_at);
        self.publish_event(&self.routing_key, body, meta, correlation_id).await
    }

    async fn announce_renewed(&self, event: &SessionReady, correlation_id: Option<&str>) -> Result<(), Failure> {
        let body = serde_json::to_vec(event).expect("events serialise");
        let meta = (event.event_id, event.event_type.as_str(), event.occurred_at);
        self.publish_event(SESSION_RENEWED_ROUTING_KEY, body, meta, correlation_id).await
    }

    async fn announce_closed(&self, event: &SessionClosed, correlation_id: Option<&str>) -> Result<(), Failure> {
        let body = serde_json::to_vec(event).expect("events serialise");
        let meta = (event.event_id, event.event_type.as_str(), event.occurred_at);
        self.publish_event(SESSION_CLOSED_ROUTING_KEY, body, meta, correlation_id).await
    }
}
