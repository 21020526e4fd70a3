//! The console's HTTP answers: a page, a redirect, "not found", "refused",
//! and a cookie set on an answer.

use super::pages::{self, Ctx};
use bytes::Bytes;
use common::server::HttpResponse;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use maud::Markup;

pub(crate) fn html(status: StatusCode, markup: &Markup) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(markup.0.clone())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

pub(crate) fn redirect(to: &str) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub(crate) fn not_found(ctx: &Ctx) -> HttpResponse {
    html(
        StatusCode::NOT_FOUND,
        &pages::message(
            Some(ctx),
            "Not found",
            "There is no such page or endpoint here.",
        ),
    )
}

pub(crate) fn forbidden(ctx: &Ctx, text: &str) -> HttpResponse {
    html(
        StatusCode::FORBIDDEN,
        &pages::message(Some(ctx), "Refused", text),
    )
}

pub(crate) fn set_cookie(r: &mut HttpResponse, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}
