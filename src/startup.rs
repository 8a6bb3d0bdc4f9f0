//! Builds the worker from validated settings and runs it until told to stop.

use crate::amqp::consume::DeliveryContext;
use crate::amqp::publish::{AmqpAnnouncer, PublishChannel};
use crate::amqp::supervisor::Supervisor;
use crate::bunq::client::{BunqClient, ClientSettings};
use crate::config::Settings;
use crate::handler::{Handler, HandlerSettings};
use crate::metrics::Metrics;
use crate::ops::{self, OpsState};
use crate::ratelimit::RateLimiter;
use crate::retry::RetryPolicy;
use crate::session::SessionOpener;
use crate::store::{Keys, Store};
use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Worker {
    supervisor: Supervisor,
    ops_listener: tokio::net::TcpListener,
    ops_state: OpsState,
}

/// A Redis connection that reconnects by itself; commands fail fast while Redis is
/// away, so deliveries go to the retry queue instead of hanging.
pub fn redis_connection(url: &secrecy::SecretString) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url.expose_secret()).context("REDIS_URL is not a valid Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

impl Worker {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let conn = redis_connection(&settings.redis_url)?;
        let store = Store::new(conn.clone(), Keys::new(&settings.redis_key_prefix), settings.sealer.clone());
        let limiter = RateLimiter::new(
            conn,
            &settings.redis_key_prefix,
            settings.rate_limits.session_server,
            settings.rate_limits.other_post,
            settings.rate_limits.scope,
            metrics.clone(),
        );
        let client = BunqClient::new(
            ClientSettings {
                base_url: settings.bunq.base_url.clone(),
                device_description: settings.bunq.device_description.clone(),
                request_timeout: settings.bunq.request_timeout,
                user_agent: format!("bunq-session-worker/{}", env!("CARGO_PKG_VERSION")),
            },
            settings.bunq.client_key.clone(),
            metrics.clone(),
        )
        .context("building the HTTP client for bunq")?;
        let opener = SessionOpener {
            client,
            store: store.clone(),
            limiter,
            retry: RetryPolicy {
                initial_interval: settings.retry.initial_interval,
                max_interval: settings.retry.max_interval,
                budget: settings.retry.budget,
            },
            ttl_margin: settings.session_ttl_margin,
        };
        let publish = PublishChannel::default();
        let names = settings.connection.clone();
        let handler = Handler {
            opener,
            store: store.clone(),
            announcer: Arc::new(AmqpAnnouncer {
                channel: publish.clone(),
                exchange: names.output_exchange.clone(),
                routing_key: names.output_routing_key.clone(),
            }),
            settings: HandlerSettings {
                max_message_bytes: settings.max_message_bytes,
                max_attempts: settings.retry.max_attempts,
                retry_queue_delay: settings.retry.queue_delay,
                retry_queue_max_delay: settings.retry.queue_max_delay,
                lock_ttl: settings.lock_ttl,
            },
            owner: settings.consumer_tag.clone(),
        };
        let consuming = Arc::new(AtomicBool::new(false));
        let context =
            Arc::new(DeliveryContext { handler: Arc::new(handler), names: names.clone(), metrics: metrics.clone() });
        let supervisor = Supervisor {
            amqp_url: names.amqp_url.clone(),
            names,
            consumer_tag: settings.consumer_tag.clone(),
            prefetch: settings.prefetch,
            context,
            publish,
            consuming: consuming.clone(),
            tracker: TaskTracker::new(),
            drain_timeout: settings.shutdown_timeout,
        };
        let ops_listener = tokio::net::TcpListener::bind(settings.ops_addr)
            .await
            .with_context(|| format!("OPS_ADDR: cannot listen on {}", settings.ops_addr))?;
        Ok(Self { supervisor, ops_listener, ops_state: OpsState { metrics, consuming, store } })
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_listener.local_addr().expect("a bound listener has an address")
    }

    /// Consumes until `shutdown` is cancelled, then drains in-flight deliveries within
    /// the drain timeout and closes the connection.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ops_shutdown = CancellationToken::new();
        let ops = tokio::spawn(ops::serve(self.ops_listener, self.ops_state, ops_shutdown.clone()));
        self.supervisor.run(shutdown).await;
        // The ops server outlives the drain so the pod keeps reporting while it drains.
        ops_shutdown.cancel();
        ops.await.context("ops server task")?.context("ops server")?;
        tracing::info!(event = "stopped");
        Ok(())
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!(event = "shutdown_requested");
        token.cancel();
    });
}
