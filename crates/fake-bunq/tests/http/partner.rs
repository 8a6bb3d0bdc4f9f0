//! The partner's own session (its company API key) and the token reset of a provision:
//! `PUT`/`GET /v1/partner-user-provision/{id}`, what the handshake then accepts and
//! refuses, and the limits on both calls.

use crate::{start_with_client, Answer, Client, Sign};
use bunq_protocol::signing::PublicKey;
use fake_bunq::{FakeConfig, FakeHandle, ProvisionStatus};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use time::macros::datetime;
use time::OffsetDateTime;

const PARTNER_KEY: &str = "partner-company-api-key-0123";
const OLD_TOKEN: &str = "old-token-of-provision";
/// Far enough ahead to be valid for the whole test, with a fraction to check the format.
const EXPIRY: OffsetDateTime = datetime!(2099-01-02 03:04:05.5 UTC);
const EXPIRY_TEXT: &str = "2099-01-02 03:04:05.500000";
const REFUSED: &str = "User credentials are incorrect. Incorrect API key or IP address.";

fn partner_config() -> FakeConfig {
    FakeConfig { partner_api_key: Some(PARTNER_KEY.to_owned()), ..FakeConfig::default() }
}

/// Opens the partner's session; returns its token and bunq's key.
async fn partner_session(client: &Client) -> (String, PublicKey) {
    let (answer, server) = client.open(PARTNER_KEY).await;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    (answer.json()["Response"][1]["Token"]["token"].as_str().unwrap().to_owned(), server)
}

async fn put(client: &Client, session: &str, id: &str, status: &str) -> Answer {
    let body = json!({ "status": status });
    client.call(Method::PUT, &format!("partner-user-provision/{id}"), Some(&body), Some(session), Sign::Yes).await
}

async fn reset(client: &Client, session: &str, id: u64) -> Answer {
    put(client, session, &id.to_string(), "TOKEN_RESET_REQUESTED").await
}

async fn read(client: &Client, session: &str, id: u64) -> Answer {
    client.call(Method::GET, &format!("partner-user-provision/{id}"), None, Some(session), Sign::Yes).await
}

/// Waits (on the fake's state, not the clock) for a token other than `old`.
async fn new_token(fake: &FakeHandle, id: u64, old: &str) -> String {
    for _ in 0..1500 {
        match fake.provision_token(id) {
            Some(token) if token != old => return token,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("provision {id} got no new token within 30 s");
}

#[tokio::test]
async fn the_partner_key_opens_user_company_sessions_again_and_again() {
    // Single-use credentials that expire at once: the partner's key is neither.
    let config = FakeConfig { allow_credential_reuse: false, credential_ttl: Some(Duration::ZERO), ..partner_config() };
    let (company_id, name) = (config.partner_company_id, config.partner_display_name.clone());
    let (fake, client) = start_with_client(config).await;
    for _ in 0..2 {
        let (answer, server) = client.open(PARTNER_KEY).await;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        answer.assert_signed_by(&server);
        let v = answer.json();
        let kinds: Vec<_> = v["Response"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_object().unwrap().keys().cloned().collect::<Vec<_>>())
            .collect();
        assert_eq!(kinds, [["Id"], ["Token"], ["UserCompany"]]);
        let company = &v["Response"][2]["UserCompany"];
        assert_eq!((company["id"].as_u64(), company["display_name"].as_str()), (Some(company_id), Some(name.as_str())));
        assert_eq!(company["session_timeout"], 604_800);
    }
    assert_eq!(fake.sessions_created_for(PARTNER_KEY), 2);
    assert_eq!(client.open("a-users-key").await.0.status, 400, "the same config refuses a user's key");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_reset_supersedes_the_token_at_once_and_hands_out_a_new_one_after_the_delay() {
    let config = FakeConfig { get_limit: (100, Duration::from_secs(3)), ..partner_config() };
    let (fake, client) = start_with_client(config).await;
    fake.register_provision(7, OLD_TOKEN, EXPIRY).unwrap();
    let (partner, server) = partner_session(&client).await;

    let before = read(&client, &partner, 7).await;
    assert_eq!(before.status, 200);
    before.assert_signed_by(&server);
    let p = &before.json()["Response"][0]["PartnerUserProvision"];
    assert_eq!((p["id"].as_u64(), p["status"].as_str()), (Some(7), Some("CREATED")));
    assert_eq!(p["sub_status"], "PENDING_PROCESS_USER_ONBOARDING");
    let credential = &p["credential"];
    assert_eq!(
        (credential["status"].as_str(), credential["token_value"].as_str()),
        (Some("PENDING_FIRST_USE"), Some(OLD_TOKEN))
    );
    assert_eq!(credential["expiry_time"], EXPIRY_TEXT);
    assert!(credential["permitted_device"].is_null());
    let old_credential_id = credential["id"].as_u64().unwrap();

    // A user's installation registers the old token before the reset, as a worker would.
    let (user, _) = client.install().await;
    assert_eq!(client.device(&user, OLD_TOKEN).await.status, 200);

    let accepted = reset(&client, &partner, 7).await;
    assert_eq!(accepted.status, 200);
    accepted.assert_signed_by(&server);
    assert_eq!(accepted.body, br#"{"Response":[{"Id":{"id":7}}]}"#);
    assert_eq!(reset(&client, &partner, 7).await.status, 200, "a second request joins the pending reset");
    assert_eq!(fake.token_resets(7), 1);

    let pending = read(&client, &partner, 7).await.json();
    let p = &pending["Response"][0]["PartnerUserProvision"];
    assert_eq!(
        (p["status"].as_str(), p["sub_status"].as_str()),
        (Some("TOKEN_RESET_REQUESTED"), Some("PENDING_PROCESS_TOKEN_RESET"))
    );
    assert!(p["credential"]["token_value"].is_null());
    assert_eq!(p["credential"]["id"].as_u64(), Some(old_credential_id));
    let superseded = client.session(&user, OLD_TOKEN).await;
    assert_eq!((superseded.status, superseded.error_description().as_str()), (400, REFUSED));
    assert_eq!(fake.stats().refused_superseded_tokens, 1);

    let token = new_token(&fake, 7, OLD_TOKEN).await;
    let after = read(&client, &partner, 7).await.json();
    let p = &after["Response"][0]["PartnerUserProvision"];
    assert_eq!(
        (p["status"].as_str(), p["sub_status"].as_str()),
        (Some("CREATED"), Some("PENDING_PROCESS_USER_ONBOARDING"))
    );
    let credential = &p["credential"];
    assert_eq!(
        (credential["status"].as_str(), credential["token_value"].as_str()),
        (Some("PENDING_FIRST_USE"), Some(token.as_str()))
    );
    assert_ne!(credential["id"].as_u64(), Some(old_credential_id));
    let expiry = bunq_protocol::timestamp::parse(credential["expiry_time"].as_str().unwrap()).unwrap();
    // The default window is bunq's sandbox hour from the moment the token was made.
    assert!(expiry > OffsetDateTime::now_utc() + Duration::from_secs(1800), "{expiry}");
    assert!(expiry <= OffsetDateTime::now_utc() + Duration::from_secs(3600), "{expiry}");

    let (opened, _) = client.open(&token).await;
    assert_eq!(opened.status, 200, "{}", String::from_utf8_lossy(&opened.body));
    assert!(opened.json()["Response"][2]["UserApiKey"].is_object());
    let used = read(&client, &partner, 7).await.json();
    let credential = &used["Response"][0]["PartnerUserProvision"]["credential"];
    assert_eq!(credential["status"], "ACTIVE");
    assert!(credential["token_value"].is_null(), "bunq clears the token once used");
    let stats = fake.stats();
    assert_eq!((stats.refused_superseded_tokens, stats.refused_expired_tokens, stats.token_resets), (1, 0, 1));
    fake.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_is_refused_and_a_reset_brings_a_usable_one() {
    let config = FakeConfig { token_reset_delay: Duration::from_millis(100), ..partner_config() };
    let (fake, client) = start_with_client(config).await;
    fake.register_provision(8, "expired-long-ago", OffsetDateTime::now_utc() - Duration::from_secs(1)).unwrap();
    let refused = client.open("expired-long-ago").await.0;
    assert_eq!((refused.status, refused.error_description().as_str()), (400, REFUSED));

    // One that expires between device-server and session-server.
    let expiry = OffsetDateTime::now_utc() + Duration::from_millis(1500);
    fake.register_provision(9, "expires-soon", expiry).unwrap();
    let (user, _) = client.install().await;
    assert_eq!(client.device(&user, "expires-soon").await.status, 200);
    while OffsetDateTime::now_utc() <= expiry {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = client.session(&user, "expires-soon").await;
    assert_eq!((late.status, late.error_description().as_str()), (400, REFUSED));
    assert_eq!((fake.stats().refused_expired_tokens, fake.sessions_created_for("expires-soon")), (2, 0));

    let (partner, _) = partner_session(&client).await;
    let expired = read(&client, &partner, 9).await.json();
    assert_eq!(expired["Response"][0]["PartnerUserProvision"]["credential"]["status"], "EXPIRED");
    assert_eq!(reset(&client, &partner, 9).await.status, 200, "an expired credential's provision is still active");
    let token = new_token(&fake, 9, "expires-soon").await;
    assert_eq!(client.open(&token).await.0.status, 200);
    assert_eq!(fake.stats().refused_superseded_tokens, 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn an_ended_provision_refuses_a_reset_and_its_token() {
    let config = FakeConfig { put_limit: (100, Duration::from_secs(3)), ..partner_config() };
    let (fake, client) = start_with_client(config).await;
    let (partner, server) = partner_session(&client).await;
    fake.register_provision(10, "cancelled-by-the-user", EXPIRY).unwrap();
    fake.set_provision_status(10, ProvisionStatus::Cancelled).unwrap();
    let refused = reset(&client, &partner, 10).await;
    assert_eq!(refused.status, 400);
    refused.assert_signed_by(&server);
    assert!(refused.error_description().contains("not active"), "{}", refused.error_description());
    assert_eq!(client.open("cancelled-by-the-user").await.0.status, 400);

    // Closing through bunq's PUT: CANCELLED makes it CLOSED.
    fake.register_provision(11, "closed-by-the-partner", EXPIRY).unwrap();
    assert_eq!(put(&client, &partner, "11", "CANCELLED").await.status, 200);
    let closed = read(&client, &partner, 11).await.json();
    let p = &closed["Response"][0]["PartnerUserProvision"];
    assert_eq!((p["status"].as_str(), p["credential"]["token_value"].as_str()), (Some("CLOSED"), None));
    assert_eq!(reset(&client, &partner, 11).await.status, 400);
    assert_eq!(client.open("closed-by-the-partner").await.0.status, 400);

    assert_eq!(reset(&client, &partner, 404_404).await.status, 404);
    assert_eq!(read(&client, &partner, 404_404).await.status, 404);
    fake.register_provision(12, "fine", EXPIRY).unwrap();
    for body in ["ACTIVE", "PENDING_PROCESS_CLOSURE"] {
        assert_eq!(put(&client, &partner, "12", body).await.status, 400, "{body}");
    }
    assert_eq!(put(&client, &partner, "twelve", "TOKEN_RESET_REQUESTED").await.status, 404);
    assert_eq!(fake.token_resets(10) + fake.token_resets(11) + fake.token_resets(12), 0);
    assert_eq!(fake.provision_token(12).as_deref(), Some("fine"));
    fake.shutdown().await;
}

#[tokio::test]
async fn put_and_get_have_bunqs_limits_each_their_own() {
    let (fake, client) = start_with_client(partner_config()).await;
    fake.register_provision(13, OLD_TOKEN, EXPIRY).unwrap();
    let (partner, server) = partner_session(&client).await;
    assert_eq!(reset(&client, &partner, 13).await.status, 200);
    assert_eq!(reset(&client, &partner, 13).await.status, 200);
    let limited = reset(&client, &partner, 13).await;
    assert_eq!(limited.status, 429);
    limited.assert_signed_by(&server);
    assert_eq!(
        limited.error_description(),
        "Too many requests. You can do a maximum of 2 calls per 3 second to this endpoint."
    );
    for _ in 0..3 {
        assert_eq!(read(&client, &partner, 13).await.status, 200);
    }
    let limited = read(&client, &partner, 13).await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.error_description(),
        "Too many requests. You can do a maximum of 3 calls per 3 second to this endpoint."
    );
    let stats = fake.stats();
    assert_eq!(stats.calls_per_endpoint.get("partner-user-provision"), Some(&7));
    let calls = fake.calls();
    let methods: Vec<_> = calls.iter().filter(|c| c.status == Some(429)).map(|c| c.method.as_str()).collect();
    assert_eq!(methods, ["PUT", "GET"]);
    fake.shutdown().await;
}

#[tokio::test]
async fn only_the_partners_signed_session_may_call_them() {
    let (fake, client) = start_with_client(partner_config()).await;
    fake.register_provision(14, OLD_TOKEN, EXPIRY).unwrap();
    let (partner, _) = partner_session(&client).await;
    let path = "partner-user-provision/14";
    let body = json!({"status": "TOKEN_RESET_REQUESTED"});

    let unsigned = client.call(Method::PUT, path, Some(&body), Some(&partner), Sign::No).await;
    assert_eq!(unsigned.status, 466);
    let wrong = client.call(Method::PUT, path, Some(&body), Some(&partner), Sign::Wrong).await;
    assert_eq!((wrong.status, wrong.error_description().as_str()), (400, "The request signature is invalid."));
    let wrong_get = client.call(Method::GET, path, None, Some(&partner), Sign::Wrong).await;
    assert_eq!(wrong_get.status, 400);

    // A provisioned user's session, and tokens that are no session at all.
    let (user, _) = client.open("a-provisioned-users-key").await;
    let user = user.json()["Response"][1]["Token"]["token"].as_str().unwrap().to_owned();
    let (installation, _) = client.install().await;
    for token in [user.as_str(), installation.as_str()] {
        let read = client.call(Method::GET, path, None, Some(token), Sign::Yes).await;
        assert_eq!((read.status, read.error_description().as_str()), (403, "Insufficient authentication."));
    }
    assert_eq!(client.call(Method::PUT, path, Some(&body), Some(&user), Sign::Yes).await.status, 403);
    assert_eq!(fake.token_resets(14), 0);
    assert_eq!(fake.provision_token(14).as_deref(), Some(OLD_TOKEN));
    fake.shutdown().await;
}
