//! One connection type for both deployments users run: a single Redis (or a managed
//! primary behind one address) and Redis Cluster. Every command the worker sends goes
//! through [`Redis`]; on a cluster the client routes each command by its key's slot,
//! which is why every multi-key script keeps its keys under one hash tag.

use crate::tls::TlsFiles;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// Where the worker's Redis is: `REDIS_URL` or `REDIS_CLUSTER_URLS`.
#[derive(Debug, Clone)]
pub enum Target {
    Single(SecretString),
    /// Seed nodes; the client learns the rest of the cluster from them.
    Cluster(Vec<SecretString>),
}

impl Target {
    /// The setting it came from, for messages.
    pub(crate) fn variable(&self) -> &'static str {
        match self {
            Target::Single(_) => "REDIS_URL",
            Target::Cluster(_) => "REDIS_CLUSTER_URLS",
        }
    }

    pub(crate) fn urls(&self) -> &[SecretString] {
        match self {
            Target::Single(url) => std::slice::from_ref(url),
            Target::Cluster(urls) => urls,
        }
    }
}

/// Commands fail fast while Redis (or a slot's primary) is away, so deliveries are held
/// (see `outage.rs`) instead of hanging; both clients reconnect by themselves, and the
/// cluster client re-learns the slot map after a failover.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub enum Redis {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl From<ConnectionManager> for Redis {
    fn from(conn: ConnectionManager) -> Self {
        Redis::Single(conn)
    }
}

impl From<ClusterConnection> for Redis {
    fn from(conn: ClusterConnection) -> Self {
        Redis::Cluster(conn)
    }
}

/// A lazy connection to `target`: nothing is dialled until the first command, so a
/// Redis that is still starting does not stop the worker's start-up.
pub fn connect(target: &Target, tls: Option<&TlsFiles>) -> RedisResult<Redis> {
    match target {
        Target::Single(url) => {
            let client = match tls {
                None => redis::Client::open(url.expose_secret())?,
                Some(files) => redis::Client::build_with_tls(url.expose_secret(), certificates(files))?,
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            Ok(Redis::Single(ConnectionManager::new_lazy_with_config(client, config)?))
        }
        Target::Cluster(urls) => {
            let mut builder = ClusterClientBuilder::new(urls.iter().map(|url| url.expose_secret()))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                // MOVED/ASK and a failover's short gap are followed a few times within
                // one command; a longer gap is an outage the gate handles.
                .retries(3)
                .max_retry_wait(500);
            if let Some(files) = tls {
                builder = builder.certs(certificates(files));
            }
            let client = builder.build()?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT);
            Ok(Redis::Cluster(client.get_pending_async_connection_with_config(config)))
        }
    }
}

fn certificates(files: &TlsFiles) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: files.identity.as_ref().map(|identity| redis::ClientTlsConfig {
            client_cert: identity.cert_pem.clone(),
            client_key: identity.key_pem.to_vec(),
        }),
        root_cert: files.ca_pem.clone(),
    }
}

impl Redis {
    /// The keys matching `pattern`, batch by batch, read with SCAN (never KEYS, which
    /// blocks a busy server); on a cluster SCAN runs on each primary, since each holds
    /// its own slots.
    pub async fn scan(&self, pattern: &str) -> RedisResult<Scan> {
        let nodes = match self {
            Redis::Single(_) => vec![None],
            Redis::Cluster(conn) => primaries(&mut conn.clone()).await?.into_iter().map(Some).collect(),
        };
        Ok(Scan { conn: self.clone(), pattern: pattern.to_owned(), nodes, cursor: 0 })
    }
}

impl Redis {
    /// Redis's clock (`TIME`): every replica reads the same one, whatever its own says.
    pub(crate) async fn time(&self) -> RedisResult<time::OffsetDateTime> {
        let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut self.clone()).await?;
        let at = time::OffsetDateTime::from_unix_timestamp(seconds)
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Parse, "TIME out of range")))?;
        Ok(at + time::Duration::microseconds(micros))
    }

    /// `WAIT replicas timeout` where `key` lives: how many replicas have every write this
    /// worker sent there so far. On a cluster it goes to the primary of `key`'s slot, over
    /// the connection that carried the writes.
    pub(crate) async fn wait_for_replicas(&self, key: &str, replicas: u32, timeout: Duration) -> RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Redis::Single(conn) => wait.query_async(&mut conn.clone()).await,
            Redis::Cluster(conn) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                Ok(redis::from_redis_value(conn.clone().route_command(wait, routing).await?)?)
            }
        }
    }
}

/// A SCAN under way, node by node.
pub struct Scan {
    conn: Redis,
    pattern: String,
    /// Nodes still to scan, the current one last; `None` is a single server.
    nodes: Vec<Option<(String, u16)>>,
    cursor: u64,
}

impl Scan {
    /// The next batch of keys (possibly empty), or `None` when every node is done.
    pub async fn next_batch(&mut self) -> RedisResult<Option<Vec<String>>> {
        let Some(node) = self.nodes.last().cloned() else { return Ok(None) };
        let mut scan = redis::cmd("SCAN");
        scan.arg(self.cursor).arg("MATCH").arg(&self.pattern).arg("COUNT").arg(500);
        let (next, batch): (u64, Vec<String>) = match (&mut self.conn, node) {
            (Redis::Cluster(conn), Some((host, port))) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                redis::from_redis_value(conn.route_command(scan, route).await?)?
            }
            (conn, _) => scan.query_async(conn).await?,
        };
        self.cursor = next;
        if next == 0 {
            self.nodes.pop();
        }
        Ok(Some(batch))
    }
}

/// The primaries' addresses, as CLUSTER SLOTS names them (the names the client routes by).
async fn primaries(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let slots: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut primaries = Vec::new();
    for range in slots {
        // [start, end, [host, port, id, ...], replicas...]
        let Some(Value::Array(primary)) = range.get(2) else { continue };
        let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else { continue };
        let node: (String, u16) = (redis::from_redis_value_ref(host)?, redis::from_redis_value_ref(port)?);
        if !primaries.contains(&node) {
            primaries.push(node);
        }
    }
    Ok(primaries)
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Redis::Single(conn) => conn.req_packed_command(cmd),
            Redis::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Redis::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::Single(conn) => conn.get_db(),
            Redis::Cluster(conn) => conn.get_db(),
        }
    }
}
