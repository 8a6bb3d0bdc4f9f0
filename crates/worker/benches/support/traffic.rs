//! Traffic through the broker, timed: bodies published to the input exchange (paced or
//! as fast as confirms allow) and taken from a capture queue, or the broker alone as the
//! floor; each run's rate and latencies.

use bunq_session_worker::amqp::topology::Names;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub fn ready_bodies(first_id: u64, count: usize) -> Vec<(u64, Vec<u8>)> {
    (first_id..first_id + count as u64)
        .map(|id| {
            (id, bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, id))
        })
        .collect()
}

pub struct Run {
    pub per_second: f64,
    /// When each output arrived, in order.
    outputs: Vec<Instant>,
    latencies: Vec<Duration>,
}

impl Run {
    fn new(events: usize, elapsed: Duration, outputs: impl Iterator<Item = Instant>, latencies: Vec<Duration>) -> Self {
        let mut outputs: Vec<Instant> = outputs.collect();
        outputs.sort();
        Self { per_second: events as f64 / elapsed.as_secs_f64(), outputs, latencies }
    }

    /// Outputs per second with the pipeline full, `in_flight` deliveries at a time: from
    /// the output that ends the first round of in-flight work to the one that ends the
    /// last whole round. Filling and draining are left out, and so is the phase of the
    /// rounds: a backlog taken `in_flight` at a time comes out in waves (every delivery of
    /// a round waits for the same three answers), and a window that starts or ends inside
    /// a wave (say, at the 10th and 90th percentile of output times) over- or undercounts
    /// by up to a wave.
    pub fn steady_per_second(&self, in_flight: usize) -> f64 {
        let rounds = self.outputs.len() / in_flight.max(1);
        if rounds < 2 {
            // Never full for a whole round (a smoke run): the end-to-end rate is all there is.
            return self.per_second;
        }
        let (from, to) = (in_flight.saturating_sub(1), (rounds * in_flight).saturating_sub(1));
        match (self.outputs.get(from), self.outputs.get(to)) {
            (Some(first), Some(last)) if to > from && last > first => {
                (to - from) as f64 / last.duration_since(*first).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    pub fn percentile(&self, p: f64) -> f64 {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }

    pub fn print(&self, label: &str) {
        println!(
            "{label:<44} {:>12.0} {:>10.1} {:>10.1} {:>10.1}",
            self.per_second,
            self.percentile(0.50),
            self.percentile(0.95),
            self.percentile(0.99)
        );
    }
}

/// The broker alone: publish `events` messages, consume with the same prefetch, ack each.
pub async fn broker_floor(connection: &Connection, queue: &str, events: usize) -> anyhow::Result<Run> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(queue.into(), lapin::options::QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel.basic_qos(super::PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = consumer_channel
        .basic_consume(queue.into(), "floor".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let body = bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, 1);
    let started = Instant::now();
    let publisher = {
        let channel = channel.clone();
        let queue = queue.to_owned();
        tokio::spawn(async move {
            let mut sent = Vec::with_capacity(events);
            let mut window = ConfirmWindow::default();
            for i in 0..events {
                let properties = BasicProperties::default().with_delivery_mode(2).with_message_id(i.to_string().into());
                sent.push(Instant::now());
                let confirm = channel
                    .basic_publish("".into(), queue.as_str().into(), Default::default(), &body, properties)
                    .await?;
                window.push(confirm).await?;
            }
            window.drain().await?;
            Ok::<_, lapin::Error>(sent)
        })
    };
    let mut received = Vec::with_capacity(events);
    while received.len() < events {
        let delivery = consumer.next().await.expect("consumer open")?;
        let index: usize = delivery.properties.message_id().as_ref().expect("id").as_str().parse()?;
        received.push((index, Instant::now()));
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let elapsed = started.elapsed();
    let sent = publisher.await??;
    let mut latencies: Vec<Duration> = received.iter().map(|(i, at)| at.duration_since(sent[*i])).collect();
    latencies.sort();
    channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
    Ok(Run::new(events, elapsed, received.iter().map(|(_, at)| *at), latencies))
}

pub fn provision_id(body: &[u8]) -> anyhow::Result<u64> {
    let event: serde_json::Value = serde_json::from_slice(body)?;
    event["provision_id"].as_u64().ok_or_else(|| anyhow::anyhow!("no provision id"))
}

pub fn malformed_id(body: &[u8]) -> anyhow::Result<u64> {
    Ok(std::str::from_utf8(body)?.trim_start_matches("not json ").parse()?)
}

/// Publishes every body to the input exchange and waits for each to come out of
/// `capture` (session-ready events, or dead letters), identified by `id_of`.
pub async fn run_through_worker(
    channel: &Channel,
    connection: &Connection,
    names: &Names,
    capture: &str,
    bodies: Vec<(u64, Vec<u8>)>,
    id_of: fn(&[u8]) -> anyhow::Result<u64>,
    pace: Option<Duration>,
) -> anyhow::Result<Run> {
    let count = bodies.len();
    let expected: std::collections::HashSet<u64> = bodies.iter().map(|(id, _)| *id).collect();
    let consumer_channel = connection.create_channel().await?;
    consumer_channel.basic_qos(500, BasicQosOptions::default()).await?;
    let mut consumer = consumer_channel
        .basic_consume(capture.into(), "bench".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let started = Instant::now();
    let publisher = {
        let channel = channel.clone();
        let exchange = names.input_exchange.clone();
        tokio::spawn(async move {
            let mut sent = HashMap::with_capacity(bodies.len());
            let mut window = ConfirmWindow::default();
            let mut tick = pace.map(|pace| {
                let mut tick = tokio::time::interval(pace);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                tick
            });
            for (id, body) in bodies {
                if let Some(tick) = &mut tick {
                    tick.tick().await;
                }
                sent.insert(id, Instant::now());
                window.push(send_input(&channel, &exchange, &body).await?).await?;
            }
            window.drain().await?;
            Ok::<_, lapin::Error>(sent)
        })
    };
    let mut received = HashMap::with_capacity(count);
    while received.len() < count {
        let delivery =
            tokio::time::timeout(Duration::from_secs(120), consumer.next()).await?.expect("consumer open")?;
        // A body this run did not send (an earlier part's leftover) is passed over.
        if let Some(id) = id_of(&delivery.data).ok().filter(|id| expected.contains(id)) {
            received.entry(id).or_insert_with(Instant::now);
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let elapsed = started.elapsed();
    let sent = publisher.await??;
    let mut latencies: Vec<Duration> = received.iter().map(|(id, at)| at.duration_since(sent[id])).collect();
    latencies.sort();
    consumer_channel.close(200, "done".into()).await?;
    Ok(Run::new(count, elapsed, received.values().copied(), latencies))
}

/// One persistent provision event to the input exchange, confirmed, as upstream sends it.
pub async fn publish_input(channel: &Channel, exchange: &str, body: &[u8]) -> Result<(), lapin::Error> {
    send_input(channel, exchange, body).await?.await?;
    Ok(())
}

/// The same, without waiting for the broker's confirm.
async fn send_input(channel: &Channel, exchange: &str, body: &[u8]) -> Result<PublisherConfirm, lapin::Error> {
    channel
        .basic_publish(
            exchange.into(),
            "partner_user_provision.bench".into(),
            Default::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
}

/// Publisher confirms awaited a window behind the publishes, as a busy upstream publishes:
/// one publish at a time, each waiting for its confirm, would measure the round trip of
/// a confirm (about 1 ms here) instead of the worker or the broker.
#[derive(Default)]
struct ConfirmWindow(std::collections::VecDeque<PublisherConfirm>);

impl ConfirmWindow {
    const SIZE: usize = 64;

    async fn push(&mut self, confirm: PublisherConfirm) -> Result<(), lapin::Error> {
        self.0.push_back(confirm);
        while self.0.len() > Self::SIZE {
            self.0.pop_front().expect("not empty").await?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), lapin::Error> {
        while let Some(confirm) = self.0.pop_front() {
            confirm.await?;
        }
        Ok(())
    }
}
