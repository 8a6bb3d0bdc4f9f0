//! What a session is for: a downstream service takes session-ready, reads the session at
//! `cache_key` and sets the user's URL notification filters at bunq with it (the
//! stand-in keeps bunq's replace-all semantics and limits), until the session is closed.

use crate::helpers::*;
use bunq_protocol::client::{BunqClient, ClientSettings, NotificationFilter, UserSession};
use bunq_protocol::error::BunqError;
use bunq_protocol::signing::{ClientKey, PublicKey};
use std::sync::Arc;
use std::time::Duration;
use test_support::{future_expiry, provision_body, random_id, random_token, ready_body, CLIENT_KEY};

const WAIT: Duration = Duration::from_secs(15);

fn downstream_client(base_url: &str) -> BunqClient {
    let key = ClientKey::from_pkcs8_pem(&std::fs::read_to_string(CLIENT_KEY).unwrap()).unwrap();
    let settings = ClientSettings::downstream(base_url, "bsw-it-downstream", Duration::from_secs(5));
    BunqClient::new(settings, Arc::new(key), Arc::new(())).unwrap()
}

fn filter(category: &str, target: &str) -> NotificationFilter {
    NotificationFilter { category: category.into(), notification_target: target.into() }
}

fn status(result: Result<Vec<NotificationFilter>, BunqError>) -> u16 {
    match result {
        Err(BunqError::Api { status, .. }) => status,
        other => panic!("expected bunq to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn downstream_sets_notification_filters_with_the_cached_session_until_it_is_closed() {
    let app = spawn_app().await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");

    let session = app.store.read_session(ready.user_id).await.unwrap().expect("cached at cache_key");
    let server_key = PublicKey::from_pem(&session.server_public_key).unwrap();
    let user = UserSession { user_id: ready.user_id, session_token: &session.session_token, server_key: &server_key };
    let client = downstream_client(app.fake.base_url().as_str());

    let both = [filter("USER_ONBOARDING", "https://p.example/onboarding"), filter("PAYMENT", "https://p.example/pay")];
    assert_eq!(client.set_notification_filters(user, &both).await.unwrap(), both);
    assert_eq!(client.notification_filters(user).await.unwrap(), both);
    // Replace-all: what is not sent again is gone; an empty list clears.
    let one = [filter("PAYMENT", "https://p.example/pay-v2")];
    client.set_notification_filters(user, &one).await.unwrap();
    assert_eq!(client.notification_filters(user).await.unwrap(), one);
    let stored: Vec<_> =
        app.fake.notification_filters(ready.user_id).into_iter().map(|f| f.notification_target).collect();
    assert_eq!(stored, ["https://p.example/pay-v2"]);

    // bunq's limits: https only, two targets per category; and only as this user.
    assert_eq!(status(client.set_notification_filters(user, &[filter("PAYMENT", "http://p.example/pay")]).await), 400);
    let three: Vec<_> = (0..3).map(|i| filter("CARD", &format!("https://p.example/card/{i}"))).collect();
    assert_eq!(status(client.set_notification_filters(user, &three).await), 400);
    let someone_else = UserSession { user_id: ready.user_id + 1, ..user };
    assert_eq!(status(client.notification_filters(someone_else).await), 403);
    client.set_notification_filters(user, &[]).await.unwrap();
    assert!(client.notification_filters(user).await.unwrap().is_empty());

    // Closed: the session no longer authenticates anything.
    app.publish(&provision_body(id, "CLOSED", "NONE", None, &future_expiry(), true)).await;
    app.wait_idle(WAIT).await;
    assert_eq!(status(client.notification_filters(user).await), 403);
    app.teardown().await;
}
