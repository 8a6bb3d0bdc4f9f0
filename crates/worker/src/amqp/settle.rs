//! Settling deliveries: a delivery's copy (to the retry or dead-letter queue) is
//! published on a confirm-mode channel, and the original is acked only once the broker
//! has confirmed the copy. A crash between the two leaves both (the redelivery is
//! handled idempotently, or is a second identical dead letter); no order of failures
//! leaves neither.
//!
//! Transactions looked like the tool for this and are not: RabbitMQ's `tx` is not atomic
//! across queues (rabbitmq.com/docs/semantics), and when a cluster node holding the
//! queues' leaders died mid-stream, committed transactions had applied their acks but
//! not their publishes: dead letters vanished. A publisher confirm for a quorum queue
//! means a majority of its members has the message.
//!
//! One task per channel gathers the settlements waiting at that moment (group commit):
//! their copies are published together and confirmed together, so a busy worker pays
//! one confirm round trip per batch, not per delivery.

use super::headers;
use super::topology;
use super::topology::Names;
use crate::metrics::Metrics;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Settlements confirmed together at most; bounds one batch's size and latency.
const MAX_BATCH: usize = 256;

/// How a delivery leaves the input queue.
pub(crate) enum Settlement {
    /// Done with (announced or skipped).
    Ack,
    /// Back to the queue as it is (`basic.nack` with requeue): RabbitMQ counts it in
    /// `x-delivery-count`, which the worker bounds.
    Return,
    /// Moved: the copy is published and confirmed, then the original acked.
    Move(Box<Moved>),
}

impl Settlement {
    /// The same settlement again, for a move the broker refused; `None` for an ack,
    /// which it cannot refuse.
    pub(crate) fn try_clone(&self) -> Option<Self> {
        match self {
            Settlement::Move(moved) => Some(Settlement::Move(moved.clone())),
            Settlement::Ack | Settlement::Return => None,
        }
    }
}

/// A delivery's copy for another queue, published through the default exchange.
#[derive(Clone)]
pub(crate) struct Moved {
    pub(crate) queue: String,
    /// A retry copy carries the credential: wiped once the copy is settled.
    pub(crate) body: zeroize::Zeroizing<Vec<u8>>,
    pub(crate) properties: BasicProperties,
}

/// Why a settlement did not complete. The delivery is still the broker's: the consumer
/// tries a refused move again and, failing that, closes the channel (see `consume.rs`),
/// which returns it to the queue.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SettleError {
    #[error("the consume channel is gone")]
    ChannelGone,
    #[error("RabbitMQ did not take the settlement: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused the copy (nack)")]
    Nacked,
    #[error("the copy's queue `{0}` does not exist, even after declaring the topology again")]
    Unroutable(String),
    #[error("RabbitMQ did not confirm the settlement within {} s; the channel is closed and its deliveries return to the queue", COMMIT_TIMEOUT.as_secs())]
    TimedOut,
}

/// How long one batch may take to be confirmed. Past it the channels' state is unknown
/// (a blocked broker, a stuck link): the consume channel is closed, so its deliveries
/// return to the queue and the supervisor starts a fresh connection.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The handle delivery tasks settle through; one per consume channel.
#[derive(Clone)]
pub(crate) struct Settler {
    requests: mpsc::Sender<Request>,
    /// The consume channel, to close when its settlements cannot go through.
    channel: Channel,
}

struct Request {
    delivery_tag: u64,
    settlement: Settlement,
    done: oneshot::Sender<Result<(), SettleError>>,
}

impl Settler {
    /// Starts the settling task for `channel` (the one deliveries arrive on), publishing
    /// copies on `copies`, which it puts in confirm mode. The task ends when the last
    /// handle is dropped.
    pub(crate) async fn start(
        channel: Channel,
        copies: Channel,
        names: Names,
        metrics: Arc<Metrics>,
        capacity: usize,
    ) -> Result<Self, lapin::Error> {
        copies.confirm_select(ConfirmSelectOptions { nowait: false }).await?;
        let (requests, receiver) = mpsc::channel(capacity.max(1));
        tokio::spawn(Committer { channel: channel.clone(), copies, names, metrics }.run(receiver));
        Ok(Self { requests, channel })
    }

    /// Closes the consume channel: its unsettled deliveries return to the queue, and the
    /// supervisor, seeing the consumer end, connects afresh with new channels.
    pub(crate) async fn reconnect(&self, why: &str) {
        if let Err(e) = self.channel.close(200, why.into()).await {
            tracing::debug!(event = "channel_close_failed", error = %e);
        }
    }

    /// Returns once the settlement is done (`Ok`) or known not to be (`Err`).
    pub(crate) async fn settle(&self, delivery_tag: u64, settlement: Settlement) -> Result<(), SettleError> {
        let (done, committed) = oneshot::channel();
        let request = Request { delivery_tag, settlement, done };
        self.requests.send(request).await.map_err(|_| SettleError::ChannelGone)?;
        committed.await.map_err(|_| SettleError::ChannelGone)?
    }
}

struct Committer {
    /// The consume channel: acks.
    channel: Channel,
    /// Confirm mode: the copies.
    copies: Channel,
    names: Names,
    metrics: Arc<Metrics>,
}

impl Committer {
    async fn run(self, mut receiver: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let results = match tokio::time::timeout(COMMIT_TIMEOUT, self.settle(&batch)).await {
                Ok(results) => results,
                Err(_) => {
                    tracing::warn!(event = "commit_timed_out", settlements = batch.len());
                    let _ = self.channel.close(406, "settlement confirm timed out".into()).await;
                    vec![Err(SettleError::TimedOut); batch.len()]
                }
            };
            self.metrics.observe_settle_batch(batch.len());
            for (request, result) in batch.drain(..).zip(results) {
                let _ = request.done.send(result);
            }
        }
    }

    /// Publishes the batch's copies, waits for their confirms, then acks the originals
    /// whose copy (if any) the broker took. One result per request, in order.
    async fn settle(&self, batch: &[Request]) -> Vec<Result<(), SettleError>> {
        let mut pending = Vec::with_capacity(batch.len());
        for request in batch {
            let published = match &request.settlement {
                Settlement::Ack | Settlement::Return => None,
                Settlement::Move(copy) => Some((self.publish(copy).await, copy)),
            };
            pending.push(published);
        }
        let mut results = Vec::with_capacity(batch.len());
        for (request, published) in batch.iter().zip(pending) {
            let copied = match published {
                None => Ok(()),
                Some((published, copy)) => self.confirmed(published, copy).await,
            };
            let result = match (copied, &request.settlement) {
                (Ok(()), Settlement::Return) => self
                    .channel
                    .basic_nack(request.delivery_tag, BasicNackOptions { multiple: false, requeue: true })
                    .await
                    .map_err(SettleError::from),
                (Ok(()), _) => self
                    .channel
                    .basic_ack(request.delivery_tag, BasicAckOptions { multiple: false })
                    .await
                    .map_err(SettleError::from),
                (Err(e), _) => Err(e),
            };
            results.push(result);
        }
        results
    }

    async fn publish(&self, copy: &Moved) -> Result<PublisherConfirm, lapin::Error> {
        let options = BasicPublishOptions {
            mandatory: true,  // a missing queue comes back to us rather than vanishing
            immediate: false, // unsupported by RabbitMQ
        };
        self.copies
            .basic_publish("".into(), copy.queue.as_str().into(), options, &copy.body, copy.properties.clone())
            .await
    }

    /// Waits for one copy's confirm. A copy that comes back unroutable (its queue was
    /// deleted while the worker ran) is published once more after declaring the topology.
    async fn confirmed(
        &self,
        published: Result<PublisherConfirm, lapin::Error>,
        copy: &Moved,
    ) -> Result<(), SettleError> {
        match published?.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Nack(_) => Err(SettleError::Nacked),
            Confirmation::Ack(Some(_returned)) => {
                tracing::warn!(event = "moved_copy_returned", queue = %copy.queue, "redeclaring the topology");
                topology::declare(&self.copies, &self.names).await?;
                match self.publish(copy).await?.await? {
                    Confirmation::Ack(None) => Ok(()),
                    Confirmation::Nack(_) => Err(SettleError::Nacked),
                    _ => {
                        self.metrics.settle_failed();
                        tracing::error!(
                            event = "moved_copy_unroutable",
                            queue = %copy.queue,
                            reason = headers::get_str(&copy.properties, headers::DEAD_LETTER_REASON),
                        );
                        Err(SettleError::Unroutable(copy.queue.clone()))
                    }
                }
            }
            Confirmation::NotRequested => unreachable!("the copies channel is in confirm mode"),
        }
    }
}
