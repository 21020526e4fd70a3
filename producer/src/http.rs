//! The HTTP pieces the ingest and the management API share: the bearer-token
//! check, the JSON error responses (`{"error": ..., "field": ...}`) and
//! reading a request body with a size cap and a deadline.

use bytes::Bytes;
use common::server::{HttpResponse, json};
use http_body_util::{BodyExt, Limited};
use hyper::StatusCode;
use hyper::body::Body;
use hyper::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::json;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// A JSON error: `{"error": message}`, with `"field"` when one input is to blame.
pub(crate) fn error(status: StatusCode, message: &str, field: Option<&str>) -> HttpResponse {
    let body = match field {
        Some(field) => json!({ "error": message, "field": field }),
        None => json!({ "error": message }),
    };
    json(status, &body)
}

/// 408: the body took longer than `timeout`; the connection closes after it.
pub(crate) fn body_timeout(timeout: std::time::Duration) -> HttpResponse {
    let mut r = error(
        StatusCode::REQUEST_TIMEOUT,
        &format!(
            "request body not received within {} ms",
            timeout.as_millis()
        ),
        None,
    );
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 405 naming the methods the path takes, in the message and in `allow`.
pub(crate) fn method_not_allowed(allowed: &str) -> HttpResponse {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("use {allowed}"),
        None,
    );
    if let Ok(v) = HeaderValue::from_str(allowed) {
        r.headers_mut().insert("allow", v);
    }
    r
}

/// 413: the body is over `limit` bytes.
pub(crate) fn too_large(limit: usize) -> HttpResponse {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body over {limit} bytes"),
        None,
    )
}

/// 503 with `retry-after: <retry_after_s>`: nothing was stored; try again.
pub(crate) fn unavailable(message: &str, retry_after_s: &'static str) -> HttpResponse {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message, None);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(retry_after_s));
    r
}

/// 401 with `www-authenticate: Bearer`.
pub(crate) fn unauthorized() -> HttpResponse {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or invalid bearer token",
        None,
    );
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Whether `header` is `Bearer <one of tokens>`. Every token is compared, each
/// in constant time (`subtle`), so timing reveals neither which token nor how
/// much of one matched.
pub(crate) fn bearer_matches(
    header: Option<&HeaderValue>,
    tokens: &[common::secret::Redacted],
) -> bool {
    let Some(token) = bearer(header) else {
        return false;
    };
    let token = token.as_bytes();
    let found = tokens.iter().fold(subtle::Choice::from(0), |found, t| {
        found | t.expose().as_bytes().ct_eq(token)
    });
    found.into()
}

/// The token of `Bearer <token>` (surrounding spaces trimmed), if the
/// header is one.
pub(crate) fn bearer(header: Option<&HeaderValue>) -> Option<&str> {
    header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// 403: the caller is known but may not do this.
pub(crate) fn forbidden(message: &str) -> HttpResponse {
    error(StatusCode::FORBIDDEN, message, None)
}

/// Why a request body was not read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// More than the cap arrived.
    TooLarge,
    /// The whole body did not arrive in time.
    TimedOut,
    /// The body broke off (the connection failed mid-body).
    Broken,
}

/// Reads all of `body`: at most `limit` bytes, within `timeout`.
///
/// # Errors
/// [`BodyError`] says which bound was broken, so the caller picks its answer.
pub(crate) async fn read_body<B>(
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = Limited::new(body, limit).collect();
    let Ok(read) = tokio::time::timeout(timeout, read).await else {
        return Err(BodyError::TimedOut);
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Err(_) => Err(BodyError::Broken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::secret::Redacted;
    use http_body_util::Full;
    use hyper::body::Frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that sends `first`, then either stalls or fails.
    struct Partial {
        first: Option<Bytes>,
        fails: bool,
    }

    impl Body for Partial {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if let Some(first) = self.first.take() {
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
            if self.fails {
                Poll::Ready(Some(Err(std::io::Error::other("connection reset"))))
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_body_names_the_bound_that_was_broken() {
        let second = Duration::from_secs(1);
        let whole = read_body(Full::new(Bytes::from_static(b"12345")), 5, second).await;
        assert_eq!(whole, Ok(Bytes::from_static(b"12345")));
        let over = read_body(Full::new(Bytes::from_static(b"123456")), 5, second).await;
        assert_eq!(over, Err(BodyError::TooLarge));
        let stalled = Partial {
            first: Some(Bytes::from_static(b"12")),
            fails: false,
        };
        let started = tokio::time::Instant::now();
        assert_eq!(
            read_body(stalled, 5, second).await,
            Err(BodyError::TimedOut)
        );
        assert_eq!(started.elapsed(), second);
        let broken = Partial {
            first: Some(Bytes::from_static(b"12")),
            fails: true,
        };
        assert_eq!(read_body(broken, 5, second).await, Err(BodyError::Broken));
    }

    async fn body_of(r: HttpResponse) -> serde_json::Value {
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn shared_errors_keep_their_status_headers_and_body() {
        let r = method_not_allowed("GET, POST");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()["allow"], "GET, POST");
        assert_eq!(body_of(r).await, json!({ "error": "use GET, POST" }));
        let r = unavailable("broker unavailable; retry later", "5");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
        let r = too_large(64);
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_of(r).await, json!({ "error": "body over 64 bytes" }));
        let r = error(StatusCode::BAD_REQUEST, "bad", Some("type"));
        assert_eq!(body_of(r).await, json!({ "error": "bad", "field": "type" }));
        let r = unauthorized();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn bearer_matches_only_a_whole_configured_token() {
        let tokens = [
            Redacted::new("first-token-0123"),
            Redacted::new("second-token-4567"),
        ];
        let check = |h: Option<&str>| {
            let header = h.map(|h| HeaderValue::from_str(h).unwrap());
            bearer_matches(header.as_ref(), &tokens)
        };
        assert!(check(Some("Bearer first-token-0123")));
        assert!(check(Some("bearer second-token-4567")));
        assert!(check(Some("Bearer second-token-4567 ")));
        for refused in [
            None,
            Some("Bearer "),
            Some("Bearer first-token-012"),
            Some("Bearer first-token-01234"),
            Some("Bearer second-token-4568"),
            Some("Basic first-token-0123"),
            Some("first-token-0123"),
        ] {
            assert!(!check(refused), "{refused:?}");
        }
    }
}
