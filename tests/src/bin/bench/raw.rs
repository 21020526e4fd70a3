//! The ceilings: the raw broker (publish and consume without hookpost) and
//! raw HTTP (the counting receiver without a broker).

use crate::report::*;
use crate::sink::*;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::Arc;

use std::time::{Duration, Instant};
use tests::{Scope, amqp_url};

/// How a raw publisher keeps publishes in flight (BENCHMARKS.md, "Issue 15":
/// `raw-variants` measures each, the fastest is [`FASTEST`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Method {
    /// Await each `basic_publish` (its frames written) before the next, with
    /// up to `window` confirms outstanding: the ceiling before issue 15.
    pub(crate) sequential: bool,
    /// Publishes without a confirm, per channel.
    pub(crate) window: usize,
    /// Channels, each on its own connection when `connections`, else all on one.
    pub(crate) channels: usize,
    pub(crate) connections: bool,
    /// Each message as hookpost's publisher sends it (`mandatory`, the
    /// event's properties): what that costs the broker, apart from the client.
    pub(crate) hookpost_message: bool,
}

impl Method {
    pub(crate) fn name(&self) -> String {
        format!(
            "{} sends, window {}, {} channel{}{}",
            if self.sequential {
                "sequential"
            } else {
                "concurrent"
            },
            self.window,
            self.channels,
            if self.channels == 1 { "" } else { "s" },
            if self.connections && self.channels > 1 {
                " on their own connections"
            } else {
                ""
            },
        ) + if self.hookpost_message {
            ", mandatory with hookpost's properties"
        } else {
            ""
        }
    }
}

/// One channel, concurrent sends, window 1,000, a plain message: the base
/// the other variants change one thing of.
const CONCURRENT: Method = Method {
    sequential: false,
    window: 1000,
    channels: 1,
    connections: false,
    hookpost_message: false,
};

/// The variants `raw-variants` measures.
pub(crate) const METHODS: &[Method] = &[
    Method {
        sequential: true,
        ..CONCURRENT
    },
    CONCURRENT,
    Method {
        window: 5000,
        ..CONCURRENT
    },
    Method {
        channels: 4,
        ..CONCURRENT
    },
    Method {
        channels: 4,
        connections: true,
        ..CONCURRENT
    },
    Method {
        hookpost_message: true,
        ..CONCURRENT
    },
];

/// The fastest of [`METHODS`] in the session BENCHMARKS.md records first
/// (one channel, concurrent sends); it feeds the raw pipeline. The
/// publisher-alone comparison takes the fastest of [`CEILING_CANDIDATES`]
/// instead (since session 33: four channels had become the faster).
pub(crate) const FASTEST: Method = METHODS[1];

/// The methods the raw broker ceiling is measured with; the fastest in the
/// run is the ceiling (one channel and four connections have each been the
/// fastest in some run).
pub(crate) const CEILING_CANDIDATES: &[Method] = &[METHODS[1], METHODS[3], METHODS[4]];

/// Publishes `n` events of `size` bytes to `exchange` by `method`, each
/// persistent and confirmed; returns the seconds it took.
pub(crate) async fn raw_publish(
    exchange: &str,
    n: usize,
    size: usize,
    method: Method,
) -> anyhow::Result<f64> {
    let body = Arc::new(event(size).to_vec());
    let mut connections =
        vec![Connection::connect(&amqp_url(), ConnectionProperties::default()).await?];
    let mut channels = Vec::new();
    for i in 0..method.channels {
        if method.connections && i > 0 {
            connections
                .push(Connection::connect(&amqp_url(), ConnectionProperties::default()).await?);
        }
        let ch = connections
            .last()
            .expect("a connection")
            .create_channel()
            .await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ch) in channels.into_iter().enumerate() {
        let count = n / method.channels + usize::from(i < n % method.channels);
        let (exchange, body) = (exchange.to_owned(), body.clone());
        tasks.spawn(publish_on(ch, exchange, body, count, method));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    for c in connections {
        // Bounded: a close whose answer lapin never hands back held a run
        // for good once (session 33); the publishes were all confirmed.
        let _ = tokio::time::timeout(Duration::from_secs(10), c.close(200, "bye".into())).await;
    }
    Ok(seconds)
}

async fn publish_on(
    ch: Channel,
    exchange: String,
    body: Arc<Vec<u8>>,
    count: usize,
    method: Method,
) -> anyhow::Result<()> {
    let (options, properties) = if method.hookpost_message {
        let event = event(body.len());
        (
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            common::amqp::event_properties(&event),
        )
    } else {
        (
            BasicPublishOptions::default(),
            BasicProperties::default().with_delivery_mode(2),
        )
    };
    let publish = |ch: Channel, exchange: String, body: Arc<Vec<u8>>| {
        let properties = properties.clone();
        async move {
            ch.basic_publish(
                exchange.as_str().into(),
                "bench.event".into(),
                options,
                &body,
                properties,
            )
            .await
        }
    };
    if method.sequential {
        let mut pending = std::collections::VecDeque::new();
        for _ in 0..count {
            if pending.len() >= method.window {
                let c: lapin::PublisherConfirm = pending.pop_front().expect("pending");
                anyhow::ensure!(c.await?.is_ack(), "nack");
            }
            pending.push_back(publish(ch.clone(), exchange.clone(), body.clone()).await?);
        }
        for c in pending {
            anyhow::ensure!(c.await?.is_ack(), "nack");
        }
        return Ok(());
    }
    // Concurrent: each publish is one future (frames written, then its
    // confirm), `window` of them polled together.
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= method.window
            && let Some(done) = in_flight.next().await
        {
            let done: lapin::Result<lapin::Confirmation> = done;
            anyhow::ensure!(done?.is_ack(), "nack");
        }
        let p = publish(ch.clone(), exchange.clone(), body.clone());
        in_flight.push(async move { p.await?.await });
    }
    while let Some(done) = in_flight.next().await {
        anyhow::ensure!(done?.is_ack(), "nack");
    }
    Ok(())
}

/// Each of [`METHODS`] publishing into a quorum queue of its own, no consumer.
pub(crate) async fn raw_variants(n: usize, size: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for method in METHODS {
        let scope = Scope::new().await;
        let exchange = format!("{}.raw", scope.prefix);
        scope.quorum_queue_behind(&exchange).await;
        broker_quiet().await;
        let mark = CpuMark::now();
        let seconds = raw_publish(&exchange, n, size, *method).await?;
        rows.push(progress_of(mark.filled(Row {
            scenario: format!("raw publish only: {}", method.name()),
            events: n,
            seconds,
            events_per_s: n as f64 / seconds,
            ..Row::default()
        })));
    }
    Ok(rows)
}

/// The ceiling: [`raw_broker`] by each of [`CEILING_CANDIDATES`]; the
/// fastest row, noting the others.
pub(crate) async fn raw_broker_best(n: usize, size: usize) -> anyhow::Result<Row> {
    let mut rows = Vec::new();
    for method in CEILING_CANDIDATES {
        rows.push(raw_broker(n, size, *method).await?);
    }
    let notes = rows
        .iter()
        .map(|r| format!("{}: {:.0}/s", r.scenario, r.events_per_s))
        .collect::<Vec<_>>()
        .join("; ");
    let mut best = rows
        .into_iter()
        .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s))
        .ok_or_else(|| anyhow::anyhow!("no ceiling candidates"))?;
    best.notes = Some(format!("fastest of: {notes}"));
    Ok(best)
}

/// Publish through a topic exchange by `method` and consume with manual
/// acks (every 100th acks the ones before it), at once.
pub(crate) async fn raw_broker(n: usize, size: usize, method: Method) -> anyhow::Result<Row> {
    raw_broker_into(n, size, method, false, None).await
}

/// The raw broker with its consumer held to `rates` (events/s), each
/// alternated with an unpaced round: what a backlog (a consumer slower than
/// its publisher, as hookpost's dispatcher is at batch 1) costs the broker.
pub(crate) async fn raw_backlog(n: usize, size: usize, rates: &[u32]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for rate in rates {
        rows.push(progress_of(
            raw_broker_into(n, size, CONCURRENT, false, None).await?,
        ));
        rows.push(progress_of(
            raw_broker_into(n, size, CONCURRENT, false, Some(*rate)).await?,
        ));
    }
    Ok(rows)
}

/// [`raw_broker`], into a queue with a hookpost endpoint queue's arguments
/// (at-least-once dead-lettering, `reject-publish`, a delivery limit) when
/// `endpoint_args`.
async fn raw_broker_into(
    n: usize,
    size: usize,
    method: Method,
    endpoint_args: bool,
    pace: Option<u32>,
) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let exchange = format!("{}.raw", scope.prefix);
    let queue = scope
        .quorum_queue_with_args_behind(&exchange, queue_args(&exchange, endpoint_args))
        .await;
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let mut consumer = consume_with_prefetch(&conn, &queue).await?;
    broker_quiet().await;
    let mark = CpuMark::now();
    let started = Instant::now();
    let mut publish = tokio::spawn(async move { raw_publish(&exchange, n, size, method).await });
    let mut published = false;
    let mut got = 0;
    while got < n {
        // A publisher that failed (a nack, a closed channel) would leave
        // this loop waiting for messages that never come: its error ends
        // the round instead.
        let next = tokio::select! {
            next = tokio::time::timeout(Duration::from_secs(60), consumer.next()) => next
                .map_err(|_| anyhow::anyhow!("no delivery for 60 s after {got} of {n}"))?,
            done = &mut publish, if !published => {
                done??;
                published = true;
                continue;
            }
        };
        let delivery = next.ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        got += 1;
        if let Some(rate) = pace {
            let due = started + Duration::from_secs_f64(got as f64 / f64::from(rate));
            tokio::time::sleep_until(due.into()).await;
        }
        if got % 100 == 0 || got == n {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if !published {
        publish.await??;
    }
    Ok(mark.filled(Row {
        scenario: format!(
            "raw broker ({}){}",
            method.name(),
            if endpoint_args {
                ", queue with hookpost's endpoint arguments"
            } else {
                ""
            }
        ) + &pace.map_or(String::new(), |r| format!(", consumer held to {r}/s")),
        events: n,
        deliveries: n,
        seconds,
        events_per_s: n as f64 / seconds,
        ..Row::default()
    }))
}

/// A consumer of `queue` on a channel of its own, manual acks, prefetch
/// 1,000 (the bench's dispatchers' too).
pub(crate) async fn consume_with_prefetch(
    conn: &Connection,
    queue: &str,
) -> anyhow::Result<lapin::Consumer> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    Ok(ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// N POSTs from one reqwest client, 64 at a time: the HTTP ceiling.
pub(crate) async fn raw_http(n: usize, size: usize) -> anyhow::Result<Row> {
    let (url, sink) = sink().await?;
    let client = reqwest::Client::new();
    let body = bytes::Bytes::from(event(size).to_vec());
    let mark = CpuMark::now();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= 64 {
            tasks.join_next().await;
        }
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let _ = i;
        tasks.spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(drop)
        });
    }
    while tasks.join_next().await.is_some() {}
    sink.wait_for(n as u64, Duration::from_secs(60)).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(mark.filled(Row {
        scenario: "raw HTTP (no broker)".into(),
        events: n,
        deliveries: n,
        seconds,
        events_per_s: n as f64 / seconds,
        ..Row::default()
    }))
}

/// A hookpost endpoint queue's arguments, or none.
fn queue_args(exchange: &str, endpoint_args: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if endpoint_args {
        let long = |s: &str| lapin::types::AMQPValue::LongString(s.into());
        args.insert(
            "x-dead-letter-exchange".into(),
            long(&format!("{exchange}.dead")),
        );
        args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
        args.insert("x-overflow".into(), long("reject-publish"));
        args.insert(
            "x-delivery-limit".into(),
            lapin::types::AMQPValue::LongLongInt(20),
        );
    }
    args
}

/// Publish-only rounds into quorum queues with one of hookpost's endpoint
/// queue arguments each (then all of them), alternated with a plain queue
/// `rounds` times: which argument costs the broker what.
pub(crate) async fn raw_queue_args_each(
    n: usize,
    size: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let long = |s: &str| lapin::types::AMQPValue::LongString(s.into());
    let mut rows = Vec::new();
    for _ in 0..rounds {
        for variant in [
            "plain",
            "x-dead-letter-exchange",
            "x-overflow",
            "x-delivery-limit",
            "x-dead-letter-strategy",
            "all",
        ] {
            let scope = Scope::new().await;
            let exchange = format!("{}.raw", scope.prefix);
            let mut args = FieldTable::default();
            let dlx = || long(&format!("{exchange}.dead"));
            match variant {
                "plain" => {}
                "x-dead-letter-exchange" => {
                    args.insert(variant.into(), dlx());
                }
                "x-overflow" => {
                    args.insert(variant.into(), long("reject-publish"));
                }
                "x-delivery-limit" => {
                    args.insert(variant.into(), lapin::types::AMQPValue::LongLongInt(20));
                }
                "x-dead-letter-strategy" => {
                    // at-least-once needs reject-publish and a target.
                    args.insert("x-dead-letter-exchange".into(), dlx());
                    args.insert("x-overflow".into(), long("reject-publish"));
                    args.insert(variant.into(), long("at-least-once"));
                }
                _ => args = queue_args(&exchange, true),
            }
            scope.quorum_queue_with_args_behind(&exchange, args).await;
            broker_quiet().await;
            let mark = CpuMark::now();
            let seconds = raw_publish(&exchange, n, size, CONCURRENT).await?;
            rows.push(progress_of(mark.filled(Row {
                scenario: format!("raw publish only, queue with {variant}"),
                events: n,
                seconds,
                events_per_s: n as f64 / seconds,
                ..Row::default()
            })));
        }
    }
    Ok(rows)
}

/// The raw broker into a plain quorum queue and into one with a hookpost
/// endpoint queue's arguments, alternated `rounds` times: what those
/// arguments cost the broker.
pub(crate) async fn raw_queue_args(
    n: usize,
    size: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for _ in 0..rounds {
        for endpoint_args in [false, true] {
            rows.push(progress_of(
                raw_broker_into(n, size, CONCURRENT, endpoint_args, None).await?,
            ));
            let scope = Scope::new().await;
            let exchange = format!("{}.raw", scope.prefix);
            scope
                .quorum_queue_with_args_behind(&exchange, queue_args(&exchange, endpoint_args))
                .await;
            broker_quiet().await;
            let mark = CpuMark::now();
            let seconds = raw_publish(&exchange, n, size, CONCURRENT).await?;
            rows.push(progress_of(mark.filled(Row {
                scenario: format!(
                    "raw publish only{}",
                    if endpoint_args {
                        ", queue with hookpost's endpoint arguments"
                    } else {
                        ""
                    }
                ),
                events: n,
                seconds,
                events_per_s: n as f64 / seconds,
                ..Row::default()
            })));
        }
        // The raw publisher's hookpost-shaped message into hookpost's
        // topology: the events exchange (with its alternate exchange) and an
        // endpoint queue declared as the dispatcher declares it.
        let scope = Scope::new().await;
        let config = scope.config("");
        let topology = common::topology::Topology::new(&config.amqp);
        let ch = scope.connection.create_channel().await?;
        topology.declare_base(&scope.connection, &ch).await?;
        topology
            .declare_endpoint(&ch, "bench", &["#".to_owned()])
            .await?;
        scope.track_endpoint(&config, "bench");
        broker_quiet().await;
        let mark = CpuMark::now();
        let method = Method {
            hookpost_message: true,
            ..CONCURRENT
        };
        let seconds = raw_publish(&topology.events_exchange(), n, size, method).await?;
        rows.push(progress_of(mark.filled(Row {
            scenario: format!(
                "raw publish only ({}) into hookpost's topology",
                method.name()
            ),
            events: n,
            seconds,
            events_per_s: n as f64 / seconds,
            ..Row::default()
        })));
    }
    Ok(rows)
}
