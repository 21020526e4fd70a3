//! The endpoint management API (`hookpost-producer serve` with `[api]
//! tokens`): register, update, fetch, list and remove endpoints at runtime.
//! The contract is `deploy/openapi.json`; the registry lives in RabbitMQ
//! ([`common::registry`]).
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/endpoints` | every endpoint: registered ones, then the config file's (read-only) |
//! | `POST /v1/endpoints` | registers one (201); without `secrets`, one is generated and returned once |
//! | `GET /v1/endpoints/{id}` | one endpoint |
//! | `PUT /v1/endpoints/{id}` | replaces it (secrets and header values kept when left out) |
//! | `PATCH /v1/endpoints/{id}` | JSON merge patch |
//! | `DELETE /v1/endpoints/{id}[?force=true]` | removes it; its queue goes once empty (with `force`, pending messages are dead-lettered first) |
//! | `POST /v1/endpoints/{id}/secret/rotate` | new secret, returned once; the old ones sign on for `registry.secret_overlap_ms` |
//! | `POST /v1/tenants/{tenant}/tokens` | mints a tenant token, returned once (operator only) |
//! | `GET /v1/tenants/{tenant}/tokens` | the tenant's live tokens: ids and creation times (operator only) |
//! | `DELETE /v1/tenants/{tenant}/tokens/{id}` | revokes one (operator only) |
//!
//! Two kinds of bearer token ([`Caller`]): an operator token (`api.tokens`)
//! may do everything; a tenant token (`hptk_…`, `tenants.rs`) sees only its
//! tenant's registered endpoints (any other answers 404 as if it did not
//! exist), cannot name another tenant in a body (403), and gets 403 on the
//! operator-only routes.

mod answer;
pub(crate) mod attempts;
mod follower;
mod replays;
mod tenants;
mod views;
use answer::{bad_request, op_error, query_param, read_object, unavailable};
use follower::follow;
use views::created;

use crate::http::{self, bearer_matches, error, method_not_allowed, unauthorized};
use common::Config;
use common::amqp::AmqpClient;
use common::registry;
use common::registry::control::{self, Holds, State};
use common::registry::{Mode, OpError, Registry};
use common::server::{HttpResponse, json};
use common::topology::Topology;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Every route: path template and methods (what `deploy/openapi.json` documents).
pub const ROUTES: [(&str, &[&str]); 9] = [
    ("/v1/endpoints", &["GET", "POST"]),
    ("/v1/endpoints/{id}", &["GET", "PUT", "PATCH", "DELETE"]),
    ("/v1/endpoints/{id}/secret/rotate", &["POST"]),
    ("/v1/tenants/{tenant}/tokens", &["GET", "POST"]),
    ("/v1/tenants/{tenant}/tokens/{id}", &["DELETE"]),
    ("/v1/endpoints/{id}/attempts", &["GET"]),
    ("/v1/events/{id}/attempts", &["GET"]),
    ("/v1/endpoints/{id}/replays", &["GET", "POST"]),
    ("/v1/endpoints/{id}/replays/{replay_id}", &["GET", "DELETE"]),
];

/// Who a request acts for, from its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An operator token (`api.tokens`): every endpoint and route.
    Operator,
    /// A live tenant token: this tenant's registered endpoints only.
    Tenant(String),
}

/// A request body: from the network, or built in-process (the console
/// calls the API's handlers with the signed-in caller attached).
pub type ApiBody =
    http_body_util::Either<hyper::body::Incoming, http_body_util::Full<bytes::Bytes>>;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The management API service.
#[derive(Debug)]
pub struct Api {
    config: Config,
    client: AmqpClient,
    shutdown: CancellationToken,
    /// The registry as the control stream says, followed live (reads are
    /// served from it without touching the stream).
    state: watch::Receiver<Holds>,
    /// Whether `state` has caught up with the stream once.
    loaded: Arc<AtomicBool>,
    /// Writes read the registry through the follower of `state`.
    reads: control::FollowerReads,
    /// Replays from the archive started here.
    replays: replays::Replays,
    /// The process's metrics (replays), when it serves them.
    metrics: Option<common::metrics::ProducerMetrics>,
    /// The web console's sessions and sign-in limits.
    console: crate::console::Console,
    /// The control stream's and the console's followers, awaited (they
    /// close their channels) before the connection closes.
    followers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Api {
    /// An API over `config`'s broker.
    pub fn new(config: Config, shutdown: CancellationToken) -> Self {
        let client = AmqpClient::new(
            config.amqp.urls.clone(),
            "hookpost-api",
            config.amqp.max_reconnect_delay,
        );
        let (tx, state) = watch::channel(Holds::default());
        let loaded = Arc::new(AtomicBool::new(false));
        let reads = control::FollowerReads::default();
        let follower = tokio::spawn(follow(
            client.clone(),
            Topology::for_config(&config),
            tx,
            loaded.clone(),
            reads.clone(),
            shutdown.clone(),
        ));
        let console = crate::console::Console::new(&config);
        let console_follower = console.follow(
            client.clone(),
            Topology::for_config(&config),
            shutdown.clone(),
        );
        Self {
            client,
            shutdown,
            state,
            loaded,
            reads,
            replays: replays::Replays::default(),
            metrics: None,
            console,
            config,
            followers: std::sync::Mutex::new(vec![follower, console_follower]),
        }
    }

    /// The config this API serves.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The registry on `conn`, its reads answered by this API's follower.
    pub(crate) fn registry<'a>(&'a self, conn: &'a lapin::Connection) -> Registry<'a> {
        Registry::new(conn, &self.config).with_follower(self.reads.clone())
    }

    /// The web console's state.
    pub(crate) fn console(&self) -> &crate::console::Console {
        &self.console
    }

    /// The live registry; right after start, waits (up to
    /// `amqp.publish_timeout_ms`) for it to be read once, then 503.
    pub(crate) async fn current(&self) -> Result<Holds, OpError> {
        let deadline = tokio::time::Instant::now() + self.config.amqp.publish_timeout;
        while !self.loaded.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() >= deadline {
                return Err(OpError::Broker(anyhow::anyhow!(
                    "the registry is still loading from the broker"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.state.borrow().clone())
    }

    /// Waits (a little) until the live registry shows a write, so a read
    /// right after it sees it; the write itself is already durable.
    /// Waits (at most 5 s) until this process's follower has applied what
    /// `done` looks for; whether it has.
    pub(crate) async fn settle(&self, done: impl Fn(&State) -> bool) -> bool {
        let mut state = self.state.clone();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| done(s))).await,
            Ok(Ok(_))
        )
    }

    /// Serves on `listener` until shutdown; in-flight requests finish first.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let shutdown = self.shutdown.clone();
        let client = self.client.clone();
        let api = self.clone();
        common::server::serve(
            listener,
            self.config.api.limits,
            move |req| {
                let this = self.clone();
                Box::pin(async move { this.handle(req.map(http_body_util::Either::Left)).await })
            },
            shutdown,
        )
        .await;
        let followers: Vec<_> = (api.followers.lock())
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            futures_util::future::join_all(followers),
        )
        .await;
        client.close().await;
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<ApiBody>) -> HttpResponse {
        let path = req.uri().path().to_owned();
        if crate::console::is_console_path(&path) {
            return Box::pin(crate::console::handle(self, req)).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/tenants/") {
            return tenants::handle(self, req, rest).await;
        }
        if attempts::is_attempts_path(&path) {
            return attempts::handle(self, req, &path).await;
        }
        if replays::is_replays_path(&path) {
            return replays::handle(self, req, &path).await;
        }
        let Some(rest) = path.strip_prefix("/v1/endpoints") else {
            return error(
                StatusCode::NOT_FOUND,
                "not found; the API is under /v1/endpoints, /v1/events and /v1/tenants, the console under /console",
                None,
            );
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        let template = match segments.as_slice() {
            [] => ROUTES[0].0,
            [_] => ROUTES[1].0,
            [_, "secret", "rotate"] => ROUTES[2].0,
            _ => return error(StatusCode::NOT_FOUND, "not found", None),
        };
        let methods = ROUTES
            .iter()
            .find(|(t, _)| *t == template)
            .map_or(&[][..], |(_, m)| *m);
        if !methods.contains(&method.as_str()) {
            return method_not_allowed(&methods.join(", "));
        }
        let caller = match self.caller(&req).await {
            Ok(caller) => caller,
            Err(r) => return r,
        };
        let query = req.uri().query().unwrap_or("");
        let force = query
            .split('&')
            .any(|p| p == "force=true" || p == "force=1");
        let tenant_filter = match query_param(query, "tenant") {
            Some(t) => match registry::check_tenant(t) {
                Ok(()) => Some(t.to_owned()),
                Err(e) => return op_error(&e),
            },
            None => None,
        };
        let id = segments.first().map(|s| (*s).to_owned());
        let body =
            if matches!(method, Method::POST | Method::PUT | Method::PATCH) && segments.len() < 2 {
                match read_object(req, self.config.api.body_read_timeout).await {
                    Ok(body) => Some(body),
                    Err(r) => return r,
                }
            } else {
                None
            };
        // Writes wait for the live follower's first read too: it creates
        // the control stream on a new broker, and two creations at once
        // would fail.
        if let Err(e) = self.current().await {
            return op_error(&e);
        }
        let conn = match self.broker().await {
            Ok(conn) => conn,
            Err(r) => return r,
        };
        let registry = match &caller {
            Caller::Operator => self.registry(&conn),
            Caller::Tenant(t) => self.registry(&conn).scoped(t),
        };
        let result = match (method.clone(), id, body) {
            (Method::GET, None, _) => self.list(&caller, tenant_filter.as_deref()).await,
            (Method::GET, Some(id), _) => self.get(&caller, &id).await,
            (Method::POST, None, Some(body)) => match registry.create(body).await {
                Ok((stored, generated)) => {
                    let version = stored.version;
                    let id = stored.id.clone();
                    self.settle(|s| s.endpoints.get(&id).is_some_and(|e| e.version >= version))
                        .await;
                    Ok(created(&stored, generated))
                }
                Err(e) => Err(e),
            },
            (Method::PUT | Method::PATCH, Some(id), Some(body)) => {
                let mode = if method == Method::PUT {
                    Mode::Replace
                } else {
                    Mode::Merge
                };
                match registry.update(&id, body, mode).await {
                    Ok(stored) => {
                        let version = stored.version;
                        self.settle(|s| s.endpoints.get(&id).is_some_and(|e| e.version >= version))
                            .await;
                        Ok(json(StatusCode::OK, &registry::public_view(&stored, false)))
                    }
                    Err(e) => Err(e),
                }
            }
            (Method::DELETE, Some(id), _) => match registry.delete(&id, force).await {
                Ok(d) => {
                    self.settle(|s| !s.endpoints.contains_key(&id)).await;
                    Ok(json(StatusCode::OK, &json!(d)))
                }
                Err(e) => Err(e),
            },
            (Method::POST, Some(id), _) => match registry.rotate_secret(&id).await {
                Ok((stored, secret)) => {
                    let version = stored.version;
                    self.settle(|s| s.endpoints.get(&id).is_some_and(|e| e.version >= version))
                        .await;
                    Ok(json(
                        StatusCode::OK,
                        &json!({
                            "secret": secret,
                            "endpoint": registry::public_view(&stored, false),
                            "note": "the new secret is shown once; previous secrets keep signing until their expires_at"
                        }),
                    ))
                }
                Err(e) => Err(e),
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "a JSON object body is required",
                    None,
                );
            }
        };
        match result {
            Ok(response) => response,
            Err(e) => op_error(&e),
        }
    }

    /// The broker connection, within `amqp.publish_timeout`; 503 otherwise.
    pub(crate) async fn broker(&self) -> Result<Arc<lapin::Connection>, HttpResponse> {
        self.client
            .connection(
                Some(tokio::time::Instant::now() + self.config.amqp.publish_timeout),
                &self.shutdown,
            )
            .await
            .map_err(|e| unavailable(&e.to_string()))
    }

    /// Who a request acts for: the [`Caller`] attached in-process (the
    /// console's signed-in session; a request from the network cannot carry
    /// one), else its `authorization` header.
    async fn caller(&self, req: &Request<ApiBody>) -> Result<Caller, HttpResponse> {
        if let Some(caller) = req.extensions().get::<Caller>() {
            return Ok(caller.clone());
        }
        self.bearer_caller(req.headers().get(AUTHORIZATION)).await
    }

    /// Who the `authorization` header is: an operator token, a live tenant
    /// token, or 401. Operator tokens are compared first, each in constant
    /// time; a tenant token is checked for its format before it is hashed.
    pub(crate) async fn bearer_caller(
        &self,
        header: Option<&HeaderValue>,
    ) -> Result<Caller, HttpResponse> {
        if bearer_matches(header, &self.config.api.tokens) {
            return Ok(Caller::Operator);
        }
        let Some(token) = http::bearer(header) else {
            return Err(unauthorized());
        };
        if registry::tokens::parse_id(token).is_none() {
            return Err(unauthorized());
        }
        let state = self.current().await.map_err(|e| op_error(&e))?;
        registry::tokens::authenticate(&state, token)
            .map(|tenant| Caller::Tenant(tenant.to_owned()))
            .ok_or_else(unauthorized)
    }
}

/// Serves the management API on `listener` until `shutdown`.
///
/// # Errors
/// When `[api] tokens` is empty (the API never runs unauthenticated).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_metrics(config, listener, shutdown, None).await
}

/// [`serve`], counting the API's replays in `metrics`.
///
/// # Errors
/// See [`serve`].
pub async fn serve_with_metrics(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    metrics: Option<common::metrics::ProducerMetrics>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.api.tokens.is_empty(),
        "{}: key `api.tokens`: set at least one bearer token before serving the management API",
        config.origin.display()
    );
    if config.registry.secrets_key.is_none() {
        tracing::warn!(
            "registry.secrets_key is not set: endpoints can be registered only without secrets or headers."
        );
    }
    tracing::info!(listen = %listener.local_addr()?, "Management API and console (/console) started.");
    let mut api = Api::new(config, shutdown);
    api.metrics = metrics;
    let api = Arc::new(api);
    api.serve(listener).await;
    tracing::info!("Management API stopped.");
    Ok(())
}
