//! The ceilings: the raw broker (publish and consume without hookpost) and
//! raw HTTP (the same receiver without a broker), and the counting receiver.

use crate::report::*;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tests::{Scope, amqp_url};
use tokio::sync::Notify;

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
        )
    }
}

/// The variants `raw-variants` measures.
pub(crate) const METHODS: &[Method] = &[
    Method {
        sequential: true,
        window: 1000,
        channels: 1,
        connections: false,
    },
    Method {
        sequential: false,
        window: 1000,
        channels: 1,
        connections: false,
    },
    Method {
        sequential: false,
        window: 5000,
        channels: 1,
        connections: false,
    },
    Method {
        sequential: false,
        window: 1000,
        channels: 4,
        connections: false,
    },
    Method {
        sequential: false,
        window: 1000,
        channels: 4,
        connections: true,
    },
];

/// The fastest of [`METHODS`] in the session BENCHMARKS.md records first
/// (one channel, concurrent sends); it serves the publisher-alone
/// comparison, which publishes on one channel too.
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
        let _ = c.close(200, "bye".into()).await;
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
    let publish = |ch: Channel, exchange: String, body: Arc<Vec<u8>>| async move {
        ch.basic_publish(
            exchange.as_str().into(),
            "bench.event".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
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
        let seconds = raw_publish(&exchange, n, size, *method).await?;
        rows.push(progress_of(Row {
            scenario: format!("raw publish only: {}", method.name()),
            events: n,
            seconds,
            events_per_s: n as f64 / seconds,
            ..Row::default()
        }));
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
    let scope = Scope::new().await;
    let exchange = format!("{}.raw", scope.prefix);
    let queue = scope.quorum_queue_behind(&exchange).await;
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let consume = conn.create_channel().await?;
    consume.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mark = CpuMark::now();
    let started = Instant::now();
    let publish = tokio::spawn(async move { raw_publish(&exchange, n, size, method).await });
    let mut got = 0;
    while got < n {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        got += 1;
        if got % 100 == 0 || got == n {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    publish.await??;
    Ok(mark.filled(Row {
        scenario: format!("raw broker ({})", method.name()),
        events: n,
        deliveries: n,
        seconds,
        events_per_s: n as f64 / seconds,
        ..Row::default()
    }))
}

/// What the sink reads of a request body: an envelope, or a batch of them.
#[derive(Debug, Default, serde::Deserialize)]
struct Probe {
    #[serde(default)]
    data: ProbeData,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    events: Option<Vec<Probe>>,
}

/// The bench's events carry their publish time in `data.t` (ns); any other
/// `data` (the CLI's, say) is skipped.
#[derive(Debug, Default)]
struct ProbeData {
    t: Option<u64>,
}

impl<'de> serde::Deserialize<'de> for ProbeData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ProbeData;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ProbeData, A::Error> {
                let mut t = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "t" {
                        t = map.next_value::<Option<u64>>().ok().flatten();
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(ProbeData { t })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ProbeData, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(ProbeData::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<ProbeData, E> {
                Ok(ProbeData::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<ProbeData, E> {
                Ok(ProbeData::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<ProbeData, E> {
                Ok(ProbeData::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<ProbeData, E> {
                Ok(ProbeData::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<ProbeData, E> {
                Ok(ProbeData::default())
            }
            fn visit_unit<E>(self) -> Result<ProbeData, E> {
                Ok(ProbeData::default())
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The counting receiver: every event's publish-to-receipt latency.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub(crate) received: AtomicU64,
    pub(crate) latencies: std::sync::Mutex<Vec<u64>>,
    notify: Notify,
    /// When set ([`Sink::record_paths`]): each request path's events, by
    /// their envelope's `tenant` (the tenants scenario checks isolation).
    record: std::sync::atomic::AtomicBool,
    pub(crate) by_path: std::sync::Mutex<std::collections::HashMap<String, Vec<Option<String>>>>,
}

pub(crate) async fn sink() -> anyhow::Result<(String, Arc<Sink>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let sink = Arc::new(Sink::default());
    let s = sink.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let path = req.uri().path().to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let now = now_nanos();
                            // Only the fields the sink needs: a receiver
                            // elsewhere would not cost this machine's CPU.
                            let probe: Probe = serde_json::from_slice(&body).unwrap_or_default();
                            let events: Vec<&Probe> = match &probe.events {
                                Some(list) => list.iter().collect(),
                                None => vec![&probe],
                            };
                            {
                                let mut l = s.latencies.lock().expect("lock");
                                l.extend(
                                    events
                                        .iter()
                                        .map(|e| now.saturating_sub(e.data.t.unwrap_or(now))),
                                );
                            }
                            if s.record.load(Ordering::Relaxed) {
                                s.by_path
                                    .lock()
                                    .expect("lock")
                                    .entry(path)
                                    .or_default()
                                    .extend(events.iter().map(|e| e.tenant.clone()));
                            }
                            s.received.fetch_add(events.len() as u64, Ordering::SeqCst);
                            s.notify.notify_waiters();
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((url, sink))
}

impl Sink {
    /// Records each path's events from now on (costs a lock per request).
    pub(crate) fn record_paths(&self) {
        self.record.store(true, Ordering::Relaxed);
    }

    pub(crate) async fn wait_for(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.received.load(Ordering::SeqCst) < n {
            let notified = self.notify.notified();
            if self.received.load(Ordering::SeqCst) >= n {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!(
                    "only {} of {n} events arrived within {timeout:?}",
                    self.received.load(Ordering::SeqCst)
                );
            }
        }
        Ok(())
    }
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
