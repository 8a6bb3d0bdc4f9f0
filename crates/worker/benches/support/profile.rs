//! `BENCH_PROFILE=<file>` (`make profile`): the new-session path only, the worker under
//! callgrind, instructions counted from readiness until `PROFILE_SESSIONS` (300) sessions
//! are announced, written to `<file>`.

use super::traffic::{provision_id, ready_bodies, run_through_worker};
use super::worker::BenchWorker;
use bunq_session_worker::amqp::topology;
use lapin::options::ConfirmSelectOptions;
use std::time::Duration;
use test_support::{
    capture_queue, connect_amqp, fake_allowing, Cleanup, Leftovers, TestNames, WorkerEnv, AMQP_URL, CLIENT_KEY,
};

pub async fn run(out: &std::path::Path) -> anyhow::Result<()> {
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
    let fake =
        fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, fake_allowing(super::UNLIMITED)).await?;
    // Under callgrind everything is ~50 times slower: generous timeouts, few in flight.
    let env = WorkerEnv::local(&fake.base_url(), CLIENT_KEY, &run)
        .allowing(super::UNLIMITED)
        .set("BUNQ_REQUEST_TIMEOUT", "120000ms")
        .set("RETRY_BUDGET", "600000ms");
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
