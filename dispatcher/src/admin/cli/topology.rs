//! `hookpost-admin topology declare|status`.

use super::output::write_table;
use crate::admin::Admin;
use std::io::Write;

/// Declares the topology, or shows every hookpost queue with its depth.
pub(super) async fn run(
    admin: &Admin,
    action: &str,
    mut stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    match action {
        "declare" => {
            admin.declare().await?;
            writeln!(
                stdout,
                "declared the topology for {} endpoints under prefix {}",
                admin.config().endpoints.len(),
                admin.topology().prefix()
            )?;
            Ok(())
        }
        _ => {
            let rows: Vec<Vec<String>> = admin
                .topology_status()
                .await?
                .into_iter()
                .map(|(name, kind, status)| match status {
                    Some((depth, consumers)) => vec![
                        name,
                        kind.to_owned(),
                        depth.to_string(),
                        consumers.to_string(),
                    ],
                    None => vec![name, kind.to_owned(), "missing".into(), "-".into()],
                })
                .collect();
            write_table(
                &mut stdout,
                &["QUEUE", "KIND", "MESSAGES", "CONSUMERS"],
                &rows,
            )?;
            Ok(())
        }
    }
}
