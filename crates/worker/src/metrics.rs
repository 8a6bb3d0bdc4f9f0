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
pub const DEAD_LETTER_REASONS: [&str; 16] = [
    "malformed",
    "credential_expired",
    "rejected_by_bunq",
    "unexpected_response",
    "bunq_unavailable",
    "rate_limited",
    "throttled",
    "redis_unavailable",
    "not_replicated",
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
/// bunq endpoints as `Endpoint::path` names them.
const BUNQ_ENDPOINTS: [&str; 5] =
    ["installation", "device-server", "session-server", "session", "notification-filter-url"];
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
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The alerts and dashboard the Helm chart ships, read at compile time so a renamed
    /// metric fails here.
    const ALERTS: &str = include_str!("../../../helm/bunq-session-worker/templates/prometheusrule.yaml");
    const DASHBOARD: &str = include_str!("../../../helm/bunq-session-worker/dashboards/bunq-session-worker.json");

    fn exercised() -> Metrics {
        let metrics = Metrics::new();
        metrics.observe_delivery("dead_lettered", "malformed", Duration::from_millis(3));
        metrics.in_flight().set(1);
        metrics.observe(Endpoint::SessionServer, "429", Duration::from_millis(20));
        metrics.observe_rate_limit_wait("session-server", Duration::from_secs(1));
        metrics.settle_failed();
        metrics.observe_settle_batch(4);
        metrics.amqp_connected();
        metrics.observe_renewal("renewal_failed");
        metrics.renewal_backlog(3, 1);
        metrics
    }

    /// Sample names (`…_total`, `…_bucket`) and, from `# TYPE` lines, family names.
    fn names(exposition: &str) -> (BTreeSet<&str>, BTreeSet<&str>) {
        let samples = exposition
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let families = exposition.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        (samples, families)
    }

    fn metric_names(text: &str) -> impl Iterator<Item = &str> {
        text.match_indices("bunq_session_worker_").map(|(at, _)| {
            let rest = &text[at..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        })
    }

    #[test]
    fn every_metric_the_chart_alerts_on_or_charts_is_exported() {
        let exposition = exercised().encode();
        let (samples, families) = names(&exposition);
        let mut checked = 0;
        for line in ALERTS.lines().chain(DASHBOARD.lines()) {
            // Queries need series names; prose may name a family (a histogram).
            let prose =
                ["summary:", "description:", "\"description\":"].iter().any(|p| line.trim_start().starts_with(p));
            for name in metric_names(line) {
                let known = samples.contains(name) || (prose && families.contains(name));
                assert!(known, "the alerts use `{name}`, which the worker does not export:\n{exposition}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} metric references found");
    }

    #[test]
    fn alert_label_values_are_ones_the_worker_emits() {
        let exposition = exercised().encode();
        for needle in [r#"outcome="dead_lettered""#, r#"status="429""#, r#"reason="malformed""#] {
            assert!(ALERTS.contains(needle.split('=').next().unwrap()), "{needle}");
            assert!(exposition.contains(needle), "{needle} not in\n{exposition}");
        }
        assert!(ALERTS.contains(r#"reason="retries_exhausted""#));
    }

    /// The label matchers of each `bunq_session_worker_…{…}` selector in `text`: the
    /// series name and `(label, operator, value)`; the scrape's labels (namespace,
    /// service, pod) and Helm's `{{ $match }}` are left out.
    /// `(label, operator, value)`.
    type Matcher<'a> = (&'a str, &'a str, &'a str);
    /// `(name, [(label, value)], value)`.
    type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

    fn selectors(text: &str) -> Vec<(&str, Vec<Matcher<'_>>)> {
        let mut found = Vec::new();
        for (at, _) in text.match_indices("bunq_session_worker_") {
            let rest = &text[at..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            if !after.starts_with(['{', '[']) {
                continue; // prose naming a family, not a query
            }
            let mut matchers = Vec::new();
            if let Some(inside) = after.strip_prefix('{') {
                let inside = &inside[..inside.find('}').unwrap_or(inside.len())];
                for part in inside.split(',') {
                    let part = part.trim();
                    let Some(op_at) = part.find(['=', '!']) else { continue };
                    let (label, op_value) = part.split_at(op_at);
                    let op = ["=~", "!=", "!~", "="].into_iter().find(|op| op_value.starts_with(op)).unwrap();
                    let value = op_value[op.len()..].trim_matches('"');
                    if !["namespace", "service", "pod"].contains(&label.trim()) {
                        matchers.push((label.trim(), op, value));
                    }
                }
            }
            found.push((name, matchers));
        }
        found
    }

    /// `name{labels} value` lines of the exposition, labels as `(label, value)` pairs.
    fn samples(exposition: &str) -> Vec<Sample<'_>> {
        exposition
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                let labels = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(label, value)| (label, value.trim_matches('"')))
                    .collect();
                Some((name, labels, value))
            })
            .collect()
    }

    fn label<'a>(labels: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
        labels.iter().find(|(l, _)| *l == key).map(|(_, v)| *v)
    }

    /// A pod's first event fires the alerts only if every series they read is there at 0
    /// before it: `increase()` over a series born at 1 is 0. Read from the chart's rules and
    /// dashboard; a selector `label="v"` needs that series, `label=~"a|b"` each of them,
    /// `label!="v"` at least one other.
    #[test]
    fn a_fresh_worker_exposes_every_series_the_alerts_and_dashboard_read_at_zero() {
        let exposition = Metrics::new().encode();
        let samples = samples(&exposition);
        let dashboard = DASHBOARD.replace("\\\"", "\"");
        let mut checked = 0;
        for (name, matchers) in selectors(ALERTS).into_iter().chain(selectors(&dashboard)) {
            let of_name: Vec<_> = samples.iter().filter(|(n, _, _)| *n == name).collect();
            let mut wanted: Vec<Vec<Matcher>> = vec![vec![]];
            for &(key, op, value) in &matchers {
                if op == "=~" {
                    wanted = wanted
                        .into_iter()
                        .flat_map(|w| value.split('|').map(move |v| [w.clone(), vec![(key, "=", v)]].concat()))
                        .collect();
                } else {
                    wanted.iter_mut().for_each(|w| w.push((key, op, value)));
                }
            }
            for want in wanted {
                let present = of_name.iter().any(|(_, labels, value)| {
                    value.parse::<f64>() == Ok(0.0)
                        && want.iter().all(|&(key, op, v)| match op {
                            "=" => label(labels, key) == Some(v),
                            "!=" => label(labels, key).is_some_and(|l| l != v),
                            _ => true,
                        })
                });
                assert!(present, "no `{name}` series matching {want:?} at 0 on a fresh worker:\n{exposition}");
                checked += 1;
            }
        }
        assert!(checked >= 30, "only {checked} selectors found");
        for reason in DEAD_LETTER_REASONS {
            let line =
                format!(r#"bunq_session_worker_deliveries_total{{outcome="dead_lettered",reason="{reason}"}} 0"#);
            assert!(exposition.contains(&line), "{line}");
        }
    }
}
