//! The API's read views: the endpoint list and one endpoint, as a caller
//! may see them, and the answer to a create.

use super::{Api, Caller};
use common::registry::{self, OpError, StoredEndpoint};
use common::secret::redact_url;
use common::server::{HttpResponse, json};
use hyper::StatusCode;
use hyper::header::{HeaderValue, LOCATION};
use serde_json::{Value, json};

impl Api {
    /// Registered endpoints, then the config file's; a tenant sees only its
    /// registered ones. `tenant`: only those of this tenant.
    pub(super) async fn list(
        &self,
        caller: &Caller,
        tenant: Option<&str>,
    ) -> Result<HttpResponse, OpError> {
        let state = self.current().await?;
        let own = match caller {
            Caller::Operator => None,
            Caller::Tenant(t) => Some(t.as_str()),
        };
        let wanted = |t: Option<&str>| {
            own.is_none_or(|own| t == Some(own)) && tenant.is_none_or(|want| t == Some(want))
        };
        let mut endpoints: Vec<Value> = state
            .endpoints
            .values()
            .filter(|e| !self.config.is_file_endpoint(&e.id) && wanted(e.tenant()))
            .map(|e| registry::public_view(e, state.holds.contains(&e.id)))
            .collect();
        if own.is_none() {
            endpoints.extend(
                self.config
                    .endpoints
                    .iter()
                    .filter(|e| wanted(e.tenant.as_deref()))
                    .map(|e| file_view(e, state.holds.contains(&e.id))),
            );
        }
        Ok(json(StatusCode::OK, &json!({ "endpoints": endpoints })))
    }

    pub(super) async fn get(&self, caller: &Caller, id: &str) -> Result<HttpResponse, OpError> {
        let state = self.current().await?;
        let paused = state.holds.contains(id);
        if let Some(e) = self.config.endpoint(id)
            && *caller == Caller::Operator
        {
            return Ok(json(StatusCode::OK, &file_view(e, paused)));
        }
        let stored = state
            .endpoints
            .get(id)
            .filter(|e| !self.config.is_file_endpoint(&e.id))
            .filter(|e| match caller {
                Caller::Operator => true,
                Caller::Tenant(t) => e.tenant() == Some(t.as_str()),
            })
            .ok_or_else(|| OpError::NotFound(id.to_owned()))?;
        Ok(json(StatusCode::OK, &registry::public_view(stored, paused)))
    }
}

pub(super) fn created(stored: &StoredEndpoint, generated: Option<String>) -> HttpResponse {
    let mut view = registry::public_view(stored, false);
    if let (Some(secret), Value::Object(v)) = (generated, &mut view) {
        v.insert("secret".into(), Value::String(secret));
    }
    let mut r = json(StatusCode::CREATED, &view);
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/endpoints/{}", stored.id)) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// A file endpoint as the API shows it (read-only; nothing secret).
fn file_view(e: &common::config::Endpoint, paused: bool) -> Value {
    let mut view = json!({
        "id": e.id,
        "url": redact_url(e.url.as_str()),
        "events": e.events,
        "source": "file",
        "read_only": true,
        "paused": paused,
    });
    if let Some(tenant) = &e.tenant {
        view["tenant"] = json!(tenant);
    }
    view
}
