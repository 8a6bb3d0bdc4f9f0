//! Fault injection: which call misbehaves, and how.
//!
//! Rules are checked in order for every `/v1` call; the first that fires decides the
//! fault. A rule fires either for the next N matching calls (a counter) or with a
//! probability drawn from a seeded RNG, so a test that makes the same calls sees the
//! same faults on every run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The endpoints the fake serves, as named in fault rules, call records and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    Installation,
    DeviceServer,
    SessionServer,
    /// `DELETE /v1/session/{id}`.
    Session,
    /// `POST`/`GET /v1/user/{userId}/notification-filter-url`.
    NotificationFilterUrl,
    /// `PUT`/`GET /v1/partner-user-provision/{id}`, on the partner's session.
    PartnerUserProvision,
    /// Any other `/v1` path (answered 404/405).
    Other,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Installation => "installation",
            Endpoint::DeviceServer => "device-server",
            Endpoint::SessionServer => "session-server",
            Endpoint::Session => "session",
            Endpoint::NotificationFilterUrl => "notification-filter-url",
            Endpoint::PartnerUserProvision => "partner-user-provision",
            Endpoint::Other => "other",
        }
    }
}

/// Which endpoints a rule applies to: one by name, or `"any"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointMatch {
    Any,
    Installation,
    DeviceServer,
    SessionServer,
    /// Both methods of `/partner-user-provision/{id}`.
    PartnerUserProvision,
    /// Its `PUT` (the token reset) only.
    PartnerUserProvisionUpdate,
    /// Its `GET` only.
    PartnerUserProvisionRead,
}

impl EndpointMatch {
    /// `read`: the call is a GET.
    fn matches(self, endpoint: Endpoint, read: bool) -> bool {
        let partner = endpoint == Endpoint::PartnerUserProvision;
        match self {
            EndpointMatch::Any => true,
            EndpointMatch::Installation => endpoint == Endpoint::Installation,
            EndpointMatch::DeviceServer => endpoint == Endpoint::DeviceServer,
            EndpointMatch::SessionServer => endpoint == Endpoint::SessionServer,
            EndpointMatch::PartnerUserProvision => partner,
            EndpointMatch::PartnerUserProvisionUpdate => partner && !read,
            EndpointMatch::PartnerUserProvisionRead => partner && read,
        }
    }
}

/// What a firing rule does to the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// 500 with an HTML body (not JSON), before any processing.
    #[serde(rename = "http_500_html")]
    Http500Html,
    /// 503 with an HTML body, before any processing.
    #[serde(rename = "http_503")]
    Http503,
    /// 491 MAINTENANCE ERROR with a bunq Error body.
    #[serde(rename = "maintenance_491")]
    Maintenance491,
    /// 429 with bunq's message for the endpoint's configured limit.
    #[serde(rename = "rate_limited_429")]
    RateLimited429,
    /// Read the request, never answer (until the fake shuts down).
    Hang,
    /// Read the request, then close the connection without a response.
    DropConnection,
    /// Process the call (a session-server call opens its session), then close the
    /// connection without a response: the answer bunq sent is lost on the way.
    LoseAnswer,
    /// Process normally but send no `X-Bunq-Server-Signature`.
    MissingSignature,
    /// Process normally but send a signature that does not verify.
    CorruptSignature,
}

/// When a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// For each matching call with this probability (0.0..=1.0).
    Probability(f64),
    /// For the next N matching calls, then never again.
    NextCalls(u32),
}

/// One fault rule, e.g. `{"endpoint":"session-server","action":"http_500_html","next_calls":2}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    pub endpoint: EndpointMatch,
    pub action: FaultAction,
    #[serde(flatten)]
    pub trigger: Trigger,
}

/// The whole fault configuration; replaced as a unit (`PUT /_fake/faults`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Added before every `/v1` answer (including fault answers).
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Reseeds the probability RNG when set; otherwise the RNG continues its sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Faults {
    /// Every `/v1` call answered with `action`, every time: bunq down for good.
    pub fn always(action: FaultAction) -> Faults {
        let rule = FaultRule { endpoint: EndpointMatch::Any, action, trigger: Trigger::Probability(1.0) };
        Faults { rules: vec![rule], ..Faults::default() }
    }

    /// Rejects probabilities outside 0..=1 (NaN included).
    pub fn validate(&self) -> Result<(), String> {
        for (i, rule) in self.rules.iter().enumerate() {
            if let Trigger::Probability(p) = rule.trigger {
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("rules[{i}].probability must be within 0..=1"));
                }
            }
        }
        Ok(())
    }
}

/// Live fault state: the configuration plus what counters and the RNG have consumed.
#[derive(Debug)]
pub struct FaultInjector {
    faults: Faults,
    /// Calls each `NextCalls` rule still applies to (index-aligned with `faults.rules`).
    remaining: Vec<u32>,
    rng: StdRng,
}

impl FaultInjector {
    pub fn new(faults: Faults, seed: u64) -> Self {
        let mut injector = Self { faults: Faults::default(), remaining: Vec::new(), rng: StdRng::seed_from_u64(seed) };
        injector.replace(faults);
        injector
    }

    /// Installs a new configuration; counters restart from the new rules.
    pub fn replace(&mut self, faults: Faults) {
        if let Some(seed) = faults.seed {
            self.rng = StdRng::seed_from_u64(seed);
        }
        self.remaining = faults
            .rules
            .iter()
            .map(|r| match r.trigger {
                Trigger::NextCalls(n) => n,
                Trigger::Probability(_) => 0,
            })
            .collect();
        self.faults = faults;
    }

    pub fn current(&self) -> Faults {
        self.faults.clone()
    }

    pub fn latency_ms(&self) -> u64 {
        self.faults.latency_ms
    }

    /// Decides the fault for one call, consuming counters and RNG draws. Only rules
    /// that match the endpoint draw from the RNG, so the sequence depends only on the
    /// calls made to matching endpoints.
    pub fn decide(&mut self, endpoint: Endpoint, read: bool) -> Option<FaultAction> {
        for (i, rule) in self.faults.rules.iter().enumerate() {
            if !rule.endpoint.matches(endpoint, read) {
                continue;
            }
            let fires = match rule.trigger {
                Trigger::NextCalls(_) => {
                    let left = &mut self.remaining[i];
                    if *left > 0 {
                        *left -= 1;
                        true
                    } else {
                        false
                    }
                }
                Trigger::Probability(p) => self.rng.random::<f64>() < p,
            };
            if fires {
                return Some(rule.action);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(endpoint: EndpointMatch, action: FaultAction, trigger: Trigger) -> FaultRule {
        FaultRule { endpoint, action, trigger }
    }

    fn with_rules(rules: Vec<FaultRule>) -> Faults {
        Faults { rules, ..Faults::default() }
    }

    #[test]
    fn rule_json_is_flat() {
        let json = r#"{"latency_ms":5,"rules":[
            {"endpoint":"session-server","action":"http_500_html","next_calls":2},
            {"endpoint":"any","action":"drop_connection","probability":0.25}]}"#;
        let faults: Faults = serde_json::from_str(json).unwrap();
        assert_eq!(faults.latency_ms, 5);
        assert_eq!(
            faults.rules[0],
            rule(EndpointMatch::SessionServer, FaultAction::Http500Html, Trigger::NextCalls(2))
        );
        assert_eq!(faults.rules[1].trigger, Trigger::Probability(0.25));
        let back: Faults = serde_json::from_str(&serde_json::to_string(&faults).unwrap()).unwrap();
        assert_eq!(back, faults);
    }

    #[test]
    fn next_calls_fire_exactly_n_times_on_matching_endpoint_only() {
        let faults = with_rules(vec![rule(EndpointMatch::SessionServer, FaultAction::Http503, Trigger::NextCalls(2))]);
        let mut inj = FaultInjector::new(faults, 1);
        assert_eq!(inj.decide(Endpoint::DeviceServer, false), None);
        assert_eq!(inj.decide(Endpoint::SessionServer, false), Some(FaultAction::Http503));
        assert_eq!(inj.decide(Endpoint::SessionServer, false), Some(FaultAction::Http503));
        assert_eq!(inj.decide(Endpoint::SessionServer, false), None);
    }

    #[test]
    fn partner_rules_can_pick_the_put_or_the_get() {
        let faults = with_rules(vec![
            rule(EndpointMatch::PartnerUserProvisionRead, FaultAction::Http503, Trigger::NextCalls(1)),
            rule(EndpointMatch::PartnerUserProvisionUpdate, FaultAction::LoseAnswer, Trigger::NextCalls(1)),
        ]);
        let mut inj = FaultInjector::new(faults, 0);
        assert_eq!(inj.decide(Endpoint::SessionServer, true), None);
        assert_eq!(inj.decide(Endpoint::PartnerUserProvision, false), Some(FaultAction::LoseAnswer));
        assert_eq!(inj.decide(Endpoint::PartnerUserProvision, true), Some(FaultAction::Http503));
        assert_eq!(inj.decide(Endpoint::PartnerUserProvision, true), None);
        let json: Faults =
            serde_json::from_str(r#"{"rules":[{"endpoint":"partner-user-provision","action":"hang","next_calls":1}]}"#)
                .unwrap();
        assert_eq!(json.rules[0].endpoint, EndpointMatch::PartnerUserProvision);
    }

    #[test]
    fn probability_is_reproducible_for_a_seed() {
        let faults = with_rules(vec![rule(EndpointMatch::Any, FaultAction::Hang, Trigger::Probability(0.5))]);
        let run = |seed| {
            let mut inj = FaultInjector::new(faults.clone(), seed);
            (0..64).map(|_| inj.decide(Endpoint::Installation, false).is_some()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let fired = run(7).iter().filter(|f| **f).count();
        assert!((16..=48).contains(&fired), "{fired} of 64 at p=0.5");
    }

    #[test]
    fn probability_bounds_are_respected() {
        let faults = with_rules(vec![
            rule(EndpointMatch::Any, FaultAction::Hang, Trigger::Probability(0.0)),
            rule(EndpointMatch::Any, FaultAction::Http503, Trigger::Probability(1.0)),
        ]);
        let mut inj = FaultInjector::new(faults, 3);
        for _ in 0..100 {
            assert_eq!(inj.decide(Endpoint::SessionServer, false), Some(FaultAction::Http503));
        }
    }

    #[test]
    fn first_firing_rule_wins() {
        let faults = with_rules(vec![
            rule(EndpointMatch::SessionServer, FaultAction::MissingSignature, Trigger::NextCalls(1)),
            rule(EndpointMatch::Any, FaultAction::CorruptSignature, Trigger::NextCalls(5)),
        ]);
        let mut inj = FaultInjector::new(faults, 0);
        assert_eq!(inj.decide(Endpoint::SessionServer, false), Some(FaultAction::MissingSignature));
        assert_eq!(inj.decide(Endpoint::SessionServer, false), Some(FaultAction::CorruptSignature));
    }

    #[test]
    fn invalid_probability_is_rejected() {
        let faults = with_rules(vec![rule(EndpointMatch::Any, FaultAction::Hang, Trigger::Probability(1.5))]);
        assert!(faults.validate().is_err());
    }
}
