//! Sending a prepared request: HTTP/1.1 on the process's connections
//! ([`crate::delivery::connect`]: reused per origin, no redirects, guarded
//! DNS), the endpoint's timeout, and the response body read up to a cap.

use crate::delivery::classify::{Response, parse_retry_after};
use crate::delivery::connect::{Body, ConnectError, Connector};
use crate::delivery::guard::AddressGuard;
use crate::delivery::request::Prepared;
use base64::Engine as _;
use common::config::{Endpoint, HttpConfig, Method};
use http_body_util::BodyExt as _;
use hyper::header::{HeaderName, HeaderValue};
use percent_encoding::percent_decode_str;
use std::error::Error as _;
use std::sync::Arc;

/// The process's HTTP client.
#[derive(Debug, Clone)]
pub struct Sender {
    connector: Arc<Connector>,
    guard: AddressGuard,
    max_body: usize,
    keep_body: usize,
}

/// How a request failed before an answer.
enum Failure {
    Blocked(String),
    Failed(String),
    /// Connecting took too long.
    TimedOut(String),
}

impl Sender {
    /// Builds the client; each answer keeps the first `keep_body` bytes of
    /// its body (for the attempt log; 0: none).
    ///
    /// # Errors
    /// When `http.ca_file` cannot be read or the TLS configuration cannot
    /// be built.
    pub fn new(http: &HttpConfig, keep_body: usize) -> anyhow::Result<Self> {
        let guard = AddressGuard::new(http.allowed_networks.clone());
        let roots = http
            .read_ca_file()
            .map_err(|e| anyhow::anyhow!("http.ca_file: {e}"))?;
        let connector = Arc::new(Connector::trusting(guard.clone(), &roots)?);
        Connector::sweep_idle(&connector);
        Ok(Self {
            connector,
            guard,
            max_body: http.max_response_body_bytes,
            keep_body: keep_body.min(http.max_response_body_bytes),
        })
    }

    /// A sender on `connector` (tests: one trusting their own certificates).
    #[cfg(test)]
    fn with_connector(http: &HttpConfig, connector: Connector) -> Self {
        let connector = Arc::new(connector);
        Connector::sweep_idle(&connector);
        Self {
            connector,
            guard: AddressGuard::new(http.allowed_networks.clone()),
            max_body: http.max_response_body_bytes,
            keep_body: 0,
        }
    }

    /// Sends `prepared` to `endpoint`; never fails, the result says what
    /// happened. Also returns the start of the response body (see `new`).
    pub async fn send(&self, endpoint: &Endpoint, prepared: &Prepared) -> (Response, Vec<u8>) {
        if let Some(ip) = literal_ip(&endpoint.url)
            && let Err(why) = self.guard.check(ip)
        {
            let error = format!("{ip} {why}; add its network to http.allowed_networks to allow it");
            return (Response::Blocked { error }, Vec::new());
        }
        let mut kept = Vec::new();
        // One timer: the `timeout` bounds connecting, the request and the body.
        let sent = tokio::time::timeout(
            endpoint.timeout,
            self.exchange(endpoint, prepared, &mut kept),
        )
        .await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(Failure::Blocked(error))) => Response::Blocked { error },
            Ok(Err(Failure::Failed(error))) => Response::Failed {
                error,
                timeout: false,
            },
            Ok(Err(Failure::TimedOut(error))) => Response::Failed {
                error,
                timeout: true,
            },
            Err(_) => Response::Failed {
                error: format!("timed out after {} ms", endpoint.timeout.as_millis()),
                timeout: true,
            },
        };
        (response, kept)
    }

    /// One request and its answer. A kept-alive connection can have been
    /// closed by the endpoint just as the request went out on it (it
    /// closes idle connections on a timer of its own). When a reused
    /// connection turns out closed before any of an answer came (the
    /// request handed back unsent, or the connection closed before a
    /// complete answer head), the request goes out once more, on a new
    /// connection; any other failure (a malformed answer, say) is the
    /// attempt's. Delivery is at least once anyway (a failed attempt would
    /// be retried), and a connection that failed is never reused, so an
    /// endpoint cannot get every attempt twice this way.
    async fn exchange(
        &self,
        endpoint: &Endpoint,
        prepared: &Prepared,
        kept: &mut Vec<u8>,
    ) -> Result<Response, Failure> {
        let mut conn = self
            .connector
            .checkout(&endpoint.url)
            .await
            .map_err(connect_failure)?;
        let mut request = build(endpoint, prepared)
            .map_err(|e| Failure::Failed(format!("request failed: {e}")))?;
        let response = loop {
            let again = match conn.sender.ready().await {
                Ok(()) => match conn.sender.try_send_request(request).await {
                    Ok(response) => break response,
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => (unsent, e.into_error()),
                        None if e.error().is_incomplete_message() => {
                            let e = e.into_error();
                            let rebuilt = build(endpoint, prepared)
                                .map_err(|e| Failure::Failed(format!("request failed: {e}")))?;
                            (rebuilt, e)
                        }
                        None => {
                            return Err(Failure::Failed(describe("request failed", e.error())));
                        }
                    },
                },
                Err(e) => (request, e),
            };
            if !conn.reused {
                return Err(Failure::Failed(describe("request failed", &again.1)));
            }
            request = again.0;
            conn = self
                .connector
                .fresh(conn.origin)
                .await
                .map_err(connect_failure)?;
        };
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()));
        // Read at most `max_body` bytes; the rest is never read (an
        // endless body cannot hold a delivery beyond its timeout), and the
        // connection is then not reused.
        let mut body = response.into_body();
        let (mut read, mut complete) = (0usize, false);
        while read < self.max_body {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(chunk) = frame.into_data() {
                        read += chunk.len();
                        let room = self.keep_body.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                }
                None => {
                    complete = true;
                    break;
                }
                // The status stands; the body broke off.
                Some(Err(_)) => break,
            }
        }
        if !complete && read >= self.max_body {
            complete = hyper::body::Body::is_end_stream(&body);
        }
        if complete {
            self.connector.checkin(conn);
        }
        Ok(Response::Status { code, retry_after })
    }
}

/// The request for `prepared`: the endpoint's headers, then hookpost's;
/// credentials in the URL become basic authentication.
fn build(
    endpoint: &Endpoint,
    prepared: &Prepared,
) -> Result<hyper::Request<Body>, hyper::http::Error> {
    let url = &endpoint.url;
    let method = match endpoint.method {
        Method::Post => hyper::Method::POST,
        Method::Put => hyper::Method::PUT,
    };
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(if target.is_empty() { "/" } else { target })
        .header(
            hyper::header::HOST,
            &url[url::Position::BeforeHost..url::Position::AfterPort],
        )
        // What reqwest, the client before, sent by default.
        .header(hyper::header::ACCEPT, HeaderValue::from_static("*/*"));
    if !url.username().is_empty() || url.password().is_some() {
        let mut pair: Vec<u8> = percent_decode_str(url.username()).collect();
        pair.push(b':');
        pair.extend(percent_decode_str(url.password().unwrap_or("")));
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        );
        let mut value = HeaderValue::try_from(value)?;
        value.set_sensitive(true);
        request = request.header(hyper::header::AUTHORIZATION, value);
    }
    for (name, value) in &endpoint.headers {
        let mut value = HeaderValue::try_from(value.expose())?;
        value.set_sensitive(true);
        request = request.header(HeaderName::try_from(name.as_str())?, value);
    }
    for (name, value) in &prepared.headers {
        request = request.header(HeaderName::from_static(name), value.as_str());
    }
    request.body(Body::new(prepared.body.clone()))
}

fn connect_failure(e: ConnectError) -> Failure {
    match e {
        ConnectError::Blocked(b) => Failure::Blocked(b.to_string()),
        ConnectError::TimedOut => Failure::TimedOut(format!("connection failed: {e}")),
        ConnectError::Failed(e) => Failure::Failed(format!("connection failed: {e}")),
    }
}

/// `kind: error: its causes`, without the URL (which may hold credentials).
fn describe(kind: &str, e: &hyper::Error) -> String {
    let mut text = format!("{kind}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn literal_ip(url: &url::Url) -> Option<std::net::IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(ip.into()),
        url::Host::Domain(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::Config;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the loopback server saw: each request's head, by connection.
    #[derive(Default)]
    struct Seen {
        heads: Mutex<Vec<(usize, String)>>,
    }

    /// How the server answers.
    #[derive(Clone, Copy)]
    enum Style {
        /// `200`, a 2-byte body, the connection kept open.
        KeepAlive,
        /// The same, then the connection closed without saying so.
        CloseAfter,
        /// `200` with a body of this many bytes.
        Big(usize),
    }

    async fn server(style: Style) -> (String, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(socket, n, style, s.clone()));
            }
        });
        (format!("127.0.0.1:{}", addr.port()), seen)
    }

    /// Answers the requests on one connection (number `n`) in `style`.
    async fn serve<S>(mut socket: S, n: usize, style: Style, seen: Arc<Seen>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        loop {
            // One request: its head, then content-length bytes.
            let mut chunk = [0u8; 4096];
            let Ok(read) = socket.read(&mut chunk).await else {
                return;
            };
            if read == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..read]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                continue;
            }
            buf.drain(..end + 4 + length);
            seen.heads.lock().unwrap().push((n, head));
            let body = match style {
                Style::Big(size) => "x".repeat(size),
                _ => "ok".to_owned(),
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if socket.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            let _ = socket.flush().await;
            if matches!(style, Style::CloseAfter) {
                return;
            }
        }
    }

    /// A TLS server for `localhost` with a self-signed certificate, offering
    /// h2 and http/1.1: its address, the certificate, and per connection
    /// the server name and protocol the client chose.
    async fn tls_server() -> (
        u16,
        rustls::pki_types::CertificateDer<'static>,
        Arc<Seen>,
        Arc<Mutex<Vec<(Option<String>, Option<Vec<u8>>)>>>,
    ) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = key.cert.der().clone();
        let private =
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, hellos) = (Arc::new(Seen::default()), Arc::new(Mutex::new(Vec::new())));
        let (s, h) = (seen.clone(), hellos.clone());
        tokio::spawn(async move {
            for n in 0.. {
                let (socket, _) = listener.accept().await.unwrap();
                let (acceptor, s, h) = (acceptor.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    // A refused handshake is the client's doing: nothing to serve.
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    h.lock().unwrap().push((
                        session.server_name().map(str::to_owned),
                        session.alpn_protocol().map(<[u8]>::to_vec),
                    ));
                    serve(tls, n, Style::KeepAlive, s).await;
                });
            }
        });
        (port, cert, seen, hellos)
    }

    fn endpoint(url: &str, extra: &str) -> Endpoint {
        let text = format!("[[endpoints]]\nid = \"e\"\nurl = \"{url}\"\nevents = [\"#\"]\n{extra}");
        Config::from_toml_str(&text, "t.toml".as_ref(), &[])
            .unwrap()
            .endpoints
            .remove(0)
    }

    fn sender(max_body: usize) -> Sender {
        let text = format!(
            "[http]\nallowed_networks = [\"127.0.0.0/8\"]\nmax_response_body_bytes = {max_body}\n"
        );
        let config = Config::from_toml_str(&text, "t.toml".as_ref(), &[]).unwrap();
        Sender::new(&config.http, 16).unwrap()
    }

    fn prepared() -> Prepared {
        Prepared {
            body: bytes::Bytes::from_static(b"{\"a\":1}"),
            webhook_id: "e1".into(),
            headers: vec![
                ("content-type", "application/json".into()),
                ("webhook-id", "e1".into()),
            ],
        }
    }

    fn ok(response: &Response) {
        assert!(
            matches!(response, Response::Status { code: 200, .. }),
            "{response:?}"
        );
    }

    #[tokio::test]
    async fn one_connection_carries_requests_one_after_another() {
        let (addr, seen) = server(Style::KeepAlive).await;
        let (endpoint, sender) = (
            endpoint(&format!("http://{addr}/hook?x=1"), ""),
            sender(1024),
        );
        for _ in 0..3 {
            let (response, body) = sender.send(&endpoint, &prepared()).await;
            ok(&response);
            assert_eq!(body, b"ok");
            assert_eq!(sender.connector.idle_count(), 1, "back in the pool");
        }
        let heads = seen.heads.lock().unwrap();
        assert_eq!(heads.len(), 3);
        assert!(
            heads.iter().all(|(n, _)| *n == 0),
            "one connection: {heads:?}"
        );
        let head = &heads[0].1;
        assert!(head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(&format!("host: {addr}")),
            "{head}"
        );
        assert!(head.contains("webhook-id: e1"), "{head}");
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_is_replaced_without_failing() {
        let (addr, seen) = server(Style::CloseAfter).await;
        let (endpoint, sender) = (endpoint(&format!("http://{addr}/"), ""), sender(1024));
        for _ in 0..5 {
            ok(&sender.send(&endpoint, &prepared()).await.0);
        }
        let heads = seen.heads.lock().unwrap();
        let connections: std::collections::BTreeSet<_> = heads.iter().map(|(n, _)| n).collect();
        assert_eq!((heads.len(), connections.len()), (5, 5), "{heads:?}");
    }

    /// The pooled connection is closed by the endpoint after it was
    /// checked in and before the connection's task noticed (this test's
    /// runtime thread blocks meanwhile): the request finds it closed and
    /// goes out on a new one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_on_a_connection_closed_unnoticed_is_sent_on_a_new_one() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closed) = (
            std::sync::mpsc::channel::<()>(),
            std::sync::mpsc::channel::<()>(),
        );
        let (close_tx, close_rx) = close;
        let (closed_tx, closed_rx) = closed;
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let served = std::thread::spawn(move || {
            let mut requests = 0;
            for round in 0..2 {
                let (mut socket, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let read = socket.read(&mut buf).unwrap();
                assert!(read > 0);
                requests += 1;
                socket.write_all(answer).unwrap();
                if round == 0 {
                    close_rx.recv().unwrap();
                    socket.shutdown(std::net::Shutdown::Both).unwrap();
                    drop(socket);
                    closed_tx.send(()).unwrap();
                }
            }
            requests
        });
        let (endpoint, sender) = (endpoint(&format!("http://{addr}/"), ""), sender(1024));
        ok(&sender.send(&endpoint, &prepared()).await.0);
        close_tx.send(()).unwrap();
        closed_rx.recv().unwrap();
        ok(&sender.send(&endpoint, &prepared()).await.0);
        assert_eq!(served.join().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_left_unread_and_its_connection_not_reused() {
        let (addr, seen) = server(Style::Big(100_000)).await;
        let (endpoint, sender) = (endpoint(&format!("http://{addr}/"), ""), sender(1024));
        for _ in 0..2 {
            let (response, kept) = sender.send(&endpoint, &prepared()).await;
            ok(&response);
            assert_eq!(kept.len(), 16, "the first keep_body bytes");
            assert_eq!(sender.connector.idle_count(), 0, "never back in the pool");
        }
        let heads = seen.heads.lock().unwrap();
        assert_eq!(
            heads.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[tokio::test]
    async fn credentials_in_the_url_and_configured_headers_are_sent() {
        let (addr, seen) = server(Style::KeepAlive).await;
        let endpoint = endpoint(
            &format!("http://us%40er:p%3Ass@{addr}/"),
            "headers = { X-Env = \"sandbox\" }",
        );
        ok(&sender(1024).send(&endpoint, &prepared()).await.0);
        let head = seen.heads.lock().unwrap()[0].1.to_ascii_lowercase();
        let basic = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
        assert!(
            head.contains(&format!(
                "authorization: basic {}",
                basic.to_ascii_lowercase()
            )),
            "{head}"
        );
        assert!(head.contains("x-env: sandbox"), "{head}");
        assert!(!head.contains("us%40er"), "{head}");
    }

    #[tokio::test]
    async fn https_goes_over_tls_to_the_hosts_name_with_http_1_1() {
        let (port, cert, seen, hellos) = tls_server().await;
        let http = Config::from_toml_str(
            "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n",
            "t.toml".as_ref(),
            &[],
        )
        .unwrap()
        .http;
        let guard = AddressGuard::new(http.allowed_networks.clone());
        let sender = Sender::with_connector(&http, Connector::with_roots(guard, vec![cert]));
        let endpoint = endpoint(&format!("https://localhost:{port}/tls"), "");
        for _ in 0..2 {
            ok(&sender.send(&endpoint, &prepared()).await.0);
        }
        let heads = seen.heads.lock().unwrap();
        assert_eq!(heads.len(), 2);
        assert!(heads.iter().all(|(n, _)| *n == 0), "kept alive: {heads:?}");
        assert!(
            heads[0].1.starts_with("POST /tls HTTP/1.1\r\n"),
            "{heads:?}"
        );
        assert_eq!(
            *hellos.lock().unwrap(),
            vec![(Some("localhost".to_owned()), Some(b"http/1.1".to_vec()))]
        );
    }

    /// `http.ca_file`: a certificate it holds is trusted beside the
    /// platform's roots, through the sender the dispatcher builds.
    #[tokio::test]
    async fn a_certificate_of_the_ca_file_is_trusted() {
        use base64::Engine as _;
        let (port, cert, seen, _) = tls_server().await;
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        );
        let file = std::env::temp_dir().join(format!("hookpost-ca-{port}.pem"));
        std::fs::write(&file, pem).unwrap();
        let config = Config::from_toml_str(
            &format!(
                "[http]\nallowed_networks = [\"127.0.0.0/8\"]\nca_file = \"{}\"\n",
                file.display()
            ),
            "t.toml".as_ref(),
            &[],
        )
        .unwrap();
        crate::validate(&config).expect("a usable trust anchor");
        let sender = Sender::new(&config.http, 0).expect("sender");
        let _ = std::fs::remove_file(&file);
        let endpoint = endpoint(&format!("https://localhost:{port}/ca"), "");
        ok(&sender.send(&endpoint, &prepared()).await.0);
        assert_eq!(seen.heads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_certificate_the_platform_does_not_trust_fails_the_request() {
        let (port, _, seen, _) = tls_server().await;
        let endpoint = endpoint(&format!("https://localhost:{port}/"), "");
        match sender(1024).send(&endpoint, &prepared()).await.0 {
            Response::Failed {
                error,
                timeout: false,
            } => {
                assert!(
                    error.starts_with("connection failed: TLS handshake: "),
                    "{error}"
                );
                assert!(error.contains("certificate"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(seen.heads.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refused_address_is_blocked_and_a_dead_port_fails() {
        let endpoint_at = |url: &str| endpoint(url, "");
        let blocked = Sender::new(
            &Config::from_toml_str("", "t.toml".as_ref(), &[])
                .unwrap()
                .http,
            0,
        )
        .unwrap();
        let (response, _) = blocked
            .send(&endpoint_at("http://127.0.0.1:9/"), &prepared())
            .await;
        assert!(matches!(response, Response::Blocked { .. }), "{response:?}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (response, _) = sender(1024)
            .send(
                &endpoint_at(&format!("http://127.0.0.1:{port}/")),
                &prepared(),
            )
            .await;
        match response {
            Response::Failed {
                error,
                timeout: false,
            } => {
                assert!(error.starts_with("connection failed: "), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
