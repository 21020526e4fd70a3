//! The web console (issue 19) in a real browser: headless Chromium driven
//! over WebDriver ([`tests::browser`]) against a real API, dispatcher,
//! broker and receivers, all on loopback. Screenshots of each page go to
//! `tests/output/console/` (the README shows them).

use reqwest::Method as M;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tests::api::Api;
use tests::browser::Browser;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, publish};
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};

const OPERATOR: &str = "operator-token-0123456789";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WAIT: Duration = Duration::from_secs(30);
const XSS: &str = "<img src=x onerror=alert(1)>";

fn config(scope: &Scope) -> common::Config {
    scope.config(&format!(
        "{FAST}[api]\ntokens = [\"{OPERATOR}\"]\n[registry]\nsecrets_key = \"{KEY}\"\nsecret_overlap_ms = 3600000\n"
    ))
}

/// Where the screenshots go.
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("output/console")
}

async fn browser() -> Browser {
    Browser::start(1280, 1000)
        .await
        .expect("a headless Chromium (apt-get install -y chromium chromium-driver)")
}

/// Signs in with `token` through the form.
async fn sign_in(b: &Browser, root: &str, token: &str) {
    b.goto(&format!("{root}/console")).await.expect("open");
    assert!(b.url().await.expect("url").ends_with("/console/sign-in"));
    b.fill("#token", token).await.expect("type the token");
    b.submit("form.card button[type=submit]")
        .await
        .expect("sign in");
    let url = b.url().await.expect("url");
    assert!(
        url.ends_with("/console/endpoints"),
        "signed in: at {url}: {}",
        b.text("body").await.unwrap_or_default()
    );
}

/// Reloads `url` until `css` selects at least `n` elements whose text
/// together holds `needle`; the page's text.
async fn page_shows(b: &Browser, url: &str, css: &str, n: usize, needle: &str) -> String {
    eventually(
        WAIT,
        &format!("{url}: {n} × {css} holding {needle:?}"),
        || async {
            b.goto(url).await.ok()?;
            if b.count(css).await.ok()? < n {
                return None;
            }
            let text = b.text("main").await.ok()?;
            text.contains(needle).then_some(text)
        },
    )
    .await
}

/// The status of `path` fetched with the browser's session cookie (what a
/// user editing the URL gets).
async fn status_with_session(b: &Browser, root: &str, path: &str) -> u16 {
    let cookie = b
        .cookie("hookpost_session")
        .await
        .expect("the session cookie");
    tests::http_client()
        .get(format!("{root}{path}"))
        .header("cookie", format!("hookpost_session={cookie}"))
        .send()
        .await
        .expect("get")
        .status()
        .as_u16()
}

fn verify(secret: &str, request: &tests::receiver::Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .expect("secret")
        .verify(&request.body, &request.headers)
        .is_ok()
}

#[tokio::test]
async fn an_operator_creates_a_webhook_and_follows_its_deliveries_retries_and_new_secret() {
    let scope = Scope::new().await;
    // The first two requests fail, the rest succeed.
    let receiver = Receiver::with(Arc::new(|n, _| {
        if n < 2 {
            Reply::Status(503, vec![])
        } else {
            Reply::Status(200, vec![])
        }
    }))
    .await;
    let config = config(&scope);
    scope.track_endpoint(&config, "shop");
    // The edit below gives it a wait tier of its own.
    scope.track_tier(&config, 300);
    let dispatcher = Running::start(config.clone()).await;
    let api = Api::start(&config).await;
    let b = browser().await;
    let root = &api.root;
    sign_in(&b, root, OPERATOR).await;
    b.screenshot(&shots(), "01-endpoints-empty")
        .await
        .expect("shot");

    // Create through the form: a hostile name, All events.
    b.submit("a.button[href='/console/create']")
        .await
        .expect("create");
    b.fill("#id", "shop").await.expect("id");
    b.fill("#name", XSS).await.expect("name");
    b.fill("#url", &receiver.url).await.expect("url");
    b.click("input[name=all_events]").await.expect("all events");
    b.screenshot(&shots(), "02-create-form")
        .await
        .expect("shot");
    b.submit("form.card button[type=submit]")
        .await
        .expect("save");
    let secret = b.text("#secret").await.expect("the secret is shown");
    assert!(secret.starts_with("whsec_"), "{secret}");
    b.screenshot(&shots(), "03-secret-once")
        .await
        .expect("shot");
    assert_eq!(b.alert_text().await.expect("alerts"), None, "no script ran");

    // The list shows the name as text, and no image was injected.
    b.goto(&format!("{root}/console/endpoints"))
        .await
        .expect("list");
    let list = b.text("table").await.expect("table");
    assert!(list.contains(XSS), "{list}");
    assert_eq!(b.count("main img").await.expect("count"), 0);
    assert_eq!(b.alert_text().await.expect("alerts"), None, "no script ran");

    // An event: two failures, then delivered; each attempt on the page.
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher");
    let ids = publish(&publisher, "order.created", 1).await;
    receiver.wait_ids(&ids, WAIT).await;
    let page = format!("{root}/console/endpoints/shop");
    let text = page_shows(&b, &page, "#attempts tbody tr", 3, &ids[0]).await;
    assert!(text.contains(&ids[0]), "{text}");
    assert_eq!(
        b.count("#attempts tbody tr").await.expect("rows"),
        3,
        "{text}"
    );
    let statuses: Vec<String> = b
        .execute("return [...document.querySelectorAll('#attempts tbody tr')].map(r => r.cells[3].innerText + ' ' + r.cells[4].innerText)")
        .await
        .expect("cells")
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        statuses,
        ["delivered 200", "retry 503", "retry 503"],
        "newest first"
    );
    // The receiver answers every request with the body "ok".
    assert!(text.contains("ok"), "{text}");
    b.screenshot(&shots(), "04-endpoint-attempts")
        .await
        .expect("shot");

    // Filter by outcome.
    b.goto(&format!("{page}?outcome=retry&since=1h"))
        .await
        .expect("filter");
    assert_eq!(b.count("#attempts tbody tr").await.expect("rows"), 2);

    // Edit keeps what the form does not show, and credentials shown as ***.
    let with_credentials = receiver.url.replace("http://", "http://user:pw@");
    let (status, body) = api
        .call(
            OPERATOR,
            M::PATCH,
            "/v1/endpoints/shop",
            Some(json!({"url": with_credentials, "max_retry_delay_ms": 300, "metadata": {"team": "growth"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    b.goto(&format!("{page}/edit")).await.expect("edit");
    assert_eq!(
        b.execute("return document.getElementById('url').value")
            .await
            .expect("url"),
        json!(receiver.url.replace("http://", "http://***@")),
        "credentials hidden"
    );
    b.fill("#name", "Shop").await.expect("name");
    b.submit("form.card button[type=submit]")
        .await
        .expect("save");
    assert_eq!(
        b.text("h1").await.expect("title"),
        "Shop",
        "saved: {}",
        b.text("main").await.unwrap_or_default()
    );
    let (_, view) = api.call(OPERATOR, M::GET, "/v1/endpoints/shop", None).await;
    assert_eq!(view["name"], "Shop");
    assert_eq!(view["max_retry_delay_ms"], 300, "{view}");
    assert_eq!(view["metadata"], json!({"team": "growth"}), "{view}");
    let admin = dispatcher::admin::Admin::connect(config.clone())
        .await
        .expect("admin");
    let stored = admin.registry().get("shop").await.expect("stored");
    assert_eq!(
        stored.settings["url"],
        json!(with_credentials),
        "credentials kept"
    );
    admin.close().await;

    // Rotate: the new secret is shown once, and deliveries verify with it.
    b.goto(&page).await.expect("page");
    b.submit("form[action='/console/endpoints/shop/rotate'] button")
        .await
        .expect("rotate");
    let rotated = b.text("#secret").await.expect("the new secret");
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    b.goto(&page).await.expect("page");
    let source = b
        .execute("return document.documentElement.outerHTML")
        .await
        .expect("html");
    assert!(
        !source.as_str().unwrap_or("").contains(&rotated),
        "shown once"
    );
    let ids = publish(&publisher, "invoice.paid", 1).await;
    receiver.wait_ids(&ids, WAIT).await;
    let request = receiver
        .received()
        .into_iter()
        .find(|r| r.ids() == ids)
        .expect("the request");
    assert!(verify(&rotated, &request), "signed with the new secret");

    // A post without the CSRF token is refused, and changes nothing.
    b.goto(&page).await.expect("page");
    b.execute("document.querySelectorAll('input[name=csrf]').forEach(i => i.remove())")
        .await
        .expect("strip the tokens");
    b.submit("form[action='/console/endpoints/shop/pause'] button")
        .await
        .expect("pause");
    let refused = b.text("main").await.expect("text");
    assert!(refused.contains("CSRF"), "{refused}");
    let (_, view) = api.call(OPERATOR, M::GET, "/v1/endpoints/shop", None).await;
    assert_eq!(view["paused"], json!(false), "nothing changed");

    // Pause and resume, with the token.
    b.goto(&page).await.expect("page");
    b.submit("form[action='/console/endpoints/shop/pause'] button")
        .await
        .expect("pause");
    assert!(b.text("main").await.expect("text").contains("Paused"));
    let (_, view) = api.call(OPERATOR, M::GET, "/v1/endpoints/shop", None).await;
    assert_eq!(view["paused"], json!(true));
    b.submit("form[action='/console/endpoints/shop/resume'] button")
        .await
        .expect("resume");
    let (_, view) = api.call(OPERATOR, M::GET, "/v1/endpoints/shop", None).await;
    assert_eq!(view["paused"], json!(false));

    // A test event reaches this endpoint, marked as a test.
    b.submit("form[action='/console/endpoints/shop/test'] button")
        .await
        .expect("test");
    let flash = b.text("p.ok").await.expect("flash");
    let test_id = flash
        .split_whitespace()
        .find(|w| w.starts_with("evt_"))
        .expect("the test event's id")
        .to_owned();
    receiver
        .wait_ids(std::slice::from_ref(&test_id), WAIT)
        .await;
    let request = receiver
        .received()
        .into_iter()
        .find(|r| r.ids() == [test_id.clone()])
        .expect("the test request");
    let event: Value = serde_json::from_slice(&request.body).expect("json");
    assert_eq!(event["data"]["test"], json!(true), "{event}");
    assert_eq!(event["source"], json!("hookpost.console"), "{event}");

    // The operator's extra pages.
    b.goto(&format!("{root}/console/topology"))
        .await
        .expect("topology");
    assert!(
        b.text("#topology")
            .await
            .expect("table")
            .contains(".ep.shop")
    );
    b.screenshot(&shots(), "06-topology").await.expect("shot");

    // The same pages at a phone's width.
    b.resize(390, 844).await.expect("resize");
    b.goto(&page).await.expect("page");
    let overflow = b
        .execute("return document.documentElement.scrollWidth > window.innerWidth + 1")
        .await
        .expect("width");
    assert_eq!(overflow, json!(false), "no sideways scrolling at 390 px");
    b.screenshot(&shots(), "07-endpoint-390px")
        .await
        .expect("shot");
    b.quit().await;
    dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn a_tenant_sees_only_its_endpoints_and_dead_letters_and_tries_its_transform() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(Arc::new(|_, _| Reply::Status(400, vec![]))).await;
    let config = config(&scope);
    for id in ["acme-orders", "globex-orders"] {
        scope.track_endpoint(&config, id);
    }
    let dispatcher = Running::start(config.clone()).await;
    let api = Api::start(&config).await;
    let mut tokens = Vec::new();
    for (tenant, id) in [("acme", "acme-orders"), ("globex", "globex-orders")] {
        let (status, body) = api
            .call(
                OPERATOR,
                M::POST,
                &format!("/v1/tenants/{tenant}/tokens"),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        tokens.push(body["token"].as_str().expect("token").to_owned());
        let (status, body) = api
            .call(
                OPERATOR,
                M::POST,
                "/v1/endpoints",
                Some(
                    json!({"id": id, "tenant": tenant, "url": receiver.url, "events": ["order.*"],
                            "max_retries": 0, "transform": "{type, data: {order: .data.i}}"}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let b = browser().await;
    let root = &api.root;
    sign_in(&b, root, &tokens[0]).await;
    let list = b.text("main").await.expect("list");
    assert!(
        list.contains("acme-orders") && !list.contains("globex"),
        "{list}"
    );
    assert_eq!(
        b.count("nav a[href='/console/topology']")
            .await
            .expect("nav"),
        0
    );
    b.screenshot(&shots(), "08-tenant-endpoints")
        .await
        .expect("shot");

    // Another tenant's endpoint, and the operator pages: 404.
    for path in [
        "/console/endpoints/globex-orders",
        "/console/endpoints/globex-orders/edit",
        "/console/topology",
        "/console/dead-letters",
    ] {
        b.goto(&format!("{root}{path}")).await.expect("open");
        let title = b.text("h1").await.expect("title");
        assert_eq!(title, "Not found", "{path}");
    }
    let status = status_with_session(&b, root, "/console/endpoints/globex-orders").await;
    assert_eq!(status, 404);

    // A rejected event is dead-lettered; the tenant sees and replays it.
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher");
    let event = common::Event::new("order.created", json!({"i": 7}))
        .and_then(|e| e.with_scope(Some("acme"), None))
        .expect("event");
    publisher.publish(&event).await.expect("publish");
    let page = format!("{root}/console/endpoints/acme-orders");
    let text = page_shows(&b, &page, "#attempts tbody tr", 1, &event.id).await;
    assert!(text.contains("Dead letters"), "{text}");
    eventually(WAIT, "the dead letter on the page", || async {
        b.goto(&format!("{page}?dead=1")).await.ok()?;
        (b.count("#dead-letters tbody tr").await.ok()? == 1).then_some(())
    })
    .await;
    b.screenshot(&shots(), "05-endpoint-dead-letters")
        .await
        .expect("shot");
    receiver.set(Arc::new(|_, _| Reply::Status(200, vec![])));
    let before = receiver.received().len();
    b.submit("form[action='/console/endpoints/acme-orders/replay-dead'] button")
        .await
        .expect("replay");
    assert!(
        b.text("p.ok")
            .await
            .expect("flash")
            .contains("1 dead letters sent back")
    );
    eventually(WAIT, "the replayed event delivered", || async {
        receiver.received()[before..]
            .iter()
            .any(|r| r.answered == Some(200) && r.body.windows(9).any(|w| w == b"\"order\":7"))
            .then_some(())
    })
    .await;

    // Try the transform, in the sandbox.
    b.goto(&page).await.expect("page");
    b.fill(
        "#sample",
        r#"{"id": "evt_1", "type": "order.created", "data": {"i": 42}}"#,
    )
    .await
    .expect("sample");
    b.submit("form[action='/console/endpoints/acme-orders/transform'] button")
        .await
        .expect("run");
    let output = match b.text("#output").await {
        Ok(output) => output,
        Err(e) => panic!("{e}: {}", b.text("main").await.unwrap_or_default()),
    };
    let output: Value = serde_json::from_str(&output).expect("json output");
    assert_eq!(
        output,
        json!({"type": "order.created", "data": {"order": 42}})
    );
    b.screenshot(&shots(), "09-transform-try")
        .await
        .expect("shot");

    // Validation: the API's message next to the field.
    b.goto(&format!("{root}/console/create"))
        .await
        .expect("new");
    b.fill("#url", "ftp://example.invalid/x")
        .await
        .expect("url");
    b.fill("#events", "order.*").await.expect("events");
    b.submit("form.card button[type=submit]")
        .await
        .expect("save");
    let error = b.text("#url-error").await.expect("an error next to url");
    assert!(!error.is_empty(), "{error}");
    b.screenshot(&shots(), "10-validation").await.expect("shot");

    // Sign out: the cookie no longer opens pages.
    b.goto(&format!("{root}/console/endpoints"))
        .await
        .expect("list");
    b.submit("header form button").await.expect("sign out");
    b.goto(&format!("{root}/console/endpoints"))
        .await
        .expect("list");
    assert!(b.url().await.expect("url").ends_with("/console/sign-in"));
    b.quit().await;
    dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn console_answers_carry_strict_headers_and_sign_in_is_rate_limited() {
    let scope = Scope::new().await;
    let config = config(&scope);
    let api = Api::start(&config).await;
    let http = tests::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .get(format!("{}/console/sign-in", api.root))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "same-origin");
    // Unsigned in: every page sends to the sign-in form.
    let r = http
        .get(format!("{}/console/endpoints", api.root))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/sign-in");

    // The cookie of a good sign-in.
    let cookie = operator_sign_in(&http, &api.root).await;
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain http without a public https origin"
    );
    assert!(!cookie.contains(OPERATOR), "{cookie}");
    // A post from another site is refused even with the cookie.
    let session = cookie.split(';').next().expect("pair").to_owned();
    let r = http
        .post(format!("{}/console/endpoints/x/pause", api.root))
        .header("cookie", &session)
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=anything")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);

    // Wrong tokens: refused, and after ten attempts a minute, 429 even
    // for the right one.
    for _ in 0..9 {
        let r = http
            .post(format!("{}/console/sign-in", api.root))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("token=wrong-token-wrong-token")
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("set-cookie").is_none());
    }
    let r = http
        .post(format!("{}/console/sign-in", api.root))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={OPERATOR}"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

/// Signs in with the operator token through the form (no browser); the
/// `Set-Cookie` it answers with.
async fn operator_sign_in(http: &reqwest::Client, root: &str) -> String {
    let r = http
        .post(format!("{root}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={OPERATOR}"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned()
}

/// The state column of the endpoints list, by endpoint name.
async fn states(b: &Browser, root: &str) -> Vec<(String, String)> {
    b.goto(&format!("{root}/console/endpoints"))
        .await
        .expect("list");
    let rows = b
        .execute(
            "return [...document.querySelectorAll('table tbody tr')].map(r => [r.cells[0].querySelector('a').innerText, r.cells[3].innerText])",
        )
        .await
        .expect("rows");
    rows.as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or("").to_owned(),
                r[1].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_open_circuit_breaker_shows_until_a_delivery_succeeds() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(Arc::new(|_, _| Reply::Status(500, vec![]))).await;
    let config = scope.config(&format!(
        "{FAST}[api]\ntokens = [\"{OPERATOR}\"]\n{}{}",
        tests::fixtures::endpoint(
            "down",
            &receiver.url,
            &["order.*"],
            "max_retries = 8\nbreaker_failures = 2\nbreaker_cooldown_ms = 1000"
        ),
        tests::fixtures::endpoint("probe", "http://127.0.0.1:9/never", &["never.*"], ""),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let api = Api::start(&config).await;
    let b = browser().await;
    sign_in(&b, &api.root, OPERATOR).await;

    // The API follows the breakers' events once its queue is bound: until a
    // reported breaker of `probe` shows, report it again.
    let conn =
        lapin::Connection::connect(&tests::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let topology = common::topology::Topology::for_config(&config);
    let (event, key) = common::operational::Notice {
        kind: common::operational::CIRCUIT_OPENED,
        endpoint: "probe",
        tenant: None,
        reason: "HTTP 500",
        event_id: None,
        last_status: Some(500),
    }
    .event()
    .expect("notice");
    eventually(WAIT, "the probe's breaker on the list", || async {
        ch.basic_publish(
            topology.scoped_exchange().as_str().into(),
            key.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            &event.to_vec(),
            lapin::BasicProperties::default(),
        )
        .await
        .ok()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let states = states(&b, &api.root).await;
        states
            .contains(&("probe".to_owned(), "breaker open".to_owned()))
            .then_some(())
    })
    .await;
    assert!(
        states(&b, &api.root)
            .await
            .contains(&("down".to_owned(), "active".to_owned()))
    );

    // Two failures open the real breaker; a success after the cooldown closes it.
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher");
    let ids = publish(&publisher, "order.created", 1).await;
    eventually(WAIT, "down's breaker open on the list", || async {
        states(&b, &api.root)
            .await
            .contains(&("down".to_owned(), "breaker open".to_owned()))
            .then_some(())
    })
    .await;
    b.screenshot(&shots(), "11-breaker-open")
        .await
        .expect("shot");
    receiver.set(Arc::new(|_, _| Reply::Status(200, vec![])));
    receiver.wait_ids(&ids, WAIT).await;
    eventually(WAIT, "down active again", || async {
        states(&b, &api.root)
            .await
            .contains(&("down".to_owned(), "active".to_owned()))
            .then_some(())
    })
    .await;
    let _ = conn.close(200, "done".into()).await;
    b.quit().await;
    dispatcher.stop().await.expect("stop");
}

/// Behind https (`api.public_origin`), the session cookie carries the
/// `__Host-` prefix (so no sibling subdomain can set or shadow it), with
/// `Secure` and `Path=/`, and a session is read from that name only.
#[tokio::test]
async fn behind_https_the_session_cookie_is_host_prefixed() {
    let scope = Scope::new().await;
    let config = scope.config(&format!(
        "{FAST}[api]\ntokens = [\"{OPERATOR}\"]\npublic_origin = \"https://hooks.example.com\"\n[registry]\nsecrets_key = \"{KEY}\"\n"
    ));
    let api = Api::start(&config).await;
    let http = tests::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let cookie = operator_sign_in(&http, &api.root).await;
    assert!(cookie.starts_with("__Host-hookpost_session="), "{cookie}");
    for part in ["; Path=/;", "HttpOnly", "SameSite=Strict", "; Secure"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let value = cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, v)| v.to_owned())
        .expect("value");
    let page = |name: &'static str| {
        let (http, root, value) = (http.clone(), api.root.clone(), value.clone());
        async move {
            http.get(format!("{root}/console/endpoints"))
                .header("cookie", format!("{name}={value}"))
                .send()
                .await
                .expect("get")
                .status()
                .as_u16()
        }
    };
    assert_eq!(page("__Host-hookpost_session").await, 200);
    assert_eq!(
        page("hookpost_session").await,
        303,
        "the unprefixed name is not read"
    );
}
