//! A TCP proxy in front of the broker. [`Proxy::down`] cuts every connection
//! and refuses new ones (the broker "goes away" for this test only, not for
//! tests running beside it); [`Proxy::up`] brings it back. [`Proxy::stall`]
//! stops passing the client's bytes on (and reading them), as a broker that
//! blocked a publisher does: the client's writes pile up in the socket
//! buffers and nothing it sends is answered; [`Proxy::resume`] passes them on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    stalled: watch::Sender<bool>,
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
        let stalled = watch::Sender::new(false);
        let (up2, cut2, stop2) = (up.clone(), cut.clone(), stop.clone());
        let stalled2 = stalled.clone();
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
                let stalled = stalled2.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let upstream = forward_unless_stalled(&mut client_rx, &mut server_tx, stalled);
                    tokio::select! {
                        _ = upstream => {}
                        _ = tokio::io::copy(&mut server_rx, &mut client_tx) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            stalled,
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

    /// Stops reading from clients and passing their bytes to the broker (on
    /// every connection, open or new); the broker's bytes still flow back.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Passes clients' bytes on again, those held back first.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

/// Copies `from` to `to`, reading nothing while `stalled` holds.
async fn forward_unless_stalled(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return Ok(());
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => n?,
            // Stalled while waiting to read: stop reading at once.
            _ = stalled.wait_for(|s| *s) => continue,
        };
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
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
