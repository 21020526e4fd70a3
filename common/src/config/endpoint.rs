//! One endpoint checked: an `[[endpoints]]` table of the file or an object of
//! the management API, with the config's defaults and the address policy.

use super::raw::SignatureScheme;
use super::raw::{self, EndpointSection};
use super::types::*;
use super::{Config, MAX_BATCH_SIZE, MAX_DELAY_MS, MAX_HOLD_MS};
use crate::envelope::is_valid_type;
use crate::retry::RetryPolicy;
use crate::secret::Redacted;
use crate::signing::SigningSecret;
use crate::transform::Transform;
use std::num::NonZeroU64;
use std::time::Duration;

impl Config {
    /// Checks one endpoint written as an `[[endpoints]]` table (as the
    /// management API receives it) with this config's defaults.
    ///
    /// # Errors
    /// `(key, message)`: the first bad key.
    /// A URL whose host is a literal IP address must be allowed by the
    /// address policy ([`crate::addresses`]); names are checked when they
    /// resolve, at delivery.
    pub fn check_endpoint(&self, section: EndpointSection) -> Result<Endpoint, (String, String)> {
        let mut endpoint = checked_endpoint(section, &self.defaults)?;
        self.check_address(&endpoint.url)
            .map_err(|message| ("url".to_owned(), message))?;
        check_queue_names(&self.amqp.prefix, &endpoint)?;
        let detailed = self.metrics_detailed.contains(&endpoint.id);
        endpoint.detailed_metrics = detailed;
        for variant in &mut endpoint.variants {
            let environment = variant.environment.as_deref().unwrap_or_default();
            self.check_address(&variant.url)
                .map_err(|message| (format!("environments.{environment}.url"), message))?;
            variant.detailed_metrics = detailed;
        }
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
}

/// Applies defaults and checks one endpoint; errors are `(key, message)`.
pub(super) fn checked_endpoint(
    ep: EndpointSection,
    d: &raw::DefaultsSection,
) -> Result<Endpoint, (String, String)> {
    let fail = |key: &str, message: String| Err((key.to_owned(), message));
    if !is_valid_endpoint_id(&ep.id) {
        return fail("id", "must be 1 to 100 characters of [a-z0-9_-]".into());
    }
    let url = checked_url("url", &ep.url)?;
    if ep.events.is_empty() {
        return fail(
            "events",
            "is empty: list at least one pattern (\"#\" = all events)".into(),
        );
    }
    if ep.events.len() > MAX_PATTERNS {
        return fail(
            "events",
            format!(
                "has {} patterns; at most {MAX_PATTERNS} (each is a binding per queue)",
                ep.events.len()
            ),
        );
    }
    if ep.environments.len() > MAX_ENVIRONMENTS {
        return fail(
            "environments",
            format!(
                "has {} entries; at most {MAX_ENVIRONMENTS}",
                ep.environments.len()
            ),
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
    if let Some(tenant) = &ep.tenant
        && !crate::routing::is_valid_scope(tenant)
    {
        return fail("tenant", "must be 1 to 64 characters of [a-z0-9_-]".into());
    }
    if let Some(name) = ep
        .environments
        .keys()
        .find(|n| !crate::routing::is_valid_scope(n))
    {
        return fail(
            &format!("environments.{name}"),
            "the name must be 1 to 64 characters of [a-z0-9_-]".into(),
        );
    }
    for (j, pattern) in ep.events.iter().enumerate() {
        let scopes = std::iter::once(None).chain(ep.environments.keys().map(|k| Some(k.as_str())));
        for environment in scopes {
            let keys = crate::routing::binding_keys(
                ep.tenant.as_deref(),
                environment,
                std::slice::from_ref(pattern),
            );
            if let Some(long) = keys.iter().find(|k| k.len() > crate::routing::MAX_KEY_LEN) {
                return fail(
                    &format!("events[{j}]"),
                    format!(
                        "with the tenant and environment the binding key is {} bytes, over the broker's 255; shorten the pattern",
                        long.len()
                    ),
                );
            }
        }
    }
    let headers = checked_headers("headers", ep.headers)?;
    let secrets = checked_secrets("secrets", &ep.secrets, ep.signature)?;
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
    let mut variants = Vec::with_capacity(ep.environments.len());
    for (name, env) in ep.environments {
        let key = format!("environments.{name}");
        if !crate::routing::is_valid_scope(&name) {
            return fail(
                &key,
                "the name must be 1 to 64 characters of [a-z0-9_-]".into(),
            );
        }
        let env_timeout_ms = env.timeout_ms.map_or(timeout_ms, NonZeroU64::get);
        if env_timeout_ms > MAX_HOLD_MS {
            return fail(
                &format!("{key}.timeout_ms"),
                format!("must be at most {MAX_HOLD_MS} (15 minutes)"),
            );
        }
        variants.push(Variant {
            id: format!("{}{VARIANT_SEPARATOR}{name}", ep.id),
            url: checked_url(&format!("{key}.url"), &env.url)?,
            method: env.method.unwrap_or(ep.method),
            headers: checked_headers(&format!("{key}.headers"), env.headers)?,
            secrets: checked_secrets(&format!("{key}.secrets"), &env.secrets, ep.signature)?,
            timeout: Duration::from_millis(env_timeout_ms),
            environment: name,
        });
    }
    let base = Endpoint {
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
        detailed_metrics: false,
        tenant: ep.tenant,
        environment: None,
        variants: Vec::new(),
    };
    let variants = variants.into_iter().map(|v| v.of(&base)).collect();
    Ok(Endpoint { variants, ..base })
}

/// Whether each variant's queue name `<prefix>.ep.<id>~<env>` fits AMQP's
/// 255 bytes (the base's always does: prefix and id are at most 100 each).
pub(super) fn check_queue_names(prefix: &str, endpoint: &Endpoint) -> Result<(), (String, String)> {
    for variant in &endpoint.variants {
        let len = prefix.len() + ".ep.".len() + variant.id.len();
        if len > 255 {
            let environment = variant.environment.as_deref().unwrap_or_default();
            return Err((
                format!("environments.{environment}"),
                format!(
                    "its queue name {prefix}.ep.{} would be {len} bytes, over AMQP's 255; use a shorter id or environment name",
                    variant.id
                ),
            ));
        }
    }
    Ok(())
}

/// Most event patterns of one endpoint (each is a binding of each of its
/// queues: an API caller must not make the broker hold millions).
pub const MAX_PATTERNS: usize = 100;

/// Most environments one endpoint may declare (each is a queue and a worker).
pub const MAX_ENVIRONMENTS: usize = 8;

/// What a variant sets; the rest is its endpoint's.
struct Variant {
    id: String,
    environment: String,
    url: url::Url,
    method: raw::Method,
    headers: Vec<(String, Redacted)>,
    secrets: Vec<SigningSecret>,
    timeout: Duration,
}

impl Variant {
    fn of(self, base: &Endpoint) -> Endpoint {
        Endpoint {
            id: self.id,
            url: self.url,
            method: self.method,
            headers: self.headers,
            secrets: self.secrets,
            timeout: self.timeout,
            environment: Some(self.environment),
            variants: Vec::new(),
            ..base.clone()
        }
    }
}

fn checked_url(key: &str, text: &str) -> Result<url::Url, (String, String)> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        Ok(_) => Err((
            key.to_owned(),
            "must be an http:// or https:// URL with a host".into(),
        )),
        Err(e) => Err((key.to_owned(), format!("is not a URL: {e}"))),
    }
}

fn checked_headers(
    key: &str,
    given: std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, Redacted)>, (String, String)> {
    let mut headers = Vec::new();
    for (name, value) in given {
        let lower = name.to_ascii_lowercase();
        let fail = |message: &str| Err((format!("{key}.{name}"), message.to_owned()));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return fail("is not a valid header name");
        }
        if lower.starts_with("webhook-")
            || crate::contract::header::is_reserved(&lower)
            || lower == "content-type"
            || lower == "content-length"
            || lower == "host"
        {
            return fail("is set by hookpost and cannot be overridden");
        }
        if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return fail("has control characters (the value is not shown)");
        }
        headers.push((name, Redacted::new(value)));
    }
    Ok(headers)
}

fn checked_secrets(
    key: &str,
    texts: &[String],
    scheme: SignatureScheme,
) -> Result<Vec<SigningSecret>, (String, String)> {
    texts
        .iter()
        .enumerate()
        .map(|(j, text)| {
            match scheme {
                SignatureScheme::Standard => SigningSecret::parse(text),
                SignatureScheme::Hex => SigningSecret::raw(text),
            }
            .map_err(|e| (format!("{key}[{j}]"), e.to_string()))
        })
        .collect()
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
