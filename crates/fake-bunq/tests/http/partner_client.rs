//! `bunq_protocol`'s client against the stand-in: the partner's session as the worker
//! will open it, the token reset through `request_token_reset` and `provision`, and the
//! user's session with the new token.

use crate::start;
use bunq_protocol::client::{BunqClient, ClientSettings, UserSession};
use bunq_protocol::signing::ClientKey;
use bunq_protocol::{BunqError, Endpoint};
use fake_bunq::FakeConfig;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

const PARTNER_KEY: &str = "partner-key-for-the-protocol-client";
const OLD_TOKEN: &str = "0ld70ken0f7hepr0visi0n0123456789abcdef0123456789abcdef0123456789";

fn client(base_url: &str) -> BunqClient {
    let settings = ClientSettings {
        base_url: base_url.to_owned(),
        device_description: "partner client test".to_owned(),
        permitted_ips: vec!["*".to_owned()],
        request_timeout: Duration::from_secs(10),
        user_agent: "fake-bunq-partner-client-test/1.0".to_owned(),
    };
    // The shared test key, re-read: `ClientKey` is deliberately not `Clone`.
    let key = ClientKey::from_pkcs8_pem(&crate::client_key().to_pkcs8_pem().unwrap()).unwrap();
    BunqClient::new(settings, Arc::new(key), Arc::new(())).unwrap()
}

#[tokio::test]
async fn the_protocol_client_resets_a_token_and_opens_the_session_with_the_new_one() {
    let config = FakeConfig {
        partner_api_key: Some(PARTNER_KEY.to_owned()),
        token_reset_delay: Duration::from_millis(200),
        get_limit: (1000, Duration::from_secs(3)),
        ..FakeConfig::default()
    };
    let company_id = config.partner_company_id;
    let fake = start(config).await;
    let expiry = OffsetDateTime::now_utc() + Duration::from_secs(600);
    fake.register_provision(21, OLD_TOKEN, expiry).unwrap();
    let bunq = client(&fake.base_url());

    let installation = bunq.create_installation().await.unwrap();
    let key = SecretString::from(PARTNER_KEY);
    bunq.create_device_server(&installation, &key).await.unwrap();
    let session = bunq.create_session_server(&installation, &key).await.unwrap();
    assert_eq!((session.user_id, session.granted_by_user_id), (company_id, Some(company_id)));
    let partner =
        UserSession { user_id: session.user_id, session_token: &session.token, server_key: &installation.server_key };

    let before = bunq.provision(partner, 21).await.unwrap();
    let old = before.credential.clone().unwrap();
    assert_eq!(before.usable_token(OffsetDateTime::now_utc()).map(|t| t.expose_secret()), Some(OLD_TOKEN));
    assert!(!format!("{before:?}").contains(OLD_TOKEN));

    bunq.request_token_reset(partner, 21).await.unwrap();
    let pending = bunq.provision(partner, 21).await.unwrap();
    assert_eq!(
        (pending.status.as_str(), pending.sub_status.as_str()),
        ("TOKEN_RESET_REQUESTED", "PENDING_PROCESS_TOKEN_RESET")
    );
    assert!(pending.usable_token(OffsetDateTime::now_utc()).is_none());

    let mut ready = None;
    for _ in 0..1500 {
        let provision = bunq.provision(partner, 21).await.unwrap();
        if let Some(token) = provision.usable_token(OffsetDateTime::now_utc()) {
            ready = Some((token.clone(), provision.credential.as_ref().map(|c| c.id)));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (token, credential_id) = ready.expect("a new token within 30 s");
    assert_ne!(credential_id, Some(old.id));
    assert_ne!(token.expose_secret(), OLD_TOKEN);
    assert_eq!(Some(token.expose_secret().to_owned()), fake.provision_token(21));

    // The user's session with the new token, on its own installation.
    let user_installation = bunq.create_installation().await.unwrap();
    bunq.create_device_server(&user_installation, &token).await.unwrap();
    let user = bunq.create_session_server(&user_installation, &token).await.unwrap();
    assert_ne!(user.user_id, company_id);

    // bunq's refusals arrive as signed API errors, without the token in their text.
    let old_token = SecretString::from(OLD_TOKEN);
    let refused = bunq.create_device_server(&user_installation, &old_token).await.unwrap_err();
    assert!(matches!(refused, BunqError::Api { status: 400, .. }), "{refused:?}");
    assert!(!refused.to_string().contains(OLD_TOKEN));
    let unknown = bunq.request_token_reset(partner, 999).await.unwrap_err();
    assert!(
        matches!(unknown, BunqError::Api { status: 404, endpoint: Endpoint::PartnerUserProvisionUpdate, .. }),
        "{unknown:?}"
    );
    let as_user =
        UserSession { user_id: user.user_id, session_token: &user.token, server_key: &user_installation.server_key };
    let forbidden = bunq.provision(as_user, 21).await.unwrap_err();
    assert!(
        matches!(forbidden, BunqError::Api { status: 403, endpoint: Endpoint::PartnerUserProvisionRead, .. }),
        "{forbidden:?}"
    );
    assert_eq!(fake.token_resets(21), 1);
    fake.shutdown().await;
}
