//! The bench's output: the table on stdout and the flat figures of
//! `target/bench/report.json`.

use super::backlog::{Outcome, Scenario};
use super::budget_cost::Cost;
use super::cpu::Usage;
use super::traffic::Run;

/// Flat `name → number` figures, written as JSON.
#[derive(Default)]
pub struct Report(std::collections::BTreeMap<String, f64>);

impl Report {
    pub fn set(&mut self, key: &str, value: f64) {
        self.0.insert(key.to_owned(), value);
    }

    pub fn run(&mut self, prefix: &str, run: &Run) {
        self.set(&format!("{prefix}_events_per_s"), run.per_second);
        for (name, p) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)] {
            self.set(&format!("{prefix}_{name}_ms"), run.percentile(p));
        }
    }

    pub fn write(&self, smoke: bool) -> anyhow::Result<std::path::PathBuf> {
        anyhow::ensure!(self.0.values().all(|v| v.is_finite()), "a figure is not a number: {:?}", self.0);
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let dir = target.join("bench");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(if smoke { "report-smoke.json" } else { "report.json" });
        std::fs::write(&path, serde_json::to_string_pretty(&self.0)? + "\n")?;
        Ok(path)
    }
}

/// Everything the full run measured, for the table and the report.
pub struct Figures<'a> {
    pub cores: usize,
    pub events: usize,
    pub signatures_per_second: f64,
    pub crypto_floor: f64,
    pub floor: Run,
    pub fresh: Run,
    pub fresh_steady: f64,
    pub fresh_cpu: Usage,
    pub repeat: Run,
    pub dead: Run,
    pub paced: Run,
    pub half_rate: f64,
    pub stand_in_ms: f64,
    pub slow: Run,
    pub slow_bound: f64,
    /// Shared limit: session-server calls per second over `span` seconds, `answered` of
    /// them, and the 429s the stand-in answered.
    pub achieved: f64,
    pub span: f64,
    pub answered: usize,
    pub rejected: usize,
    pub backlog: Outcome,
    pub backlog_scenario: &'a Scenario,
    pub churn: Outcome,
    pub churn_scenario: &'a Scenario,
    /// The backlog again with token resets.
    pub resets: Outcome,
    pub budget_cost: Cost,
    pub idle_rss: u64,
    pub peak_rss: u64,
}

impl Figures<'_> {
    /// CPU milliseconds per session spent signing.
    fn signing_ms(&self) -> f64 {
        super::SIGNATURES_PER_SESSION * self.cores as f64 / self.signatures_per_second * 1000.0
    }

    /// The table: each run, where the CPU went, and each figure against its limit.
    pub fn print(&self) {
        let Figures {
            cores,
            events,
            signatures_per_second,
            crypto_floor,
            ref floor,
            ref fresh,
            fresh_steady,
            ref fresh_cpu,
            ref repeat,
            ref dead,
            ref paced,
            half_rate,
            stand_in_ms,
            ref slow,
            slow_bound,
            achieved,
            span,
            answered,
            rejected,
            ref backlog,
            backlog_scenario: scenario,
            ref churn,
            churn_scenario,
            ref resets,
            ref budget_cost,
            idle_rss,
            peak_rss,
        } = *self;
        let served_ratio = backlog.served_ratio();
        let expected_dead = backlog.backlog - backlog.sessions_announced;
        let all_expired = backlog.dead_letters.get("credential_expired").copied().unwrap_or(0) == expected_dead
            && backlog.dead_letters.values().sum::<usize>() == expected_dead;

        let rows = [
            (
                "new-session rate / crypto floor",
                fresh_steady / crypto_floor,
                ">= 0.70",
                fresh_steady / crypto_floor >= 0.70,
            ),
            (
                "slow bunq steady rate / prefetch bound",
                slow.steady_per_second(super::PREFETCH.into()) / slow_bound,
                ">= 0.90",
                slow.steady_per_second(super::PREFETCH.into()) / slow_bound >= 0.90,
            ),
            (
                "p99 latency overhead at half rate (ms)",
                paced.percentile(0.99) - stand_in_ms,
                "<= 20",
                paced.percentile(0.99) - stand_in_ms <= 20.0,
            ),
            (
                "shared limit: calls/s / budget",
                achieved / f64::from(super::SHARED_BUDGET),
                ">= 0.95",
                achieved / f64::from(super::SHARED_BUDGET) >= 0.95,
            ),
            ("shared limit: 429s from the stand-in", rejected as f64, "0", rejected == 0),
            ("backlog: served before expiry / possible", served_ratio, ">= 0.99", served_ratio >= 0.99),
            ("backlog: 429s from the stand-in", backlog.rejected_429 as f64, "0", backlog.rejected_429 == 0),
            (
                "resets: served / backlog (none dead-lettered)",
                resets.served_after_reset_ratio(),
                ">= 0.99",
                resets.served_after_reset_ratio() >= 0.99,
            ),
            (
                "resets: token resets per provision",
                resets.resets_per_provision().0,
                "<= needed",
                resets.resets_per_provision().0 <= resets.resets_per_provision().1,
            ),
            ("resets: 429s from the stand-in", resets.rejected_429 as f64, "0", resets.rejected_429 == 0),
            ("backlog: the rest dead-lettered credential_expired", expected_dead as f64, "all", all_expired),
            (
                "backlog: retry-queue trips per provision",
                backlog.retry_trips_per_provision,
                "<= 2",
                backlog.retry_trips_per_provision <= 2.0,
            ),
            (
                "churn: broker messages per provision",
                churn.broker_messages_per_provision,
                "<= 3",
                churn.broker_messages_per_provision <= 3.0,
            ),
            ("budget: admission cost, 100k / 1k waiters", budget_cost.ratio(), "<= 2", budget_cost.ratio() <= 2.0),
            ("idle RSS (MiB)", idle_rss as f64 / 1024.0, "<= 20", idle_rss as f64 / 1024.0 <= 20.0),
            ("peak RSS at prefetch 256 (MiB)", peak_rss as f64 / 1024.0, "<= 100", peak_rss as f64 / 1024.0 <= 100.0),
        ];

        println!();
        println!(
            "{:<44} {:>12} {:>10} {:>10} {:>10}",
            "end to end (same run)", "events/s", "p50 ms", "p95 ms", "p99 ms"
        );
        floor.print("baseline: broker publish→consume→ack");
        fresh.print("worker, new sessions (3 signed bunq calls)");
        repeat.print("worker, cached sessions (no bunq call)");
        dead.print("worker, malformed → dead letter (confirm)");
        paced.print(&format!("new sessions paced at {half_rate:.0}/s (half)"));
        slow.print("new sessions, bunq +300 ms, prefetch 256");
        println!(
            "
new-session throughput is {:.1}% of the broker floor; cached path {:.1}%; dead-letter path {:.1}%",
            100.0 * fresh.per_second / floor.per_second,
            100.0 * repeat.per_second / floor.per_second,
            100.0 * dead.per_second / floor.per_second
        );
        // Where the CPU went: signing's share of it is what the crypto floor counts.
        let signing_ms = self.signing_ms();
        println!(
            "new sessions: steady {fresh_steady:.0}/s (end to end {:.0}/s, with the filling and draining); {:.0}% of \
             {cores} cores busy; CPU per session {:.2} ms ({}), of which signing {signing_ms:.2} ms",
            fresh.per_second,
            100.0 * fresh_cpu.busy(),
            fresh_cpu.total() * 1000.0 / events as f64,
            fresh_cpu.describe(events),
        );
        println!(
            "crypto floor: {signatures_per_second:.0} RSA-2048 signatures/s on {cores} cores = {crypto_floor:.0} sessions/s; \
             slow-bunq bound {slow_bound:.0}/s, steady rate {:.0}/s (end to end {:.0}/s: the first sessions take 0.9 s to come out); stand-in time {stand_in_ms:.2} ms per session; \
             shared limit {achieved:.2} calls/s over {span:.1} s ({} answered)",
            slow.steady_per_second(super::PREFETCH.into()),
            slow.per_second,
            answered
        );
        println!(
            "backlog: {} credentials expiring {:.0} s after publish, budget {}/s over {} processes: {} sessions opened \
             before expiry of {:.0} possible, dead letters {:?} (publish → dead letter p50 {:.2} s, p99 {:.2} s); \
             {:.2} retry trips and {:.2} broker messages per provision",
            backlog.backlog,
            scenario.window.as_secs_f64(),
            scenario.budget,
            scenario.workers,
            backlog.served_before_expiry,
            backlog.possible,
            backlog.dead_letters,
            backlog.dead_letter_p50.as_secs_f64(),
            backlog.dead_letter_p99.as_secs_f64(),
            backlog.retry_trips_per_provision,
            backlog.broker_messages_per_provision,
        );
        println!(
            "churn: {} credentials expiring {:.0} s after publish behind a budget of {}/s: {} served, dead letters {:?} \
             (p50 {:.2} s after publish); {:.3} retry trips and {:.2} broker messages per provision",
            churn.backlog,
            churn_scenario.window.as_secs_f64(),
            churn_scenario.budget,
            churn.served_before_expiry,
            churn.dead_letters,
            churn.dead_letter_p50.as_secs_f64(),
            churn.retry_trips_per_provision,
            churn.broker_messages_per_provision,
        );
        budget_cost.print();
        println!(
            "
{:<44} {:>12} {:>10} {:>6}",
            "figure against its limit (same run)", "value", "target", "met"
        );
        for (label, value, target, met) in rows {
            println!("{label:<44} {value:>12.3} {target:>10} {:>6}", if met { "yes" } else { "NO" });
        }
    }

    /// The figures, for `report.json`.
    pub fn record(&self, report: &mut Report) {
        report.run("broker_floor", &self.floor);
        report.run("new_session", &self.fresh);
        report.run("cached_session", &self.repeat);
        report.run("dead_letter", &self.dead);
        report.run("paced", &self.paced);
        report.run("slow_bunq", &self.slow);
        report.set("new_session_steady_events_per_s", self.fresh_steady);
        report.set("crypto_floor_ratio", self.fresh_steady / self.crypto_floor);
        report.set("new_session_cpu_busy", self.fresh_cpu.busy());
        report.set("new_session_signing_cpu_ms", self.signing_ms());
        report.set("new_session_cpu_kernel_share", self.fresh_cpu.system_share());
        for (name, ms, _) in &self.fresh_cpu.ms_per_event(self.events) {
            report.set(&format!("new_session_cpu_ms_{}", name.split_whitespace().next().unwrap_or(name)), *ms);
        }
        report.set("slow_bunq_bound_events_per_s", self.slow_bound);
        report.set("slow_bunq_steady_events_per_s", self.slow.steady_per_second(super::PREFETCH.into()));
        report.set("slow_bunq_ratio", self.slow.steady_per_second(super::PREFETCH.into()) / self.slow_bound);
        report.set("stand_in_ms_per_session", self.stand_in_ms);
        report.set("latency_overhead_p50_ms", self.paced.percentile(0.50) - self.stand_in_ms);
        report.set("latency_overhead_p95_ms", self.paced.percentile(0.95) - self.stand_in_ms);
        report.set("latency_overhead_p99_ms", self.paced.percentile(0.99) - self.stand_in_ms);
        report.set("shared_limit_calls_per_s", self.achieved);
        report.set("shared_limit_ratio", self.achieved / f64::from(super::SHARED_BUDGET));
        report.set("shared_limit_429s", self.rejected as f64);
        report.set("served_before_expiry_ratio", self.backlog.served_ratio());
        report.set("served_after_reset_ratio", self.resets.served_after_reset_ratio());
        report.set("resets_per_provision", self.resets.resets_per_provision().0);
        report.set("resets_per_provision_limit", self.resets.resets_per_provision().1);
        report.set("resets_429s", self.resets.rejected_429 as f64);
        report.set("backlog_served_before_expiry", self.backlog.served_before_expiry as f64);
        report.set("backlog_possible", self.backlog.possible);
        report.set("backlog_429s", self.backlog.rejected_429 as f64);
        report.set(
            "backlog_credential_expired",
            self.backlog.dead_letters.get("credential_expired").copied().unwrap_or(0) as f64,
        );
        report.set("backlog_dead_letter_p50_s", self.backlog.dead_letter_p50.as_secs_f64());
        report.set("backlog_dead_letter_p99_s", self.backlog.dead_letter_p99.as_secs_f64());
        report.set("backlog_retry_trips_per_provision", self.backlog.retry_trips_per_provision);
        report.set("backlog_broker_messages_per_provision", self.backlog.broker_messages_per_provision);
        report.set("churn_backlog", self.churn.backlog as f64);
        report.set("churn_served_before_expiry", self.churn.served_before_expiry as f64);
        report.set("churn_dead_letter_p50_s", self.churn.dead_letter_p50.as_secs_f64());
        report.set("churn_retry_trips_per_provision", self.churn.retry_trips_per_provision);
        report.set("churn_broker_messages_per_provision", self.churn.broker_messages_per_provision);
        self.budget_cost.record(report);
        report.set("idle_rss_mib", self.idle_rss as f64 / 1024.0);
        report.set("peak_rss_mib", self.peak_rss as f64 / 1024.0);
    }
}
