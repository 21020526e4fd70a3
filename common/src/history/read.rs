//! Reading the attempt log back: attach to `<prefix>.log` at the offset of
//! a timestamp (never the beginning), append an end marker, and read up to
//! it, keeping the newest matching records; or go on past it (`--follow`).

use super::cursor::{Cursor, Step};
use super::{Attempt, Outcome};
use crate::topology::Topology;
use lapin::Connection;
use std::collections::VecDeque;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Which records a query returns. Empty fields match everything.
#[derive(Debug, Clone)]
pub struct Query {
    /// Endpoint id (its environments' variants `<id>~<env>` included).
    pub endpoint: Option<String>,
    /// Only attempts at these endpoints (ids without the `~<env>` of a
    /// variant): what a tenant may see.
    pub endpoints_in: Option<std::collections::BTreeSet<String>>,
    /// Event id.
    pub event: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Outcome.
    pub outcome: Option<Outcome>,
    /// HTTP status.
    pub status: Option<u16>,
    /// Attempts that began at or after this.
    pub since: OffsetDateTime,
    /// Attempts that began before this.
    pub until: Option<OffsetDateTime>,
    /// The most records returned: the newest that match.
    pub limit: usize,
}

impl Query {
    /// Byte strings every matching record's JSON holds, as the writer
    /// serializes it (`"endpoint":"<id>` and `"event_id":"<id>"`, escaped
    /// as JSON): a record without them cannot match.
    fn needles(&self) -> Vec<String> {
        let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut needles = Vec::new();
        if let Some(e) = &self.endpoint {
            // The id, or a variant `<id>~<env>`: the opening quote and the id.
            let q = quoted(e);
            needles.push(format!("\"endpoint\":{}", &q[..q.len() - 1]));
        }
        if let Some(id) = &self.event {
            needles.push(format!("\"event_id\":{}", quoted(id)));
        }
        needles
    }

    /// Whether `a` is one of the records asked for.
    pub fn matches(&self, a: &Attempt) -> bool {
        let Some(started) = a.started() else {
            return false;
        };
        started >= self.since
            && self.until.is_none_or(|u| started < u)
            && self
                .endpoint
                .as_ref()
                .is_none_or(|e| base_id(&a.endpoint) == e)
            && self
                .endpoints_in
                .as_ref()
                .is_none_or(|set| set.contains(base_id(&a.endpoint)))
            && self.event.as_ref().is_none_or(|e| *e == a.event_id)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| Some(t) == a.tenant.as_ref())
            && self.outcome.is_none_or(|o| o == a.outcome)
            && self.status.is_none_or(|s| Some(s) == a.status)
    }
}

/// The endpoint id of a runtime id: `crm` for `crm` and `crm~sandbox`.
fn base_id(runtime_id: &str) -> &str {
    runtime_id
        .split_once(crate::config::VARIANT_SEPARATOR)
        .map_or(runtime_id, |(id, _)| id)
}

/// A live tail: until the token fires, each matching record appended after
/// the read caught up goes to the function.
pub type Follow<'a> = (&'a CancellationToken, &'a mut (dyn FnMut(&Attempt) + Send));

/// What a read went through, for the caller's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Records read (matching or not).
    pub records: u64,
    /// Records that matched (before the limit).
    pub matched: u64,
}

/// Whether `haystack` holds `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// The lines of `data` (records, one per line) that hold every needle, in
/// order: with needles, found by searching the whole body for the first one
/// (most records are not the endpoint's or the event's: they are skipped
/// without being split or parsed); without, every line.
fn candidates<'a>(data: &'a [u8], needles: &[String]) -> Vec<&'a [u8]> {
    let Some((first, rest)) = needles.split_first() else {
        return data.split(|b| *b == b'\n').collect();
    };
    let mut lines = Vec::new();
    let mut next_line = 0;
    for hit in memchr::memmem::find_iter(data, first.as_bytes()) {
        if hit < next_line {
            continue;
        }
        let start = memchr::memrchr(b'\n', &data[..hit]).map_or(0, |i| i + 1);
        let end = memchr::memchr(b'\n', &data[hit..]).map_or(data.len(), |i| hit + i);
        let line = &data[start..end];
        next_line = end + 1;
        if rest.iter().all(|n| contains(line, n.as_bytes())) {
            lines.push(line);
        }
    }
    lines
}

/// Reads the log for `query`: the newest `query.limit` matching records,
/// oldest first. With `follow`, calls `each` for every matching record
/// appended after the read caught up, until `follow` fires.
///
/// # Errors
/// The log does not exist, or a broker error.
pub async fn read(
    conn: &Connection,
    topology: &Topology,
    query: &Query,
    follow: Option<Follow<'_>>,
) -> anyhow::Result<(Vec<Attempt>, Scanned)> {
    let mut cursor = Cursor::open(
        conn,
        &topology.log(),
        query.since,
        query.until,
        "has a dispatcher with the log enabled run?",
    )
    .await?;
    let needles = query.needles();
    let mut newest: VecDeque<Attempt> = VecDeque::new();
    let mut scanned = Scanned::default();
    let mut follow = follow;
    let mut caught_up = false;
    loop {
        let step = match &follow {
            Some((stop, _)) if caught_up => tokio::select! {
                s = cursor.next() => s?,
                () = stop.cancelled() => break,
            },
            _ => cursor.next().await?,
        };
        let delivery = match step {
            None => break,
            Some(Step::CaughtUp) => {
                caught_up = true;
                if follow.is_none() {
                    break;
                }
                continue;
            }
            Some(Step::Message(delivery)) => delivery,
        };
        // A message holds one record per line (compressed, as dispatchers write it).
        let Some(data) = super::unpacked_message(&delivery.properties, &delivery.data) else {
            continue;
        };
        scanned.records += memchr::memchr_iter(b'\n', &data).count() as u64 + 1;
        for line in candidates(&data, &needles) {
            let Ok(attempt) = serde_json::from_slice::<Attempt>(line) else {
                continue;
            };
            if !query.matches(&attempt) {
                continue;
            }
            scanned.matched += 1;
            if caught_up {
                if let Some((_, each)) = follow.as_mut() {
                    each(&attempt);
                }
                continue;
            }
            newest.push_back(attempt);
            if newest.len() > query.limit {
                newest.pop_front();
            }
        }
    }
    cursor.close().await;
    Ok((newest.into(), scanned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(endpoint: &str, status: Option<u16>, at: &str) -> Attempt {
        Attempt {
            event_id: "evt_1".into(),
            event_type: "order.created".into(),
            tenant: Some("acme".into()),
            environment: None,
            endpoint: endpoint.into(),
            attempt: 1,
            started_at: at.into(),
            duration_ms: 3,
            outcome: Outcome::Retry,
            status,
            error: None,
            response: None,
        }
    }

    #[test]
    fn a_query_matches_on_every_field_it_sets_and_the_window() {
        let since = time::macros::datetime!(2026-12-03 07:00 UTC);
        let q = Query {
            endpoint: Some("crm".into()),
            endpoints_in: None,
            event: None,
            tenant: Some("acme".into()),
            outcome: Some(Outcome::Retry),
            status: Some(503),
            since,
            until: Some(since + std::time::Duration::from_secs(3600)),
            limit: 10,
        };
        assert!(q.matches(&attempt("crm", Some(503), "2026-12-03T07:30:00Z")));
        assert!(!q.matches(&attempt("erp", Some(503), "2026-12-03T07:30:00Z")));
        assert!(!q.matches(&attempt("crm", Some(500), "2026-12-03T07:30:00Z")));
        assert!(!q.matches(&attempt("crm", None, "2026-12-03T07:30:00Z")));
        assert!(!q.matches(&attempt("crm", Some(503), "2026-12-03T06:59:59Z")));
        assert!(!q.matches(&attempt("crm", Some(503), "2026-12-03T08:00:00Z")));
        assert!(!q.matches(&attempt("crm", Some(503), "not a time")));
        let mut other = attempt("crm", Some(503), "2026-12-03T07:30:00Z");
        other.tenant = None;
        assert!(!q.matches(&other));
        // An endpoint's environments are the endpoint's.
        assert!(q.matches(&attempt("crm~sandbox", Some(503), "2026-12-03T07:30:00Z")));
        assert!(!q.matches(&attempt("crmx", Some(503), "2026-12-03T07:30:00Z")));
        let scoped = Query {
            endpoint: None,
            endpoints_in: Some(["shop".to_owned()].into()),
            ..q
        };
        assert!(scoped.matches(&attempt("shop~live", Some(503), "2026-12-03T07:30:00Z")));
        assert!(!scoped.matches(&attempt("crm", Some(503), "2026-12-03T07:30:00Z")));
        // The prefilter never drops a record the query matches.
        let line = serde_json::to_vec(&attempt("crm~sandbox", Some(503), "2026-12-03T07:30:00Z"))
            .expect("json");
        let by = Query {
            endpoint: Some("crm".into()),
            event: Some("evt_1".into()),
            ..scoped
        };
        assert!(by.needles().iter().all(|n| contains(&line, n.as_bytes())));
        let odd = Query {
            event: Some("evt_\"q\"".into()),
            ..by.clone()
        };
        let mut quoted = attempt("crm", Some(503), "2026-12-03T07:30:00Z");
        quoted.event_id = "evt_\"q\"".into();
        let line = serde_json::to_vec(&quoted).expect("json");
        assert!(odd.needles().iter().all(|n| contains(&line, n.as_bytes())));
        assert!(
            !by.needles()
                .iter()
                .all(|n| contains(b"{\"event_id\":\"evt_2\"}", n.as_bytes()))
        );
        // Candidates: the lines holding every needle, each once, in order.
        let needles = vec!["\"e\":\"a".to_owned(), "\"n\":1".to_owned()];
        let body = b"{\"e\":\"a\",\"n\":1,\"x\":\"\\\"e\\\":\\\"a\"}\n{\"e\":\"b\",\"n\":1}\n{\"e\":\"ab\",\"n\":1}\n{\"e\":\"a\",\"n\":2}";
        let found = candidates(body, &needles);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with(b"{\"e\":\"a\",\"n\":1"));
        assert!(found[1].starts_with(b"{\"e\":\"ab\""));
        assert_eq!(candidates(b"x\ny", &[]).len(), 2);
    }
}
