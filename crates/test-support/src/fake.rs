//! fake-bunq as tests want it.

use fake_bunq::FakeConfig;
use std::time::Duration;

/// bunq's own limits make every retry of session-server wait 30 s; tests about other
/// things raise them (rate-limit tests set their own).
pub fn relaxed_fake() -> FakeConfig {
    fake_allowing(1000)
}

/// fake-bunq allowing `calls_per_second` on every endpoint, otherwise as bunq behaves.
pub fn fake_allowing(calls_per_second: u32) -> FakeConfig {
    FakeConfig {
        session_server_limit: (calls_per_second, Duration::from_secs(1)),
        other_post_limit: (calls_per_second, Duration::from_secs(1)),
        ..FakeConfig::default()
    }
}
