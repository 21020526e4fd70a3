//! The raw pipeline: batch 1 with hookpost's client libraries and nothing
//! of hookpost. A child process (this binary with `--pipeline-child QUEUE
//! URL`) consumes a quorum queue with lapin (prefetch 1,000), POSTs each
//! message's body on its own to the counting receiver with hyper's HTTP/1.1
//! connection API (16 requests at a time on kept-alive connections, as the
//! bench's endpoint allows), and acks in ranges as the dispatcher does
//! ([`dispatcher::delivery::acks::AckTracker`]); no envelope parsing,
//! signing, metrics, attempt log or archive. The raw publisher feeds it,
//! or hookpost's ([`Feed`]).
//! Against the same ceiling as hookpost's batch 1 it shows how much of the
//! gap to the raw broker is one HTTP request per event on this machine,
//! and how much is hookpost's own work (BENCHMARKS.md, session 30).

use crate::hookpost::DispatcherChild;
use crate::raw::{FASTEST, consume_with_prefetch, raw_publish};
use crate::report::*;
use crate::sink::*;
use bytes::Bytes;
use common::Event;
use common::topology::Topology;
use dispatcher::delivery::acks::{AckTracker, FLUSH_EVERY};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use producer::Publisher;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::{Scope, amqp_url};

/// Requests at a time (the bench endpoint's `max_in_flight`).
const IN_FLIGHT: usize = 16;

/// Who publishes into the raw pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// The raw publisher (the ceiling's fastest method on one channel).
    Raw,
    /// hookpost's `Publisher::publish_many`, the archive off, into an
    /// endpoint queue declared as the dispatcher declares it: what
    /// hookpost's publishing costs the pipeline.
    Hookpost,
}

/// Publishes `n` events (by `feed`) into a queue the child consumes, and
/// waits until the receiver counted them all.
pub(crate) async fn raw_pipeline(n: usize, size: usize, feed: Feed) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let exchange = format!("{}.raw", scope.prefix);
    let (queue, publisher) = match feed {
        Feed::Raw => {
            let queue = scope
                .quorum_queue_with_args_behind(&exchange, FieldTable::default())
                .await;
            (queue, None)
        }
        Feed::Hookpost => {
            let config = scope.config("[archive]\nenabled = false\n");
            let publisher = Publisher::connect(&config).await?;
            let topology = Topology::new(&config.amqp);
            let ch = scope.connection.create_channel().await?;
            topology
                .declare_endpoint(&ch, "bench", &["#".to_owned()])
                .await?;
            scope.track_endpoint(&config, "bench");
            (topology.endpoint_queue("bench"), Some(publisher))
        }
    };
    let child = Command::new(std::env::current_exe()?)
        .arg("--pipeline-child")
        .arg(&queue)
        .arg(&url)
        .stdout(Stdio::null())
        .spawn()?;
    let child = DispatcherChild::of(child);
    // Publishing starts once the child consumes, as hookpost's rounds start
    // once the dispatcher is ready.
    scope.wait_queue_consumers(&queue, 1).await;
    // Made before the clock starts, as hookpost's rows make theirs.
    let events: Vec<Event> = match feed {
        Feed::Raw => Vec::new(),
        Feed::Hookpost => (0..n).map(|_| event(size)).collect(),
    };
    broker_quiet().await;
    let mark = CpuMark::now();
    let started = Instant::now();
    let publishing = tokio::spawn(async move {
        match &publisher {
            None => raw_publish(&exchange, n, size, FASTEST).await.map(drop),
            Some(publisher) => {
                let sent = publisher.publish_many(&events).await.map_err(Into::into);
                publisher.close().await;
                sent
            }
        }
    });
    sink.wait_for(n as u64, Duration::from_secs(600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    publishing.await??;
    let stats = child.stats();
    child.stop();
    let name = match feed {
        Feed::Raw => "raw pipeline, batch 1 (lapin → hyper, no hookpost)",
        Feed::Hookpost => "raw pipeline fed by hookpost's publisher (archive off)",
    };
    Ok(mark.filled(Row::delivered(name.into(), n, seconds, stats)))
}

/// The child: consumes `queue` and POSTs each message to `url` until
/// terminated. Any failure ends the process with an error, so the scenario
/// fails (it waits for a count that never comes) rather than measuring
/// something else.
pub(crate) async fn pipeline_child(queue: String, url: String) -> anyhow::Result<()> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?
        .to_string();
    let path = uri.path().to_owned();
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let mut consumer = consume_with_prefetch(&conn, &queue).await?;
    let acks = Arc::new(AckTracker::default());
    let flusher = acks.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            if let Err(e) = flusher.flush().await {
                fail(&format!("ack: {e}"));
            }
        }
    });
    let pool: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>> = Arc::default();
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        acks.register([&delivery]).await;
        let permit = permits.clone().acquire_owned().await?;
        let (acks, pool, authority, path) =
            (acks.clone(), pool.clone(), authority.clone(), path.clone());
        tokio::spawn(async move {
            let body = Bytes::copy_from_slice(&delivery.data);
            if let Err(e) = post(&pool, &authority, &path, body).await {
                fail(&format!("request: {e}"));
            }
            if let Err(e) = acks.settle(&delivery).await {
                fail(&format!("ack: {e}"));
            }
            drop(permit);
        });
    }
    Ok(())
}

/// One POST on a pooled connection (a new one when none is idle); the
/// answer is read to its end and the connection put back.
async fn post(
    pool: &Mutex<Vec<SendRequest<Full<Bytes>>>>,
    authority: &str,
    path: &str,
    body: Bytes,
) -> anyhow::Result<()> {
    let idle = pool.lock().expect("pool").pop();
    let mut sender = match idle {
        Some(sender) => sender,
        None => {
            let stream = tokio::net::TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            sender
        }
    };
    sender.ready().await?;
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "answered {}",
        response.status()
    );
    response.into_body().collect().await?;
    pool.lock().expect("pool").push(sender);
    Ok(())
}

fn fail(why: &str) -> ! {
    eprintln!("pipeline child: {why}");
    std::process::exit(1);
}
