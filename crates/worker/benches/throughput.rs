//! `make bench`: what the worker costs, each figure beside its baseline or limit, all
//! measured in the same run on the same machine; a table on stdout and the figures as
//! flat keys in `target/bench/report.json` (README, "Benchmarks").
//!
//! 1. Decode + decide per event, against parsing the same body into `serde_json::Value`.
//! 2. The crypto floor: the RSA-2048 private-key operations one new session costs (two
//!    request signatures by the worker, three response signatures by the stand-in), timed
//!    with the same library on every core: the rate signing alone would allow.
//! 3. End to end through the real worker process (release build) against the machine's
//!    RabbitMQ and Redis and an in-process fake-bunq without added latency: new sessions,
//!    cached sessions and dead letters per second, against the broker's own floor (the
//!    same number of messages published, consumed with the same prefetch and acked) and
//!    the new-session rate against the crypto floor.
//! 4. Latency at half the unconstrained new-session rate, publish → session-ready, minus
//!    the stand-in's own time per session.
//! 5. Slow bunq: 300 ms added to every answer, prefetch 256, against the concurrency
//!    bound prefetch / (3 × 0.3 s); the worker's peak memory is measured here.
//! 6. Shared limit: four worker processes on one queue, session-server budget 20/s shared
//!    through Redis, the stand-in enforcing the same limit per IP, a backlog of 1,000:
//!    calls per second against the budget, and the 429s the stand-in answered.
//!
//! 7. Backlog: four processes, budget 10 session-server calls/s, credentials expiring 30 s
//!    after they are published, a backlog of three times what the budget serves in 30 s:
//!    sessions opened before expiry against the possible, the rest dead-lettered
//!    `credential_expired` (how soon), retry-queue trips and broker messages per provision.
//! 8. Churn: 50,000 credentials (60 s life) behind a budget of 2 calls/s: what waiting costs
//!    the broker, in messages per provision (an input, its output, and retry trips).
//!
//! `BENCH_SMOKE=1` runs every part with tiny sizes (the test suite does, so the harness
//! cannot rot); its report goes to `target/bench/report-smoke.json` and says nothing
//! about speed.

#[path = "support/backlog.rs"]
mod backlog;
#[path = "support/cpu.rs"]
mod cpu;

use bunq_session_worker::amqp::topology::{self, Names};
use fake_bunq::FakeConfig;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use test_support::{
    capture_queue, connect_amqp, fake_allowing, free_port, ops, Cleanup, Leftovers, TestNames, WorkerEnv, AMQP_URL,
    CLIENT_KEY,
};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");
/// A single worker's prefetch in every run, bunq slow or not: enough in flight to keep
/// both cores busy between its three calls, as the slow-bunq figure requires.
const PREFETCH: u16 = 256;
/// Each of the several worker processes sharing one session-server budget.
const SHARED_PREFETCH: u16 = 32;
const SLOW_LATENCY: Duration = Duration::from_millis(300);
const SHARED_BUDGET: u32 = 20;
const SHARED_WORKERS: usize = 4;
/// Neither fake-bunq nor the worker's limiter may be what is measured.
const UNLIMITED: u32 = 1_000_000;
/// Private-key signatures per new session: device-server and session-server requests
/// (the worker), installation, device-server and session-server answers (the stand-in).
const SIGNATURES_PER_SESSION: f64 = 5.0;

/// How much of everything: the bench proper, or the smoke run of the test suite.
#[derive(Clone, Copy)]
struct Sizes {
    events: usize,
    slow_events: usize,
    shared_backlog: usize,
    crypto_seconds: f64,
    /// The backlog scenario's credential life.
    backlog_window: Duration,
    /// The churn scenario's backlog and credential life.
    churn_backlog: usize,
    churn_window: Duration,
}

impl Sizes {
    fn from_env() -> (Self, bool) {
        let smoke = std::env::var_os("BENCH_SMOKE").is_some_and(|v| v == "1");
        let sizes = if smoke {
            Sizes {
                events: 40,
                slow_events: 40,
                shared_backlog: 30,
                crypto_seconds: 0.2,
                backlog_window: Duration::from_secs(4),
                churn_backlog: 300,
                churn_window: Duration::from_secs(3),
            }
        } else {
            Sizes {
                events: 6000,
                slow_events: 2000,
                shared_backlog: 1000,
                crypto_seconds: 3.0,
                backlog_window: Duration::from_secs(30),
                churn_backlog: 50_000,
                churn_window: Duration::from_secs(60),
            }
        };
        (sizes, smoke)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (sizes, smoke) = Sizes::from_env();
    let cores = std::thread::available_parallelism()?.get();
    println!(
        "bunq-session-worker benchmark{}: {} events, prefetch {PREFETCH} ({SHARED_PREFETCH} per process where \
         several share a budget), {cores} cores",
        if smoke { " (smoke run: sizes too small to mean anything)" } else { "" },
        sizes.events
    );
    if let Some(out) = std::env::var_os("BENCH_PROFILE") {
        return profile(std::path::Path::new(&out)).await;
    }
    let mut report = Report::default();
    decode_benchmark(&mut report, smoke);
    let signatures_per_second = crypto_floor(cores, sizes.crypto_seconds)?;
    let crypto_floor = signatures_per_second / SIGNATURES_PER_SESSION;
    report.set("crypto_signatures_per_s", signatures_per_second);
    report.set("crypto_floor_events_per_s", crypto_floor);

    let run = TestNames::new("bench");
    let names = &run.topology;
    let connection = connect_amqp(AMQP_URL).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let (capture, floor_queue) = (run.queue("capture"), run.queue("floor"));
    let leftovers = Leftovers::new(Cleanup::new(&run).queue(&capture).queue(&floor_queue));
    topology::declare(&channel, names).await?;
    capture_queue(&channel, names, &capture, Some("#")).await?;
    let deadline_scenario = backlog::Scenario {
        budget: 10,
        workers: 4,
        window: sizes.backlog_window,
        backlog: 3 * 10 * sizes.backlog_window.as_secs() as usize,
        first_id: 50_000_000,
    };
    // A big backlog behind a tiny budget: what waiting costs the broker.
    let churn_scenario = backlog::Scenario {
        budget: 2,
        workers: 4,
        window: sizes.churn_window,
        backlog: sizes.churn_backlog,
        first_id: 60_000_000,
    };
    if let Some(slow) = std::env::var("BENCH_ONLY").ok().and_then(|only| match only.as_str() {
        "new" => Some(false),
        "slow" => Some(true),
        _ => None,
    }) {
        // Iterating on the new-session path (or with bunq slow): that run alone, with its
        // CPU, nothing written.
        let latency_ms = if slow { SLOW_LATENCY.as_millis() as u64 } else { 0 };
        let config =
            FakeConfig { faults: fake_bunq::Faults { latency_ms, ..Default::default() }, ..fake_allowing(UNLIMITED) };
        let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, config).await?;
        let env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, &run).allowing(UNLIMITED);
        let prefetch = std::env::var("BENCH_PREFETCH").ok().and_then(|p| p.parse().ok()).unwrap_or(PREFETCH);
        let worker = BenchWorker::start(&env, prefetch).await?;
        let meter = cpu_meter(&worker);
        let fresh = run_through_worker(
            &channel,
            &connection,
            names,
            &capture,
            ready_bodies(10_000_000, sizes.events),
            provision_id,
            None,
        )
        .await?;
        let usage = meter.stop(cores);
        fresh.print(&format!("new sessions, prefetch {prefetch}, bunq +{latency_ms} ms"));
        let steady = fresh.steady_per_second(prefetch.into());
        let against = if slow {
            let bound = f64::from(prefetch) / (3.0 * SLOW_LATENCY.as_secs_f64());
            format!("{:.3} of the slow-bunq bound ({bound:.0}/s)", steady / bound)
        } else {
            format!("{:.3} of the crypto floor ({crypto_floor:.0}/s)", steady / crypto_floor)
        };
        println!(
            "steady {steady:.0}/s = {against}; {:.0}% of {cores} cores busy; CPU ms per session: {}",
            100.0 * usage.busy(),
            usage.describe(sizes.events)
        );
        worker.stop().await?;
        fake.shutdown().await;
        leftovers.clean().await?;
        return Ok(());
    }
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        // Iterating on the budget: one backlog scenario alone, nothing written.
        let scenario = if only == "churn" { &churn_scenario } else { &deadline_scenario };
        let outcome = backlog::run(scenario, &connection, &channel, names, &capture, &run).await?;
        println!("{outcome:?}\nserved before expiry / possible: {:.3}", outcome.served_ratio());
        leftovers.clean().await?;
        return Ok(());
    }
    let through = |bodies: Vec<(u64, Vec<u8>)>, pace: Option<Duration>| {
        run_through_worker(&channel, &connection, names, &capture, bodies, provision_id, pace)
    };

    // Baseline first: the broker alone.
    let floor = broker_floor(&connection, &floor_queue, sizes.events).await?;

    // Unconstrained: no latency, no limits.
    let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, fake_allowing(UNLIMITED)).await?;
    let env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, &run).allowing(UNLIMITED);
    let worker = BenchWorker::start(&env, PREFETCH).await?;
    let idle_rss = memory_kib(worker.pid, "VmRSS")?;
    let bodies = ready_bodies(10_000_000, sizes.events);
    let meter = cpu_meter(&worker);
    let fresh = through(bodies.clone(), None).await?;
    let fresh_cpu = meter.stop(cores);
    // The same bodies again: same credentials, so every session is found cached.
    let repeat = through(bodies, None).await?;
    // Undecodable bodies: each is moved to the dead-letter queue (confirmed copy, then ack).
    let malformed: Vec<(u64, Vec<u8>)> =
        (0..sizes.events as u64).map(|i| (i, format!("not json {i}").into_bytes())).collect();
    let dead =
        run_through_worker(&channel, &connection, names, &names.dead_letter_queue, malformed, malformed_id, None)
            .await?;

    // Latency at half the unconstrained rate, less the stand-in's own time per session.
    fake.clear_calls();
    // The sustained rate, without the pipeline's filling and draining.
    let fresh_steady = fresh.steady_per_second(PREFETCH.into());
    let half_rate = fresh_steady / 2.0;
    let paced = through(ready_bodies(20_000_000, sizes.events), Some(Duration::from_secs_f64(1.0 / half_rate))).await?;
    let stand_in_ms = fake.calls().iter().map(|c| c.handled_us as f64).sum::<f64>() / 1000.0 / sizes.events as f64;
    worker.stop().await?;
    fake.shutdown().await;

    // Slow bunq: every answer 300 ms late, prefetch 256; the peak memory of this worker.
    let slow_fake = FakeConfig {
        faults: fake_bunq::Faults { latency_ms: SLOW_LATENCY.as_millis() as u64, ..Default::default() },
        ..fake_allowing(UNLIMITED)
    };
    let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, slow_fake).await?;
    let env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, &run).allowing(UNLIMITED);
    let worker = BenchWorker::start(&env, PREFETCH).await?;
    let slow = through(ready_bodies(30_000_000, sizes.slow_events), None).await?;
    let peak_rss = memory_kib(worker.pid, "VmHWM")?;
    worker.stop().await?;
    fake.shutdown().await;
    let slow_bound = f64::from(PREFETCH) / (3.0 * SLOW_LATENCY.as_secs_f64());

    // Shared limit: four processes, one budget of 20 session-server calls per second.
    let limited = FakeConfig {
        rate_limit_scope: fake_bunq::RateLimitScope::Ip,
        session_server_limit: (SHARED_BUDGET, Duration::from_secs(1)),
        other_post_limit: (UNLIMITED, Duration::from_secs(1)),
        ..FakeConfig::default()
    };
    let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, limited).await?;
    let env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, &run)
        .allowing(UNLIMITED)
        .set("RATE_LIMIT_SESSION_SERVER", format!("{SHARED_BUDGET}/1s"))
        .set("RATE_LIMIT_SCOPE", "global")
        .set("REDIS_KEY_PREFIX", format!("{}shared:", run.key_prefix));
    let mut workers = Vec::new();
    for _ in 0..SHARED_WORKERS {
        workers.push(BenchWorker::start(&env, SHARED_PREFETCH).await?);
    }
    through(ready_bodies(40_000_000, sizes.shared_backlog), None).await?;
    let calls: Vec<_> = fake.calls().into_iter().filter(|c| c.endpoint == fake_bunq::Endpoint::SessionServer).collect();
    let answered: Vec<_> = calls.iter().filter(|c| c.status == Some(200)).map(|c| c.received).collect();
    let rejected = calls.iter().filter(|c| c.status == Some(429)).count();
    let (first, last) = (answered.iter().min().copied(), answered.iter().max().copied());
    let span = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    // n calls spread over n − 1 intervals of the budget.
    let achieved = if span > 0.0 { (answered.len() - 1) as f64 / span } else { 0.0 };
    for worker in workers {
        worker.stop().await?;
    }
    fake.shutdown().await;

    // Backlog: more credentials than the budget serves before they expire.
    let scenario = &deadline_scenario;
    let backlog = backlog::run(scenario, &connection, &channel, names, &capture, &run).await?;
    let churn = backlog::run(&churn_scenario, &connection, &channel, names, &capture, &run).await?;
    let served_ratio = backlog.served_ratio();
    let expected_dead = backlog.backlog - backlog.sessions_announced;
    let all_expired = backlog.dead_letters.get("credential_expired").copied().unwrap_or(0) == expected_dead
        && backlog.dead_letters.values().sum::<usize>() == expected_dead;

    let rows = [
        (
            "new-session rate / crypto floor",
            fresh_steady / crypto_floor,
            ">= 0.70",
            fresh_steady / crypto_floor >= 0.70,
        ),
        (
            "slow bunq steady rate / prefetch bound",
            slow.steady_per_second(PREFETCH.into()) / slow_bound,
            ">= 0.90",
            slow.steady_per_second(PREFETCH.into()) / slow_bound >= 0.90,
        ),
        (
            "p99 latency overhead at half rate (ms)",
            paced.percentile(0.99) - stand_in_ms,
            "<= 20",
            paced.percentile(0.99) - stand_in_ms <= 20.0,
        ),
        (
            "shared limit: calls/s / budget",
            achieved / f64::from(SHARED_BUDGET),
            ">= 0.95",
            achieved / f64::from(SHARED_BUDGET) >= 0.95,
        ),
        ("shared limit: 429s from the stand-in", rejected as f64, "0", rejected == 0),
        ("backlog: served before expiry / possible", served_ratio, ">= 0.99", served_ratio >= 0.99),
        ("backlog: 429s from the stand-in", backlog.rejected_429 as f64, "0", backlog.rejected_429 == 0),
        ("backlog: the rest dead-lettered credential_expired", expected_dead as f64, "all", all_expired),
        (
            "backlog: retry-queue trips per provision",
            backlog.retry_trips_per_provision,
            "<= 2",
            backlog.retry_trips_per_provision <= 2.0,
        ),
        (
            "churn: broker messages per provision",
            churn.broker_messages_per_provision,
            "<= 3",
            churn.broker_messages_per_provision <= 3.0,
        ),
        ("idle RSS (MiB)", idle_rss as f64 / 1024.0, "<= 20", idle_rss as f64 / 1024.0 <= 20.0),
        ("peak RSS at prefetch 256 (MiB)", peak_rss as f64 / 1024.0, "<= 100", peak_rss as f64 / 1024.0 <= 100.0),
    ];

    println!();
    println!("{:<44} {:>12} {:>10} {:>10} {:>10}", "end to end (same run)", "events/s", "p50 ms", "p95 ms", "p99 ms");
    floor.print("baseline: broker publish→consume→ack");
    fresh.print("worker, new sessions (3 signed bunq calls)");
    repeat.print("worker, cached sessions (no bunq call)");
    dead.print("worker, malformed → dead letter (confirm)");
    paced.print(&format!("new sessions paced at {half_rate:.0}/s (half)"));
    slow.print("new sessions, bunq +300 ms, prefetch 256");
    println!(
        "
new-session throughput is {:.1}% of the broker floor; cached path {:.1}%; dead-letter path {:.1}%",
        100.0 * fresh.per_second / floor.per_second,
        100.0 * repeat.per_second / floor.per_second,
        100.0 * dead.per_second / floor.per_second
    );
    // Where the CPU went: signing's share of it is what the crypto floor counts.
    let signing_ms = SIGNATURES_PER_SESSION * cores as f64 / signatures_per_second * 1000.0;
    let per_session = fresh_cpu.ms_per_event(sizes.events);
    println!(
        "new sessions: steady {fresh_steady:.0}/s (end to end {:.0}/s, with the filling and draining); {:.0}% of \
         {cores} cores busy; CPU per session {:.2} ms ({}), of which signing {signing_ms:.2} ms",
        fresh.per_second,
        100.0 * fresh_cpu.busy(),
        fresh_cpu.total() * 1000.0 / sizes.events as f64,
        fresh_cpu.describe(sizes.events),
    );
    println!(
        "crypto floor: {signatures_per_second:.0} RSA-2048 signatures/s on {cores} cores = {crypto_floor:.0} sessions/s; \
         slow-bunq bound {slow_bound:.0}/s, steady rate {:.0}/s (end to end {:.0}/s: the first sessions take 0.9 s to come out); stand-in time {stand_in_ms:.2} ms per session; \
         shared limit {achieved:.2} calls/s over {span:.1} s ({} answered)",
        slow.steady_per_second(PREFETCH.into()),
        slow.per_second,
        answered.len()
    );
    println!(
        "backlog: {} credentials expiring {:.0} s after publish, budget {}/s over {} processes: {} sessions opened \
         before expiry of {:.0} possible, dead letters {:?} (publish → dead letter p50 {:.2} s, p99 {:.2} s); \
         {:.2} retry trips and {:.2} broker messages per provision",
        backlog.backlog,
        scenario.window.as_secs_f64(),
        scenario.budget,
        scenario.workers,
        backlog.served_before_expiry,
        backlog.possible,
        backlog.dead_letters,
        backlog.dead_letter_p50.as_secs_f64(),
        backlog.dead_letter_p99.as_secs_f64(),
        backlog.retry_trips_per_provision,
        backlog.broker_messages_per_provision,
    );
    println!(
        "churn: {} credentials expiring {:.0} s after publish behind a budget of {}/s: {} served, dead letters {:?} \
         (p50 {:.2} s after publish); {:.3} retry trips and {:.2} broker messages per provision",
        churn.backlog,
        churn_scenario.window.as_secs_f64(),
        churn_scenario.budget,
        churn.served_before_expiry,
        churn.dead_letters,
        churn.dead_letter_p50.as_secs_f64(),
        churn.retry_trips_per_provision,
        churn.broker_messages_per_provision,
    );
    println!(
        "
{:<44} {:>12} {:>10} {:>6}",
        "figure against its limit (same run)", "value", "target", "met"
    );
    for (label, value, target, met) in rows {
        println!("{label:<44} {value:>12.3} {target:>10} {:>6}", if met { "yes" } else { "NO" });
    }

    report.run("broker_floor", &floor);
    report.run("new_session", &fresh);
    report.run("cached_session", &repeat);
    report.run("dead_letter", &dead);
    report.run("paced", &paced);
    report.run("slow_bunq", &slow);
    report.set("new_session_steady_events_per_s", fresh_steady);
    report.set("crypto_floor_ratio", fresh_steady / crypto_floor);
    report.set("new_session_cpu_busy", fresh_cpu.busy());
    report.set("new_session_signing_cpu_ms", signing_ms);
    report.set("new_session_cpu_kernel_share", fresh_cpu.system_share());
    for (name, ms, _) in &per_session {
        report.set(&format!("new_session_cpu_ms_{}", name.split_whitespace().next().unwrap_or(name)), *ms);
    }
    report.set("slow_bunq_bound_events_per_s", slow_bound);
    report.set("slow_bunq_steady_events_per_s", slow.steady_per_second(PREFETCH.into()));
    report.set("slow_bunq_ratio", slow.steady_per_second(PREFETCH.into()) / slow_bound);
    report.set("stand_in_ms_per_session", stand_in_ms);
    report.set("latency_overhead_p50_ms", paced.percentile(0.50) - stand_in_ms);
    report.set("latency_overhead_p95_ms", paced.percentile(0.95) - stand_in_ms);
    report.set("latency_overhead_p99_ms", paced.percentile(0.99) - stand_in_ms);
    report.set("shared_limit_calls_per_s", achieved);
    report.set("shared_limit_ratio", achieved / f64::from(SHARED_BUDGET));
    report.set("shared_limit_429s", rejected as f64);
    report.set("served_before_expiry_ratio", served_ratio);
    report.set("backlog_served_before_expiry", backlog.served_before_expiry as f64);
    report.set("backlog_possible", backlog.possible);
    report.set("backlog_429s", backlog.rejected_429 as f64);
    report
        .set("backlog_credential_expired", backlog.dead_letters.get("credential_expired").copied().unwrap_or(0) as f64);
    report.set("backlog_dead_letter_p50_s", backlog.dead_letter_p50.as_secs_f64());
    report.set("backlog_dead_letter_p99_s", backlog.dead_letter_p99.as_secs_f64());
    report.set("backlog_retry_trips_per_provision", backlog.retry_trips_per_provision);
    report.set("backlog_broker_messages_per_provision", backlog.broker_messages_per_provision);
    report.set("churn_backlog", churn.backlog as f64);
    report.set("churn_served_before_expiry", churn.served_before_expiry as f64);
    report.set("churn_dead_letter_p50_s", churn.dead_letter_p50.as_secs_f64());
    report.set("churn_retry_trips_per_provision", churn.retry_trips_per_provision);
    report.set("churn_broker_messages_per_provision", churn.broker_messages_per_provision);
    report.set("idle_rss_mib", idle_rss as f64 / 1024.0);
    report.set("peak_rss_mib", peak_rss as f64 / 1024.0);
    let path = report.write(smoke)?;
    println!(
        "
report: {}",
        path.display()
    );
    leftovers.clean().await?;
    Ok(())
}

/// Flat `name → number` figures, written as JSON.
#[derive(Default)]
struct Report(std::collections::BTreeMap<String, f64>);

impl Report {
    fn set(&mut self, key: &str, value: f64) {
        self.0.insert(key.to_owned(), value);
    }

    fn run(&mut self, prefix: &str, run: &Run) {
        self.set(&format!("{prefix}_events_per_s"), run.per_second);
        for (name, p) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)] {
            self.set(&format!("{prefix}_{name}_ms"), run.percentile(p));
        }
    }

    fn write(&self, smoke: bool) -> anyhow::Result<std::path::PathBuf> {
        anyhow::ensure!(self.0.values().all(|v| v.is_finite()), "a figure is not a number: {:?}", self.0);
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let dir = target.join("bench");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(if smoke { "report-smoke.json" } else { "report.json" });
        std::fs::write(&path, serde_json::to_string_pretty(&self.0)? + "\n")?;
        Ok(path)
    }
}

/// `BENCH_PROFILE=<file>` (`make profile`): the new-session path only, the worker under
/// callgrind, instructions counted from readiness until `PROFILE_SESSIONS` (300) sessions
/// are announced, written to `<file>`.
async fn profile(out: &std::path::Path) -> anyhow::Result<()> {
    let sessions: usize = std::env::var("PROFILE_SESSIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    let run = TestNames::new("bench");
    let names = &run.topology;
    let connection = connect_amqp(AMQP_URL).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let capture = run.queue("capture");
    let leftovers = Leftovers::new(Cleanup::new(&run).queue(&capture));
    topology::declare(&channel, names).await?;
    capture_queue(&channel, names, &capture, Some("#")).await?;
    let fake = fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, fake_allowing(UNLIMITED)).await?;
    // Under callgrind everything is ~50 times slower: generous timeouts, few in flight.
    let env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, &run)
        .allowing(UNLIMITED)
        .set("BUNQ_REQUEST_TIMEOUT_MS", "120000")
        .set("RETRY_BUDGET_MS", "600000");
    let wrapper = ["valgrind", "--tool=callgrind", &format!("--callgrind-out-file={}", out.display())];
    let worker = BenchWorker::start_wrapped(&env, 8, &wrapper, Duration::from_secs(180)).await?;
    let control = |command: &str| {
        std::process::Command::new("callgrind_control").args([command, &worker.pid.to_string()]).output()
    };
    // Warmed up first: the first signature seeds aws-lc's random generator from CPU
    // jitter, once per process (~420 M instructions), which is start-up, not a session's.
    run_through_worker(&channel, &connection, names, &capture, ready_bodies(49_000_000, 10), provision_id, None)
        .await?;
    control("--zero")?;
    let run = run_through_worker(
        &channel,
        &connection,
        names,
        &capture,
        ready_bodies(50_000_000, sessions),
        provision_id,
        None,
    )
    .await?;
    control("--dump")?;
    println!("profiled {sessions} new sessions at {:.1}/s under callgrind: {}", run.per_second, out.display());
    worker.stop().await?;
    fake.shutdown().await;
    leftovers.clean().await?;
    Ok(())
}

/// A worker process for one part of the bench.
struct BenchWorker {
    child: tokio::process::Child,
    pid: u32,
    ops_port: u16,
}

impl BenchWorker {
    async fn start(env: &WorkerEnv, prefetch: u16) -> anyhow::Result<Self> {
        Self::start_wrapped(env, prefetch, &[], Duration::from_secs(20)).await
    }

    /// Started as `wrapper… worker run` (a profiler) when `wrapper` is not empty.
    async fn start_wrapped(
        env: &WorkerEnv,
        prefetch: u16,
        wrapper: &[&str],
        ready_within: Duration,
    ) -> anyhow::Result<Self> {
        let ops_port = free_port();
        let env = env
            .clone()
            .set("OPS_ADDR", format!("127.0.0.1:{ops_port}"))
            .set("PREFETCH", prefetch.to_string())
            .set("POD_NAME", format!("bench-{ops_port}"))
            .set("LOG_FORMAT", "json")
            .set("RUST_LOG", "error"); // the dead-letter run would print a warning per event
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => tokio::process::Command::new(BIN),
        };
        let child = command.arg("run").envs(env.vars()).kill_on_drop(true).spawn()?;
        let pid = child.id().expect("running");
        anyhow::ensure!(
            ops::wait_ready(SocketAddr::from(([127, 0, 0, 1], ops_port)), ready_within).await,
            "worker not ready"
        );
        Ok(Self { child, pid, ops_port })
    }

    fn ops_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ops_port))
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// The processes a new-session run keeps busy, measured together.
fn cpu_meter(worker: &BenchWorker) -> cpu::Meter {
    cpu::Meter::start(vec![
        cpu::Part::new("worker", vec![worker.pid]),
        cpu::Part::new("bench + stand-in", vec![std::process::id()]),
        cpu::Part::by_name("rabbitmq", "beam.smp"),
        cpu::Part::by_name("redis", "redis-server"),
    ])
}

fn ready_bodies(first_id: u64, count: usize) -> Vec<(u64, Vec<u8>)> {
    (first_id..first_id + count as u64)
        .map(|id| {
            (id, bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, id))
        })
        .collect()
}

/// RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second over `threads` threads, with the
/// key and library the worker and the stand-in sign with.
fn crypto_floor(threads: usize, seconds: f64) -> anyhow::Result<f64> {
    let pem = std::fs::read_to_string(CLIENT_KEY)?;
    let body = bunq_session_worker::cli::publish::example_body(bunq_session_worker::cli::publish::Example::Ready, 1);
    let started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<u64> {
                    let key = bunq_protocol::signing::ClientKey::from_pkcs8_pem(&pem)?;
                    let mut signed = 0u64;
                    while started.elapsed().as_secs_f64() < seconds {
                        key.sign(&body)?;
                        signed += 1;
                    }
                    Ok(signed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("signing thread")).collect::<anyhow::Result<Vec<u64>>>()
    })?;
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}

struct Run {
    per_second: f64,
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
    fn steady_per_second(&self, in_flight: usize) -> f64 {
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

fn decode_benchmark(report: &mut Report, smoke: bool) {
    let bodies: Vec<Vec<u8>> = (0..if smoke { 200u64 } else { 20_000 })
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
    println!("\n{:<44} {:>12}", format!("decode (best of 5, {} webhook bodies)", bodies.len()), "ns/event");
    println!("{:<44} {:>12.0}", "baseline: serde_json::Value parse", baseline);
    println!("{:<44} {:>12.0}", "event::decode + decide::decide", ours);
    report.set("decode_ns_per_event", ours);
    report.set("decode_baseline_ns_per_event", baseline);
}

/// The broker alone: publish `events` messages, consume with the same prefetch, ack each.
async fn broker_floor(connection: &Connection, queue: &str, events: usize) -> anyhow::Result<Run> {
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
    bodies: Vec<(u64, Vec<u8>)>,
    id_of: fn(&[u8]) -> anyhow::Result<u64>,
    pace: Option<Duration>,
) -> anyhow::Result<Run> {
    let count = bodies.len();
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
        received.entry(id_of(&delivery.data)?).or_insert_with(Instant::now);
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
async fn publish_input(channel: &Channel, exchange: &str, body: &[u8]) -> Result<(), lapin::Error> {
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

/// A field of /proc/PID/status in KiB (VmRSS now, VmHWM the peak).
fn memory_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad {field}"))?.parse()?)
}
