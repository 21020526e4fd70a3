//! Configuration: `hookpost.toml`, `${VAR}` interpolation, `HOOKPOST_*`
//! overrides, and validation into the checked [`Config`].
//!
//! Loading is in [`load`]; the file schema (and its documentation) in [`raw`].
//! Every error names the file and the key; secrets never appear in one.

//! - `types`: the checked configuration and endpoint types;
//! - `check`: raw → checked, every section but the endpoints;
//! - `endpoint`: one endpoint checked (file or API), ids and patterns.

mod check;
mod defaults;
mod endpoint;
pub mod load;
pub mod raw;
mod types;

pub use endpoint::{is_valid_endpoint_id, is_valid_pattern};
pub use load::ConfigError;
pub use raw::{Method, OnExhausted, QueueType, SignatureScheme};
pub use types::*;

use raw::RawConfig;
use std::path::Path;

/// Longest retry delay (a wait queue's TTL), 30 days.
pub const MAX_DELAY_MS: u64 = 30 * 24 * 3_600_000;
/// Longest request timeout or batch interval, 15 minutes.
pub const MAX_HOLD_MS: u64 = 15 * 60_000;

/// Most events one request may batch.
pub const MAX_BATCH_SIZE: u32 = 10_000;

impl Config {
    /// Reads `path`, interpolates `${VAR}`s and applies `HOOKPOST_*` overrides
    /// from the process environment, then validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the key (or the variable).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_toml_str(&text, path, &env)
    }

    /// [`Config::load`] on `path`, or without a file: the defaults with the
    /// environment's `HOOKPOST_*` overrides (what the CLIs do without `--config`).
    ///
    /// # Errors
    /// See [`Config::load`].
    pub fn load_optional(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None => {
                let env: Vec<(String, String)> = std::env::vars().collect();
                Self::from_toml_str("", Path::new("<no config file>"), &env)
            }
        }
    }

    /// Like [`Config::load`] with the file's text and the environment given.
    ///
    /// # Errors
    /// See [`Config::load`].
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let raw = load::parse(text, origin, env)?;
        Self::from_raw(raw, origin)
    }

    /// The default configuration (no endpoints), with `AMQP_URL` honoured.
    pub fn defaults() -> Self {
        Self::from_raw(RawConfig::default(), Path::new("<defaults>"))
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }

    /// The wait tiers (ms) the endpoints' retry schedules use, each once.
    pub fn wait_tiers(&self) -> std::collections::BTreeSet<u64> {
        self.endpoints
            .iter()
            .flat_map(|e| e.retry.tiers_ms())
            .collect()
    }

    /// Whether `id` names an endpoint of the file (read-only for the API).
    pub fn is_file_endpoint(&self, id: &str) -> bool {
        self.endpoint(id).is_some()
    }

    /// The endpoint with this id.
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

#[cfg(test)]
mod tests;
