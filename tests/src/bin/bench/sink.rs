//! The counting receiver: every event's publish-to-receipt latency, and
//! optionally each request path's tenants.

use crate::report::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

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
