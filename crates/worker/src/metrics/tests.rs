//! The metrics against what the chart's alerts and dashboard read.
use super::*;
use std::collections::BTreeSet;

/// The alerts and dashboard the Helm chart ships, read at compile time so a renamed
/// metric fails here.
const ALERTS: &str = include_str!("../../../../helm/bunq-session-worker/templates/prometheusrule.yaml");
const DASHBOARD: &str = include_str!("../../../../helm/bunq-session-worker/dashboards/bunq-session-worker.json");

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
        let prose = ["summary:", "description:", "\"description\":"].iter().any(|p| line.trim_start().starts_with(p));
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
        let line = format!(r#"bunq_session_worker_deliveries_total{{outcome="dead_lettered",reason="{reason}"}} 0"#);
        assert!(exposition.contains(&line), "{line}");
    }
}
