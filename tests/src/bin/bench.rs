//! hookpost's benchmark: the raw broker, raw HTTP and hookpost end to end,
//! measured in one run on the same broker, queue type and message size, with
//! each hookpost figure as a ratio to the raw broker's (BENCHMARKS.md).
//!
//!   cargo run --release -p tests --bin bench -- [--events N] [--endpoints K] [--batch-size B] [--size BYTES] [--json FILE]
//!
//! The dispatcher runs as a child process (this binary with
//! `--dispatcher-child CONFIG`) so its peak RSS and CPU time are its own.

use clap::Parser;
use common::{Config, Event};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use producer::Publisher;
use serde::Serialize;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tests::{Scope, amqp_url};
use tokio::sync::Notify;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "hookpost benchmark: raw broker, raw HTTP and hookpost end to end"
)]
struct Args {
    /// Events per throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Endpoints of the fan-out scenario.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Batch size of the batched scenario.
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    /// Event size in bytes (the JSON envelope).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Offered rate of the latency scenario, events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds the latency scenario runs.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Endpoint counts of the memory scenarios.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    memory_endpoints: Vec<usize>,
    /// Queue type of the memory scenarios: classic (default; safe on a broker
    /// with the default open-file limit) or quorum (needs a raised limit).
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    memory_queue_type: String,
    /// Only these scenarios (comma-separated: raw-broker, raw-http, batch1, batch, fanout, latency, memory).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run a dispatcher on this config (the child process).
    #[arg(long, hide = true)]
    dispatcher_child: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Row {
    scenario: String,
    events: usize,
    deliveries: usize,
    seconds: f64,
    events_per_s: f64,
    ratio_to_raw_broker: Option<f64>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    dispatcher_peak_rss_mib: Option<f64>,
    dispatcher_cpu_s: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(config) = args.dispatcher_child {
        return runtime.block_on(dispatcher_child(config));
    }
    runtime.block_on(run(args))
}

async fn dispatcher_child(path: PathBuf) -> anyhow::Result<()> {
    common::logging::init("error");
    let config = Config::load(&path)?;
    let listener = tokio::net::TcpListener::bind(config.metrics_listen).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
        stop.cancel();
    });
    let (_reload, reloads) = tokio::sync::mpsc::channel(1);
    dispatcher::run(config, listener, reloads, shutdown).await
}

fn wanted(args: &Args, name: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| o == name)
}

async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "hookpost bench: {} events of {} bytes, quorum queues, broker {}",
        args.events,
        args.size,
        common::secret::redact_url(&amqp_url())
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut raw = None;
    if wanted(&args, "raw-broker") {
        let row = raw_broker(args.events, args.size).await?;
        raw = Some(row.events_per_s);
        progress(&row);
        rows.push(row);
    }
    if wanted(&args, "raw-http") {
        rows.push(progress_of(raw_http(args.events, args.size).await?));
    }
    if wanted(&args, "batch1") {
        rows.push(progress_of(
            hookpost("hookpost batch 1, 1 endpoint", args.events, args.size, 1, 1).await?,
        ));
    }
    if wanted(&args, "batch") {
        rows.push(progress_of(
            hookpost(
                &format!("hookpost batch {}, 1 endpoint", args.batch_size),
                args.events,
                args.size,
                args.batch_size,
                1,
            )
            .await?,
        ));
    }
    if wanted(&args, "fanout") {
        let n = (args.events / args.endpoints.max(1)).max(1);
        rows.push(progress_of(
            hookpost(
                &format!("hookpost batch 1, fan-out to {}", args.endpoints),
                n,
                args.size,
                1,
                args.endpoints,
            )
            .await?,
        ));
    }
    if wanted(&args, "latency") {
        rows.push(progress_of(
            latency(args.rate, args.latency_seconds, args.size).await?,
        ));
    }
    if wanted(&args, "memory") {
        for &k in &args.memory_endpoints {
            rows.push(progress_of(
                memory(k, args.size, &args.memory_queue_type).await?,
            ));
        }
    }
    for row in &mut rows {
        if row.scenario != "raw broker" && row.events_per_s > 0.0 {
            row.ratio_to_raw_broker = raw
                .map(|r| row.events_per_s / r)
                .filter(|_| row.events_per_s > 0.0);
        }
    }
    print_table(&rows);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn progress(row: &Row) {
    eprintln!(
        "  {}: {:.0} events/s, p99 {:?} ms, RSS {:?} MiB ({:.1} s)",
        row.scenario, row.events_per_s, row.p99_ms, row.dispatcher_peak_rss_mib, row.seconds
    );
}

fn progress_of(row: Row) -> Row {
    progress(&row);
    row
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| scenario | events | deliveries | events/s | ratio to raw broker | p50 ms | p95 ms | p99 ms | dispatcher peak RSS MiB | dispatcher CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.events,
            r.deliveries,
            if r.events_per_s > 0.0 {
                format!("{:.0}", r.events_per_s)
            } else {
                "-".into()
            },
            f(r.ratio_to_raw_broker.map(|v| v * 100.0), 0)
                + if r.ratio_to_raw_broker.is_some() {
                    "%"
                } else {
                    ""
                },
            f(r.p50_ms, 1),
            f(r.p95_ms, 1),
            f(r.p99_ms, 1),
            f(r.dispatcher_peak_rss_mib, 1),
            f(r.dispatcher_cpu_s, 2),
        );
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// An event of about `size` JSON bytes carrying its publish time.
fn event(size: usize) -> Event {
    let pad = "x".repeat(size.saturating_sub(150));
    Event::new(
        "bench.event",
        serde_json::json!({ "t": now_nanos(), "pad": pad }),
    )
    .expect("valid")
}

fn percentiles(mut v: Vec<u64>) -> (Option<f64>, Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None, None);
    }
    v.sort_unstable();
    let at =
        |q: f64| Some(v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1e6);
    (at(0.50), at(0.95), at(0.99))
}

/// Publish through a topic exchange with pipelined confirms and consume with
/// manual acks (every 100th acks the ones before it): the ceiling.
async fn raw_broker(n: usize, size: usize) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let exchange = format!("{}.raw", scope.prefix);
    let queue = scope.quorum_queue_behind(&exchange).await;
    let body = event(size).to_vec();
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
    let started = Instant::now();
    let publish = {
        let conn2 = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let exchange = exchange.clone();
        tokio::spawn(async move {
            let ch = conn2.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            let mut pending = std::collections::VecDeque::new();
            for _ in 0..n {
                if pending.len() >= 1000 {
                    let c: lapin::PublisherConfirm = pending.pop_front().expect("pending");
                    c.await?;
                }
                pending.push_back(
                    ch.basic_publish(
                        exchange.as_str().into(),
                        "bench.event".into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
                );
            }
            for c in pending {
                c.await?;
            }
            Ok::<_, lapin::Error>(conn2)
        })
    };
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
    let _ = publish.await??;
    Ok(Row {
        scenario: "raw broker".into(),
        events: n,
        deliveries: n,
        seconds,
        events_per_s: n as f64 / seconds,
        ..Row::default()
    })
}

/// The counting receiver: every event's publish-to-receipt latency.
#[derive(Debug, Default)]
struct Sink {
    received: AtomicU64,
    latencies: std::sync::Mutex<Vec<u64>>,
    notify: Notify,
}

async fn sink() -> anyhow::Result<(String, Arc<Sink>)> {
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
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let now = now_nanos();
                            let value: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let events = match value.get("events") {
                                Some(serde_json::Value::Array(list)) => list
                                    .iter()
                                    .map(|e| e["data"]["t"].as_u64().unwrap_or(now))
                                    .collect(),
                                _ => vec![value["data"]["t"].as_u64().unwrap_or(now)],
                            };
                            {
                                let mut l = s.latencies.lock().expect("lock");
                                l.extend(events.iter().map(|t| now.saturating_sub(*t)));
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
    async fn wait_for(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
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
async fn raw_http(n: usize, size: usize) -> anyhow::Result<Row> {
    let (url, sink) = sink().await?;
    let client = reqwest::Client::new();
    let body = bytes::Bytes::from(event(size).to_vec());
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
    Ok(Row {
        scenario: "raw HTTP (no broker)".into(),
        events: n,
        deliveries: n,
        seconds,
        events_per_s: n as f64 / seconds,
        ..Row::default()
    })
}

struct DispatcherChild {
    child: Child,
    metrics: String,
}

impl DispatcherChild {
    fn stats(&self) -> (Option<f64>, Option<f64>) {
        let pid = self.child.id();
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            });
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
                let ticks: f64 =
                    fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
                Some(ticks / 100.0)
            });
        (rss.map(|kb| kb / 1024.0), cpu)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

async fn start_dispatcher(
    scope: &Scope,
    endpoints: &str,
    name: &str,
    amqp_extra: &str,
) -> anyhow::Result<DispatcherChild> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let path = scope.write_config(
        name,
        &format!("prefetch = 1000\n{amqp_extra}"),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\nqueue_poll_interval_ms = 60000\n[http]\nallowed_networks = [\"127.0.0.0/8\"]\n{endpoints}"),
    );
    let child = Command::new(std::env::current_exe()?)
        .arg("--dispatcher-child")
        .arg(&path)
        .env("HOOKPOST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()?;
    let metrics = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{metrics}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "dispatcher not ready in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(DispatcherChild { child, metrics })
}

fn endpoints_toml(k: usize, url: &str, batch: u32) -> String {
    (0..k)
        .map(|i| format!("[[endpoints]]\nid = \"e{i}\"\nurl = \"{url}\"\nevents = [\"#\"]\nbatch_size = {batch}\nbatch_interval_ms = {}\nmax_in_flight = 16\n", if batch > 1 { 20 } else { 0 }))
        .collect()
}

/// Publisher → RabbitMQ → dispatcher → counting receiver.
async fn hookpost(name: &str, n: usize, size: usize, batch: u32, k: usize) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let dispatcher = start_dispatcher(&scope, &endpoints_toml(k, &url, batch), "bench", "").await?;
    let config = scope.config("");
    let publisher = Arc::new(Publisher::connect(&config).await?);
    let p = publisher.clone();
    // One pipelined publish_many (a sliding window of unconfirmed publishes),
    // as the raw broker scenario publishes.
    let events: Vec<Event> = (0..n).map(|_| event(size)).collect();
    let started = Instant::now();
    let publishing = tokio::spawn(async move { p.publish_many(&events).await });
    sink.wait_for((n * k) as u64, Duration::from_secs(600))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    publishing.await??;
    let (rss, cpu) = dispatcher.stats();
    let _ = &dispatcher.metrics;
    dispatcher.stop();
    let latencies = std::mem::take(&mut *sink.latencies.lock().expect("lock"));
    let (p50, p95, p99) = percentiles(latencies);
    publisher.close().await;
    Ok(Row {
        scenario: name.to_owned(),
        events: n,
        deliveries: n * k,
        seconds,
        events_per_s: (n * k) as f64 / seconds,
        p50_ms: p50,
        p95_ms: p95,
        p99_ms: p99,
        dispatcher_peak_rss_mib: rss,
        dispatcher_cpu_s: cpu,
        ..Row::default()
    })
}

/// A fixed offered rate, batch size 1: publish-to-receipt percentiles.
async fn latency(rate: u32, seconds: u64, size: usize) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let dispatcher = start_dispatcher(&scope, &endpoints_toml(1, &url, 1), "latency", "").await?;
    let config = scope.config("");
    let publisher = Arc::new(Publisher::connect(&config).await?);
    let n = rate as usize * seconds as usize;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (rate as usize / 100).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0;
    while sent < n {
        tick.tick().await;
        for _ in 0..per_tick.min(n - sent) {
            let p = publisher.clone();
            let e = event(size);
            tasks.spawn(async move { p.publish(&e).await });
            sent += 1;
        }
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    sink.wait_for(n as u64, Duration::from_secs(120)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (rss, cpu) = dispatcher.stats();
    dispatcher.stop();
    let (p50, p95, p99) = percentiles(std::mem::take(&mut *sink.latencies.lock().expect("lock")));
    publisher.close().await;
    Ok(Row {
        scenario: format!("latency at {rate} events/s, batch 1"),
        events: n,
        deliveries: n,
        seconds: elapsed,
        events_per_s: 0.0,
        p50_ms: p50,
        p95_ms: p95,
        p99_ms: p99,
        dispatcher_peak_rss_mib: rss,
        dispatcher_cpu_s: cpu,
        ..Row::default()
    })
}

/// Peak RSS of a dispatcher with `k` endpoints. Each endpoint subscribes to
/// its own event type and gets `per` events (a single publish fanned out to
/// 1,000 quorum queues at once is a broker benchmark, not a dispatcher one).
async fn memory(k: usize, size: usize, queue_type: &str) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let endpoints: String = (0..k)
        .map(|i| {
            format!("[[endpoints]]\nid = \"e{i}\"\nurl = \"{url}\"\nevents = [\"bench.e{i}\"]\n")
        })
        .collect();
    // Classic queues by default: a single RabbitMQ node with the default
    // open-file limit (1024) stalls with 1,000 quorum queues.
    let queue_setting = format!("queue_type = \"{queue_type}\"");
    let dispatcher = start_dispatcher(&scope, &endpoints, "memory", &queue_setting).await?;
    let config = scope.config_with("", &queue_setting, &amqp_url());
    let publisher = Publisher::connect(&config).await?;
    let per = 5;
    let pad = "x".repeat(size.saturating_sub(150));
    let events: Vec<Event> = (0..k)
        .flat_map(|i| (0..per).map(move |_| i))
        .map(|i| {
            Event::new(
                &format!("bench.e{i}"),
                serde_json::json!({ "t": now_nanos(), "pad": pad }),
            )
            .expect("valid")
        })
        .collect();
    let started = Instant::now();
    publisher.publish_many(&events).await?;
    sink.wait_for((per * k) as u64, Duration::from_secs(300))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let (rss, cpu) = dispatcher.stats();
    dispatcher.stop();
    publisher.close().await;
    Ok(Row {
        scenario: format!("memory: {k} endpoints, {per} events each ({queue_type} queues)"),
        events: per * k,
        deliveries: per * k,
        seconds,
        events_per_s: 0.0,
        dispatcher_peak_rss_mib: rss,
        dispatcher_cpu_s: cpu,
        ..Row::default()
    })
}
