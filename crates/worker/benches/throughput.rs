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
//! 9. Traces: new sessions with tracing off and on (OTLP/HTTP to a sink in this process),
//!    alternated: the worker's CPU per session in each, and the export's size.
//! 11. Resets: the backlog of 7 again with `CREDENTIAL_RESET=on` and the stand-in playing
//!     the partner: provisions served over the backlog (`served_after_reset_ratio`) and
//!     token resets per provision, against one per provision its own token could not serve.
//! 10. Budget cost: Redis's time per admission to the session-server budget with 1,000
//!     and 100,000 waiters in line, against the script before it read the line by rank.
//!
//! `BENCH_SMOKE=1` runs every part with tiny sizes (the test suite does, so the harness
//! cannot rot); its report goes to `target/bench/report-smoke.json` and says nothing
//! about speed.

#[path = "support/backlog.rs"]
mod backlog;
#[path = "support/budget_cost.rs"]
mod budget_cost;
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/in_process.rs"]
mod in_process;
#[path = "support/profile.rs"]
mod profile;
#[path = "support/report.rs"]
mod report;
#[path = "support/traces.rs"]
mod traces;
#[path = "support/traffic.rs"]
mod traffic;
#[path = "support/worker.rs"]
mod worker;

use bunq_session_worker::amqp::topology;
use fake_bunq::FakeConfig;
use in_process::{crypto_floor, decode_benchmark};
use lapin::options::ConfirmSelectOptions;
use report::{Figures, Report};
use std::time::Duration;
use test_support::{
    capture_queue, connect_amqp, fake_allowing, Cleanup, Leftovers, TestNames, WorkerEnv, AMQP_URL, CLIENT_KEY,
};
use traffic::{broker_floor, malformed_id, provision_id, ready_bodies, run_through_worker};
use worker::{cpu_meter, memory_kib, BenchWorker};

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
    /// The budget-cost lines, and admissions timed per figure.
    budget_lines: [usize; 2],
    budget_calls: usize,
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
                budget_lines: [100, 1000],
                budget_calls: 3,
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
                budget_lines: [1_000, 100_000],
                budget_calls: 50,
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
        return profile::run(std::path::Path::new(&out)).await;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "budget_cost") {
        let cost = budget_cost::run(&sizes.budget_lines, sizes.budget_calls).await?;
        cost.print();
        println!("back of the line, largest / smallest: {:.2} (before: {:.2})", cost.ratio(), cost.old_ratio());
        return Ok(());
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
        resets: false,
    };
    // The same backlog with token resets: nobody lost to an expired credential (tokens
    // living at least the 10 s CREDENTIAL_LIFETIME allows, also in the smoke run).
    let reset_window = sizes.backlog_window.max(Duration::from_secs(10));
    let reset_scenario = backlog::Scenario {
        window: reset_window,
        backlog: 3 * 10 * reset_window.as_secs() as usize,
        first_id: 70_000_000,
        resets: true,
        ..deadline_scenario
    };
    // A big backlog behind a tiny budget: what waiting costs the broker.
    let churn_scenario = backlog::Scenario {
        budget: 2,
        workers: 4,
        window: sizes.churn_window,
        backlog: sizes.churn_backlog,
        first_id: 60_000_000,
        resets: false,
    };
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "paced") {
        // Iterating on latency: new sessions paced at BENCH_RATE per second (default 370),
        // less the stand-in's own time, nothing written.
        let rate: f64 = std::env::var("BENCH_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(370.0);
        let fake =
            fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, fake_allowing(UNLIMITED)).await?;
        let env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, &run).allowing(UNLIMITED);
        let worker = BenchWorker::start(&env, PREFETCH).await?;
        let pace = Some(Duration::from_secs_f64(1.0 / rate));
        let paced = run_through_worker(
            &channel,
            &connection,
            names,
            &capture,
            ready_bodies(20_000_000, sizes.events),
            provision_id,
            pace,
        )
        .await?;
        let stand_in_ms = fake.calls().iter().map(|c| c.handled_us as f64).sum::<f64>() / 1000.0 / sizes.events as f64;
        paced.print(&format!("new sessions paced at {rate:.0}/s"));
        println!("p99 overhead {:.1} ms (stand-in {stand_in_ms:.1} ms)", paced.percentile(0.99) - stand_in_ms);
        worker.stop().await?;
        fake.shutdown().await;
        leftovers.clean().await?;
        return Ok(());
    }
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
        let scenario = match only.as_str() {
            "churn" => &churn_scenario,
            "resets" => &reset_scenario,
            _ => &deadline_scenario,
        };
        let outcome = backlog::run(scenario, &connection, &channel).await?;
        println!("{outcome:?}\nserved before expiry / possible: {:.3}", outcome.served_ratio());
        if scenario.resets {
            let (resets, limit) = outcome.resets_per_provision();
            println!(
                "served after reset: {:.3}; resets per provision {resets:.3} (at most {limit:.3})",
                outcome.served_after_reset_ratio()
            );
        }
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

    // Traces: new sessions with tracing off and on (exported over OTLP/HTTP to a sink),
    // alternated, the least worker CPU per session of each kept.
    let sink = traces::Sink::start().await?;
    let trace_events = (sizes.events / 3).max(2);
    let (mut traces_off_ms, mut traces_on_ms) = (f64::MAX, f64::MAX);
    for (round, on) in [false, true, false, true].into_iter().enumerate().take(if smoke { 2 } else { 4 }) {
        let env = if on {
            env.clone().set("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint).set("OTEL_BSP_SCHEDULE_DELAY", "1000")
        } else {
            env.clone()
        };
        let worker = BenchWorker::start(&env, PREFETCH).await?;
        let meter = cpu_meter(&worker);
        through(ready_bodies(70_000_000 + round as u64 * 1_000_000, trace_events), None).await?;
        // Past one export interval, so the last spans are exported inside the measure.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let usage = meter.stop(cores);
        worker.stop().await?;
        let (_, ms, _) =
            usage.ms_per_event(trace_events).into_iter().find(|(name, ..)| *name == "worker").expect("worker");
        let best = if on { &mut traces_on_ms } else { &mut traces_off_ms };
        *best = best.min(ms);
    }
    let exported_kib = sink.taken.bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
    let exported_per_session = exported_kib * 1024.0 / (trace_events * if smoke { 1 } else { 2 }) as f64;
    println!(
        "\ntraces, worker CPU ms per new session (best of {}, {trace_events} each): off {traces_off_ms:.3}, on \
         {traces_on_ms:.3} ({:+.1}%); {exported_per_session:.0} bytes of OTLP per session",
        if smoke { 1 } else { 2 },
        100.0 * (traces_on_ms / traces_off_ms - 1.0)
    );
    report.set("traces_off_worker_cpu_ms_per_session", traces_off_ms);
    report.set("traces_on_worker_cpu_ms_per_session", traces_on_ms);
    report.set("traces_otlp_bytes_per_session", exported_per_session);
    drop(sink);
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
    let backlog = backlog::run(&deadline_scenario, &connection, &channel).await?;
    let churn = backlog::run(&churn_scenario, &connection, &channel).await?;
    let resets = backlog::run(&reset_scenario, &connection, &channel).await?;
    let budget_cost = budget_cost::run(&sizes.budget_lines, sizes.budget_calls).await?;

    let figures = Figures {
        cores,
        events: sizes.events,
        signatures_per_second,
        crypto_floor,
        floor,
        fresh,
        fresh_steady,
        fresh_cpu,
        repeat,
        dead,
        paced,
        half_rate,
        stand_in_ms,
        slow,
        slow_bound,
        achieved,
        span,
        answered: answered.len(),
        rejected,
        backlog,
        backlog_scenario: &deadline_scenario,
        churn,
        churn_scenario: &churn_scenario,
        resets,
        budget_cost,
        idle_rss,
        peak_rss,
    };
    figures.print();
    figures.record(&mut report);
    let path = report.write(smoke)?;
    println!(
        "
report: {}",
        path.display()
    );
    leftovers.clean().await?;
    Ok(())
}
