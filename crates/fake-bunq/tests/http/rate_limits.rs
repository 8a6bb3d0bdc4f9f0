//! bunq's per-endpoint rate limits and who shares a budget.

use crate::start_with_client;
use fake_bunq::{FakeConfig, RateLimitScope};
use std::time::Duration;

#[tokio::test]
async fn session_server_is_limited_to_one_call_per_30_seconds() {
    let (fake, client) = start_with_client(FakeConfig::default()).await;
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
    let (fake, client) = start_with_client(config).await;
    client.install().await;
    client.install().await;
    let third = client.installation().await;
    assert_eq!(third.status, 429);
    assert_eq!(
        third.error_description(),
        "Too many requests. You can do a maximum of 2 calls per 3 second to this endpoint."
    );
    fake.shutdown().await;
}
