//! The attempt log's read (issue 18): how fast one query scans the log.
//! `n` records, packed 256 to a stream message as the dispatchers write
//! them, for 100 endpoints; then one query for one endpoint's newest 100,
//! which reads every record since its `since`.

use crate::report::Row;
use common::history::{self, Attempt, Outcome, Query};
use common::topology::Topology;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use std::time::{Duration, Instant};
use tests::Scope;

pub(crate) async fn log_read(n: usize) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let config = scope.config("");
    let topology = Topology::for_config(&config);
    history::ensure(&scope.connection, &topology, &config.log).await?;
    let ch = scope.connection.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let now = time::OffsetDateTime::now_utc();
    let started_at = now.format(&time::format_description::well_known::Rfc3339)?;
    let written = Instant::now();
    let mut confirms = Vec::new();
    let ids: Vec<usize> = (0..n).collect();
    for chunk in ids.chunks(512) {
        let mut body = Vec::new();
        for i in chunk {
            if !body.is_empty() {
                body.push(b'\n');
            }
            // As a dispatcher writes them: time-ordered random ids, a
            // millisecond clock, varied durations (what compression meets).
            let at = now + Duration::from_millis(*i as u64);
            let record = Attempt {
                event_id: common::envelope::new_event_id(),
                event_type: "order.created".into(),
                tenant: None,
                environment: None,
                endpoint: format!("e{}", i % 100),
                attempt: 1,
                started_at: at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| started_at.clone()),
                duration_ms: 3 + (*i as u64 * 7919) % 400,
                outcome: Outcome::Delivered,
                status: Some(200),
                error: None,
                response: Some("{\"ok\":true}".into()),
            };
            serde_json::to_writer(&mut body, &record)?;
        }
        confirms.push(
            ch.basic_publish(
                "".into(),
                topology.log().as_str().into(),
                BasicPublishOptions::default(),
                &history::compress(&body),
                BasicProperties::default().with_content_encoding(history::LZ4.into()),
            )
            .await?,
        );
        if confirms.len() >= 256 {
            for c in confirms.drain(..) {
                c.await?;
            }
        }
    }
    for c in confirms {
        c.await?;
    }
    eprintln!(
        "  (wrote {n} records in {:.1} s)",
        written.elapsed().as_secs_f64()
    );
    let query = Query {
        endpoint: Some("e7".into()),
        endpoints_in: None,
        event: None,
        tenant: None,
        outcome: None,
        status: None,
        since: now - Duration::from_secs(600),
        until: None,
        limit: 100,
    };
    let began = Instant::now();
    let (found, scanned) = history::read(&scope.connection, &topology, &query, None).await?;
    let seconds = began.elapsed().as_secs_f64();
    anyhow::ensure!(
        found.len() == 100.min(n / 100) && scanned.records >= n as u64,
        "the query found {} and read {} of {n}",
        found.len(),
        scanned.records
    );
    Ok(Row {
        scenario: format!("attempt log query over {n} records"),
        events: n,
        deliveries: found.len(),
        seconds,
        events_per_s: n as f64 / seconds,
        notes: Some(
            "records one query reads per second (events/s column); at 1,000 attempts/s an hour is 3.6 million records".into(),
        ),
        ..Row::default()
    })
}
