//! Keeps the worker consuming: connect, declare, consume; on connection or channel loss,
//! reconnect with backoff and resume, without a process restart (docs/architecture.md §6).

use super::broker::Broker;
use super::consume::DeliveryContext;
use super::publish::PublishChannel;
use super::settle::Settler;
use super::topology;
use super::topology::Names;
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
/// The broker side of the worker's settings.
pub struct AmqpSettings {
    pub(crate) broker: Broker,
    pub names: Names,
    pub(crate) prefetch: u16,
    /// Names this replica's connection and consumer: the pod name plus a random suffix.
    pub(crate) consumer_tag: String,
    /// How long in-flight deliveries may take to finish after SIGTERM.
    pub(crate) shutdown_timeout: Duration,
}

pub(crate) struct Supervisor {
    broker: Broker,
    names: Names,
    consumer_tag: String,
    prefetch: u16,
    context: Arc<DeliveryContext>,
    publish: PublishChannel,
    /// True while consuming; `/readyz` reads it.
    consuming: Arc<AtomicBool>,
    /// True while the broker blocks this connection (`connection.blocked`: a memory or
    /// disk alarm); `/readyz` reads it.
    blocked: Arc<AtomicBool>,
    tracker: TaskTracker,
    /// How long in-flight deliveries may take to finish on shutdown.
    drain_timeout: Duration,
}

const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(15);
/// A connection that lived this long was healthy: the backoff starts over after it.
const RECONNECT_HEALTHY: Duration = Duration::from_secs(30);

impl Supervisor {
    pub(crate) fn new(settings: &AmqpSettings, context: Arc<DeliveryContext>, publish: PublishChannel) -> Self {
        Self {
            broker: settings.broker.clone(),
            names: settings.names.clone(),
            consumer_tag: settings.consumer_tag.clone(),
            prefetch: settings.prefetch,
            context,
            publish,
            consuming: Arc::new(AtomicBool::new(false)),
            blocked: Arc::new(AtomicBool::new(false)),
            tracker: TaskTracker::new(),
            drain_timeout: settings.shutdown_timeout,
        }
    }

    /// True while consuming, for readiness.
    pub(crate) fn consuming(&self) -> Arc<AtomicBool> {
        self.consuming.clone()
    }

    /// True while the broker blocks the connection, for readiness.
    pub(crate) fn blocked(&self) -> Arc<AtomicBool> {
        self.blocked.clone()
    }

    /// Runs until `shutdown` is cancelled. In-flight deliveries are left in the tracker
    /// for the caller to drain.
    pub(crate) async fn run(&self, shutdown: CancellationToken) {
        // One semaphore for the process's life: deliveries still running from a lost
        // connection keep their permits, so a reconnect cannot double the concurrency.
        let permits = Arc::new(Semaphore::new(usize::from(self.prefetch)));
        let mut delay = RECONNECT_MIN;
        while !shutdown.is_cancelled() {
            let started = tokio::time::Instant::now();
            match self.connection_life(&shutdown, &permits).await {
                Ok(()) => return,
                Err(e) => {
                    self.consuming.store(false, Ordering::SeqCst);
                    self.publish.set(None);
                    // A connection that lived a while was healthy: this loss starts afresh.
                    if started.elapsed() >= RECONNECT_HEALTHY {
                        delay = RECONNECT_MIN;
                    }
                    tracing::warn!(event = "amqp_disconnected", error = %e, retry_in_ms = delay.as_millis() as u64);
                }
            }
            // Jittered: replicas that lost the broker together do not all return at once.
            let pause = delay.mul_f64(0.5 + rand::random::<f64>());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            delay = (delay * 2).min(RECONNECT_MAX);
        }
    }

    /// One AMQP connection's life: connect, declare, consume until it breaks or shutdown.
    /// `Ok` only when shutdown stopped it.
    async fn connection_life(
        &self,
        shutdown: &CancellationToken,
        permits: &Arc<Semaphore>,
    ) -> Result<(), lapin::Error> {
        let (connection, node) = self.broker.connect(&self.consumer_tag).await?;
        if self.broker.nodes() > 1 {
            tracing::info!(event = "amqp_connected", node);
        }
        self.context.metrics().amqp_connected();
        self.blocked.store(false, Ordering::SeqCst);
        tokio::spawn(watch_blocked(connection.events_listener(), self.blocked.clone()));
        let setup = connection.create_channel().await?;
        topology::declare(&setup, &self.names).await?;
        let _ = setup.close(200, "topology declared".into()).await;

        let publish = connection.create_channel().await?;
        publish.confirm_select(ConfirmSelectOptions { nowait: false }).await?;
        self.publish.set(Some(publish));

        let consume = connection.create_channel().await?;
        // Prefetch equals the deliveries processed at once: the broker never hands a
        // replica more than it is working on, so the rest stay with idle replicas.
        consume.basic_qos(self.prefetch, BasicQosOptions { global: false }).await?;
        // Acks on this channel go through its settler, after the copies' confirms (see `settle`).
        let copies = connection.create_channel().await?;
        let settler = Settler::start(
            consume.clone(),
            copies,
            self.names.clone(),
            self.context.metrics().clone(),
            usize::from(self.prefetch),
        )
        .await?;
        let mut consumer = consume
            .basic_consume(
                self.names.input_queue.as_str().into(),
                self.consumer_tag.as_str().into(),
                BasicConsumeOptions {
                    no_local: false,
                    no_ack: false,    // manual acks: ack only after the outcome is safe
                    exclusive: false, // replicas compete on one queue
                    nowait: false,
                },
                FieldTable::default(),
            )
            .await?;
        self.consuming.store(true, Ordering::SeqCst);
        tracing::info!(event = "consuming", queue = %self.names.input_queue, consumer_tag = %self.consumer_tag, prefetch = self.prefetch);

        let gate = self.context.gate().clone();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            // No new work while Redis is away: what is in hand is held, the rest stays in
            // the queue for replicas that can reach Redis. Nor while the broker blocks our
            // publishes: nothing could be announced or settled.
            if !gate.is_up() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = gate.wait_up() => {}
                }
            }
            while self.blocked.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed,
                        "consumer",
                    )))
                }
            };
            let context = self.context.clone();
            let settler = settler.clone();
            self.tracker.spawn(async move {
                let _permit = permit;
                context.process(delivery, &settler).await;
            });
        }

        // Stop new deliveries; what is prefetched but unstarted returns to the queue
        // when the channel closes, which happens after the drain. Deliveries held for
        // Redis let go now, unsettled.
        self.consuming.store(false, Ordering::SeqCst);
        gate.close();
        if let Err(e) =
            consume.basic_cancel(self.consumer_tag.as_str().into(), BasicCancelOptions { nowait: false }).await
        {
            tracing::warn!(event = "cancel_failed", error = %e);
        }
        self.close_after_drain(connection, consume).await;
        Ok(())
    }

    async fn close_after_drain(&self, connection: lapin::Connection, consume: lapin::Channel) {
        self.tracker.close();
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait()).await.is_err() {
            // Unacked, so RabbitMQ redelivers them to another replica once the channel closes.
            tracing::warn!(
                event = "drain_timeout",
                unfinished = self.tracker.len(),
                "closing with deliveries unfinished"
            );
        } else {
            tracing::info!(event = "drained");
        }
        // Each channel closed and awaited before the connection: a channel dropped instead
        // closes in the background and races the connection's close. Unfinished deliveries
        // return to the queue when the consume channel closes.
        if let Some(publish) = self.publish.take() {
            let _ = publish.close(200, "shutting down".into()).await;
        }
        let _ = consume.close(200, "shutting down".into()).await;
        if let Err(e) = connection.close(200, "shutting down".into()).await {
            tracing::warn!(event = "close_failed", error = %e);
        }
    }
}

/// Follows `connection.blocked` / `connection.unblocked` for one connection's life.
async fn watch_blocked(events: impl futures_util::Stream<Item = lapin::Event> + Send, blocked: Arc<AtomicBool>) {
    use futures_util::StreamExt as _;
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::ConnectionBlocked(reason) => {
                tracing::warn!(event = "amqp_blocked", reason = %bunq_protocol::redact::detail(&reason));
                blocked.store(true, Ordering::SeqCst);
            }
            lapin::Event::ConnectionUnblocked => {
                tracing::info!(event = "amqp_unblocked");
                blocked.store(false, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}
