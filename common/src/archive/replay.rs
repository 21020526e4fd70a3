//! Sending archived events again: every event archived in a window that an
//! endpoint subscribes to goes to its queue once more, with its id, at a
//! bounded rate. `hookpost-admin replay` and the API's replays run it.
//!
//! Which events an endpoint takes is the broker's own rule, run here on each
//! archived event: the endpoint's binding keys (`routing::binding_keys`, an
//! environment's variant `<id>~<env>` included) against the key the event
//! was published with (`routing::route`). So a replay never gives an
//! endpoint another tenant's events, and each event goes to the variant of
//! its environment.

use super::Archived;
use crate::config::Endpoint;
use crate::history::{Cursor, Step};
use crate::routing::{Exchange, topic_matches};
use crate::topology::Topology;
use lapin::PublisherConfirm;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Confirmation, Connection};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The highest replay rate, in events per second.
pub const MAX_RATE: f64 = 10_000.0;
/// The rate of a replay that names none (or less: the endpoint's rate limit).
pub const DEFAULT_RATE: f64 = 500.0;
/// Replayed events whose confirm may be outstanding at once.
const WINDOW: usize = 256;
/// The longest wait for the broker's confirm of a replayed event.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a running replay reports its progress.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What to replay.
#[derive(Debug, Clone)]
pub struct Request {
    /// Events archived at or after this.
    pub since: OffsetDateTime,
    /// Events archived before this; `None` (and anything later): when the
    /// replay starts. Events published after that are delivered anyway.
    pub until: Option<OffsetDateTime>,
    /// Only events whose type matches this pattern (`*`, `#`).
    pub event_type: Option<String>,
    /// Only events of this tenant.
    pub tenant: Option<String>,
    /// Events per second, at most [`MAX_RATE`].
    pub rate: f64,
    /// Count what would be sent, send nothing.
    pub dry_run: bool,
}

/// Where a replay stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Archived events read.
    pub scanned: u64,
    /// Events in the window that the endpoint takes (and the filters match).
    pub matched: u64,
    /// Events sent again, confirmed by the broker (0 on a dry run).
    pub sent: u64,
    /// When the last event read was archived (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// The replay read its whole window.
    pub finished: bool,
}

/// What a running replay tells its caller.
#[derive(Debug)]
pub enum Note<'a> {
    /// Where it stands (about every [`REPORT_EVERY`], and at the end).
    Progress(&'a Progress),
    /// One event sent (confirmed by the broker), or on a dry run one that
    /// would be: its id and the queue (endpoint or variant id) it went to.
    Sent { event_id: &'a str, queue: &'a str },
}

/// The endpoint a replay sends to: its queues (the endpoint's and each
/// environment's) with the keys they are bound with.
#[derive(Debug, Clone)]
pub struct Target {
    queues: Vec<(String, Vec<(Exchange, String)>)>,
    rate_limit: Option<f64>,
}

impl Target {
    /// The target of an endpoint's runtime endpoints (`Endpoint::into_runtime`).
    pub fn new(runtime: &[Endpoint]) -> Self {
        let queues = runtime
            .iter()
            .map(|e| {
                let keys = e
                    .binding_keys()
                    .into_iter()
                    .map(|k| (Exchange::of_key(&k), k))
                    .collect();
                (e.id.clone(), keys)
            })
            .collect();
        let rate_limit = runtime
            .first()
            .and_then(|e| e.rate_limit.as_ref())
            .map(|r| f64::from(r.per_s));
        Self { queues, rate_limit }
    }

    /// The queue (runtime endpoint id) that takes `event`, if any.
    pub fn queue_for(&self, event: &crate::Event) -> Option<&str> {
        let (exchange, key) = event.route();
        self.queues
            .iter()
            .find(|(_, keys)| {
                keys.iter()
                    .any(|(x, pattern)| *x == exchange && topic_matches(pattern, &key))
            })
            .map(|(id, _)| id.as_str())
    }

    /// `rate`, or the endpoint's rate limit when that is lower.
    pub fn pace(&self, rate: f64) -> f64 {
        self.rate_limit.map_or(rate, |limit| rate.min(limit))
    }
}

/// Checks a replay rate.
///
/// # Errors
/// A message naming the bounds.
pub fn check_rate(rate: f64) -> Result<f64, String> {
    if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE {
        Ok(rate)
    } else {
        Err(format!(
            "rate must be a number of events per second above 0 and at most {MAX_RATE} (got {rate})"
        ))
    }
}

/// `t` without its sub-millisecond part: archive times are milliseconds.
fn floor_ms(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}

/// Whether `archived` is in `request`'s window (to the millisecond) and filters.
fn selected(request: &Request, until: OffsetDateTime, archived: &Archived) -> bool {
    archived.archived_at >= floor_ms(request.since)
        && archived.archived_at < floor_ms(until)
        && request
            .event_type
            .as_ref()
            .is_none_or(|p| topic_matches(p, &archived.event.event_type))
        && request
            .tenant
            .as_ref()
            .is_none_or(|t| archived.event.tenant.as_ref() == Some(t))
}

/// When the `n`th event (from 0) may go at `rate` per second from `start`.
fn due(start: Instant, n: u64, rate: f64) -> Instant {
    #[allow(clippy::cast_precision_loss)]
    let secs = n as f64 / rate;
    start + Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX / 4)
}

/// Runs a replay of `request` into `target`, telling `report` of each event
/// sent and of the progress about every [`REPORT_EVERY`] and once at the
/// end, until the window is read or `cancel` fires.
///
/// # Errors
/// The archive does not exist, a broker error, or an endpoint queue that
/// does not exist (the broker returned an event). What was sent before stays
/// sent; the progress says how far it got.
pub async fn run(
    conn: &Connection,
    topology: &Topology,
    target: &Target,
    request: &Request,
    cancel: &CancellationToken,
    report: &mut (dyn FnMut(Note<'_>) + Send),
) -> anyhow::Result<Progress> {
    let rate = target.pace(check_rate(request.rate).map_err(anyhow::Error::msg)?);
    let now = OffsetDateTime::now_utc();
    let until = request.until.map_or(now, |u| u.min(now));
    let mut cursor = Cursor::open(
        conn,
        &topology.archive(),
        request.since,
        Some(until),
        "the archive is created by the first publisher or dispatcher with archive.enabled",
    )
    .await?;
    let ch = crate::amqp::open_channel(conn).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange = topology.endpoints_exchange();
    let mut progress = Progress::default();
    let mut pending: VecDeque<(PublisherConfirm, String, String)> = VecDeque::new();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let result = async {
        'read: loop {
            if cancel.is_cancelled() {
                break;
            }
            let delivery = match cursor.next().await? {
                None | Some(Step::CaughtUp) => {
                    progress.finished = true;
                    break;
                }
                Some(Step::Message(d)) => d,
            };
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            if let Some(at) = Archived::time(&headers) {
                progress.position = at
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok();
            }
            for archived in Archived::read(&delivery.properties, &delivery.data) {
                progress.scanned += 1;
                if last_report.elapsed() >= REPORT_EVERY {
                    report(Note::Progress(&progress));
                    last_report = Instant::now();
                }
                if !selected(request, until, &archived) {
                    continue;
                }
                let Some(queue) = target.queue_for(&archived.event) else {
                    continue;
                };
                progress.matched += 1;
                if request.dry_run {
                    report(Note::Sent {
                        event_id: &archived.event.id,
                        queue,
                    });
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(due(started, progress.matched - 1, rate)) => {}
                    () = cancel.cancelled() => break 'read,
                }
                let event = &archived.event;
                let properties = crate::amqp::event_properties(event);
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        queue.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &archived.body,
                        properties,
                    )
                    .await?;
                pending.push_back((confirm, event.id.clone(), queue.to_owned()));
                while pending.len() >= WINDOW {
                    settle(pending.pop_front(), &mut progress, report).await?;
                }
            }
        }
        while !pending.is_empty() {
            settle(pending.pop_front(), &mut progress, report).await?;
        }
        anyhow::Ok(())
    }
    .await;
    cursor.close().await;
    let _ = ch.close(200, "replayed".into()).await;
    report(Note::Progress(&progress));
    result.map(|()| progress)
}

/// Waits for one replayed event's confirm.
async fn settle(
    confirm: Option<(PublisherConfirm, String, String)>,
    progress: &mut Progress,
    report: &mut (dyn FnMut(Note<'_>) + Send),
) -> anyhow::Result<()> {
    let Some((confirm, event_id, queue)) = confirm else {
        return Ok(());
    };
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Err(_) => {
            anyhow::bail!("the broker did not confirm a replayed event within {CONFIRM_TIMEOUT:?}")
        }
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
            progress.sent += 1;
            report(Note::Sent {
                event_id: &event_id,
                queue: &queue,
            });
            Ok(())
        }
        Ok(Ok(Confirmation::Ack(Some(returned)))) => anyhow::bail!(
            "the endpoint's queue does not exist ({}): has a dispatcher declared it?",
            returned.reply_text
        ),
        Ok(Ok(Confirmation::Nack(_))) => anyhow::bail!("the broker refused a replayed event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(toml_extra: &str) -> Vec<Endpoint> {
        let text = format!(
            "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[[endpoints]]\nid = \"crm\"\nurl = \"http://127.0.0.1:9/\"\nevents = [\"order.*\"]\n{toml_extra}"
        );
        let config = crate::Config::from_toml_str(&text, "t.toml".as_ref(), &[]).expect("config");
        config.endpoints
    }

    fn archived(
        event_type: &str,
        tenant: Option<&str>,
        env: Option<&str>,
        at: OffsetDateTime,
    ) -> Archived {
        let event = crate::Event::new(event_type, serde_json::json!({}))
            .expect("event")
            .with_scope(tenant, env)
            .expect("scope");
        Archived {
            body: event.to_vec(),
            event,
            archived_at: at,
        }
    }

    #[test]
    fn the_target_takes_what_its_bindings_take() {
        let at = time::macros::datetime!(2026-12-03 10:00 UTC);
        let global = Target::new(&endpoint(""));
        assert_eq!(
            global.queue_for(&archived("order.created", None, None, at).event),
            Some("crm")
        );
        assert_eq!(
            global.queue_for(&archived("user.created", None, None, at).event),
            None
        );
        // A global endpoint takes every tenant's events without an environment.
        assert_eq!(
            global.queue_for(&archived("order.paid", Some("acme"), None, at).event),
            Some("crm")
        );
        assert_eq!(
            global.queue_for(&archived("order.paid", Some("acme"), Some("sandbox"), at).event),
            None
        );
        let tenant = Target::new(&endpoint("tenant = \"acme\"\n"));
        assert_eq!(
            tenant.queue_for(&archived("order.paid", Some("acme"), None, at).event),
            Some("crm")
        );
        assert_eq!(
            tenant.queue_for(&archived("order.paid", Some("other"), None, at).event),
            None
        );
        assert_eq!(
            tenant.queue_for(&archived("order.paid", None, None, at).event),
            None
        );
    }

    #[test]
    fn the_window_and_filters_select() {
        let since = time::macros::datetime!(2026-12-03 10:00 UTC);
        let until = since + Duration::from_secs(3600);
        let request = Request {
            since,
            until: Some(until),
            event_type: Some("order.#".into()),
            tenant: Some("acme".into()),
            rate: 10.0,
            dry_run: false,
        };
        let inside = since + Duration::from_secs(60);
        assert!(selected(
            &request,
            until,
            &archived("order.paid", Some("acme"), None, inside)
        ));
        assert!(selected(
            &request,
            until,
            &archived("order.paid", Some("acme"), None, since)
        ));
        assert!(!selected(
            &request,
            until,
            &archived("order.paid", Some("acme"), None, until)
        ));
        assert!(!selected(
            &request,
            until,
            &archived(
                "order.paid",
                Some("acme"),
                None,
                since - Duration::from_secs(1)
            )
        ));
        assert!(!selected(
            &request,
            until,
            &archived("user.paid", Some("acme"), None, inside)
        ));
        assert!(!selected(
            &request,
            until,
            &archived("order.paid", Some("other"), None, inside)
        ));
        assert!(!selected(
            &request,
            until,
            &archived("order.paid", None, None, inside)
        ));
    }

    #[test]
    fn rates_are_checked_and_capped_by_the_endpoint() {
        assert!(check_rate(0.0).is_err());
        assert!(check_rate(f64::NAN).is_err());
        assert!(check_rate(MAX_RATE + 1.0).is_err());
        assert_eq!(check_rate(5.0), Ok(5.0));
        let limited = Target::new(&endpoint("rate_limit_per_s = 20\n"));
        assert!((limited.pace(100.0) - 20.0).abs() < f64::EPSILON);
        assert!((limited.pace(5.0) - 5.0).abs() < f64::EPSILON);
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_due_at_the_rate() {
        let start = Instant::now();
        assert_eq!(due(start, 0, 10.0), start);
        assert_eq!(due(start, 5, 10.0), start + Duration::from_millis(500));
        tokio::time::sleep_until(due(start, 20, 10.0)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
