//! Which RabbitMQ to talk to: one or more broker URLs (the nodes of a cluster) and the TLS
//! files. A connection goes to the first node that answers; after a loss it starts with
//! the next one, so a replica does not keep knocking on the node that just went away
//! (client-side failover, as RabbitMQ's clustering guide recommends).

use crate::tls::TlsFiles;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connect as _, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The largest AMQP frame the worker asks for (RabbitMQ's default is 128 KiB). lapin keeps
/// a receive and a send buffer of 32 frames each, zeroed, per connection: 8 MiB resident
/// at RabbitMQ's default, for events of a few kilobytes (a larger body, up to
/// `MAX_MESSAGE_BYTES`, is split into more frames). At 32 KiB they take 2 MiB.
const FRAME_MAX: u32 = 32 * 1024;

#[derive(Debug, Clone)]
pub struct Broker {
    urls: Arc<[SecretString]>,
    tls: Option<Arc<TlsFiles>>,
    /// The node of the last connection made (`usize::MAX`: none yet).
    last: Arc<AtomicUsize>,
}

impl Broker {
    /// `urls` must not be empty (the configuration checks it).
    pub fn new(urls: Vec<SecretString>, tls: Option<TlsFiles>) -> Self {
        assert!(!urls.is_empty(), "at least one broker URL");
        Self { urls: urls.into(), tls: tls.map(Arc::new), last: Arc::new(AtomicUsize::new(usize::MAX)) }
    }

    pub(crate) fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_deref()
    }

    /// The `amqps://` URLs, for the start-up TLS check. They may hold a password.
    pub(crate) fn tls_urls(&self) -> impl Iterator<Item = &str> {
        self.urls.iter().map(|url| url.expose_secret()).filter(|url| url.starts_with("amqps://"))
    }

    /// How many nodes are configured.
    pub(crate) fn nodes(&self) -> usize {
        self.urls.len()
    }

    /// Opens a connection named after this process (the management UI shows who it is),
    /// trying every node once, starting after the one of the last connection. The error
    /// is the last node's.
    pub async fn connect(&self, name: &str) -> Result<(Connection, usize), lapin::Error> {
        let start = self.last.load(Ordering::Relaxed).wrapping_add(1) % self.urls.len();
        let mut last_error = None;
        for offset in 0..self.urls.len() {
            let node = (start + offset) % self.urls.len();
            match self.connect_to(node, name).await {
                Ok(connection) => {
                    self.last.store(node, Ordering::Relaxed);
                    return Ok((connection, node));
                }
                Err(e) => {
                    tracing::warn!(event = "amqp_node_unreachable", node, error = %bunq_protocol::redact::detail(&e.to_string()));
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one node was tried"))
    }

    async fn connect_to(&self, node: usize, name: &str) -> Result<Connection, lapin::Error> {
        let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
        let tls = self.tls.as_deref().map_or_else(OwnedTLSConfig::default, |files| OwnedTLSConfig {
            identity: files.identity.as_ref().map(|identity| OwnedIdentity::PKCS8 {
                pem: identity.cert_pem.clone(),
                key: identity.key_pem.to_vec(),
            }),
            cert_chain: files.ca_pem.as_ref().map(|pem| String::from_utf8_lossy(pem).into_owned()),
        });
        let runtime = lapin::runtime::default_runtime()?;
        let url = self.urls[node].expose_secret();
        match url.parse::<lapin::uri::AMQPUri>() {
            Ok(mut uri) => {
                // Unless the URL asks for one (`?frame_max=`), a frame size fit for the
                // events' few kilobytes; see FRAME_MAX.
                uri.query.frame_max.get_or_insert(FRAME_MAX);
                uri.connect_with_config(properties, tls, runtime).await
            }
            // The same parse error, as lapin words it.
            Err(_) => url.connect_with_config(properties, tls, runtime).await,
        }
    }
}
