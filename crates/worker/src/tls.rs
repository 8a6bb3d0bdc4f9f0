//! TLS to RabbitMQ and Redis: a private CA and an optional client certificate per service,
//! read from PEM files at start-up so a bad file stops the worker before it takes work.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use zeroize::Zeroizing;

/// A TLS file or handshake that cannot work, naming the variable to fix; configuration
/// turns it into its own error, so start-up stops with the setting named.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {problem}")]
pub struct TlsError {
    pub(crate) variable: &'static str,
    pub(crate) problem: String,
}

fn invalid(variable: &'static str, problem: impl Into<String>) -> TlsError {
    TlsError { variable, problem: problem.into() }
}

/// The three variables of one service, e.g. `AMQP_TLS_CA_FILE`, so every error names
/// the file it is about.
#[derive(Debug, Clone, Copy)]
pub struct Variables {
    pub(crate) ca: &'static str,
    pub(crate) cert: &'static str,
    pub(crate) key: &'static str,
}

pub const AMQP: Variables = Variables { ca: "AMQP_TLS_CA_FILE", cert: "AMQP_TLS_CERT_FILE", key: "AMQP_TLS_KEY_FILE" };
pub const REDIS: Variables =
    Variables { ca: "REDIS_TLS_CA_FILE", cert: "REDIS_TLS_CERT_FILE", key: "REDIS_TLS_KEY_FILE" };

/// The PEM contents for one service's TLS connections.
#[derive(Clone)]
pub struct TlsFiles {
    /// CA certificates that sign the server's certificate, beside the system's roots
    /// (RabbitMQ) or instead of them (Redis, as its client does).
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// Certificate chain and private key presented to the server (mutual TLS).
    pub(crate) identity: Option<Identity>,
    pub(crate) variables: Variables,
}

#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) cert_pem: Vec<u8>,
    /// Wiped when dropped; the clients get copies they own.
    pub(crate) key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Reads and checks the files; `None` when none is set.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        variables: Variables,
    ) -> Result<Option<Self>, TlsError> {
        let ca_pem = ca.map(|path| read_certificates(path, variables.ca)).transpose()?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => return Err(invalid(variables.key, format!("required with {}", variables.cert))),
            (None, Some(_)) => return Err(invalid(variables.cert, format!("required with {}", variables.key))),
            (Some(cert), Some(key)) => {
                let cert_pem = read_certificates(cert, variables.cert)?;
                let key_pem = Zeroizing::new(read(key, variables.key)?);
                PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|_| invalid(variables.key, "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"))?;
                Some(Identity { cert_pem, key_pem })
            }
        };
        Ok((ca_pem.is_some() || identity.is_some()).then_some(Self { ca_pem, identity, variables }))
    }
}

/// The setting a failed TLS handshake points at: the CA when the server's certificate
/// did not verify, the client certificate when the server refused ours (or its absence).
pub(crate) fn blame(error: &str, variables: Variables) -> Option<&'static str> {
    let error = error.to_ascii_lowercase();
    // rustls words its own verdict on the server "invalid peer certificate"; a verdict of
    // the server on ours arrives as an alert.
    if error.contains("invalid peer certificate")
        || error.contains("unknownissuer")
        || error.contains("notvalidforname")
    {
        Some(variables.ca)
    } else if error.contains("received fatal alert") {
        Some(variables.cert)
    } else {
        None
    }
}

/// Connects to `url`'s host and port and runs the TLS handshake with these files, the
/// way the service's client will: a server certificate that does not verify against the
/// CA, or a server that refuses the client certificate, is reported naming the setting.
/// Anything else (the service not up yet, a name that does not resolve) is `Ok`: that is
/// an outage the worker rides out, not a wrong setting.
pub(crate) async fn probe(url: &str, default_port: u16, files: &TlsFiles) -> Result<(), TlsError> {
    use tokio::io::AsyncReadExt as _;
    use tokio_rustls::rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
    let Some(ca_pem) = &files.ca_pem else { return Ok(()) };
    let Ok(url) = url::Url::parse(url) else { return Ok(()) };
    let Some(host) = url.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()) else { return Ok(()) };
    let port = url.port().unwrap_or(default_port);
    let vars = files.variables;
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem).flatten() {
        roots.add(certificate).map_err(|e| invalid(vars.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match &files.identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(&identity.cert_pem).flatten().collect();
            let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)
                .map_err(|_| invalid(vars.key, "holds no PEM private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(vars.cert, format!("does not match {}: {e}", vars.key)))?
        }
    };
    let Ok(name) = ServerName::try_from(host.clone()) else { return Ok(()) };
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let Ok(Ok(tcp)) = tokio::time::timeout(PROBE_TIMEOUT, connect).await else { return Ok(()) };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut stream = match tokio::time::timeout(PROBE_TIMEOUT, connector.connect(name, tcp)).await {
        Err(_) => return Ok(()),
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(handshake_error(&e, vars, &host)),
    };
    // With TLS 1.3 the server judges our certificate after the handshake: its verdict
    // is an alert on the first read. Silence means it waits for the protocol: accepted.
    let mut byte = [0u8; 1];
    match tokio::time::timeout(std::time::Duration::from_millis(500), stream.read(&mut byte)).await {
        Ok(Err(e)) => Err(handshake_error(&e, vars, &host)),
        Ok(Ok(0)) if files.identity.is_none() => Err(invalid(
            vars.cert,
            format!(
                "{host} closed the connection right after the TLS handshake: does it require a client certificate?"
            ),
        )),
        _ => Ok(()),
    }
}

const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn handshake_error(error: &std::io::Error, vars: Variables, host: &str) -> TlsError {
    let text = bunq_protocol::redact::detail(&error.to_string());
    let variable = blame(&text, vars).unwrap_or(vars.ca);
    invalid(variable, format!("the TLS handshake with {host} failed: {text}"))
}

fn read(path: &Path, variable: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| invalid(variable, format!("cannot read `{}`: {}", path.display(), e.kind())))
}

fn read_certificates(path: &Path, variable: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = read(path, variable)?;
    let certificates = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Ok(pem),
        _ => Err(invalid(variable, format!("`{}` holds no PEM certificate", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_error_names_the_file_to_look_at() {
        let ca = "IO error: invalid peer certificate: UnknownIssuer";
        assert_eq!(blame(ca, AMQP), Some("AMQP_TLS_CA_FILE"));
        for refused in ["received fatal alert: CertificateRequired", "received fatal alert: UnknownCA"] {
            assert_eq!(blame(refused, REDIS), Some("REDIS_TLS_CERT_FILE"));
        }
        assert_eq!(blame("Connection refused (os error 111)", AMQP), None);
    }

    #[test]
    fn files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = TlsFiles::load(Some(&junk), None, None, AMQP).unwrap_err();
        assert_eq!(err.variable, "AMQP_TLS_CA_FILE");
        let err = TlsFiles::load(None, Some(&junk), None, REDIS).unwrap_err();
        assert_eq!(err.variable, "REDIS_TLS_KEY_FILE");
        let missing = dir.path().join("missing.pem");
        let err = TlsFiles::load(Some(&missing), None, None, REDIS).unwrap_err();
        assert_eq!(err.variable, "REDIS_TLS_CA_FILE");
        assert!(TlsFiles::load(None, None, None, AMQP).unwrap().is_none());
    }
}
