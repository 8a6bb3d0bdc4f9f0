//! The full installation → device-server → session-server handshake.

use crate::{is_bunq_timestamp, start_with_client};
use bunq_protocol::signing::PublicKey;
use fake_bunq::{CredentialState, FakeConfig};

#[tokio::test]
async fn full_handshake_with_signed_answers_and_stable_user_ids() {
    let (fake, client) = start_with_client(FakeConfig::default()).await;

    let answer = client.installation().await;
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
