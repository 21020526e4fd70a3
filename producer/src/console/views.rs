//! The console's routes after sign-in: which page a GET shows, what a form
//! post does. Endpoint data comes from the management API, called as the
//! session's caller (so a tenant meets the API's 404 for any endpoint not
//! its own).

use super::form::{self, FieldError, Form};
use super::pages::{self, Filter, Flash, Row};
use super::{Signed, actions, api_error, call, dead, enc, html, not_found, on_endpoint, redirect};
use crate::api::{Api, Caller};
use common::history::Attempt;
use common::server::HttpResponse;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// The value of `name` in a query string, decoded.
fn query_value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .last()
        .filter(|v| !v.is_empty())
}

/// A GET.
pub async fn get(api: &Api, s: &Signed, path: &str, query: &str) -> HttpResponse {
    let segments: Vec<&str> = path.split('/').filter(|x| !x.is_empty()).collect();
    match segments.as_slice() {
        ["console", "endpoints"] => list(api, s, query_value(query, "tenant")).await,
        ["console", "create"] => html(
            StatusCode::OK,
            &pages::endpoint_form(
                &s.ctx,
                "Create webhook",
                "/console/endpoints",
                &Form::default(),
                None,
                s.ctx.operator,
                true,
            ),
        ),
        ["console", "endpoints", id] => {
            let filter = Filter {
                outcome: query_value(query, "outcome").unwrap_or_default(),
                since: query_value(query, "since").unwrap_or_else(|| "1h".into()),
                dead: query_value(query, "dead").is_some(),
            };
            endpoint(api, s, id, &filter, None).await
        }
        ["console", "endpoints", id, "edit"] => {
            let (status, view) = on_endpoint(api, s, Method::GET, id, "", None).await;
            if status != StatusCode::OK
                || view.get("read_only").and_then(Value::as_bool) == Some(true)
            {
                return not_found(&s.ctx);
            }
            html(
                StatusCode::OK,
                &pages::endpoint_form(
                    &s.ctx,
                    "Edit webhook",
                    &format!("/console/endpoints/{}", enc(id)),
                    &form::from_view(&view),
                    None,
                    false,
                    false,
                ),
            )
        }
        ["console", "dead-letters"] if s.ctx.operator => dead::page(api, s).await,
        ["console", "topology"] if s.ctx.operator => actions::topology_page(api, s).await,
        _ => not_found(&s.ctx),
    }
}

/// A form post (its CSRF token already checked).
pub async fn post(api: &Api, s: &Signed, path: &str, form: &Form) -> HttpResponse {
    let segments: Vec<&str> = path.split('/').filter(|x| !x.is_empty()).collect();
    match segments.as_slice() {
        ["console", "endpoints"] => save(api, s, None, form).await,
        ["console", "endpoints", id] => save(api, s, Some(id), form).await,
        ["console", "endpoints", id, "rotate"] => {
            let (status, body) =
                on_endpoint(api, s, Method::POST, id, "/secret/rotate", None).await;
            match body.get("secret").and_then(Value::as_str) {
                Some(secret) if status == StatusCode::OK => html(
                    StatusCode::OK,
                    &pages::secret_once(&s.ctx, id, secret, "Secret rotated"),
                ),
                _ if status == StatusCode::NOT_FOUND => not_found(&s.ctx),
                _ => {
                    endpoint_flash(api, s, id, Flash::Failed(api_error(status, &body)), false).await
                }
            }
        }
        ["console", "endpoints", id, "delete"] => {
            let force = if form.checked("force") {
                "?force=true"
            } else {
                ""
            };
            let (status, body) = on_endpoint(api, s, Method::DELETE, id, force, None).await;
            match status {
                StatusCode::OK => redirect("/console/endpoints"),
                StatusCode::NOT_FOUND => not_found(&s.ctx),
                _ => {
                    endpoint_flash(api, s, id, Flash::Failed(api_error(status, &body)), false).await
                }
            }
        }
        [
            "console",
            "endpoints",
            id,
            action @ ("pause" | "resume" | "test" | "replay" | "transform" | "replay-dead"),
        ] => {
            let (status, view) = on_endpoint(api, s, Method::GET, id, "", None).await;
            if status != StatusCode::OK {
                return not_found(&s.ctx);
            }
            let flash = match *action {
                "pause" => actions::hold(api, id, true).await,
                "resume" => actions::hold(api, id, false).await,
                "test" => actions::test_event(api, &view).await,
                "replay" => actions::replay(api, s, id, form).await,
                "replay-dead" => dead::replay(api, &dead::filter_for(&s.caller, id)).await,
                _ => actions::try_transform(api, &view, form.get("sample")).await,
            };
            endpoint_flash(api, s, id, flash, *action == "replay-dead").await
        }
        _ => not_found(&s.ctx),
    }
}

/// Creates (`id` = `None`) or replaces an endpoint from the form; a refused
/// form is shown again with the API's message next to the field.
async fn save(api: &Api, s: &Signed, id: Option<&str>, form: &Form) -> HttpResponse {
    let (title, action) = match id {
        None => ("Create webhook".to_owned(), "/console/endpoints".to_owned()),
        Some(id) => (
            "Edit webhook".to_owned(),
            format!("/console/endpoints/{}", enc(id)),
        ),
    };
    let with_tenant = id.is_none() && s.ctx.operator;
    let refused = |error: FieldError| {
        html(
            StatusCode::BAD_REQUEST,
            &pages::endpoint_form(
                &s.ctx,
                &title,
                &action,
                form,
                Some(&error),
                with_tenant,
                id.is_none(),
            ),
        )
    };
    let body = match form.endpoint_body(with_tenant) {
        Ok(mut body) => {
            if id.is_none() {
                let made = match new_id(form.get("id")) {
                    Ok(made) => made,
                    Err(e) => return refused(e),
                };
                body.insert("id".into(), Value::String(made));
            }
            Value::Object(body)
        }
        Err(e) => return refused(e),
    };
    let (status, answer) = match id {
        None => call(api, &s.caller, Method::POST, "/v1/endpoints", Some(&body)).await,
        Some(id) => {
            // A full replace of what the API shows now, with the form's
            // settings in place of its own: every setting the form does not
            // edit (method, signature, breaker, metadata, tenant, ...) is
            // kept, and values shown as *** keep the stored ones.
            let (status, current) = on_endpoint(api, s, Method::GET, id, "", None).await;
            let Value::Object(mut next) = current else {
                return if status == StatusCode::NOT_FOUND {
                    not_found(&s.ctx)
                } else {
                    html(
                        status,
                        &pages::message(
                            Some(&s.ctx),
                            "Edit webhook",
                            &api_error(status, &Value::Null),
                        ),
                    )
                };
            };
            for k in [
                "id",
                "version",
                "created_at",
                "updated_at",
                "source",
                "paused",
                "secrets",
                "read_only",
            ]
            .into_iter()
            .chain(form::TEXTS)
            .chain(form::NUMBERS)
            {
                next.remove(k);
            }
            if let Value::Object(fields) = body {
                next.extend(fields);
            }
            on_endpoint(api, s, Method::PUT, id, "", Some(&Value::Object(next))).await
        }
    };
    if status == StatusCode::NOT_FOUND && id.is_some() {
        return not_found(&s.ctx);
    }
    if !status.is_success() {
        let message = api_error(status, &answer);
        let field = answer
            .get("field")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        // The API's message starts with the field's name; next to the field
        // it reads better without it.
        let message = message
            .strip_prefix(&format!("{field}: "))
            .map_or(message.clone(), str::to_owned);
        return refused(FieldError { field, message });
    }
    let new_id = answer
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match answer.get("secret").and_then(Value::as_str) {
        Some(secret) => html(
            StatusCode::CREATED,
            &pages::secret_once(&s.ctx, &new_id, secret, "Webhook created"),
        ),
        None => redirect(&format!("/console/endpoints/{}", enc(&new_id))),
    }
}

/// The id a new endpoint gets: the form's, else `ep_` and 12 random hex digits.
fn new_id(given: &str) -> Result<String, FieldError> {
    if !given.is_empty() {
        return Ok(given.to_owned());
    }
    let bytes = common::secret::random_bytes::<6>().map_err(|e| FieldError {
        field: "id".into(),
        message: e.to_string(),
    })?;
    Ok(format!(
        "ep_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// The endpoints list: the API's list, each with its queue depth and its
/// newest attempt of the last hour.
async fn list(api: &Api, s: &Signed, tenant: Option<String>) -> HttpResponse {
    let path = match (&tenant, s.ctx.operator) {
        (Some(t), true) => format!("/v1/endpoints?tenant={}", enc(t)),
        _ => "/v1/endpoints".to_owned(),
    };
    let (status, body) = call(api, &s.caller, Method::GET, &path, None).await;
    if status != StatusCode::OK {
        return html(
            status,
            &pages::message(Some(&s.ctx), "Endpoints", &api_error(status, &body)),
        );
    }
    let views: Vec<Value> = body["endpoints"].as_array().cloned().unwrap_or_default();
    let last = newest_attempts(api, &s.caller, tenant.as_deref()).await;
    let depths = actions::queue_depths(api, &views).await;
    let rows: Vec<Row> = views
        .iter()
        .zip(depths)
        .map(|(v, depth)| {
            let id = v["id"].as_str().unwrap_or("").to_owned();
            let last = last
                .iter()
                .find(|a| common::config::base_id(&a.endpoint) == id)
                .cloned();
            Row {
                name: v["name"].as_str().map_or_else(|| id.clone(), str::to_owned),
                url: v["url"].as_str().unwrap_or("").to_owned(),
                events: pages::events_of(v),
                tenant: v["tenant"].as_str().map(str::to_owned),
                state: state_of(v, last.as_ref(), api.console().breakers.open_since(&id)),
                read_only: v["read_only"].as_bool() == Some(true),
                depth,
                last,
                id,
            }
        })
        .collect();
    let tenants = if s.ctx.operator {
        actions::tenants(api).await
    } else {
        Vec::new()
    };
    html(
        StatusCode::OK,
        &pages::endpoints(&s.ctx, &rows, tenant.as_deref(), &tenants),
    )
}

/// The newest attempt of the last hour per endpoint the caller sees (one
/// log read); empty when the log cannot be read.
async fn newest_attempts(api: &Api, caller: &Caller, tenant: Option<&str>) -> Vec<Attempt> {
    actions::recent_attempts(api, caller, tenant).await
}

/// What the list and the endpoint page call the endpoint's state.
/// `last`: its newest attempt known; `breaker`: when its circuit breaker
/// opened, if an open one was reported (it counts until a delivery
/// succeeds after it).
pub(crate) fn state_of(
    view: &Value,
    last: Option<&Attempt>,
    breaker: Option<time::OffsetDateTime>,
) -> &'static str {
    let delivered_since = |t: time::OffsetDateTime| {
        last.is_some_and(|a| {
            a.outcome == common::history::Outcome::Delivered && a.started().is_some_and(|s| s >= t)
        })
    };
    if view["paused"].as_bool() == Some(true) {
        "paused"
    } else if last.is_some_and(|a| a.status == Some(410)) {
        "gone"
    } else if breaker.is_some_and(|t| !delivered_since(t)) {
        "breaker open"
    } else {
        "active"
    }
}

/// The endpoint page, with `flash` above it.
pub(crate) async fn endpoint(
    api: &Api,
    s: &Signed,
    id: &str,
    filter: &Filter,
    flash: Option<Flash>,
) -> HttpResponse {
    let (status, view) = on_endpoint(api, s, Method::GET, id, "", None).await;
    if status == StatusCode::NOT_FOUND {
        return not_found(&s.ctx);
    }
    if status != StatusCode::OK {
        return html(
            status,
            &pages::message(Some(&s.ctx), "Endpoint", &api_error(status, &view)),
        );
    }
    let mut path = format!(
        "/v1/endpoints/{}/attempts?limit=100&since={}",
        enc(id),
        enc(&filter.since)
    );
    if !filter.outcome.is_empty() {
        path.push_str(&format!("&outcome={}", enc(&filter.outcome)));
    }
    let (a_status, a_body) = call(api, &s.caller, Method::GET, &path, None).await;
    let attempts: Result<Vec<Attempt>, String> = if a_status == StatusCode::OK {
        serde_json::from_value(a_body["attempts"].clone()).map_err(|e| e.to_string())
    } else {
        Err(api_error(a_status, &a_body))
    };
    let (_, replays) = on_endpoint(api, s, Method::GET, id, "/replays", None).await;
    let replays = replays["replays"].as_array().cloned().unwrap_or_default();
    let mut attempts = attempts;
    if let Ok(list) = attempts.as_mut() {
        actions::newest_first(list);
    }
    // The dead-letter queue is read only when asked: a reading walks it.
    let dead = if filter.dead {
        Some(dead::list(api, &dead::filter_for(&s.caller, id)).await)
    } else {
        None
    };
    let state = state_of(
        &view,
        attempts.as_ref().ok().and_then(|a| a.first()),
        api.console().breakers.open_since(id),
    );
    let status = match &flash {
        Some(Flash::Failed(_)) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    html(
        status,
        &pages::endpoint_page(
            &s.ctx,
            &pages::EndpointPage {
                view: &view,
                state,
                attempts: attempts.as_deref().map_err(String::as_str),
                filter,
                replays: &replays,
                dead: dead.as_ref().map(|d| d.as_ref().map_err(String::as_str)),
                flash: flash.as_ref(),
            },
        ),
    )
}

async fn endpoint_flash(api: &Api, s: &Signed, id: &str, flash: Flash, dead: bool) -> HttpResponse {
    let filter = Filter {
        outcome: String::new(),
        since: "1h".into(),
        dead,
    };
    endpoint(api, s, id, &filter, Some(flash)).await
}

/// The replay form as the API's body.
pub(crate) fn replay_body(form: &Form) -> Value {
    let mut body = json!({ "since": form.get("since") });
    if !form.get("until").is_empty() {
        body["until"] = json!(form.get("until"));
    }
    if let Ok(rate) = form.get("rate").parse::<f64>() {
        body["rate"] = json!(rate);
    } else if !form.get("rate").is_empty() {
        body["rate"] = json!(form.get("rate"));
    }
    if form.checked("dry_run") {
        body["dry_run"] = json!(true);
    }
    body
}
