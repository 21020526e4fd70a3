//! The dead-letter commands on the admin's connection ([`common::dlq`]).

use super::Admin;
use common::dlq::record::Record;
use common::dlq::view::{DeadLetterView, Filter};
use common::dlq::{Action, DeadLetters, Report};
use lapin::message::BasicGetMessage;
use std::io::Write;

impl Admin {
    /// The dead-letter queue through this admin's connection.
    pub fn dead_letters(&self) -> DeadLetters<'_> {
        DeadLetters::new(&self.conn, &self.topology, &self.config)
    }

    /// [`DeadLetters::browse`].
    ///
    /// # Errors
    /// A broker error.
    pub async fn browse(
        &self,
        visit: impl FnMut(&BasicGetMessage, &DeadLetterView),
    ) -> anyhow::Result<()> {
        self.dead_letters().browse(visit).await
    }

    /// [`DeadLetters::list`].
    ///
    /// # Errors
    /// A broker error.
    pub async fn list(
        &self,
        filter: &Filter,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<DeadLetterView>> {
        self.dead_letters().list(filter, limit).await
    }

    /// [`DeadLetters::export`].
    ///
    /// # Errors
    /// A broker error.
    pub async fn export(
        &self,
        filter: &Filter,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<Record>> {
        self.dead_letters().export(filter, limit).await
    }

    /// [`DeadLetters::import`].
    ///
    /// # Errors
    /// A broker error or refusal, naming the record.
    pub async fn import(&self, records: &[Record]) -> anyhow::Result<usize> {
        self.dead_letters().import(records).await
    }

    /// [`DeadLetters::apply`].
    ///
    /// # Errors
    /// An unknown `--to-endpoint`, or a broker error.
    pub async fn apply(
        &self,
        filter: &Filter,
        limit: Option<usize>,
        action: &Action,
        out: &mut (dyn Write + Send),
    ) -> anyhow::Result<Report> {
        self.dead_letters().apply(filter, limit, action, out).await
    }
}
