//! Drives an in-process fake-bunq over real HTTP, as an independent client would:
//! reqwest for transport, the crate's signing module for signatures.
//!
//! This file holds the client; the tests are grouped by feature: `handshake` the happy
//! path, `rejections` what bunq refuses, `rate_limits`, `faults`, `admin`, `partner` (the
//! partner's session and token reset) and `partner_client` (the same through
//! `bunq_protocol`'s client).

mod admin;
mod faults;
mod handshake;
mod partner;
mod partner_client;
mod rate_limits;
mod rejections;

use bunq_protocol::signing::{ClientKey, PublicKey};
use fake_bunq::{spawn, FakeConfig, FakeHandle};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

const UA: &str = "fake-bunq-integration-test/1.0";

/// RSA-2048 generation dominates test time; one key pair serves every test client.
fn client_key() -> &'static ClientKey {
    static KEY: OnceLock<ClientKey> = OnceLock::new();
    KEY.get_or_init(|| ClientKey::generate().expect("key generation"))
}

async fn start(config: FakeConfig) -> FakeHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn(listener, config).await.unwrap()
}

/// A fake started with `config` and a client for it.
async fn start_with_client(config: FakeConfig) -> (FakeHandle, Client) {
    let fake = start(config).await;
    let client = Client::new(&fake);
    (fake, client)
}

/// The body of `POST /installation` with the shared client key.
fn installation_body() -> Value {
    json!({"client_public_key": client_key().public_key_pem()})
}

/// One answer, with the raw body kept for signature checks.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn error_description(&self) -> String {
        self.json()["Error"][0]["error_description"].as_str().unwrap_or_default().to_owned()
    }

    fn assert_signed_by(&self, server_key: &PublicKey) {
        let sig = self.header("x-bunq-server-signature").expect("server signature header");
        server_key.verify(&self.body, sig).expect("server signature verifies over the body");
    }
}

enum Sign {
    Yes,
    No,
    /// A valid signature, but over other bytes.
    Wrong,
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(fake: &FakeHandle) -> Self {
        Self::with_timeout(fake, Duration::from_secs(10))
    }

    fn with_timeout(fake: &FakeHandle, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).build().unwrap();
        Self { http, base: fake.base_url() }
    }

    async fn try_post(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
        sign: Sign,
        request_id: Option<&str>,
    ) -> reqwest::Result<Answer> {
        self.try_call(reqwest::Method::POST, path, Some(body), token, sign, request_id).await
    }

    /// One call; `body: None` sends (and signs) the empty body, as a GET does.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
        sign: Sign,
        request_id: Option<&str>,
    ) -> reqwest::Result<Answer> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
        let mut request = self
            .http
            .request(method, format!("{}/{path}", self.base))
            .header("User-Agent", UA)
            .header("Cache-Control", "no-cache")
            .header("X-Bunq-Language", "en_US")
            .header("X-Bunq-Region", "nl_NL")
            .header("X-Bunq-Geolocation", "0 0 0 0 000")
            .header("Content-Type", "application/json");
        if let Some(id) = request_id {
            request = request.header("X-Bunq-Client-Request-Id", id);
        }
        if let Some(token) = token {
            request = request.header("X-Bunq-Client-Authentication", token);
        }
        match sign {
            Sign::Yes => request = request.header("X-Bunq-Client-Signature", client_key().sign(&bytes).unwrap()),
            Sign::Wrong => request = request.header("X-Bunq-Client-Signature", client_key().sign(b"{}").unwrap()),
            Sign::No => {}
        }
        let response = request.body(bytes).send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok(Answer { status, headers, body })
    }

    async fn post(&self, path: &str, body: &Value, token: Option<&str>, sign: Sign) -> Answer {
        self.call(reqwest::Method::POST, path, Some(body), token, sign).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
        sign: Sign,
    ) -> Answer {
        let id = uuid::Uuid::new_v4().to_string();
        self.try_call(method, path, body, token, sign, Some(&id)).await.expect("HTTP exchange")
    }

    /// `POST /installation`, unsigned as bunq requires.
    async fn installation(&self) -> Answer {
        self.post("installation", &installation_body(), None, Sign::No).await
    }

    /// `POST /installation`; returns (installation token, server key).
    async fn install(&self) -> (String, PublicKey) {
        let answer = self.installation().await;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        let v = answer.json();
        let token = v["Response"][1]["Token"]["token"].as_str().unwrap().to_owned();
        let server =
            PublicKey::from_pem(v["Response"][2]["ServerPublicKey"]["server_public_key"].as_str().unwrap()).unwrap();
        (token, server)
    }

    async fn device(&self, token: &str, secret: &str) -> Answer {
        self.post(
            "device-server",
            &json!({"description": "test", "secret": secret, "permitted_ips": ["*"]}),
            Some(token),
            Sign::Yes,
        )
        .await
    }

    async fn session(&self, token: &str, secret: &str) -> Answer {
        self.post("session-server", &json!({"secret": secret}), Some(token), Sign::Yes).await
    }

    /// A whole handshake on a new installation: (session answer, server key).
    async fn open(&self, secret: &str) -> (Answer, PublicKey) {
        let (token, server) = self.install().await;
        let device = self.device(&token, secret).await;
        if device.status != 200 {
            return (device, server);
        }
        (self.session(&token, secret).await, server)
    }
}

fn is_bunq_timestamp(s: &str) -> bool {
    // YYYY-MM-DD hh:mm:ss.ffffff
    s.len() == 26 && s.as_bytes()[10] == b' ' && s.as_bytes()[19] == b'.'
}
