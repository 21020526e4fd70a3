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
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) received: AtomicU64,
    pub(crate) latencies: std::sync::Mutex<Vec<u64>>,
    notify: Notify,
    /// The count [`Sink::wait_for`] waits for: a request wakes it only
    /// once `received` reaches it, not on every request.
    target: AtomicU64,
    /// When set ([`Sink::record_paths`]): each request path's events, by
    /// their envelope's `tenant` (the tenants scenario checks isolation).
    record: std::sync::atomic::AtomicBool,
    pub(crate) by_path: std::sync::Mutex<std::collections::HashMap<String, Vec<Option<String>>>>,
}

impl Default for Sink {
    fn default() -> Self {
        Self {
            received: AtomicU64::new(0),
            latencies: std::sync::Mutex::default(),
            notify: Notify::new(),
            target: AtomicU64::new(u64::MAX),
            record: std::sync::atomic::AtomicBool::new(false),
            by_path: std::sync::Mutex::default(),
        }
    }
}

/// Starts the receiver on a loopback port; returns its URL (path `/hook`).
///
/// It stands in for the customers' servers, which run elsewhere: on the
/// bench's machine it shares the cores with the broker and the dispatcher,
/// so it is kept lean. Each connection is HTTP/1.1 with keep-alive, parsed
/// with `httparse`; each request needs a `content-length` body (what the
/// dispatcher and reqwest send) and is answered `200 ok`. Anything else
/// (chunked bodies, bad requests, too many headers) is answered with an
/// error status and the connection closed, so a scenario fails loudly; so
/// does a body over 64 MiB.
pub(crate) async fn sink() -> anyhow::Result<(String, Arc<Sink>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let sink = Arc::new(Sink::default());
    let weak = Arc::downgrade(&sink);
    // Its own thread and single-threaded runtime (BENCHMARKS.md, "Method"):
    // its connections' reads and writes never hop between the bench's worker
    // threads. The thread ends once the scenario dropped the sink and its
    // connections closed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let mut check = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let (Ok((stream, _)), Some(s)) = (accepted, weak.upgrade()) else {
                                continue;
                            };
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(serve(stream, s));
                        }
                        _ = check.tick() => if weak.strong_count() == 0 {
                            return;
                        },
                    }
                }
            });
        })?;
    Ok((url, sink))
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// One connection: answers every complete request read, pipelined ones
/// together in one write.
async fn serve(mut stream: tokio::net::TcpStream, sink: Arc<Sink>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = bytes::BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(256);
    // Bytes the request being read still needs (0: unknown yet).
    let mut wanted = 0;
    loop {
        let fatal = loop {
            match next_request(&buf, sink.record.load(Ordering::Relaxed)) {
                Parsed::Partial { need } => {
                    wanted = need;
                    break None;
                }
                Parsed::Bad(answer) => break Some(answer),
                Parsed::Complete { len, head, path } => {
                    let request = buf.split_to(len);
                    sink.record(path, &request[head..]);
                    out.extend_from_slice(OK);
                    wanted = 0;
                }
            }
        };
        if let Some(answer) = fatal {
            out.extend_from_slice(answer);
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if fatal.is_some() {
            return;
        }
        let room = (wanted.saturating_sub(buf.len())).max(8 * 1024);
        if buf.capacity() - buf.len() < room {
            buf.reserve(room);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

enum Parsed {
    /// A whole request of `len` bytes, its body from `head`; its path when
    /// asked for.
    Complete {
        len: usize,
        head: usize,
        path: Option<String>,
    },
    /// More bytes needed; `need`, when known, is the whole request's size.
    Partial { need: usize },
    /// An answer to send before closing the connection.
    Bad(&'static [u8]),
}

const TOO_MANY_HEADERS: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// The largest body the sink reads (a batch of 100 1 KiB events is about
/// 100 KiB).
const MAX_BODY: usize = 64 << 20;
const NO_CHUNKED: &[u8] =
    b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

fn next_request(buf: &[u8], want_path: bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut request = httparse::Request::new(&mut headers);
    let head = match request.parse(buf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Parsed::Partial { need: 0 },
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(TOO_MANY_HEADERS),
        Err(_) => return Parsed::Bad(BAD_REQUEST),
    };
    let mut length = 0;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(n) if n <= MAX_BODY => length = n,
                Some(_) => return Parsed::Bad(TOO_LARGE),
                None => return Parsed::Bad(BAD_REQUEST),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad(NO_CHUNKED);
        }
    }
    let len = head + length;
    if buf.len() < len {
        return Parsed::Partial { need: len };
    }
    Parsed::Complete {
        len,
        head,
        path: request.path.filter(|_| want_path).map(str::to_owned),
    }
}

impl Sink {
    /// Counts a request's events and their latency; with
    /// [`Sink::record_paths`], records them under `path`.
    fn record(&self, path: Option<String>, body: &[u8]) {
        let now = now_nanos();
        // Only the fields the sink needs: a receiver elsewhere would not
        // cost this machine's CPU.
        let probe: Probe = serde_json::from_slice(body).unwrap_or_default();
        let events: Vec<&Probe> = match &probe.events {
            Some(list) => list.iter().collect(),
            None => vec![&probe],
        };
        self.latencies.lock().expect("lock").extend(
            events
                .iter()
                .map(|e| now.saturating_sub(e.data.t.unwrap_or(now))),
        );
        if self.record.load(Ordering::Relaxed) {
            self.by_path
                .lock()
                .expect("lock")
                .entry(path.unwrap_or_default())
                .or_default()
                .extend(events.iter().map(|e| e.tenant.clone()));
        }
        let count = events.len() as u64;
        let total = self.received.fetch_add(count, Ordering::SeqCst) + count;
        if total >= self.target.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// Records each path's events from now on (costs a lock per request).
    pub(crate) fn record_paths(&self) {
        self.record.store(true, Ordering::Relaxed);
    }

    pub(crate) async fn wait_for(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.received.load(Ordering::SeqCst) < n {
            let notified = self.notify.notified();
            // The lowest count anyone waits for (one waiter at a time in
            // practice); the slice below backs up a waiter with a higher one.
            self.target.fetch_min(n, Ordering::SeqCst);
            if self.received.load(Ordering::SeqCst) >= n {
                break;
            }
            let slice = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            if tokio::time::timeout_at(slice, notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                anyhow::bail!(
                    "only {} of {n} events arrived within {timeout:?}",
                    self.received.load(Ordering::SeqCst)
                );
            }
        }
        let _ = self
            .target
            .compare_exchange(n, u64::MAX, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "POST /hook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";

    fn request(body: &str) -> String {
        format!("{HEAD}content-length: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn a_whole_request_is_parsed_with_its_body_and_path() {
        let text = request("{\"a\":1}");
        let Parsed::Complete { len, head, path } = next_request(text.as_bytes(), true) else {
            panic!("not complete");
        };
        assert_eq!(len, text.len());
        assert_eq!(&text[head..len], "{\"a\":1}");
        assert_eq!(path.as_deref(), Some("/hook"));
        // Without path recording, no path is copied.
        let Parsed::Complete { path, .. } = next_request(text.as_bytes(), false) else {
            panic!("not complete");
        };
        assert_eq!(path, None);
    }

    #[test]
    fn a_partial_request_says_how_much_it_needs() {
        let text = request("0123456789");
        // Head incomplete: size unknown.
        assert!(matches!(
            next_request(&text.as_bytes()[..20], false),
            Parsed::Partial { need: 0 }
        ));
        // Head complete, body short: the whole size.
        assert!(matches!(
            next_request(&text.as_bytes()[..text.len() - 3], false),
            Parsed::Partial { need } if need == text.len()
        ));
    }

    #[test]
    fn pipelined_requests_are_parsed_one_at_a_time() {
        let text = format!("{}{}", request("first"), request("second!"));
        let Parsed::Complete { len, head, .. } = next_request(text.as_bytes(), false) else {
            panic!("not complete");
        };
        assert_eq!(&text[head..len], "first");
        let rest = &text.as_bytes()[len..];
        let Parsed::Complete { len, head, .. } = next_request(rest, false) else {
            panic!("not complete");
        };
        assert_eq!(&rest[head..len], b"second!");
    }

    #[test]
    fn what_the_sink_cannot_count_is_refused() {
        let chunked = format!("{HEAD}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        assert!(matches!(
            next_request(chunked.as_bytes(), false),
            Parsed::Bad(NO_CHUNKED)
        ));
        let bad_length = format!("{HEAD}content-length: many\r\n\r\n");
        assert!(matches!(
            next_request(bad_length.as_bytes(), false),
            Parsed::Bad(BAD_REQUEST)
        ));
        assert!(matches!(
            next_request(b"NOT HTTP AT ALL\r\n\r\n", false),
            Parsed::Bad(BAD_REQUEST)
        ));
        let huge = format!("{HEAD}content-length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(matches!(
            next_request(huge.as_bytes(), false),
            Parsed::Bad(TOO_LARGE)
        ));
        let many: String = (0..60).map(|i| format!("x-h{i}: v\r\n")).collect();
        let crowded = format!("{HEAD}{many}content-length: 0\r\n\r\n");
        assert!(matches!(
            next_request(crowded.as_bytes(), false),
            Parsed::Bad(TOO_MANY_HEADERS)
        ));
    }

    #[tokio::test]
    async fn the_sink_counts_events_over_keep_alive_and_answers_each() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (url, sink) = sink().await.expect("sink");
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches("/hook")
            .to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        // Two requests in one write, a batch of two events and one envelope,
        // then a third in two pieces.
        let batch = request("{\"events\":[{\"data\":{\"t\":1}},{\"data\":{\"t\":2}}]}");
        let one = request("{\"data\":{\"t\":3}}");
        stream
            .write_all(format!("{batch}{one}").as_bytes())
            .await
            .expect("write");
        let third = request("{\"data\":{}}");
        let (a, b) = third.as_bytes().split_at(30);
        stream.write_all(a).await.expect("write");
        stream.flush().await.expect("flush");
        stream.write_all(b).await.expect("write");
        sink.wait_for(4, Duration::from_secs(10))
            .await
            .expect("four events");
        let mut answers = vec![0u8; OK.len() * 3];
        stream
            .read_exact(&mut answers)
            .await
            .expect("three answers");
        assert_eq!(answers, OK.repeat(3));
        assert_eq!(sink.latencies.lock().expect("lock").len(), 4);
    }
}
