//! `fake-bunq`: runs the bunq stand-in (see `fake_bunq`).
//!
//! Prints exactly one line to stdout, `fake-bunq listening on http://IP:PORT/v1`, so
//! scripts can start it with `--listen 127.0.0.1:0` and read the bound port. Logs go
//! to stderr. Stops gracefully on SIGINT/SIGTERM.

use clap::Parser;
use fake_bunq::{spawn, FakeConfig, Faults, RateLimitScope};
use std::io::Write as _;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "fake-bunq",
    about = "Local stand-in for bunq's installation, device-server and session-server, and the partner's token reset"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "FAKE_BUNQ_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,

    /// `session_timeout` in the session-server answer, in seconds.
    #[arg(long, env = "FAKE_BUNQ_SESSION_TIMEOUT_SECS", default_value_t = 604_800)]
    session_timeout_secs: u64,

    /// Who shares a rate-limit budget: ip, device (installation token) or off.
    #[arg(long, env = "FAKE_BUNQ_RATE_LIMIT_SCOPE", default_value = "device")]
    rate_limit_scope: RateLimitScope,

    /// session-server limit as CALLS/SECONDS.
    #[arg(long, default_value = "1/30", value_parser = parse_limit)]
    session_server_limit: (u32, Duration),

    /// Limit for the other POST endpoints as CALLS/SECONDS.
    #[arg(long, default_value = "5/3", value_parser = parse_limit)]
    other_post_limit: (u32, Duration),

    /// Limit for PUT /partner-user-provision/{id} as CALLS/SECONDS.
    #[arg(long, default_value = "2/3", value_parser = parse_limit)]
    put_limit: (u32, Duration),

    /// Limit for GET /partner-user-provision/{id} as CALLS/SECONDS.
    #[arg(long, default_value = "3/3", value_parser = parse_limit)]
    get_limit: (u32, Duration),

    /// File holding the partner's own API key (a file, so the key is in no process
    /// listing): with it, a `UserCompany` session may reset provisions' tokens.
    #[arg(long, env = "FAKE_BUNQ_PARTNER_API_KEY_FILE")]
    partner_api_key_file: Option<std::path::PathBuf>,

    /// How long a token reset stays pending before the new token, in milliseconds.
    #[arg(long, env = "FAKE_BUNQ_TOKEN_RESET_DELAY_MS", default_value_t = 2000)]
    token_reset_delay_ms: u64,

    /// Fixed latency added to every /v1 answer, in milliseconds.
    #[arg(long, env = "FAKE_BUNQ_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,

    /// Seed for probabilistic faults.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Reject session-server for a credential that already opened a session.
    #[arg(long)]
    single_use_credentials: bool,

    /// Expire never-used credentials this many seconds after first sight (bunq: 3600
    /// in sandbox, 14400 in production). Default: never.
    #[arg(long, env = "FAKE_BUNQ_CREDENTIAL_TTL_SECS")]
    credential_ttl_secs: Option<u64>,

    /// Initial fault configuration as JSON (same shape as `PUT /_fake/faults`).
    #[arg(long, env = "FAKE_BUNQ_FAULTS")]
    faults: Option<String>,
}

fn parse_limit(s: &str) -> Result<(u32, Duration), String> {
    let (calls, secs) = s.split_once('/').ok_or("expected CALLS/SECONDS, e.g. 1/30")?;
    let calls: u32 = calls.trim().parse().map_err(|e| format!("calls: {e}"))?;
    let secs: u64 = secs.trim().parse().map_err(|e| format!("seconds: {e}"))?;
    if calls == 0 || secs == 0 {
        return Err("calls and seconds must be positive".to_owned());
    }
    Ok((calls, Duration::from_secs(secs)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // Registered before the address is printed: a supervisor may signal as soon as it
    // has read that line, and an unregistered SIGTERM would kill us ungracefully.
    let shutdown = shutdown_signal()?;

    let mut faults = match &args.faults {
        Some(json) => serde_json::from_str::<Faults>(json).map_err(|e| format!("--faults: {e}"))?,
        None => Faults::default(),
    };
    faults.validate().map_err(|e| format!("--faults: {e}"))?;
    if args.latency_ms > 0 {
        faults.latency_ms = args.latency_ms;
    }
    let partner_api_key = match &args.partner_api_key_file {
        Some(path) => {
            let key = std::fs::read_to_string(path).map_err(|e| format!("--partner-api-key-file: {e}"))?;
            let key = key.trim().to_owned();
            if key.is_empty() {
                return Err("--partner-api-key-file: the file is empty".into());
            }
            Some(key)
        }
        None => None,
    };
    let config = FakeConfig {
        session_timeout_secs: args.session_timeout_secs,
        rate_limit_scope: args.rate_limit_scope,
        session_server_limit: args.session_server_limit,
        other_post_limit: args.other_post_limit,
        put_limit: args.put_limit,
        get_limit: args.get_limit,
        partner_api_key,
        token_reset_delay: Duration::from_millis(args.token_reset_delay_ms),
        seed: args.seed,
        allow_credential_reuse: !args.single_use_credentials,
        credential_ttl: args.credential_ttl_secs.map(Duration::from_secs),
        faults,
        ..FakeConfig::default()
    };

    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let fake = spawn(listener, config).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "fake-bunq listening on {}", fake.base_url())?;
        stdout.flush()?;
    }
    tracing::info!(base_url = %fake.base_url(), scope = ?args.rate_limit_scope, "fake-bunq started");

    shutdown.await;
    tracing::info!("shutting down");
    fake.shutdown().await;
    Ok(())
}

/// Registers SIGINT and SIGTERM handlers now; the returned future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
