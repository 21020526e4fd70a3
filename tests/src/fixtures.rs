//! Helpers the end-to-end dispatcher tests share: config snippets, a bulk
//! publish, and header reading on dead letters.

use common::Event;
use lapin::types::AMQPValue;
use producer::Publisher;

/// Fast retries for tests: 100, 200, 400 ms.
pub const FAST: &str = "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[defaults]\nretry_delay_ms = 100\nmax_retry_delay_ms = 400\nmax_retries = 3\ntimeout_ms = 2000\n";

/// One `[[endpoints]]` table.
pub fn endpoint(id: &str, url: &str, events: &[&str], extra: &str) -> String {
    let events: Vec<String> = events.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[endpoints]]\nid = \"{id}\"\nurl = \"{url}\"\nevents = [{}]\n{extra}\n",
        events.join(", ")
    )
}

/// Publishes `n` events of `event_type` (data `{"i": n}`), returning their ids.
///
/// # Panics
/// When publishing fails.
pub async fn publish(publisher: &Publisher, event_type: &str, n: usize) -> Vec<String> {
    let events: Vec<Event> = (0..n)
        .map(|i| Event::new(event_type, serde_json::json!({ "i": i })).expect("valid"))
        .collect();
    publisher.publish_many(&events).await.expect("published");
    events.into_iter().map(|e| e.id).collect()
}

/// A header of a message got from a queue, as text.
pub fn header_str(msg: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    let headers = msg.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::Void => Some(String::new()),
        other => Some(format!("{other:?}")),
    }
}
