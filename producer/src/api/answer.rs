//! The API's answers to what went wrong (a bad body or parameter, a
//! registry error, a broker away) and reading a request's JSON object.

use super::{ApiBody, MAX_BODY_BYTES};
use crate::http::{self, BodyError, body_timeout, error, read_body, too_large};
use common::registry::OpError;
use common::server::HttpResponse;
use hyper::{Request, StatusCode};
use serde_json::{Map, Value};
use std::time::Duration;

pub(super) async fn read_object(
    req: Request<ApiBody>,
    timeout: Duration,
) -> Result<Map<String, Value>, HttpResponse> {
    let body = match read_body(req.into_body(), MAX_BODY_BYTES, timeout).await {
        Ok(body) => body,
        Err(BodyError::TimedOut) => return Err(body_timeout(timeout)),
        // The API has always answered a body that broke off as too large
        // (the ingest answers 400); kept as it was.
        Err(BodyError::TooLarge | BodyError::Broken) => return Err(too_large(MAX_BODY_BYTES)),
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
            Some(""),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("body is not JSON: {e}"),
            Some(""),
        )),
    }
}

/// The raw value of query parameter `name` (the last one given).
pub(super) fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .next_back()
}

pub(super) fn op_error(e: &OpError) -> HttpResponse {
    match e {
        OpError::NotFound(_) | OpError::UnknownToken(_) => {
            error(StatusCode::NOT_FOUND, &e.to_string(), None)
        }
        OpError::Forbidden(m) => error(StatusCode::FORBIDDEN, m, Some("tenant")),
        OpError::Conflict(m) => error(StatusCode::CONFLICT, m, None),
        OpError::Invalid(f) => error(
            StatusCode::BAD_REQUEST,
            &format!("{}: {}", f.field, f.message),
            Some(&f.field),
        ),
        OpError::Broker(_) => unavailable(&e.to_string()),
        OpError::Internal(m) => {
            tracing::error!(error = %m, "Management API: internal error.");
            error(StatusCode::INTERNAL_SERVER_ERROR, m, None)
        }
    }
}

/// 400 naming the query or body `field` that is bad, and why.
pub(super) fn bad_request(field: &str, message: &str) -> HttpResponse {
    error(
        StatusCode::BAD_REQUEST,
        &format!("{field} {message}"),
        Some(field),
    )
}

pub(super) fn unavailable(message: &str) -> HttpResponse {
    tracing::warn!(error = %message, "Management API: broker unavailable.");
    // The reason names broker objects, never credentials (URLs are redacted).
    http::unavailable(&format!("broker unavailable ({message}); retry later"), "1")
}
