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
