//! A webhook receiver for tests: a hyper server on 127.0.0.1, port 0, that
//! records every request and answers as the test's [`Behaviour`] says.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// Method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The status answered (`None`: the connection was dropped unanswered).
    pub answered: Option<u16>,
}

impl Received {
    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The events in the body: the envelope, or the `events` of a batch.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        match value.get("events") {
            Some(serde_json::Value::Array(events)) => events.clone(),
            _ => vec![value],
        }
    }

    /// The event ids in the body.
    pub fn ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// How to answer a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, with these headers.
    Status(u16, Vec<(&'static str, String)>),
    /// Wait, then answer.
    Delay(Duration, u16),
    /// 200 with a body that never ends.
    Endless,
    /// Close the connection without answering (a reset, to the client).
    Abort,
}

/// Answers request number `n` (0-based, counted across all requests).
pub type Behaviour = Arc<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

/// A running receiver; stops when dropped.
#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    log: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub async fn start() -> Self {
        Self::with(Arc::new(|_, _| Reply::Status(200, vec![]))).await
    }

    /// A receiver answering as `behaviour` says.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn with(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let receiver = Self {
            url,
            log: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            stop: CancellationToken::new(),
        };
        let this = receiver.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    () = this.stop.cancelled() => return,
                };
                let this = this.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let this = this.clone();
                        // An `Err` makes hyper drop the connection unanswered.
                        async move {
                            this.handle(req)
                                .await
                                .ok_or_else(|| std::io::Error::other("abort"))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    /// Changes how later requests are answered.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("lock") = behaviour;
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Option<Response<BoxBody<Bytes, std::convert::Infallible>>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut received = Received {
            headers: parts.headers,
            body,
            at: Instant::now(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            answered: None,
        };
        let behaviour = self.behaviour.lock().expect("lock").clone();
        let reply = {
            let mut log = self.log.lock().expect("lock");
            let reply = behaviour(log.len(), &received);
            received.answered = match &reply {
                Reply::Status(status, _) | Reply::Delay(_, status) => Some(*status),
                Reply::Endless => Some(200),
                Reply::Abort => None,
            };
            log.push(received);
            reply
        };
        let (status, headers, body) = match reply {
            Reply::Status(status, headers) => (
                status,
                headers,
                Full::new(Bytes::from_static(b"ok")).boxed(),
            ),
            Reply::Delay(delay, status) => {
                tokio::time::sleep(delay).await;
                (status, vec![], Full::new(Bytes::from_static(b"ok")).boxed())
            }
            Reply::Endless => {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let stream = futures_util::stream::repeat_with(move || {
                    Ok(hyper::body::Frame::data(chunk.clone()))
                });
                (200, vec![], StreamBody::new(stream).boxed())
            }
            Reply::Abort => return None,
        };
        let mut response = Response::new(body);
        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        Some(response)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().expect("lock").clone()
    }

    /// Every event id answered with a 2xx so far (duplicates kept).
    pub fn delivered_ids(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
            .flat_map(Received::ids)
            .collect()
    }

    /// Every event id received so far (duplicates kept).
    pub fn ids(&self) -> Vec<String> {
        self.received().iter().flat_map(Received::ids).collect()
    }

    /// Waits until `n` requests arrived; returns them.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Received> {
        crate::eventually(
            timeout,
            &format!("{n} requests at {}", self.url),
            || async {
                let got = self.received();
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }

    /// Waits until every id in `ids` was received at least once.
    pub async fn wait_ids(&self, ids: &[String], timeout: Duration) {
        crate::eventually(
            timeout,
            &format!("{} events at {}", ids.len(), self.url),
            || async {
                let got: std::collections::HashSet<String> = self.ids().into_iter().collect();
                ids.iter().all(|id| got.contains(id)).then_some(())
            },
        )
        .await;
    }
}
