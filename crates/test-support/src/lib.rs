//! What the worker's integration tests, fault tests, bench and demo share, written once.
//!
//! - [`services`]: the machine's RabbitMQ and Redis, the client key fixture, free ports.
//! - [`names`]: queue, exchange and Redis key names unique to one test or run.
//! - [`settings`]: the worker settings tests use (fast retries, relaxed limits), as
//!   environment variables for a child process or as flags for an in-process worker.
//! - [`fake`]: fake-bunq with its rate limits relaxed.
//! - [`upstream`]: provision events published to the input exchange, as upstream does.
//! - [`downstream`]: a queue on the output exchange, as downstream would have one.
//! - [`ops`]: waiting for `/readyz`, reading `/metrics`.
//! - [`cleanup`]: removing what a test created, also when it panics ([`Leftovers`]).
//! - [`bodies`]: provision events as bunq sends them.
//! - [`redis_pair`]: a Redis primary with one replica, for writes that must be replicated.
//! - [`redis_cluster`]: a Redis Cluster of the test's own, its nodes killed, paused, cut
//!   off from their replicas and restarted.
//! - [`nodes`]: a CA, and Redis and RabbitMQ nodes with TLS, of the test's own.
//! - [`oracle`]: what the worker should keep of an input, from the input alone.
//! - [`logging`]: test logging, quiet unless `TEST_LOG` is set, with production's filter.

pub mod bodies;
pub mod budget;
pub mod cleanup;
pub mod downstream;
pub mod fake;
pub mod logging;
pub mod names;
pub mod nodes;
pub mod ops;
pub mod oracle;
pub mod redis_cluster;
pub mod redis_pair;
pub mod services;
pub mod settings;
pub mod upstream;

pub use bodies::{expiry_in, future_expiry, provision_body, random_id, random_token, ready_body, ready_body_with};
pub use cleanup::{delete_keys, delete_topology, Cleanup, Leftovers};
pub use downstream::capture_queue;
pub use fake::{fake_allowing, relaxed_fake};
pub use logging::init_test_logging;
pub use names::TestNames;
pub use services::{
    amqp_vhost_url, connect_amqp, connect_redis, connect_redis_cluster, free_port, rabbitmqctl, AMQP_URL, CLIENT_KEY,
    REDIS_URL,
};
pub use settings::WorkerEnv;
pub use upstream::{publish_input, publish_invalidation, publish_to_input, ROUTING_KEY};
