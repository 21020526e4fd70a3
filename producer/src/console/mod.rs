//! The web console (`/console` on the management API's listener): operators
//! and each tenant manage endpoints and see their deliveries in a browser.
//!
//! Every page is rendered on the server ([`pages`]) and every change is a
//! plain form post; there is no JavaScript. A change is made by calling the
//! management API's own handlers in-process with the signed-in [`Caller`]
//! attached ([`call`]), so the console applies exactly the API's rules: its
//! validation messages, its tenant scoping (another tenant's endpoint is
//! 404), its limits. Sessions and CSRF tokens: [`session`]. The few things
//! the API has no route for (pause and resume, a test event) are in
//! [`actions`], behind the same ownership check.

mod actions;
mod breakers;
mod dead;
mod form;
mod pages;
mod respond;
mod session;
mod views;

use crate::api::{Api, ApiBody, Caller, MAX_BODY_BYTES};
use crate::http::{BodyError, read_body};
use bytes::Bytes;
use common::server::{HttpResponse, Peer};
use form::Form;
use http_body_util::{BodyExt, Either, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use pages::Ctx;
pub(crate) use respond::{forbidden, html, not_found, redirect, set_cookie};
use serde_json::Value;
pub use session::{Attempts, Keys};
use session::{COOKIE, Session, Who};

/// The stylesheet, embedded in the binary.
const CSS: &str = include_str!("assets/console.css");

/// The console's state in the API process.
#[derive(Debug)]
pub struct Console {
    keys: Keys,
    attempts: Attempts,
    /// Whether cookies get `Secure` (`api.public_origin` is `https://…`).
    secure: bool,
    /// The transform sandbox (the dispatcher's), for "try it"; workers
    /// start on first use.
    sandbox: common::sandbox::Sandbox,
    /// Held while a dead-letter walk runs (one at a time per process).
    dead_letter_walk: tokio::sync::Mutex<()>,
    /// Transform tries running at once ([`TRIES`] at most).
    tries: tokio::sync::Semaphore,
    /// Open circuit breakers, as their operational events tell.
    breakers: std::sync::Arc<breakers::Breakers>,
}

/// Transform tries one API process runs at once.
pub const TRIES: usize = 2;

impl Console {
    /// The console of an API configured with `config`.
    pub fn new(config: &common::Config) -> Self {
        Self {
            keys: Keys::new(&config.api.tokens),
            attempts: Attempts::default(),
            secure: config
                .api
                .public_origin
                .as_deref()
                .is_some_and(|o| o.starts_with("https://")),
            sandbox: common::sandbox::Sandbox::new(
                common::sandbox::Sandbox::locate(config.transforms.worker_path.as_ref()),
                config.transforms.clone(),
                config.amqp.max_message_bytes,
            ),
            dead_letter_walk: tokio::sync::Mutex::new(()),
            tries: tokio::sync::Semaphore::new(TRIES),
            breakers: std::sync::Arc::default(),
        }
    }
}

impl Console {
    /// Starts following the circuit breakers' events (until `shutdown`).
    pub fn follow(
        &self,
        client: common::amqp::AmqpClient,
        topology: common::topology::Topology,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(breakers::follow(
            client,
            topology,
            self.breakers.clone(),
            shutdown,
        ))
    }
}

/// Whether `path` is the console's.
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// A signed-in request's session and who it acts as.
pub(crate) struct Signed {
    pub session: Session,
    pub caller: Caller,
    pub ctx: Ctx,
}

/// Handles a console request; every answer carries the security headers.
pub async fn handle(api: &Api, req: Request<ApiBody>) -> HttpResponse {
    let mut response = route(api, req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn route(api: &Api, req: Request<ApiBody>) -> HttpResponse {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/console/assets/console.css") => {
            let mut r = Response::new(Full::new(Bytes::from_static(CSS.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            return r;
        }
        (Method::GET, "/console") => return redirect("/console/endpoints"),
        (Method::GET, "/console/sign-in") => return html(StatusCode::OK, &pages::sign_in(None)),
        (Method::POST, "/console/sign-in") => return sign_in(api, req).await,
        (Method::GET | Method::POST, _) => {}
        _ => {
            return html(
                StatusCode::METHOD_NOT_ALLOWED,
                &pages::message(None, "Not allowed", "Use GET or POST."),
            );
        }
    }
    let Some(signed) = signed_in(api, &req).await else {
        return redirect("/console/sign-in");
    };
    if method == Method::POST {
        if !same_origin(api, &req) {
            return forbidden(&signed.ctx, "This form was sent from another site.");
        }
        let form = match read_form(api, req).await {
            Ok(form) => form,
            Err(r) => return r,
        };
        if !api
            .console()
            .keys
            .csrf_matches(&signed.session, form.get("csrf"))
        {
            return forbidden(
                &signed.ctx,
                "The form's CSRF token is missing or out of date: reload the page and try again.",
            );
        }
        if path == "/console/sign-out" {
            api.console().keys.sign_out(&signed.session);
            let mut r = redirect("/console/sign-in");
            set_cookie(&mut r, &session_cookie(api.console().secure, "", 0));
            return r;
        }
        return views::post(api, &signed, &path, &form).await;
    }
    views::get(api, &signed, &path, req.uri().query().unwrap_or("")).await
}

/// Signs in with the form's `token`: an operator or a live tenant token.
async fn sign_in(api: &Api, req: Request<ApiBody>) -> HttpResponse {
    let ip = req
        .extensions()
        .get::<Peer>()
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |p| p.0.ip());
    if let Err(wait) = api.console().attempts.hit(ip, std::time::Instant::now()) {
        let mut r = html(
            StatusCode::TOO_MANY_REQUESTS,
            &pages::sign_in(Some(&format!(
                "Too many sign-in attempts from this address: try again in {} s.",
                wait.as_secs().max(1)
            ))),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if !same_origin(api, &req) {
        return html(
            StatusCode::FORBIDDEN,
            &pages::sign_in(Some("This form was sent from another site.")),
        );
    }
    let form = match read_form(api, req).await {
        Ok(form) => form,
        Err(r) => return r,
    };
    let token = form.get("token");
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).ok();
    let who = match api.bearer_caller(bearer.as_ref()).await {
        Ok(Caller::Operator) => Who::Operator {
            fingerprint: api.console().keys.fingerprint(token),
        },
        Ok(Caller::Tenant(tenant)) => Who::Tenant {
            tenant,
            token_id: common::registry::tokens::parse_id(token)
                .unwrap_or_default()
                .to_owned(),
        },
        Err(_) => {
            return html(
                StatusCode::UNAUTHORIZED,
                &pages::sign_in(Some("That token is not valid here.")),
            );
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let Ok((cookie, _)) = api.console().keys.issue(&who, now) else {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            &pages::sign_in(Some("The system's random source failed; try again.")),
        );
    };
    let mut r = redirect("/console/endpoints");
    set_cookie(
        &mut r,
        &session_cookie(api.console().secure, &cookie, session::LIFETIME.as_secs()),
    );
    r
}

/// The session cookie's name and path. Served over https (`Secure`), it is
/// `__Host-` prefixed: a browser then takes it only from this very origin,
/// never from a sibling subdomain or over plain http, and the prefix needs
/// `Path=/`. Over plain http (a local console) it is scoped to `/console`.
fn cookie_name_and_path(secure: bool) -> (&'static str, &'static str) {
    if secure {
        (session::HOST_COOKIE, "/")
    } else {
        (COOKIE, "/console")
    }
}

/// The `Set-Cookie` value of a session (`value`; empty with `max_age` 0
/// ends it).
fn session_cookie(secure: bool, value: &str, max_age: u64) -> String {
    let (name, path) = cookie_name_and_path(secure);
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The request's session, if its cookie verifies and the token it was made
/// with still holds (an operator token still configured, a tenant token not
/// revoked).
async fn signed_in(api: &Api, req: &Request<ApiBody>) -> Option<Signed> {
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == cookie_name_and_path(api.console().secure).0)
        .map(|(_, v)| v.to_owned())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let session = api.console().keys.verify(&cookie, now)?;
    let (caller, who) = match &session.who {
        Who::Operator { fingerprint } => {
            let live = api
                .config()
                .api
                .tokens
                .iter()
                .any(|t| api.console().keys.fingerprint(t.expose()) == *fingerprint);
            if !live {
                return None;
            }
            (Caller::Operator, "operator".to_owned())
        }
        Who::Tenant { tenant, token_id } => {
            let state = api.current().await.ok()?;
            let live = state
                .tokens
                .get(token_id)
                .is_some_and(|t| t.tenant == *tenant);
            if !live {
                return None;
            }
            (Caller::Tenant(tenant.clone()), format!("tenant {tenant}"))
        }
    };
    let ctx = Ctx {
        who,
        csrf: api.console().keys.csrf(&session),
        operator: caller == Caller::Operator,
    };
    Some(Signed {
        session,
        caller,
        ctx,
    })
}

/// Whether a post came from this console: its `Origin` (sent by browsers
/// with every form post) names this host, or `api.public_origin`. A
/// request without one (not a browser) passes; its CSRF token still counts.
fn same_origin(api: &Api, req: &Request<ApiBody>) -> bool {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return true;
    };
    if api.config().api.public_origin.as_deref() == Some(origin.trim_end_matches('/')) {
        return true;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    host.is_some_and(|host| {
        origin == format!("http://{host}") || origin == format!("https://{host}")
    })
}

async fn read_form(api: &Api, req: Request<ApiBody>) -> Result<Form, HttpResponse> {
    match read_body(
        req.into_body(),
        MAX_BODY_BYTES,
        api.config().api.body_read_timeout,
    )
    .await
    {
        Ok(body) => Ok(Form::parse(&body)),
        Err(BodyError::TooLarge) => Err(html(
            StatusCode::PAYLOAD_TOO_LARGE,
            &pages::message(
                None,
                "Too large",
                &format!("A form may hold at most {MAX_BODY_BYTES} bytes."),
            ),
        )),
        Err(BodyError::TimedOut | BodyError::Broken) => Err(html(
            StatusCode::REQUEST_TIMEOUT,
            &pages::message(None, "Timed out", "The form did not arrive in time."),
        )),
    }
}

/// Calls the management API in-process as `caller`: its status and JSON.
pub(crate) async fn call(
    api: &Api,
    caller: &Caller,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let mut req = Request::new(Either::Right(Full::new(bytes)));
    *req.method_mut() = method;
    match path.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return (StatusCode::NOT_FOUND, Value::Null),
    }
    req.extensions_mut().insert(caller.clone());
    let response = api.handle(req).await;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// [`call`] on `/v1/endpoints/{id}{rest}` as the session's caller.
pub(crate) async fn on_endpoint(
    api: &Api,
    s: &Signed,
    method: Method,
    id: &str,
    rest: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let path = format!("/v1/endpoints/{}{rest}", enc(id));
    call(api, &s.caller, method, &path, body).await
}

/// Percent-encodes a path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The API's error message in `body`, or a fallback.
pub(crate) fn api_error(status: StatusCode, body: &Value) -> String {
    body.get("error")
        .and_then(Value::as_str)
        .map_or_else(|| format!("the API answered {status}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_host_prefixed_over_https_only() {
        let https = session_cookie(true, "v", 60);
        assert_eq!(
            https,
            "__Host-hookpost_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        let http = session_cookie(false, "v", 60);
        assert_eq!(
            http,
            "hookpost_session=v; Path=/console; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        // Signing out ends the same cookie (same name and path).
        assert!(
            session_cookie(true, "", 0).starts_with("__Host-hookpost_session=; Path=/; Max-Age=0")
        );
        assert!(
            session_cookie(false, "", 0).starts_with("hookpost_session=; Path=/console; Max-Age=0")
        );
    }
}
