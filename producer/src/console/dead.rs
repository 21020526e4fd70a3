//! Dead letters in the console: an endpoint's (tenants see only their own
//! endpoints'), every endpoint's for operators, and replaying an endpoint's
//! back to it ([`common::dlq`], the same code as `hookpost-admin dlq`).
//! A walk looks at the first [`WALK`] messages of the queue; one runs at a
//! time per process, and another asked for meanwhile is refused at once.

use super::pages::{self, Flash};
use super::{Signed, html};
use crate::api::{Api, Caller};
use common::dlq::view::{DeadLetterView, Filter};
use common::dlq::{Action, DeadLetters};
use common::server::HttpResponse;
use common::topology::Topology;
use hyper::StatusCode;
use maud::{Markup, html as markup};

/// Dead letters shown on a page, at most.
pub const SHOWN: usize = 200;

/// Messages one reading or replay looks at, at most (the first of the queue).
pub const WALK: usize = 10_000;

/// Dead letters one replay sends back, at most.
pub const REPLAY_MAX: usize = 1_000;

/// Replay rate of the console's dead-letter replays (messages per second).
pub const REPLAY_RATE: f64 = 100.0;

/// An endpoint's dead letters as `caller` may see them: at the endpoint or
/// its environments' variants, and for a tenant only its tenant's (an id
/// freed by a delete and taken again does not show the old owner's).
pub fn filter_for(caller: &Caller, id: &str) -> Filter {
    Filter {
        endpoint: Some(id.to_owned()),
        with_variants: true,
        tenant: match caller {
            Caller::Operator => None,
            Caller::Tenant(t) => Some(t.clone()),
        },
        ..Filter::default()
    }
}

/// What a reading found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The first [`SHOWN`] that matched.
    pub letters: Vec<DeadLetterView>,
    /// How many matched.
    pub matched: usize,
    /// Whether the queue holds more than was read.
    pub more: bool,
}

const BUSY: &str =
    "Another dead-letter reading or replay is running in this API process; try again in a moment.";

/// The dead letters `filter` selects among the first [`WALK`] of the queue.
pub async fn list(api: &Api, filter: &Filter) -> Result<Found, String> {
    let Ok(_walk) = api.console().dead_letter_walk.try_lock() else {
        return Err(BUSY.into());
    };
    let conn = api
        .broker()
        .await
        .map_err(|_| "The broker is unavailable; try again.".to_owned())?;
    let topology = Topology::for_config(api.config());
    let mut found = Vec::new();
    let (mut matched, mut read) = (0, 0);
    DeadLetters::new(&conn, &topology, api.config())
        .walking_at_most(WALK)
        .browse(|_, view| {
            read += 1;
            if filter.matches(view) {
                matched += 1;
                if found.len() < SHOWN {
                    found.push(view.clone());
                }
            }
        })
        .await
        .map_err(|e| format!("The dead-letter queue could not be read: {e:#}"))?;
    Ok(Found {
        letters: found,
        matched,
        more: read >= WALK,
    })
}

/// Sends an endpoint's dead letters (at most [`REPLAY_MAX`], among the
/// first [`WALK`]) back to it, each confirmed before it leaves the queue.
pub async fn replay(api: &Api, filter: &Filter) -> Flash {
    let Ok(_walk) = api.console().dead_letter_walk.try_lock() else {
        return Flash::Failed(BUSY.into());
    };
    let Ok(conn) = api.broker().await else {
        return Flash::Failed("The broker is unavailable; try again.".into());
    };
    let topology = Topology::for_config(api.config());
    let action = Action::Replay {
        to: None,
        rate: Some(REPLAY_RATE),
    };
    let report = DeadLetters::new(&conn, &topology, api.config())
        .walking_at_most(WALK)
        .apply(filter, Some(REPLAY_MAX), &action, &mut std::io::sink())
        .await;
    match report {
        Ok(r) if r.failed > 0 => Flash::Failed(format!(
            "{} dead letters replayed; {} could not be and stay in the queue.",
            r.done, r.failed
        )),
        Ok(r) => Flash::Done(format!(
            "{} dead letters sent back to this endpoint.",
            r.done
        )),
        Err(e) => Flash::Failed(format!(
            "The replay stopped (the dead letter being handled stays in the queue): {e:#}"
        )),
    }
}

/// The dead letters table.
pub fn table(found: &Found, with_endpoint: bool) -> Markup {
    let (letters, total, more) = (&found.letters, found.matched, found.more);
    markup! {
        @if more { p.hint { "Only the first " (WALK) " messages of the dead-letter queue were read; hookpost-admin dlq reads them all." } }
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
                        a href={ "/console/endpoints/" (super::enc(common::config::base_id(&d.endpoint))) } { (d.endpoint) }
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
    let body = match list(api, &Filter::default()).await {
        Ok(found) => markup! {
            p.hint { "Replay an endpoint's dead letters from its page, or with hookpost-admin dlq replay." }
            (table(&found, true))
        },
        Err(e) => markup! { p.error { (e) } },
    };
    html(
        StatusCode::OK,
        &pages::page(Some(&s.ctx), "Dead letters", body),
    )
}
