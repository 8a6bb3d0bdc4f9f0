//! `make bench`: what the worker costs, each figure beside a baseline measured in the
//! same run on the same machine.
//!
//! 1. Decode + decide per event, against parsing the same body into `serde_json::Value`.
//! 2. End to end through the real worker process (release build) against the machine's
//!    RabbitMQ and Redis and an in-process fake-bunq without added latency: sessions per
//!    second and publish→session-ready latency, against the broker's own floor: the same
//!    number of messages published, consumed with the same prefetch and acked, no work.
//! 3. The repeat path (session already cached: no bunq call), against the same floor.
//! 4. Worker memory: resident set when idle, and the peak during the runs.

use bunq_session_worker::amqp::topology::{self, Names};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use test_support::{
    capture_queue, connect_amqp, fake_allowing, free_port, ops, Cleanup, Leftovers, TestNames, WorkerEnv, AMQP_URL,
    CLIENT_KEY,
};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");
const EVENTS: usize = 2000;
const PREFETCH: u16 = 32;
/// Neither fake-bunq nor the worker's limiter may be what is measured.
const UNLIMITED: u32 = 1_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!(
        "bunq-session-worker benchmark: {EVENTS} events, prefetch {PREFETCH}, {} cores",
        std::thread::available_parallelism()?
    );
    decode_benchmark();

    let run = TestNames::new("bench");
    let names = &run.topology;
    let connection = connect_amqp(AMQP_URL).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let (capture, floor_queue) = (run.queue("capture"), run.queue("floor"));
    let leftovers = Leftovers::new(Cleanup::new(&run).queue(&capture).queue(&floor_queue));
    topology::declare(&channel, names).await?;
    capture_queue(&channel, names, &capture, Some("#")).await?;

    // Baseline first: the broker alone.
    let floor = broker_floor(&connection, &floor_queue).await?;

    let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, fake_allowing(UNLIMITED)).await?;
    let ops_port = free_port();
    let env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, &run)
        .set("OPS_ADDR", format!("127.0.0.1:{ops_port}"))
        .set("PREFETCH", PREFETCH.to_string())
        .allowing(UNLIMITED)
        .set("LOG_FORMAT", "json")
        .set("RUST_LOG", "error"); // the dead-letter run would print a warning per event
    let mut worker = tokio::process::Command::new(BIN).arg("run").envs(env.vars()).kill_on_drop(true).spawn()?;
    let pid = worker.id().expect("running");
    anyhow::ensure!(
        ops::wait_ready(SocketAddr::from(([127, 0, 0, 1], ops_port)), Duration::from_secs(20)).await,
        "worker not ready"
    );
    let idle_rss = memory_kib(pid, "VmRSS")?;

    let bodies: Vec<(u64, Vec<u8>)> = (0..EVENTS as u64)
        .map(|i| {
            let id = 10_000_000 + i;
            (id, bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, id))
        })
        .collect();
    let fresh = run_through_worker(&channel, &connection, names, &capture, &bodies, provision_id).await?;
    let repeat = run_through_worker(&channel, &connection, names, &capture, &bodies, provision_id).await?;
    // Undecodable bodies: each is moved to the dead-letter queue, its copy and its ack in
    // one transaction (group-committed).
    let malformed: Vec<(u64, Vec<u8>)> =
        (0..EVENTS as u64).map(|i| (i, format!("not json {i}").into_bytes())).collect();
    let dead =
        run_through_worker(&channel, &connection, names, &names.dead_letter_queue, &malformed, malformed_id).await?;
    let peak_rss = memory_kib(pid, "VmHWM")?;

    println!();
    println!("{:<44} {:>12} {:>10} {:>10} {:>10}", "end to end (same run)", "events/s", "p50 ms", "p95 ms", "p99 ms");
    floor.print("baseline: broker publish→consume→ack");
    fresh.print("worker, new sessions (3 signed bunq calls)");
    repeat.print("worker, cached sessions (no bunq call)");
    dead.print("worker, malformed → dead letter (confirm)");
    println!(
        "\nnew-session throughput is {:.1}% of the broker floor; cached path {:.1}%; dead-letter path {:.1}%",
        100.0 * fresh.per_second / floor.per_second,
        100.0 * repeat.per_second / floor.per_second,
        100.0 * dead.per_second / floor.per_second
    );
    println!(
        "\nworker memory: idle RSS {} KiB (baseline), peak RSS {} KiB during all runs (+{} KiB)",
        idle_rss,
        peak_rss,
        peak_rss.saturating_sub(idle_rss)
    );
    let calls = fake.stats();
    println!("fake-bunq answered: {:?}", calls.calls_per_endpoint);

    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    worker.wait().await?;
    leftovers.clean().await?;
    fake.shutdown().await;
    Ok(())
}

struct Run {
    per_second: f64,
    latencies: Vec<Duration>,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }

    fn print(&self, label: &str) {
        println!(
            "{label:<44} {:>12.0} {:>10.1} {:>10.1} {:>10.1}",
            self.per_second,
            self.percentile(0.50),
            self.percentile(0.95),
            self.percentile(0.99)
        );
    }
}

fn decode_benchmark() {
    let bodies: Vec<Vec<u8>> = (0..20_000u64)
        .map(|i| bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, i))
        .collect();
    let now = time::OffsetDateTime::now_utc();
    let time_it = |f: &dyn Fn(&[u8]) -> bool| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            let acted = bodies.iter().filter(|b| f(b)).count();
            assert_eq!(acted, bodies.len());
            best = best.min(started.elapsed().as_nanos() as f64 / bodies.len() as f64);
        }
        best
    };
    let baseline = time_it(&|b| serde_json::from_slice::<serde_json::Value>(b).is_ok());
    let ours = time_it(&|b| {
        let provision = bunq_session_worker::event::decode(b, 1 << 20).expect("valid");
        matches!(bunq_session_worker::decide::decide(provision, now), bunq_session_worker::decide::Decision::Act(_))
    });
    println!("\n{:<44} {:>12}", "decode (best of 5, 20000 webhook bodies)", "ns/event");
    println!("{:<44} {:>12.0}", "baseline: serde_json::Value parse", baseline);
    println!("{:<44} {:>12.0}", "event::decode + decide::decide", ours);
}

/// The broker alone: publish EVENTS messages, consume with the same prefetch, ack each.
async fn broker_floor(connection: &Connection, queue: &str) -> anyhow::Result<Run> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(queue.into(), lapin::options::QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = consumer_channel
        .basic_consume(queue.into(), "floor".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let body = bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, 1);
    let started = Instant::now();
    let publisher = {
        let channel = channel.clone();
        let queue = queue.to_owned();
        tokio::spawn(async move {
            let mut sent = Vec::with_capacity(EVENTS);
            for i in 0..EVENTS {
                let properties = BasicProperties::default().with_delivery_mode(2).with_message_id(i.to_string().into());
                sent.push(Instant::now());
                channel
                    .basic_publish("".into(), queue.as_str().into(), Default::default(), &body, properties)
                    .await?
                    .await?;
            }
            Ok::<_, lapin::Error>(sent)
        })
    };
    let mut received = Vec::with_capacity(EVENTS);
    while received.len() < EVENTS {
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
    Ok(Run { per_second: EVENTS as f64 / elapsed.as_secs_f64(), latencies })
}

fn provision_id(body: &[u8]) -> anyhow::Result<u64> {
    let event: serde_json::Value = serde_json::from_slice(body)?;
    event["provision_id"].as_u64().ok_or_else(|| anyhow::anyhow!("no provision id"))
}

fn malformed_id(body: &[u8]) -> anyhow::Result<u64> {
    Ok(std::str::from_utf8(body)?.trim_start_matches("not json ").parse()?)
}

/// Publishes every body to the input exchange and waits for each to come out of
/// `capture` (session-ready events, or dead letters), identified by `id_of`.
async fn run_through_worker(
    channel: &Channel,
    connection: &Connection,
    names: &Names,
    capture: &str,
    bodies: &[(u64, Vec<u8>)],
    id_of: fn(&[u8]) -> anyhow::Result<u64>,
) -> anyhow::Result<Run> {
    let consumer_channel = connection.create_channel().await?;
    consumer_channel.basic_qos(500, BasicQosOptions::default()).await?;
    let mut consumer = consumer_channel
        .basic_consume(capture.into(), "bench".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let started = Instant::now();
    let publisher = {
        let channel = channel.clone();
        let exchange = names.input_exchange.clone();
        let bodies = bodies.to_vec();
        tokio::spawn(async move {
            let mut sent = HashMap::with_capacity(bodies.len());
            for (id, body) in bodies {
                sent.insert(id, Instant::now());
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "partner_user_provision.bench".into(),
                        Default::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
            }
            Ok::<_, lapin::Error>(sent)
        })
    };
    let mut received = HashMap::with_capacity(bodies.len());
    while received.len() < bodies.len() {
        let delivery =
            tokio::time::timeout(Duration::from_secs(120), consumer.next()).await?.expect("consumer open")?;
        received.entry(id_of(&delivery.data)?).or_insert_with(Instant::now);
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let elapsed = started.elapsed();
    let sent = publisher.await??;
    let mut latencies: Vec<Duration> = received.iter().map(|(id, at)| at.duration_since(sent[id])).collect();
    latencies.sort();
    consumer_channel.close(200, "done".into()).await?;
    Ok(Run { per_second: bodies.len() as f64 / elapsed.as_secs_f64(), latencies })
}

/// A field of /proc/PID/status in KiB (VmRSS now, VmHWM the peak).
fn memory_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad {field}"))?.parse()?)
}
