//! The default value of every `hookpost.toml` key that has one, as the
//! functions [`super::raw`]'s serde attributes name.

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};

pub(super) fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

pub(super) fn default_transform_workers() -> NonZeroU32 {
    const { NonZeroU32::new(4).unwrap() }
}
pub(super) fn default_transform_per_endpoint() -> NonZeroU32 {
    const { NonZeroU32::new(1).unwrap() }
}
pub(super) fn default_transform_timeout_ms() -> NonZeroU64 {
    const { NonZeroU64::new(2_000).unwrap() }
}
pub(super) fn default_transform_memory_mb() -> NonZeroU64 {
    const { NonZeroU64::new(256).unwrap() }
}
pub(super) fn default_secret_overlap_ms() -> NonZeroU64 {
    const { NonZeroU64::new(24 * 3_600_000).unwrap() }
}
pub(super) fn default_control_max_bytes() -> NonZeroU64 {
    NonZeroU64::new(super::raw::DEFAULT_CONTROL_MAX_BYTES).unwrap_or(NonZeroU64::MIN)
}
pub(super) fn default_amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| super::raw::DEFAULT_AMQP_URL.to_owned())
}
pub(super) fn default_prefix() -> String {
    "hookpost".to_owned()
}
pub(super) fn default_unrouted_max_length() -> NonZeroU32 {
    const { NonZeroU32::new(100_000).unwrap() }
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_log_max_age() -> String {
    "7D".to_owned()
}
pub(super) fn default_log_max_bytes() -> NonZeroU64 {
    const { NonZeroU64::new(10 << 30).unwrap() }
}
pub(super) fn default_log_response_body_bytes() -> usize {
    1024
}
pub(super) fn default_replicas() -> NonZeroU8 {
    NonZeroU8::new(super::raw::DEFAULT_REPLICAS).unwrap_or(NonZeroU8::MIN)
}
pub(super) fn default_delivery_limit() -> NonZeroU32 {
    const { NonZeroU32::new(20).unwrap() }
}
pub(super) fn default_publish_timeout_ms() -> NonZeroU64 {
    const { NonZeroU64::new(10_000).unwrap() }
}
pub(super) fn default_breaker_cooldown_ms() -> NonZeroU64 {
    const { NonZeroU64::new(30_000).unwrap() }
}

pub(super) fn default_consume_channels() -> NonZeroU16 {
    const { NonZeroU16::new(128).unwrap() }
}
pub(super) fn default_publish_channels() -> NonZeroU16 {
    const { NonZeroU16::new(8).unwrap() }
}
pub(super) fn default_prefetch() -> NonZeroU16 {
    const { NonZeroU16::new(200).unwrap() }
}
pub(super) fn default_max_reconnect_delay_ms() -> NonZeroU64 {
    const { NonZeroU64::new(10_000).unwrap() }
}
pub(super) fn default_max_message_bytes() -> NonZeroUsize {
    const { NonZeroUsize::new(1024 * 1024).unwrap() }
}
pub(super) fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
pub(super) fn default_queue_poll_interval_ms() -> NonZeroU64 {
    const { NonZeroU64::new(5_000).unwrap() }
}
pub(super) fn default_max_response_bytes() -> NonZeroUsize {
    const { NonZeroUsize::new(64 * 1024).unwrap() }
}
pub(super) fn default_max_retry_after_ms() -> NonZeroU64 {
    const { NonZeroU64::new(3_600_000).unwrap() }
}
pub(super) fn default_timeout_ms() -> NonZeroU64 {
    const { NonZeroU64::new(5_000).unwrap() }
}
pub(super) fn default_max_retries() -> u32 {
    5
}
pub(super) fn default_retry_delay_ms() -> NonZeroU64 {
    const { NonZeroU64::new(1_000).unwrap() }
}
pub(super) fn default_max_retry_delay_ms() -> NonZeroU64 {
    const { NonZeroU64::new(3_600_000).unwrap() }
}
pub(super) fn default_batch_size() -> NonZeroU32 {
    NonZeroU32::MIN
}
pub(super) fn default_max_in_flight() -> NonZeroU32 {
    const { NonZeroU32::new(8).unwrap() }
}
pub(super) fn default_ingest_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
pub(super) fn default_max_body_bytes() -> NonZeroUsize {
    const { NonZeroUsize::new(1024 * 1024).unwrap() }
}
pub(super) fn default_max_events() -> NonZeroUsize {
    const { NonZeroUsize::new(1000).unwrap() }
}
pub(super) fn default_header_read_timeout_ms() -> NonZeroU64 {
    const { NonZeroU64::new(10_000).unwrap() }
}
pub(super) fn default_idle_timeout_ms() -> NonZeroU64 {
    const { NonZeroU64::new(60_000).unwrap() }
}
pub(super) fn default_body_read_timeout_ms() -> NonZeroU64 {
    const { NonZeroU64::new(30_000).unwrap() }
}
pub(super) fn default_ingest_max_connections() -> NonZeroUsize {
    const { NonZeroUsize::new(512).unwrap() }
}
pub(super) fn default_max_endpoints_per_tenant() -> NonZeroUsize {
    const { NonZeroUsize::new(100).unwrap() }
}
pub(super) fn default_api_max_connections() -> NonZeroUsize {
    const { NonZeroUsize::new(64).unwrap() }
}
pub(super) fn default_metrics_max_connections() -> NonZeroUsize {
    const { NonZeroUsize::new(32).unwrap() }
}
