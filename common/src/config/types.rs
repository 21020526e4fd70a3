//! The checked configuration: what every hookpost process runs with, built
//! by [`super::check`] from the file's raw form.

use super::raw;
use super::raw::{Method, OnExhausted, QueueType, SignatureScheme};
use crate::retry::RetryPolicy;
use crate::secret::{Redacted, redact_url};
use crate::server::Limits;
use crate::signing::SigningSecret;
use crate::transform::Transform;
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Endpoints with histograms of their own (`metrics.detailed_endpoints`).
    pub metrics_detailed: Vec<String>,
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
    /// The attempt log.
    pub log: LogConfig,
    /// The event archive.
    pub archive: ArchiveConfig,
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
    /// Most registered endpoints per tenant.
    pub max_endpoints_per_tenant: usize,
    /// Where browsers reach the API (`scheme://host[:port]`, no path).
    pub public_origin: Option<String>,
}

/// Checked `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Whether dispatchers write the attempt log.
    pub enabled: bool,
    /// `x-max-age` of the stream (`7D`).
    pub max_age: String,
    /// `x-max-length-bytes` of the stream.
    pub max_bytes: u64,
    /// Bytes of each response body kept.
    pub response_body_bytes: usize,
}

/// Checked `[archive]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Whether publishers keep a copy of each event.
    pub enabled: bool,
    /// `x-max-age` of the stream (`7D`).
    pub max_age: String,
    /// `x-max-length-bytes` of the stream.
    pub max_bytes: u64,
}

/// Checked `[registry]`.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Seals secrets at rest; `None`: registered endpoints cannot hold secrets or headers.
    pub secrets_key: Option<crate::secret::SecretsKey>,
    /// How long rotated-out secrets keep signing.
    pub secret_overlap: Duration,
    /// The control stream's retention in bytes (at least 8 MiB).
    pub control_max_bytes: u64,
    /// `x-initial-cluster-size` of the control stream.
    pub control_replicas: u8,
}

/// Checked `[amqp]`.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Broker URL (holds the password: shown redacted); the first of `urls`.
    pub url: Redacted,
    /// Every broker URL to try, in order (`amqp.urls`, else `amqp.url` alone).
    pub urls: Vec<Redacted>,
    /// Name prefix of exchanges and queues.
    pub prefix: String,
    /// Queue flavour.
    pub queue_type: QueueType,
    /// `x-max-length` of the unrouted queue.
    pub unrouted_max_length: u32,
    /// `x-delivery-limit` of endpoint queues.
    pub delivery_limit: u32,
    /// `x-quorum-initial-group-size` of the quorum queues hookpost creates.
    pub quorum_replicas: u8,
    /// Bound on one publish, reconnect included.
    pub publish_timeout: Duration,
    /// Prefetch per endpoint consumer.
    pub prefetch: u16,
    /// Most consumer channels per connection.
    pub consume_channels: usize,
    /// Shared confirm channels for retries and dead letters.
    pub publish_channels: usize,
    /// Cap of the reconnect backoff.
    pub max_reconnect_delay: Duration,
    /// Largest event published or delivered, in bytes.
    pub max_message_bytes: usize,
}

/// Checked `[http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Private networks endpoints may use.
    pub allowed_networks: Vec<IpNet>,
    /// Response body read cap.
    pub max_response_body_bytes: usize,
    /// Cap on `Retry-After`.
    pub max_retry_after: Duration,
    /// `http.ca_file`, resolved against the config file's folder (read by
    /// the dispatcher only: [`HttpConfig::read_ca_file`]).
    pub ca_file: Option<std::path::PathBuf>,
}

impl HttpConfig {
    /// The DER of every certificate in `ca_file` (none when unset): at
    /// least one, the file at most [`MAX_CA_FILE_BYTES`]. Whether each is a
    /// usable trust anchor is for the TLS configuration to say.
    ///
    /// # Errors
    /// The file cannot be read, is too large, is not PEM or holds no
    /// certificate; the message names the file.
    pub fn read_ca_file(&self) -> Result<Vec<Vec<u8>>, String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        use std::io::Read;
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let shown = path.display();
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let mut text = Vec::new();
        file.take(MAX_CA_FILE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        if text.len() as u64 > MAX_CA_FILE_BYTES {
            return Err(format!("{shown} is over {MAX_CA_FILE_BYTES} bytes"));
        }
        let certs = CertificateDer::pem_slice_iter(&text)
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{shown} is not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{shown} holds no certificate (-----BEGIN CERTIFICATE----- blocks)"
            ));
        }
        Ok(certs)
    }
}

/// Largest `http.ca_file` read (a bundle of a few hundred certificates).
pub const MAX_CA_FILE_BYTES: u64 = 1 << 20;

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
    /// Its histograms are its own (`metrics.detailed_endpoints`), not
    /// recorded under `endpoint="*"`.
    pub detailed_metrics: bool,
    /// The customer it belongs to; `None`: a global endpoint.
    pub tenant: Option<String>,
    /// The environment it serves: `None` for an endpoint's base settings,
    /// `Some(E)` for its variant E (id `<id>~E`, its own queue).
    pub environment: Option<String>,
    /// The variants declared under `environments`, each a complete endpoint;
    /// empty once [`Endpoint::into_runtime`] has split them out.
    pub variants: Vec<Endpoint>,
}

/// Separates a variant's environment from its endpoint id: `<id>~<env>`.
pub const VARIANT_SEPARATOR: char = '~';

impl Endpoint {
    /// The id of the endpoint it belongs to: its own, or for a variant the
    /// part before `~`.
    pub fn base_id(&self) -> &str {
        base_id(&self.id)
    }

    /// The keys its queue is bound with ([`crate::routing::binding_keys`]).
    pub fn binding_keys(&self) -> Vec<String> {
        crate::routing::binding_keys(
            self.tenant.as_deref(),
            self.environment.as_deref(),
            &self.events,
        )
    }

    /// The endpoints that run: its base settings, then each variant.
    pub fn into_runtime(mut self) -> Vec<Endpoint> {
        let variants = std::mem::take(&mut self.variants);
        std::iter::once(self).chain(variants).collect()
    }

    /// The `endpoint` label of its histograms: its id when listed in
    /// `metrics.detailed_endpoints`, else `*` (all the others together).
    pub fn histogram_label(&self) -> &str {
        if self.detailed_metrics { &self.id } else { "*" }
    }

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
            .field("tenant", &self.tenant)
            .field("environment", &self.environment)
            .field("variants", &self.variants)
            .finish()
    }
}

/// The endpoint id of a runtime id: `acme` for `acme` and for `acme~snd`.
pub fn base_id(id: &str) -> &str {
    id.split(VARIANT_SEPARATOR).next().unwrap_or(id)
}
