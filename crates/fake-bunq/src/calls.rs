//! The record of every `/v1` call, for assertions in tests (`GET /_fake/calls`).

use super::faults::{Endpoint, FaultAction};
use serde::Serialize;
use std::collections::BTreeMap;

/// One `/v1` call as the fake saw and answered it. Holds no secrets or tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedCall {
    /// 1-based order of arrival.
    pub seq: u64,
    pub endpoint: Endpoint,
    pub method: String,
    /// The client's `X-Bunq-Client-Request-Id`, if sent.
    pub request_id: Option<String>,
    /// Whether `X-Bunq-Client-Signature` verified over the body; `None` when the call
    /// never got that far or the endpoint does not check it (installation).
    pub signature_valid: Option<bool>,
    /// The status answered; `None` when the connection was dropped or left hanging.
    pub status: Option<u16>,
    /// The installation the token belonged to, once authenticated.
    pub installation_id: Option<u64>,
    /// A short SHA-256 prefix of the body's `secret`, never the secret.
    pub secret_hash: Option<String>,
    /// The session a `DELETE /session/{id}` ended (or tried to), once authenticated.
    pub session_id: Option<u64>,
    /// The injected fault, if one fired.
    pub fault: Option<FaultAction>,
    /// The client's address as seen by the fake.
    pub peer: String,
    /// When the fake started handling the call.
    #[serde(skip)]
    pub received: std::time::Instant,
    /// How long the fake took to answer (its own processing, signing, injected latency),
    /// in microseconds; 0 until answered. The bench subtracts it from the worker's latency.
    pub handled_us: u64,
}

/// Aggregates over the call log and sessions, for `GET /_fake/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Calls per endpoint name, whatever their outcome.
    pub calls_per_endpoint: BTreeMap<String, usize>,
    /// Calls per status code (`"no_answer"` for no answer).
    pub calls_per_status: BTreeMap<String, usize>,
    /// Sessions opened per short secret hash (never reset by clearing calls).
    pub sessions_per_secret_hash: BTreeMap<String, usize>,
    pub installations: usize,
    pub devices: usize,
    pub sessions: usize,
    /// device-server and session-server calls refused because a token reset had
    /// replaced the secret.
    pub refused_superseded_tokens: usize,
    /// device-server and session-server calls refused because the secret was past its
    /// expiry (a provision's `expiry_time`, the TTL, or set `EXPIRED`).
    pub refused_expired_tokens: usize,
    /// Token resets started, over all provisions.
    pub token_resets: usize,
}

/// Append-only log with a running sequence number.
#[derive(Debug, Default)]
pub struct CallLog {
    calls: Vec<RecordedCall>,
    next_seq: u64,
}

impl CallLog {
    /// Stores the call, assigning its sequence number.
    pub fn push(&mut self, mut call: RecordedCall) {
        self.next_seq += 1;
        call.seq = self.next_seq;
        self.calls.push(call);
    }

    pub fn all(&self) -> Vec<RecordedCall> {
        self.calls.clone()
    }

    /// Forgets recorded calls; sequence numbers keep increasing so a test never
    /// confuses an old record with a new one.
    pub fn clear(&mut self) {
        self.calls.clear();
    }

    pub fn fill_stats(&self, stats: &mut Stats) {
        for call in &self.calls {
            *stats.calls_per_endpoint.entry(call.endpoint.as_str().to_owned()).or_default() += 1;
            let status = call.status.map_or_else(|| "no_answer".to_owned(), |s| s.to_string());
            *stats.calls_per_status.entry(status).or_default() += 1;
        }
    }
}
