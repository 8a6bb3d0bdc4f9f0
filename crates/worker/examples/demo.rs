//! `make demo`: the worker's whole job on this machine, with the real binaries.
//!
//! Starts `fake-bunq` and `bunq-session-worker run` as processes against the local
//! RabbitMQ and Redis, publishes provision events (ready, not ready, malformed), shows
//! the session-ready events and the cached sessions (tokens masked), stops both with
//! SIGTERM and removes what it created.

use bunq_session_worker::amqp::topology;
use bunq_protocol::signing::ClientKey;
use bunq_session_worker::cli::publish::{example_body, Example};
use bunq_session_worker::config::ConnectionArgs;
use bunq_session_worker::store::{Keys, Store};
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin_dir = std::env::args()
        .skip_while(|a| a != "--bin-dir")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/debug"));
    require_services().await?;

    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let work = tempfile::tempdir()?;
    let key_path = work.path().join("client_key.pem");
    std::fs::write(&key_path, ClientKey::generate()?.to_pkcs8_pem()?)?;
    let names = ConnectionArgs {
        amqp_url: AMQP_URL.to_owned().into(),
        input_exchange: format!("demo-{run_id}.provisioning"),
        input_queue: format!("demo-{run_id}.provision-status"),
        input_binding_key: "partner_user_provision.#".into(),
        output_exchange: format!("demo-{run_id}.sessions"),
        output_routing_key: "session.ready".into(),
        dead_letter_queue: format!("demo-{run_id}.dead-letter"),
        retry_queue: format!("demo-{run_id}.retry"),
    };
    let prefix = format!("demo-{run_id}:");

    step("starting fake-bunq (the local stand-in for bunq's API)");
    let (mut fake, base_url) = start_fake(&bin_dir).await?;
    println!("    {base_url}");

    // Downstream's view: a queue on the output exchange, declared before anything is published.
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    topology::declare(&channel, &names).await?;
    let watch = format!("demo-{run_id}.notification-filter-setup");
    channel.queue_declare(watch.as_str().into(), Default::default(), FieldTable::default()).await?;
    channel
        .queue_bind(
            watch.as_str().into(),
            names.output_exchange.as_str().into(),
            "session.ready".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    step("starting bunq-session-worker");
    let mut worker = Command::new(bin_dir.join("bunq-session-worker"))
        .arg("run")
        .env("AMQP_URL", AMQP_URL)
        .env("REDIS_URL", REDIS_URL)
        .env("BUNQ_BASE_URL", &base_url)
        .env("BUNQ_CLIENT_PRIVATE_KEY_FILE", &key_path)
        .envs(names.as_env())
        .env("REDIS_KEY_PREFIX", &prefix)
        .env("OPS_ADDR", "127.0.0.1:0")
        // fake-bunq counts rate limits per device, as bunq's newer documentation does.
        .env("RATE_LIMIT_SCOPE", "credential")
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,lapin=warn".into()))
        .env("POD_NAME", format!("demo-{run_id}"))
        .kill_on_drop(true)
        .spawn()?;

    step("publishing provision events: 3 ready, 1 still onboarding, 1 malformed");
    let base = u64::from(rand::random::<u32>()) * 10;
    let events = [
        example_body(Example::Ready, base + 1),
        example_body(Example::Ready, base + 2),
        example_body(Example::Ready, base + 3),
        example_body(Example::NotReady, base + 4),
        example_body(Example::Malformed, base + 5),
    ];
    for body in &events {
        channel
            .basic_publish(
                names.input_exchange.as_str().into(),
                "partner_user_provision.updated".into(),
                Default::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
    }

    step("session-ready events, as notification-filter setup receives them");
    let mut user_ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while user_ids.len() < 3 && Instant::now() < deadline {
        match channel.basic_get(watch.as_str().into(), BasicGetOptions { no_ack: false }).await? {
            Some(message) => {
                message.ack(BasicAckOptions::default()).await?;
                let event: serde_json::Value = serde_json::from_slice(&message.delivery.data)?;
                println!("    {}", serde_json::to_string(&event)?);
                user_ids.push(event["user_id"].as_u64().unwrap_or_default());
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    anyhow::ensure!(user_ids.len() == 3, "expected 3 session-ready events, got {}", user_ids.len());

    step("cached sessions in Redis (tokens masked here; the worker never logs them)");
    let redis = bunq_session_worker::startup::redis_connection(&REDIS_URL.to_owned().into())?;
    let store = Store::new(redis.clone(), Keys::new(&prefix), None);
    for user_id in &user_ids {
        let session = store.read_session(*user_id).await?.ok_or_else(|| anyhow::anyhow!("no session for {user_id}"))?;
        let ttl: i64 = redis::cmd("TTL").arg(store.keys().session(*user_id)).query_async(&mut redis.clone()).await?;
        println!(
            "    {}  session {}  token {}…  expires {}  TTL {} s",
            store.keys().session(*user_id),
            session.session_id,
            &session.session_token.expose_secret()[..6],
            session.expires_at,
            ttl
        );
    }

    step("dead letters (kept with a reason, never dropped)");
    let dead = wait_for_message(&channel, &names.dead_letter_queue, Duration::from_secs(10)).await?;
    println!(
        "    reason={} detail={:?}",
        bunq_session_worker::amqp::headers::get_str(&dead, "x-dead-letter-reason").unwrap_or_default(),
        bunq_session_worker::amqp::headers::get_str(&dead, "x-dead-letter-detail").unwrap_or_default()
    );

    step("stopping with SIGTERM (the worker drains in-flight deliveries first)");
    stop(&mut worker, "bunq-session-worker").await?;
    stop(&mut fake, "fake-bunq").await?;

    // Leave the broker and Redis as we found them.
    for queue in [&names.input_queue, &names.retry_queue, &names.dead_letter_queue, &watch] {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    }
    for exchange in [&names.input_exchange, &names.output_exchange] {
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis.clone()).await?;
    if !keys.is_empty() {
        let () = redis::cmd("DEL").arg(&keys).query_async(&mut redis.clone()).await?;
    }
    connection.close(200, "demo done".into()).await?;
    step("done: 3 sessions opened, cached and announced; 1 skipped; 1 dead-lettered");
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

async fn require_services() -> anyhow::Result<()> {
    let reachable = |port| async move {
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(("127.0.0.1", port)))
            .await
            .is_ok_and(|r| r.is_ok())
    };
    if !reachable(5672).await {
        anyhow::bail!("RabbitMQ is not reachable on 127.0.0.1:5672. Start it with: rabbitmq-server -detached && rabbitmqctl await_startup");
    }
    if !reachable(6379).await {
        anyhow::bail!("Redis is not reachable on 127.0.0.1:6379. Start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no");
    }
    Ok(())
}

async fn start_fake(bin_dir: &std::path::Path) -> anyhow::Result<(Child, String)> {
    let mut fake = Command::new(bin_dir.join("fake-bunq"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = fake.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .ok_or_else(|| anyhow::anyhow!("fake-bunq exited before printing its address"))?;
    let base_url = line.trim_start_matches("fake-bunq listening on ").to_owned();
    Ok((fake, base_url))
}

async fn wait_for_message(channel: &lapin::Channel, queue: &str, timeout: Duration) -> anyhow::Result<BasicProperties> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await? {
            message.ack(BasicAckOptions::default()).await?;
            return Ok(message.delivery.properties.clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "nothing arrived on {queue}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop(child: &mut Child, name: &str) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    }
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait()).await??;
    anyhow::ensure!(status.success(), "{name} exited with {status}");
    println!("    {name} stopped ({status})");
    Ok(())
}
