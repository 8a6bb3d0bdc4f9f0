//! The demo's downstream service, as a partner's notification-filter setup would be:
//! it takes a session-ready event, reads the session from Redis at `cache_key` (the
//! store unseals it when a key is set), and sets the user's URL notification filters at
//! bunq (the stand-in) with the cached session token, signing with the same client key.

use bunq_protocol::client::{BunqClient, ClientSettings, NotificationFilter, UserSession};
use bunq_protocol::signing::{ClientKey, PublicKey};
use bunq_session_worker::store::Store;
use std::sync::Arc;
use std::time::Duration;

pub struct Downstream {
    client: BunqClient,
    store: Store,
}

/// What the demo's partner wants to hear about for each onboarded user.
pub fn wanted() -> Vec<NotificationFilter> {
    [
        ("USER_ONBOARDING", "https://partner.example/hooks/onboarding"),
        ("PAYMENT", "https://partner.example/hooks/payment"),
    ]
    .into_iter()
    .map(|(category, target)| NotificationFilter { category: category.into(), notification_target: target.into() })
    .collect()
}

impl Downstream {
    pub fn new(base_url: &str, client_key: ClientKey, store: Store) -> anyhow::Result<Self> {
        let settings = ClientSettings::downstream(base_url, "bsw-demo-downstream", Duration::from_secs(10));
        Ok(Self { client: BunqClient::new(settings, Arc::new(client_key), Arc::new(()))?, store })
    }

    /// Handles one session-ready event: sets the filters (replace-all) and returns what
    /// bunq then lists for the user.
    pub async fn on_session_ready(&self, event: &serde_json::Value) -> anyhow::Result<Vec<NotificationFilter>> {
        let user_id = event["user_id"].as_u64().ok_or_else(|| anyhow::anyhow!("event without user_id"))?;
        let session = self
            .store
            .read_session(user_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no session cached at {}", event["cache_key"]))?;
        let server_key = PublicKey::from_pem(&session.server_public_key)?;
        let user = UserSession { user_id, session_token: &session.session_token, server_key: &server_key };
        self.client.set_notification_filters(user, &wanted()).await?;
        Ok(self.client.notification_filters(user).await?)
    }
}
