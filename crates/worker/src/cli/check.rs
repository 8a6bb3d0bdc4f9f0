//! `check`: validates the configuration and reaches RabbitMQ, Redis and bunq, saying
//! which one fails.

use crate::config::{Settings, WorkerArgs};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Prints one line per dependency; `Ok(false)` when any check failed.
pub async fn run(args: WorkerArgs) -> anyhow::Result<bool> {
    let settings = match Settings::from_args(args) {
        Ok(settings) => {
            println!("config    ok");
            settings
        }
        Err(e) => {
            println!("config    FAILED: {e}");
            return Ok(false);
        }
    };
    let tls = report("tls", async {
        crate::startup::verify_tls(&settings).await?;
        Ok::<_, anyhow::Error>("certificates verify (or no TLS files are set)".to_owned())
    })
    .await;
    let amqp = report("rabbitmq", async {
        let (connection, node) = settings
            .amqp
            .broker
            .connect("bunq-session-worker check")
            .await
            .map_err(|e| anyhow::anyhow!("{}", bunq_protocol::redact::detail(&e.to_string())))?;
        let _ = connection.close(200, "check".into()).await;
        Ok::<_, anyhow::Error>(format!("connected (AMQP_URL node {})", node + 1))
    })
    .await;
    let redis = report("redis", async {
        let mut conn = settings.redis.connect()?;
        // On a cluster PING goes to every primary: ok means every slot can be served.
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(format!("{pong} ({})", settings.redis.target.variable()))
    })
    .await;
    let bunq = report("bunq", async {
        // Any HTTP answer proves DNS, TLS and routing; no call with side effects is made.
        let response = reqwest::Client::builder().timeout(TIMEOUT).build()?.get(&settings.bunq.base_url).send().await?;
        Ok(format!("HTTP {} from {} (BUNQ_BASE_URL)", response.status().as_u16(), settings.bunq.base_url))
    })
    .await;
    // The partner's session as Redis holds it, never the session or the key itself.
    let partner = match &settings.reset {
        None => true,
        Some(_) => {
            report("partner", async {
                let store = settings.redis.store(settings.redis.connect()?);
                let held = crate::partner::context::Partner::describe(&store).await?;
                let until = held.and_then(|at| time::OffsetDateTime::from_unix_timestamp(at).ok());
                Ok::<_, anyhow::Error>(match until {
                    Some(until) => format!("session held until {until} (CREDENTIAL_RESET=on)"),
                    None => "no session yet: the first reset opens one (CREDENTIAL_RESET=on)".to_owned(),
                })
            })
            .await
        }
    };
    Ok(tls && amqp && redis && bunq && partner)
}

async fn report(name: &str, check: impl std::future::Future<Output = anyhow::Result<String>>) -> bool {
    match tokio::time::timeout(TIMEOUT, check).await {
        Ok(Ok(detail)) => {
            println!("{name:<9} ok: {detail}");
            true
        }
        Ok(Err(e)) => {
            println!("{name:<9} FAILED: {e:#}");
            false
        }
        Err(_) => {
            println!("{name:<9} FAILED: no answer within {}s", TIMEOUT.as_secs());
            false
        }
    }
}
