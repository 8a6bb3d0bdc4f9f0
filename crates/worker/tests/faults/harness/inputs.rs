//! What goes in and what each input should end as: a mixed stream of provisions.

use test_support::{expiry_in, future_expiry, provision_body, random_token, ready_body};

/// What one input should end as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Exactly one cached session, announced with one event id.
    Session { provision_id: u64, token: String },
    /// Exactly one dead letter with this reason.
    DeadLetter(&'static str),
    /// Acked with no output.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct Input {
    pub body: Vec<u8>,
    pub expect: Expect,
}

/// `count` onboarding-ready provisions with ids from `first` on, nothing else.
pub fn ready_stream(first: u64, count: usize) -> Vec<Input> {
    (first..first + count as u64)
        .map(|id| {
            let token = random_token();
            Input { body: ready_body(id, &token), expect: Expect::Session { provision_id: id, token } }
        })
        .collect()
}

/// A stream of `ready` onboarding-ready provisions, with malformed, expired, not-ready,
/// token-less and duplicate events mixed in.
pub fn mixed_stream(ready: usize) -> Vec<Input> {
    let base = u64::from(rand::random::<u32>()) * 1000;
    let future = future_expiry();
    let past = expiry_in(time::Duration::minutes(-5));
    let mut inputs = Vec::new();
    for i in 0..ready as u64 {
        let id = base + i;
        let token = random_token();
        let body = ready_body(id, &token);
        inputs.push(Input { body, expect: Expect::Session { provision_id: id, token } });
        match i % 8 {
            0 => inputs
                .push(Input { body: format!("garbage {i}").into_bytes(), expect: Expect::DeadLetter("malformed") }),
            1 => inputs.push(Input {
                body: provision_body(
                    base + 100_000 + i,
                    "CREATED",
                    "PENDING_PROCESS_USER_ONBOARDING",
                    Some("expired-token"),
                    &past,
                    true,
                ),
                expect: Expect::DeadLetter("credential_expired"),
            }),
            2 => inputs.push(Input {
                body: provision_body(
                    base + 200_000 + i,
                    "CREATED",
                    "PENDING_PROCESS_OAUTH_REQUEST",
                    Some("t"),
                    &future,
                    true,
                ),
                expect: Expect::Skipped,
            }),
            3 => inputs.push(Input {
                body: provision_body(
                    base + 300_000 + i,
                    "CREATED",
                    "PENDING_PROCESS_USER_ONBOARDING",
                    None,
                    &future,
                    true,
                ),
                expect: Expect::Skipped,
            }),
            4 => {
                // The same event again: a duplicate from upstream.
                let original = inputs[inputs.len() - 1].clone();
                inputs.push(original);
            }
            _ => {}
        }
    }
    inputs
}
