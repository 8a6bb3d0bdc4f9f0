//! No secret leaves: the binary at `RUST_LOG=trace` over a mixed stream (sessions opened
//! through bunq faults, retries, every hostile input shape, bunq rejections, expired
//! credentials, dead letters and their replay), with passwords in both connection URLs
//! and an encryption key; then every text the worker and its commands put out is searched
//! for every secret.

use bunq_session_worker::amqp::topology;
use bunq_session_worker::seal::Sealer;
use bunq_session_worker::store::{Keys, Store};
use fake_bunq::{CredentialState, EndpointMatch, FaultAction, FaultRule, Faults, Trigger};
use lapin::options::BasicGetOptions;
use secrecy::ExposeSecret;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::{
    capture_queue, connect_amqp, connect_redis, expiry_in, free_port, ops, provision_body, publish_input, rabbitmqctl,
    random_id, random_token, ready_body, relaxed_fake, Cleanup, Leftovers, TestNames, WorkerEnv, AMQP_URL, CLIENT_KEY,
    REDIS_URL,
};
use tokio::io::AsyncReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");
const WAIT: Duration = Duration::from_secs(30);

/// Bodies that carry `token` in every shape a sender can get wrong.
fn hostile_bodies(token: &str) -> Vec<(&'static str, Vec<u8>)> {
    let ready = String::from_utf8(ready_body(random_id(), token)).unwrap();
    let object = |credential: &str| {
        format!(
            r#"{{"PartnerUserProvision":{{"id":{},"status":"CREATED","sub_status":"PENDING_PROCESS_USER_ONBOARDING","credential":{credential}}}}}"#,
            random_id()
        )
    };
    let mut invalid_utf8 = format!(r#"{{"PartnerUserProvision":{{"id":1,"x":"{token}"#).into_bytes();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, b'"', b'}', b'}']);
    let deep = format!(r#"{{"PartnerUserProvision":{}"{token}"{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    // Decodable, expired, the credential also elsewhere: a `null` NotificationUrl beside a
    // bare provision, an unknown field holding it, and every character `\u`-escaped.
    let expired = |token_json: &str, extra: &str| {
        format!(
            r#"{{"NotificationUrl":null,"PartnerUserProvision":{{"id":{},"status":"CREATED","sub_status":"PENDING_PROCESS_USER_ONBOARDING"{extra},"credential":{{"expiry_time":"{}","token_value":{token_json}}}}}}}"#,
            random_id(),
            expiry_in(time::Duration::hours(-2)),
        )
    };
    let escaped: String = token.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    vec![
        ("double-encoded", serde_json::to_vec(&ready).unwrap()),
        ("token as a number", object(&format!(r#"{{"id":1,"token_value":{}}}"#, "9".repeat(64))).into_bytes()),
        ("token in an array", object(&format!(r#"{{"id":1,"token_value":["{token}"]}}"#)).into_bytes()),
        ("object for a string", object(&format!(r#"{{"id":1,"token_value":{{"v":"{token}"}}}}"#)).into_bytes()),
        ("string for an object", object(&format!(r#""{token}""#)).into_bytes()),
        ("huge field name", format!(r#"{{"PartnerUserProvision":{{"{token}{}":1}}}}"#, "k".repeat(5_000)).into_bytes()),
        ("secret in an unknown field", format!(r#"{{"Unknown":{{"secret":"{token}"}}}}"#).into_bytes()),
        ("invalid UTF-8 around it", invalid_utf8),
        ("nested 10,000 deep", deep.into_bytes()),
        (
            "null NotificationUrl, token also in a note",
            expired(&format!(r#""{token}""#), &format!(r#","note":"{token}""#)).into_bytes(),
        ),
        ("token as \\u escapes", expired(&format!(r#""{escaped}""#), "").into_bytes()),
    ]
}

/// `\uXXXX` escapes resolved wherever they stand.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at]);
        match rest.get(at + 2..at + 6).and_then(|h| u32::from_str_radix(h, 16).ok()).and_then(char::from_u32) {
            Some(c) => {
                out.push(c);
                rest = &rest[at + 6..];
            }
            None => {
                out.push_str("\\u");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every 16-character window of a secret's start: a leak of a cut-off secret counts too.
fn needles(secret: &str) -> Vec<String> {
    let secret = secret.trim();
    if secret.len() <= 16 {
        return vec![secret.to_owned()];
    }
    vec![secret[..16].to_owned(), secret[secret.len() - 16..].to_owned()]
}

async fn drain(channel: &lapin::Channel, queue: &str) -> Vec<(Vec<u8>, lapin::BasicProperties)> {
    let mut messages = Vec::new();
    while let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        messages.push((message.delivery.data.clone(), message.delivery.properties.clone()));
    }
    messages
}

/// Asynchronous: the fake answering `check` and the replayed provision runs on this runtime.
async fn run_cli(env: &WorkerEnv, args: &[&str]) -> String {
    let output = tokio::process::Command::new(BIN).args(args).env_clear().envs(env.vars()).output().await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{args:?}: {text}");
    text
}

/// Removes the test's broker and Redis users, also when the test panics.
struct Users(String);

impl Drop for Users {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_user", &self.0]);
        let _ = std::process::Command::new("redis-cli").args(["ACL", "DELUSER", &self.0]).output();
    }
}

#[tokio::test]
async fn no_secret_leaves_through_any_output_of_a_mixed_stream_at_trace() {
    let fake =
        fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), relaxed_fake()).await.unwrap();
    let names = TestNames::new("it");

    // Passwords in both URLs: a broker user and a Redis ACL user of this test's own.
    let user = format!("{}-leak", names.id);
    let (amqp_password, redis_password) = (random_token(), random_token());
    let _users = Users(user.clone());
    rabbitmqctl(&["add_user", &user, &amqp_password]).unwrap();
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]).unwrap();
    let mut admin = connect_redis(REDIS_URL).unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", &user, "on", &format!(">{redis_password}"), "~*", "&*", "+@all"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key: [u8; 32] = std::array::from_fn(|_| rand::random::<u8>());
    let key_path = dir.path().join("session.key");
    std::fs::write(&key_path, hex::encode(key)).unwrap();

    let ops_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let env = WorkerEnv::fast(&fake.base_url(), &names)
        .set("AMQP_URL", format!("amqp://{user}:{amqp_password}@127.0.0.1:5672/%2f"))
        .set("REDIS_URL", format!("redis://{user}:{redis_password}@127.0.0.1:6379/0"))
        .set("SESSION_ENCRYPTION_KEY_FILE", key_path.to_str().unwrap())
        .set("OPS_ADDR", ops_addr.to_string())
        .set("MAX_ATTEMPTS", "3")
        .set("LOG_FORMAT", "json")
        .set("RUST_LOG", "trace");
    let mut child = tokio::process::Command::new(BIN)
        .arg("run")
        .env_clear()
        .envs(env.vars())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let logs = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err))
    });

    let connection = connect_amqp(AMQP_URL).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    topology::declare(&channel, &names.topology).await.unwrap();
    let capture = names.queue("capture");
    let leftovers = Leftovers::new(Cleanup::new(&names).queue(&capture));
    capture_queue(&channel, &names.topology, &capture, Some("#")).await.unwrap();
    assert!(ops::wait_ready(ops_addr, WAIT).await, "the worker never became ready");

    // Phase 1: sessions through bunq faults (unavailable, maintenance, unsigned and
    // corrupt answers), a rejection, an expired credential, and every hostile shape.
    fake.set_faults(Faults {
        latency_ms: 0,
        seed: Some(7),
        rules: [
            (EndpointMatch::SessionServer, FaultAction::Http503, 0.3),
            (EndpointMatch::Any, FaultAction::Maintenance491, 0.1),
            (EndpointMatch::DeviceServer, FaultAction::MissingSignature, 0.1),
            (EndpointMatch::SessionServer, FaultAction::CorruptSignature, 0.1),
        ]
        .into_iter()
        .map(|(endpoint, action, p)| FaultRule { endpoint, action, trigger: Trigger::Probability(p) })
        .collect(),
    });
    let mut tokens = Vec::new();
    let good: Vec<String> = (0..8).map(|_| random_token()).collect();
    for token in &good {
        publish_input(&channel, &names.topology, &ready_body(random_id(), token), Default::default()).await.unwrap();
    }
    let (rejected_id, rejected) = (random_id(), random_token());
    fake.register_credential(&rejected, CredentialState::Rejected);
    publish_input(&channel, &names.topology, &ready_body(rejected_id, &rejected), Default::default()).await.unwrap();
    let expired = random_token();
    let expired_body = provision_body(
        random_id(),
        "CREATED",
        "PENDING_PROCESS_USER_ONBOARDING",
        Some(&expired),
        &expiry_in(time::Duration::minutes(-5)),
        false,
    );
    publish_input(&channel, &names.topology, &expired_body, Default::default()).await.unwrap();
    let hostile = random_token();
    for (_, body) in hostile_bodies(&hostile) {
        publish_input(&channel, &names.topology, &body, Default::default()).await.unwrap();
    }
    tokens.extend(good.iter().cloned());
    tokens.extend([rejected.clone(), expired, hostile.clone()]);

    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    while events.len() < good.len() {
        assert!(Instant::now() < deadline, "only {} of {} sessions announced", events.len(), good.len());
        events.extend(drain(&channel, &capture).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Phase 2: bunq down for good while a credential runs out: retries, then a dead letter
    // that carries the retry headers.
    fake.set_faults(Faults::always(FaultAction::Http500Html));
    let exhausted = random_token();
    publish_input(&channel, &names.topology, &ready_body(random_id(), &exhausted), Default::default()).await.unwrap();
    tokens.push(exhausted);
    let dead_letter_count = 1 + 1 + hostile_bodies(&hostile).len() + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let queue = channel
            .queue_declare(
                names.topology.dead_letter_queue.as_str().into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .unwrap();
        if queue.message_count() as usize >= dead_letter_count {
            break;
        }
        assert!(Instant::now() < deadline, "{} of {dead_letter_count} dead letters", queue.message_count());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fake.set_faults(Faults::default());

    // The operator's commands, with the same environment (passwords and key included).
    let mut cli = run_cli(&env, &["dead-letters", "list", "--json"]).await;
    cli += &run_cli(&env, &["dead-letters", "list"]).await;
    cli += &run_cli(&env, &["check"]).await;
    fake.register_credential(&rejected, CredentialState::PendingFirstUse);
    let replayed = run_cli(&env, &["dead-letters", "replay", "--reason", "rejected_by_bunq"]).await;
    assert!(replayed.contains("replayed 1 message"), "{replayed}");
    cli += &replayed;
    let deadline = Instant::now() + WAIT;
    while events.len() < good.len() + 1 {
        assert!(Instant::now() < deadline, "the replayed provision never opened its session");
        events.extend(drain(&channel, &capture).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event: serde_json::Value = serde_json::from_slice(&events.last().unwrap().0).unwrap();
    assert_eq!(event["provision_id"], rejected_id, "the replay unsealed the credential");
    cli += &run_cli(&env, &["session", "show", &event["user_id"].to_string()]).await;

    let metrics = ops::metrics(ops_addr).await.unwrap();
    let dead_letters = drain(&channel, &names.topology.dead_letter_queue).await;
    assert_eq!(dead_letters.len(), dead_letter_count - 1, "all but the replayed one stay");
    let retried = dead_letters.iter().filter(|(_, p)| format!("{:?}", p.headers()).contains("x-retry-reason")).count();
    assert!(retried >= 1, "no dead letter carries retry headers: the stream did not retry");

    // The session and installation tokens bunq handed out, as the worker stored them.
    let store =
        Store::new(connect_redis(REDIS_URL).unwrap(), Keys::new(&names.key_prefix), Some(Arc::new(Sealer::new(&key))));
    let mut secrets: Vec<(String, String)> = tokens.iter().map(|t| ("token_value".to_owned(), t.clone())).collect();
    for (body, _) in &events {
        let event: serde_json::Value = serde_json::from_slice(body).unwrap();
        let session = store.read_session(event["user_id"].as_u64().unwrap()).await.unwrap().expect("cached");
        secrets.push(("session token".into(), session.session_token.expose_secret().to_owned()));
        secrets.push(("installation token".into(), session.installation_token.expose_secret().to_owned()));
    }
    let pem = std::fs::read_to_string(CLIENT_KEY).unwrap();
    secrets.extend(pem.lines().filter(|l| !l.starts_with("-----")).map(|l| ("private key".into(), l.to_owned())));
    secrets.push(("AMQP password".into(), amqp_password.clone()));
    secrets.push(("Redis password".into(), redis_password.clone()));
    secrets.push(("encryption key (hex)".into(), hex::encode(key)));
    secrets.push(("encryption key (base64)".into(), base64::Engine::encode(&base64::prelude::BASE64_STANDARD, key)));

    let pid = child.id().unwrap() as i32;
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "exit status {status}");
    let logs = logs.await.unwrap();
    assert!(logs.contains("TRACE") || logs.contains("\"trace\""), "not logging at trace");
    assert!(logs.contains("dead_lettered") && logs.contains("session_announced"), "the stream did not happen");

    let outputs = [
        ("logs", logs),
        ("metrics", metrics),
        ("events", events.iter().map(|(b, p)| format!("{}{p:?}", String::from_utf8_lossy(b))).collect()),
        ("dead letters", dead_letters.iter().map(|(b, p)| format!("{}{p:?}", String::from_utf8_lossy(b))).collect()),
        ("CLI output", cli),
    ];
    for (output, text) in &outputs {
        // Read as a JSON reader would, too: `\u0061` is an `a`.
        let unescaped = unescape(text);
        for (name, secret) in &secrets {
            for needle in needles(secret) {
                assert!(!text.contains(&needle), "a {name} appears in the {output}");
                assert!(!unescaped.contains(&needle), "a {name} appears in the {output}, JSON-escaped");
            }
        }
    }

    leftovers.clean().await.unwrap();
    fake.shutdown().await;
}
