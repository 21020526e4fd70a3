//! Raw → checked: every section's defaults and limits, with errors naming
//! the file and the key. Endpoints are checked in [`super::endpoint`].

use super::endpoint::{check_queue_names, checked_endpoint, is_valid_endpoint_id};
use super::raw::RawConfig;
use super::types::*;
use super::{Config, ConfigError, MAX_HOLD_MS};
use crate::secret::Redacted;
use crate::server::Limits;
use ipnet::IpNet;
use std::collections::HashSet;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

impl Config {
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
        let amqp_scheme = |url: &str| url.starts_with("amqp://") || url.starts_with("amqps://");
        if !amqp_scheme(&amqp.url) {
            return Err(invalid(
                "amqp.url".into(),
                "must start with amqp:// or amqps://".into(),
            ));
        }
        if !amqp.urls.is_empty() && amqp.url != super::defaults::default_amqp_url() {
            return Err(invalid(
                "amqp.urls".into(),
                "set amqp.url (one node) or amqp.urls (the nodes of a cluster), not both".into(),
            ));
        }
        if let Some(i) = amqp.urls.iter().position(|u| !amqp_scheme(u)) {
            return Err(invalid(
                format!("amqp.urls[{i}]"),
                "must start with amqp:// or amqps://".into(),
            ));
        }
        let urls: Vec<Redacted> = if amqp.urls.is_empty() {
            vec![Redacted::new(amqp.url.clone())]
        } else {
            amqp.urls.iter().cloned().map(Redacted::new).collect()
        };
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
        for (key, value, max) in [
            ("amqp.consume_channels", amqp.consume_channels.get(), 1024),
            ("amqp.publish_channels", amqp.publish_channels.get(), 64),
        ] {
            if value > max {
                return Err(invalid(
                    key.into(),
                    format!(
                        "must be at most {max} (RabbitMQ allows 2047 channels per connection by default)"
                    ),
                ));
            }
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
        let ca_file = raw.http.ca_file.as_ref().map(|f| {
            origin
                .parent()
                .map_or_else(|| f.clone(), |folder| folder.join(f))
        });
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
        if let Some(origin) = &raw.api.public_origin {
            let parsed = url::Url::parse(origin).ok();
            let bare = parsed.as_ref().is_some_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && !origin.ends_with('/')
            });
            if !bare {
                return Err(invalid(
                    "api.public_origin".into(),
                    format!(
                        "{origin:?} is not an origin: write scheme://host[:port], no path (https://hooks.example.com)"
                    ),
                ));
            }
        }
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
        let control_max_bytes = raw.registry.control_max_bytes.get();
        if control_max_bytes < MIN_CONTROL_MAX_BYTES {
            return Err(invalid(
                "registry.control_max_bytes".into(),
                format!(
                    "must be at least {MIN_CONTROL_MAX_BYTES} (8 MiB): it holds several snapshots of the registry"
                ),
            ));
        }
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
                let endpoint = checked_endpoint(ep, &raw.defaults).map_err(|(key, message)| {
                    invalid(
                        format!("endpoints[{i}].{key}"),
                        format!("(endpoint {id:?}) {message}"),
                    )
                })?;
                check_queue_names(&amqp.prefix, &endpoint).map_err(|(key, message)| {
                    invalid(
                        format!("endpoints[{i}].{key}"),
                        format!("(endpoint {id:?}) {message}"),
                    )
                })?;
                let detailed = raw.metrics.detailed_endpoints.contains(&id);
                let mut runtime = endpoint.into_runtime();
                for e in &mut runtime {
                    e.detailed_metrics = detailed;
                }
                Ok(runtime)
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        for (i, id) in raw.metrics.detailed_endpoints.iter().enumerate() {
            if !is_valid_endpoint_id(id) {
                return Err(invalid(
                    format!("metrics.detailed_endpoints[{i}]"),
                    format!("{id:?} is not an endpoint id ([a-z0-9_-], 1 to 100 characters)"),
                ));
            }
        }
        Ok(Config {
            origin: origin.to_path_buf(),
            amqp: AmqpConfig {
                url: urls[0].clone(),
                urls,
                prefix: amqp.prefix,
                queue_type: amqp.queue_type,
                unrouted_max_length: amqp.unrouted_max_length.get(),
                delivery_limit: amqp.delivery_limit.get(),
                quorum_replicas: amqp.quorum_replicas.get(),
                publish_timeout: Duration::from_millis(amqp.publish_timeout_ms.get()),
                prefetch: amqp.prefetch.get(),
                consume_channels: usize::from(amqp.consume_channels.get()),
                publish_channels: usize::from(amqp.publish_channels.get()),
                max_reconnect_delay: Duration::from_millis(amqp.max_reconnect_delay_ms.get()),
                max_message_bytes: amqp.max_message_bytes.get(),
            },
            metrics_listen: raw.metrics.listen,
            metrics_limits,
            metrics_detailed: raw.metrics.detailed_endpoints,
            queue_poll_interval: Duration::from_millis(raw.metrics.queue_poll_interval_ms.get()),
            http: HttpConfig {
                allowed_networks,
                max_response_body_bytes: raw.http.max_response_body_bytes.get(),
                max_retry_after: Duration::from_millis(raw.http.max_retry_after_ms.get()),
                ca_file,
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
                max_endpoints_per_tenant: raw.api.max_endpoints_per_tenant.get(),
                public_origin: raw.api.public_origin,
            },
            registry: RegistryConfig {
                secrets_key,
                secret_overlap: Duration::from_millis(raw.registry.secret_overlap_ms.get()),
                control_max_bytes,
                control_replicas: raw.registry.control_replicas.get(),
            },
            log: check_log(raw.log).map_err(|(key, message)| invalid(key, message))?,
            archive: check_archive(raw.archive).map_err(|(key, message)| invalid(key, message))?,
            transforms: TransformsConfig {
                workers: raw.transforms.workers.get() as usize,
                per_endpoint: raw.transforms.per_endpoint.get() as usize,
                timeout: Duration::from_millis(raw.transforms.timeout_ms.get()),
                memory_bytes: raw.transforms.memory_mb.get().saturating_mul(1 << 20),
                worker_path: raw.transforms.worker_path,
            },
        })
    }
}

/// The largest `log.response_body_bytes`.
pub const MAX_LOG_RESPONSE_BODY_BYTES: usize = 65_536;

/// The checked `[log]`, or the bad key and why.
fn check_log(raw: super::raw::LogSection) -> Result<super::LogConfig, (String, String)> {
    check_age("log.max_age", &raw.max_age)?;
    if raw.response_body_bytes > MAX_LOG_RESPONSE_BODY_BYTES {
        return Err((
            "log.response_body_bytes".into(),
            format!(
                "{} is over {MAX_LOG_RESPONSE_BODY_BYTES}",
                raw.response_body_bytes
            ),
        ));
    }
    Ok(super::LogConfig {
        enabled: raw.enabled,
        max_age: raw.max_age,
        max_bytes: raw.max_bytes.get(),
        response_body_bytes: raw.response_body_bytes,
    })
}

/// The checked `[archive]`, or the bad key and why.
fn check_archive(
    raw: super::raw::ArchiveSection,
) -> Result<super::ArchiveConfig, (String, String)> {
    check_age("archive.max_age", &raw.max_age)?;
    Ok(super::ArchiveConfig {
        enabled: raw.enabled,
        max_age: raw.max_age,
        max_bytes: raw.max_bytes.get(),
    })
}

/// A stream's `max_age`, or `key` and why it is not one.
fn check_age(key: &str, age: &str) -> Result<(), (String, String)> {
    if is_stream_age(age) {
        return Ok(());
    }
    Err((
        key.into(),
        format!("{age:?} is not an age: a number and a unit, s, m, h, D, M or Y (\"7D\", \"12h\")"),
    ))
}

/// RabbitMQ's `x-max-age` form: digits (not starting with 0) and one unit.
fn is_stream_age(s: &str) -> bool {
    let Some(unit) = s.chars().last() else {
        return false;
    };
    let digits = &s[..s.len() - unit.len_utf8()];
    "smhDMY".contains(unit)
        && !digits.is_empty()
        && digits.len() <= 9
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The smallest `registry.control_max_bytes`: 8 MiB.
const MIN_CONTROL_MAX_BYTES: u64 = 8 << 20;

/// A server timeout in milliseconds as a duration, at most [`MAX_HOLD_MS`];
/// errors are `(key, message)`.
pub(super) fn at_most_hold(key: &str, ms: NonZeroU64) -> Result<Duration, (String, String)> {
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

#[cfg(test)]
mod tests {
    use crate::Config;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml_str(text, "log.toml".as_ref(), &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn the_archive_section_has_defaults_and_checks_its_age() {
        let c = load("").expect("defaults");
        assert!(c.archive.enabled);
        assert_eq!(
            (c.archive.max_age.as_str(), c.archive.max_bytes),
            ("7D", 10 << 30)
        );
        let c = load("[archive]\nmax_age = \"2D\"\nmax_bytes = 1048576\nenabled = false\n")
            .expect("set");
        assert_eq!(
            (
                c.archive.max_age.as_str(),
                c.archive.max_bytes,
                c.archive.enabled
            ),
            ("2D", 1_048_576, false)
        );
        let e = load("[archive]\nmax_age = \"2 days\"\n").expect_err("bad age");
        assert!(e.contains("archive.max_age"), "{e}");
        let e = load("[archive]\nmax_bytes = 0\n").expect_err("zero");
        assert!(e.contains("archive"), "{e}");
    }

    #[test]
    fn the_log_section_has_defaults_and_checks_its_values() {
        let c = load("").expect("defaults");
        assert!(c.log.enabled);
        assert_eq!(
            (
                c.log.max_age.as_str(),
                c.log.max_bytes,
                c.log.response_body_bytes
            ),
            ("7D", 10 << 30, 1024)
        );
        let c = load("[log]\nmax_age = \"12h\"\nresponse_body_bytes = 0\nenabled = false\n")
            .expect("valid");
        assert_eq!(
            (
                c.log.max_age.as_str(),
                c.log.response_body_bytes,
                c.log.enabled
            ),
            ("12h", 0, false)
        );
        for bad in ["7d", "7", "D", "07D", "1.5h", "-1h", "10000000000s", ""] {
            let e = load(&format!("[log]\nmax_age = \"{bad}\"\n")).expect_err(bad);
            assert!(e.contains("log.max_age"), "{bad}: {e}");
        }
        let e = load("[log]\nresponse_body_bytes = 65537\n").expect_err("too large");
        assert!(e.contains("log.response_body_bytes"), "{e}");
        let e = load("[log]\nmax_bytes = 0\n").expect_err("zero");
        assert!(e.contains("max_bytes"), "{e}");
        let e = load("[log]\nmax_agee = \"1h\"\n").expect_err("unknown key");
        assert!(e.contains("max_agee"), "{e}");
    }
}
