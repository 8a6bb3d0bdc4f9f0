//! Drives an in-process fake-bunq over real HTTP, as an independent client would:
//! reqwest for transport, the crate's signing module for signatures.

use bunq_protocol::signing::{ClientKey, PublicKey};
use fake_bunq::{
    spawn, CredentialState, EndpointMatch, FakeConfig, FakeHandle, FaultAction, FaultRule, Faults, RateLimitScope,
    Trigger,
};
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
        let bytes = serde_json::to_vec(body).unwrap();
        let mut request = self
            .http
            .post(format!("{}/{path}", self.base))
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
        let id = uuid::Uuid::new_v4().to_string();
        self.try_post(path, body, token, sign, Some(&id)).await.expect("HTTP exchange")
    }

    /// `POST /installation`; returns (installation token, server key).
    async fn install(&self) -> (String, PublicKey) {
        let answer = self
            .post("installation", &json!({"client_public_key": client_key().public_key_pem()}), None, Sign::No)
            .await;
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
}

fn is_bunq_timestamp(s: &str) -> bool {
    // YYYY-MM-DD hh:mm:ss.ffffff
    s.len() == 26 && s.as_bytes()[10] == b' ' && s.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn full_handshake_with_signed_answers_and_stable_user_ids() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);

    let answer =
        client.post("installation", &json!({"client_public_key": client_key().public_key_pem()}), None, Sign::No).await;
    assert_eq!(answer.status, 200);
    let v = answer.json();
    let items = v["Response"].as_array().unwrap();
    let keys: Vec<_> = items.iter().map(|i| i.as_object().unwrap().keys().next().unwrap().clone()).collect();
    assert_eq!(keys, ["Id", "Token", "ServerPublicKey"]);
    let token = items[1]["Token"]["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert!(is_bunq_timestamp(items[1]["Token"]["created"].as_str().unwrap()));
    let server_pem = items[2]["ServerPublicKey"]["server_public_key"].as_str().unwrap();
    assert_eq!(server_pem, fake.server_public_key_pem());
    let server = PublicKey::from_pem(server_pem).unwrap();
    answer.assert_signed_by(&server);

    let device = client.device(&token, "sandbox_secret_1").await;
    assert_eq!(device.status, 200);
    assert!(device.json()["Response"][0]["Id"]["id"].as_u64().is_some());
    device.assert_signed_by(&server);

    let session = client.session(&token, "sandbox_secret_1").await;
    assert_eq!(session.status, 200, "{}", String::from_utf8_lossy(&session.body));
    session.assert_signed_by(&server);
    assert_eq!(session.header("content-type"), Some("application/json"));
    assert!(session.header("x-bunq-client-response-id").is_some());
    let v = session.json();
    let items = v["Response"].as_array().unwrap();
    assert_eq!(items[0]["Id"]["id"], items[1]["Token"]["id"]);
    assert_eq!(items[1]["Token"]["token"].as_str().unwrap().len(), 64);
    let key = &items[2]["UserApiKey"];
    assert_eq!(key["requested_by_user"]["UserCompany"]["session_timeout"], 604_800);
    assert_eq!(key["granted_by_user"]["UserPerson"]["session_timeout"], 604_800);
    let ids = (key["id"].clone(), key["granted_by_user"]["UserPerson"]["id"].clone());
    assert_eq!(fake.credential_state("sandbox_secret_1"), Some(CredentialState::Active));

    // A new installation for the same secret: same users, new session.
    let (token2, _) = client.install().await;
    assert_eq!(client.device(&token2, "sandbox_secret_1").await.status, 200);
    let again = client.session(&token2, "sandbox_secret_1").await;
    assert_eq!(again.status, 200);
    let key2 = &again.json()["Response"][2]["UserApiKey"];
    assert_eq!((key2["id"].clone(), key2["granted_by_user"]["UserPerson"]["id"].clone()), ids);
    assert_eq!(fake.sessions_created_for("sandbox_secret_1"), 2);
    assert_eq!(fake.sessions_created_for("other"), 0);

    let calls = fake.calls();
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|c| c.status == Some(200)));
    assert_eq!(calls[2].signature_valid, Some(true));
    assert_eq!(calls[0].signature_valid, None);
    assert!(calls[2].secret_hash.as_deref().is_some_and(|h| !h.contains("secret")));
    fake.shutdown().await;
}

#[tokio::test]
async fn request_id_is_echoed_and_reuse_on_an_installation_is_refused() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);
    let (token, server) = client.install().await;
    let body = json!({"description": "d", "secret": "s"});
    let first = client.try_post("device-server", &body, Some(&token), Sign::Yes, Some("req-1")).await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-bunq-client-request-id"), Some("req-1"));
    let reused = client.try_post("device-server", &body, Some(&token), Sign::Yes, Some("req-1")).await.unwrap();
    assert_eq!(reused.status, 400);
    assert!(reused.error_description().contains("req-1"), "{}", reused.error_description());
    assert_eq!(reused.header("x-bunq-client-request-id"), Some("req-1"));
    reused.assert_signed_by(&server);
    fake.shutdown().await;
}

#[tokio::test]
async fn missing_signature_is_466_and_wrong_signature_is_400() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);
    let (token, server) = client.install().await;
    let body = json!({"description": "d", "secret": "s"});

    let missing = client.post("device-server", &body, Some(&token), Sign::No).await;
    assert_eq!(missing.status, 466);
    assert_eq!(missing.error_description(), "For this operation a request signature is required.");
    missing.assert_signed_by(&server);

    let wrong = client.post("session-server", &json!({"secret": "s"}), Some(&token), Sign::Wrong).await;
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.error_description(), "The request signature is invalid.");
    let v = wrong.json();
    assert_eq!(v["Error"][0]["error_description_translated"], v["Error"][0]["error_description"]);

    let calls = fake.calls();
    assert_eq!(calls[1].signature_valid, Some(false));
    assert_eq!(calls[2].signature_valid, Some(false));
    fake.shutdown().await;
}

#[tokio::test]
async fn unknown_or_missing_installation_token_is_403() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);
    let body = json!({"description": "d", "secret": "s"});
    for token in [Some("f".repeat(64)), None] {
        let answer = client.post("device-server", &body, token.as_deref(), Sign::Yes).await;
        assert_eq!(answer.status, 403);
        assert_eq!(answer.error_description(), "Insufficient authentication.");
        PublicKey::from_pem(&fake.server_public_key_pem()).map(|k| answer.assert_signed_by(&k)).unwrap();
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn session_server_is_limited_to_one_call_per_30_seconds() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);
    let (token, server) = client.install().await;
    assert_eq!(client.device(&token, "s").await.status, 200);
    assert_eq!(client.session(&token, "s").await.status, 200);
    let limited = client.session(&token, "s").await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.error_description(),
        "Too many requests. You can do a maximum of 1 calls per 30 second to this endpoint."
    );
    assert!(limited.header("retry-after").is_none());
    limited.assert_signed_by(&server);
    assert_eq!(fake.sessions_created_for("s"), 1);

    // Device scope: another installation has its own budget.
    let (other, _) = client.install().await;
    assert_eq!(client.device(&other, "s").await.status, 200);
    assert_eq!(client.session(&other, "s").await.status, 200);
    fake.shutdown().await;
}

#[tokio::test]
async fn ip_scope_shares_the_budget_across_installations() {
    let config = FakeConfig {
        rate_limit_scope: RateLimitScope::Ip,
        other_post_limit: (2, Duration::from_secs(3)),
        ..FakeConfig::default()
    };
    let fake = start(config).await;
    let client = Client::new(&fake);
    client.install().await;
    client.install().await;
    let third =
        client.post("installation", &json!({"client_public_key": client_key().public_key_pem()}), None, Sign::No).await;
    assert_eq!(third.status, 429);
    assert_eq!(
        third.error_description(),
        "Too many requests. You can do a maximum of 2 calls per 3 second to this endpoint."
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn expired_and_rejected_credentials_are_refused() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);
    let (token, _) = client.install().await;

    // Expires between device registration and the session, as a late worker would see.
    assert_eq!(client.device(&token, "late").await.status, 200);
    fake.register_credential("late", CredentialState::Expired);
    let expired = client.session(&token, "late").await;
    assert_eq!(expired.status, 400);
    assert_eq!(expired.error_description(), "User credentials are incorrect. Incorrect API key or IP address.");
    assert_eq!(fake.sessions_created_for("late"), 0);

    fake.register_credential("unknown", CredentialState::Rejected);
    assert_eq!(client.device(&token, "unknown").await.status, 400);

    // A secret never registered as a device on this installation.
    let (token2, _) = client.install().await;
    assert_eq!(client.session(&token2, "never-registered").await.status, 400);
    fake.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_400_with_bunq_error_body() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);

    let garbage = client.post("installation", &json!({"client_public_key": "not a key"}), None, Sign::No).await;
    assert_eq!(garbage.status, 400);
    assert!(garbage.error_description().starts_with("The client public key is invalid"));

    // A well-formed RSA key of the wrong size.
    let big = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072).unwrap();
    let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
        aws_lc_rs::signature::KeyPair::public_key(&big),
    )
    .unwrap();
    let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.as_ref().to_vec()));
    let wrong_size = client.post("installation", &json!({"client_public_key": pem}), None, Sign::No).await;
    assert_eq!(wrong_size.status, 400, "{}", wrong_size.error_description());
    assert!(wrong_size.error_description().contains("2048"), "{}", wrong_size.error_description());

    let (token, _) = client.install().await;
    let no_description = client.post("device-server", &json!({"secret": "s"}), Some(&token), Sign::Yes).await;
    assert_eq!(no_description.status, 400);
    assert!(no_description.error_description().contains("description"));
    let empty_secret = client.post("session-server", &json!({"secret": ""}), Some(&token), Sign::Yes).await;
    assert_eq!(empty_secret.status, 400);

    // No User-Agent at all.
    let no_ua = reqwest::Client::new()
        .post(format!("{}/installation", fake.base_url()))
        .body(serde_json::to_vec(&json!({"client_public_key": client_key().public_key_pem()})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(no_ua.status().as_u16(), 400);
    fake.shutdown().await;
}

fn rule(endpoint: EndpointMatch, action: FaultAction, n: u32) -> FaultRule {
    FaultRule { endpoint, action, trigger: Trigger::NextCalls(n) }
}

#[tokio::test]
async fn injected_500_html_then_normal_service() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);
    let (token, server) = client.install().await;
    assert_eq!(client.device(&token, "s").await.status, 200);
    fake.set_faults(Faults {
        rules: vec![rule(EndpointMatch::SessionServer, FaultAction::Http500Html, 1)],
        ..Faults::default()
    });
    let failed = client.session(&token, "s").await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.header("content-type"), Some("text/html"));
    assert!(String::from_utf8_lossy(&failed.body).contains("<html>"));
    // The fault answered before processing: no session, no rate-limit budget spent.
    assert_eq!(fake.sessions_created_for("s"), 0);
    let ok = client.session(&token, "s").await;
    assert_eq!(ok.status, 200);
    ok.assert_signed_by(&server);
    assert_eq!(fake.calls().iter().filter(|c| c.fault == Some(FaultAction::Http500Html)).count(), 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn status_faults_and_signature_faults() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::new(&fake);
    let (token, server) = client.install().await;
    fake.set_faults(Faults {
        rules: vec![
            rule(EndpointMatch::DeviceServer, FaultAction::Http503, 1),
            rule(EndpointMatch::DeviceServer, FaultAction::Maintenance491, 1),
            rule(EndpointMatch::DeviceServer, FaultAction::RateLimited429, 1),
            rule(EndpointMatch::DeviceServer, FaultAction::MissingSignature, 1),
            rule(EndpointMatch::DeviceServer, FaultAction::CorruptSignature, 1),
        ],
        ..Faults::default()
    });
    assert_eq!(client.device(&token, "s").await.status, 503);
    let maintenance = client.device(&token, "s").await;
    assert_eq!(maintenance.status, 491);
    assert!(!maintenance.error_description().is_empty());
    let limited = client.device(&token, "s").await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.error_description(),
        "Too many requests. You can do a maximum of 5 calls per 3 second to this endpoint."
    );
    let unsigned = client.device(&token, "s").await;
    assert_eq!(unsigned.status, 200);
    assert!(unsigned.header("x-bunq-server-signature").is_none());
    let corrupt = client.device(&token, "s").await;
    assert_eq!(corrupt.status, 200);
    let sig = corrupt.header("x-bunq-server-signature").unwrap();
    assert!(server.verify(&corrupt.body, sig).is_err());
    client.device(&token, "s").await.assert_signed_by(&server);
    fake.shutdown().await;
}

#[tokio::test]
async fn dropped_and_hanging_calls_fail_on_the_client_side() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::with_timeout(&fake, Duration::from_millis(500));
    let body = json!({"client_public_key": client_key().public_key_pem()});
    fake.set_faults(Faults {
        rules: vec![
            rule(EndpointMatch::Installation, FaultAction::DropConnection, 1),
            rule(EndpointMatch::Installation, FaultAction::Hang, 1),
        ],
        ..Faults::default()
    });
    let dropped = client.try_post("installation", &body, None, Sign::No, None).await;
    let error = dropped.err().expect("dropped connection is an error");
    assert!(!error.is_timeout(), "{error:?}");
    let hung = client.try_post("installation", &body, None, Sign::No, None).await;
    assert!(hung.err().expect("hang is an error").is_timeout());
    assert_eq!(client.try_post("installation", &body, None, Sign::No, None).await.unwrap().status, 200);

    let calls = fake.calls();
    assert_eq!(calls[0].status, None);
    assert_eq!(calls[1].status, None);
    // Shutdown releases the hanging handler instead of waiting for it forever.
    tokio::time::timeout(Duration::from_secs(5), fake.shutdown()).await.expect("shutdown completes");
}

#[tokio::test]
async fn probability_faults_are_reproducible_for_a_seed() {
    async fn pattern(seed: u64) -> Vec<u16> {
        let fake = start(FakeConfig { rate_limit_scope: RateLimitScope::Off, ..FakeConfig::default() }).await;
        fake.set_faults(Faults {
            rules: vec![FaultRule {
                endpoint: EndpointMatch::Any,
                action: FaultAction::Http503,
                trigger: Trigger::Probability(0.5),
            }],
            seed: Some(seed),
            ..Faults::default()
        });
        let client = Client::new(&fake);
        let mut statuses = Vec::new();
        for _ in 0..12 {
            statuses.push(
                client
                    .post("installation", &json!({"client_public_key": client_key().public_key_pem()}), None, Sign::No)
                    .await
                    .status,
            );
        }
        fake.shutdown().await;
        statuses
    }
    let a = pattern(42).await;
    assert_eq!(a, pattern(42).await);
    assert!(a.contains(&503) && a.contains(&200), "{a:?}");
}

#[tokio::test]
async fn admin_api_controls_faults_and_credentials_and_reports() {
    let fake = start(FakeConfig::default()).await;
    let admin = fake.base_url().replace("/v1", "/_fake");
    let http = reqwest::Client::new();
    let client = Client::new(&fake);

    let put = http
        .put(format!("{admin}/faults"))
        .json(&json!({"rules": [{"endpoint": "session-server", "action": "http_500_html", "next_calls": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    assert_eq!(fake.faults().rules.len(), 1);
    let bad = http.put(format!("{admin}/faults")).json(&json!({"rules": "nope"})).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    let registered: Value = http
        .post(format!("{admin}/credentials"))
        .json(&json!({"secret": "expired-one", "state": "expired"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(registered["state"], "EXPIRED");
    assert!(!registered.to_string().contains("expired-one"));

    let (token, _) = client.install().await;
    assert_eq!(client.device(&token, "expired-one").await.status, 400);
    assert_eq!(client.device(&token, "fine").await.status, 200);
    assert_eq!(client.session(&token, "fine").await.status, 500);

    let calls: Value = http.get(format!("{admin}/calls")).send().await.unwrap().json().await.unwrap();
    let text = calls.to_string();
    assert!(!text.contains("expired-one") && !text.contains(&token));
    assert_eq!(calls.as_array().unwrap().len(), 4);
    assert_eq!(calls[3]["fault"], "http_500_html");

    let stats: Value = http.get(format!("{admin}/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["calls_per_endpoint"]["device-server"], 2);
    assert_eq!(stats["installations"], 1);

    let cleared = http.delete(format!("{admin}/calls")).send().await.unwrap();
    assert_eq!(cleared.status().as_u16(), 204);
    assert!(fake.calls().is_empty());

    let pem = http.get(format!("{admin}/server-public-key")).send().await.unwrap().text().await.unwrap();
    assert_eq!(pem, fake.server_public_key_pem());
    fake.shutdown().await;
}
