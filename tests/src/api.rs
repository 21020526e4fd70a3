//! A running management API (`producer::api::serve`) on a loopback port, and
//! calls to it with a bearer token.

use common::Config;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The API of `config`, stopped when dropped.
#[derive(Debug)]
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub root: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Api {
    /// Serves the API of `config` on a free loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(config: &Config) -> Self {
        Self::start_with(config, None).await
    }

    /// [`Api::start`], counting the API's replays in `metrics`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start_with(
        config: &Config,
        metrics: Option<common::metrics::ProducerMetrics>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let root = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        tokio::spawn(producer::api::serve_with_metrics(
            config.clone(),
            listener,
            stop.clone(),
            metrics,
        ));
        Self {
            root,
            // A call left unanswered fails the test instead of hanging it.
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("client"),
            stop,
        }
    }

    /// `method path` with bearer `token`: the status and the JSON body
    /// (`Null` when the body is not JSON).
    ///
    /// # Panics
    /// When the request cannot be sent (the API is not listening) or has no
    /// answer within 60 s.
    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.root))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
