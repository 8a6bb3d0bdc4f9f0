//! Names unique to one test or run, so tests run in parallel against one broker and one
//! Redis and a run never meets another's leftovers.

use bunq_session_worker::amqp::topology::{Names, Retention, DEFAULT_RETRY_QUEUE_MAX_BYTES};

#[derive(Debug, Clone)]
pub struct TestNames {
    /// `KIND-` and 12 random hex digits, e.g. `it-3f9c0a1b2c4d`; every name below starts with it.
    pub id: String,
    pub topology: Names,
    /// The Redis key prefix, `ID:`.
    pub key_prefix: String,
}

impl TestNames {
    /// New names for a test or run of `kind` (`it`, `flt`, `bench`, `demo`): the kind
    /// says who left a name behind, should anything be.
    pub fn new(kind: &str) -> Self {
        let id = format!("{kind}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let topology = Names {
            input_exchange: format!("{id}.provisioning"),
            input_queue: format!("{id}.provision-status"),
            // The binding and routing keys are the production defaults: not shared state.
            input_binding_key: "partner_user_provision.#".into(),
            invalidation_binding_key: Some("session.invalid".into()),
            output_exchange: format!("{id}.sessions"),
            output_routing_key: "session.ready".into(),
            dead_letter_queue: format!("{id}.dead-letter"),
            retry_queue: format!("{id}.retry"),
            dead_letter_retention: Retention::DEFAULT,
            retry_queue_max_bytes: Some(DEFAULT_RETRY_QUEUE_MAX_BYTES),
        };
        Self { key_prefix: format!("{id}:"), id, topology }
    }

    /// A queue of the test's own beside the worker's, e.g. `queue("capture")`.
    pub fn queue(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.id)
    }
}
