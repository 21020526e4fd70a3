//! The dead-letter queue: browse, list, export, import, and replay or purge.
//!
//! Reading (`list`, `stats`, `show`, `export`, dry runs) takes messages with
//! manual acknowledgement and never acks them: closing the channel returns
//! every one to the queue. Changing (`replay`, `purge`) walks the messages
//! present at the start once, and for each one first publishes what replaces
//! it (the replay, or the same message back to the dead-letter queue when it
//! does not match) and waits for the broker's confirm, then acks it. A crash
//! or Ctrl-C at any point therefore loses nothing; at worst one message is
//! both replayed and still in the queue.

pub mod record;
pub mod view;

use crate::Config;
use crate::topology::Topology;
use anyhow::{Context, bail};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use record::Record;
use std::io::Write;
use std::time::Duration;
use view::{DeadLetterView, Filter};

/// Longest a browse waits for the messages it looked at to be back in the
/// queue ([`DeadLetters::until_returned`]).
const RETURN_WAIT: Duration = Duration::from_secs(5);

/// Headers a dead letter carries that a replay removes (it starts afresh).
const DEAD_LETTER_HEADERS: [&str; 10] = crate::contract::header::DEAD_LETTER;

/// What to do with matching dead letters.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send back to their endpoint (or `to`), at most `rate` per second.
    Replay {
        /// Another endpoint to send them to.
        to: Option<String>,
        /// Messages per second.
        rate: Option<f64>,
    },
    /// Delete.
    Purge,
}

/// The highest replay rate, in messages per second. A replay handles one
/// message at a time (get, publish, confirm, ack), well below this; the cap
/// keeps the pause between messages a non-zero duration.
pub const MAX_REPLAY_RATE: f64 = 100_000.0;

/// The pause between replayed messages at `rate` messages per second.
///
/// # Errors
/// A message for `--rate` when `rate` is not a number above 0 and at most
/// [`MAX_REPLAY_RATE`], or so low that the pause does not fit a `Duration`.
pub fn replay_interval(rate: f64) -> Result<Duration, String> {
    let bad = || {
        format!(
            "--rate must be a number of messages per second above 0 and at most {MAX_REPLAY_RATE} (got {rate})"
        )
    };
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_REPLAY_RATE) {
        return Err(bad());
    }
    match Duration::try_from_secs_f64(1.0 / rate) {
        Ok(pause) if !pause.is_zero() => Ok(pause),
        _ => Err(bad()),
    }
}

/// What a replay or purge did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Messages that matched and were acted on.
    pub done: usize,
    /// Messages kept (not matching, over the limit, or failed).
    pub kept: usize,
    /// Matching messages that could not be replayed (kept in the queue).
    pub failed: usize,
}

/// The dead-letter queue of one installation, on a connection.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetters<'a> {
    conn: &'a Connection,
    topology: &'a Topology,
    config: &'a Config,
    /// Most messages one walk takes (`None`: all present at its start).
    walk_cap: Option<usize>,
}

impl<'a> DeadLetters<'a> {
    /// The dead-letter queue `topology` names, through `conn`.
    pub fn new(conn: &'a Connection, topology: &'a Topology, config: &'a Config) -> Self {
        Self {
            conn,
            topology,
            config,
            walk_cap: None,
        }
    }

    /// The same, each walk ([`Self::browse`], [`Self::apply`]) taking at
    /// most the first `n` messages of the queue (the rest are not looked at).
    #[must_use]
    pub fn walking_at_most(mut self, n: usize) -> Self {
        self.walk_cap = Some(n);
        self
    }

    /// How many messages a walk takes: those present now, up to the cap.
    async fn walk_len(&self) -> anyhow::Result<u32> {
        let total = self.dead_depth().await?;
        Ok(self.capped(total))
    }

    fn capped(&self, total: u32) -> u32 {
        match self.walk_cap {
            Some(cap) => total.min(u32::try_from(cap).unwrap_or(u32::MAX)),
            None => total,
        }
    }

    /// Waits, at most [`RETURN_WAIT`], until the queue holds `depth` ready
    /// messages again. The broker puts the messages of a closed channel
    /// back in the background: without the wait, a command run right after
    /// a browse could find some of them missing (and, say, report that no
    /// dead letter matches). Someone else taking messages meanwhile only
    /// makes it wait the bound out.
    async fn until_returned(&self, depth: u32) {
        let dead = self.topology.dead();
        let deadline = tokio::time::Instant::now() + RETURN_WAIT;
        while tokio::time::Instant::now() < deadline {
            match crate::amqp::queue_counts(self.conn, &dead).await {
                Ok(Some((ready, _))) if ready < depth => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return,
            }
        }
    }

    async fn dead_depth(&self) -> anyhow::Result<u32> {
        let dead = self.topology.dead();
        crate::amqp::queue_counts(self.conn, &dead)
            .await
            .with_context(|| format!("checking queue {dead}"))?
            .map(|(n, _)| n)
            .with_context(|| {
                format!(
                    "queue {} does not exist; run `hookpost-admin topology declare`",
                    self.topology.dead()
                )
            })
    }

    /// Calls `visit` for each dead letter present now (without removing any).
    ///
    /// # Errors
    /// A broker error.
    pub async fn browse(
        &self,
        mut visit: impl FnMut(&BasicGetMessage, &DeadLetterView),
    ) -> anyhow::Result<()> {
        let depth = self.dead_depth().await?;
        let total = self.capped(depth);
        let ch = crate::amqp::open_channel(self.conn).await?;
        let queue = self.topology.dead();
        for _ in 0..total {
            let Some((msg, view)) = self.take(&ch, &queue).await? else {
                break;
            };
            visit(&msg, &view);
        }
        // Never acked: closing the channel returns every message to the queue.
        ch.close(200, "browsed".into()).await?;
        self.until_returned(depth).await;
        Ok(())
    }

    /// Dead letters matching `filter`, at most `limit`.
    ///
    /// # Errors
    /// A broker error.
    pub async fn list(
        &self,
        filter: &Filter,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<DeadLetterView>> {
        let mut out = Vec::new();
        self.browse(|_, view| {
            if filter.matches(view) && limit.is_none_or(|l| out.len() < l) {
                out.push(view.clone());
            }
        })
        .await?;
        Ok(out)
    }

    /// Export records of the dead letters matching `filter`.
    ///
    /// # Errors
    /// A broker error.
    pub async fn export(
        &self,
        filter: &Filter,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<Record>> {
        let mut out = Vec::new();
        self.browse(|msg, view| {
            if filter.matches(view) && limit.is_none_or(|l| out.len() < l) {
                out.push(Record::new(
                    view.id.clone(),
                    msg.delivery.routing_key.to_string(),
                    msg.delivery.properties.clone(),
                    &msg.delivery.data,
                ));
            }
        })
        .await?;
        Ok(out)
    }

    /// Publishes records into the dead-letter queue, each confirmed.
    ///
    /// # Errors
    /// A broker error or refusal, naming the record; earlier ones stay imported.
    pub async fn import(&self, records: &[Record]) -> anyhow::Result<usize> {
        let ch = self.confirm_channel().await?;
        for (i, record) in records.iter().enumerate() {
            let body = record.body().with_context(|| {
                format!(
                    "record {} ({}): body_base64 is not base64",
                    i + 1,
                    record.id
                )
            })?;
            crate::amqp::publish_confirmed(
                &ch,
                &self.topology.dead(),
                &record.routing_key,
                &body,
                record.properties.clone(),
            )
            .await
            .with_context(|| format!("importing record {} ({})", i + 1, record.id))?;
        }
        ch.close(200, "imported".into()).await?;
        Ok(records.len())
    }

    /// Replays or purges the dead letters matching `filter` (at most `limit`),
    /// writing a line per message acted on to `out`.
    ///
    /// # Errors
    /// An unknown `--to-endpoint`, or a broker error (nothing is lost: the
    /// message being handled stays in the queue).
    pub async fn apply(
        &self,
        filter: &Filter,
        limit: Option<usize>,
        action: &Action,
        out: &mut (dyn Write + Send),
    ) -> anyhow::Result<Report> {
        if let Action::Replay { to: Some(to), .. } = action
            && self.config.endpoint(to).is_none()
        {
            bail!(
                "unknown endpoint {to:?} (--to-endpoint): it is not in {}",
                self.config.origin.display()
            );
        }
        let total = self.walk_len().await?;
        let ch = self.confirm_channel().await?;
        let queue = self.topology.dead();
        let mut report = Report::default();
        let mut pace = match action {
            Action::Replay {
                rate: Some(rate), ..
            } => {
                let pause = replay_interval(*rate).map_err(anyhow::Error::msg)?;
                let mut i = tokio::time::interval(pause);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(i)
            }
            _ => None,
        };
        for _ in 0..total {
            let Some((msg, view)) = self.take(&ch, &queue).await? else {
                break;
            };
            let selected = filter.matches(&view) && limit.is_none_or(|l| report.done < l);
            let handled = match (selected, action) {
                (false, _) => false,
                (true, Action::Purge) => {
                    writeln!(
                        out,
                        "purged {} ({}, {})",
                        view.id, view.endpoint, view.reason
                    )?;
                    true
                }
                (true, Action::Replay { to, .. }) => {
                    let target = to.clone().unwrap_or_else(|| view.endpoint.clone());
                    if let Some(pace) = pace.as_mut() {
                        pace.tick().await;
                    }
                    match self.bounded(self.replay_one(&ch, &msg, &target)).await? {
                        Ok(()) => {
                            writeln!(out, "replayed {} -> {target}", view.id)?;
                            true
                        }
                        Err(e) => {
                            writeln!(out, "kept {}: {e:#}", view.id)?;
                            report.failed += 1;
                            false
                        }
                    }
                }
            };
            if handled {
                report.done += 1;
            } else {
                // Not for us: back to the end of the queue, in the order met.
                self.bounded(crate::amqp::publish_confirmed(
                    &ch,
                    &queue,
                    msg.delivery.routing_key.as_str(),
                    &msg.delivery.data,
                    msg.delivery.properties.clone(),
                ))
                .await??;
                report.kept += 1;
            }
            self.bounded(msg.delivery.acker.ack(BasicAckOptions::default()))
                .await??;
        }
        self.bounded(ch.close(200, "done".into())).await??;
        Ok(report)
    }

    /// The next message of `queue`, unacked, with its view; `None` when
    /// the queue is empty.
    async fn take(
        &self,
        ch: &Channel,
        queue: &str,
    ) -> anyhow::Result<Option<(BasicGetMessage, DeadLetterView)>> {
        let got = self
            .bounded(ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }))
            .await??;
        Ok(got.map(|msg| {
            let view = DeadLetterView::of(
                &msg.delivery.properties,
                &msg.delivery.data,
                self.topology.prefix(),
            );
            (msg, view)
        }))
    }

    /// Runs one broker step of [`DeadLetters::apply`], failing at once when the
    /// broker blocks the connection (a memory or disk alarm: lapin then
    /// sends nothing, so the step would never end) and after
    /// `amqp.publish_timeout_ms`. The unacked message being handled goes back
    /// to the queue when the connection closes.
    async fn bounded<T>(&self, step: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
        let timeout = self.config.amqp.publish_timeout;
        let blocked = async {
            while !self.conn.status().blocked() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            done = tokio::time::timeout(timeout, step) => done.map_err(|_| {
                anyhow::anyhow!("no answer from the broker within {timeout:?}; stopped (the message being handled stays in the queue)")
            }),
            () = blocked => bail!("the broker is blocking this connection (memory or disk alarm); stopped (the message being handled stays in the queue)"),
        }
    }

    async fn replay_one(
        &self,
        ch: &Channel,
        msg: &BasicGetMessage,
        endpoint: &str,
    ) -> anyhow::Result<()> {
        if endpoint.is_empty() {
            bail!("the message names no endpoint; use --to-endpoint");
        }
        let mut headers = FieldTable::default();
        let original = msg
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        for (k, v) in original.inner() {
            if !DEAD_LETTER_HEADERS.contains(&k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
        let properties = crate::amqp::republished_properties(&msg.delivery.properties, headers);
        crate::amqp::publish_confirmed(
            ch,
            &self.topology.endpoints_exchange(),
            endpoint,
            &msg.delivery.data,
            properties,
        )
        .await
        .with_context(|| {
            format!("no queue for endpoint {endpoint:?} (is a dispatcher declaring it?)")
        })
    }

    async fn confirm_channel(&self) -> anyhow::Result<Channel> {
        let ch = crate::amqp::open_channel(self.conn).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(ch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_interval_is_never_zero_and_bad_rates_are_refused() {
        assert_eq!(replay_interval(5.0), Ok(Duration::from_millis(200)));
        assert_eq!(replay_interval(0.5), Ok(Duration::from_secs(2)));
        assert_eq!(
            replay_interval(MAX_REPLAY_RATE),
            Ok(Duration::from_micros(10))
        );
        for bad in [
            3e9,
            MAX_REPLAY_RATE * 1.01,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
        ] {
            let err = replay_interval(bad).expect_err("refused");
            assert!(err.contains("--rate"), "{err}");
        }
    }

    /// The interval the replay loop builds from any accepted rate is usable.
    #[tokio::test(start_paused = true)]
    async fn replay_pacing_accepts_the_extremes() {
        for rate in [MAX_REPLAY_RATE, 1e-6] {
            let mut pace = tokio::time::interval(replay_interval(rate).unwrap());
            pace.tick().await;
        }
    }
}
