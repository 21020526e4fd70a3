//! The `hookpost.toml` schema as written by users. Every field's `///` is its
//! user documentation; `deploy/hookpost.toml` shows each one with a comment.
//! [`super::Config::from_raw`] turns this into the checked [`super::Config`].

mod endpoint;

pub use endpoint::{
    EndpointSection, EnvironmentSection, Method, OnExhausted, SignatureScheme, StatusRules,
};

use super::defaults;
use serde::Deserialize;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Broker connection and topology settings.
    #[serde(default)]
    pub amqp: AmqpSection,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Outbound HTTP rules shared by all endpoints.
    #[serde(default)]
    pub http: HttpSection,
    /// Delivery defaults every endpoint inherits.
    #[serde(default)]
    pub defaults: DefaultsSection,
    /// The HTTP ingest server (`hookpost-producer serve`).
    #[serde(default)]
    pub ingest: IngestSection,
    /// The endpoint management API (`hookpost-producer serve`).
    #[serde(default)]
    pub api: ApiSection,
    /// The endpoint registry (endpoints created at runtime).
    #[serde(default)]
    pub registry: RegistrySection,
    /// Where and within which limits endpoint transforms run.
    #[serde(default)]
    pub transforms: TransformsSection,
    /// The attempt log: every delivery attempt, in the stream `<prefix>.log`.
    #[serde(default)]
    pub log: LogSection,
    /// The event archive: every published event, in the stream `<prefix>.archive`.
    #[serde(default)]
    pub archive: ArchiveSection,
    /// Webhook endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointSection>,
}

/// `[amqp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    /// Broker URL. Default: the `AMQP_URL` variable, else `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[serde(default = "defaults::default_amqp_url")]
    pub url: String,
    /// The nodes of one RabbitMQ cluster, instead of `url`: each process connects to the first that answers and, when it loses it, fails over to the next.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Prefix of every exchange and queue name.
    #[serde(default = "defaults::default_prefix")]
    pub prefix: String,
    /// `quorum` (replicated, default) or `classic` queues.
    #[serde(default)]
    pub queue_type: QueueType,
    /// Most events kept in the unrouted queue; beyond it publishes of unrouted events are refused.
    #[serde(default = "defaults::default_unrouted_max_length")]
    pub unrouted_max_length: NonZeroU32,
    /// Broker-side redelivery limit of endpoint queues (quorum only): a message
    /// redelivered this often without an ack (a crash loop) is dead-lettered.
    #[serde(default = "defaults::default_delivery_limit")]
    pub delivery_limit: NonZeroU32,
    /// Members of each quorum queue hookpost creates
    /// (`x-quorum-initial-group-size`). The broker places at most one per
    /// node, so the default, 3, means every node up to three. Applies when
    /// a queue is created; queues that exist keep their members.
    #[serde(default = "defaults::default_replicas")]
    pub quorum_replicas: NonZeroU8,
    /// Longest a publish waits for the broker's next confirm (reconnect
    /// included) before it fails; it counts from the call's last confirm, so a
    /// long `publish_many` the broker confirms steadily is not cut short.
    #[serde(default = "defaults::default_publish_timeout_ms")]
    pub publish_timeout_ms: NonZeroU64,
    /// Unacknowledged deliveries a dispatcher holds per endpoint queue.
    #[serde(default = "defaults::default_prefetch")]
    pub prefetch: NonZeroU16,
    /// Most channels a dispatcher consumes on (per broker connection). Up
    /// to this many endpoints get a channel of their own; beyond it,
    /// endpoints share channels (each consumer keeps its own prefetch).
    #[serde(default = "defaults::default_consume_channels")]
    pub consume_channels: NonZeroU16,
    /// Confirm channels a dispatcher publishes retries and dead letters on,
    /// shared by every endpoint.
    #[serde(default = "defaults::default_publish_channels")]
    pub publish_channels: NonZeroU16,
    /// Longest pause between reconnect attempts.
    #[serde(default = "defaults::default_max_reconnect_delay_ms")]
    pub max_reconnect_delay_ms: NonZeroU64,
    /// Largest event (JSON bytes) published or delivered; larger ones are
    /// refused by publishers and dead-lettered (`malformed`) by dispatchers.
    #[serde(default = "defaults::default_max_message_bytes")]
    pub max_message_bytes: NonZeroUsize,
}

/// Queue flavour for endpoint, wait and dead-letter queues.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Raft-replicated queues: delivery limit and at-least-once dead-lettering.
    #[default]
    Quorum,
    /// Single-node queues, for brokers where quorum queues are unavailable.
    Classic,
}

/// `[metrics]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the metrics and health server.
    #[serde(default = "defaults::default_metrics_listen")]
    pub listen: SocketAddr,
    /// How often the dispatcher polls queue depths from the broker.
    #[serde(default = "defaults::default_queue_poll_interval_ms")]
    pub queue_poll_interval_ms: NonZeroU64,
    /// Endpoints whose latency and batch-size histograms are kept per
    /// endpoint. The others are recorded together, under `endpoint="*"`
    /// (at 10,000 endpoints, per-endpoint histograms alone would be
    /// hundreds of thousands of series).
    #[serde(default)]
    pub detailed_endpoints: Vec<String>,
    /// Longest a client may take to send a request's head (request line and
    /// headers), counted from when the server starts waiting for it: a new
    /// connection, or a kept-alive one after its previous response (so this
    /// is also the keep-alive idle limit). Past it the connection is closed.
    #[serde(default = "defaults::default_header_read_timeout_ms")]
    pub header_read_timeout_ms: NonZeroU64,
    /// A connection on which no byte moved either way for this long, while
    /// none of its requests is being handled, is closed (a client that stops
    /// reading its response).
    #[serde(default = "defaults::default_idle_timeout_ms")]
    pub idle_timeout_ms: NonZeroU64,
    /// Connections held at once. At the cap the server stops accepting: new
    /// connections wait in the listen backlog until one closes or times out.
    #[serde(default = "defaults::default_metrics_max_connections")]
    pub max_connections: NonZeroUsize,
}

/// `[http]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Networks (CIDR) that endpoints may resolve to although not globally
    /// reachable (private, loopback, link-local…). Empty: all such
    /// addresses are refused.
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    /// Most bytes of a response body read (the rest is discarded).
    #[serde(default = "defaults::default_max_response_bytes")]
    pub max_response_body_bytes: NonZeroUsize,
    /// Longest `Retry-After` honoured; longer ones are cut to this.
    #[serde(default = "defaults::default_max_retry_after_ms")]
    pub max_retry_after_ms: NonZeroU64,
    /// A PEM file of certificate authorities trusted for `https://`
    /// endpoints beside the operating system's (a private CA's); relative
    /// to the config file's folder. Unset: the system's only.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[defaults]`: delivery settings every endpoint inherits unless it sets its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSection {
    /// Request timeout.
    #[serde(default = "defaults::default_timeout_ms")]
    pub timeout_ms: NonZeroU64,
    /// Retries after the first attempt before a delivery is dead-lettered.
    #[serde(default = "defaults::default_max_retries")]
    pub max_retries: u32,
    /// Delay before the first retry; doubles each retry.
    #[serde(default = "defaults::default_retry_delay_ms")]
    pub retry_delay_ms: NonZeroU64,
    /// Upper bound of the retry delay.
    #[serde(default = "defaults::default_max_retry_delay_ms")]
    pub max_retry_delay_ms: NonZeroU64,
    /// Events per request; 1 sends the bare envelope.
    #[serde(default = "defaults::default_batch_size")]
    pub batch_size: NonZeroU32,
    /// Longest a partial batch waits after its first event; 0 sends at once.
    #[serde(default)]
    pub batch_interval_ms: u64,
    /// Concurrent requests per endpoint.
    #[serde(default = "defaults::default_max_in_flight")]
    pub max_in_flight: NonZeroU32,
    /// What happens to a delivery whose retries are used up: `dead_letter` or `drop`.
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    /// Circuit breaker: consecutive failed requests that suspend an endpoint; 0 turns it off.
    #[serde(default)]
    pub breaker_failures: u32,
    /// Circuit breaker: how long a suspended endpoint waits before one probe delivery.
    #[serde(default = "defaults::default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: NonZeroU64,
}

/// `[ingest]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    /// Address of `hookpost-producer serve`.
    #[serde(default = "defaults::default_ingest_listen")]
    pub listen: SocketAddr,
    /// Bearer tokens accepted on `POST /v1/events`. `serve` refuses to start without one.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Largest request body accepted (413 beyond).
    #[serde(default = "defaults::default_max_body_bytes")]
    pub max_body_bytes: NonZeroUsize,
    /// Most events in one request (413 beyond).
    #[serde(default = "defaults::default_max_events")]
    pub max_events: NonZeroUsize,
    /// Longest a client may take to send a request's head (request line and
    /// headers), counted from when the server starts waiting for it: a new
    /// connection, or a kept-alive one after its previous response (so this
    /// is also the keep-alive idle limit). Past it the connection is closed.
    #[serde(default = "defaults::default_header_read_timeout_ms")]
    pub header_read_timeout_ms: NonZeroU64,
    /// A connection on which no byte moved either way for this long, while
    /// none of its requests is being handled, is closed (a client that stops
    /// reading its response).
    #[serde(default = "defaults::default_idle_timeout_ms")]
    pub idle_timeout_ms: NonZeroU64,
    /// Connections held at once. At the cap the server stops accepting: new
    /// connections wait in the listen backlog until one closes or times out.
    #[serde(default = "defaults::default_ingest_max_connections")]
    pub max_connections: NonZeroUsize,
    /// Longest a client may take to send a whole request body (408 past it).
    #[serde(default = "defaults::default_body_read_timeout_ms")]
    pub body_read_timeout_ms: NonZeroU64,
}

/// `[api]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address of the management API (served by `hookpost-producer serve` when `tokens` is set).
    #[serde(default = "defaults::default_api_listen")]
    pub listen: SocketAddr,
    /// Bearer tokens accepted on `/v1/endpoints` (separate from ingest tokens). Empty: no API.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Longest a client may take to send a request's head (request line and
    /// headers), counted from when the server starts waiting for it: a new
    /// connection, or a kept-alive one after its previous response (so this
    /// is also the keep-alive idle limit). Past it the connection is closed.
    #[serde(default = "defaults::default_header_read_timeout_ms")]
    pub header_read_timeout_ms: NonZeroU64,
    /// A connection on which no byte moved either way for this long, while
    /// none of its requests is being handled, is closed (a client that stops
    /// reading its response).
    #[serde(default = "defaults::default_idle_timeout_ms")]
    pub idle_timeout_ms: NonZeroU64,
    /// Connections held at once. At the cap the server stops accepting: new
    /// connections wait in the listen backlog until one closes or times out.
    #[serde(default = "defaults::default_api_max_connections")]
    pub max_connections: NonZeroUsize,
    /// Longest a client may take to send a whole request body (408 past it).
    #[serde(default = "defaults::default_body_read_timeout_ms")]
    pub body_read_timeout_ms: NonZeroU64,
    /// Most registered endpoints one tenant may have: a create past it
    /// answers 409 (whoever asks, operator or tenant token).
    #[serde(default = "defaults::default_max_endpoints_per_tenant")]
    pub max_endpoints_per_tenant: NonZeroUsize,
    /// The origin browsers reach the API and console at, when it is not
    /// the listener itself (a proxy): `https://hooks.example.com`. With
    /// `https://`, the console's session cookie is `__Host-` prefixed and
    /// `Secure`; console form posts from this origin are accepted.
    #[serde(default)]
    pub public_origin: Option<String>,
}

/// `[registry]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// Base64 of 32 bytes sealing registered endpoints' secrets and header
    /// values; the API and every dispatcher need the same one.
    #[serde(default)]
    pub secrets_key: Option<String>,
    /// After a secret rotation, how long the previous secrets keep signing.
    #[serde(default = "defaults::default_secret_overlap_ms")]
    pub secret_overlap_ms: NonZeroU64,
    /// Retention of the control stream `<prefix>.control` in bytes (at
    /// least 8 MiB): the oldest segments are removed past it. It must hold
    /// several snapshots of the registry plus the changes between them
    /// (about 3 × the registry's size in bytes each). Applies when the
    /// stream is created; an existing stream needs a policy (README,
    /// "The control stream").
    #[serde(default = "defaults::default_control_max_bytes")]
    pub control_max_bytes: NonZeroU64,
    /// Replicas of the control stream (`x-initial-cluster-size`): every
    /// node up to this many. Applies when the stream is created.
    #[serde(default = "defaults::default_replicas")]
    pub control_replicas: NonZeroU8,
}

/// `[log]`: the attempt log, a record of every delivery attempt in the
/// stream `<prefix>.log`, bounded by age and size.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Whether dispatchers write the attempt log.
    #[serde(default = "defaults::default_true")]
    pub enabled: bool,
    /// Records older than this are removed (whole segments at a time):
    /// a number and a unit, `s`, `m`, `h`, `D`, `M` or `Y` (RabbitMQ's
    /// `x-max-age`). Applies when the stream is created.
    #[serde(default = "defaults::default_log_max_age")]
    pub max_age: String,
    /// The stream's size bound in bytes: the oldest segments are removed
    /// past it. Applies when the stream is created.
    #[serde(default = "defaults::default_log_max_bytes")]
    pub max_bytes: NonZeroU64,
    /// How much of each response body a record keeps (at most 65,536).
    #[serde(default = "defaults::default_log_response_body_bytes")]
    pub response_body_bytes: usize,
}

/// `[archive]`: the event archive, a copy of every event published through
/// hookpost (library, CLI, ingest) in the stream `<prefix>.archive`,
/// bounded by age and size; `hookpost-admin replay` sends its events again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// Whether publishers keep a copy of each event in the archive.
    #[serde(default = "defaults::default_true")]
    pub enabled: bool,
    /// Events older than this are removed (whole segments at a time):
    /// a number and a unit, `s`, `m`, `h`, `D`, `M` or `Y` (RabbitMQ's
    /// `x-max-age`). Applies when the stream is created.
    #[serde(default = "defaults::default_log_max_age")]
    pub max_age: String,
    /// The stream's size bound in bytes: the oldest segments are removed
    /// past it. Applies when the stream is created.
    #[serde(default = "defaults::default_log_max_bytes")]
    pub max_bytes: NonZeroU64,
}

/// `[transforms]`: endpoint transforms run in child processes of the
/// dispatcher (`hookpost-dispatcher transform-worker`), never in the
/// dispatcher itself, so no program can crash, stall or starve it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformsSection {
    /// Transform worker processes per dispatcher: the most transforms that
    /// run at the same moment.
    #[serde(default = "defaults::default_transform_workers")]
    pub workers: NonZeroU32,
    /// Most transforms of one endpoint that run at the same moment, so one
    /// endpoint cannot hold every worker.
    #[serde(default = "defaults::default_transform_per_endpoint")]
    pub per_endpoint: NonZeroU32,
    /// Wall-clock limit of one transform run; the worker is killed and
    /// replaced beyond it, and the event dead-lettered (`transform_error`).
    #[serde(default = "defaults::default_transform_timeout_ms")]
    pub timeout_ms: NonZeroU64,
    /// Address-space limit of a worker process, in MiB; a program that needs
    /// more is stopped and its event dead-lettered.
    #[serde(default = "defaults::default_transform_memory_mb")]
    pub memory_mb: NonZeroU64,
    /// The `hookpost-dispatcher` executable started as a worker. Default:
    /// the running dispatcher's own executable.
    #[serde(default)]
    pub worker_path: Option<std::path::PathBuf>,
}

/// The default of `registry.control_max_bytes`: 256 MiB.
pub const DEFAULT_CONTROL_MAX_BYTES: u64 = 256 << 20;

/// The default of `amqp.quorum_replicas` and `registry.control_replicas`.
pub const DEFAULT_REPLICAS: u8 = 3;

/// The broker URL used when the config names none.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // An empty table takes every field's serde default.
                <$t as Deserialize>::deserialize(toml::Value::Table(toml::Table::new()))
                    .unwrap_or_else(|e| unreachable!("defaults of {} are valid: {e}", stringify!($t)))
            }
        }
    )*};
}
default_from_serde!(
    LogSection,
    ArchiveSection,
    AmqpSection,
    MetricsSection,
    HttpSection,
    DefaultsSection,
    IngestSection,
    ApiSection,
    RegistrySection,
    TransformsSection
);
