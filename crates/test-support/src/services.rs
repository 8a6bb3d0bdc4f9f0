//! The services every test talks to: this machine's RabbitMQ and Redis (started by
//! `.ci/run` or by hand), and the client key fixture.

use bunq_session_worker::store::{self, Redis, Target};
use lapin::{Connection, ConnectionProperties};

/// The machine's RabbitMQ, default vhost.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The machine's Redis, database 0. Tests share it; each keeps to its own key prefix.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// An RSA-2048 client key (PKCS#8) at the workspace root, so no test generates one.
pub const CLIENT_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/client_key.pem");

/// The machine's RabbitMQ in `vhost` (see [`rabbitmqctl`] to create one).
pub fn amqp_vhost_url(vhost: &str) -> String {
    format!("amqp://guest:guest@127.0.0.1:5672/{vhost}")
}

pub async fn connect_amqp(url: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(url, ConnectionProperties::default()).await
}

/// A Redis connection as the worker makes it (reconnecting, with timeouts).
pub fn connect_redis(url: &str) -> Result<Redis, redis::RedisError> {
    store::connect(&Target::Single(url.to_owned().into()), None)
}

/// A Redis Cluster connection as the worker makes it, from seed nodes.
pub fn connect_redis_cluster(seeds: &[String]) -> Result<Redis, redis::RedisError> {
    store::connect(&Target::Cluster(seeds.iter().map(|url| url.clone().into()).collect()), None)
}

/// Runs `rabbitmqctl` (vhosts, closing connections); fails with its stderr.
pub fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("rabbitmqctl").args(args).output()?;
    anyhow::ensure!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// A port free right now, for a child process whose port the test must know in advance.
/// Never the same port twice in one test process: the kernel may hand a released port out
/// again, and two nodes started side by side would then race for it (a TLS client once
/// reached another test's plaintext node that way: `InvalidContentType`).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("an ephemeral port");
        let port = listener.local_addr().expect("a bound listener has an address").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
