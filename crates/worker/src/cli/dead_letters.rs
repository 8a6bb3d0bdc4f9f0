//! `dead-letters list` and `dead-letters replay`: look at the dead-letter queue and move
//! messages back to where they first arrived, with confirms, losing none.
//!
//! Both browse with `basic.get` and hold what they read unacked: a replayed message is
//! acked only after its copy is confirmed, and everything else returns to the queue when
//! the channel closes. Bodies and tokens are never printed.

use crate::amqp::dead_letter::{self, Credential};
use crate::amqp::headers;
use crate::amqp::publish::PublishChannel;
use crate::amqp::topology;
use crate::config::{ConnectionArgs, SealArgs};
use crate::seal::Sealer;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

#[derive(Debug, Args)]
pub struct DeadLetterArgs {
    #[command(subcommand)]
    pub(crate) action: Action,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// List dead letters: reason, provision id, attempts, age, detail.
    List(ListArgs),
    /// Send dead letters back to the exchange they first arrived on, with fresh attempts,
    /// their credential unsealed (needs the key that sealed it).
    Replay(ReplayArgs),
}

/// Which dead letters a command works on.
#[derive(Debug, Args)]
pub(crate) struct Selection {
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    /// Only this reason (e.g. rejected_by_bunq).
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// At most this many messages.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: u32,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    pub(crate) selection: Selection,
    #[command(flatten)]
    pub(crate) seal: SealArgs,
    /// Bodies up to this size are recognised as provisions (as the worker's MAX_MESSAGE_BYTES).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 256 * 1024)]
    pub(crate) max_message_bytes: usize,
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) replayed: u32,
    /// Left in the queue: their credential was removed, or cannot be unsealed here.
    pub(crate) kept: u32,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) selection: Selection,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What `list` shows of one dead letter. Never the body.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) reason: String,
    pub(crate) provision_id: Option<u64>,
    pub(crate) attempts: u32,
    pub(crate) age_secs: Option<u64>,
    pub(crate) message_id: Option<String>,
    pub(crate) detail: String,
}

impl Row {
    fn of(message: &BasicGetMessage) -> Self {
        let properties = &message.delivery.properties;
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        Row {
            reason: headers::get_str(properties, headers::DEAD_LETTER_REASON)
                .or_else(|| x_death_reason(properties))
                .unwrap_or_else(|| "unknown".into()),
            // Best effort: a malformed body has no id, which is why it is here.
            provision_id: crate::provision::decode::decode(&message.delivery.data, usize::MAX).ok().map(|p| p.id),
            attempts: headers::attempts(properties),
            age_secs: headers::get_u64(properties, headers::DEAD_LETTERED_AT).map(|at| now.saturating_sub(at)),
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            detail: headers::get_str(properties, headers::DEAD_LETTER_DETAIL).unwrap_or_default(),
        }
    }
}

/// RabbitMQ's own dead-lettering (the quorum queue's delivery limit) leaves `x-death`.
fn x_death_reason(properties: &lapin::BasicProperties) -> Option<String> {
    headers::latest_death(properties).map(|death| format!("rabbitmq_{}", death.reason))
}

pub async fn run(args: DeadLetterArgs) -> anyhow::Result<()> {
    match args.action {
        Action::List(ListArgs { selection: args, json }) => {
            let rows = list(&args.connection, args.reason.as_deref(), args.limit).await?;
            print_rows(&rows, json);
            Ok(())
        }
        Action::Replay(args) => {
            let sealer = args.seal.sealer()?;
            let selection = &args.selection;
            let report = replay(
                &selection.connection,
                selection.reason.as_deref(),
                selection.limit,
                sealer.as_deref(),
                args.max_message_bytes,
            )
            .await?;
            println!(
                "replayed {} message(s) from {}; kept {} that cannot be replayed as they are",
                report.replayed, selection.connection.dead_letter_queue, report.kept
            );
            Ok(())
        }
    }
}

async fn open(names: &ConnectionArgs) -> anyhow::Result<(lapin::Connection, Channel, u32)> {
    let (connection, _) = names
        .broker()?
        .connect("bunq-session-worker dead-letters")
        .await
        .context("AMQP_URL: cannot connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    topology::declare(&channel, &names.names()?).await.context("declaring the topology")?;
    let queue = channel
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel, queue.message_count()))
}

/// Reads up to `limit` dead letters (and no more than the queue held when it started).
pub(crate) async fn list(names: &ConnectionArgs, reason: Option<&str>, limit: u32) -> anyhow::Result<Vec<Row>> {
    let (connection, channel, count) = open(names).await?;
    let mut rows = Vec::new();
    for _ in 0..count.min(limit) {
        let Some(message) = get(&channel, names).await? else { break };
        let row = Row::of(&message);
        if reason.is_none_or(|r| r == row.reason) {
            rows.push(row);
        }
    }
    // Closing returns every message read to the queue.
    let _ = connection.close(200, "listed".into()).await;
    Ok(rows)
}

/// Moves up to `limit` dead letters (matching `reason`) back to their original exchange.
pub(crate) async fn replay(
    names: &ConnectionArgs,
    reason: Option<&str>,
    limit: u32,
    sealer: Option<&Sealer>,
    max_message_bytes: usize,
) -> anyhow::Result<Replayed> {
    let (connection, channel, count) = open(names).await?;
    let publish_channel = connection.create_channel().await?;
    publish_channel.confirm_select(ConfirmSelectOptions { nowait: false }).await?;
    let publish = PublishChannel::default();
    publish.set(Some(publish_channel));
    let mut report = Replayed::default();
    for _ in 0..count {
        if report.replayed >= limit {
            break;
        }
        let Some(message) = get(&channel, names).await? else { break };
        if reason.is_some_and(|r| r != Row::of(&message).reason) {
            continue; // left unacked: returns to the queue on close
        }
        let properties = &message.delivery.properties;
        // Written before credentials were protected: the body is as it arrived.
        let credential = headers::get_str(properties, headers::CREDENTIAL)
            .and_then(|c| Credential::parse(&c))
            .unwrap_or(Credential::Absent);
        let message_id = properties.message_id().as_ref().map(|m| m.as_str().to_owned());
        let body = match dead_letter::restore(
            &message.delivery.data,
            credential,
            sealer,
            message_id.as_deref(),
            max_message_bytes,
        ) {
            Ok(body) => body,
            Err(e) => {
                // Left unacked: it returns to the queue on close.
                eprintln!("kept a dead letter (message id {}): {e}", message_id.as_deref().unwrap_or("none"));
                report.kept += 1;
                continue;
            }
        };
        let (exchange, routing_key) = match headers::get_str(properties, headers::ORIGINAL_EXCHANGE) {
            Some(exchange) if !exchange.is_empty() => {
                (exchange, headers::get_str(properties, headers::ORIGINAL_ROUTING_KEY).unwrap_or_default())
            }
            // Published straight to the queue, or dead-lettered by RabbitMQ itself.
            _ => (String::new(), names.input_queue.clone()),
        };
        let replays = headers::get_u64(properties, headers::REPLAYS).unwrap_or(0) + 1;
        // As first published, plus the replay count: none of the worker's or RabbitMQ's
        // headers, so it starts with fresh attempts and its route is recorded afresh (the
        // worker would drop them anyway, arriving through the input exchange).
        let fresh =
            headers::without_headers(properties, &[&headers::WORKER_OWNED[..], &headers::BROKER_OWNED].concat());
        let fresh = headers::with_headers(&fresh, &[(headers::REPLAYS, AMQPValue::LongLongInt(replays as i64))]);
        publish
            .publish(&exchange, &routing_key, &body, fresh)
            .await
            .with_context(|| format!("replaying to exchange `{exchange}` with routing key `{routing_key}`"))?;
        message.ack(BasicAckOptions { multiple: false }).await.context("acking the replayed dead letter")?;
        report.replayed += 1;
    }
    let _ = connection.close(200, "replayed".into()).await;
    Ok(report)
}

async fn get(channel: &Channel, names: &ConnectionArgs) -> anyhow::Result<Option<BasicGetMessage>> {
    Ok(channel.basic_get(names.dead_letter_queue.as_str().into(), BasicGetOptions { no_ack: false }).await?)
}

fn print_rows(rows: &[Row], json: bool) {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row).expect("rows serialise"));
        }
        return;
    }
    println!("{:<22} {:>12} {:>8} {:>9}  {:<36}  detail", "reason", "provision", "attempts", "age", "message id");
    for row in rows {
        let provision = row.provision_id.map_or_else(|| "-".to_owned(), |id| id.to_string());
        let age = row.age_secs.map_or_else(|| "-".to_owned(), format_age);
        let mut detail = row.detail.clone();
        if detail.len() > 120 {
            let cut = (0..=120).rev().find(|&i| detail.is_char_boundary(i)).unwrap_or(0);
            detail.truncate(cut);
            detail.push('…');
        }
        println!(
            "{:<22} {:>12} {:>8} {:>9}  {:<36}  {}",
            row.reason,
            provision,
            row.attempts,
            age,
            row.message_id.as_deref().unwrap_or("-"),
            detail
        );
    }
    println!("{} dead letter(s)", rows.len());
}

fn format_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
