//! Checks of single settings: each names its variable on failure and never echoes a
//! value that may carry a secret (URLs, key material).

use super::durations::Durations;
use super::{invalid, ConfigError, WorkerArgs};
use crate::amqp::topology::Names;
use crate::lifecycle::renew::RenewalSettings;
use crate::ratelimit::limit::Limit;
use crate::ratelimit::RateLimits;
use crate::seal::Sealer;
use crate::store::Target;
use bunq_protocol::signing::ClientKey;
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

pub(super) fn positive(variable: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(invalid(variable, "must be positive"));
    }
    Ok(())
}

/// A queue's bound in bytes, `0` for none. RabbitMQ reads it as a signed 64-bit integer.
pub(super) fn byte_bound(variable: &'static str, value: u64) -> Result<Option<u64>, ConfigError> {
    if i64::try_from(value).is_err() {
        return Err(invalid(variable, format!("must be at most {} bytes", i64::MAX)));
    }
    Ok((value > 0).then_some(value))
}

/// Each queue's byte bound leaves room for the largest message it can get. A retry copy is
/// the body as it came (at most `MAX_MESSAGE_BYTES`: larger ones are dead-lettered); a
/// dead letter with its body sealed whole is about 4/3 of it, and a dead-letter queue
/// dropping from its head to fit a letter larger than its whole bound would drop that
/// letter too.
pub(super) fn check_queue_bounds(names: &Names, max_message_bytes: usize) -> Result<(), ConfigError> {
    let largest = max_message_bytes as u64;
    if names.dead_letter_retention.max_bytes.is_some_and(|bound| bound < largest.saturating_mul(2)) {
        return Err(invalid(
            "DEAD_LETTER_MAX_BYTES",
            format!("must be 0 (no bound) or at least twice MAX_MESSAGE_BYTES ({} bytes)", largest.saturating_mul(2)),
        ));
    }
    if names.retry_queue_max_bytes.is_some_and(|bound| bound < largest) {
        return Err(invalid(
            "RETRY_QUEUE_MAX_BYTES",
            format!("must be 0 (no bound) or at least MAX_MESSAGE_BYTES ({largest} bytes)"),
        ));
    }
    Ok(())
}

/// Only the scheme is checked here; the URL itself is never echoed, it may hold a password.
pub(super) fn require_url(url: &SecretString, variable: &'static str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.expose_secret().split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme {
        Some(s) if schemes.contains(&s.as_str()) => Ok(()),
        _ => Err(invalid(variable, format!("must be a URL with scheme {}", schemes.join(" or ")))),
    }
}

/// A comma-separated list of URLs, each kept secret (it may hold a password); blanks dropped.
pub(super) fn split_urls(list: &SecretString) -> Vec<SecretString> {
    list.expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| SecretString::from(url.to_owned()))
        .collect()
}

/// Where Redis is: `REDIS_URL` (default `redis://127.0.0.1:6379/0`) or the seed nodes of
/// `REDIS_CLUSTER_URLS`, never both: they select different clients, and silently
/// preferring one would leave the operator's other setting unused.
pub(super) fn parse_redis_target(
    url: Option<&SecretString>,
    cluster_urls: Option<&SecretString>,
) -> Result<Target, ConfigError> {
    const CLUSTER: &str = "REDIS_CLUSTER_URLS";
    let set = |value: Option<&SecretString>| value.filter(|v| !v.expose_secret().trim().is_empty()).cloned();
    match (set(url), set(cluster_urls)) {
        (Some(_), Some(_)) => Err(invalid(
            CLUSTER,
            "and REDIS_URL are both set: set REDIS_CLUSTER_URLS for Redis Cluster or REDIS_URL for one server, not both",
        )),
        (Some(url), None) => {
            require_url(&url, "REDIS_URL", &["redis", "rediss", "redis+unix", "unix"])?;
            Ok(Target::Single(url))
        }
        (None, None) => Ok(Target::Single(SecretString::from("redis://127.0.0.1:6379/0"))),
        (None, Some(list)) => {
            let urls = split_urls(&list);
            if urls.is_empty() {
                return Err(invalid(CLUSTER, "must hold at least one redis:// or rediss:// URL"));
            }
            for url in &urls {
                require_url(url, CLUSTER, &["redis", "rediss"])?;
                let parsed = url::Url::parse(url.expose_secret())
                    .map_err(|_| invalid(CLUSTER, "holds a URL that does not parse"))?;
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(invalid(CLUSTER, "holds a URL without a host"));
                }
                if !matches!(parsed.path(), "" | "/" | "/0") {
                    return Err(invalid(CLUSTER, "names a database: Redis Cluster has only database 0"));
                }
            }
            let tls = |u: &SecretString| u.expose_secret().to_ascii_lowercase().starts_with("rediss://");
            if urls.iter().any(tls) && !urls.iter().all(tls) {
                return Err(invalid(CLUSTER, "mixes redis:// and rediss://: a cluster speaks TLS on every node or none"));
            }
            Ok(Target::Cluster(urls))
        }
    }
}

pub(super) fn require_amqp_name(variable: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 255 {
        return Err(invalid(variable, "must be 1 to 255 bytes"));
    }
    if value.starts_with("amq.") {
        return Err(invalid(variable, "names starting with `amq.` are reserved by RabbitMQ"));
    }
    Ok(())
}

/// The URL itself is never echoed: it may carry credentials in its user part.
pub(super) fn parse_base_url(value: Option<&str>, allow_insecure_http: bool) -> Result<String, ConfigError> {
    const VARIABLE: &str = "BUNQ_BASE_URL";
    let value = value.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
        invalid(VARIABLE, "is required, e.g. https://api.bunq.com/v1 or https://public-api.sandbox.bunq.com/v1")
    })?;
    let url = reqwest::Url::parse(value.trim()).map_err(|e| invalid(VARIABLE, format!("is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(VARIABLE, "must not carry credentials"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback && allow_insecure_http => {}
        "http" if loopback => {
            return Err(invalid(
                VARIABLE,
                "uses http: allowed for a loopback stand-in only with BUNQ_ALLOW_INSECURE_HTTP=true",
            ))
        }
        _ => return Err(invalid(VARIABLE, "must use https (http only for a stand-in on a loopback address)")),
    }
    if !url.path().trim_end_matches('/').ends_with("/v1") {
        return Err(invalid(VARIABLE, "must end with the API version, /v1"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `*`, or IPv4 addresses: bunq accepts no IPv6 here (docs/bunq-api.md §2.2).
pub(super) fn parse_permitted_ips(value: &str) -> Result<Vec<String>, ConfigError> {
    const VARIABLE: &str = "BUNQ_PERMITTED_IPS";
    let ips: Vec<String> = value.split(',').map(str::trim).filter(|ip| !ip.is_empty()).map(str::to_owned).collect();
    if ips.is_empty() {
        return Err(invalid(VARIABLE, "must list IPv4 addresses or be `*`"));
    }
    for ip in &ips {
        if ip != "*" && ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(invalid(VARIABLE, "each entry must be an IPv4 address (bunq accepts no IPv6) or `*`"));
        }
    }
    Ok(ips)
}

pub(super) fn load_client_key(path: Option<&std::path::Path>) -> Result<ClientKey, ConfigError> {
    const VARIABLE: &str = "BUNQ_CLIENT_PRIVATE_KEY_FILE";
    let path =
        path.ok_or_else(|| invalid(VARIABLE, "is required: a PEM file with an RSA-2048 private key (PKCS#8)"))?;
    // The PEM text is the private key: wiped once parsed.
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| invalid(VARIABLE, format!("cannot read {}: {e}", path.display())))?,
    );
    ClientKey::from_pkcs8_pem(&text).map_err(|e| invalid(VARIABLE, format!("{}: {e}", path.display())))
}

pub(super) fn load_sealer(
    current: Option<&std::path::Path>,
    old: &[PathBuf],
) -> Result<Option<Arc<Sealer>>, ConfigError> {
    const VARIABLE: &str = "SESSION_ENCRYPTION_KEY_FILE";
    const OLD: &str = "SESSION_ENCRYPTION_OLD_KEY_FILES";
    // A key file's bytes and the key parsed from them are wiped when dropped.
    let read = |variable, path: &std::path::Path| {
        let bytes =
            std::fs::read(path).map_err(|e| invalid(variable, format!("cannot read {}: {e}", path.display())))?;
        crate::seal::parse_key_file(&Zeroizing::new(bytes))
            .map_err(|p| invalid(variable, format!("{}: {p}", path.display())))
    };
    let Some(current) = current else {
        if !old.is_empty() {
            return Err(invalid(OLD, "needs SESSION_ENCRYPTION_KEY_FILE, the key that seals"));
        }
        return Ok(None);
    };
    let current = read(VARIABLE, current)?;
    let old = old.iter().map(|path| read(OLD, path)).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Arc::new(Sealer::from_keys(&current, &old))))
}

/// How often each replica looks at the renewal schedule.
const RENEWAL_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// bunq's longest auto-logout (`session_timeout`) is a week: renewing earlier than that
/// before expiry would renew at once.
const LONGEST_SESSION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `SESSION_RENEWAL` and `SESSION_RENEW_BEFORE`, checked against the key and the margin.
pub(super) fn parse_renewal(
    args: &WorkerArgs,
    has_key: bool,
    d: &Durations,
) -> Result<Option<RenewalSettings>, ConfigError> {
    match args.session_renewal.trim() {
        "off" => return Ok(None),
        "on" => {}
        other => return Err(invalid("SESSION_RENEWAL", format!("must be `on` or `off`, not `{other}`"))),
    }
    if !has_key {
        return Err(invalid(
            "SESSION_RENEWAL",
            "`on` stores each user's credential, which needs SESSION_ENCRYPTION_KEY_FILE to seal it",
        ));
    }
    let renew_before =
        crate::duration::parse(&args.session_renew_before).map_err(|p| invalid("SESSION_RENEW_BEFORE", p))?;
    if renew_before <= d.session_ttl_margin.0 {
        return Err(invalid(
            "SESSION_RENEW_BEFORE",
            "must be more than SESSION_TTL_MARGIN: the cached session is gone that long before it expires",
        ));
    }
    if renew_before >= LONGEST_SESSION {
        return Err(invalid("SESSION_RENEW_BEFORE", "must be less than 7d, bunq's longest session"));
    }
    Ok(Some(RenewalSettings {
        renew_before,
        poll_interval: RENEWAL_POLL_INTERVAL,
        lock_ttl: d.lock_ttl.0,
        retry_delay: d.retry_queue_delay.0,
        max_retry_delay: d.retry_queue_max_delay.0,
    }))
}

/// The bunq rate limits every replica shares.
pub(super) fn parse_rate_limits(args: &WorkerArgs, max_park: Duration) -> Result<RateLimits, ConfigError> {
    let (put, get) = args.partner.limits()?;
    Ok(RateLimits {
        session_server: Limit::parse(&args.rate_limit_session_server)
            .map_err(|p| invalid("RATE_LIMIT_SESSION_SERVER", p))?,
        other_post: Limit::parse(&args.rate_limit_other_post).map_err(|p| invalid("RATE_LIMIT_OTHER_POST", p))?,
        put,
        get,
        scope: args.rate_limit_scope.parse().map_err(|p: String| invalid("RATE_LIMIT_SCOPE", p))?,
        max_park,
    })
}
