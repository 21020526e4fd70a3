//! Replays from the event archive on the management API (issue 18):
//!
//! - `POST /v1/endpoints/{id}/replays`: start one; 202 with the replay, or
//!   200 with the final count for a dry run (`"dry_run": true`);
//! - `GET /v1/endpoints/{id}/replays`: the endpoint's replays, newest first;
//! - `GET /v1/endpoints/{id}/replays/{replay_id}`: one, with its progress;
//! - `DELETE /v1/endpoints/{id}/replays/{replay_id}`: stop it.
//!
//! The body: `since` (required; RFC 3339 or a duration ago), `until`,
//! `type` (a pattern), `tenant` (operators), `rate` (events per second,
//! default 500, at most 10,000 for operators and 500 for tenant tokens,
//! never above the endpoint's rate limit), `dry_run`. Unknown keys are
//! refused. A tenant token replays only into its tenant's registered
//! endpoints (another endpoint answers 404), and only its tenant's events
//! reach them (the endpoint's bindings decide, see `common::archive`).
//!
//! Replays run in this process, each on a broker connection of its own:
//! at most [`MAX_RUNNING`] at once, one per tenant; the last
//! [`KEPT`] are remembered (a restart forgets them and stops the running
//! ones: what they sent stays sent, and a new replay of the same window
//! sends it again, with the same ids).

use super::{Api, Caller, ROUTES, bad_request, op_error, read_object};
use crate::http::{error, method_not_allowed};
use common::amqp::AmqpClient;
use common::archive::replay::{self, DEFAULT_RATE, Note, Progress, Request, Target};
use common::registry::{self, OpError};
use common::server::{HttpResponse, json};
use common::topology::Topology;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

mod body;
use body::parse;

/// Replays running at once in this process.
pub const MAX_RUNNING: usize = 4;
/// Replays remembered (running or not), the oldest finished forgotten first.
pub const KEPT: usize = 100;
/// The highest rate a tenant token may ask for.
pub const TENANT_MAX_RATE: f64 = DEFAULT_RATE;
/// Longest a dry run may take before it answers 504.
pub const DRY_RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The replays of this process.
#[derive(Debug, Default)]
pub(super) struct Replays {
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

#[derive(Debug)]
struct Job {
    id: String,
    endpoint: String,
    /// The tenant of the token that started it.
    tenant: Option<String>,
    request: Value,
    created_at: String,
    cancel: CancellationToken,
    status: Mutex<Status>,
}

#[derive(Debug, Clone)]
struct Status {
    state: &'static str,
    progress: Progress,
    error: Option<String>,
    finished_at: Option<String>,
}

impl Job {
    fn view(&self) -> Value {
        let status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        json!({
            "id": self.id,
            "endpoint": self.endpoint,
            "state": status.state,
            "request": self.request,
            "created_at": self.created_at,
            "finished_at": status.finished_at,
            "progress": status.progress,
            "error": status.error,
        })
    }

    fn running(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state
            == "running"
    }
}

/// Whether `path` is one of this module's routes.
pub(super) fn is_replays_path(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    matches!(segments.as_slice(), ["v1", "endpoints", _, "replays", ..])
}

/// Handles the replay routes.
pub(super) async fn handle(
    api: &Api,
    req: hyper::Request<crate::api::ApiBody>,
    path: &str,
) -> HttpResponse {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (endpoint, replay_id, template) = match segments.as_slice() {
        ["v1", "endpoints", id, "replays"] => ((*id).to_owned(), None, ROUTES[7]),
        ["v1", "endpoints", id, "replays", r] => {
            ((*id).to_owned(), Some((*r).to_owned()), ROUTES[8])
        }
        _ => return error(StatusCode::NOT_FOUND, "not found", None),
    };
    if !template.1.contains(&req.method().as_str()) {
        return method_not_allowed(&template.1.join(", "));
    }
    let caller = match api.caller(&req).await {
        Ok(caller) => caller,
        Err(r) => return r,
    };
    let runtime = match endpoints_of(api, &caller, &endpoint).await {
        Ok(runtime) => runtime,
        Err(r) => return r,
    };
    match (req.method().clone(), replay_id) {
        (Method::GET, None) => {
            let jobs = api
                .replays
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let list: Vec<Value> = jobs
                .iter()
                .rev()
                .filter(|j| j.endpoint == endpoint)
                .map(|j| j.view())
                .collect();
            json(StatusCode::OK, &json!({ "replays": list }))
        }
        (Method::GET, Some(rid)) => match find(api, &endpoint, &rid) {
            Some(job) => json(StatusCode::OK, &job.view()),
            None => not_found(&rid),
        },
        (Method::DELETE, Some(rid)) => match find(api, &endpoint, &rid) {
            Some(job) => {
                job.cancel.cancel();
                json(StatusCode::OK, &job.view())
            }
            None => not_found(&rid),
        },
        (Method::POST, None) => {
            let body = match read_object(req, api.config.api.body_read_timeout).await {
                Ok(body) => body,
                Err(r) => return r,
            };
            let request = match parse(&body, &caller) {
                Ok(r) => r,
                Err((field, message)) => return bad_request(&field, &message),
            };
            start(api, &caller, endpoint, &runtime, request).await
        }
        _ => method_not_allowed(&template.1.join(", ")),
    }
}

/// The runtime endpoints (the endpoint and its environments' variants) the
/// caller may replay into; 404 for an endpoint it may not see.
async fn endpoints_of(
    api: &Api,
    caller: &Caller,
    id: &str,
) -> Result<Vec<common::config::Endpoint>, HttpResponse> {
    let state = api.current().await.map_err(|e| op_error(&e))?;
    let not_found = || op_error(&OpError::NotFound(id.to_owned()));
    if api.config.is_file_endpoint(id) {
        if *caller != Caller::Operator {
            return Err(not_found());
        }
        return Ok(api
            .config
            .endpoints
            .iter()
            .filter(|e| common::config::base_id(&e.id) == id)
            .cloned()
            .collect());
    }
    let stored = state.endpoints.get(id).ok_or_else(not_found)?;
    if let Caller::Tenant(t) = caller
        && stored.tenant() != Some(t.as_str())
    {
        return Err(not_found());
    }
    let endpoint = registry::to_endpoint(
        stored,
        &api.config,
        api.config.registry.secrets_key.as_ref(),
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|e| {
        error(
            StatusCode::CONFLICT,
            &format!("the endpoint cannot be loaded: {}", e.message),
            None,
        )
    })?;
    Ok(endpoint.into_runtime())
}

fn find(api: &Api, endpoint: &str, rid: &str) -> Option<Arc<Job>> {
    api.replays
        .jobs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|j| j.id == rid && j.endpoint == endpoint)
        .cloned()
}

fn not_found(rid: &str) -> HttpResponse {
    let shown: String = rid.chars().take(64).collect();
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "replay {shown:?} not found (replays are remembered by the API process that ran them, until it restarts)"
        ),
        None,
    )
}

/// Starts the replay (or runs the dry run) and answers.
async fn start(
    api: &Api,
    caller: &Caller,
    endpoint: String,
    runtime: &[common::config::Endpoint],
    request: Request,
) -> HttpResponse {
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    // What was asked, as checked (never the body as sent).
    let body = json!({
        "since": rfc3339(request.since),
        "until": request.until.map(rfc3339),
        "type": request.event_type,
        "tenant": request.tenant,
        "rate": request.rate,
        "dry_run": request.dry_run,
    });
    let tenant = match caller {
        Caller::Operator => None,
        Caller::Tenant(t) => Some(t.clone()),
    };
    let job = {
        let mut jobs = api
            .replays
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let running: Vec<&Arc<Job>> = jobs.iter().filter(|j| j.running()).collect();
        if running.len() >= MAX_RUNNING {
            return crate::http::unavailable(
                "too many replays running in this API process; retry later",
                "5",
            );
        }
        if tenant.is_some() && running.iter().any(|j| j.tenant == tenant) {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "a replay of this tenant is running: wait for it or stop it (DELETE)",
                None,
            );
        }
        let job = Arc::new(Job {
            id: common::envelope::new_event_id().replacen("evt_", "rpl_", 1),
            endpoint,
            tenant,
            request: body,
            created_at: common::contract::now_rfc3339(),
            cancel: api.shutdown.child_token(),
            status: Mutex::new(Status {
                state: "running",
                progress: Progress::default(),
                error: None,
                finished_at: None,
            }),
        });
        jobs.push_back(job.clone());
        while jobs.len() > KEPT {
            let Some(i) = jobs.iter().position(|j| !j.running()) else {
                break;
            };
            jobs.remove(i);
        }
        job
    };
    let target = Target::new(runtime);
    let task = tokio::spawn(run(
        api.config.clone(),
        api.metrics.clone(),
        job.clone(),
        target,
        request.clone(),
    ));
    if request.dry_run {
        // A dry run only reads: answer with its count.
        if tokio::time::timeout(DRY_RUN_TIMEOUT, task).await.is_err() {
            job.cancel.cancel();
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "the dry run took over {} s: narrow `since` and `until` (a replay reads every event archived in its window)",
                    DRY_RUN_TIMEOUT.as_secs()
                ),
                None,
            );
        }
        return json(StatusCode::OK, &job.view());
    }
    let mut response = json(StatusCode::ACCEPTED, &job.view());
    if let Ok(location) = hyper::header::HeaderValue::from_str(&format!(
        "/v1/endpoints/{}/replays/{}",
        job.endpoint, job.id
    )) {
        response
            .headers_mut()
            .insert(hyper::header::LOCATION, location);
    }
    response
}

/// Runs one replay on a connection of its own, keeping its status.
async fn run(
    config: common::Config,
    metrics: Option<common::metrics::ProducerMetrics>,
    job: Arc<Job>,
    target: Target,
    request: Request,
) {
    if let Some(m) = &metrics {
        m.replays_running.inc();
    }
    let client = AmqpClient::new(
        config.amqp.urls.clone(),
        "hookpost-api-replay",
        config.amqp.max_reconnect_delay,
    );
    let deadline = tokio::time::Instant::now() + config.amqp.publish_timeout;
    let topology = Topology::for_config(&config);
    let mut last = Progress::default();
    let mut report = |note: Note<'_>| {
        let Note::Progress(p) = note else {
            return;
        };
        if let Some(m) = &metrics {
            let add = |stage: &str, now: u64, before: u64| {
                m.replay_events
                    .with_label_values(&[stage])
                    .inc_by(now.saturating_sub(before));
            };
            add("scanned", p.scanned, last.scanned);
            add("matched", p.matched, last.matched);
            add("sent", p.sent, last.sent);
        }
        last = p.clone();
        job.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .progress = p.clone();
    };
    let result = match client.connection(Some(deadline), &job.cancel).await {
        Ok(conn) => {
            replay::run(
                &conn,
                &topology,
                &target,
                &request,
                &job.cancel,
                &mut report,
            )
            .await
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    client.close().await;
    {
        let mut status = job
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        status.finished_at = Some(common::contract::now_rfc3339());
        match result {
            Ok(progress) => {
                status.state = if progress.finished {
                    "finished"
                } else {
                    "stopped"
                };
                status.progress = progress;
            }
            Err(e) => {
                tracing::warn!(replay = %job.id, endpoint = %job.endpoint, error = %e, "A replay from the archive failed.");
                status.state = "failed";
                status.error = Some(format!("{e:#}"));
            }
        }
    }
    if let Some(m) = &metrics {
        m.replays_running.dec();
    }
}
