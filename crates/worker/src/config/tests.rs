//! Validation of every setting, through the flags clap parses.

use super::*;
use crate::store::Target;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

/// Valid base flags, each replaced when `extra` sets it.
fn args(extra: &[&str]) -> WorkerArgs {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/client_key.pem");
    let mut argv = vec!["worker"];
    for (flag, value) in [
        ("--bunq-base-url", "http://127.0.0.1:1/v1"),
        ("--bunq-client-private-key-file", key),
        ("--bunq-allow-insecure-http", "true"),
    ] {
        if !extra.contains(&flag) {
            argv.extend([flag, value]);
        }
    }
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

fn error_of(extra: &[&str]) -> ConfigError {
    Settings::from_args(args(extra)).unwrap_err()
}

#[test]
fn defaults_validate() {
    let settings = Settings::from_args(args(&[])).unwrap();
    assert_eq!(settings.bunq.base_url, "http://127.0.0.1:1/v1");
    assert_eq!(settings.amqp.prefetch, 16);
}

#[test]
fn every_duration_takes_one_syntax_and_the_old_names_still_work() {
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    let of = |s: &Settings| {
        [
            s.bunq.request_timeout,
            s.session_ttl_margin,
            s.retry.budget,
            s.retry.initial_interval,
            s.retry.max_interval,
            s.handler.retry_queue_delay,
            s.handler.retry_queue_max_delay,
            s.handler.lock_ttl,
        ]
    };
    // The defaults, as the README states them.
    let defaults = Settings::from_args(args(&[])).unwrap();
    assert_eq!(of(&defaults), [secs(10), secs(60), secs(60), ms(200), secs(10), secs(5), secs(300), secs(30)]);
    let new = [
        "--bunq-request-timeout",
        "2500ms",
        "--session-ttl-margin",
        "2m",
        "--retry-budget",
        "90s",
        "--retry-initial-interval",
        "50ms",
        "--retry-max-interval",
        "3s",
        "--retry-queue-delay",
        "1s",
        "--retry-queue-max-delay",
        "1h",
        "--lock-ttl",
        "45s",
    ];
    let expected = [ms(2500), secs(120), secs(90), ms(50), secs(3), secs(1), secs(3600), secs(45)];
    assert_eq!(of(&Settings::from_args(args(&new)).unwrap()), expected);
    let old = [
        "--bunq-request-timeout-ms",
        "2500",
        "--session-ttl-margin-secs",
        "120",
        "--retry-budget-ms",
        "90000",
        "--retry-initial-interval-ms",
        "50",
        "--retry-max-interval-ms",
        "3000",
        "--retry-queue-delay-ms",
        "1000",
        "--retry-queue-max-delay-ms",
        "3600000",
        "--lock-ttl-ms",
        "45000",
    ];
    assert_eq!(of(&Settings::from_args(args(&old)).unwrap()), expected);
    let redis = |flags: &[&str]| Settings::from_args(args(flags)).unwrap().redis.replication.unwrap().timeout;
    assert_eq!(redis(&["--redis-min-replicas", "1"]), ms(500));
    assert_eq!(redis(&["--redis-min-replicas", "1", "--redis-replica-timeout", "1500ms"]), ms(1500));
    assert_eq!(redis(&["--redis-min-replicas", "1", "--redis-replica-timeout-ms", "20"]), ms(20));
}

#[test]
fn each_bad_setting_names_its_variable() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bunq-base-url", "https://api.bunq.com"], "BUNQ_BASE_URL"),
        (&["--bunq-base-url", "ftp://x/v1"], "BUNQ_BASE_URL"),
        (&["--bunq-base-url", "http://api.bunq.com/v1"], "BUNQ_BASE_URL"),
        (&["--bunq-allow-insecure-http", "false"], "BUNQ_BASE_URL"),
        (&["--bunq-base-url", "https://user:pw@api.bunq.com/v1"], "BUNQ_BASE_URL"),
        (&["--bunq-permitted-ips", "::1"], "BUNQ_PERMITTED_IPS"),
        (&["--bunq-permitted-ips", " , "], "BUNQ_PERMITTED_IPS"),
        (&["--bunq-client-private-key-file", "/nonexistent.pem"], "BUNQ_CLIENT_PRIVATE_KEY_FILE"),
        (&["--amqp-url", "http://x"], "AMQP_URL"),
        (&["--redis-url", "mysql://x"], "REDIS_URL"),
        (&["--prefetch", "0"], "PREFETCH"),
        (&["--ops-addr", "nine"], "OPS_ADDR"),
        (&["--session-ttl-margin", "29s"], "SESSION_TTL_MARGIN"),
        // A deprecated name is named in errors about its own value.
        (&["--session-ttl-margin-secs", "5"], "SESSION_TTL_MARGIN_SECS"),
        (&["--retry-budget", "0s"], "RETRY_BUDGET"),
        (&["--retry-max-interval", "100ms"], "RETRY_MAX_INTERVAL"),
        (&["--retry-queue-max-delay", "1s"], "RETRY_QUEUE_MAX_DELAY"),
        (&["--redis-replica-timeout", "2s"], "REDIS_REPLICA_TIMEOUT"),
        (&["--bunq-request-timeout", "ten seconds"], "BUNQ_REQUEST_TIMEOUT"),
        (&["--lock-ttl", "30s", "--lock-ttl-ms", "30000"], "LOCK_TTL"),
        (&["--rate-limit-session-server", "fast"], "RATE_LIMIT_SESSION_SERVER"),
        (&["--input-queue", "amq.x"], "INPUT_QUEUE"),
        (&["--lock-ttl-ms", "999"], "LOCK_TTL_MS"),
        (&["--lock-ttl", "999ms"], "LOCK_TTL"),
        (&["--shutdown-timeout", "soon"], "SHUTDOWN_TIMEOUT"),
        (&["--dead-letter-max-age", "60d"], "DEAD_LETTER_MAX_AGE"),
        (&["--amqp-url", "amqp://a:5672/%2f, http://b"], "AMQP_URL"),
        (&["--amqp-url", " , "], "AMQP_URL"),
        (&["--amqp-tls-cert-file", "/nonexistent.pem"], "AMQP_TLS_KEY_FILE"),
        (&["--amqp-tls-ca-file", "/nonexistent.pem"], "AMQP_TLS_CA_FILE"),
        (&["--redis-tls-key-file", "/nonexistent.pem"], "REDIS_TLS_CERT_FILE"),
        (&["--redis-tls-ca-file", "/nonexistent.pem"], "REDIS_TLS_CA_FILE"),
        (&["--dead-letter-max-age", "forever"], "DEAD_LETTER_MAX_AGE"),
        (&["--redis-url", "redis://a:6379", "--redis-cluster-urls", "redis://b:6379"], "REDIS_CLUSTER_URLS"),
        (&["--redis-cluster-urls", "redis://a:7000,unix:///tmp/r.sock"], "REDIS_CLUSTER_URLS"),
        (&["--redis-cluster-urls", "redis://a:7000/2"], "REDIS_CLUSTER_URLS"),
        (&["--redis-cluster-urls", "redis://a:7000,rediss://b:7001"], "REDIS_CLUSTER_URLS"),
        (&["--redis-cluster-urls", " , "], "REDIS_CLUSTER_URLS"),
        (&["--redis-cluster-urls", "redis://:7000"], "REDIS_CLUSTER_URLS"),
        (&["--invalidation-binding-key", "session.#"], "INVALIDATION_BINDING_KEY"),
    ];
    for (extra, variable) in cases {
        let err = error_of(extra);
        assert_eq!(err.variable, *variable, "{extra:?} gave {err}");
        assert!(err.to_string().contains(variable));
    }
}

#[test]
fn redis_is_one_server_by_default_or_a_cluster_of_seed_nodes() {
    let single = Settings::from_args(args(&[])).unwrap().redis.target;
    assert!(matches!(&single, Target::Single(url) if url.expose_secret() == "redis://127.0.0.1:6379/0"));
    let seeds = "redis://:pw@10.0.0.1:7000, redis://:pw@10.0.0.2:7000/0,";
    let cluster = Settings::from_args(args(&["--redis-cluster-urls", seeds])).unwrap().redis.target;
    let Target::Cluster(urls) = &cluster else { panic!("not a cluster: {cluster:?}") };
    let urls: Vec<&str> = urls.iter().map(|u| u.expose_secret()).collect();
    assert_eq!(urls, ["redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7000/0"]);
    assert_eq!(cluster.variable(), "REDIS_CLUSTER_URLS");
    // Both set is refused whatever the values, and no password is echoed.
    let err = error_of(&["--redis-url", "redis://:hunter2@a:6379", "--redis-cluster-urls", seeds]);
    assert!(
        err.to_string().contains("REDIS_URL")
            && !err.to_string().contains("hunter2")
            && !err.to_string().contains("pw@")
    );
}

#[test]
fn dead_letter_retention_is_bounded_by_default_and_zero_lifts_a_bound() {
    let default = Settings::from_args(args(&[])).unwrap().amqp.names.dead_letter_retention;
    assert_eq!(default, Retention::DEFAULT);
    let unbounded = Settings::from_args(args(&[
        "--dead-letter-max-age",
        "0",
        "--dead-letter-max-length",
        "0",
        "--dead-letter-max-bytes",
        "0",
        "--retry-queue-max-bytes",
        "0",
    ]))
    .unwrap()
    .amqp
    .names;
    assert_eq!(unbounded.dead_letter_retention, Retention { max_age: None, max_length: None, max_bytes: None });
    assert_eq!(unbounded.retry_queue_max_bytes, None);
}

#[test]
fn queue_byte_bounds_default_to_bounded_and_must_fit_the_largest_message() {
    let names = Settings::from_args(args(&[])).unwrap().amqp.names;
    assert_eq!(names.dead_letter_retention.max_bytes, Some(256 << 20));
    assert_eq!(names.retry_queue_max_bytes, Some(1 << 30));
    let small = ["--max-message-bytes", "1000", "--dead-letter-max-bytes", "2000", "--retry-queue-max-bytes", "1000"];
    let names = Settings::from_args(args(&small)).unwrap().amqp.names;
    assert_eq!((names.dead_letter_retention.max_bytes, names.retry_queue_max_bytes), (Some(2000), Some(1000)));

    let err = error_of(&["--max-message-bytes", "1000", "--dead-letter-max-bytes", "1999"]);
    assert_eq!(err.variable, "DEAD_LETTER_MAX_BYTES");
    assert!(err.to_string().contains("2000"), "{err}");
    let err = error_of(&["--max-message-bytes", "1000", "--retry-queue-max-bytes", "999"]);
    assert_eq!(err.variable, "RETRY_QUEUE_MAX_BYTES");
    // RabbitMQ reads the argument as a signed 64-bit integer.
    assert_eq!(error_of(&["--retry-queue-max-bytes", &u64::MAX.to_string()]).variable, "RETRY_QUEUE_MAX_BYTES");
    assert_eq!(error_of(&["--dead-letter-max-bytes", &u64::MAX.to_string()]).variable, "DEAD_LETTER_MAX_BYTES");
}

#[test]
fn several_broker_urls_are_accepted_and_tls_files_need_a_tls_url() {
    let settings = Settings::from_args(args(&["--amqp-url", "amqp://a:5672/%2f,amqps://b:5671/%2f"])).unwrap();
    assert_eq!(settings.amqp.broker.nodes(), 2);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    // Any PEM certificate block will do for the check of the URL's scheme.
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n").unwrap();
    let ca = ca.to_str().unwrap();
    assert_eq!(error_of(&["--amqp-tls-ca-file", ca]).variable, "AMQP_TLS_CA_FILE");
    assert_eq!(error_of(&["--redis-tls-ca-file", ca]).variable, "REDIS_TLS_CA_FILE");
    let tls = Settings::from_args(args(&["--amqp-tls-ca-file", ca, "--amqp-url", "amqps://b:5671/%2f"])).unwrap();
    assert!(tls.amqp.broker.tls().is_some());
}

#[test]
fn missing_base_url_is_reported_not_defaulted() {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/client_key.pem");
    let cli = Cli::parse_from(["worker", "--bunq-client-private-key-file", key]);
    assert_eq!(Settings::from_args(cli.args).unwrap_err().variable, "BUNQ_BASE_URL");
}

#[test]
fn https_and_pinned_ips_are_accepted() {
    let settings = Settings::from_args(args(&[
        "--bunq-base-url",
        "https://api.bunq.com/v1/",
        "--bunq-permitted-ips",
        "1.2.3.4, 5.6.7.8",
    ]))
    .unwrap();
    assert_eq!(settings.bunq.base_url, "https://api.bunq.com/v1");
    assert_eq!(settings.bunq.permitted_ips, ["1.2.3.4", "5.6.7.8"]);
}

#[test]
fn url_credentials_never_appear_in_the_error() {
    let err = error_of(&["--bunq-base-url", "https://user:hunter2@api.bunq.com/v2"]);
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_public_key_is_not_accepted_as_the_private_key() {
    let public = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/client_key.pub.pem");
    let err = error_of(&["--bunq-client-private-key-file", public]);
    assert_eq!(err.variable, "BUNQ_CLIENT_PRIVATE_KEY_FILE");
}

/// `--help` lists the values a closed setting takes, and clap refuses any other before
/// the settings are read, naming the variable and the values.
#[test]
fn help_lists_possible_values_and_clap_refuses_others() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    for (variable, values) in [("RATE_LIMIT_SCOPE", "global, credential"), ("SESSION_RENEWAL", "on, off")] {
        let at = help.find(&format!("[env: {variable}=")).unwrap_or_else(|| panic!("{variable} in\n{help}"));
        let entry = &help[help[..at].rfind("--").unwrap()..];
        let entry = &entry[..entry.find("\n\n").unwrap_or(entry.len())];
        assert!(entry.contains(values), "{variable}'s possible values in\n{entry}");
    }
    assert!(help.contains("CALLS/DURATION"), "{help}");
    assert!(!help.contains("SECONDSs"), "a typo in\n{help}");
    for (flag, value, variable) in
        [("--rate-limit-scope", "planet", "RATE_LIMIT_SCOPE"), ("--session-renewal", "yes", "SESSION_RENEWAL")]
    {
        let refused = Cli::try_parse_from(["worker", flag, value]).err().expect("refused").to_string();
        assert!(refused.contains(variable) && refused.contains("possible values"), "{refused}");
    }
}

#[test]
fn amqp_password_never_appears_in_the_error() {
    let err = error_of(&["--amqp-url", "http://user:hunter2@host"]);
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn renewal_needs_a_key_and_a_lead_between_the_margin_and_a_week() {
    let err = error_of(&["--session-renewal", "on"]);
    assert_eq!(err.variable, "SESSION_RENEWAL");
    assert!(err.problem.contains("SESSION_ENCRYPTION_KEY_FILE"), "{err}");
    assert!(Settings::from_args(args(&[])).unwrap().renewal.is_none(), "off by default");

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("session.key");
    std::fs::write(&key, (0u8..32).map(|b| format!("{:02x}", b.wrapping_mul(37))).collect::<String>()).unwrap();
    let key = key.to_str().unwrap();
    let with_key = |extra: &[&str]| {
        let mut flags = vec!["--session-renewal", "on", "--session-encryption-key-file", key];
        flags.extend_from_slice(extra);
        Settings::from_args(args(&flags))
    };
    let renewal = with_key(&[]).unwrap().renewal.expect("on");
    assert_eq!(renewal.renew_before, Duration::from_secs(3600));
    for bad in ["soon", "60s", "30s", "7d", "30d"] {
        let err = with_key(&["--session-renew-before", bad]).unwrap_err();
        assert_eq!(err.variable, "SESSION_RENEW_BEFORE", "{bad}: {err}");
    }
    assert_eq!(with_key(&["--session-renew-before", "61s"]).unwrap().renewal.unwrap().renew_before.as_secs(), 61);
}

#[test]
fn credential_reset_needs_the_partner_key_and_a_sealing_key_and_never_shows_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let seal = dir.path().join("session.key");
    std::fs::write(&seal, (0u8..32).map(|b| format!("{:02x}", b.wrapping_mul(41))).collect::<String>()).unwrap();
    let partner = dir.path().join("partner.key");
    let partner_key = "partner-company-api-key-0123456789abcdef";
    std::fs::write(&partner, format!("{partner_key}\n")).unwrap();
    let (seal, partner) = (seal.to_str().unwrap(), partner.to_str().unwrap());

    let settings = Settings::from_args(args(&[])).unwrap();
    assert!(settings.reset.is_none(), "off by default");
    assert_eq!((settings.rate_limits.put.calls, settings.rate_limits.put.per.as_secs()), (2, 3));
    assert_eq!((settings.rate_limits.get.calls, settings.rate_limits.get.per.as_secs()), (3, 3));

    // One without the other names the missing one.
    let err = error_of(&["--credential-reset", "on", "--session-encryption-key-file", seal]);
    assert_eq!(err.variable, "BUNQ_PARTNER_API_KEY_FILE", "{err}");
    let err = error_of(&["--bunq-partner-api-key-file", partner, "--session-encryption-key-file", seal]);
    assert_eq!(err.variable, "CREDENTIAL_RESET", "{err}");
    // No sealing key: refused.
    let err = error_of(&["--credential-reset", "on", "--bunq-partner-api-key-file", partner]);
    assert_eq!(err.variable, "CREDENTIAL_RESET");
    assert!(err.problem.contains("SESSION_ENCRYPTION_KEY_FILE"), "{err}");

    let on =
        ["--credential-reset", "on", "--bunq-partner-api-key-file", partner, "--session-encryption-key-file", seal];
    let settings = Settings::from_args(args(&on)).unwrap();
    let reset = settings.reset.as_ref().expect("on");
    assert_eq!(reset.partner_api_key.expose_secret(), partner_key, "read, trimmed");
    assert_eq!((reset.max_refusals, reset.credential_lifetime), (3, Duration::from_secs(3600)));
    assert!(!format!("{settings:?}").contains(partner_key), "Debug never shows the key");

    for (flag, bad, variable) in [
        ("--credential-reset-max-attempts", "0", "CREDENTIAL_RESET_MAX_ATTEMPTS"),
        ("--credential-lifetime", "5s", "CREDENTIAL_LIFETIME"),
        ("--rate-limit-put", "2 per 3s", "RATE_LIMIT_PUT"),
        ("--rate-limit-get", "0/3s", "RATE_LIMIT_GET"),
    ] {
        let mut flags = on.to_vec();
        flags.extend([flag, bad]);
        let err = Settings::from_args(args(&flags)).unwrap_err();
        assert_eq!(err.variable, variable, "{flag}={bad}: {err}");
        assert!(!err.to_string().contains(partner_key));
    }
    let err = error_of(&[
        "--credential-reset",
        "yes",
        "--bunq-partner-api-key-file",
        partner,
        "--session-encryption-key-file",
        seal,
    ]);
    assert_eq!(err.variable, "CREDENTIAL_RESET");
    // A key file that is not one line of a key: named, not shown.
    std::fs::write(dir.path().join("two.key"), format!("{partner_key}\nsecond line {partner_key}")).unwrap();
    let two = dir.path().join("two.key");
    let two = two.to_str().unwrap();
    let err = error_of(&[
        "--credential-reset",
        "on",
        "--bunq-partner-api-key-file",
        two,
        "--session-encryption-key-file",
        seal,
    ]);
    assert_eq!(err.variable, "BUNQ_PARTNER_API_KEY_FILE");
    assert!(!err.to_string().contains(partner_key), "{err}");
}
