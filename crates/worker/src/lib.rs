//! bunq-session-worker: opens bunq API sessions for partner-provisioned users.
//!
//! One direction of data flow per delivery: queue → decode once → decide → bunq → Redis
//! → publish → ack (docs/architecture.md §2, §4).
//!
//! Layers, top to bottom. A module uses only modules of the layers below its own, never
//! one above, and two modules of one layer never use each other; no file takes part in
//! an import circle. `scripts/check-layers.sh` (in `make lint`) reads this list and checks
//! the code against it.
//! - `cli`: the `check`, `publish`, `dead-letters` and `session` subcommands.
//! - `startup`: builds the worker from its settings and runs it until a signal; the ops
//!   HTTP server (metrics, health, readiness).
//! - `config`: settings from environment variables and flags, validated at start-up into
//!   each part's own settings type.
//! - `amqp`: topology, the supervised consumer, confirmed publishing (the lifecycle's
//!   announcer), settlement, and what a dead-letter copy keeps.
//! - `provision`: one delivery's body decoded once, decided, handled to an outcome; no
//!   AMQP types.
//! - `partner`: with `CREDENTIAL_RESET=on`, the partner's own bunq session and the token
//!   resets it runs, handing the handler a fresh credential.
//! - `lifecycle`: a session's life for one provision: open (the bunq handshake),
//!   announce, renew, close.
//! - `ratelimit`: bunq's rate limits shared through Redis, and the session-server budget
//!   served earliest deadline first.
//! - `store`: the Redis layout (session cache, handshake progress, locks, renewal
//!   schedule) and the gate that holds work while Redis is away.
//! - leaves, using no other module of the crate: `failure` (every failure classified),
//!   `event` (the events published), `seal` (secrets at rest), `tls`, `duration`,
//!   `retry` (the one module that knows `backoff`), `metrics`, `telemetry`, `hardening`
//!   (core dumps off at start-up).
//!
//! Visibility: `pub(crate)` unless the binary, the demo, the bench or an integration test
//! needs an item.

pub mod amqp;
pub mod cli;
pub mod config;
pub(crate) mod duration;
pub mod event;
pub(crate) mod failure;
pub mod hardening;
pub mod lifecycle;
pub mod metrics;
pub(crate) mod partner;
pub mod provision;
pub mod ratelimit;
pub(crate) mod retry;
pub mod seal;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
