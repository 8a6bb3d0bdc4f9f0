//! Settling deliveries: a delivery's copy (to the retry or dead-letter queue) and the ack
//! of the original are committed in one AMQP transaction, so a crash between the two
//! can neither lose the message nor leave two copies of it.
//!
//! RabbitMQ applies a transaction's publishes and acks only on `tx.commit`: a process
//! killed before the commit leaves the original unacked (redelivered) and no copy; one
//! killed after it leaves the copy and no original. Transactions are not atomic across
//! queues if the *broker* fails mid-commit (rabbitmq.com/docs/semantics); that case is
//! at-least-once, as everything else here.
//!
//! The consume channel is in transaction mode, so every ack on it needs a commit. One
//! task per channel gathers the settlements waiting at that moment into one commit
//! (group commit): a busy worker pays one round trip per batch, not per delivery.

use super::headers;
use super::topology;
use super::topology::Names;
use crate::metrics::Metrics;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Settlements committed together at most; bounds one commit's size and latency.
const MAX_BATCH: usize = 256;

/// How a delivery leaves the input queue.
pub enum Settlement {
    /// Done with (announced or skipped).
    Ack,
    /// Moved: the copy is published and the original acked in the same transaction.
    Move(Box<Moved>),
}

/// A delivery's copy for another queue, published through the default exchange.
pub struct Moved {
    pub queue: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// Why a settlement did not commit. The delivery stays unacked, so RabbitMQ redelivers it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SettleError {
    #[error("the consume channel is gone")]
    ChannelGone,
    #[error("RabbitMQ did not commit the settlement: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not commit the settlement within {} s; the channel is closed and its deliveries return to the queue", COMMIT_TIMEOUT.as_secs())]
    TimedOut,
}

/// How long one transaction may take to commit. Past it the channel's state is unknown
/// (a blocked broker, a stuck link): it is closed, so its deliveries return to the queue
/// and the supervisor starts a fresh connection.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The handle delivery tasks settle through; one per consume channel.
#[derive(Clone)]
pub struct Settler {
    requests: mpsc::Sender<Request>,
}

struct Request {
    delivery_tag: u64,
    settlement: Settlement,
    done: oneshot::Sender<Result<(), SettleError>>,
}

impl Settler {
    /// Puts `channel` (the one deliveries arrive on) in transaction mode and starts its
    /// commit task, which ends when the last handle is dropped.
    pub async fn start(
        channel: Channel,
        names: Names,
        metrics: Arc<Metrics>,
        capacity: usize,
    ) -> Result<Self, lapin::Error> {
        channel.tx_select().await?;
        let (requests, receiver) = mpsc::channel(capacity.max(1));
        tokio::spawn(Committer { channel, names, metrics }.run(receiver));
        Ok(Self { requests })
    }

    /// Returns once the settlement is committed (`Ok`) or known not to be (`Err`).
    pub async fn settle(&self, delivery_tag: u64, settlement: Settlement) -> Result<(), SettleError> {
        let (done, committed) = oneshot::channel();
        let request = Request { delivery_tag, settlement, done };
        self.requests.send(request).await.map_err(|_| SettleError::ChannelGone)?;
        committed.await.map_err(|_| SettleError::ChannelGone)?
    }
}

struct Committer {
    channel: Channel,
    names: Names,
    metrics: Arc<Metrics>,
}

impl Committer {
    async fn run(self, mut receiver: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let result = match tokio::time::timeout(COMMIT_TIMEOUT, self.commit(&batch)).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(event = "commit_timed_out", settlements = batch.len());
                    let _ = self.channel.close(406, "settlement commit timed out".into()).await;
                    Err(SettleError::TimedOut)
                }
            };
            self.metrics.observe_settle_batch(batch.len());
            for request in batch.drain(..) {
                let _ = request.done.send(result.clone());
            }
        }
    }

    async fn commit(&self, batch: &[Request]) -> Result<(), SettleError> {
        for request in batch {
            if let Settlement::Move(copy) = &request.settlement {
                self.publish(&copy.queue, &copy.body, copy.properties.clone()).await?;
            }
            self.channel.basic_ack(request.delivery_tag, BasicAckOptions { multiple: false }).await?;
        }
        self.channel.tx_commit().await?;
        self.recover_returned().await;
        Ok(())
    }

    async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) -> Result<(), lapin::Error> {
        let options = BasicPublishOptions {
            mandatory: true,  // a missing queue comes back to us rather than vanishing
            immediate: false, // unsupported by RabbitMQ
        };
        // No confirm in transaction mode: the commit is the broker taking responsibility.
        self.channel.basic_publish("".into(), queue.into(), options, body, properties).await?;
        Ok(())
    }

    /// A copy comes back only if its queue was deleted while the worker ran; its
    /// original is already acked. Declare the topology again and put the copy back.
    async fn recover_returned(&self) {
        let mut returned = self.returned().await;
        for attempt in 1..=3 {
            if returned.is_empty() {
                return;
            }
            tracing::warn!(event = "moved_copy_returned", count = returned.len(), attempt, "redeclaring the topology");
            if let Err(e) = self.put_back(&returned).await {
                self.lost(&returned, &e.to_string());
                return;
            }
            returned = self.returned().await;
        }
        self.lost(&returned, "still unroutable after redeclaring the topology");
    }

    /// The copies the broker returned since the last call. In transaction mode there is
    /// nothing to confirm: `wait_for_confirms` only drains them.
    async fn returned(&self) -> Vec<BasicReturnMessage> {
        self.channel.wait_for_confirms().await.unwrap_or_else(|e| {
            tracing::error!(event = "settle_returns_unknown", error = %e);
            Vec::new()
        })
    }

    async fn put_back(&self, returned: &[BasicReturnMessage]) -> Result<(), lapin::Error> {
        topology::declare(&self.channel, &self.names).await?;
        for message in returned {
            self.publish(message.routing_key.as_str(), &message.data, message.properties.clone()).await?;
        }
        self.channel.tx_commit().await
    }

    fn lost(&self, messages: &[BasicReturnMessage], why: &str) {
        for message in messages {
            self.metrics.settle_failed();
            tracing::error!(
                event = "moved_copy_lost",
                queue = %message.routing_key,
                message_id = message.properties.message_id().as_ref().map(|s| s.as_str()),
                reason = headers::get_str(&message.properties, headers::DEAD_LETTER_REASON),
                why,
            );
        }
    }
}
