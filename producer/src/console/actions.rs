//! What the console does beyond the management API's routes: pause and
//! resume, the test event, the transform "try it", queue depths, the
//! operator's topology page. Callers check first that the session may see
//! the endpoint (the API's GET answered 200).

use super::form::Form;
use super::pages::{self, Flash};
use super::views::replay_body;
use super::{Signed, api_error, html, on_endpoint};
use crate::api::{Api, Caller};
use common::history::{Attempt, Query};
use common::registry::control::{self, Command};
use common::server::HttpResponse;
use common::topology::Topology;
use hyper::{Method, StatusCode};
use maud::html as markup;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// How long a try waits for a sandbox worker, beyond the run's own limit.
const TRY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest sample event the transform "try it" takes.
pub const MAX_SAMPLE_BYTES: usize = 32 * 1024;

/// Pauses or resumes an endpoint on every dispatcher (the control stream).
pub async fn hold(api: &Api, id: &str, paused: bool) -> Flash {
    let conn = match api.broker().await {
        Ok(conn) => conn,
        Err(_) => return Flash::Failed("The broker is unavailable; try again.".into()),
    };
    let topology = Topology::for_config(api.config());
    if let Err(e) = control::append(&conn, &topology, &Command::hold(id, paused)).await {
        return Flash::Failed(format!("The broker refused the change: {e}"));
    }
    api.settle(|s| s.holds.contains(id) == paused).await;
    Flash::Done(if paused {
        "Paused: new events wait in the endpoint's queue until it is resumed.".into()
    } else {
        "Resumed: queued events are being delivered.".into()
    })
}

/// Sends one test event to this endpoint only (the endpoints exchange, by
/// its id): a type it subscribes to, `source` `hookpost.console`, data
/// `{"test": true}`.
pub async fn test_event(api: &Api, view: &Value) -> Flash {
    let id = view["id"].as_str().unwrap_or("");
    let event_type = pages::test_type(view);
    let event = common::Event::new(
        &event_type,
        json!({"test": true, "note": "a test event sent from the hookpost console"}),
    )
    .and_then(|e| e.with_scope(view["tenant"].as_str(), None))
    .map(|e| e.with_source("hookpost.console"));
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            return Flash::Failed(format!("No test event can be made for this endpoint: {e}"));
        }
    };
    let conn = match api.broker().await {
        Ok(conn) => conn,
        Err(_) => return Flash::Failed("The broker is unavailable; try again.".into()),
    };
    let topology = Topology::for_config(api.config());
    let sent = async {
        let ch = common::amqp::open_channel(&conn).await?;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let result = common::amqp::publish_confirmed(
            &ch,
            &topology.endpoints_exchange(),
            id,
            &event.to_vec(),
            common::amqp::event_properties(&event),
        )
        .await;
        let _ = ch.close(200, "sent".into()).await;
        result
    }
    .await;
    match sent {
        Ok(()) => Flash::Done(format!(
            "Test event {} ({event_type}) queued for this endpoint; its attempt appears below once made.",
            event.id
        )),
        Err(e) => Flash::Failed(format!("The test event was not queued: {e}")),
    }
}

/// Starts a replay from the archive through the API.
pub async fn replay(api: &Api, s: &Signed, id: &str, form: &Form) -> Flash {
    let body = replay_body(form);
    let (status, body) = on_endpoint(api, s, Method::POST, id, "/replays", Some(&body)).await;
    let matched = body["progress"]["matched"].as_u64().unwrap_or(0);
    match status {
        StatusCode::OK => Flash::Done(format!("Dry run: {matched} archived events would be sent.")),
        StatusCode::ACCEPTED => Flash::Done(format!(
            "Replay {} started; its progress is in the table below.",
            body["id"].as_str().unwrap_or("")
        )),
        _ => Flash::Failed(api_error(status, &body)),
    }
}

/// Runs the endpoint's transform on `sample` in the delivery sandbox.
pub async fn try_transform(api: &Api, view: &Value, sample: &str) -> Flash {
    let Some(program) = view["transform"].as_str().filter(|p| !p.is_empty()) else {
        return Flash::Failed("This endpoint has no transform.".into());
    };
    let error = |text: String| Flash::Output {
        title: "Transform error".into(),
        text,
        ok: false,
    };
    if sample.len() > MAX_SAMPLE_BYTES {
        return error(format!("The sample is over {MAX_SAMPLE_BYTES} bytes."));
    }
    if let Err(e) = serde_json::from_str::<serde_json::Map<String, Value>>(sample) {
        return error(format!("The sample is not a JSON object: {e}"));
    }
    let transform = match common::transform::Transform::compile(program) {
        Ok(t) => t,
        Err(e) => return error(e.to_string()),
    };
    // Counted under the endpoint's id like its deliveries, so a tenant's
    // tries share that endpoint's bound of sandbox workers.
    let id = view["id"].as_str().unwrap_or("");
    let title = "Transform output".to_owned();
    // A few tries at once per process, each waiting a bounded time for a
    // worker: a tenant running slow programs gets "busy", not a queue.
    let Ok(_try) = api.console().tries.try_acquire() else {
        return error("The sandbox is busy with other tries; try again in a moment.".into());
    };
    let budget = api.config().transforms.timeout + TRY_WAIT;
    let ran = tokio::time::timeout(
        budget,
        api.console().sandbox.run(id, &transform, sample.as_bytes()),
    )
    .await;
    let Ok(ran) = ran else {
        return error("No sandbox worker was free in time; try again in a moment.".into());
    };
    match ran {
        Ok(common::transform::Outcome::Send(out)) => Flash::Output {
            title,
            text: serde_json::from_slice::<Value>(&out)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| String::from_utf8_lossy(&out).into_owned()),
            ok: true,
        },
        Ok(common::transform::Outcome::Drop) => Flash::Output {
            title,
            text: "The transform dropped this event: it would not be sent.".into(),
            ok: true,
        },
        Err(e) => error(e.to_string()),
    }
}

/// Ready messages in each endpoint's queue (`None`: unknown).
pub async fn queue_depths(api: &Api, views: &[Value]) -> Vec<Option<u32>> {
    let Ok(conn) = api.broker().await else {
        return vec![None; views.len()];
    };
    let registry = api.registry(&conn);
    let topology = Topology::for_config(api.config());
    let mut out = Vec::with_capacity(views.len());
    for v in views {
        let queue = topology.endpoint_queue(v["id"].as_str().unwrap_or(""));
        out.push(
            registry
                .queue_counts(&queue)
                .await
                .ok()
                .flatten()
                .map(|(ready, _)| ready),
        );
    }
    out
}

/// Every tenant known: of endpoints and of tokens (the operator's switcher).
pub async fn tenants(api: &Api) -> Vec<String> {
    let mut all: BTreeSet<String> = api
        .config()
        .endpoints
        .iter()
        .filter_map(|e| e.tenant.clone())
        .collect();
    if let Ok(state) = api.current().await {
        all.extend(
            state
                .endpoints
                .values()
                .filter_map(|e| e.tenant().map(str::to_owned)),
        );
        all.extend(state.tokens.values().map(|t| t.tenant.clone()));
    }
    all.into_iter().collect()
}

/// The attempts of the last hour the caller may see (a tenant: at its
/// registered endpoints), newest first; empty when the log cannot be read.
pub async fn recent_attempts(api: &Api, caller: &Caller, tenant: Option<&str>) -> Vec<Attempt> {
    let endpoints_in = match caller {
        Caller::Operator => None,
        Caller::Tenant(t) => match api.current().await {
            Ok(state) => Some(crate::api::attempts::tenant_endpoints(api, &state, t)),
            Err(_) => return Vec::new(),
        },
    };
    let query = Query {
        endpoint: None,
        endpoints_in,
        event: None,
        // A tenant sees only its tenant's records (an id freed by a delete
        // and taken again does not show the old owner's).
        tenant: match caller {
            Caller::Operator => tenant.map(str::to_owned),
            Caller::Tenant(t) => Some(t.clone()),
        },
        outcome: None,
        status: None,
        since: time::OffsetDateTime::now_utc() - time::Duration::hours(1),
        until: None,
        limit: 1000,
    };
    let mut attempts = crate::api::attempts::read_log(api, &query)
        .await
        .map(|(a, _)| a)
        .unwrap_or_default();
    newest_first(&mut attempts);
    attempts
}

/// Sorts attempts newest first.
pub fn newest_first(attempts: &mut [Attempt]) {
    attempts.sort_by_key(|a| std::cmp::Reverse(a.started()));
}

/// The operator's topology page: every queue the config implies, with its
/// depth and consumers (what `hookpost-admin topology status` shows), and
/// the registered endpoints' queues.
pub async fn topology_page(api: &Api, s: &Signed) -> HttpResponse {
    let conn = match api.broker().await {
        Ok(conn) => conn,
        Err(r) => return r,
    };
    let registered = match api.current().await {
        Ok(state) => state.runtime_ids(api.config()),
        Err(_) => Vec::new(),
    };
    let rows = Topology::for_config(api.config()).queues(api.config(), registered);
    let registry = api.registry(&conn);
    let mut shown = Vec::with_capacity(rows.len());
    for (name, kind) in rows {
        let status = registry.queue_counts(&name).await.ok().flatten();
        shown.push((name, kind, status));
    }
    let body = markup! {
        div.scroll { table #topology {
            thead { tr { th { "Queue" } th { "Kind" } th { "Ready" } th { "Consumers" } } }
            tbody { @for (name, kind, status) in &shown { tr {
                td { (name) } td { (kind) }
                @match status {
                    Some((ready, consumers)) => { td { (ready) } td { (consumers) } },
                    None => { td colspan="2" { "missing" } },
                }
            } } }
        } }
    };
    html(StatusCode::OK, &pages::page(Some(&s.ctx), "Topology", body))
}
