//! Removing what a test or run created: its queues and exchanges (or its whole vhost)
//! and its Redis keys. [`Leftovers`] does it on drop too, so a test that panics before
//! its teardown leaves nothing behind either.

use crate::names::TestNames;
use crate::services::{connect_amqp, connect_redis, rabbitmqctl, AMQP_URL, REDIS_URL};
use bunq_session_worker::amqp::topology::Names;
use bunq_session_worker::store::Redis;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::Connection;

/// Deletes the worker's queues and exchanges under `names`, and `extra_queues`. Each
/// delete may fail on its own (a test may have deleted a queue already): that is no
/// failure of the cleanup.
pub async fn delete_topology(
    connection: &Connection,
    names: &Names,
    extra_queues: &[String],
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let queues = [&names.input_queue, &names.retry_queue, &names.dead_letter_queue].into_iter().chain(extra_queues);
    for queue in queues {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for exchange in [&names.input_exchange, &names.output_exchange] {
        let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = channel.close(200, "cleanup".into()).await;
    Ok(())
}

/// Deletes every Redis key starting with `prefix`, batch by batch (a bench run leaves
/// thousands), on one server or every primary of a cluster (where the client splits a
/// DEL by slot).
pub async fn delete_keys(redis: &mut Redis, prefix: &str) -> Result<(), redis::RedisError> {
    let mut scan = redis.scan(&format!("{prefix}*")).await?;
    while let Some(keys) = scan.next_batch().await? {
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(&keys).query_async(redis).await?;
        }
    }
    Ok(())
}

/// What one test or run created.
#[derive(Debug, Clone)]
pub struct Cleanup {
    names: Names,
    extra_queues: Vec<String>,
    key_prefix: String,
    redis_url: String,
    vhost: Option<String>,
}

impl Cleanup {
    /// The worker's topology under `names` and the keys under their prefix, on this
    /// machine's RabbitMQ and Redis.
    pub fn new(names: &TestNames) -> Self {
        Self {
            names: names.topology.clone(),
            extra_queues: Vec::new(),
            key_prefix: names.key_prefix.clone(),
            redis_url: REDIS_URL.to_owned(),
            vhost: None,
        }
    }

    /// A queue of the test's own beside the worker's (a capture queue).
    pub fn queue(mut self, queue: &str) -> Self {
        self.extra_queues.push(queue.to_owned());
        self
    }

    /// The keys live in another Redis (a test's own).
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = url.to_owned();
        self
    }

    /// Everything on the broker is in `vhost`: deleting it deletes all of it at once.
    pub fn vhost(mut self, vhost: &str) -> Self {
        self.vhost = Some(vhost.to_owned());
        self
    }

    pub async fn run(&self) -> anyhow::Result<()> {
        match &self.vhost {
            Some(vhost) => rabbitmqctl(&["delete_vhost", vhost])?,
            None => {
                let connection = connect_amqp(AMQP_URL).await?;
                delete_topology(&connection, &self.names, &self.extra_queues).await?;
                let _ = connection.close(200, "cleanup".into()).await;
            }
        }
        delete_keys(&mut connect_redis(&self.redis_url)?, &self.key_prefix).await?;
        Ok(())
    }
}

/// Runs a [`Cleanup`] when dropped, unless [`Leftovers::clean`] already ran it: the
/// teardown a panicking test never reaches.
pub struct Leftovers {
    cleanup: Cleanup,
    armed: bool,
}

impl Leftovers {
    /// Create it as soon as there is something to clean up.
    pub fn new(cleanup: Cleanup) -> Self {
        Self { cleanup, armed: true }
    }

    /// The normal teardown: cleans up now. If that fails, the drop tries once more.
    pub async fn clean(mut self) -> anyhow::Result<()> {
        self.cleanup.run().await?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let cleanup = self.cleanup.clone();
        // A runtime of its own: the test's may be gone or panicking.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let _ = runtime.block_on(cleanup.run());
        })
        .join();
    }
}
