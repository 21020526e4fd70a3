//! How `hookpost-admin` prints: tables and the "nothing matched" rule.

use crate::admin::view::DeadLetterView;
use anyhow::bail;
use std::io::Write;

/// Fails (non-zero exit) when nothing matched, after saying so.
pub(super) fn summary(out: &mut dyn Write, verb: &str, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        bail!(
            "no dead letter matches the filters; nothing {}",
            verb.trim_start_matches("would ")
        );
    }
    let _ = out.flush();
    Ok(())
}

pub(super) fn print_table(out: &mut dyn Write, views: &[DeadLetterView]) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.event_type.clone(),
                v.endpoint.clone(),
                v.reason.clone(),
                v.attempts.to_string(),
                v.last_status.map_or_else(|| "-".into(), |s| s.to_string()),
                v.failed_at
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    write_table(
        out,
        &[
            "EVENT ID",
            "TYPE",
            "ENDPOINT",
            "REASON",
            "ATTEMPTS",
            "LAST STATUS",
            "FAILED AT",
        ],
        &rows,
    )
}

pub(super) fn write_table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
