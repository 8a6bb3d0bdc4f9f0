//! Builds the worker from validated settings and runs it until told to stop.

use crate::amqp::consume::{DeadLetterPolicy, DeliveryContext};
use crate::amqp::publish::{AmqpAnnouncer, PublishChannel};
use crate::amqp::supervisor::Supervisor;
use crate::config::Settings;
use crate::lifecycle::announce::Announcer;
use crate::lifecycle::close::Closer;
use crate::lifecycle::open::SessionOpener;
use crate::lifecycle::renew::Renewer;
use crate::lifecycle::Parts;
use crate::metrics::Metrics;
use crate::partner::context::Partner;
use crate::partner::reset::Resetter;
use crate::provision::handler::Handler;
use crate::ratelimit::budget::Budget;
use crate::store::gate::RedisGate;
use crate::store::Store;
use crate::tls;
use anyhow::Context as _;
use ops::OpsState;
use secrecy::ExposeSecret as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(crate) mod ops;

pub struct Worker {
    supervisor: Supervisor,
    ops_listener: tokio::net::TcpListener,
    ops_state: OpsState,
    renewer: Option<Arc<Renewer>>,
    /// Publishes `session.closed` events held for want of a queue.
    held_events: (Closer, Arc<Metrics>),
    /// The shared session-server budget's line, published as gauges.
    budget_watch: Option<(Budget, Arc<Metrics>)>,
    /// Keeps the shared clock's offset from Redis's `TIME` (`store/clock.rs`).
    clock: Store,
    /// Publishes how many provisions wait for a token reset (`CREDENTIAL_RESET=on`).
    resetter: Option<Arc<Resetter>>,
    drain_timeout: std::time::Duration,
}

/// How often each replica publishes the budget's plan.
const BUDGET_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How often held `session.closed` events are offered again (see `Closer::deliver_held`).
const HELD_EVENT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Worker {
    /// Builds every part from its settings and binds the ops port; connects to nothing
    /// yet (RabbitMQ and Redis are reached lazily and supervised).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        verify_tls(&settings).await?;
        let metrics = Arc::new(Metrics::new());
        let conn = settings.redis.connect()?;
        let store = settings.redis.store(conn.clone()).with_metrics(metrics.clone());
        let gate = RedisGate::new(store.clone(), metrics.clone());
        let limiter = settings.rate_limits.limiter(conn, &settings.redis.key_prefix, metrics.clone());
        let budget = limiter.budget().cloned();
        let client = settings.bunq.client(metrics.clone()).context("building the HTTP client for bunq")?;
        let opener = SessionOpener::new(
            client,
            store.clone(),
            limiter,
            settings.retry,
            settings.session_ttl_margin,
            gate.clone(),
        );
        let publish = PublishChannel::default();
        let announcer: Arc<dyn Announcer> = Arc::new(AmqpAnnouncer::new(publish.clone(), &settings.amqp.names));
        let parts = Parts {
            opener,
            store: store.clone(),
            announcer,
            lock_ttl: settings.handler.lock_ttl,
            owner: settings.amqp.consumer_tag.clone(),
        };
        let held_events = (Closer::new(parts.clone()), metrics.clone());
        let renewer = settings
            .renewal
            .map(|renewal| Arc::new(Renewer::new(parts.clone(), metrics.clone(), gate.clone(), renewal)));
        let resetter = settings.reset.clone().map(|reset| {
            let partner = Partner::new(
                parts.opener.clone(),
                store.clone(),
                reset.partner_api_key.clone(),
                parts.owner.clone(),
                parts.lock_ttl,
            );
            let (delay, max_delay) = (settings.handler.retry_queue_delay, settings.handler.retry_queue_max_delay);
            Arc::new(Resetter::new(Arc::new(partner), store.clone(), reset, metrics.clone(), delay, max_delay))
        });
        let mut handler = Handler::new(parts, settings.handler);
        if let Some(renewer) = &renewer {
            handler = handler.with_renewer(renewer.clone());
        }
        if let Some(resetter) = &resetter {
            handler = handler.with_resetter(resetter.clone());
        }
        let dead_letters = DeadLetterPolicy { sealer: settings.redis.sealer.clone() };
        let context = DeliveryContext::new(handler, settings.amqp.names.clone(), metrics.clone(), dead_letters, gate);
        let supervisor = Supervisor::new(&settings.amqp, context, publish);
        let ops_listener = tokio::net::TcpListener::bind(settings.ops_addr)
            .await
            .with_context(|| format!("OPS_ADDR: cannot listen on {}", settings.ops_addr))?;
        let budget_watch = budget.map(|budget| (budget, metrics.clone()));
        let ops_state = OpsState::new(metrics, supervisor.consuming(), supervisor.blocked(), store.clone());
        Ok(Self {
            clock: store,
            resetter,
            supervisor,
            ops_listener,
            ops_state,
            renewer,
            held_events,
            budget_watch,
            drain_timeout: settings.amqp.shutdown_timeout,
        })
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_listener.local_addr().expect("a bound listener has an address")
    }

    /// Consumes until `shutdown` is cancelled, then drains in-flight deliveries within
    /// the drain timeout and closes the connection.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ops_shutdown = CancellationToken::new();
        tokio::spawn(self.clock.keep_clock(shutdown.clone()));
        if let Some(resetter) = self.resetter {
            tokio::spawn(resetter.watch(BUDGET_WATCH_INTERVAL, shutdown.clone()));
        }
        let ops = tokio::spawn(ops::serve(self.ops_listener, self.ops_state, ops_shutdown.clone()));
        let renewals = self.renewer.map(|renewer| tokio::spawn(renewer.run(shutdown.clone())));
        let (closer, metrics) = self.held_events;
        tokio::spawn(closer.deliver_held_every(HELD_EVENT_INTERVAL, metrics, shutdown.clone()));
        if let Some((budget, metrics)) = self.budget_watch {
            tokio::spawn(budget.watch(metrics, BUDGET_WATCH_INTERVAL, shutdown.clone()));
        }
        self.supervisor.run(shutdown).await;
        if let Some(renewals) = renewals {
            // A renewal cut short here is taken over when its lease runs out.
            if tokio::time::timeout(self.drain_timeout, renewals).await.is_err() {
                tracing::warn!(event = "renewals_not_drained");
            }
        }
        // The ops server outlives the drain so the pod keeps reporting while it drains.
        ops_shutdown.cancel();
        ops.await.context("ops server task")?.context("ops server")?;
        tracing::info!(event = "stopped");
        Ok(())
    }
}

/// A certificate that does not verify is a configuration error, not an outage: a TLS
/// handshake with each node at start-up finds it and stops the worker naming the setting.
/// A service that does not answer yet is left to the supervised reconnects.
pub(crate) async fn verify_tls(settings: &Settings) -> anyhow::Result<()> {
    if let Some(files) = settings.amqp.broker.tls() {
        for url in settings.amqp.broker.tls_urls() {
            tls::probe(url, 5671, files).await?;
        }
    }
    if let Some(files) = &settings.redis.tls {
        for url in settings.redis.target.urls() {
            tls::probe(url.expose_secret(), 6379, files).await?;
        }
    }
    Ok(())
}

/// Cancels `token` on SIGTERM or SIGINT: the process's one signal handler. Both are
/// registered before this returns, so a signal during start-up is not missed.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!(event = "shutdown_requested");
        token.cancel();
    });
    Ok(())
}
