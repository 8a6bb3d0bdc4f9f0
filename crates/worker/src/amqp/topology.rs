//! The queues and exchanges (docs/architecture.md §6), declared idempotently at every
//! (re)connect. Every options struct is written out with the reason for each field.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

/// Redeliveries (crashes, nacks) before RabbitMQ itself dead-letters a message: a last
/// line against a message that kills the worker every time, which our own attempt
/// counting cannot see.
pub(crate) const DELIVERY_LIMIT: i64 = 20;

/// The exchange, queue and routing-key names the worker uses at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub input_exchange: String,
    pub input_queue: String,
    pub input_binding_key: String,
    /// Second binding of the input queue: downstream's "this session is dead"
    /// (`session.invalid`); `None` leaves it unbound.
    pub invalidation_binding_key: Option<String>,
    pub output_exchange: String,
    pub output_routing_key: String,
    pub dead_letter_queue: String,
    pub retry_queue: String,
    /// Part of the dead-letter queue's declaration, so every process declares it alike.
    pub dead_letter_retention: Retention,
    /// The retry queue's bound on its bodies' bytes (`x-max-length-bytes`), part of its
    /// declaration like the retention; `None`: no bound.
    pub retry_queue_max_bytes: Option<u64>,
}

/// How long the dead-letter queue keeps what it holds. A dead letter is for an operator to
/// look at and replay; kept forever it becomes a store nobody curates, so it is bounded
/// by age, by count and by bytes (the oldest go first). `None`: no bound of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub(crate) max_age: Option<Duration>,
    pub(crate) max_length: Option<u64>,
    /// Bytes of bodies (RabbitMQ counts bodies only, not headers).
    pub(crate) max_bytes: Option<u64>,
}

impl Retention {
    /// RabbitMQ refuses a `x-message-ttl` above 2³² − 1 ms (about 49 days).
    pub(crate) const MAX_AGE_LIMIT: Duration = Duration::from_millis(u32::MAX as u64);

    /// 14 days and 100,000 messages: long enough to span holidays, small enough that the
    /// queue stays a list someone reads. 256 MiB: 100,000 bodies of 2.6 KiB (a provision
    /// event is about 1 KiB), or a thousand of `MAX_MESSAGE_BYTES`' default; a flood of large
    /// bodies cannot fill the broker's memory and disk with dead letters.
    pub const DEFAULT: Retention = Retention {
        max_age: Some(Duration::from_secs(14 * 86_400)),
        max_length: Some(100_000),
        max_bytes: Some(DEFAULT_DEAD_LETTER_MAX_BYTES),
    };
}

/// `DEAD_LETTER_MAX_BYTES`' default (see [`Retention::DEFAULT`]).
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 256 << 20;

/// `RETRY_QUEUE_MAX_BYTES`' default, 1 GiB: far above what an outage of bunq parks there
/// (a million provision events), so it only stops a runaway before the broker's memory or
/// disk alarm blocks every publisher; a full retry queue refuses copies (see `declare`).
pub const DEFAULT_RETRY_QUEUE_MAX_BYTES: u64 = 1 << 30;

impl Default for Retention {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Names {
    /// The exchange and queue names, each with the variable that sets it: what start-up
    /// validates, and what a child process is given to use the same topology.
    pub fn as_env(&self) -> [(&'static str, &str); 5] {
        [
            ("INPUT_EXCHANGE", &self.input_exchange),
            ("INPUT_QUEUE", &self.input_queue),
            ("OUTPUT_EXCHANGE", &self.output_exchange),
            ("DEAD_LETTER_QUEUE", &self.dead_letter_queue),
            ("RETRY_QUEUE", &self.retry_queue),
        ]
    }
}

pub async fn declare(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions {
        passive: false,     // create it if missing: the worker can start first
        durable: true,      // survives a broker restart
        auto_delete: false, // stays when no queue is bound
        internal: false,    // publishers send to it directly
        nowait: false,      // confirm the declaration
    };
    channel
        .exchange_declare(
            names.input_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            names.output_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    let durable_queue = QueueDeclareOptions {
        passive: false,
        durable: true,      // quorum queues must be durable; messages survive restarts
        exclusive: false,   // every replica consumes it
        auto_delete: false, // stays when replicas scale to zero
        nowait: false,
    };

    // Input: a quorum queue (replicated, poison-message aware). Messages over the
    // delivery limit go to the dead-letter queue through the default exchange, at most
    // once: the worker dead-letters a message itself at half that limit (credential
    // protected), so RabbitMQ's own path is a last line that is never reached in
    // practice, and at-least-once dead-lettering would expose the queue everything
    // depends on to RabbitMQ's stranding of such queues when a node dies
    // (rabbitmq/rabbitmq-server#16652: no leader elected until a manual restart; the
    // SIGKILL cluster test saw the input queue stuck so in 3 of 8 runs).
    let mut input_args = FieldTable::default();
    input_args.insert("x-queue-type".into(), long_string("quorum"));
    input_args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
    input_args.insert("x-dead-letter-exchange".into(), long_string(""));
    input_args.insert("x-dead-letter-routing-key".into(), long_string(&names.dead_letter_queue));
    channel.queue_declare(names.input_queue.as_str().into(), durable_queue, input_args).await?;
    channel
        .queue_bind(
            names.input_queue.as_str().into(),
            names.input_exchange.as_str().into(),
            names.input_binding_key.as_str().into(),
            QueueBindOptions { nowait: false },
            FieldTable::default(),
        )
        .await?;
    if let Some(key) = &names.invalidation_binding_key {
        channel
            .queue_bind(
                names.input_queue.as_str().into(),
                names.input_exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions { nowait: false },
                FieldTable::default(),
            )
            .await?;
    }

    // Retry: nobody consumes it; a message waits its per-message TTL, then RabbitMQ
    // dead-letters it back into the input queue. Delayed retry without a hot loop.
    let mut retry_args = FieldTable::default();
    retry_args.insert("x-queue-type".into(), long_string("quorum"));
    retry_args.insert("x-dead-letter-exchange".into(), long_string(""));
    retry_args.insert("x-dead-letter-routing-key".into(), long_string(&names.input_queue));
    at_least_once_dead_lettering(&mut retry_args);
    // Overflow is `reject-publish` (above): a copy that does not fit is nacked, never
    // dropped; the worker then holds its delivery and tries the move again (consume.rs).
    if let Some(max_bytes) = names.retry_queue_max_bytes {
        retry_args.insert("x-max-length-bytes".into(), long_long(max_bytes));
    }
    channel.queue_declare(names.retry_queue.as_str().into(), durable_queue, retry_args).await?;

    let mut dead_letter_args = FieldTable::default();
    dead_letter_args.insert("x-queue-type".into(), long_string("quorum"));
    let retention = names.dead_letter_retention;
    if let Some(max_age) = retention.max_age {
        let ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        dead_letter_args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
    }
    if let Some(max_length) = retention.max_length {
        dead_letter_args.insert("x-max-length".into(), long_long(max_length));
    }
    if let Some(max_bytes) = retention.max_bytes {
        dead_letter_args.insert("x-max-length-bytes".into(), long_long(max_bytes));
    }
    if retention.max_length.is_some() || retention.max_bytes.is_some() {
        // The oldest dead letter goes first: the newest is the one someone looks for.
        dead_letter_args.insert("x-overflow".into(), long_string("drop-head"));
    }
    channel.queue_declare(names.dead_letter_queue.as_str().into(), durable_queue, dead_letter_args).await?;
    Ok(())
}

/// Quorum queues dead-letter at most once by default: a retry whose TTL ends while the
/// input queue cannot take it would be dropped. At-least-once (RabbitMQ 3.10+) keeps it
/// until the target confirms; it requires `reject-publish` overflow. The retry queue needs
/// it: every retry passes through its dead-lettering.
fn at_least_once_dead_lettering(args: &mut FieldTable) {
    args.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
    args.insert("x-overflow".into(), long_string("reject-publish"));
}

/// RabbitMQ reads these arguments as signed 64-bit integers (start-up refuses byte bounds
/// beyond; a count beyond means no bound in practice).
fn long_long(value: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX))
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}
