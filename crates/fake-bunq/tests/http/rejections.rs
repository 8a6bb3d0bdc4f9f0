//! Calls bunq refuses: reused request ids, bad or missing signatures and tokens,
//! unusable credentials and malformed bodies, each with bunq's signed error answer.

use crate::{installation_body, start_with_client, Sign};
use bunq_protocol::signing::PublicKey;
use fake_bunq::{CredentialState, FakeConfig};
use serde_json::json;

#[tokio::test]
async fn request_id_is_echoed_and_reuse_on_an_installation_is_refused() {
    let (fake, client) = start_with_client(FakeConfig::default()).await;
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
    let (fake, client) = start_with_client(FakeConfig::default()).await;
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
    let (fake, client) = start_with_client(FakeConfig::default()).await;
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
async fn expired_and_rejected_credentials_are_refused() {
    let (fake, client) = start_with_client(FakeConfig::default()).await;
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
    let (fake, client) = start_with_client(FakeConfig::default()).await;

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
        .body(serde_json::to_vec(&installation_body()).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(no_ua.status().as_u16(), 400);
    fake.shutdown().await;
}
