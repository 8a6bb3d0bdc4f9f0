//! The client against a raw HTTP peer that answers what bunq, a proxy or an attacker
//! might: only bunq's signed words count as bunq's, no redirect is followed, and no
//! token from an answer reaches an error's text.

use bunq_protocol::client::{BunqClient, ClientSettings, Installation};
use bunq_protocol::signing::{ClientKey, PublicKey};
use bunq_protocol::{BunqError, Retry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "3c9d1e0f5a7b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d";

/// Serves one canned answer per connection; counts connections.
async fn peer(answer: impl Fn() -> String + Send + Sync + 'static) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buffer = vec![0; 64 * 1024];
            let _ = socket.read(&mut buffer).await;
            let _ = socket.write_all(answer().as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (format!("http://{address}/v1"), hits)
}

fn response(status: &str, headers: &[(&str, String)], body: &str) -> String {
    let mut text = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

fn client(base_url: &str) -> BunqClient {
    let settings = ClientSettings {
        base_url: base_url.to_owned(),
        device_description: "test".to_owned(),
        permitted_ips: vec!["*".to_owned()],
        request_timeout: Duration::from_secs(5),
        user_agent: "test".to_owned(),
    };
    BunqClient::new(settings, Arc::new(ClientKey::generate().unwrap()), Arc::new(())).unwrap()
}

fn installation(server: &ClientKey) -> Installation {
    Installation {
        token: "installation-token".to_owned().into(),
        server_key: PublicKey::from_pem(server.public_key_pem()).unwrap(),
    }
}

#[tokio::test]
async fn an_unsigned_error_after_installation_is_transient_and_its_hint_ignored() {
    let server = ClientKey::generate().unwrap();
    for (status, body) in [
        ("403 Forbidden", r#"{"Error":[{"error_description":"Insufficient authentication."}]}"#),
        ("407 Proxy Authentication Required", "<html>proxy</html>"),
        ("429 Too Many Requests", r#"{"Error":[{"error_description":"a maximum of 1 calls per 86400 second"}]}"#),
    ] {
        let (url, _) = peer(move || response(status, &[], body)).await;
        let err =
            client(&url).create_session_server(&installation(&server), &SECRET.to_owned().into()).await.unwrap_err();
        assert!(matches!(err, BunqError::Unsigned { .. }), "{status}: {err:?}");
        assert_eq!(err.retry(), Retry::Transient { after: None }, "{status}");
    }
}

#[tokio::test]
async fn a_signed_error_is_bunqs_word() {
    let server = Arc::new(ClientKey::generate().unwrap());
    let signer = server.clone();
    let (url, _) = peer(move || {
        let body = r#"{"Error":[{"error_description":"User credentials are incorrect."}]}"#;
        response("400 Bad Request", &[("X-Bunq-Server-Signature", signer.sign(body.as_bytes()).unwrap())], body)
    })
    .await;
    let err = client(&url).create_session_server(&installation(&server), &SECRET.to_owned().into()).await.unwrap_err();
    assert!(matches!(err, BunqError::Api { status: 400, .. }), "{err:?}");
    assert_eq!(err.retry(), Retry::Permanent);
}

#[tokio::test]
async fn no_redirect_is_followed() {
    let (elsewhere, hits) = peer(|| response("200 OK", &[], "{}")).await;
    let location = format!("{elsewhere}/installation");
    let (url, _) = peer(move || response("307 Temporary Redirect", &[("Location", location.clone())], "")).await;
    let err = client(&url).create_installation().await.unwrap_err();
    assert!(matches!(err, BunqError::Api { status: 307, .. }), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect target was contacted");
}

#[tokio::test]
async fn a_token_in_the_wrong_shape_never_reaches_the_error_text() {
    let server = Arc::new(ClientKey::generate().unwrap());
    let shapes = [
        format!(r#"{{"Response":[{{"Id":{{"id":1}}}},{{"Token":"{SECRET}"}}]}}"#),
        format!(r#"{{"Response":[{{"Id":{{"id":1}}}},{{"Token":{{"token":["{SECRET}"]}}}}]}}"#),
        format!(r#"{{"Response":[{{"Id":{{"id":"{SECRET}"}}}},{{"Token":{{"token":"t"}}}}]}}"#),
        format!(r#"{{"Token":"{SECRET}"}}"#),
        format!(r#"{{"Response":"{SECRET}"}}"#),
        format!(
            r#"{{"Response":[{{"Id":{{"id":1}}}},{{"Token":{{"token":"t"}}}},{{"UserApiKey":{{"id":"{SECRET}"}}}}]}}"#
        ),
    ];
    for body in shapes {
        let signer = server.clone();
        let signed = body.clone();
        let (url, _) = peer(move || {
            response("200 OK", &[("X-Bunq-Server-Signature", signer.sign(signed.as_bytes()).unwrap())], &signed)
        })
        .await;
        let err = client(&url).create_session_server(&installation(&server), &"s".to_owned().into()).await.unwrap_err();
        assert!(matches!(err, BunqError::UnexpectedResponse { .. }), "{body}: {err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&SECRET[..20]), "{body}: {text}");
    }
}
