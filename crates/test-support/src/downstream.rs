//! Downstream's view of the worker: a queue of the test's own on the output exchange.

use bunq_session_worker::amqp::topology::Names;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;

/// Declares `queue` (a plain queue: it lives only as long as the test) and, with a
/// `binding_key`, binds it to the output exchange. Without one, session-ready events
/// have nowhere to go: the unroutable case.
pub async fn capture_queue(
    channel: &Channel,
    names: &Names,
    queue: &str,
    binding_key: Option<&str>,
) -> Result<(), lapin::Error> {
    channel.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    if let Some(binding_key) = binding_key {
        channel
            .queue_bind(
                queue.into(),
                names.output_exchange.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
