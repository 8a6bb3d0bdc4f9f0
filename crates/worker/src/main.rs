//! The `bunq-session-worker` binary: parses the command line, starts telemetry and hands
//! over to the library.

use anyhow::Context as _;
use bunq_session_worker::cli::{check, dead_letters, publish, session};
use bunq_session_worker::config::{Settings, WorkerArgs};
use bunq_session_worker::hardening;
use bunq_session_worker::startup::{cancel_on_signal, Worker};
use bunq_session_worker::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "bunq-session-worker", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Log format: json (production) or pretty.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    /// `run` is the default subcommand; its settings are accepted here too.
    #[command(flatten)]
    run: WorkerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Consume provision events and open sessions (the default).
    #[command(after_help = telemetry::trace::HELP)]
    Run(WorkerArgs),
    /// Validate the configuration and reach RabbitMQ, Redis and bunq.
    Check(WorkerArgs),
    /// Publish provision events to the input exchange (demos, operations).
    Publish(publish::PublishArgs),
    /// List dead letters, or replay them to where they first arrived.
    DeadLetters(dead_letters::DeadLetterArgs),
    /// Show a cached session (tokens masked), or re-seal stored tokens after a key rotation.
    Session(session::SessionArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = match telemetry::init(cli.log_format) {
        Ok(traces) => traces,
        Err(e) => {
            tracing::error!(event = "fatal", error = %e);
            eprintln!("bunq-session-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every subcommand holds secrets (`session show --reveal`, `dead-letters replay` too).
    hardening::disable_core_dumps();
    let result = match cli.command {
        None => run(cli.run).await,
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Check(args)) => match check::run(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Some(Command::Publish(args)) => publish::run(args).await,
        Some(Command::DeadLetters(args)) => dead_letters::run(args).await,
        Some(Command::Session(args)) => match session::run(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    if let Some(traces) = traces {
        // The exporter blocks while it flushes: off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "fatal", error = format!("{e:#}"));
            eprintln!("bunq-session-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(args)?;
    if settings.bunq.permitted_ips.iter().any(|ip| ip == "*") {
        tracing::warn!(
            event = "permitted_ips_wildcard",
            "devices are registered with permitted_ips [\"*\"]: a leaked credential works from any IP; \
             set BUNQ_PERMITTED_IPS to the egress IPs"
        );
    }
    let worker = Worker::build(settings).await?;
    tracing::info!(event = "started", ops_addr = %worker.ops_addr(), version = env!("CARGO_PKG_VERSION"));
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone()).context("registering SIGTERM and SIGINT handlers")?;
    worker.run_until_stopped(shutdown).await
}
