//! `make demo`: the worker's whole job on this machine, with the real binaries.
//!
//! Starts `fake-bunq` and `bunq-session-worker run` as processes against the local
//! RabbitMQ and Redis, publishes provision events (ready, not ready, malformed, and one
//! whose credential expired, which the worker resets on the partner's own session and
//! then serves), shows the session-ready events and the cached sessions (tokens masked); a downstream
//! (`downstream.rs`) sets each user's notification filters with the cached session, and
//! the demo prints what the stand-in holds; then the partner cancels one provision and
//! the demo shows the session-closed event and the emptied cache. Stops both processes
//! with SIGTERM and removes what it created.
//!
//! The terminal shows only the demo's narrative; each process's log goes to a file the
//! demo names at the start and the end (`target/demo/`, overwritten each run), without
//! colour codes (the worker colours only a terminal).

mod downstream;

use bunq_protocol::signing::ClientKey;
use bunq_session_worker::amqp::topology;
use bunq_session_worker::cli::publish::{example_body, Example};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::BasicProperties;
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use test_support::{
    capture_queue, connect_amqp, connect_redis, publish_input, Cleanup, Leftovers, TestNames, WorkerEnv, AMQP_URL,
    REDIS_URL,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin_dir = std::env::args()
        .skip_while(|a| a != "--bin-dir")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/debug"));
    require_services().await?;
    let logs = Logs::new(&bin_dir)?;
    step("logs of the processes go to files, not here");
    println!("    fake-bunq:           {}", logs.fake.display());
    println!("    bunq-session-worker: {}", logs.worker.display());
    let result = demo(&bin_dir, &logs).await;
    if result.is_err() {
        eprintln!("\nthe demo failed; the processes' logs: {} and {}", logs.worker.display(), logs.fake.display());
    }
    result
}

async fn demo(bin_dir: &std::path::Path, logs: &Logs) -> anyhow::Result<()> {
    let run = TestNames::new("demo");
    let names = &run.topology;
    let work = tempfile::tempdir()?;
    let key_path = work.path().join("client_key.pem");
    let pem = ClientKey::generate()?.to_pkcs8_pem()?;
    std::fs::write(&key_path, &pem)?;
    // The partner's own API key (token resets run on its session) and the key that seals
    // what the worker keeps in Redis.
    let partner_key = work.path().join("partner_api_key");
    std::fs::write(&partner_key, format!("demo-partner-{}", uuid::Uuid::new_v4().simple()))?;
    let seal_key = work.path().join("session.key");
    std::fs::write(&seal_key, hex::encode(rand::random::<[u8; 32]>()))?;

    step("starting fake-bunq (the local stand-in for bunq's API, playing the partner too)");
    let (mut fake, base_url) = start_fake(bin_dir, &logs.fake, &partner_key).await?;
    println!("    {base_url}");

    // Downstream's view: a queue on the output exchange, declared before anything is published.
    let connection = connect_amqp(AMQP_URL).await?;
    let channel = connection.create_channel().await?;
    let watch = run.queue("notification-filter-setup");
    let closed_watch = run.queue("session-closed");
    let leftovers = Leftovers::new(Cleanup::new(&run).queue(&watch).queue(&closed_watch));
    topology::declare(&channel, names).await?;
    capture_queue(&channel, names, &watch, Some("session.ready")).await?;
    capture_queue(&channel, names, &closed_watch, Some("session.closed")).await?;

    step("starting bunq-session-worker");
    // Production's timings, the demo's own key; logs for people.
    let env = WorkerEnv::local(&base_url, &key_path, &run)
        .set("CREDENTIAL_RESET", "on")
        .set("BUNQ_PARTNER_API_KEY_FILE", partner_key.to_str().unwrap_or_default())
        .set("SESSION_ENCRYPTION_KEY_FILE", seal_key.to_str().unwrap_or_default());
    // What the demo reads Redis with: the worker's own settings (its key opens the sealed records).
    let settings = env.settings();
    let env = env
        .set("LOG_FORMAT", "pretty")
        .set("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,lapin=warn".into()));
    let log = std::fs::File::create(&logs.worker)?;
    let mut worker = Command::new(bin_dir.join("bunq-session-worker"))
        .arg("run")
        .envs(env.vars())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;

    step("publishing provision events: 3 ready, 1 whose credential expired in the backlog, 1 still onboarding, 1 malformed");
    let base = u64::from(rand::random::<u32>()) * 10;
    let expired_id = base + 6;
    let expired = register_expired_provision(&base_url, expired_id).await?;
    let events = [
        example_body(Example::Ready, base + 1),
        example_body(Example::Ready, base + 2),
        example_body(Example::Ready, base + 3),
        example_body(Example::NotReady, base + 4),
        example_body(Example::Malformed, base + 5),
        expired,
    ];
    for body in &events {
        publish_input(&channel, names, body, BasicProperties::default()).await?;
    }

    step("session-ready events, as notification-filter setup receives them");
    let mut ready_events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_events.len() < 4 && Instant::now() < deadline {
        match channel.basic_get(watch.as_str().into(), BasicGetOptions { no_ack: false }).await? {
            Some(message) => {
                message.ack(BasicAckOptions::default()).await?;
                let event: serde_json::Value = serde_json::from_slice(&message.delivery.data)?;
                println!("    {}", serde_json::to_string(&event)?);
                ready_events.push(event);
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    anyhow::ensure!(ready_events.len() == 4, "expected 4 session-ready events, got {}", ready_events.len());

    step("the expired credential: the worker asked bunq for a new token on the partner's session, then opened the session with it");
    let shown = fake_admin(&base_url, &format!("provisions/{expired_id}")).await?;
    println!(
        "    provision {expired_id}: {} token reset(s); credential now {} ({}); announced above with its new session",
        shown["token_resets"],
        shown["PartnerUserProvision"]["credential"]["id"],
        shown["PartnerUserProvision"]["credential"]["status"]
    );
    let user_ids: Vec<u64> = ready_events.iter().map(|e| e["user_id"].as_u64().unwrap_or_default()).collect();

    step("cached sessions in Redis (tokens masked here; the worker never logs them)");
    let redis = connect_redis(REDIS_URL)?;
    // Sealed at rest: read with the worker's own key.
    let store = settings.redis.store(redis.clone());
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

    step("downstream sets each user's notification filters with the cached session; the stand-in now holds");
    let downstream = downstream::Downstream::new(&base_url, ClientKey::from_pkcs8_pem(&pem)?, store.clone())?;
    for event in &ready_events {
        let filters = downstream.on_session_ready(event).await?;
        anyhow::ensure!(filters == downstream::wanted(), "the stand-in holds other filters: {filters:?}");
        let listed: Vec<String> =
            filters.iter().map(|f| format!("{} -> {}", f.category, f.notification_target)).collect();
        println!("    user {}: {}", event["user_id"], listed.join(", "));
    }

    step("the partner cancels one provision: the worker ends its session and announces it closed");
    let cancelled = &ready_events[0];
    let provision_id = cancelled["provision_id"].as_u64().unwrap_or_default();
    publish_input(&channel, names, &example_body(Example::Cancelled, provision_id), BasicProperties::default()).await?;
    let closed = wait_for_body(&channel, &closed_watch, Duration::from_secs(20)).await?;
    println!("    {}", serde_json::to_string(&closed)?);
    let user_id = cancelled["user_id"].as_u64().unwrap_or_default();
    // The purge follows the event's confirm: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.read_session(user_id).await?.is_some() {
        anyhow::ensure!(Instant::now() < deadline, "the cancelled provision's session is still cached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("    {}: empty (the session is gone from the cache)", store.keys().session(user_id));

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
    leftovers.clean().await?;
    connection.close(200, "demo done".into()).await?;
    step("done: 4 sessions opened (1 after a token reset), cached and announced, their notification filters set; 1 closed; 1 skipped; 1 dead-lettered");
    println!("    logs: {} and {}", logs.worker.display(), logs.fake.display());
    Ok(())
}

/// Where each process's log goes: `demo/` next to the binaries' profile directory.
struct Logs {
    worker: PathBuf,
    fake: PathBuf,
}

impl Logs {
    fn new(bin_dir: &std::path::Path) -> anyhow::Result<Self> {
        let dir = bin_dir.parent().unwrap_or(bin_dir).join("demo");
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        Ok(Self { worker: dir.join("bunq-session-worker.log"), fake: dir.join("fake-bunq.log") })
    }
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

/// A provision the stand-in holds whose credential expired a minute ago, and the event
/// that reached the worker too late for it (bunq's credential id, expired token).
async fn register_expired_provision(base_url: &str, id: u64) -> anyhow::Result<Vec<u8>> {
    let token = test_support::random_token();
    let expiry = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let registered = fake_admin_post(
        base_url,
        "provisions",
        serde_json::json!({
            "id": id, "token_value": token, "expiry_time": bunq_timestamp(expiry),
        }),
    )
    .await?;
    let credential = registered["PartnerUserProvision"]["credential"]["id"].as_u64().unwrap_or_default();
    Ok(test_support::ready_body_with(id, credential, &token, &test_support::expiry_in(time::Duration::minutes(-1))))
}

fn bunq_timestamp(at: time::OffsetDateTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]");
    at.format(&format).unwrap_or_default()
}

/// The stand-in's admin API (`/_fake/…`, beside `/v1`).
async fn fake_admin(base_url: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}/_fake/{path}", base_url.trim_end_matches("/v1"));
    Ok(serde_json::from_slice(&reqwest::get(url).await?.error_for_status()?.bytes().await?)?)
}

async fn fake_admin_post(base_url: &str, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}/_fake/{path}", base_url.trim_end_matches("/v1"));
    let request = reqwest::Client::new().post(url).header("content-type", "application/json");
    let response = request.body(serde_json::to_vec(&body)?).send().await?.error_for_status()?;
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}

async fn start_fake(
    bin_dir: &std::path::Path,
    log: &std::path::Path,
    partner_key: &std::path::Path,
) -> anyhow::Result<(Child, String)> {
    let mut fake = Command::new(bin_dir.join("fake-bunq"))
        .args(["--listen", "127.0.0.1:0", "--token-reset-delay-ms", "1000"])
        .arg("--partner-api-key-file")
        .arg(partner_key)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
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

async fn wait_for_body(channel: &lapin::Channel, queue: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await? {
            message.ack(BasicAckOptions::default()).await?;
            return Ok(serde_json::from_slice(&message.delivery.data)?);
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
