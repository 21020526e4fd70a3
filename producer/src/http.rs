//! The HTTP pieces the ingest and the management API share: bearer-token
//! check and JSON error responses.

use common::server::{HttpResponse, json};
use hyper::StatusCode;
use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use serde_json::json;
use subtle::ConstantTimeEq;

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
    let Some(token) = header.and_then(|h| h.to_str().ok()).and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    }) else {
        return false;
    };
    let token = token.trim().as_bytes();
    let found = tokens.iter().fold(subtle::Choice::from(0), |found, t| {
        found | t.expose().as_bytes().ct_eq(token)
    });
    found.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::secret::Redacted;

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
