use super::*;

fn one_endpoint(extra: &str) -> String {
    format!(
        "[[endpoints]]\nid = \"p\"\nurl = \"https://p.example.com/\"\nevents = [\"#\"]\n{extra}\n"
    )
}

#[test]
fn policies_parse_with_defaults_and_overrides() {
    let config = load(
        &format!(
            "[defaults]\nbreaker_failures = 5\non_exhausted = \"drop\"\n{}",
            one_endpoint(
                "rate_limit_per_s = 20\nretry_on_status = { add = [409], remove = [503] }\nsignature = \"hex\"\nsecrets = [\"plain-secret-0123456789\"]\ntransform = \"del(.data.email)\""
            )
        ),
        &[],
    )
    .unwrap();
    let ep = &config.endpoints[0];
    assert_eq!(ep.on_exhausted, OnExhausted::Drop);
    assert_eq!(
        ep.breaker,
        Some(BreakerPolicy {
            failures: 5,
            cooldown: Duration::from_secs(30)
        })
    );
    assert_eq!(
        ep.rate_limit,
        Some(RateLimit {
            per_s: 20,
            burst: 20
        })
    );
    assert_eq!(
        (ep.retry_add.as_slice(), ep.retry_remove.as_slice()),
        (&[409][..], &[503][..])
    );
    assert_eq!(ep.signature, SignatureScheme::Hex);
    assert!(ep.transform.is_some());
    let plain = load(&one_endpoint(""), &[]).unwrap();
    assert_eq!(plain.endpoints[0].breaker, None, "breaker off by default");
    assert_eq!(plain.endpoints[0].on_exhausted, OnExhausted::DeadLetter);
}

#[test]
fn bad_policies_name_the_endpoint_and_key() {
    let cases = [
        (
            "transform = \".data | \"",
            "endpoints[0].transform",
            "syntax error",
        ),
        (
            "transform = \"nosuch(1)\"",
            "endpoints[0].transform",
            "nosuch",
        ),
        (
            "retry_on_status = { add = [200] }",
            "endpoints[0].retry_on_status.add",
            "200",
        ),
        (
            "retry_on_status = { add = [409], remove = [409] }",
            "endpoints[0].retry_on_status",
            "both",
        ),
        (
            "retry_on_status = { other = [1] }",
            "retry_on_status",
            "unknown field",
        ),
        (
            "rate_limit_burst = 5",
            "endpoints[0].rate_limit_burst",
            "rate_limit_per_s",
        ),
        ("rate_limit_per_s = 0", "rate_limit_per_s", ""),
        (
            "breaker_cooldown_ms = 3600000",
            "endpoints[0].breaker_cooldown_ms",
            "15 minutes",
        ),
        ("on_exhausted = \"retry\"", "on_exhausted", ""),
        ("signature = \"md5\"", "signature", ""),
        (
            "signature = \"hex\"\nsecrets = [\"short\"]",
            "endpoints[0].secrets[0]",
            "16 characters",
        ),
    ];
    for (extra, key, words) in cases {
        let e = err(&one_endpoint(extra), &[]);
        assert!(e.contains(key) && e.contains(words), "{extra}: {e}");
    }
    let e = err(&one_endpoint("transform = \".data | \""), &[]);
    assert!(e.contains("(endpoint \"p\")"), "{e}");
}

#[test]
fn server_limits_default_and_are_checked_per_listener() {
    let config = load("", &[]).unwrap();
    assert_eq!(config.ingest.limits, Limits::with_max_connections(512));
    assert_eq!(config.api.limits, Limits::with_max_connections(64));
    assert_eq!(config.metrics_limits, Limits::with_max_connections(32));
    assert_eq!(config.ingest.body_read_timeout, Duration::from_secs(30));

    let config = load(
        "[ingest]\nheader_read_timeout_ms = 500\nidle_timeout_ms = 700\nmax_connections = 3\nbody_read_timeout_ms = 900\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        config.ingest.limits,
        Limits {
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(700),
            max_connections: 3,
        }
    );
    assert_eq!(config.ingest.body_read_timeout, Duration::from_millis(900));
    assert_eq!(config.api.limits, Limits::with_max_connections(64));

    let e = err("[api]\nidle_timeout_ms = 900001\n", &[]);
    assert!(
        e.contains("api.idle_timeout_ms") && e.contains("at most"),
        "{e}"
    );
    let e = err("[metrics]\nheader_read_timeout_ms = 0\n", &[]);
    assert!(e.contains("metrics.header_read_timeout_ms"), "{e}");
    let e = err("[ingest]\nmax_connections = 0\n", &[]);
    assert!(e.contains("ingest.max_connections"), "{e}");
    let e = err("[metrics]\nbody_read_timeout_ms = 1000\n", &[]);
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn channel_pools_and_detailed_metrics_are_checked() {
    let c = load("", &[]).unwrap();
    assert_eq!((c.amqp.consume_channels, c.amqp.publish_channels), (128, 8));
    let e = err("[amqp]\nconsume_channels = 2000\n", &[]);
    assert!(
        e.contains("key `amqp.consume_channels`") && e.contains("2047"),
        "{e}"
    );
    let e = err("[amqp]\npublish_channels = 0\n", &[]);
    assert!(e.contains("key `amqp.publish_channels`"), "{e}");
    let e = err("[metrics]\ndetailed_endpoints = [\"Not An Id\"]\n", &[]);
    assert!(e.contains("key `metrics.detailed_endpoints[0]`"), "{e}");
    let c = load(
        &format!(
            "[metrics]\ndetailed_endpoints = [\"p\"]\n{}",
            one_endpoint("")
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c.endpoints[0].histogram_label(), "p");
    let c = load(&one_endpoint(""), &[]).unwrap();
    assert_eq!(c.endpoints[0].histogram_label(), "*");
}

#[test]
fn tenants_and_environments_become_runtime_endpoints() {
    let text = format!(
        r#"
[[endpoints]]
id = "acme"
url = "https://acme.example.com/hooks"
events = ["order.*"]
tenant = "acme"
method = "PUT"
timeout_ms = 2000
secrets = ["{SECRET}"]
headers = {{ Authorization = "Bearer base" }}
environments = {{ prd = {{ url = "https://prd.acme.example.com/" }}, snd = {{ url = "https://snd.acme.example.com/", method = "POST", timeout_ms = 900, headers = {{ X-Sandbox = "1" }}, secrets = ["{SECRET}"] }} }}
"#
    );
    let config = load(&text, &[]).unwrap();
    let ids: Vec<&str> = config.endpoints.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["acme", "acme~prd", "acme~snd"]);
    let [base, prd, snd] = &config.endpoints[..] else {
        unreachable!()
    };
    assert!(base.variants.is_empty());
    assert_eq!(base.environment, None);
    assert_eq!(base.binding_keys(), ["t=acme.e=.order.*"]);
    assert_eq!(prd.environment.as_deref(), Some("prd"));
    assert_eq!(prd.base_id(), "acme");
    assert_eq!(prd.tenant.as_deref(), Some("acme"));
    assert_eq!(prd.binding_keys(), ["t=acme.e=prd.order.*"]);
    assert_eq!(prd.url.as_str(), "https://prd.acme.example.com/");
    // Method and timeout are inherited; headers and secrets never are.
    assert_eq!(prd.method, raw::Method::Put);
    assert_eq!(prd.timeout, Duration::from_millis(2000));
    assert!(prd.headers.is_empty() && prd.secrets.is_empty());
    assert_eq!(snd.method, raw::Method::Post);
    assert_eq!(snd.timeout, Duration::from_millis(900));
    assert_eq!(snd.headers[0].0, "X-Sandbox");
    assert_eq!(snd.secrets.len(), 1);
    // A global endpoint binds its patterns on both exchanges.
    let global = load(&one_endpoint(""), &[]).unwrap();
    assert_eq!(global.endpoints[0].tenant, None);
    assert_eq!(global.endpoints[0].binding_keys().len(), 2);
}

#[test]
fn bad_tenants_and_environments_name_the_key() {
    for (extra, key) in [
        ("tenant = \"Acme\"", "endpoints[0].tenant"),
        ("tenant = \"\"", "endpoints[0].tenant"),
        (
            "environments = { \"Snd\" = { url = \"https://x.example.com\" } }",
            "endpoints[0].environments.Snd",
        ),
        (
            "environments = { snd = { url = \"ftp://x.example.com\" } }",
            "endpoints[0].environments.snd.url",
        ),
        (
            "environments = { snd = { url = \"https://x.example.com\", headers = { Host = \"x\" } } }",
            "endpoints[0].environments.snd.headers.Host",
        ),
        (
            "environments = { snd = { url = \"https://x.example.com\", secrets = [\"nope\"] } }",
            "endpoints[0].environments.snd.secrets[0]",
        ),
        (
            "environments = { snd = { url = \"https://x.example.com\", timeout_ms = 999999999 } }",
            "endpoints[0].environments.snd.timeout_ms",
        ),
        (
            "environments = { snd = { url = \"https://x.example.com\", extra = 1 } }",
            "extra",
        ),
        ("environments = { snd = { method = \"PUT\" } }", "url"),
    ] {
        let e = err(&one_endpoint(extra), &[]);
        assert!(e.contains(key), "{extra}: {e}");
    }
    let long = format!(
        "[amqp]\nprefix = \"{}\"\n[[endpoints]]\nid = \"{}\"\nurl = \"https://p.example.com/\"\nevents = [\"#\"]\nenvironments = {{ {} = {{ url = \"https://x.example.com\" }} }}\n",
        "p".repeat(100),
        "i".repeat(100),
        "e".repeat(64)
    );
    let e = err(&long, &[]);
    assert!(
        e.contains("endpoints[0].environments.eee") && e.contains("over AMQP's 255"),
        "{e}"
    );
    let nine: Vec<String> = (0..9)
        .map(|i| format!("e{i} = {{ url = \"https://x.example.com\" }}"))
        .collect();
    let e = err(
        &one_endpoint(&format!("environments = {{ {} }}", nine.join(", "))),
        &[],
    );
    assert!(
        e.contains("endpoints[0].environments") && e.contains("at most 8"),
        "{e}"
    );
}
