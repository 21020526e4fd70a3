//! The console's pages, rendered on the server with `maud` (which escapes
//! every value it is given: a user's string can only ever be text).

use super::form::{FieldError, Form, NUMBERS};
use common::history::Attempt;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

/// What every page of a signed-in session needs.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// "operator" or "tenant acme".
    pub who: String,
    /// The session's CSRF token, put in every form that changes something.
    pub csrf: String,
    /// Whether the session is an operator's.
    pub operator: bool,
}

/// A page in the console's frame.
pub fn page(ctx: Option<&Ctx>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hookpost" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    a.brand href="/console/endpoints" { "hookpost" }
                    @if let Some(ctx) = ctx {
                        nav {
                            a href="/console/endpoints" { "Endpoints" }
                            @if ctx.operator {
                                a href="/console/dead-letters" { "Dead letters" }
                                a href="/console/topology" { "Topology" }
                            }
                        }
                        span.who { (ctx.who) }
                        form method="post" action="/console/sign-out" {
                            (csrf(ctx))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The hidden CSRF field.
pub fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

/// The sign-in form.
pub fn sign_in(error: Option<&str>) -> Markup {
    page(
        None,
        "Sign in",
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.card method="post" action="/console/sign-in" {
                label for="token" { "Token" }
                input id="token" name="token" type="password" autocomplete="off" required;
                p.hint { "An operator token (api.tokens) or a tenant token (hptk_…)." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A short notice (errors, "not found").
pub fn message(ctx: Option<&Ctx>, title: &str, text: &str) -> Markup {
    page(
        ctx,
        title,
        html! { p { (text) } p { a href="/console/endpoints" { "Back to endpoints" } } },
    )
}

/// One row of the endpoints list.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub url: String,
    pub events: String,
    pub tenant: Option<String>,
    pub state: &'static str,
    pub read_only: bool,
    pub depth: Option<u32>,
    pub last: Option<Attempt>,
}

/// The endpoints list.
pub fn endpoints(ctx: &Ctx, rows: &[Row], tenant: Option<&str>, tenants: &[String]) -> Markup {
    let body = html! {
        div.actions {
            a.button href="/console/create" { "Create webhook" }
            @if ctx.operator {
                form.inline method="get" action="/console/endpoints" {
                    label for="tenant" { "Tenant" }
                    select id="tenant" name="tenant" {
                        option value="" selected[tenant.is_none()] { "All" }
                        @for t in tenants {
                            option value=(t) selected[tenant == Some(t.as_str())] { (t) }
                        }
                    }
                    button type="submit" { "Show" }
                }
            }
        }
        @if rows.is_empty() {
            p { "No endpoints yet." }
        } @else {
            div.scroll { table {
                thead { tr {
                    th { "Name" } th { "URL" } th { "Events" } th { "State" }
                    th { "Queued" } th { "Last attempt" }
                } }
                tbody { @for r in rows {
                    tr {
                        td { a href={ "/console/endpoints/" (r.id) } { (r.name) }
                            @if let Some(t) = &r.tenant { br; small { "tenant " (t) } }
                            @if r.read_only { br; small { "hookpost.toml" } } }
                        td.url { (r.url) }
                        td { (r.events) }
                        td { span class={ "state " (r.state.replace(' ', "-")) } { (r.state) } }
                        td { @match r.depth { Some(d) => (d), None => "–" } }
                        td { @match &r.last {
                            Some(a) => { (outcome_label(a)) br; small { (a.started_at) } }
                            None => "none in the last hour",
                        } }
                    }
                } }
            } }
        }
    };
    page(Some(ctx), "Webhooks", body)
}

fn outcome_label(a: &Attempt) -> String {
    match a.status {
        Some(s) => format!("{} ({s})", a.outcome.as_str()),
        None => a.outcome.as_str().to_owned(),
    }
}

/// The create or edit form. `action`: where it posts; `error`: the field
/// the API (or the form) refused, shown next to it.
pub fn endpoint_form(
    ctx: &Ctx,
    title: &str,
    action: &str,
    form: &Form,
    error: Option<&FieldError>,
    with_tenant: bool,
    creating: bool,
) -> Markup {
    let err = |field: &str| -> Markup {
        html! { @if let Some(e) = error.filter(|e| super::form::form_field(&e.field) == field) {
            span.error id={ (field) "-error" } role="alert" { (e.message) }
        } }
    };
    let general = error.filter(|e| !super::form::has_field(&e.field));
    let text = |name: &str, label: &str, kind: &str| -> Markup {
        html! {
            div.field {
                label for=(name) { (label) }
                input id=(name) name=(name) type=(kind) value=(form.get(name));
                (err(name))
            }
        }
    };
    let area = |name: &str, label: &str, hint: &str| -> Markup {
        html! {
            div.field {
                label for=(name) { (label) }
                textarea id=(name) name=(name) rows="3" { (form.fields().get(name).map_or("", String::as_str)) }
                @if !hint.is_empty() { span.hint { (hint) } }
                (err(name))
            }
        }
    };
    let body = html! {
        @if let Some(e) = general { p.error role="alert" { (e.field) ": " (e.message) } }
        form.card method="post" action=(action) {
            (csrf(ctx))
            @if creating {
                div.field {
                    label for="id" { "Id (optional)" }
                    input id="id" name="id" type="text" value=(form.get("id")) pattern="[a-z0-9_-]{1,64}";
                    span.hint { "Lowercase letters, digits, _ and -; left empty, one is made up. It cannot change later." }
                    (err("id"))
                }
            }
            (text("name", "Name", "text"))
            (text("description", "Description", "text"))
            (text("url", "URL", "url"))
            @if with_tenant { (text("tenant", "Tenant (optional)", "text")) }
            div.field {
                label { input type="checkbox" name="all_events" checked[form.checked("all_events")]; " All events" }
            }
            (area("events", "Events", "One pattern per line: order.created, order.*, invoice.#"))
            (area("headers", "Headers", "One per line, as Name: value (values are kept secret; *** keeps the stored one)"))
            details {
                summary { "Delivery settings" }
                @for n in NUMBERS { (text(n, n, "text")) }
            }
            (area("transform", "Transform (jq)", "Optional: a jq program run on each event before it is sent"))
            (area("environments", "Environment variants", "Optional JSON: {\"prd\": {\"url\": \"https://…\"}, \"snd\": {…}}"))
            button type="submit" { "Save" }
        }
    };
    page(Some(ctx), title, body)
}

/// The new secret, shown once (creation or rotation).
pub fn secret_once(ctx: &Ctx, id: &str, secret: &str, what: &str) -> Markup {
    page(
        Some(ctx),
        what,
        html! {
            p { "This is the endpoint's signing secret. It is shown "
                strong { "once" } ": copy it now." }
            pre #secret.secret { (secret) }
            p { a.button href={ "/console/endpoints/" (id) } { "Go to the endpoint" } }
        },
    )
}

/// Inputs of the endpoint page's attempt filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub outcome: String,
    pub since: String,
    /// Whether to read and show the endpoint's dead letters.
    pub dead: bool,
}

/// What an action on the endpoint page answered, shown above it.
#[derive(Debug, Clone)]
pub enum Flash {
    Done(String),
    Failed(String),
    Output {
        title: String,
        text: String,
        ok: bool,
    },
}

/// What the endpoint page shows.
#[derive(Debug)]
pub struct EndpointPage<'a> {
    /// The endpoint as the API shows it.
    pub view: &'a Value,
    pub state: &'a str,
    /// Its attempts, newest first, or why they could not be read.
    pub attempts: Result<&'a [Attempt], &'a str>,
    pub filter: &'a Filter,
    /// Its replays from the archive (the API's views).
    pub replays: &'a [Value],
    /// Its dead letters when asked for (the first ones, how many there
    /// are, whether the queue holds more than was read).
    pub dead: Option<Result<&'a super::dead::Found, &'a str>>,
    pub flash: Option<&'a Flash>,
}

/// The endpoint page.
pub fn endpoint_page(ctx: &Ctx, p: &EndpointPage<'_>) -> Markup {
    let EndpointPage {
        view,
        state,
        attempts,
        filter,
        replays,
        dead,
        flash,
    } = *p;
    let id = view.get("id").and_then(Value::as_str).unwrap_or("");
    let read_only = view.get("read_only").and_then(Value::as_bool) == Some(true);
    let text = |k: &str| view.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let name = Some(text("name"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| id.to_owned());
    let base = format!("/console/endpoints/{id}");
    let post = |path: &str, label: &str, extra: Markup| -> Markup {
        html! { form.inline method="post" action={ (base) "/" (path) } { (csrf(ctx)) (extra) button type="submit" { (label) } } }
    };
    let body = html! {
        @match flash {
            Some(Flash::Done(m)) => p.ok role="status" { (m) },
            Some(Flash::Failed(m)) => p.error role="alert" { (m) },
            Some(Flash::Output { title, text, ok }) => div class=(if *ok { "ok" } else { "error" }) {
                strong { (title) } pre #output { (text) }
            },
            None => {},
        }
        dl.card {
            dt { "Id" } dd { (id) }
            dt { "URL" } dd.url { (text("url")) }
            @if !text("description").is_empty() { dt { "Description" } dd { (text("description")) } }
            @if let Some(t) = view.get("tenant").and_then(Value::as_str) { dt { "Tenant" } dd { (t) } }
            dt { "Events" } dd { (events_of(view)) }
            dt { "State" } dd { span class={ "state " (state.replace(' ', "-")) } { (state) } }
        }
        div.actions {
            @if !read_only {
                a.button href={ (base) "/edit" } { "Edit" }
                (post("rotate", "Rotate secret", html!{}))
            }
            @if state == "paused" { (post("resume", "Resume", html!{})) } @else { (post("pause", "Pause", html!{})) }
            (post("test", "Send test event", html!{}))
        }
        h2 { "Attempts" }
        form.inline method="get" action=(base) {
            label for="outcome" { "Outcome" }
            select id="outcome" name="outcome" {
                option value="" { "Any" }
                @for o in common::history::Outcome::ALL {
                    option value=(o.as_str()) selected[filter.outcome == o.as_str()] { (o.as_str()) }
                }
            }
            label for="since" { "Since" }
            select id="since" name="since" {
                @for (v, l) in [("15m", "15 minutes"), ("1h", "1 hour"), ("6h", "6 hours"), ("24h", "24 hours"), ("7d", "7 days")] {
                    option value=(v) selected[filter.since == v] { (l) }
                }
            }
            button type="submit" { "Filter" }
        }
        @match attempts {
            Err(e) => p.error { (e) },
            Ok([]) => p { "No attempts in this window." },
            Ok(list) => div.scroll { table #attempts {
                thead { tr { th { "Time" } th { "Event" } th { "Attempt" } th { "Outcome" } th { "Status" } th { "Duration" } th { "Response" } } }
                tbody { @for a in list { tr {
                    td { (a.started_at) }
                    td { (a.event_id) br; small { (a.event_type) } }
                    td { (a.attempt) }
                    td class={ "outcome " (a.outcome.as_str()) } { (a.outcome.as_str()) }
                    td { @match a.status { Some(s) => (s), None => "–" } }
                    td { (a.duration_ms) " ms" }
                    td.snippet { @if let Some(e) = &a.error { (e) br; } (a.response.as_deref().unwrap_or("")) }
                } } }
            } },
        }
        h2 { "Dead letters" }
        @match dead {
            Some(Ok(found)) => {
                (super::dead::table(found, false))
                @if found.matched > 0 { (post("replay-dead", "Replay these dead letters", html!{})) }
            },
            Some(Err(e)) => p.error { (e) },
            None => form.inline method="get" action=(base) {
                input type="hidden" name="dead" value="1";
                button type="submit" { "Show dead letters" }
            },
        }
        h2 { "Replay from the archive" }
        form.card method="post" action={ (base) "/replay" } {
            (csrf(ctx))
            div.field { label for="replay-since" { "Since (RFC 3339, or 30m, 2h, 7d ago)" } input id="replay-since" name="since" type="text" required; }
            div.field { label for="replay-until" { "Until (optional)" } input id="replay-until" name="until" type="text"; }
            div.field { label for="replay-rate" { "Rate (events per second)" } input id="replay-rate" name="rate" type="text" value="50"; }
            div.field { label { input type="checkbox" name="dry_run"; " Dry run (only count)" } }
            button type="submit" { "Replay" }
        }
        @if !replays.is_empty() {
            table #replays { thead { tr { th { "Replay" } th { "State" } th { "Sent" } th { "Started" } } }
                tbody { @for r in replays { tr {
                    td { (r["id"].as_str().unwrap_or("")) }
                    td { (r["state"].as_str().unwrap_or("")) }
                    td { (r["progress"]["sent"].as_u64().unwrap_or(0)) }
                    td { (r["created_at"].as_str().unwrap_or("")) }
                } } } }
        }
        @if view.get("transform").and_then(Value::as_str).is_some_and(|t| !t.is_empty()) {
            h2 { "Try the transform" }
            form.card method="post" action={ (base) "/transform" } {
                (csrf(ctx))
                div.field { label for="sample" { "Sample event (JSON envelope)" }
                    textarea id="sample" name="sample" rows="6" { (sample_event(view)) } }
                button type="submit" { "Run" }
            }
        }
        @if !read_only {
            h2 { "Delete" }
            form.inline method="post" action={ (base) "/delete" } {
                (csrf(ctx))
                label { input type="checkbox" name="force"; " Force (dead-letter what is still queued)" }
                button.danger type="submit" { "Delete endpoint" }
            }
        }
    };
    page(Some(ctx), &name, body)
}

/// An endpoint's event patterns, as a line.
pub fn events_of(view: &Value) -> String {
    let events = super::form::patterns(view);
    if events == ["#"] {
        "All events".to_owned()
    } else {
        events.join(", ")
    }
}

/// A sample envelope of a type the endpoint subscribes to.
pub fn sample_event(view: &Value) -> String {
    let event_type = test_type(view);
    serde_json::to_string_pretty(&serde_json::json!({
        "id": "evt_sample",
        "type": event_type,
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"test": true},
    }))
    .unwrap_or_default()
}

/// A concrete event type matching the endpoint's first pattern (`*` and
/// `#` filled with `test`).
pub fn test_type(view: &Value) -> String {
    let first = super::form::patterns(view).first().copied().unwrap_or("#");
    let words: Vec<&str> = first
        .split('.')
        .map(|w| if w == "*" || w == "#" { "test" } else { w })
        .collect();
    let t = words.join(".");
    if t == "test" {
        "console.test".to_owned()
    } else {
        t
    }
}
