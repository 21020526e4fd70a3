//! A TCP proxy in front of the broker. [`Proxy::down`] cuts every connection
//! and refuses new ones (the broker "goes away" for this test only, not for
//! tests running beside it); [`Proxy::up`] brings it back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 forwarding to `target` (host:port).
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (up2, cut2, stop2) = (up.clone(), cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = stop2.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let token = cut2.lock().expect("lock").clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            stop,
        }
    }

    /// An AMQP URL through this proxy, with `base`'s credentials and vhost.
    pub fn amqp_url(&self, base: &str) -> String {
        let rest = base.split_once("://").map_or(base, |(_, r)| r);
        let (creds, after) = rest.rsplit_once('@').map_or(("", rest), |(c, a)| (c, a));
        let path = after.find('/').map_or("/%2f", |i| &after[i..]);
        let creds = if creds.is_empty() {
            String::new()
        } else {
            format!("{creds}@")
        };
        format!("amqp://{creds}{}{path}", self.addr)
    }

    /// Cuts all connections and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut cut = self.cut.lock().expect("lock");
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().map(|c| c.cancel()).unwrap_or(());
    }
}

/// `host:port` of an AMQP URL (default port 5672).
pub fn broker_addr(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let after = rest.rsplit_once('@').map_or(rest, |(_, a)| a);
    let host = after.split('/').next().unwrap_or("127.0.0.1");
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}
