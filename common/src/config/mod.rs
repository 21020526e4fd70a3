//! Configuration: `hookpost.toml`, `${VAR}` interpolation, `HOOKPOST_*`
//! overrides, and validation into the checked [`Config`].
//!
//! Loading is in [`load`]; the file schema (and its documentation) in [`raw`].
//! Every error names the file and the key; secrets never appear in one.

pub mod load;
pub mod raw;

pub use load::ConfigError;
pub use raw::{Method, OnExhausted, QueueType, SignatureScheme};

use crate::envelope::is_valid_type;
use crate::retry::RetryPolicy;
use crate::secret::{Redacted, redact_url};
use crate::server::Limits;
use crate::signing::SigningSecret;
use crate::transform::Transform;
use ipnet::IpNet;
use raw::{EndpointSection, RawConfig};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest retry delay (a wait queue's TTL), 30 days.
pub const MAX_DELAY_MS: u64 = 30 * 24 * 3_600_000;
/// Longest request timeout or batch interval, 15 minutes.
pub const MAX_HOLD_MS: u64 = 15 * 60_000;

/// Most events one request may batch.
pub const MAX_BATCH_SIZE: u32 = 10_000;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub origin: PathBuf,
    /// Broker settings.
    pub amqp: AmqpConfig,
    /// Metrics and health server address.
    pub metrics_listen: SocketAddr,
    /// Metrics and health server timeouts and connection cap.
    pub metrics_limits: Limits,
    /// How often queue depths are polled.
    pub queue_poll_interval: Duration,
    /// Outbound HTTP rules.
    pub http: HttpConfig,
    /// Ingest server settings.
    pub ingest: IngestConfig,
    /// Endpoints, defaults applied, in file order.
    pub endpoints: Vec<Endpoint>,
    /// `[defaults]` as written, for endpoints registered at runtime.
    pub defaults: raw::DefaultsSection,
    /// The management API.
    pub api: ApiConfig,
    /// The endpoint registry.
    pub registry: RegistryConfig,
    /// The transform sandbox.
    pub transforms: TransformsConfig,
}

/// Checked `[transforms]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformsConfig {
    /// Worker processes.
    pub workers: usize,
    /// Concurrent runs per endpoint.
    pub per_endpoint: usize,
    /// Wall-clock limit of one run.
    pub timeout: Duration,
    /// Address-space limit of a worker, in bytes.
    pub memory_bytes: u64,
    /// Executable started as a worker (`None`: the dispatcher's own).
    pub worker_path: Option<PathBuf>,
}

/// Checked `[api]`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Accepted bearer tokens (empty: the API is off).
    pub tokens: Vec<Redacted>,
    /// Timeouts and connection cap.
    pub limits: Limits,
    /// Longest a request body may take to arrive.
    pub body_read_timeout: Duration,
}

/// Checked `[registry]`.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Seals secrets at rest; `None`: registered endpoints cannot hold secrets or headers.
    pub secrets_key: Option<crate::secret::SecretsKey>,
    /// How long rotated-out secrets keep signing.
    pub secret_overlap: Duration,
}

/// Checked `[amqp]`.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Broker URL (holds the password: shown redacted).
    pub url: Redacted,
    /// Name prefix of exchanges and queues.
    pub prefix: String,
    /// Queue flavour.
    pub queue_type: QueueType,
    /// `x-max-length` of the unrouted queue.
    pub unrouted_max_length: u32,
    /// `x-delivery-limit` of endpoint queues.
    pub delivery_limit: u32,
    /// Bound on one publish, reconnect included.
    pub publish_timeout: Duration,
    /// Prefetch per endpoint consumer.
    pub prefetch: u16,
    /// Cap of the reconnect backoff.
    pub max_reconnect_delay: Duration,
    /// Largest event published or delivered, in bytes.
    pub max_message_bytes: usize,
}

/// Checked `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Private networks endpoints may use.
    pub allowed_networks: Vec<IpNet>,
    /// Response body read cap.
    pub max_response_body_bytes: usize,
    /// Cap on `Retry-After`.
    pub max_retry_after: Duration,
}

/// Checked `[ingest]`.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Accepted bearer tokens.
    pub tokens: Vec<Redacted>,
    /// Request body cap.
    pub max_body_bytes: usize,
    /// Events per request cap.
    pub max_events: usize,
    /// Timeouts and connection cap.
    pub limits: Limits,
    /// Longest a request body may take to arrive.
    pub body_read_timeout: Duration,
}

/// One endpoint with the defaults applied.
#[derive(Clone, PartialEq)]
pub struct Endpoint {
    /// Identifier and queue suffix.
    pub id: String,
    /// Target URL.
    pub url: url::Url,
    /// Event type patterns (AMQP topic binding keys).
    pub events: Vec<String>,
    /// HTTP method.
    pub method: Method,
    /// Extra headers; values redacted in `Debug`.
    pub headers: Vec<(String, Redacted)>,
    /// Signing secrets.
    pub secrets: Vec<SigningSecret>,
    /// Request timeout.
    pub timeout: Duration,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Events per request.
    pub batch_size: u32,
    /// Longest wait of a partial batch.
    pub batch_interval: Duration,
    /// Concurrent requests.
    pub max_in_flight: u32,
    /// Exhausted deliveries: dead-letter or drop.
    pub on_exhausted: OnExhausted,
    /// Circuit breaker; `None`: off.
    pub breaker: Option<BreakerPolicy>,
    /// Codes retried on top of the built-in rules.
    pub retry_add: Vec<u16>,
    /// Codes never retried.
    pub retry_remove: Vec<u16>,
    /// Request rate limit; `None`: none.
    pub rate_limit: Option<RateLimit>,
    /// How requests are signed.
    pub signature: SignatureScheme,
    /// The compiled jq transform.
    pub transform: Option<std::sync::Arc<Transform>>,
    /// When each of `secrets` stops signing (rotation overlap); empty or
    /// `None`: never.
    pub secret_expiry: Vec<Option<time::OffsetDateTime>>,
}

impl Endpoint {
    /// The secrets that sign at `now` (all, unless some are past their rotation overlap).
    pub fn signing_secrets(
        &self,
        now: time::OffsetDateTime,
    ) -> std::borrow::Cow<'_, [SigningSecret]> {
        if self.secret_expiry.iter().all(Option::is_none) {
            return std::borrow::Cow::Borrowed(&self.secrets);
        }
        std::borrow::Cow::Owned(
            self.secrets
                .iter()
                .zip(self.secret_expiry.iter().chain(std::iter::repeat(&None)))
                .filter(|(_, until)| until.is_none_or(|t| t > now))
                .map(|(s, _)| s.clone())
                .collect(),
        )
    }
}

/// When an endpoint's circuit breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed requests that open it.
    pub failures: u32,
    /// Wait before the probe delivery.
    pub cooldown: Duration,
}

/// A token bucket: `per_s` tokens a second, at most `burst` saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second.
    pub per_s: u32,
    /// Bucket size.
    pub burst: u32,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &redact_url(self.url.as_str()))
            .field("events", &self.events)
            .field("method", &self.method)
            .field("headers", &self.headers)
            .field("secrets", &self.secrets.len())
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("batch_size", &self.batch_size)
            .field("batch_interval", &self.batch_interval)
            .field("max_in_flight", &self.max_in_flight)
            .field("on_exhausted", &self.on_exhausted)
            .field("breaker", &self.breaker)
            .field("retry_add", &self.retry_add)
            .field("retry_remove", &self.retry_remove)
            .field("rate_limit", &self.rate_limit)
            .field("signature", &self.signature)
            .field("transform", &self.transform.as_ref().map(|t| t.source()))
            .finish()
    }
}

impl Config {
    /// Reads `path`, interpolates `${VAR}`s and applies `HOOKPOST_*` overrides
    /// from the process environment, then validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the key (or the variable).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_toml_str(&text, path, &env)
    }

    /// [`Config::load`] on `path`, or without a file: the defaults with the
    /// environment's `HOOKPOST_*` overrides (what the CLIs do without `--config`).
    ///
    /// # Errors
    /// See [`Config::load`].
    pub fn load_optional(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None => {
                let env: Vec<(String, String)> = std::env::vars().collect();
                Self::from_toml_str("", Path::new("<no config file>"), &env)
            }
        }
    }

    /// Like [`Config::load`] with the file's text and the environment given.
    ///
    /// # Errors
    /// See [`Config::load`].
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let raw = load::parse(text, origin, env)?;
        Self::from_raw(raw, origin)
    }

    /// The default configuration (no endpoints), with `AMQP_URL` honoured.
    pub fn defaults() -> Self {
        Self::from_raw(RawConfig::default(), Path::new("<defaults>"))
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }

    /// Validates a parsed file.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn from_raw(raw: RawConfig, origin: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: origin.to_path_buf(),
            key,
            message,
        };
        let amqp = raw.amqp;
        if !(amqp.url.starts_with("amqp://") || amqp.url.starts_with("amqps://")) {
            return Err(invalid(
                "amqp.url".into(),
                "must start with amqp:// or amqps://".into(),
            ));
        }
        if amqp.prefix.is_empty()
            || amqp.prefix.len() > 100
            || !amqp
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(invalid(
                "amqp.prefix".into(),
                "must be 1 to 100 characters of [A-Za-z0-9_.-]".into(),
            ));
        }
        let allowed_networks = raw
            .http
            .allowed_networks
            .iter()
            .enumerate()
            .map(|(i, net)| {
                net.parse::<IpNet>().map_err(|_| {
                    invalid(
                        format!("http.allowed_networks[{i}]"),
                        format!("{net:?} is not a network in CIDR form (like 10.0.0.0/8)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (section, tokens) in [("ingest", &raw.ingest.tokens), ("api", &raw.api.tokens)] {
            for (i, token) in tokens.iter().enumerate() {
                if token.trim().len() < 16
                    || token.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(invalid(
                        format!("{section}.tokens[{i}]"),
                        "must be at least 16 characters without spaces (the value is not shown)"
                            .into(),
                    ));
                }
            }
        }
        if let Some(token) = raw
            .api
            .tokens
            .iter()
            .find(|t| raw.ingest.tokens.contains(t))
        {
            let i = raw.api.tokens.iter().position(|t| t == token).unwrap_or(0);
            return Err(invalid(
                format!("api.tokens[{i}]"),
                "is also an ingest token: management tokens must be separate".into(),
            ));
        }
        let metrics_limits = limits(
            "metrics",
            raw.metrics.header_read_timeout_ms,
            raw.metrics.idle_timeout_ms,
            raw.metrics.max_connections,
        )
        .map_err(|(key, message)| invalid(key, message))?;
        let ingest_limits = limits(
            "ingest",
            raw.ingest.header_read_timeout_ms,
            raw.ingest.idle_timeout_ms,
            raw.ingest.max_connections,
        )
        .map_err(|(key, message)| invalid(key, message))?;
        let api_limits = limits(
            "api",
            raw.api.header_read_timeout_ms,
            raw.api.idle_timeout_ms,
            raw.api.max_connections,
        )
        .map_err(|(key, message)| invalid(key, message))?;
        let ingest_body_read_timeout = at_most_hold(
            "ingest.body_read_timeout_ms",
            raw.ingest.body_read_timeout_ms,
        )
        .map_err(|(key, message)| invalid(key, message))?;
        let api_body_read_timeout =
            at_most_hold("api.body_read_timeout_ms", raw.api.body_read_timeout_ms)
                .map_err(|(key, message)| invalid(key, message))?;
        let secrets_key = raw
            .registry
            .secrets_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(crate::secret::SecretsKey::parse)
            .transpose()
            .map_err(|e| invalid("registry.secrets_key".into(), e))?;
        let mut seen = HashSet::new();
        let endpoints = raw
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, ep)| {
                let id = ep.id.clone();
                if !seen.insert(id.clone()) {
                    return Err(invalid(
                        format!("endpoints[{i}].id"),
                        format!("{id:?} is used twice"),
                    ));
                }
                checked_endpoint(ep, &raw.defaults).map_err(|(key, message)| {
                    invalid(
                        format!("endpoints[{i}].{key}"),
                        format!("(endpoint {id:?}) {message}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            origin: origin.to_path_buf(),
            amqp: AmqpConfig {
                url: Redacted::new(amqp.url),
                prefix: amqp.prefix,
                queue_type: amqp.queue_type,
                unrouted_max_length: amqp.unrouted_max_length.get(),
                delivery_limit: amqp.delivery_limit.get(),
                publish_timeout: Duration::from_millis(amqp.publish_timeout_ms.get()),
                prefetch: amqp.prefetch.get(),
                max_reconnect_delay: Duration::from_millis(amqp.max_reconnect_delay_ms.get()),
                max_message_bytes: amqp.max_message_bytes.get(),
            },
            metrics_listen: raw.metrics.listen,
            metrics_limits,
            queue_poll_interval: Duration::from_millis(raw.metrics.queue_poll_interval_ms.get()),
            http: HttpConfig {
                allowed_networks,
                max_response_body_bytes: raw.http.max_response_body_bytes.get(),
                max_retry_after: Duration::from_millis(raw.http.max_retry_after_ms.get()),
            },
            ingest: IngestConfig {
                listen: raw.ingest.listen,
                tokens: raw.ingest.tokens.into_iter().map(Redacted::new).collect(),
                max_body_bytes: raw.ingest.max_body_bytes.get(),
                max_events: raw.ingest.max_events.get(),
                limits: ingest_limits,
                body_read_timeout: ingest_body_read_timeout,
            },
            endpoints,
            defaults: raw.defaults,
            api: ApiConfig {
                listen: raw.api.listen,
                tokens: raw.api.tokens.into_iter().map(Redacted::new).collect(),
                limits: api_limits,
                body_read_timeout: api_body_read_timeout,
            },
            registry: RegistryConfig {
                secrets_key,
                secret_overlap: Duration::from_millis(raw.registry.secret_overlap_ms.get()),
            },
            transforms: TransformsConfig {
                workers: raw.transforms.workers.get() as usize,
                per_endpoint: raw.transforms.per_endpoint.get() as usize,
                timeout: Duration::from_millis(raw.transforms.timeout_ms.get()),
                memory_bytes: raw.transforms.memory_mb.get().saturating_mul(1 << 20),
                worker_path: raw.transforms.worker_path,
            },
        })
    }

    /// Checks one endpoint written as an `[[endpoints]]` table (as the
    /// management API receives it) with this config's defaults.
    ///
    /// # Errors
    /// `(key, message)`: the first bad key.
    /// A URL whose host is a literal IP address must be allowed by the
    /// address policy ([`crate::addresses`]); names are checked when they
    /// resolve, at delivery.
    pub fn check_endpoint(&self, section: EndpointSection) -> Result<Endpoint, (String, String)> {
        let endpoint = checked_endpoint(section, &self.defaults)?;
        self.check_address(&endpoint.url)
            .map_err(|message| ("url".to_owned(), message))?;
        Ok(endpoint)
    }

    /// Whether `url`'s host, when it is a literal IP address, may be
    /// reached under `http.allowed_networks`.
    ///
    /// # Errors
    /// Why the address is refused, and how to allow it.
    pub fn check_address(&self, url: &url::Url) -> Result<(), String> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => std::net::IpAddr::from(ip),
            Some(url::Host::Ipv6(ip)) => std::net::IpAddr::from(ip),
            _ => return Ok(()),
        };
        crate::addresses::AddressGuard::new(self.http.allowed_networks.clone())
            .check(ip)
            .map_err(|why| {
                format!("{ip} {why}; add its network to http.allowed_networks to allow it")
            })
    }

    /// The wait tiers (ms) the endpoints' retry schedules use, each once.
    pub fn wait_tiers(&self) -> std::collections::BTreeSet<u64> {
        self.endpoints
            .iter()
            .flat_map(|e| e.retry.tiers_ms())
            .collect()
    }

    /// Whether `id` names an endpoint of the file (read-only for the API).
    pub fn is_file_endpoint(&self, id: &str) -> bool {
        self.endpoint(id).is_some()
    }

    /// The endpoint with this id.
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

/// A server timeout in milliseconds as a duration, at most [`MAX_HOLD_MS`];
/// errors are `(key, message)`.
fn at_most_hold(key: &str, ms: NonZeroU64) -> Result<Duration, (String, String)> {
    if ms.get() > MAX_HOLD_MS {
        return Err((
            key.to_owned(),
            format!("must be at most {MAX_HOLD_MS} (15 minutes)"),
        ));
    }
    Ok(Duration::from_millis(ms.get()))
}

/// A listener's `[section]` timeouts and connection cap, checked.
fn limits(
    section: &str,
    header_read_timeout_ms: NonZeroU64,
    idle_timeout_ms: NonZeroU64,
    max_connections: NonZeroUsize,
) -> Result<Limits, (String, String)> {
    Ok(Limits {
        header_read_timeout: at_most_hold(
            &format!("{section}.header_read_timeout_ms"),
            header_read_timeout_ms,
        )?,
        idle_timeout: at_most_hold(&format!("{section}.idle_timeout_ms"), idle_timeout_ms)?,
        max_connections: max_connections.get(),
    })
}

/// Applies defaults and checks one endpoint; errors are `(key, message)`.
fn checked_endpoint(
    ep: EndpointSection,
    d: &raw::DefaultsSection,
) -> Result<Endpoint, (String, String)> {
    let fail = |key: &str, message: String| Err((key.to_owned(), message));
    if !is_valid_endpoint_id(&ep.id) {
        return fail("id", "must be 1 to 100 characters of [a-z0-9_-]".into());
    }
    let url = match url::Url::parse(&ep.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        Ok(_) => {
            return fail(
                "url",
                "must be an http:// or https:// URL with a host".into(),
            );
        }
        Err(e) => return fail("url", format!("is not a URL: {e}")),
    };
    if ep.events.is_empty() {
        return fail(
            "events",
            "is empty: list at least one pattern (\"#\" = all events)".into(),
        );
    }
    for (j, pattern) in ep.events.iter().enumerate() {
        if !is_valid_pattern(pattern) {
            return fail(
                &format!("events[{j}]"),
                format!(
                    "{pattern:?} is not a pattern (dot-separated words of [a-z0-9_-], `*` or `#`)"
                ),
            );
        }
    }
    let mut headers = Vec::new();
    for (name, value) in ep.headers {
        let lower = name.to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return fail(
                &format!("headers.{name}"),
                "is not a valid header name".into(),
            );
        }
        if lower.starts_with("webhook-")
            || crate::contract::header::is_reserved(&lower)
            || lower == "content-type"
            || lower == "content-length"
            || lower == "host"
        {
            return fail(
                &format!("headers.{name}"),
                "is set by hookpost and cannot be overridden".into(),
            );
        }
        if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return fail(
                &format!("headers.{name}"),
                "has control characters (the value is not shown)".into(),
            );
        }
        headers.push((name, Redacted::new(value)));
    }
    let mut secrets = Vec::new();
    for (j, text) in ep.secrets.iter().enumerate() {
        let parsed = match ep.signature {
            SignatureScheme::Standard => SigningSecret::parse(text),
            SignatureScheme::Hex => SigningSecret::raw(text),
        };
        secrets.push(parsed.map_err(|e| (format!("secrets[{j}]"), e.to_string()))?);
    }
    let retry = RetryPolicy {
        max_retries: ep.max_retries.unwrap_or(d.max_retries),
        retry_delay_ms: ep.retry_delay_ms.unwrap_or(d.retry_delay_ms).get(),
        max_retry_delay_ms: ep.max_retry_delay_ms.unwrap_or(d.max_retry_delay_ms).get(),
    };
    if retry.max_retry_delay_ms < retry.retry_delay_ms {
        return fail(
            "max_retry_delay_ms",
            "must not be below retry_delay_ms".into(),
        );
    }
    if retry.max_retries > 100 {
        return fail("max_retries", "must be at most 100".into());
    }
    if retry.max_retry_delay_ms > MAX_DELAY_MS {
        return fail(
            "max_retry_delay_ms",
            format!("must be at most {MAX_DELAY_MS} (30 days)"),
        );
    }
    // A delivery held longer than the broker's consumer_timeout (30 min by
    // default) closes the channel: keep what a dispatcher holds well below.
    let timeout_ms = ep.timeout_ms.unwrap_or(d.timeout_ms).get();
    if timeout_ms > MAX_HOLD_MS {
        return fail(
            "timeout_ms",
            format!("must be at most {MAX_HOLD_MS} (15 minutes)"),
        );
    }
    let batch_interval_ms = ep.batch_interval_ms.unwrap_or(d.batch_interval_ms);
    if batch_interval_ms > MAX_HOLD_MS {
        return fail(
            "batch_interval_ms",
            format!("must be at most {MAX_HOLD_MS} (15 minutes)"),
        );
    }
    let batch_size = ep.batch_size.unwrap_or(d.batch_size).get();
    if batch_size > MAX_BATCH_SIZE {
        return fail("batch_size", format!("must be at most {MAX_BATCH_SIZE}"));
    }
    for (key, codes) in [
        ("retry_on_status.add", &ep.retry_on_status.add),
        ("retry_on_status.remove", &ep.retry_on_status.remove),
    ] {
        if let Some(code) = codes.iter().find(|c| !(300..=599).contains(*c)) {
            return fail(key, format!("{code} is not a 3xx, 4xx or 5xx status code"));
        }
    }
    if let Some(code) = ep
        .retry_on_status
        .add
        .iter()
        .find(|c| ep.retry_on_status.remove.contains(c))
    {
        return fail(
            "retry_on_status",
            format!("{code} is both added and removed"),
        );
    }
    let breaker_failures = ep.breaker_failures.unwrap_or(d.breaker_failures);
    let cooldown_ms = ep
        .breaker_cooldown_ms
        .unwrap_or(d.breaker_cooldown_ms)
        .get();
    if cooldown_ms > MAX_HOLD_MS {
        return fail(
            "breaker_cooldown_ms",
            format!("must be at most {MAX_HOLD_MS} (15 minutes)"),
        );
    }
    let rate_limit = ep.rate_limit_per_s.map(|per_s| RateLimit {
        per_s: per_s.get(),
        burst: ep.rate_limit_burst.unwrap_or(per_s).get(),
    });
    if rate_limit.is_none() && ep.rate_limit_burst.is_some() {
        return fail("rate_limit_burst", "needs rate_limit_per_s".into());
    }
    let transform = match &ep.transform {
        None => None,
        Some(source) => Some(std::sync::Arc::new(
            Transform::compile(source).map_err(|e| ("transform".to_owned(), e.to_string()))?,
        )),
    };
    Ok(Endpoint {
        id: ep.id,
        url,
        events: ep.events,
        method: ep.method,
        headers,
        secrets,
        timeout: Duration::from_millis(timeout_ms),
        retry,
        batch_size,
        batch_interval: Duration::from_millis(batch_interval_ms),
        max_in_flight: ep.max_in_flight.unwrap_or(d.max_in_flight).get(),
        on_exhausted: ep.on_exhausted.unwrap_or(d.on_exhausted),
        breaker: (breaker_failures > 0).then(|| BreakerPolicy {
            failures: breaker_failures,
            cooldown: Duration::from_millis(cooldown_ms),
        }),
        retry_add: ep.retry_on_status.add,
        retry_remove: ep.retry_on_status.remove,
        rate_limit,
        signature: ep.signature,
        transform,
        secret_expiry: Vec::new(),
    })
}

/// Whether `id` may name an endpoint (and its queue).
pub fn is_valid_endpoint_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `pattern` is a topic binding key over event types: words, `*`, `#`.
pub fn is_valid_pattern(pattern: &str) -> bool {
    pattern == "#"
        || pattern == "*"
        || (pattern.len() <= 255
            && pattern
                .split('.')
                .all(|w| w == "*" || w == "#" || is_valid_type(w)))
}

#[cfg(test)]
mod tests;
