//! hookpost end to end: a dispatcher child process per scenario, and the
//! throughput, latency and memory scenarios.

use crate::report::*;
use crate::sink::*;
use common::Event;
use producer::Publisher;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::{Scope, amqp_url};

pub(crate) struct DispatcherChild {
    child: Child,
    pub(crate) metrics: String,
}

impl DispatcherChild {
    /// A child with no metrics listener (the raw pipeline's).
    pub(crate) fn of(child: Child) -> Self {
        Self {
            child,
            metrics: String::new(),
        }
    }

    pub(crate) fn stats(&self) -> (Option<f64>, Option<f64>) {
        let pid = self.child.id();
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            });
        let cpu = cpu_of(&format!("/proc/{pid}/stat"));
        (rss.map(|kb| kb / 1024.0), cpu)
    }

    /// Stops the dispatcher (SIGTERM) and waits for it.
    pub(crate) fn stop(self) {
        drop(self);
    }
}

impl Drop for DispatcherChild {
    /// Also on an error or the run's deadline: no dispatcher outlives the
    /// bench.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // Under HOOKPOST_BENCH_WRAP the dispatcher is the wrapper's child.
        let _ = Command::new("pkill")
            .args(["-TERM", "-P", &self.child.id().to_string()])
            .status();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub(crate) async fn start_dispatcher(
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
    // HOOKPOST_BENCH_WRAP="heaptrack -o /tmp/ht" (say) runs the child under a
    // profiler; its RSS and CPU figures are then the profiler's.
    let wrap = std::env::var("HOOKPOST_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(std::env::current_exe()?);
            c
        }
        None => Command::new(std::env::current_exe()?),
    };
    let child = command
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

pub(crate) fn endpoints_toml(k: usize, url: &str, batch: u32) -> String {
    (0..k)
        .map(|i| format!("[[endpoints]]\nid = \"e{i}\"\nurl = \"{url}\"\nevents = [\"#\"]\nbatch_size = {batch}\nbatch_interval_ms = {}\nmax_in_flight = 16\n", if batch > 1 { 20 } else { 0 }))
        .collect()
}

/// Publisher → RabbitMQ → dispatcher → counting receiver.
pub(crate) async fn hookpost(
    name: &str,
    n: usize,
    size: usize,
    batch: u32,
    k: usize,
) -> anyhow::Result<Row> {
    hookpost_with(name, n, size, batch, k, "").await
}

/// [`hookpost`] with `extra` TOML after the endpoints (say, a `[log]` or an
/// `[archive]` table), for the dispatcher and the publisher alike.
pub(crate) async fn hookpost_with(
    name: &str,
    n: usize,
    size: usize,
    batch: u32,
    k: usize,
    extra: &str,
) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let toml = format!("{}{extra}", endpoints_toml(k, &url, batch));
    let dispatcher = start_dispatcher(&scope, &toml, "bench", "").await?;
    let config = scope.config(extra);
    let publisher = Arc::new(Publisher::connect(&config).await?);
    let p = publisher.clone();
    // One pipelined publish_many (a sliding window of unconfirmed publishes),
    // as the raw broker scenario publishes.
    let events: Vec<Event> = (0..n).map(|_| event(size)).collect();
    broker_quiet().await;
    let mark = CpuMark::now();
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
    Ok(mark.filled(Row {
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
    }))
}

/// A fixed offered rate, batch size 1: publish-to-receipt percentiles.
pub(crate) async fn latency(rate: u32, seconds: u64, size: usize) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let dispatcher = start_dispatcher(&scope, &endpoints_toml(1, &url, 1), "latency", "").await?;
    let config = scope.config("");
    let publisher = Arc::new(Publisher::connect(&config).await?);
    let n = rate as usize * seconds as usize;
    broker_quiet().await;
    let mark = CpuMark::now();
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
    Ok(mark.filled(Row {
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
    }))
}

/// Peak RSS of a dispatcher with `k` endpoints. Each endpoint subscribes to
/// its own event type and gets `per` events (a single publish fanned out to
/// 1,000 quorum queues at once is a broker benchmark, not a dispatcher one).
pub(crate) async fn memory(k: usize, size: usize, queue_type: &str) -> anyhow::Result<Row> {
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
