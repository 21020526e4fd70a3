//! Running the dispatcher inside a test: its `run` on a metrics listener
//! bound to port 0, with a reload channel and a shutdown token.

use common::Config;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest [`Running::stop`] waits: the dispatcher's own bounds (the
/// workers' grace of an endpoint timeout plus 30 s, then 5 s each for the
/// attempt log, the notices and the connection) with room to spare.
pub const STOP_LIMIT: Duration = Duration::from_secs(120);

/// A dispatcher running in this process.
#[derive(Debug)]
pub struct Running {
    /// `http://127.0.0.1:<port>` of its metrics server.
    pub metrics: String,
    /// Cancels it.
    pub shutdown: CancellationToken,
    /// Sends it a new config.
    pub reload: mpsc::Sender<Config>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// For its metrics server: each request bounded.
    http: reqwest::Client,
}

impl Running {
    /// Starts a dispatcher and waits until it is ready (connected and consuming).
    ///
    /// # Panics
    /// When it is not ready within 45 s.
    pub async fn start(config: Config) -> Self {
        let running = Self::spawn(config).await;
        running.wait_ready().await;
        running
    }

    /// Starts a dispatcher without waiting for it to be ready.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn spawn(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let (reload, reloads) = mpsc::channel(4);
        let task = tokio::spawn(dispatcher::run(config, listener, reloads, shutdown.clone()));
        Self {
            metrics,
            shutdown,
            reload,
            task,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        }
    }

    /// Waits until `/readyz` answers 200 (each probe bounded: one left
    /// unanswered is tried again).
    pub async fn wait_ready(&self) {
        crate::eventually(Duration::from_secs(45), "dispatcher ready", || async {
            let r = self
                .http
                .get(format!("{}/readyz", self.metrics))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    /// `/readyz` status now.
    pub async fn ready_status(&self) -> u16 {
        self.http
            .get(format!("{}/readyz", self.metrics))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.metrics))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of the sample `series` (name with labels exactly as exposed), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops it and returns what `run` returned.
    ///
    /// # Panics
    /// When it has not stopped within [`STOP_LIMIT`] (its shutdown waits
    /// for the broker and its endpoints a bounded time: a test fails
    /// rather than hangs when that bound breaks).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(STOP_LIMIT, self.task)
            .await
            .unwrap_or_else(|_| panic!("the dispatcher did not stop within {STOP_LIMIT:?}"))
            .expect("dispatcher task")
    }
}
