//! The archive's copies of a call's events: after each run of them, one
//! stream message holding their envelopes, one per line, LZ4-compressed
//! (`common::archive`).

use super::lane::Item;
use lapin::BasicProperties;
use lapin::types::ShortString;
use std::sync::Arc;

/// Events whose archive copies share one stream message, at most.
pub const COPIES_PER_MESSAGE: usize = 256;
/// Bytes of events whose copies share one stream message, at most (an
/// event larger than this gets a message of its own).
pub const COPY_MESSAGE_BYTES: usize = 512 * 1024;

/// `items` with, after each run of at most [`COPIES_PER_MESSAGE`] events
/// (and [`COPY_MESSAGE_BYTES`]), one archive message holding their copies,
/// one envelope per line, compressed: one stream message per event would halve the
/// publisher's rate (the broker's work per message), one per run costs
/// little (BENCHMARKS.md, `archive-cost`).
pub(super) fn with_copies(
    items: Vec<Arc<Item>>,
    stream: &ShortString,
    now: time::OffsetDateTime,
) -> Vec<Arc<Item>> {
    let mut out = Vec::with_capacity(items.len() + items.len() / COPIES_PER_MESSAGE + 1);
    let mut run: Vec<Arc<Item>> = Vec::new();
    let mut bytes = 0;
    let flush = |run: &mut Vec<Arc<Item>>, out: &mut Vec<Arc<Item>>| {
        if run.is_empty() {
            return;
        }
        let copy = pack(run, stream, now);
        out.append(run);
        out.push(Arc::new(copy));
    };
    for item in items {
        if !run.is_empty()
            && (run.len() >= COPIES_PER_MESSAGE || bytes + item.body.len() > COPY_MESSAGE_BYTES)
        {
            flush(&mut run, &mut out);
            bytes = 0;
        }
        bytes += item.body.len();
        run.push(item);
    }
    flush(&mut run, &mut out);
    out
}

/// One archive message holding the copies of `run` (not empty), one
/// envelope per line, compressed, with the archive time `now`.
pub(super) fn pack(run: &[Arc<Item>], stream: &ShortString, now: time::OffsetDateTime) -> Item {
    let first_id = run.first().map(|item| item.id.clone()).unwrap_or_default();
    let mut body = Vec::with_capacity(run.iter().map(|i| i.body.len() + 1).sum());
    for (n, item) in run.iter().enumerate() {
        if n > 0 {
            body.push(b'\n');
        }
        body.extend_from_slice(&item.body);
    }
    let mut properties = BasicProperties::default()
        .with_content_type("application/x-ndjson".into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(first_id.as_str()))
        .with_app_id("hookpost".into());
    // LZ4, as the attempt log: the archive keeps several times more
    // history within `archive.max_bytes`, and the broker writes that
    // much less. A body too large to unpack safely stays plain.
    if body.len() <= common::history::MAX_UNPACKED {
        body = common::history::compress(&body);
        properties = properties.with_content_encoding(common::history::LZ4.into());
    }
    Item {
        id: first_id,
        exchange: ShortString::from(""),
        routing_key: stream.clone(),
        properties: common::archive::copy_properties(&properties, now),
        body: body.into(),
        copies: run.len(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event item of `size` bytes (also for the packer's tests).
    pub(crate) fn item(id: &str, size: usize) -> Arc<Item> {
        Arc::new(Item {
            id: id.to_owned(),
            exchange: "e".into(),
            routing_key: "t".into(),
            body: vec![b'x'; size].into(),
            properties: BasicProperties::default(),
            copies: 0,
        })
    }

    #[test]
    fn copies_follow_each_run_of_events_one_per_line() {
        let now = time::macros::datetime!(2026-12-03 10:00 UTC);
        let stream: ShortString = "p.archive".into();
        let items: Vec<Arc<Item>> = (0..600).map(|i| item(&format!("e{i}"), 3)).collect();
        let out = with_copies(items, &stream, now);
        // 256 + copy, 256 + copy, 88 + copy.
        assert_eq!(out.len(), 603);
        let copies: Vec<(usize, usize)> = out
            .iter()
            .enumerate()
            .filter(|(_, i)| i.copies > 0)
            .map(|(n, i)| (n, i.copies))
            .collect();
        assert_eq!(copies, [(256, 256), (513, 256), (602, 88)]);
        let last = &out[602];
        assert_eq!(last.routing_key.as_str(), "p.archive");
        assert_eq!(last.exchange.as_str(), "");
        assert_eq!(last.id, "e512");
        assert_eq!(
            last.properties
                .content_encoding()
                .as_ref()
                .map(|e| e.as_str()),
            Some(common::history::LZ4)
        );
        let lines = common::history::unpacked(Some(common::history::LZ4), &last.body)
            .expect("unpacks")
            .into_owned();
        assert_eq!(lines.split(|b| *b == b'\n').count(), 88);
        assert!(lines.split(|b| *b == b'\n').all(|l| l == b"xxx"));
        let headers = last.properties.headers().clone().expect("headers");
        assert_eq!(common::archive::Archived::time(&headers), Some(now));
        // A large event closes the run before it.
        let out = with_copies(
            vec![
                item("a", 10),
                item("big", COPY_MESSAGE_BYTES),
                item("c", 10),
            ],
            &stream,
            now,
        );
        let ids: Vec<(&str, usize)> = out.iter().map(|i| (i.id.as_str(), i.copies)).collect();
        assert_eq!(
            ids,
            [
                ("a", 0),
                ("a", 1),
                ("big", 0),
                ("big", 1),
                ("c", 0),
                ("c", 1)
            ]
        );
        assert!(with_copies(Vec::new(), &stream, now).is_empty());
    }
}
