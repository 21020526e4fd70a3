//! The HTTP client of `[http]`'s settings, shared by every worker of a
//! connection and replaced in place when a reload changes `[http]`.

use crate::delivery::send::Sender;
use std::sync::Arc;
use std::time::Duration;

/// The HTTP client of `[http]`'s settings: what each attempt sends with.
#[derive(Debug)]
pub struct Http {
    /// The client (address policy, trusted roots, body cap).
    pub sender: Sender,
    /// Cap on `Retry-After`.
    pub max_retry_after: Duration,
}

/// The current [`Http`], shared by every worker; a reload that changes
/// `[http]` replaces it, and the next attempt of every worker uses the new
/// one (attempts under way finish with the one they began with).
#[derive(Debug, Clone)]
pub struct HttpClient(Arc<std::sync::RwLock<Arc<Http>>>);

impl HttpClient {
    /// A client for `http`'s settings, keeping `keep_body` bytes of each
    /// answer's body.
    ///
    /// # Errors
    /// As [`Sender::new`].
    pub fn new(http: &common::config::HttpConfig, keep_body: usize) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(std::sync::RwLock::new(Arc::new(Http::new(
            http, keep_body,
        )?)))))
    }

    /// The client now.
    pub fn current(&self) -> Arc<Http> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the client with one for `http`'s settings.
    ///
    /// # Errors
    /// As [`Sender::new`] (the old client stays).
    pub fn replace(
        &self,
        http: &common::config::HttpConfig,
        keep_body: usize,
    ) -> anyhow::Result<()> {
        let new = Arc::new(Http::new(http, keep_body)?);
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        Ok(())
    }
}

impl Http {
    fn new(http: &common::config::HttpConfig, keep_body: usize) -> anyhow::Result<Self> {
        Ok(Self {
            sender: Sender::new(http, keep_body)?,
            max_retry_after: http.max_retry_after,
        })
    }
}
