//! The example config in deploy/ parses, and the README documents exactly its keys.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

fn example_env() -> Vec<(String, String)> {
    [
        ("CRM_TOKEN", "crm-token"),
        (
            "CRM_WEBHOOK_SECRET",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ),
        ("INGEST_TOKEN", "ingest-token-0123456789"),
        ("API_TOKEN", "api-token-0123456789abc"),
        (
            "HOOKPOST_SECRETS_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
        ("WEBHOOK_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

#[test]
fn example_configs_parse() {
    let path = root().join("deploy/hookpost.toml");
    let text = std::fs::read_to_string(&path).expect("read example");
    let config = common::Config::from_toml_str(&text, &path, &example_env())
        .expect("example config is valid");
    let ids: Vec<&str> = config.endpoints.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        ["crm", "acme-orders", "acme-orders~prd", "acme-orders~snd"]
    );
    assert_eq!(config.endpoints[0].batch_size, 10);
    assert_eq!(config.endpoints[3].timeout.as_millis(), 3000);
    assert_eq!(config.ingest.tokens.len(), 1);

    let path = root().join("deploy/local.toml");
    let text = std::fs::read_to_string(&path).expect("read local");
    let config = common::Config::from_toml_str(&text, &path, &[]).expect("local config is valid");
    assert_eq!(
        config.ingest.tokens[0].expose(),
        "local-dev-token-change-me"
    );

    let path = root().join("deploy/compose/hookpost.toml");
    let text = std::fs::read_to_string(&path).expect("read compose config");
    let config = common::Config::from_toml_str(&text, &path, &example_env())
        .expect("compose config is valid");
    assert_eq!(config.endpoints[0].id, "receiver");
    assert_eq!(config.api.listen.port(), 8081, "the console in the stack");
    assert!(config.registry.secrets_key.is_some());

    // Without its variables, the example names the first one missing.
    let err = common::Config::from_toml_str(&text_of("deploy/hookpost.toml"), &path, &[])
        .expect_err("variables unset");
    assert!(err.to_string().contains("is not set"), "{err}");
}

fn text_of(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).expect("read")
}

#[test]
fn readme_reference_lists_exactly_the_example_keys() {
    let table: toml::Table = text_of("deploy/hookpost.toml").parse().expect("toml");
    let mut example = BTreeSet::new();
    for (section, value) in &table {
        match value {
            toml::Value::Table(t) => example.extend(t.keys().map(|k| format!("{section}.{k}"))),
            toml::Value::Array(items) => {
                for item in items {
                    if let Some(t) = item.as_table() {
                        example.extend(t.keys().map(|k| format!("{section}.{k}")));
                    }
                }
            }
            _ => panic!("top-level key {section} outside a table"),
        }
    }
    // Keys the example shows commented out (`# key = value`: an alternative,
    // such as `amqp.urls` beside `amqp.url`) count as shown.
    let mut section = String::new();
    for line in text_of("deploy/hookpost.toml").lines() {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_matches(|c| c == '[' || c == ']').to_owned();
        } else if let Some((key, _)) = line.strip_prefix("# ").and_then(|l| l.split_once(" = "))
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            example.insert(format!("{section}.{key}"));
        }
    }
    let readme = text_of("README.md");
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|k| {
            k.contains('.')
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
        })
        .filter(|k| {
            [
                "amqp.",
                "metrics.",
                "http.",
                "defaults.",
                "ingest.",
                "api.",
                "registry.",
                "transforms.",
                "log.",
                "archive.",
                "endpoints.",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(
        documented, example,
        "README configuration table vs deploy/hookpost.toml"
    );
}
