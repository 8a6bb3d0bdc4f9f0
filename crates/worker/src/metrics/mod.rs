//! Prometheus metrics. Labels are closed sets (outcomes, reasons, endpoints, status
//! classes): never ids or anything derived from a secret.

use bunq_protocol::client::CallObserver;
use bunq_protocol::Endpoint;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The label values the chart's alerts and dashboard select on, created at 0 when the
/// registry is built: a series born at 1 reads as no increase, so an alert on
/// `increase()` would miss a pod's first event. Plain strings: this module names no type
/// of the crate; the tests of `provision::outcome` and `lifecycle::renew` hold these
/// lists to the enums that produce the labels.
pub const DEAD_LETTER_REASONS: [&str; 17] = [
    "malformed",
    "credential_expired",
    "rejected_by_bunq",
    "unexpected_response",
    "bunq_unavailable",
    "rate_limited",
    "throttled",
    "redis_unavailable",
    "not_replicated",
    "awaiting_reset",
    "corrupt_state",
    "unknown_key",
    "publish_failed",
    "output_unroutable",
    "lock_busy",
    "retries_exhausted",
    "redelivered_too_often",
];
/// Outcomes of a pass over a renewal entry (`renewals_total{outcome}`).
pub const RENEWAL_OUTCOMES: [&str; 10] = [
    "renewed",
    "not_due",
    "stale",
    "nothing_to_renew",
    "credential_revoked",
    "renewal_failed",
    "retrying",
    "busy",
    "error",
    "panicked",
];
/// Outcomes of the token-reset steps (`credential_resets_total{outcome}`): bunq accepted a
/// reset request, the new token was read, bunq refused a request (tried again), bunq
/// refused for good (the provision dead-lettered `credential_expired`).
pub const RESET_OUTCOMES: [&str; 4] = ["requested", "token_received", "retried", "refused"];
/// bunq endpoints as `Endpoint::path` names them.
const BUNQ_ENDPOINTS: [&str; 6] =
    ["installation", "device-server", "session-server", "session", "notification-filter-url", "partner-user-provision"];
/// Statuses created at 0 per endpoint: success, the rate limit, and the failures bunq and
/// the network most often give; other statuses appear when first seen.
const BUNQ_STATUSES: [&str; 8] = ["200", "429", "500", "502", "503", "504", "timeout", "transport"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BunqLabels {
    endpoint: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

pub struct Metrics {
    registry: Registry,
    deliveries: Family<OutcomeLabels, Counter>,
    delivery_seconds: Histogram,
    in_flight: Gauge,
    bunq_requests: Family<BunqLabels, Counter>,
    bunq_seconds: Family<EndpointLabels, Histogram>,
    rate_limit_wait_seconds: Family<EndpointLabels, Histogram>,
    settle_failures: Counter,
    settle_batch: Histogram,
    amqp_connections: Counter,
    redis_up: Gauge,
    held_for_redis: Counter,
    plaintext_resealed: Counter,
    renewals: Family<OutcomeOnly, Counter>,
    renewals_scheduled: Gauge,
    renewals_due: Gauge,
    held_events: Gauge,
    credential_resets: Family<OutcomeOnly, Counter>,
    resets_waiting: Gauge,
    budget: BudgetGauges,
}

/// The shared session-server budget's waiting line, as the budget reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetLine {
    pub waiting: u64,
    pub servable: u64,
    pub hopeless: u64,
    pub(crate) reserved_ahead: Duration,
    pub earliest_deadline_in: Option<Duration>,
    pub servable_before_earliest: u64,
    pub(crate) least_slack: Option<Duration>,
}

/// The gauges of [`BudgetLine`].
#[derive(Default)]
struct BudgetGauges {
    waiting: Gauge,
    servable: Gauge,
    hopeless: Gauge,
    reserved_ahead_seconds: Gauge<f64, AtomicU64>,
    earliest_expiry_seconds: Gauge<f64, AtomicU64>,
    servable_before_earliest_expiry: Gauge,
    least_slack_seconds: Gauge<f64, AtomicU64>,
}

impl BudgetGauges {
    fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register("budget_waiting", "Calls waiting for a session-server slot (all replicas)", self.waiting.clone());
        r.register(
            "budget_servable",
            "Waiting calls the budget serves before their deadline, earliest deadline first",
            self.servable.clone(),
        );
        r.register(
            "budget_hopeless",
            "Waiting calls whose slot falls after their deadline (lost unless the budget frees up)",
            self.hopeless.clone(),
        );
        r.register(
            "budget_reserved_ahead_seconds",
            "How far ahead session-server slots are planned: the last servable waiter's slot",
            self.reserved_ahead_seconds.clone(),
        );
        r.register(
            "budget_earliest_expiry_seconds",
            "Time left to the earliest waiting credential's expiry (0 when nobody waits)",
            self.earliest_expiry_seconds.clone(),
        );
        r.register(
            "budget_servable_before_earliest_expiry",
            "Session-server slots free before the earliest waiting credential expires",
            self.servable_before_earliest_expiry.clone(),
        );
        r.register(
            "budget_least_slack_seconds",
            "Least time between a servable waiter's slot and its deadline (0 when none: credentials about to be lost)",
            self.least_slack_seconds.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeOnly {
    outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bunq_session_worker");
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register("deliveries", "Deliveries by outcome and reason", deliveries.clone());
        let delivery_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register("delivery_seconds", "Time from delivery to settlement", delivery_seconds.clone());
        let in_flight = Gauge::default();
        registry.register("in_flight", "Deliveries being processed", in_flight.clone());
        let bunq_requests = Family::<BunqLabels, Counter>::default();
        registry.register("bunq_requests", "bunq API calls by endpoint and status", bunq_requests.clone());
        let bunq_seconds = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register("bunq_request_seconds", "bunq API call latency", bunq_seconds.clone());
        let rate_limit_wait_seconds = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        registry.register(
            "rate_limit_wait_seconds",
            "Time spent waiting for rate-limit budget",
            rate_limit_wait_seconds.clone(),
        );
        let settle_failures = Counter::default();
        registry.register(
            "settle_failures",
            "Settlements (acks, moves to the retry or dead-letter queue) that did not commit, and moved copies lost",
            settle_failures.clone(),
        );
        let settle_batch = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register(
            "settle_batch_size",
            "Settlements (acks and moves) done together: their copies confirmed in one round, then the originals acked",
            settle_batch.clone(),
        );
        let amqp_connections = Counter::default();
        registry.register(
            "amqp_connections",
            "AMQP connections opened (more than one means reconnects)",
            amqp_connections.clone(),
        );
        let redis_up = Gauge::default();
        registry.register("redis_up", "1 while Redis answers; 0 while deliveries are held for it", redis_up.clone());
        let held_for_redis = Counter::default();
        registry.register(
            "held_for_redis",
            "Waits for Redis to answer again: deliveries and writes held in the worker, no attempt spent",
            held_for_redis.clone(),
        );
        let plaintext_resealed = Counter::default();
        registry.register(
            "plaintext_resealed",
            "Redis records found with a plaintext token while a key is configured, sealed in place on read",
            plaintext_resealed.clone(),
        );
        let renewals = Family::<OutcomeOnly, Counter>::default();
        registry.register(
            "renewals",
            "Passes over renewal entries by outcome (renewed, not_due, stale, nothing_to_renew, \
             credential_revoked, renewal_failed, retrying, busy, error)",
            renewals.clone(),
        );
        let renewals_scheduled = Gauge::default();
        registry.register("renewals_scheduled", "Sessions in the renewal schedule", renewals_scheduled.clone());
        let renewals_due = Gauge::default();
        registry.register(
            "renewals_due",
            "Renewal entries past their due time and not claimed (a backlog when it stays above 0)",
            renewals_due.clone(),
        );
        let held_events = Gauge::default();
        registry.register(
            "held_events",
            "session.closed events no queue took, held in Redis until one is bound for them",
            held_events.clone(),
        );
        let credential_resets = Family::<OutcomeOnly, Counter>::default();
        registry.register(
            "credential_resets",
            "Token-reset steps by outcome (requested, token_received, retried, refused)",
            credential_resets.clone(),
        );
        let resets_waiting = Gauge::default();
        registry.register(
            "credential_resets_waiting",
            "Provisions waiting for a token reset or their new token (CREDENTIAL_RESET=on)",
            resets_waiting.clone(),
        );
        for outcome in RESET_OUTCOMES {
            let _ = credential_resets.get_or_create(&OutcomeOnly { outcome });
        }
        let budget = BudgetGauges::default();
        budget.register(&mut registry);
        for reason in DEAD_LETTER_REASONS {
            let _ = deliveries.get_or_create(&OutcomeLabels { outcome: "dead_lettered", reason });
        }
        for outcome in RENEWAL_OUTCOMES {
            let _ = renewals.get_or_create(&OutcomeOnly { outcome });
        }
        for endpoint in BUNQ_ENDPOINTS {
            for status in BUNQ_STATUSES {
                let _ = bunq_requests.get_or_create(&BunqLabels { endpoint, status });
            }
            let _ = bunq_seconds.get_or_create(&EndpointLabels { endpoint });
            let _ = rate_limit_wait_seconds.get_or_create(&EndpointLabels { endpoint });
        }
        Self {
            registry,
            budget,
            renewals,
            renewals_scheduled,
            renewals_due,
            held_events,
            credential_resets,
            resets_waiting,
            deliveries,
            delivery_seconds,
            in_flight,
            bunq_requests,
            bunq_seconds,
            rate_limit_wait_seconds,
            settle_failures,
            settle_batch,
            amqp_connections,
            redis_up,
            held_for_redis,
            plaintext_resealed,
        }
    }

    pub(crate) fn observe_delivery(&self, outcome: &'static str, reason: &'static str, elapsed: Duration) {
        self.deliveries.get_or_create(&OutcomeLabels { outcome, reason }).inc();
        self.delivery_seconds.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    pub(crate) fn observe_rate_limit_wait(&self, endpoint: &'static str, waited: Duration) {
        self.rate_limit_wait_seconds.get_or_create(&EndpointLabels { endpoint }).observe(waited.as_secs_f64());
    }

    pub(crate) fn settle_failed(&self) {
        self.settle_failures.inc();
    }

    pub(crate) fn observe_settle_batch(&self, settlements: usize) {
        self.settle_batch.observe(settlements as f64);
    }

    pub(crate) fn redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub(crate) fn observe_renewal(&self, outcome: &'static str) {
        self.renewals.get_or_create(&OutcomeOnly { outcome }).inc();
    }

    pub(crate) fn renewal_backlog(&self, scheduled: u64, due: u64) {
        self.renewals_scheduled.set(scheduled as i64);
        self.renewals_due.set(due as i64);
    }

    pub(crate) fn held_events(&self, held: u64) {
        self.held_events.set(held as i64);
    }

    pub(crate) fn credential_reset(&self, outcome: &'static str) {
        self.credential_resets.get_or_create(&OutcomeOnly { outcome }).inc();
    }

    pub(crate) fn resets_waiting(&self, waiting: u64) {
        self.resets_waiting.set(waiting as i64);
    }

    pub(crate) fn budget_line(&self, plan: &BudgetLine) {
        let b = &self.budget;
        b.waiting.set(plan.waiting as i64);
        b.servable.set(plan.servable as i64);
        b.hopeless.set(plan.hopeless as i64);
        b.reserved_ahead_seconds.set(plan.reserved_ahead.as_secs_f64());
        b.earliest_expiry_seconds.set(plan.earliest_deadline_in.unwrap_or_default().as_secs_f64());
        b.servable_before_earliest_expiry.set(plan.servable_before_earliest as i64);
        b.least_slack_seconds.set(plan.least_slack.unwrap_or_default().as_secs_f64());
    }

    pub(crate) fn held_for_redis(&self) {
        self.held_for_redis.inc();
    }

    pub(crate) fn plaintext_resealed(&self) {
        self.plaintext_resealed.inc();
    }

    pub(crate) fn amqp_connected(&self) {
        self.amqp_connections.inc();
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Every bunq call, by endpoint and status class.
impl CallObserver for Metrics {
    fn observe(&self, endpoint: Endpoint, status: &'static str, elapsed: Duration) {
        let endpoint = endpoint.path();
        self.bunq_requests.get_or_create(&BunqLabels { endpoint, status }).inc();
        self.bunq_seconds.get_or_create(&EndpointLabels { endpoint }).observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests;
