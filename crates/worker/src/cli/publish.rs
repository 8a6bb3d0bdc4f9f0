//! `publish`: sends provision events to the input exchange, for demos and operations.

use crate::amqp::topology;
use crate::config::ConnectionArgs;
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use lapin::options::ConfirmSelectOptions;
use lapin::BasicProperties;
use std::io::Read as _;
use std::path::PathBuf;
use time::OffsetDateTime;

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    /// A file with one event body; `-` reads standard input.
    #[arg(long, conflicts_with = "example")]
    pub(crate) file: Option<PathBuf>,
    /// Generate example events of this kind instead.
    #[arg(long, value_enum)]
    pub(crate) example: Option<Example>,
    /// How many example events to send.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u32,
    /// Routing key on the input exchange.
    #[arg(long, default_value = "partner_user_provision.updated")]
    pub(crate) routing_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Example {
    /// CREATED / PENDING_PROCESS_USER_ONBOARDING with a fresh credential, as bunq's webhook.
    Ready,
    /// A provision earlier in onboarding: acked and skipped.
    NotReady,
    /// A ready provision whose credential has expired: dead-lettered.
    Expired,
    /// Not JSON: dead-lettered as malformed.
    Malformed,
    /// The partner cancelled the provision: its session is closed.
    Cancelled,
}

/// An example body. The id and token are random so runs do not collide.
pub fn example_body(kind: Example, provision_id: u64) -> Vec<u8> {
    let now = OffsetDateTime::now_utc();
    let (status, sub_status, expiry) = match kind {
        Example::Ready => ("CREATED", "PENDING_PROCESS_USER_ONBOARDING", now + time::Duration::hours(1)),
        Example::NotReady => ("CREATED", "PENDING_PROCESS_OAUTH_REQUEST", now + time::Duration::hours(1)),
        Example::Expired => ("CREATED", "PENDING_PROCESS_USER_ONBOARDING", now - time::Duration::minutes(5)),
        Example::Malformed => return b"this is not a provision event".to_vec(),
        Example::Cancelled => ("CANCELLED", "NONE", now),
    };
    let mut token = [0u8; 32];
    aws_lc_rs::rand::fill(&mut token).expect("system randomness is available");
    let body = serde_json::json!({"NotificationUrl": {
        "target_url": "https://partner.example/hooks/provision",
        "category": "PARTNER_USER_PROVISION",
        "event_type": "PARTNER_USER_PROVISION_PROCESS_UPDATED",
        "object": {"PartnerUserProvision": {
            "id": provision_id,
            "created": bunq_protocol::timestamp::format(now),
            "updated": bunq_protocol::timestamp::format(now),
            "external_uuid": uuid::Uuid::new_v4().to_string(),
            "status": status,
            "sub_status": sub_status,
            "action_required": "USER",
            "credential": (kind != Example::Cancelled).then(|| serde_json::json!({
                "id": provision_id + 1_000_000,
                "status": "PENDING_FIRST_USE",
                "expiry_time": bunq_protocol::timestamp::format(expiry),
                "token_value": hex::encode(token),
            }))
        }}
    }});
    serde_json::to_vec(&body).expect("JSON values serialise")
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let bodies: Vec<Vec<u8>> = match (&args.file, args.example) {
        (Some(path), _) => vec![read_body(path)?],
        (None, Some(kind)) => {
            let base = rand::random::<u32>() as u64 * 1000;
            (0..u64::from(args.count)).map(|i| example_body(kind, base + i)).collect()
        }
        (None, None) => anyhow::bail!("say what to publish: --file PATH (or - for stdin) or --example KIND"),
    };
    let (connection, _) = args
        .connection
        .broker()?
        .connect("bunq-session-worker publish")
        .await
        .context("AMQP_URL: cannot connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    // Declaring the topology first means a demo can publish before the worker starts.
    topology::declare(&channel, &args.connection.names()?).await.context("declaring the topology")?;
    channel.confirm_select(ConfirmSelectOptions { nowait: false }).await?;
    let publish = crate::amqp::publish::PublishChannel::default();
    publish.set(Some(channel));
    for body in &bodies {
        let message_id = uuid::Uuid::new_v4().to_string();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.as_str().into());
        publish
            .publish(&args.connection.input_exchange, &args.routing_key, body, properties)
            .await
            .with_context(|| format!("publishing to exchange `{}`", args.connection.input_exchange))?;
        println!("published message {message_id} ({} bytes)", body.len());
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

fn read_body(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).context("reading standard input")?;
        return Ok(body);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::decide::{decide, Decision};
    use crate::provision::decode::decode;

    #[test]
    fn examples_decide_as_their_names_say() {
        let now = OffsetDateTime::now_utc();
        let decision = |kind| decide(&decode(&example_body(kind, 7), 1 << 20).unwrap(), now);
        assert!(matches!(decision(Example::Ready), Decision::Act(_)));
        assert!(matches!(decision(Example::NotReady), Decision::Skip(_)));
        assert!(matches!(decision(Example::Expired), Decision::CredentialExpired { .. }));
        assert!(decode(&example_body(Example::Malformed, 7), 1 << 20).is_err());
    }
}
