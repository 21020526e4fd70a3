//! `hookpost-admin`: inspect, replay, purge, export and import the dead-letter
//! queue; endpoint and topology status.
//!
//! The dead-letter commands are in [`common::dlq`] (the console uses them
//! too); [`cli`] is the command line.

pub mod cli;
mod dlq;

pub use common::dlq::{Action, MAX_REPLAY_RATE, Report, record, replay_interval, view};

use anyhow::Context;
use common::Config;
use common::secret::redact_url;
use common::topology::Topology;
use lapin::{Connection, ConnectionProperties};

/// A connection to the broker for admin commands.
#[derive(Debug)]
pub struct Admin {
    config: Config,
    topology: Topology,
    conn: Connection,
}

impl Admin {
    /// Connects, giving up after `amqp.publish_timeout_ms`.
    ///
    /// # Errors
    /// A one-line message naming the broker (credentials redacted).
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        // Each node of `amqp.urls` in turn, each within the timeout.
        let mut errors = Vec::new();
        let mut conn = None;
        for url in &config.amqp.urls {
            let shown = redact_url(url.expose());
            match tokio::time::timeout(
                config.amqp.publish_timeout,
                Connection::connect(
                    url.expose(),
                    ConnectionProperties::default().with_connection_name("hookpost-admin".into()),
                ),
            )
            .await
            {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    break;
                }
                Ok(Err(e)) => errors.push(format!("broker {shown} unreachable: {e}")),
                Err(_) => errors.push(format!(
                    "broker {shown} unreachable: no answer within {:?}",
                    config.amqp.publish_timeout
                )),
            }
        }
        let conn = conn.ok_or_else(|| anyhow::anyhow!("{}", errors.join("; ")))?;
        let topology = Topology::for_config(&config);
        Ok(Self {
            config,
            topology,
            conn,
        })
    }

    /// Reads the attempt log for `query` ([`common::history::read`]).
    ///
    /// # Errors
    /// No log yet, or a broker error.
    pub async fn log(
        &self,
        query: &common::history::Query,
        follow: Option<common::history::Follow<'_>>,
    ) -> anyhow::Result<(Vec<common::history::Attempt>, common::history::Scanned)> {
        common::history::read(&self.conn, &self.topology, query, follow).await
    }

    /// Sends archived events of `request`'s window again to `endpoint` (a
    /// file or registered endpoint, with its environments' variants).
    ///
    /// # Errors
    /// An unknown endpoint, no archive, or a broker error.
    pub async fn replay(
        &self,
        endpoint: &str,
        request: &common::archive::replay::Request,
        stop: &tokio_util::sync::CancellationToken,
        report: &mut (dyn FnMut(common::archive::replay::Note<'_>) + Send),
    ) -> anyhow::Result<common::archive::replay::Progress> {
        let state = self.holds().await?;
        let (config, _) = crate::effective_config(&self.config, &state, &mut Default::default());
        let runtime: Vec<common::config::Endpoint> = config
            .endpoints
            .iter()
            .filter(|e| common::config::base_id(&e.id) == endpoint)
            .cloned()
            .collect();
        if runtime.is_empty() {
            anyhow::bail!(
                "unknown endpoint {endpoint:?}: it is neither in {} nor registered",
                self.config.origin.display()
            );
        }
        let target = common::archive::replay::Target::new(&runtime);
        common::archive::replay::run(&self.conn, &self.topology, &target, request, stop, report)
            .await
    }

    /// Pauses (`paused = true`) or resumes an endpoint on every dispatcher,
    /// through the control stream.
    ///
    /// # Errors
    /// A broker error or refusal.
    pub async fn hold(&self, endpoint: &str, paused: bool) -> anyhow::Result<()> {
        common::registry::control::append(
            &self.conn,
            &self.topology,
            &common::registry::control::Command::hold(endpoint, paused),
        )
        .await?;
        if let Err(e) = self.tell_hold(endpoint, paused).await {
            tracing::warn!(endpoint, error = %e, "The endpoint is held as asked, but its operational event could not be published.");
        }
        Ok(())
    }

    /// Publishes `hookpost.endpoint.paused` or `.resumed` (reason
    /// `operator`) for an operator's hold, with the endpoint's tenant.
    async fn tell_hold(&self, endpoint: &str, paused: bool) -> anyhow::Result<()> {
        use common::operational::{ENDPOINT_PAUSED, ENDPOINT_RESUMED, Notice};
        let tenant = match self.config.endpoint(endpoint) {
            Some(e) => e.tenant.clone(),
            None => self
                .registry()
                .get(endpoint)
                .await
                .ok()
                .and_then(|e| e.tenant().map(str::to_owned)),
        };
        let notice = Notice {
            kind: if paused {
                ENDPOINT_PAUSED
            } else {
                ENDPOINT_RESUMED
            },
            endpoint,
            tenant: tenant.as_deref(),
            reason: "operator",
            event_id: None,
            last_status: None,
        };
        let (event, key) = notice.event()?;
        let ch = common::amqp::open_channel(&self.conn).await?;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let published = common::amqp::publish_confirmed(
            &ch,
            &self.topology.scoped_exchange(),
            &key,
            &event.to_vec(),
            lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(event.id.as_str().into()),
        )
        .await;
        let _ = ch.close(200, "told".into()).await;
        published
    }

    /// The endpoints operators hold, read from the control stream.
    ///
    /// # Errors
    /// A broker error, or the stream could not be read within the publish timeout.
    pub async fn holds(&self) -> anyhow::Result<common::registry::control::Holds> {
        common::registry::control::read(
            &self.conn,
            &self.topology,
            self.config
                .amqp
                .publish_timeout
                .max(std::time::Duration::from_secs(5)),
        )
        .await
    }

    /// The endpoint registry (what the management API edits).
    pub fn registry(&self) -> common::registry::Registry<'_> {
        common::registry::Registry::new(&self.conn, &self.config)
    }

    /// The names in use.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Messages ready in a queue and its consumers, or `None` when it does not exist.
    ///
    /// # Errors
    /// A broker error other than the queue's absence.
    pub async fn queue_status(&self, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
        self.registry()
            .queue_counts(queue)
            .await
            .with_context(|| format!("checking queue {queue}"))
    }

    /// Declares everything the config needs (what a dispatcher declares at start).
    ///
    /// # Errors
    /// The broker's refusal, naming the object.
    pub async fn declare(&self) -> anyhow::Result<()> {
        // With the registered endpoints, or their bindings would be removed.
        let state = self.holds().await?;
        let (config, held) = crate::effective_config(&self.config, &state, &mut Default::default());
        crate::declare(&self.conn, &config, None, &self.topology, &held).await?;
        Ok(())
    }

    /// Every hookpost exchange-backed queue the config implies, with depth and consumers.
    ///
    /// # Errors
    /// A broker error other than a queue's absence.
    pub async fn topology_status(
        &self,
    ) -> anyhow::Result<Vec<(String, &'static str, Option<(u32, u32)>)>> {
        // The registry's endpoints too; a registry that cannot be read now
        // leaves the config file's queues still worth seeing.
        let registered = match self.holds().await {
            Ok(state) => state.runtime_ids(&self.config),
            Err(e) => {
                eprintln!(
                    "warning: the registry could not be read ({e:#}); its endpoints' queues are not listed"
                );
                Vec::new()
            }
        };
        let rows = self.topology.queues(&self.config, registered);
        let mut out = Vec::with_capacity(rows.len());
        for (name, kind) in rows {
            let status = self.queue_status(&name).await?;
            out.push((name, kind, status));
        }
        Ok(out)
    }

    /// The config this admin reads.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Closes the connection, waiting at most [`common::amqp::CLOSE_TIMEOUT`]
    /// (a blocked connection is dropped without a close: it would never be sent).
    pub async fn close(self) {
        if self.conn.status().blocked() {
            return;
        }
        let _ = tokio::time::timeout(
            common::amqp::CLOSE_TIMEOUT,
            self.conn.close(200, "bye".into()),
        )
        .await;
    }
}
