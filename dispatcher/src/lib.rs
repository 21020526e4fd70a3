//! The hookpost dispatcher: delivers every event to every endpoint subscribed
//! to it (ARCHITECTURE.md has the code map).
//!
//! - [`run`] (`supervisor.rs`): the broker connection's generations, the
//!   control stream, declarations, one worker per endpoint, reloads, and
//!   `/metrics`, `/healthz`, `/readyz`;
//! - [`delivery`]: one endpoint's pipeline, a stage per file;
//! - [`bindings`], [`poll`]: stale-binding removal and queue depths;
//! - [`admin`]: the library behind `hookpost-admin`.
//!
//! Delivery is at-least-once: a message leaves its queue only once it was
//! delivered (2xx) or replaced by a confirmed retry or dead letter.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bindings;
pub mod delivery;
pub mod poll;
mod supervisor;

pub use supervisor::run;
pub(crate) use supervisor::{declare, effective_config};

use common::Config;

/// Checks what the dispatcher needs beyond [`Config`]'s own validation:
/// endpoints given as literal IP addresses must be globally reachable or
/// allowed by `http.allowed_networks` ([`common::addresses`]), and the
/// certificates of `http.ca_file` must be usable trust anchors.
///
/// # Errors
/// A message naming the file and the key.
pub fn validate(config: &Config) -> anyhow::Result<()> {
    if let Some(file) = &config.http.ca_file {
        let origin = config.origin.display();
        let roots = config
            .http
            .read_ca_file()
            .map_err(|e| anyhow::anyhow!("{origin}: key `http.ca_file`: {e}"))?;
        if let Err(e) = delivery::connect::Connector::trusting(
            common::addresses::AddressGuard::default(),
            &roots,
        ) {
            anyhow::bail!(
                "{origin}: key `http.ca_file`: {} cannot be trusted: {e}",
                file.display()
            );
        }
    }
    for (i, ep) in config.endpoints.iter().enumerate() {
        if let Err(why) = config.check_address(&ep.url) {
            anyhow::bail!(
                "{}: key `endpoints[{i}].url`: (endpoint {:?}) {why}",
                config.origin.display(),
                ep.id
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(allowed: &str, url: &str) -> anyhow::Result<()> {
        let text = format!(
            "[http]\nallowed_networks = [{allowed}]\n[[endpoints]]\nid = \"ep\"\nurl = \"{url}\"\nevents = [\"#\"]\n"
        );
        let config = Config::from_toml_str(&text, Path::new("/etc/hookpost.toml"), &[])?;
        validate(&config)
    }

    /// Config load refuses literal endpoints in non-global ranges, naming
    /// the key; nothing is sent anywhere.
    #[test]
    fn validate_refuses_non_global_literal_endpoints() {
        for host in [
            "[64:ff9b::a9fe:a9fe]",
            "[2002:a9fe:a9fe::1]",
            "198.18.0.1",
            "[fec0::1]",
            "[::a9fe:a9fe]",
            "[2001::a9fe:a9fe]",
            "169.254.169.254",
            "[::ffff:169.254.169.254]",
            "127.0.0.1",
        ] {
            let err = load("", &format!("http://{host}/hook"))
                .expect_err(host)
                .to_string();
            assert!(err.contains("key `endpoints[0].url`"), "{err}");
            assert!(err.contains("/etc/hookpost.toml"), "{err}");
            assert!(err.contains("http.allowed_networks"), "{err}");
        }
        for ok in ["http://8.8.8.8/hook", "https://[2606:4700::1111]/hook"] {
            load("", ok).unwrap();
        }
        load("\"127.0.0.0/8\"", "http://127.0.0.1:9/hook").unwrap();
        load("\"127.0.0.0/8\"", "http://[::ffff:127.0.0.1]:9/hook").unwrap();
        load("\"::1/128\"", "http://[::1]:9/hook").unwrap();
    }

    #[test]
    fn a_ca_file_certificate_that_cannot_be_a_trust_anchor_is_refused() {
        let file = std::env::temp_dir().join(format!("hookpost-bad-ca-{}.pem", std::process::id()));
        std::fs::write(
            &file,
            "-----BEGIN CERTIFICATE-----\nAQIDBA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let text = format!("[http]\nca_file = \"{}\"\n", file.display());
        let config = Config::from_toml_str(&text, Path::new("/etc/hookpost.toml"), &[]).unwrap();
        let e = validate(&config).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/hookpost.toml: key `http.ca_file`: ")
                && e.contains("cannot be trusted"),
            "{e}"
        );
        // A file gone by the time the dispatcher starts or reloads.
        let _ = std::fs::remove_file(&file);
        let e = validate(&config).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/hookpost.toml: key `http.ca_file`: cannot read"),
            "{e}"
        );
    }
}
