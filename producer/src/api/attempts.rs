//! The attempt log on the management API (issue 18):
//!
//! - `GET /v1/endpoints/{id}/attempts`: an endpoint's attempts (its
//!   environments' included);
//! - `GET /v1/events/{id}/attempts`: an event's attempts at every endpoint.
//!
//! Query parameters: `since` and `until` (RFC 3339, or a duration ago:
//! `30m`, `2h`, `7d`; `since` defaults to 1h), `outcome`, `status`,
//! `tenant` (operators) and `limit` (the newest; default 100, at most
//! 1,000). A tenant token sees only its tenant's attempts at its tenant's registered
//! endpoints; another endpoint answers 404. A read starts at the stream's
//! place for `since` and ends within [`READ_TIMEOUT`] (504 past it), on a
//! broker connection of its own; at most [`CONCURRENT_READS`] run at once
//! per API process (503 beyond).

use super::{Api, Caller, ROUTES, bad_request, op_error, query_param, unavailable};
use crate::http::{error, method_not_allowed};
use common::amqp::AmqpClient;
use common::history::{self, Outcome, Query};
use common::registry::{self, OpError};
use common::server::{HttpResponse, json};
use common::topology::Topology;
use hyper::{Method, Request, StatusCode};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How far back a query reaches without `since`.
const DEFAULT_SINCE: &str = "1h";

/// Records answered without `limit`, and the most with it.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Longest one read may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads running at once in this process.
pub const CONCURRENT_READS: usize = 4;

static READS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(CONCURRENT_READS));

/// Whose attempts a request asks for.
enum Subject {
    Endpoint(String),
    Event(String),
}

/// Whether `path` is one of this module's routes (or under `/v1/events/`,
/// which only it serves).
pub(super) fn is_attempts_path(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    matches!(
        segments.as_slice(),
        ["v1", "events", ..] | ["v1", "endpoints", _, "attempts"]
    )
}

/// Handles `GET /v1/endpoints/{id}/attempts` and `GET /v1/events/{id}/attempts`.
pub(super) async fn handle(api: &Api, req: Request<super::ApiBody>, path: &str) -> HttpResponse {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (subject, template) = match segments.as_slice() {
        ["v1", "endpoints", id, "attempts"] => (Subject::Endpoint((*id).to_owned()), ROUTES[5]),
        ["v1", "events", id, "attempts"] => (Subject::Event((*id).to_owned()), ROUTES[6]),
        _ => return error(StatusCode::NOT_FOUND, "not found", None),
    };
    if req.method() != Method::GET {
        return method_not_allowed(&template.1.join(", "));
    }
    let caller = match api.caller(&req).await {
        Ok(caller) => caller,
        Err(r) => return r,
    };
    let mut query = match parse(req.uri().query().unwrap_or(""), &caller) {
        Ok(q) => q,
        Err((field, message)) => return bad_request(&field, &message),
    };
    let state = match api.current().await {
        Ok(state) => state,
        Err(e) => return op_error(&e),
    };
    match (&subject, &caller) {
        (Subject::Endpoint(id), Caller::Operator) => {
            if api.config.endpoint(id).is_none() && !state.endpoints.contains_key(id) {
                return op_error(&OpError::NotFound(id.clone()));
            }
            query.endpoint = Some(id.clone());
        }
        (Subject::Endpoint(id), Caller::Tenant(t)) => {
            let own = state.endpoints.get(id).is_some_and(|e| {
                e.tenant() == Some(t.as_str()) && !api.config.is_file_endpoint(id)
            });
            if !own {
                return op_error(&OpError::NotFound(id.clone()));
            }
            query.endpoint = Some(id.clone());
        }
        (Subject::Event(id), caller) => {
            if !valid_event_id(id) {
                return bad_request("id", "is not an event id");
            }
            query.event = Some(id.clone());
            if let Caller::Tenant(t) = caller {
                query.endpoints_in = Some(tenant_endpoints(api, &state, t));
            }
        }
    }
    match read_log(api, &query).await {
        Ok((attempts, scanned)) => json(
            StatusCode::OK,
            &json!({
                "attempts": attempts,
                "matched": scanned.matched,
                "scanned": scanned.records,
            }),
        ),
        Err(response) => response,
    }
}

/// The ids of `tenant`'s registered endpoints: what its token may read the
/// attempts of (the config file's endpoints are the operator's).
pub(crate) fn tenant_endpoints(
    api: &Api,
    state: &common::registry::control::Holds,
    tenant: &str,
) -> BTreeSet<String> {
    state
        .endpoints
        .values()
        .filter(|e| e.tenant() == Some(tenant) && !api.config.is_file_endpoint(&e.id))
        .map(|e| e.id.clone())
        .collect()
}

/// Reads the attempt log for `query` on a connection of its own, within
/// [`READ_TIMEOUT`] and at most [`CONCURRENT_READS`] at once; the API's
/// answer when it cannot.
pub(crate) async fn read_log(
    api: &Api,
    query: &Query,
) -> Result<(Vec<history::Attempt>, history::Scanned), HttpResponse> {
    let Ok(_permit) = READS.try_acquire() else {
        return Err(unavailable(
            "too many attempt log reads at once; retry shortly",
        ));
    };
    // A connection of the read's own: the broker can answer a stream
    // attach racing with retention with a connection-level error, which
    // must not close the connection every other API request shares.
    let reader = AmqpClient::new(
        api.config.amqp.urls.clone(),
        "hookpost-api-log",
        api.config.amqp.max_reconnect_delay,
    );
    let deadline = tokio::time::Instant::now() + api.config.amqp.publish_timeout;
    let conn = match reader.connection(Some(deadline), &api.shutdown).await {
        Ok(conn) => conn,
        Err(e) => return Err(unavailable(&e.to_string())),
    };
    let topology = Topology::for_config(&api.config);
    let read =
        tokio::time::timeout(READ_TIMEOUT, history::read(&conn, &topology, query, None)).await;
    reader.close().await;
    match read {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Reading the attempt log failed.");
            Err(unavailable(
                "the attempt log could not be read; is log.enabled on the dispatchers?",
            ))
        }
        Err(_) => Err(error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "the read took over {} s: narrow `since` (a read costs every record written since then)",
                READ_TIMEOUT.as_secs()
            ),
            None,
        )),
    }
}

/// The query's filters from the query string; `(field, why)` when one is bad.
fn parse(raw: &str, caller: &Caller) -> Result<Query, (String, String)> {
    let param = |name: &str| query_param(raw, name).map(decode);
    let now = time::OffsetDateTime::now_utc();
    let time =
        |name: &str, text: &str| history::parse_time(text, now).map_err(|e| (name.to_owned(), e));
    let since = time(
        "since",
        &param("since").unwrap_or_else(|| DEFAULT_SINCE.to_owned()),
    )?;
    let until = param("until").map(|t| time("until", &t)).transpose()?;
    if until.is_some_and(|u| u <= since) {
        return Err(("until".into(), "must be after since".into()));
    }
    let outcome = param("outcome")
        .map(|o| {
            Outcome::parse(&o).ok_or_else(|| {
                (
                    "outcome".to_owned(),
                    format!(
                        "is not one of {}",
                        Outcome::ALL.map(Outcome::as_str).join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    let status = param("status")
        .map(|s| {
            s.parse::<u16>()
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| ("status".to_owned(), "is not an HTTP status".to_owned()))
        })
        .transpose()?;
    let limit = param("limit")
        .map(|l| {
            l.parse::<usize>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| ("limit".to_owned(), format!("must be 1 to {MAX_LIMIT}")))
        })
        .transpose()?
        .unwrap_or(DEFAULT_LIMIT);
    let tenant = match (param("tenant"), caller) {
        // A tenant token sees only its tenant's attempts, even at an id
        // that another tenant used before (ids are freed by a delete).
        (_, Caller::Tenant(own)) if param("tenant").is_none_or(|t| t == *own) => Some(own.clone()),
        (None, _) => None,
        (Some(t), Caller::Operator) => {
            registry::check_tenant(&t)
                .map_err(|_| ("tenant".to_owned(), "is not a tenant".to_owned()))?;
            Some(t)
        }
        // A tenant token's scope is its own: the parameter cannot widen it.
        (Some(_), Caller::Tenant(_)) => {
            return Err((
                "tenant".into(),
                "a tenant token sees only its own tenant".into(),
            ));
        }
    };
    Ok(Query {
        endpoint: None,
        endpoints_in: None,
        event: None,
        tenant,
        outcome,
        status,
        since,
        until,
        limit,
    })
}

/// An event id as envelopes carry them: 1 to 200 visible ASCII characters.
fn valid_event_id(id: &str) -> bool {
    (1..=200).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Percent-decodes a query value (`+` stays a plus: send `%2B` or `Z`).
fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_checked_and_a_tenant_cannot_widen_its_scope() {
        let op = Caller::Operator;
        let q = parse("", &op).expect("defaults");
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert!(q.since < time::OffsetDateTime::now_utc());
        let q = parse(
            "since=2026-12-03T07%3A00%3A00Z&outcome=retry&status=503&limit=5&tenant=acme",
            &op,
        )
        .expect("valid");
        assert_eq!(
            (q.outcome, q.status, q.limit),
            (Some(Outcome::Retry), Some(503), 5)
        );
        assert_eq!(q.tenant.as_deref(), Some("acme"));
        for (bad, field) in [
            ("since=yesterday", "since"),
            ("since=1h&until=2h", "until"),
            ("outcome=maybe", "outcome"),
            ("status=42", "status"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("tenant=ACME", "tenant"),
        ] {
            assert_eq!(parse(bad, &op).expect_err(bad).0, field, "{bad}");
        }
        let tenant = Caller::Tenant("acme".into());
        assert_eq!(
            parse("tenant=acme", &tenant)
                .expect("own")
                .tenant
                .as_deref(),
            Some("acme")
        );
        assert_eq!(
            parse("", &tenant).expect("own").tenant.as_deref(),
            Some("acme"),
            "a tenant token reads only its tenant's records"
        );
        assert_eq!(
            parse("tenant=globex", &tenant).expect_err("other").0,
            "tenant"
        );
        assert_eq!(decode("a%2Bb%zz"), "a+b%zz");
        assert!(is_attempts_path("/v1/endpoints/crm/attempts"));
        assert!(is_attempts_path("/v1/events/evt_1/attempts"));
        assert!(is_attempts_path("/v1/events/x"));
        assert!(!is_attempts_path("/v1/endpoints/attempts"));
        assert!(!is_attempts_path("/v1/endpoints/crm/secret/rotate"));
        assert!(valid_event_id("evt_01a2"));
        assert!(!valid_event_id("evt 1"));
        assert!(!valid_event_id(""));
    }
}
