//! Configuration: environment variables (12-factor), each also a command-line flag.
//!
//! [`WorkerArgs`] is what clap reads; [`Settings::from_args`] validates it into typed
//! settings, failing with an error that names the variable, so a bad deployment stops
//! at start-up instead of misbehaving later.

use crate::amqp::broker::Broker;
use crate::amqp::supervisor::AmqpSettings;
use crate::amqp::topology::{self, Names, Retention};
use crate::lifecycle::open::BunqSettings;
use crate::lifecycle::renew::RenewalSettings;
use crate::partner::reset::ResetSettings;
use crate::provision::handler::HandlerSettings;
use crate::ratelimit::RateLimits;
use crate::retry::RetryPolicy;
use crate::seal::Sealer;
use crate::store::{RedisSettings, Replication};
use crate::tls::{self, TlsFiles};
use clap::Args;
use durations::{Setting, Unit};
use parse::{
    byte_bound, check_queue_bounds, load_client_key, load_sealer, parse_base_url, parse_permitted_ips,
    parse_rate_limits, parse_redis_target, parse_renewal, positive, require_amqp_name, require_url, split_urls,
};
pub(crate) use partner::PartnerArgs;
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod durations;
mod parse;
mod partner;

/// A setting that is missing or wrong. Always names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {problem}")]
pub struct ConfigError {
    pub(crate) variable: &'static str,
    pub(crate) problem: String,
}

impl From<tls::TlsError> for ConfigError {
    fn from(e: tls::TlsError) -> Self {
        ConfigError { variable: e.variable, problem: e.problem }
    }
}

pub(crate) fn invalid(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { variable, problem: problem.into() }
}

/// Connection settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectionArgs {
    /// RabbitMQ URL, e.g. amqp://user:pass@host:5672/%2f; several, comma-separated, for the
    /// nodes of a cluster (the first that answers is used, the next after a loss).
    // URLs may carry passwords: `--help` must not print what the environment holds.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub(crate) amqp_url: SecretString,
    /// Exchange the provision-status events arrive on (topic).
    #[arg(long, env = "INPUT_EXCHANGE", default_value = "provisioning")]
    pub(crate) input_exchange: String,
    /// The worker's input queue (quorum).
    #[arg(long, env = "INPUT_QUEUE", default_value = "bunq-session-worker.provision-status")]
    pub(crate) input_queue: String,
    /// Binding from the input exchange to the input queue.
    #[arg(long, env = "INPUT_BINDING_KEY", default_value = "partner_user_provision.#")]
    pub(crate) input_binding_key: String,
    /// Second binding of the input queue, for downstream's `{"user_id", "session_id"}`
    /// "this session is dead" messages; empty: not bound.
    #[arg(long, env = "INVALIDATION_BINDING_KEY", default_value = "session.invalid")]
    pub(crate) invalidation_binding_key: String,
    /// Exchange session-ready events are published to (topic).
    #[arg(long, env = "OUTPUT_EXCHANGE", default_value = "bunq.sessions")]
    pub(crate) output_exchange: String,
    /// Routing key of session-ready events.
    #[arg(long, env = "OUTPUT_ROUTING_KEY", default_value = "session.ready")]
    pub(crate) output_routing_key: String,
    /// Queue of messages that cannot be processed, each with a reason header.
    #[arg(long, env = "DEAD_LETTER_QUEUE", default_value = "bunq-session-worker.dead-letter")]
    pub(crate) dead_letter_queue: String,
    /// Delay queue: no consumers, per-message TTL, dead-letters back into the input queue.
    #[arg(long, env = "RETRY_QUEUE", default_value = "bunq-session-worker.retry")]
    pub(crate) retry_queue: String,
    /// Dead letters older than this are dropped (e.g. 14d, at most 49d; `0`: kept until replayed).
    /// Part of the queue's declaration: every process must use the same value.
    #[arg(long, env = "DEAD_LETTER_MAX_AGE", default_value = "14d")]
    pub(crate) dead_letter_max_age: String,
    /// At most this many dead letters, the oldest dropped first (`0`: no limit).
    #[arg(long, env = "DEAD_LETTER_MAX_LENGTH", default_value_t = 100_000)]
    pub(crate) dead_letter_max_length: u64,
    /// At most this many bytes of dead-letter bodies, the oldest dropped first (`0`: no
    /// limit; else at least twice MAX_MESSAGE_BYTES). Part of the queue's declaration.
    #[arg(long, env = "DEAD_LETTER_MAX_BYTES", default_value_t = topology::DEFAULT_DEAD_LETTER_MAX_BYTES)]
    pub(crate) dead_letter_max_bytes: u64,
    /// At most this many bytes of bodies waiting in the retry queue; a copy beyond it is
    /// refused and its delivery held (`0`: no limit; else at least MAX_MESSAGE_BYTES).
    /// Part of the queue's declaration.
    #[arg(long, env = "RETRY_QUEUE_MAX_BYTES", default_value_t = topology::DEFAULT_RETRY_QUEUE_MAX_BYTES)]
    pub(crate) retry_queue_max_bytes: u64,
    /// PEM file of the CA(s) that sign the broker's certificate (`amqps://`), beside the system's roots.
    #[arg(long, env = "AMQP_TLS_CA_FILE")]
    pub(crate) amqp_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS with the broker; needs AMQP_TLS_KEY_FILE.
    #[arg(long, env = "AMQP_TLS_CERT_FILE")]
    pub(crate) amqp_tls_cert_file: Option<PathBuf>,
    /// PEM private key of AMQP_TLS_CERT_FILE.
    #[arg(long, env = "AMQP_TLS_KEY_FILE")]
    pub(crate) amqp_tls_key_file: Option<PathBuf>,
}

impl ConnectionArgs {
    /// The broker nodes and TLS files, validated. The URLs are never echoed: they may
    /// hold a password.
    pub(crate) fn broker(&self) -> Result<Broker, ConfigError> {
        let urls = split_urls(&self.amqp_url);
        if urls.is_empty() {
            return Err(invalid("AMQP_URL", "must hold at least one amqp:// or amqps:// URL"));
        }
        for url in &urls {
            require_url(url, "AMQP_URL", &["amqp", "amqps"])?;
        }
        let tls = TlsFiles::load(
            self.amqp_tls_ca_file.as_deref(),
            self.amqp_tls_cert_file.as_deref(),
            self.amqp_tls_key_file.as_deref(),
            tls::AMQP,
        )?;
        if tls.is_some() && !urls.iter().any(|url| url.expose_secret().starts_with("amqps://")) {
            return Err(invalid("AMQP_TLS_CA_FILE", "TLS files are set, but no AMQP_URL is amqps://"));
        }
        Ok(Broker::new(urls, tls))
    }

    /// The topology these arguments name, validated.
    pub(crate) fn names(&self) -> Result<Names, ConfigError> {
        let max_age =
            crate::duration::parse(&self.dead_letter_max_age).map_err(|p| invalid("DEAD_LETTER_MAX_AGE", p))?;
        if max_age > Retention::MAX_AGE_LIMIT {
            return Err(invalid("DEAD_LETTER_MAX_AGE", "must be at most 49d (RabbitMQ's limit for a queue's TTL)"));
        }
        let names = Names {
            input_exchange: self.input_exchange.clone(),
            input_queue: self.input_queue.clone(),
            input_binding_key: self.input_binding_key.clone(),
            invalidation_binding_key: Some(self.invalidation_binding_key.trim().to_owned()).filter(|k| !k.is_empty()),
            output_exchange: self.output_exchange.clone(),
            output_routing_key: self.output_routing_key.clone(),
            dead_letter_queue: self.dead_letter_queue.clone(),
            retry_queue: self.retry_queue.clone(),
            dead_letter_retention: Retention {
                max_age: (!max_age.is_zero()).then_some(max_age),
                max_length: (self.dead_letter_max_length > 0).then_some(self.dead_letter_max_length),
                max_bytes: byte_bound("DEAD_LETTER_MAX_BYTES", self.dead_letter_max_bytes)?,
            },
            retry_queue_max_bytes: byte_bound("RETRY_QUEUE_MAX_BYTES", self.retry_queue_max_bytes)?,
        };
        for (variable, value) in names.as_env() {
            require_amqp_name(variable, value)?;
        }
        if names.invalidation_binding_key.as_deref().is_some_and(|k| k.contains(['*', '#'])) {
            // The worker tells invalidations by their routing key: it must be one key.
            return Err(invalid("INVALIDATION_BINDING_KEY", "must be a routing key, without `*` or `#`"));
        }
        Ok(names)
    }
}

/// Where sessions are stored and how they are sealed: `run`, `check` and `session` read it.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0 (the default), or rediss:// for TLS.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub(crate) redis_url: Option<SecretString>,
    /// Redis Cluster seed nodes, comma-separated redis:// or rediss:// URLs; instead of REDIS_URL.
    #[arg(long, env = "REDIS_CLUSTER_URLS", hide_env_values = true)]
    pub(crate) redis_cluster_urls: Option<SecretString>,
    /// Prefix of every Redis key this worker writes.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "bsw:")]
    pub(crate) redis_key_prefix: String,
    /// PEM file of the CA(s) that sign Redis's certificate (`rediss://`), instead of the system's roots.
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    pub(crate) redis_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS with Redis; needs REDIS_TLS_KEY_FILE.
    #[arg(long, env = "REDIS_TLS_CERT_FILE")]
    pub(crate) redis_tls_cert_file: Option<PathBuf>,
    /// PEM private key of REDIS_TLS_CERT_FILE.
    #[arg(long, env = "REDIS_TLS_KEY_FILE")]
    pub(crate) redis_tls_key_file: Option<PathBuf>,
    /// Replicas a write must reach before anything depending on it is published (a
    /// session-ready after its commit, a close after its marker): 0 for a single node;
    /// set 1 or more with replicated Redis, so a failover cannot lose an announced session.
    #[arg(long, env = "REDIS_MIN_REPLICAS", default_value_t = 0)]
    pub(crate) redis_min_replicas: u32,
    /// How long to wait for REDIS_MIN_REPLICAS, 1ms to 1500ms (within the 2 s every Redis
    /// command gets); a write they do not confirm in time is retried, not published.
    /// [default: 500ms]
    #[arg(long, env = "REDIS_REPLICA_TIMEOUT")]
    pub(crate) redis_replica_timeout: Option<String>,
    /// Deprecated: REDIS_REPLICA_TIMEOUT in milliseconds.
    #[arg(long, env = "REDIS_REPLICA_TIMEOUT_MS", hide = true)]
    pub(crate) redis_replica_timeout_ms: Option<u64>,
    #[command(flatten)]
    pub(crate) seal: SealArgs,
}

/// The keys that seal tokens at rest and credentials in dead letters.
#[derive(Debug, Clone, Args)]
pub(crate) struct SealArgs {
    /// Optional file with a 32-byte random key (raw, hex or base64): seals tokens at rest and
    /// credentials in dead letters (AES-256-GCM).
    #[arg(long, env = "SESSION_ENCRYPTION_KEY_FILE")]
    pub(crate) session_encryption_key_file: Option<PathBuf>,
    /// Old encryption key files, comma-separated: still opened, never used to seal. Keep
    /// a key here until `session reseal` has run with its successor.
    #[arg(long, env = "SESSION_ENCRYPTION_OLD_KEY_FILES", value_delimiter = ',')]
    pub(crate) session_encryption_old_key_files: Vec<PathBuf>,
}

impl SealArgs {
    /// The sealer, when a key is configured.
    pub(crate) fn sealer(&self) -> Result<Option<Arc<Sealer>>, ConfigError> {
        load_sealer(self.session_encryption_key_file.as_deref(), &self.session_encryption_old_key_files)
    }
}

impl StoreArgs {
    /// Validates the Redis URL and loads the keys.
    pub(crate) fn settings(self) -> Result<RedisSettings, ConfigError> {
        let target = parse_redis_target(self.redis_url.as_ref(), self.redis_cluster_urls.as_ref())?;
        let sealer = self.seal.sealer()?;
        let tls = TlsFiles::load(
            self.redis_tls_ca_file.as_deref(),
            self.redis_tls_cert_file.as_deref(),
            self.redis_tls_key_file.as_deref(),
            tls::REDIS,
        )?;
        if tls.is_some() && !target.urls().iter().all(|url| url.expose_secret().starts_with("rediss://")) {
            let message = format!("TLS files are set, but {} is not rediss://", target.variable());
            return Err(invalid("REDIS_TLS_CA_FILE", message));
        }
        let (timeout, name) = durations::duration(Setting {
            name: "REDIS_REPLICA_TIMEOUT",
            value: self.redis_replica_timeout.as_deref(),
            default: "500ms",
            old_name: "REDIS_REPLICA_TIMEOUT_MS",
            old_value: self.redis_replica_timeout_ms,
            unit: Unit::Millis,
        })?;
        if !(Duration::from_millis(1)..=Duration::from_millis(1500)).contains(&timeout) {
            return Err(invalid(name, "must be 1ms to 1500ms"));
        }
        let replication =
            (self.redis_min_replicas > 0).then_some(Replication { replicas: self.redis_min_replicas, timeout });
        Ok(RedisSettings { target, key_prefix: self.redis_key_prefix, sealer, tls: tls.map(Arc::new), replication })
    }
}

/// Everything `run` and `check` read.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) partner: PartnerArgs,
    /// bunq API base URL including /v1, e.g. https://api.bunq.com/v1 (no default: pick the environment).
    #[arg(long, env = "BUNQ_BASE_URL")]
    pub(crate) bunq_base_url: Option<String>,
    /// Allow an `http://` BUNQ_BASE_URL on a loopback address (a local stand-in); never
    /// anything else without TLS.
    #[arg(long, env = "BUNQ_ALLOW_INSECURE_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) bunq_allow_insecure_http: bool,
    /// IPv4 addresses the registered devices may be used from, comma-separated (`*`: any).
    /// Pin it to the partner's egress IPs so a leaked credential is useless elsewhere.
    #[arg(long, env = "BUNQ_PERMITTED_IPS", default_value = "*")]
    pub(crate) bunq_permitted_ips: String,
    /// PEM file with the client's RSA-2048 private key (PKCS#8, `BEGIN PRIVATE KEY`).
    #[arg(long, env = "BUNQ_CLIENT_PRIVATE_KEY_FILE")]
    pub(crate) bunq_client_private_key_file: Option<PathBuf>,
    /// `description` sent with POST /device-server.
    #[arg(long, env = "BUNQ_DEVICE_DESCRIPTION", default_value = "bunq-session-worker")]
    pub(crate) bunq_device_description: String,
    /// Timeout of one bunq HTTP request, e.g. 10s. [default: 10s]
    #[arg(long, env = "BUNQ_REQUEST_TIMEOUT")]
    pub(crate) bunq_request_timeout: Option<String>,
    /// Deprecated: BUNQ_REQUEST_TIMEOUT in milliseconds.
    #[arg(long, env = "BUNQ_REQUEST_TIMEOUT_MS", hide = true)]
    pub(crate) bunq_request_timeout_ms: Option<u64>,
    /// Deliveries processed at once; also the AMQP prefetch.
    #[arg(long, env = "PREFETCH", default_value_t = 16)]
    pub(crate) prefetch: u16,
    /// Address of the ops HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, env = "OPS_ADDR", default_value = "0.0.0.0:9090")]
    pub(crate) ops_addr: String,
    /// Consumer tag prefix; the pod name, so queue dashboards show which replica holds what.
    #[arg(long, env = "POD_NAME")]
    pub(crate) pod_name: Option<String>,
    /// Largest accepted message body, in bytes; larger ones are dead-lettered.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 256 * 1024)]
    pub(crate) max_message_bytes: usize,
    /// Subtracted from bunq's session timeout to get the cache TTL (at least 30s). [default: 60s]
    #[arg(long, env = "SESSION_TTL_MARGIN")]
    pub(crate) session_ttl_margin: Option<String>,
    /// Deprecated: SESSION_TTL_MARGIN in seconds.
    #[arg(long, env = "SESSION_TTL_MARGIN_SECS", hide = true)]
    pub(crate) session_ttl_margin_secs: Option<u64>,
    /// In-process retry budget of one delivery attempt across all bunq calls. [default: 60s]
    #[arg(long, env = "RETRY_BUDGET")]
    pub(crate) retry_budget: Option<String>,
    /// Deprecated: RETRY_BUDGET in milliseconds.
    #[arg(long, env = "RETRY_BUDGET_MS", hide = true)]
    pub(crate) retry_budget_ms: Option<u64>,
    /// First in-process backoff interval. [default: 200ms]
    #[arg(long, env = "RETRY_INITIAL_INTERVAL")]
    pub(crate) retry_initial_interval: Option<String>,
    /// Deprecated: RETRY_INITIAL_INTERVAL in milliseconds.
    #[arg(long, env = "RETRY_INITIAL_INTERVAL_MS", hide = true)]
    pub(crate) retry_initial_interval_ms: Option<u64>,
    /// Longest in-process backoff interval. [default: 10s]
    #[arg(long, env = "RETRY_MAX_INTERVAL")]
    pub(crate) retry_max_interval: Option<String>,
    /// Deprecated: RETRY_MAX_INTERVAL in milliseconds.
    #[arg(long, env = "RETRY_MAX_INTERVAL_MS", hide = true)]
    pub(crate) retry_max_interval_ms: Option<u64>,
    /// Total delivery attempts (through the retry queue) before dead-lettering as retries_exhausted.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 10)]
    pub(crate) max_attempts: u32,
    /// First retry-queue delay; doubles per attempt. [default: 5s]
    #[arg(long, env = "RETRY_QUEUE_DELAY")]
    pub(crate) retry_queue_delay: Option<String>,
    /// Deprecated: RETRY_QUEUE_DELAY in milliseconds.
    #[arg(long, env = "RETRY_QUEUE_DELAY_MS", hide = true)]
    pub(crate) retry_queue_delay_ms: Option<u64>,
    /// Longest retry-queue delay. [default: 5m]
    #[arg(long, env = "RETRY_QUEUE_MAX_DELAY")]
    pub(crate) retry_queue_max_delay: Option<String>,
    /// Deprecated: RETRY_QUEUE_MAX_DELAY in milliseconds.
    #[arg(long, env = "RETRY_QUEUE_MAX_DELAY_MS", hide = true)]
    pub(crate) retry_queue_max_delay_ms: Option<u64>,
    /// TTL of the per-provision lock (at least 1s). The holder renews it every third of it;
    /// a replica that dies holding it delays its provision this long. [default: 30s]
    #[arg(long, env = "LOCK_TTL")]
    pub(crate) lock_ttl: Option<String>,
    /// Deprecated: LOCK_TTL in milliseconds.
    #[arg(long, env = "LOCK_TTL_MS", hide = true)]
    pub(crate) lock_ttl_ms: Option<u64>,
    /// Rate limit of POST /session-server, as CALLS/DURATION, e.g. 1/30s (bunq: 1 per 30 s).
    #[arg(long, env = "RATE_LIMIT_SESSION_SERVER", default_value = "1/30s")]
    pub(crate) rate_limit_session_server: String,
    /// Rate limit of the other POSTs (installation, device-server), as CALLS/DURATION (bunq: 5 per 3 s).
    #[arg(long, env = "RATE_LIMIT_OTHER_POST", default_value = "5/3s")]
    pub(crate) rate_limit_other_post: String,
    /// `global`: one budget for all replicas, the safe reading of bunq counting per egress IP;
    /// `credential`: one per credential, for bunq counting per device (newer docs).
    #[arg(long, env = "RATE_LIMIT_SCOPE", default_value = "global", value_parser = ["global", "credential"])]
    pub(crate) rate_limit_scope: String,
    /// How long in-flight deliveries may take to finish after SIGTERM, e.g. 30s.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s")]
    pub(crate) shutdown_timeout: String,
    /// `on`: keep each user's credential (an API key) sealed in Redis and renew every cached
    /// session SESSION_RENEW_BEFORE before it expires; needs SESSION_ENCRYPTION_KEY_FILE.
    /// `off`: sessions lapse at bunq's session_timeout.
    #[arg(long, env = "SESSION_RENEWAL", default_value = "off", value_parser = ["on", "off"])]
    pub(crate) session_renewal: String,
    /// How long before a session expires it is renewed, e.g. 1h (more than
    /// SESSION_TTL_MARGIN, less than 7d); a session shorter than twice this is renewed
    /// at half its life.
    #[arg(long, env = "SESSION_RENEW_BEFORE", default_value = "1h")]
    pub(crate) session_renew_before: String,
}

/// Validated settings of the worker. Each part builds the component it configures, so a
/// new setting touches its part and the one component that reads it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub bunq: BunqSettings,
    pub(crate) rate_limits: RateLimits,
    /// In-process retries of one delivery attempt.
    pub(crate) retry: RetryPolicy,
    pub(crate) handler: HandlerSettings,
    /// Subtracted from bunq's session timeout for the cache TTL.
    pub(crate) session_ttl_margin: Duration,
    /// `Some` with `SESSION_RENEWAL=on`.
    pub(crate) renewal: Option<RenewalSettings>,
    /// `Some` with `CREDENTIAL_RESET=on`.
    pub(crate) reset: Option<ResetSettings>,
    pub(crate) ops_addr: SocketAddr,
}

impl Settings {
    pub fn from_args(args: WorkerArgs) -> Result<Self, ConfigError> {
        let base_url = parse_base_url(args.bunq_base_url.as_deref(), args.bunq_allow_insecure_http)?;
        let permitted_ips = parse_permitted_ips(&args.bunq_permitted_ips)?;
        let client_key = load_client_key(args.bunq_client_private_key_file.as_deref())?;
        let broker = args.connection.broker()?;
        let d = args.durations()?;
        let renewal = parse_renewal(&args, args.store.seal.session_encryption_key_file.is_some(), &d)?;
        let rate_limits = parse_rate_limits(&args, d.retry_queue_max_delay.0)?;
        let redis = args.store.settings()?;
        let names = args.connection.names()?;
        let invalidation_routing_key = names.invalidation_binding_key.clone();
        if args.connection.output_routing_key.is_empty() {
            return Err(invalid("OUTPUT_ROUTING_KEY", "must not be empty"));
        }
        if !(1..=1000).contains(&args.prefetch) {
            return Err(invalid("PREFETCH", "must be between 1 and 1000"));
        }
        let ops_addr = args
            .ops_addr
            .parse()
            .map_err(|_| invalid("OPS_ADDR", format!("`{}` is not HOST:PORT, e.g. 0.0.0.0:9090", args.ops_addr)))?;
        if d.session_ttl_margin.0 < Duration::from_secs(30) {
            return Err(invalid(
                d.session_ttl_margin.1,
                "must be at least 30s (bunq's SDKs treat the last 30 s as expired)",
            ));
        }
        if args.max_message_bytes == 0 {
            return Err(invalid("MAX_MESSAGE_BYTES", "must be positive"));
        }
        check_queue_bounds(&names, args.max_message_bytes)?;
        if args.max_attempts == 0 {
            return Err(invalid("MAX_ATTEMPTS", "must be at least 1"));
        }
        for (duration, name) in [d.bunq_request_timeout, d.retry_budget, d.retry_initial_interval, d.retry_queue_delay]
        {
            positive(name, duration)?;
        }
        if d.retry_max_interval.0 < d.retry_initial_interval.0 {
            return Err(invalid(d.retry_max_interval.1, "must not be below RETRY_INITIAL_INTERVAL"));
        }
        if d.retry_queue_max_delay.0 < d.retry_queue_delay.0 {
            return Err(invalid(d.retry_queue_max_delay.1, "must not be below RETRY_QUEUE_DELAY"));
        }
        // Renewed every third of it, so it only has to outlast a few Redis round trips.
        if d.lock_ttl.0 < Duration::from_secs(1) {
            return Err(invalid(d.lock_ttl.1, "must be at least 1s (the lock is renewed every third of it)"));
        }
        let shutdown_timeout =
            crate::duration::parse(&args.shutdown_timeout).map_err(|p| invalid("SHUTDOWN_TIMEOUT", p))?;
        if shutdown_timeout.is_zero() {
            return Err(invalid("SHUTDOWN_TIMEOUT", "must be positive"));
        }
        let reset = args.partner.settings(redis.sealer.is_some())?;
        let consumer_tag =
            format!("{}.{}", args.pod_name.clone().unwrap_or_else(default_pod_name), uuid::Uuid::new_v4().simple());
        Ok(Self {
            amqp: AmqpSettings { names, broker, prefetch: args.prefetch, consumer_tag, shutdown_timeout },
            redis,
            bunq: BunqSettings {
                base_url,
                client_key: Arc::new(client_key),
                device_description: args.bunq_device_description,
                permitted_ips,
                request_timeout: d.bunq_request_timeout.0,
            },
            rate_limits,
            retry: RetryPolicy {
                budget: d.retry_budget.0,
                initial_interval: d.retry_initial_interval.0,
                max_interval: d.retry_max_interval.0,
            },
            handler: HandlerSettings {
                max_message_bytes: args.max_message_bytes,
                max_attempts: args.max_attempts,
                retry_queue_delay: d.retry_queue_delay.0,
                retry_queue_max_delay: d.retry_queue_max_delay.0,
                lock_ttl: d.lock_ttl.0,
                invalidation_routing_key,
            },
            session_ttl_margin: d.session_ttl_margin.0,
            renewal,
            reset,
            ops_addr,
        })
    }
}

fn default_pod_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "bunq-session-worker".to_owned())
}

#[cfg(test)]
mod tests;
