//! bunq-session-worker: opens bunq API sessions for partner-provisioned users.
//!
//! One direction of data flow per delivery: queue → handler → bunq → Redis → publish → ack.
//!
//! - [`config`]: settings from environment variables and flags, validated at start-up.
//! - [`telemetry`]: logging (JSON or pretty).
//! - [`startup`]: builds the worker and runs it until a signal.
//! - [`amqp`]: topology, the supervised consumer, confirmed publishing, settlement.
//! - [`handler`]: one delivery from body to [`handler::Outcome`]; no AMQP types.
//! - [`event`]: the input and output event contracts; [`decide`]: when to act.
//! - [`session`]: the bunq handshake for one provision, retried, rate-limited, resumable.
//! - [`store`]: the Redis layout (session cache, handshake progress, locks);
//!   [`seal`]: secrets at rest, AES-256-GCM with key ids and rotation.
//! - [`renew`]: renewal of cached sessions before they expire, from a schedule in Redis
//!   that every replica serves.
//! - [`ratelimit`]: bunq's rate limits, shared by all replicas through Redis;
//!   [`budget`]: the shared session-server budget served earliest deadline first.
//! - [`retry`]: exponential backoff with jitter (the one module that knows `backoff`).
//! - [`failure`]: every failure classified, in one place; [`duration`]: `30s`-style settings.
//! - [`dead_letter`]: what a dead letter may keep (its credential sealed or removed).
//! - [`metrics`], [`ops`]: Prometheus metrics and the ops HTTP server.
//! - [`cli`]: the `check` and `publish` subcommands.

pub mod amqp;
pub mod budget;
pub mod cli;
pub mod close;
pub mod config;
pub mod dead_letter;
pub mod decide;
pub(crate) mod duration;
pub mod event;
pub(crate) mod failure;
pub(crate) mod handler;
pub mod metrics;
pub(crate) mod ops;
pub mod outage;
pub mod ratelimit;
pub mod renew;
pub(crate) mod retry;
pub mod seal;
pub(crate) mod session;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
