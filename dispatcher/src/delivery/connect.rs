//! Connections to endpoints: HTTP/1.1 over TCP, or TLS (rustls, the
//! platform's verifier), on hyper's connection API, kept alive and reused
//! per origin. Names resolve through the address guard
//! ([`crate::delivery::guard::resolve`]); literal addresses are checked by
//! the caller ([`crate::delivery::send`]). Nothing here follows a redirect
//! or goes through a proxy.

use crate::delivery::guard::{AddressGuard, BlockedAddress, ResolveError, resolve};
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_platform_verifier::BuilderVerifierExt;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A request body.
pub type Body = Full<Bytes>;

/// Longest a new connection (resolving, TCP, TLS, HTTP) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections older than this are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often idle connections are looked over (closed by the peer, expired).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Where a connection goes: connections are reused only for the same one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an `http` or `https` URL with a host.
    pub fn of(url: &url::Url) -> Option<Self> {
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        Some(Self {
            tls,
            host: url.host_str()?.to_owned(),
            port: url.port_or_known_default()?,
        })
    }
}

/// A connection out of the pool, to send one request on.
#[derive(Debug)]
pub struct Conn {
    /// Where it goes.
    pub origin: Origin,
    /// The request side of the connection.
    pub sender: SendRequest<Body>,
    /// It was used before (a request on it may find it closed since).
    pub reused: bool,
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address guard refused every address.
    #[error(transparent)]
    Blocked(#[from] BlockedAddress),
    /// Not connected within [`CONNECT_TIMEOUT`].
    #[error("timed out after {} ms", CONNECT_TIMEOUT.as_millis())]
    TimedOut,
    /// Anything else (resolving, refused, reset, TLS).
    #[error("{0}")]
    Failed(String),
}

impl From<ResolveError> for ConnectError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Blocked(b) => Self::Blocked(b),
            ResolveError::Lookup(_) => Self::Failed(e.to_string()),
        }
    }
}

/// The process's connections: made on demand, idle ones kept per origin.
#[derive(Debug)]
pub struct Connector {
    guard: AddressGuard,
    tls: Arc<rustls::ClientConfig>,
    idle: Mutex<Idle>,
}

/// Idle connections by origin, each with the time it became idle.
type Idle = HashMap<Origin, Vec<(SendRequest<Body>, Instant)>>;

impl Connector {
    /// A connector resolving through `guard`, with the platform's trusted
    /// roots for TLS.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built (no usable root store).
    pub fn new(guard: AddressGuard) -> Result<Self, rustls::Error> {
        Self::trusting(guard, &[])
    }

    /// [`Connector::new`], trusting the certificates `extra_roots` (DER,
    /// `http.ca_file`'s) beside the platform's roots.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built: no usable root store, or
    /// a certificate of `extra_roots` that is not a usable trust anchor.
    pub fn trusting(guard: AddressGuard, extra_roots: &[Vec<u8>]) -> Result<Self, rustls::Error> {
        let builder = tls_builder()?;
        let tls = if extra_roots.is_empty() {
            builder.with_platform_verifier()?
        } else {
            let roots = extra_roots
                .iter()
                .map(|der| rustls::pki_types::CertificateDer::from(der.clone()));
            let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
                roots,
                builder.crypto_provider().clone(),
            )?;
            // rustls's way to install a verifier of one's own; this one is
            // the platform's, as `with_platform_verifier` installs it.
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
        .with_no_client_auth();
        Ok(Self::with_tls(guard, tls))
    }

    /// A connector using `tls` (its protocols set to HTTP/1.1 only).
    fn with_tls(guard: AddressGuard, mut tls: rustls::ClientConfig) -> Self {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            guard,
            tls: Arc::new(tls),
            idle: Mutex::default(),
        }
    }

    /// Closes idle connections that expired or that the peer closed, every
    /// [`SWEEP_EVERY`] until `connector` is dropped, so a connection to an
    /// endpoint that gets no more requests does not stay open.
    pub fn sweep_idle(connector: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(connector);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(connector) = weak.upgrade() else {
                    return;
                };
                connector.sweep();
            }
        });
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|_, conns| {
            conns.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
            !conns.is_empty()
        });
    }

    /// A connector trusting only `roots` (tests: certificates of their own).
    #[cfg(test)]
    pub(crate) fn with_roots(
        guard: AddressGuard,
        roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Self {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root).expect("a root certificate");
        }
        let tls = tls_builder()
            .expect("protocol versions")
            .with_root_certificates(store)
            .with_no_client_auth();
        Self::with_tls(guard, tls)
    }

    /// An idle connection to `url`'s origin, or a new one.
    ///
    /// # Errors
    /// [`ConnectError`]; an unsupported URL is `Failed`.
    pub async fn checkout(&self, url: &url::Url) -> Result<Conn, ConnectError> {
        let origin = Origin::of(url)
            .ok_or_else(|| ConnectError::Failed("not an http or https URL".into()))?;
        if let Some(sender) = self.take_idle(&origin) {
            return Ok(Conn {
                origin,
                sender,
                reused: true,
            });
        }
        self.fresh(origin).await
    }

    /// A new connection to `origin`, never a pooled one.
    ///
    /// # Errors
    /// As [`Connector::checkout`].
    pub async fn fresh(&self, origin: Origin) -> Result<Conn, ConnectError> {
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(&origin))
            .await
            .map_err(|_| ConnectError::TimedOut)??;
        Ok(Conn {
            origin,
            sender,
            reused: false,
        })
    }

    /// Puts a connection whose last response was read to the end back for
    /// reuse (a closed one is dropped).
    pub fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.entry(conn.origin)
            .or_default()
            .push((conn.sender, now));
    }

    /// Idle connections held, over all origins.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.values().map(Vec::len).sum()
    }

    /// The most recently used idle connection to `origin` that is still
    /// open and not expired; the expired ones are dropped (closing them).
    fn take_idle(&self, origin: &Origin) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let conns = idle.get_mut(origin)?;
        let mut found = None;
        while let Some((sender, since)) = conns.pop() {
            if !sender.is_closed() && now.duration_since(since) < IDLE_TIMEOUT {
                found = Some(sender);
                break;
            }
        }
        if conns.is_empty() {
            idle.remove(origin);
        }
        found
    }

    async fn connect(&self, origin: &Origin) -> Result<SendRequest<Body>, ConnectError> {
        let addrs = match origin
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
        {
            Ok(ip) => {
                // Checked by the sender already; checked again so that no
                // caller can get past the guard.
                self.guard.check(ip).map_err(|why| BlockedAddress {
                    host: origin.host.clone(),
                    resolved: 1,
                    ip,
                    why,
                })?;
                vec![SocketAddr::new(ip, origin.port)]
            }
            Err(_) => resolve(&self.guard, &origin.host, origin.port).await?,
        };
        let stream = connect_any(&addrs).await?;
        let _ = stream.set_nodelay(true);
        if origin.tls {
            let name = rustls::pki_types::ServerName::try_from(
                origin
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| ConnectError::Failed(format!("TLS: invalid server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, stream)
                .await
                .map_err(|e| ConnectError::Failed(format!("TLS handshake: {e}")))?;
            handshake(TokioIo::new(stream)).await
        } else {
            handshake(TokioIo::new(stream)).await
        }
    }
}

/// TLS with aws-lc-rs and its safe default protocol versions, before the
/// certificate verifier is chosen.
fn tls_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
}

/// How long a connection attempt runs alone before the next address is
/// tried beside it (RFC 8305, "Happy Eyeballs", recommends 250 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to whichever of `addrs` answers first, within
/// [`CONNECT_TIMEOUT`] in all. The addresses are tried in the resolver's
/// order with the families alternating ([`interleaved`]); each attempt runs
/// alone for [`ATTEMPT_DELAY`], or until it fails, before the next starts
/// beside it. So an address that drops packets (a broken IPv6 record, say)
/// delays a new connection by a quarter of a second, not by its timeout.
async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    if addrs.is_empty() {
        return Err(ConnectError::Failed("no address to connect to".into()));
    }
    let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    tokio::pin!(deadline);
    let mut waiting = interleaved(addrs).into_iter();
    let mut attempts = FuturesUnordered::new();
    let mut refused = None;
    attempts.extend(waiting.next().map(TcpStream::connect));
    loop {
        let more = waiting.len() > 0;
        tokio::select! {
            done = attempts.next(), if !attempts.is_empty() => match done {
                Some(Ok(stream)) => return Ok(stream),
                // A refusal starts the next attempt at once.
                Some(Err(e)) => {
                    refused = Some(e.to_string());
                    attempts.extend(waiting.next().map(TcpStream::connect));
                }
                None => {}
            },
            () = tokio::time::sleep(ATTEMPT_DELAY), if more => {
                attempts.extend(waiting.next().map(TcpStream::connect));
            }
            () = &mut deadline => break,
        }
        if attempts.is_empty() && waiting.len() == 0 {
            break;
        }
    }
    // Only when every address stayed silent is it a timeout.
    Err(match refused {
        Some(e) => ConnectError::Failed(e),
        None => ConnectError::TimedOut,
    })
}

/// `addrs` in the resolver's order, but alternating between IPv6 and IPv4
/// from the family of the first (RFC 8305, section 4).
fn interleaved(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut first, mut second): (VecDeque<SocketAddr>, VecDeque<SocketAddr>) =
        addrs.iter().copied().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(addrs.len());
    while !first.is_empty() || !second.is_empty() {
        out.extend(first.pop_front());
        out.extend(second.pop_front());
    }
    out
}

/// HTTP/1.1 on `io`; the connection is driven by a task of its own, which
/// ends when the connection closes or every handle to it is dropped.
async fn handshake<T>(io: T) -> Result<SendRequest<Body>, ConnectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|e| ConnectError::Failed(e.to_string()))?;
    // Its error, if any, reaches the request in flight on it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback listener whose accepted connections stay open (held by
    /// its task) until the task is aborted; its URL.
    async fn holding_listener() -> (url::Url, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().await.unwrap());
            }
        });
        (url, held)
    }

    fn open() -> Connector {
        Connector::new(AddressGuard::new(vec!["127.0.0.0/8".parse().unwrap()])).unwrap()
    }

    #[test]
    fn origins_differ_by_scheme_host_and_port() {
        let o = |u: &str| Origin::of(&u.parse().unwrap());
        assert_eq!(o("http://a.example/x?y"), o("http://a.example:80/z"));
        assert_ne!(o("http://a.example/"), o("https://a.example/"));
        assert_ne!(o("http://a.example/"), o("http://a.example:8080/"));
        assert_ne!(o("http://a.example/"), o("http://b.example/"));
        assert_eq!(o("ftp://a.example/"), None);
    }

    #[tokio::test]
    async fn a_refused_literal_address_is_blocked_before_connecting() {
        let connector = Connector::new(AddressGuard::default()).unwrap();
        for url in [
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
            "https://[::ffff:127.0.0.1]:9/",
            "http://0x7f.1:9/",
        ] {
            match connector.checkout(&url.parse().unwrap()).await {
                Err(ConnectError::Blocked(b)) => {
                    assert!(b.to_string().contains("loopback"), "{url}: {b}");
                }
                other => panic!("{url} must be blocked: {other:?}"),
            }
        }
    }

    /// A loopback listener whose accept queue is full: it drops new
    /// connections' SYNs, so connecting to it gets no answer at all. Keep
    /// what it returns alive while it should stay silent.
    fn silent_listener() -> (
        SocketAddr,
        tokio::net::TcpListener,
        Vec<std::net::TcpStream>,
    ) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener = socket.listen(0).unwrap();
        let mut filled = Vec::new();
        while let Ok(s) =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300))
        {
            filled.push(s);
            assert!(filled.len() < 64, "the accept queue never filled up");
        }
        (addr, listener, filled)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_gets_no_answer_times_out() {
        let (addr, _listener, _filled) = silent_listener();
        let url = format!("http://{addr}/").parse().unwrap();
        let began = Instant::now();
        match open().checkout(&url).await {
            Err(ConnectError::TimedOut) => {}
            other => panic!("must time out: {other:?}"),
        }
        assert!(began.elapsed() >= CONNECT_TIMEOUT, "{:?}", began.elapsed());
    }

    /// An address that drops packets holds a new connection up for
    /// [`ATTEMPT_DELAY`] only: the next address is tried beside it (in
    /// turn, it took half of [`CONNECT_TIMEOUT`]). Real time: a paused
    /// clock could jump past a loopback connect not yet reported.
    #[tokio::test]
    async fn a_silent_address_delays_the_next_by_the_attempt_delay_only() {
        let (silent, _listener, _filled) = silent_listener();
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        let began = Instant::now();
        let stream = connect_any(&[silent, good_addr]).await.expect("connects");
        let took = began.elapsed();
        assert_eq!(stream.peer_addr().unwrap(), good_addr);
        assert!(
            (ATTEMPT_DELAY..CONNECT_TIMEOUT / 3).contains(&took),
            "took {took:?}"
        );
    }

    /// A refused address gives way to the next at once.
    #[tokio::test]
    async fn a_refused_address_gives_way_at_once() {
        // Bound, not listening: refused, and the port stays this test's.
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let refused = closed.local_addr().unwrap();
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        let began = Instant::now();
        let stream = connect_any(&[refused, good_addr]).await.expect("connects");
        assert_eq!(stream.peer_addr().unwrap(), good_addr);
        assert!(began.elapsed() < ATTEMPT_DELAY, "{:?}", began.elapsed());
        // Every address refused: the refusal is the error, not a timeout.
        match connect_any(&[refused, refused]).await {
            Err(ConnectError::Failed(e)) => assert!(e.contains("refused"), "{e}"),
            other => panic!("must fail: {other:?}"),
        }
    }

    #[test]
    fn the_families_alternate_starting_with_the_first_address_s_family() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (v6a, v6b, v4a, v4b) = (a("[::1]:1"), a("[::2]:1"), a("10.0.0.1:1"), a("10.0.0.2:1"));
        assert_eq!(interleaved(&[v6a, v6b, v4a, v4b]), [v6a, v4a, v6b, v4b]);
        assert_eq!(interleaved(&[v4a, v6a, v6b]), [v4a, v6a, v6b]);
        assert_eq!(interleaved(&[v4a, v4b, v6a]), [v4a, v6a, v4b]);
        assert_eq!(interleaved(&[v4a]), [v4a]);
        assert!(interleaved(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_connection_refused_is_a_failure() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/").parse().unwrap();
        match open().checkout(&url).await {
            Err(ConnectError::Failed(e)) => assert!(e.contains("refused"), "{e}"),
            other => panic!("must fail: {other:?}"),
        }
    }

    #[tokio::test]
    async fn idle_connections_are_reused_until_they_expire() {
        let (url, held) = holding_listener().await;
        let connector = open();
        let conn = connector.checkout(&url).await.unwrap();
        assert!(!conn.reused);
        connector.checkin(conn);
        assert_eq!(connector.idle_count(), 1);
        let again = connector.checkout(&url).await.unwrap();
        assert!(again.reused, "an idle connection is reused");
        connector.checkin(again);
        // Only the clock moves from here (no connection is made).
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        let origin = Origin::of(&url).unwrap();
        let kept = connector.take_idle(&origin).expect("not expired yet");
        connector.checkin(Conn {
            origin: origin.clone(),
            sender: kept,
            reused: true,
        });
        tokio::time::advance(IDLE_TIMEOUT).await;
        assert!(
            connector.take_idle(&origin).is_none(),
            "an expired one is not"
        );
        assert_eq!(connector.idle_count(), 0);
        held.abort();
    }

    #[tokio::test]
    async fn idle_connections_are_closed_without_traffic() {
        let (url, held) = holding_listener().await;
        let connector = Arc::new(open());
        let conn = connector.checkout(&url).await.unwrap();
        connector.checkin(conn);
        tokio::time::pause();
        Connector::sweep_idle(&connector);
        tokio::time::advance(IDLE_TIMEOUT - SWEEP_EVERY).await;
        tokio::task::yield_now().await;
        assert_eq!(connector.idle_count(), 1, "not expired yet");
        // Nothing is sent: the sweeper alone closes it.
        tokio::time::advance(2 * SWEEP_EVERY).await;
        tokio::task::yield_now().await;
        assert_eq!(connector.idle_count(), 0);
        held.abort();
    }
}
