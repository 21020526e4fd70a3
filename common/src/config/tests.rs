use super::*;
use crate::server::Limits;
use proptest::prelude::*;
use std::time::Duration;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    Config::from_toml_str(text, Path::new("/etc/hookpost.toml"), &env)
}

fn err(text: &str, env: &[(&str, &str)]) -> String {
    load(text, env).unwrap_err().to_string()
}

const ENDPOINT: &str = r#"
[[endpoints]]
id = "crm"
url = "https://crm.example.com/hooks"
events = ["order.*", "customer.created"]
secrets = ["${SECRET}"]
headers = { Authorization = "Bearer ${TOKEN}" }
batch_size = 10
"#;

#[test]
fn defaults_and_endpoint_overrides() {
    let config = load(ENDPOINT, &[("SECRET", SECRET), ("TOKEN", "t0ken")]).unwrap();
    assert_eq!(config.amqp.prefix, "hookpost");
    assert_eq!(config.amqp.queue_type, QueueType::Quorum);
    let ep = &config.endpoints[0];
    assert_eq!(ep.batch_size, 10);
    assert_eq!(ep.retry.max_retries, 5);
    assert_eq!(ep.timeout, Duration::from_secs(5));
    assert_eq!(ep.headers[0].1.expose(), "Bearer t0ken");
    assert_eq!(ep.secrets.len(), 1);
}

#[test]
fn secrets_never_reach_debug_output() {
    let config = load(
        &format!("[amqp]\nurl = \"amqp://u:pw-xyz@h/%2f\"\n[ingest]\ntokens = [\"ingest-token-0123456789\"]\n{ENDPOINT}"),
        &[("SECRET", SECRET), ("TOKEN", "t0ken-value")],
    )
    .unwrap();
    let debug = format!("{config:?}");
    for secret in [
        "pw-xyz",
        "t0ken-value",
        "C2FVsBQ",
        "ingest-token-0123456789",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked in {debug}");
    }
}

#[test]
fn unknown_key_names_file_and_key() {
    let e = err("[amqp]\nurll = \"x\"\n", &[]);
    assert!(e.starts_with("/etc/hookpost.toml: key `amqp.urll`"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    let e = err(
        "[[endpoints]]\nid = \"a\"\nurl = \"http://a\"\nevents = [\"#\"]\nbatchsize = 2\n",
        &[],
    );
    assert!(e.contains("key `endpoints[0].batchsize`"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = err("[defaults]\nbatch_size = 0\n", &[]);
    assert!(
        e.contains("key `defaults.batch_size`") && e.contains("nonzero"),
        "{e}"
    );
    let e = err("[amqp]\nqueue_type = \"lazy\"\n", &[]);
    assert!(e.contains("key `amqp.queue_type`"), "{e}");
    let e = err("[defaults]\ntimeout_ms = \"fast\"\n", &[]);
    assert!(e.contains("key `defaults.timeout_ms`"), "{e}");
    let e = err(
        &ENDPOINT.replace("https://crm.example.com/hooks", "ftp://x"),
        &[("SECRET", SECRET), ("TOKEN", "t")],
    );
    assert!(
        e.contains("key `endpoints[0].url`") && e.contains("\"crm\""),
        "{e}"
    );
    let e = err(
        &ENDPOINT.replace("order.*", "Order.*"),
        &[("SECRET", SECRET), ("TOKEN", "t")],
    );
    assert!(e.contains("key `endpoints[0].events[0]`"), "{e}");
    let e = err(ENDPOINT, &[("SECRET", "whsec_notbase64!"), ("TOKEN", "t")]);
    assert!(
        e.contains("key `endpoints[0].secrets[0]`") && !e.contains("notbase64"),
        "{e}"
    );
    let e = err(
        &format!("{ENDPOINT}{ENDPOINT}"),
        &[("SECRET", SECRET), ("TOKEN", "t")],
    );
    assert!(
        e.contains("key `endpoints[1].id`") && e.contains("twice"),
        "{e}"
    );
    let e = err("[http]\nallowed_networks = [\"10.0.0.0/33\"]\n", &[]);
    assert!(e.contains("key `http.allowed_networks[0]`"), "{e}");
    let e = err(
        "[defaults]\nretry_delay_ms = 10\nmax_retry_delay_ms = 5\n[[endpoints]]\nid = \"a\"\nurl = \"http://a\"\nevents = [\"#\"]\n",
        &[],
    );
    assert!(e.contains("key `endpoints[0].max_retry_delay_ms`"), "{e}");
    let ep = "[[endpoints]]\nid = \"a\"\nurl = \"http://a\"\nevents = [\"#\"]\n";
    let e = err(&format!("{ep}timeout_ms = 3600000\n"), &[]);
    assert!(
        e.contains("key `endpoints[0].timeout_ms`") && e.contains("15 minutes"),
        "{e}"
    );
    let e = err(&format!("{ep}batch_interval_ms = 3600000\n"), &[]);
    assert!(e.contains("key `endpoints[0].batch_interval_ms`"), "{e}");
    let e = err(&format!("{ep}max_retry_delay_ms = 99999999999\n"), &[]);
    assert!(
        e.contains("key `endpoints[0].max_retry_delay_ms`") && e.contains("30 days"),
        "{e}"
    );
    let e = err("[ingest]\ntokens = [\"short\"]\n", &[]);
    assert!(
        e.contains("key `ingest.tokens[0]`") && !e.contains("short\""),
        "{e}"
    );
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let e = err("[amqp\nurl = 1", &[]);
    assert!(
        e.starts_with("/etc/hookpost.toml: not valid TOML") && e.contains("line 1"),
        "{e}"
    );
}

#[test]
fn values_never_reach_error_messages() {
    let e = err(
        "[[endpoints]]\nid = \"a\"\nurl = \"http://a\"\nevents = [\"#\"]\nsecrets = \"${S}\"\n",
        &[("S", "whsec_topsecretvalue")],
    );
    assert!(
        e.contains("key `endpoints[0].secrets`") && !e.contains("topsecret"),
        "{e}"
    );
    let e = err("", &[("HOOKPOST_INGEST_TOKENS", "tok-en-value-0123")]);
    assert!(
        e.contains("HOOKPOST_INGEST_TOKENS") && !e.contains("tok-en-value"),
        "{e}"
    );
    let e = err("[amqp]\nurl = \"amqp://u:hunter2pass@h/%2f\n", &[]);
    assert!(e.contains("line 2") && !e.contains("hunter2pass"), "{e}");
    assert_eq!(
        load::redact_strings(r#"invalid type: string "a\"b", expected u64"#),
        "invalid type: string (value not shown), expected u64"
    );
}

#[test]
fn missing_variable_names_it_and_the_key() {
    let e = err(ENDPOINT, &[("SECRET", SECRET)]);
    assert_eq!(
        e,
        "/etc/hookpost.toml: key `endpoints[0].headers.Authorization`: environment variable `TOKEN` is not set"
    );
}

#[test]
fn interpolation_defaults_and_escapes() {
    let lookup = |name: &str| (name == "A").then(|| "1".to_owned());
    assert_eq!(load::interpolate("x${A}y", &lookup).unwrap(), "x1y");
    assert_eq!(load::interpolate("${B:-dflt}", &lookup).unwrap(), "dflt");
    assert_eq!(load::interpolate("$$A $5 ${", &lookup).unwrap(), "$A $5 ${");
    assert_eq!(load::interpolate("${B}", &lookup).unwrap_err(), "B");
}

#[test]
fn env_overrides_apply_and_are_blamed() {
    let config = load(
        "[defaults]\nmax_retries = 2\n",
        &[
            ("HOOKPOST_DEFAULTS_MAX_RETRIES", "7"),
            ("HOOKPOST_AMQP_PREFIX", "hp-test"),
            ("HOOKPOST_HTTP_ALLOWED_NETWORKS", "[\"127.0.0.0/8\"]"),
            ("HOOKPOST_CONFIG", "/somewhere"),
            ("OTHER", "x"),
            ("HOOKPOST_AMQP_URL", "amqp://a:b@h:5672/%2f"),
        ],
    )
    .unwrap();
    assert_eq!(config.amqp.prefix, "hp-test");
    assert_eq!(config.amqp.url.expose(), "amqp://a:b@h:5672/%2f");
    assert_eq!(config.http.allowed_networks.len(), 1);
    let e = err("", &[("HOOKPOST_DEFAULTS_TIMEOUT_MS", "soon")]);
    assert!(
        e.starts_with(
            "environment variable HOOKPOST_DEFAULTS_TIMEOUT_MS: key `defaults.timeout_ms`"
        ),
        "{e}"
    );
    let e = err("", &[("HOOKPOST_AMQP_NOPE", "1")]);
    assert!(
        e.contains("HOOKPOST_AMQP_NOPE") && e.contains("amqp.nope"),
        "{e}"
    );
}

#[test]
fn patterns() {
    for ok in ["#", "*", "order.*", "order.#", "*.created", "a.b.c"] {
        assert!(is_valid_pattern(ok), "{ok}");
    }
    for bad in ["", "order.", "Order", "a..b", "a.b*", "a b"] {
        assert!(!is_valid_pattern(bad), "{bad}");
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = load(&text, &[]);
    }

    #[test]
    fn any_batch_size_is_accepted_or_named(n in any::<i64>()) {
        match load(&format!("[defaults]\nbatch_size = {n}\n[[endpoints]]\nid=\"a\"\nurl=\"http://a\"\nevents=[\"#\"]\n"), &[]) {
            Ok(c) => prop_assert!(n >= 1 && n <= i64::from(MAX_BATCH_SIZE) && i64::from(c.endpoints[0].batch_size) == n),
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.contains("batch_size"), "{}", e);
            }
        }
    }
}

// Endpoint-level settings: policies, limits, pools, tenants and environments.
mod endpoints;

#[test]
fn ca_file_is_resolved_relative_to_the_config_and_read_on_demand() {
    use base64::Engine as _;
    let dir = std::env::temp_dir().join(format!("hookpost-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode([1u8, 2, 3, 4, 5, 6]);
    let pem = |n: usize| {
        (0..n)
            .map(|_| format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"))
            .collect::<String>()
    };
    std::fs::write(dir.join("two.pem"), pem(2)).unwrap();
    std::fs::write(dir.join("none.pem"), "no certificate here\n").unwrap();
    std::fs::write(
        dir.join("big.pem"),
        vec![b'#'; usize::try_from(types::MAX_CA_FILE_BYTES).unwrap() + 1],
    )
    .unwrap();
    let origin = dir.join("hookpost.toml");
    let load = |file: &str| {
        Config::from_toml_str(&format!("[http]\nca_file = \"{file}\"\n"), &origin, &[])
            .expect("the file is not read at load")
            .http
    };
    let http = load("two.pem");
    assert_eq!(http.ca_file.as_deref(), Some(&*dir.join("two.pem")));
    assert_eq!(http.read_ca_file(), Ok(vec![vec![1u8, 2, 3, 4, 5, 6]; 2]));
    let absolute = dir.join("two.pem").display().to_string();
    assert_eq!(load(&absolute).read_ca_file().map(|c| c.len()), Ok(2));
    for (file, says) in [
        ("missing.pem", "cannot read"),
        ("none.pem", "holds no certificate"),
        ("big.pem", "is over 1048576 bytes"),
    ] {
        let e = load(file).read_ca_file().unwrap_err();
        assert!(e.contains(file) && e.contains(says), "{file}: {e}");
    }
    let defaults = Config::from_toml_str("", &origin, &[])
        .expect("defaults")
        .http;
    assert_eq!(
        (defaults.ca_file.clone(), defaults.read_ca_file()),
        (None, Ok(vec![]))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
