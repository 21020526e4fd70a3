//! HTTP ingest (`hookpost-producer serve`): `POST /v1/events` takes one
//! envelope or an array of them and answers `202 {"ids": [...]}` only after
//! the broker confirmed every event.
//!
//! | status | when |
//! |---|---|
//! | 202 | all events confirmed by the broker |
//! | 400 | body not JSON, empty array, or an event breaks the contract (`field` names it) |
//! | 401 | missing or unknown bearer token |
//! | 408 | the body did not arrive within `body_read_timeout_ms` |
//! | 404 / 405 | other paths / methods |
//! | 413 | body over `max_body_bytes` or more than `max_events` events |
//! | 415 | a `content-type` other than JSON |
//! | 503 | broker unavailable or refusing; retry later (`retry-after: 1`); broker blocking publishes (memory or disk alarm; `retry-after: 5`) |

use crate::http::{
    BodyError, bearer_matches, body_timeout, error, method_not_allowed, read_body, too_large,
    unauthorized, unavailable,
};
use crate::publisher::{PublishError, Publisher};
use common::config::IngestConfig;
use common::metrics::{ProducerMetrics, status_class};
use common::server::{HttpResponse, json};
use common::{Event, EventDraft};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Ingest {
    config: IngestConfig,
    publisher: Arc<Publisher>,
    metrics: ProducerMetrics,
}

impl Ingest {
    /// An ingest service publishing through `publisher`.
    pub fn new(config: IngestConfig, publisher: Arc<Publisher>, metrics: ProducerMetrics) -> Self {
        Self {
            config,
            publisher,
            metrics,
        }
    }

    /// Serves on `listener` until `shutdown`; in-flight requests finish first.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        common::server::serve(
            listener,
            self.config.limits,
            move |req| {
                let this = self.clone();
                Box::pin(async move { this.handle(req).await })
            },
            shutdown,
        )
        .await;
    }

    /// Handles one request and counts it.
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let started = Instant::now();
        let response = self.route(req).await;
        let status = response.status().as_u16();
        self.metrics
            .ingest_requests
            .with_label_values(&[&status.to_string()])
            .inc();
        self.metrics
            .ingest_duration
            .with_label_values(&[status_class(status)])
            .observe(started.elapsed().as_secs_f64());
        response
    }

    async fn route(&self, req: Request<Incoming>) -> HttpResponse {
        if req.uri().path() != "/v1/events" {
            return error(
                StatusCode::NOT_FOUND,
                "not found; events go to POST /v1/events",
                None,
            );
        }
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
        if !bearer_matches(req.headers().get(AUTHORIZATION), &self.config.tokens) {
            return unauthorized();
        }
        if let Some(ct) = req.headers().get(CONTENT_TYPE)
            && !ct.to_str().is_ok_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            })
        {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type must be application/json",
                None,
            );
        }
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = self.config.max_body_bytes;
        if declared.is_some_and(|n| n > limit as u64) {
            return too_large(limit);
        }
        let timeout = self.config.body_read_timeout;
        let body = match read_body(req.into_body(), limit, timeout).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return too_large(limit),
            Err(BodyError::TimedOut) => return body_timeout(timeout),
            Err(BodyError::Broken) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "could not read the request body",
                    None,
                );
            }
        };
        let events = match self.parse(&body) {
            Ok(events) => events,
            Err(rejection) => {
                self.metrics
                    .ingest_events
                    .with_label_values(&["rejected"])
                    .inc();
                return error(
                    rejection.status,
                    &rejection.message,
                    rejection.field.as_deref(),
                );
            }
        };
        match self.publisher.publish_many(&events).await {
            Ok(()) => {
                self.metrics
                    .ingest_events
                    .with_label_values(&["accepted"])
                    .inc_by(events.len() as u64);
                let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
                json(StatusCode::ACCEPTED, &json!({ "ids": ids }))
            }
            Err(e @ PublishError::TooLarge { .. }) => {
                self.metrics
                    .ingest_events
                    .with_label_values(&["rejected"])
                    .inc_by(events.len() as u64);
                error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string(), None)
            }
            Err(e) => {
                self.metrics
                    .ingest_events
                    .with_label_values(&["rejected"])
                    .inc_by(events.len() as u64);
                if matches!(e, PublishError::Blocked { .. }) {
                    // Logged once per block by the connection, not per request.
                    tracing::debug!(error = %e, events = events.len(), "Broker blocked; answering 503.");
                } else {
                    tracing::warn!(error = %e, events = events.len(), "Publish failed; answering 503.");
                }
                // A blocked broker waits for an alarm to clear: seconds at least.
                let retry_after = if matches!(e, PublishError::Blocked { .. }) {
                    "5"
                } else {
                    "1"
                };
                unavailable(&unavailable_message(&e), retry_after)
            }
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Vec<Event>, Rejection> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                &format!("body is not JSON: {e}"),
                None,
            )
        })?;
        let (drafts, is_array) = match value {
            serde_json::Value::Array(items) => (items, true),
            other => (vec![other], false),
        };
        if drafts.is_empty() {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "empty array: send at least one event",
                None,
            ));
        }
        if drafts.len() > self.config.max_events {
            return Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "{} events in one request; at most {}",
                    drafts.len(),
                    self.config.max_events
                ),
                None,
            ));
        }
        drafts
            .into_iter()
            .enumerate()
            .map(|(i, draft)| {
                let at = |field: &str| match (is_array, field.is_empty()) {
                    (true, true) => format!("[{i}]"),
                    (true, false) => format!("[{i}].{field}"),
                    (false, _) => field.to_owned(),
                };
                let draft: EventDraft = serde_path_to_error::deserialize(draft).map_err(|e| {
                    let path = e.path().to_string();
                    let message = e.into_inner().to_string();
                    // A missing field is reported at its parent; name the field itself.
                    let missing = message
                        .strip_prefix("missing field `")
                        .and_then(|rest| rest.split('`').next());
                    let field = match (path.as_str(), missing) {
                        (_, Some(name)) => name.to_owned(),
                        (".", None) => String::new(),
                        (p, None) => p.to_owned(),
                    };
                    Rejection::new(StatusCode::BAD_REQUEST, &message, Some(&at(&field)))
                })?;
                draft
                    .into_event()
                    .and_then(|e| e.validate_publishable().map(|()| e))
                    .map_err(|e| {
                        Rejection::new(
                            StatusCode::BAD_REQUEST,
                            &e.to_string(),
                            Some(&at(field_of(&e))),
                        )
                    })
            })
            .collect()
    }
}

/// Why a request body was refused, before any publish.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl Rejection {
    fn new(status: StatusCode, message: &str, field: Option<&str>) -> Self {
        Self {
            status,
            message: message.to_owned(),
            field: field.map(str::to_owned),
        }
    }
}

fn field_of(e: &common::envelope::EnvelopeError) -> &'static str {
    use common::envelope::EnvelopeError as E;
    match e {
        E::Type(_) | E::ScopedKeyTooLong(_) | E::Reserved(_) => "type",
        E::Scope(field, _) => field,
        E::Id => "id",
        E::Source => "source",
        E::Timestamp(_) => "timestamp",
        E::Json(_) => "",
    }
}

fn unavailable_message(e: &PublishError) -> String {
    match e {
        PublishError::Unavailable(_) => "broker unavailable; retry later".into(),
        PublishError::Blocked { .. } => {
            "broker blocking publishes (resource alarm); retry later".into()
        }
        other => format!("not stored: {other}; retry later"),
    }
}
