//! Dead letters in the console: an endpoint's (tenants see only their own
//! endpoints'), every endpoint's for operators, and replaying an endpoint's
//! back to it ([`common::dlq`], the same code as `hookpost-admin dlq`).
//! One dead-letter walk runs at a time per process: each reads the whole
//! queue.

use super::pages::{self, Flash};
use super::{Signed, html};
use crate::api::Api;
use common::dlq::view::{DeadLetterView, Filter};
use common::dlq::{Action, DeadLetters};
use common::server::HttpResponse;
use common::topology::Topology;
use hyper::StatusCode;
use maud::{Markup, html as markup};
use serde_json::Value;

/// Dead letters shown on a page, at most.
pub const SHOWN: usize = 200;

/// Replay rate of the console's dead-letter replays (messages per second).
pub const REPLAY_RATE: f64 = 100.0;

/// The runtime ids of an endpoint: itself and its environments' variants.
pub fn runtime_ids(view: &Value) -> Vec<String> {
    let id = view["id"].as_str().unwrap_or("").to_owned();
    let mut ids = vec![id.clone()];
    if let Some(envs) = view["environments"].as_object() {
        ids.extend(envs.keys().map(|env| format!("{id}~{env}")));
    }
    ids
}

/// Dead letters of the endpoints in `ids` (all when `None`), newest kept,
/// at most [`SHOWN`]; with the total matched.
pub async fn list(
    api: &Api,
    ids: Option<&[String]>,
) -> Result<(Vec<DeadLetterView>, usize), String> {
    let _walk = api.console().dead_letter_walk.lock().await;
    let conn = api
        .broker()
        .await
        .map_err(|_| "The broker is unavailable; try again.".to_owned())?;
    let topology = Topology::for_config(api.config());
    let mut found = Vec::new();
    let mut total = 0;
    DeadLetters::new(&conn, &topology, api.config())
        .browse(|_, view| {
            if ids.is_none_or(|ids| ids.contains(&view.endpoint)) {
                total += 1;
                if found.len() < SHOWN {
                    found.push(view.clone());
                }
            }
        })
        .await
        .map_err(|e| format!("The dead-letter queue could not be read: {e:#}"))?;
    Ok((found, total))
}

/// Sends an endpoint's dead letters back to it, confirmed one by one.
pub async fn replay(api: &Api, view: &Value) -> Flash {
    let _walk = api.console().dead_letter_walk.lock().await;
    let Ok(conn) = api.broker().await else {
        return Flash::Failed("The broker is unavailable; try again.".into());
    };
    let topology = Topology::for_config(api.config());
    let dlq = DeadLetters::new(&conn, &topology, api.config());
    let (mut done, mut failed) = (0, 0);
    for id in runtime_ids(view) {
        let filter = Filter {
            endpoint: Some(id),
            ..Filter::default()
        };
        let action = Action::Replay {
            to: None,
            rate: Some(REPLAY_RATE),
        };
        match dlq
            .apply(&filter, None, &action, &mut std::io::sink())
            .await
        {
            Ok(report) => {
                done += report.done;
                failed += report.failed;
            }
            Err(e) => {
                return Flash::Failed(format!(
                    "The replay stopped after {done} dead letters (the rest stay in the queue): {e:#}"
                ));
            }
        }
    }
    if failed > 0 {
        Flash::Failed(format!(
            "{done} dead letters replayed; {failed} could not be and stay in the queue."
        ))
    } else {
        Flash::Done(format!("{done} dead letters sent back to this endpoint."))
    }
}

/// The dead letters table.
pub fn table(letters: &[DeadLetterView], total: usize, with_endpoint: bool) -> Markup {
    markup! {
        @if letters.is_empty() {
            p { "No dead letters." }
        } @else {
            @if total > letters.len() { p.hint { "The first " (letters.len()) " of " (total) "." } }
            div.scroll { table #dead-letters {
                thead { tr {
                    th { "Event" } @if with_endpoint { th { "Endpoint" } }
                    th { "Reason" } th { "Attempts" } th { "Last status" } th { "Failed at" }
                } }
                tbody { @for d in letters { tr {
                    td { (d.id) br; small { (d.event_type) } }
                    @if with_endpoint { td {
                        a href={ "/console/endpoints/" (super::views::enc(common::config::base_id(&d.endpoint))) } { (d.endpoint) }
                        @if let Some(t) = &d.tenant { br; small { "tenant " (t) } }
                    } }
                    td { (d.reason) @if !d.last_error.is_empty() { br; small { (d.last_error) } } }
                    td { (d.attempts) }
                    td { @match d.last_status { Some(s) => (s), None => "–" } }
                    td { @match d.failed_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()) {
                        Some(t) => (t), None => "–",
                    } }
                } } }
            } }
        }
    }
}

/// The operator's page: every endpoint's dead letters.
pub async fn page(api: &Api, s: &Signed) -> HttpResponse {
    let body = match list(api, None).await {
        Ok((letters, total)) => markup! {
            p.hint { "Replay an endpoint's dead letters from its page, or with hookpost-admin dlq replay." }
            (table(&letters, total, true))
        },
        Err(e) => markup! { p.error { (e) } },
    };
    html(
        StatusCode::OK,
        &pages::page(Some(&s.ctx), "Dead letters", body),
    )
}
