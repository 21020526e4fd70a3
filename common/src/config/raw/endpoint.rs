//! The `[[endpoints]]` schema as written by users (its `///` are the user
//! documentation, like the rest of [`super`]).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64};

/// `[[endpoints]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// Stable identifier, `[a-z0-9_-]`, names the queue `<prefix>.ep.<id>`.
    pub id: String,
    /// Where deliveries go (`http` or `https`).
    pub url: String,
    /// Event type patterns: words, `*` for one word, `#` for any number (`#` alone: all events).
    pub events: Vec<String>,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: Method,
    /// Extra request headers (values are treated as secrets in logs).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Signing secrets, `whsec_` + base64; every one signs each request.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Overrides `[defaults] timeout_ms`.
    pub timeout_ms: Option<NonZeroU64>,
    /// Overrides `[defaults] max_retries`.
    pub max_retries: Option<u32>,
    /// Overrides `[defaults] retry_delay_ms`.
    pub retry_delay_ms: Option<NonZeroU64>,
    /// Overrides `[defaults] max_retry_delay_ms`.
    pub max_retry_delay_ms: Option<NonZeroU64>,
    /// Overrides `[defaults] batch_size`.
    pub batch_size: Option<NonZeroU32>,
    /// Overrides `[defaults] batch_interval_ms`.
    pub batch_interval_ms: Option<u64>,
    /// Overrides `[defaults] max_in_flight`.
    pub max_in_flight: Option<NonZeroU32>,
    /// Overrides `[defaults] on_exhausted`.
    pub on_exhausted: Option<OnExhausted>,
    /// Overrides `[defaults] breaker_failures`.
    pub breaker_failures: Option<u32>,
    /// Overrides `[defaults] breaker_cooldown_ms`.
    pub breaker_cooldown_ms: Option<NonZeroU64>,
    /// Status codes to retry (`add`) or to stop retrying (`remove`), on top of the built-in rules.
    #[serde(default)]
    pub retry_on_status: StatusRules,
    /// Most requests started per second (token bucket); unset: no limit.
    pub rate_limit_per_s: Option<NonZeroU32>,
    /// Requests the rate limit lets through at once after a quiet spell; default: `rate_limit_per_s`.
    pub rate_limit_burst: Option<NonZeroU32>,
    /// `standard` (Standard Webhooks, default) or `hex` (`x-webhook-signature`).
    #[serde(default)]
    pub signature: SignatureScheme,
    /// A jq program applied to each envelope; `null` or no output drops the event for this endpoint.
    pub transform: Option<String>,
    /// The customer it belongs to (`[a-z0-9_-]{1,64}`): it receives only events of this tenant. Unset: events of every tenant and events without one.
    pub tenant: Option<String>,
    /// Variants by environment name (`prd`, `snd`; at most 8): an event of environment E goes only to variant E, with E's url, method, headers, secrets and timeout; events without an environment use the settings above.
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentSection>,
}

/// One environment's variant of an endpoint: `environments.<name> = { url = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSection {
    /// Where this environment's deliveries go (required: an environment never falls back to another URL).
    pub url: String,
    /// Overrides the endpoint's `method`.
    pub method: Option<Method>,
    /// This environment's extra headers (not inherited from the endpoint).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// This environment's signing secrets (not inherited: none means unsigned).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Overrides the endpoint's `timeout_ms`.
    pub timeout_ms: Option<NonZeroU64>,
}

/// `retry_on_status = { add = [...], remove = [...] }`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRules {
    /// Codes retried although the built-in rules would dead-letter them.
    #[serde(default)]
    pub add: Vec<u16>,
    /// Codes dead-lettered (`rejected`) although the built-in rules would retry them.
    #[serde(default)]
    pub remove: Vec<u16>,
}

/// What to do with a delivery whose retries are used up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Park it in the dead-letter queue (reason `exhausted`).
    #[default]
    DeadLetter,
    /// Discard it (counted as `dropped`).
    Drop,
}

/// How requests are signed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureScheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    #[default]
    Standard,
    /// `x-webhook-timestamp` and `x-webhook-signature` = hex HMAC-SHA256 of `timestamp.body`.
    Hex,
}

/// HTTP method of deliveries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `POST`
    #[default]
    Post,
    /// `PUT`
    Put,
}
