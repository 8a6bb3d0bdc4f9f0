//! The `/_fake/` admin API.

use crate::{start, Client};
use fake_bunq::FakeConfig;
use serde_json::{json, Value};

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

#[tokio::test]
async fn admin_api_registers_shows_and_ends_provisions() {
    let fake = start(FakeConfig::default()).await;
    let admin = fake.base_url().replace("/v1", "/_fake");
    let http = reqwest::Client::new();
    let register = |body: Value| http.post(format!("{admin}/provisions")).json(&body).send();

    let created = register(json!({"id": 31, "token_value": "admin-token", "expiry_time": "2099-05-06 07:08:09.123456",
        "external_uuid": "partner-ref-31"}))
    .await
    .unwrap();
    assert_eq!(created.status().as_u16(), 200);
    let v: Value = created.json().await.unwrap();
    let p = &v["PartnerUserProvision"];
    assert_eq!((p["id"].as_u64(), p["external_uuid"].as_str()), (Some(31), Some("partner-ref-31")));
    assert_eq!(
        (p["status"].as_str(), p["sub_status"].as_str()),
        (Some("CREATED"), Some("PENDING_PROCESS_USER_ONBOARDING"))
    );
    assert_eq!(p["credential"]["expiry_time"], "2099-05-06 07:08:09.123456");
    assert_eq!((p["credential"]["token_value"].as_str(), v["token_resets"].as_u64()), (Some("admin-token"), Some(0)));
    assert_eq!(fake.provision_token(31).as_deref(), Some("admin-token"));

    assert_eq!(register(json!({"id": 31, "token_value": "other"})).await.unwrap().status().as_u16(), 409);
    assert_eq!(register(json!({"id": 32, "token_value": "admin-token"})).await.unwrap().status().as_u16(), 400);
    assert_eq!(register(json!({"id": 33, "token_value": " "})).await.unwrap().status().as_u16(), 400);
    let bad_time = register(json!({"id": 34, "token_value": "t34", "expiry_time": "2099-05-06T07:08:09Z"}));
    assert_eq!(bad_time.await.unwrap().status().as_u16(), 400);
    // Without an expiry: now + the first-use window, so the token is usable.
    assert_eq!(register(json!({"id": 35, "token_value": "t35"})).await.unwrap().status().as_u16(), 200);
    let client = Client::new(&fake);
    let (token, _) = client.install().await;
    assert_eq!(client.device(&token, "t35").await.status, 200);

    let end =
        |id: u64, status: &str| http.put(format!("{admin}/provisions/{id}")).json(&json!({ "status": status })).send();
    let ended = end(31, "FAILED").await.unwrap();
    assert_eq!(ended.status().as_u16(), 200);
    let v: Value = ended.json().await.unwrap();
    assert_eq!(
        (v["PartnerUserProvision"]["status"].as_str(), v["PartnerUserProvision"]["sub_status"].as_str()),
        (Some("FAILED"), Some("NONE"))
    );
    assert_eq!(fake.provision_token(31), None);
    assert_eq!(client.device(&token, "admin-token").await.status, 400);
    assert_eq!(end(31, "CREATED").await.unwrap().status().as_u16(), 400);
    assert_eq!(end(99, "CLOSED").await.unwrap().status().as_u16(), 404);
    assert_eq!(http.get(format!("{admin}/provisions/99")).send().await.unwrap().status().as_u16(), 404);
    let shown: Value = http.get(format!("{admin}/provisions/35")).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["PartnerUserProvision"]["credential"]["token_value"], "t35");
    fake.shutdown().await;
}
