//! Sending a prepared request: one shared `reqwest::Client` (connection pool,
//! no redirects, guarded DNS), the endpoint's timeout, and the response body
//! read up to a cap.

use crate::delivery::classify::{Response, parse_retry_after};
use crate::delivery::guard::{AddressGuard, BlockedAddress, GuardedResolver};
use crate::delivery::request::Prepared;
use common::config::{Endpoint, HttpConfig, Method};
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

/// The process's HTTP client.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: AddressGuard,
    max_body: usize,
    keep_body: usize,
}

impl Sender {
    /// Builds the client; each answer keeps the first `keep_body` bytes of
    /// its body (for the attempt log; 0: none).
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(http: &HttpConfig, keep_body: usize) -> Result<Self, reqwest::Error> {
        let guard = AddressGuard::new(http.allowed_networks.clone());
        let client = reqwest::Client::builder()
            // A 3xx is an answer (dead-lettered as rejected), never followed:
            // a redirect could lead anywhere, including past the address guard.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(guard.clone())))
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            guard,
            max_body: http.max_response_body_bytes,
            keep_body: keep_body.min(http.max_response_body_bytes),
        })
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
        let method = match endpoint.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
        };
        // One timer: the `timeout` below bounds the request and the body.
        let mut request = self.client.request(method, endpoint.url.clone());
        for (name, value) in &endpoint.headers {
            request = request.header(name.as_str(), value.expose());
        }
        for (name, value) in &prepared.headers {
            request = request.header(*name, value.as_str());
        }
        let sent = tokio::time::timeout(endpoint.timeout, async {
            let mut response = request.body(prepared.body.clone()).send().await?;
            let code = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()));
            // Read at most `max_body` bytes; the rest is never read (an
            // endless body cannot hold a delivery beyond its timeout).
            let mut read = 0usize;
            while read < self.max_body {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        read += chunk.len();
                        let room = self.keep_body.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            Ok::<_, reqwest::Error>(Response::Status { code, retry_after })
        })
        .await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => describe(&e),
            Err(_) => Response::Failed {
                error: format!("timed out after {} ms", endpoint.timeout.as_millis()),
                timeout: true,
            },
        };
        (response, kept)
    }
}

fn literal_ip(url: &url::Url) -> Option<std::net::IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(ip.into()),
        url::Host::Domain(_) => None,
    }
}

/// A send error as a [`Response`], with its causes, without the URL (which may hold credentials).
fn describe(e: &reqwest::Error) -> Response {
    let mut source = e.source();
    let mut causes = Vec::new();
    while let Some(cause) = source {
        if let Some(blocked) = cause.downcast_ref::<BlockedAddress>() {
            return Response::Blocked {
                error: blocked.to_string(),
            };
        }
        causes.push(cause.to_string());
        source = cause.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body error"
    } else {
        "request failed"
    };
    let error = if causes.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", causes.join(": "))
    };
    Response::Failed {
        error,
        timeout: e.is_timeout(),
    }
}
