//! RabbitMQ: topology, confirmed publishing, the consume loop and its supervisor.

pub(crate) mod consume;
pub mod headers;
pub(crate) mod publish;
pub(crate) mod settle;
pub(crate) mod supervisor;
pub mod topology;

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// Opens a connection named after this process, so the management UI shows who it is.
pub async fn connect(url: &SecretString, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    Connection::connect(url.expose_secret(), properties).await
}
