//! An event's envelope written as compact JSON, byte for byte as
//! `serde_json` writes it, with the strings scanned eight bytes at a time:
//! `serde_json` looks up every byte of a string for an escape, which made
//! serializing a 1 KiB event most of a publish call's own CPU
//! (BENCHMARKS.md, session 34). Equality with `serde_json` is tested for
//! any envelope (`envelope.rs`).

use crate::Event;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

/// Writes `event` to `out`; fails only when RFC 3339 cannot write its
/// timestamp (which [`Event::validate`] refuses).
pub(crate) fn write_event(event: &Event, out: &mut Vec<u8>) -> Result<(), time::error::Format> {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &event.id);
    out.extend_from_slice(b",\"type\":");
    write_str(out, &event.event_type);
    out.extend_from_slice(b",\"timestamp\":\"");
    // Digits, `-`, `:`, `.`, `T`, `Z` and `+`: nothing to escape.
    event.timestamp.format_into(out, &Rfc3339)?;
    out.push(b'"');
    for (name, value) in [
        (&b",\"source\":"[..], &event.source),
        (b",\"tenant\":", &event.tenant),
        (b",\"environment\":", &event.environment),
    ] {
        if let Some(value) = value {
            out.extend_from_slice(name);
            write_str(out, value);
        }
    }
    out.extend_from_slice(b",\"data\":");
    write_value(out, &event.data);
    out.push(b'}');
    Ok(())
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // `Number`'s `Display` is how `serde_json` writes it (itoa for
        // integers, the same float formatter).
        Value::Number(n) => {
            use std::io::Write;
            // Writing to a `Vec` cannot fail.
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Eight bytes of `b` each.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Whether any of the eight bytes of `w` needs an escape: a control
/// character (below 0x20), `"` or `\`. Exact as a yes or no (the classic
/// "has a byte less than" and "has a zero byte" tests), not as to which byte.
fn needs_escape(w: u64) -> bool {
    const HIGH: u64 = splat(0x80);
    let control = w.wrapping_sub(splat(0x20)) & !w & HIGH;
    let quote = (w ^ splat(b'"')).wrapping_sub(splat(1)) & !(w ^ splat(b'"')) & HIGH;
    let backslash = (w ^ splat(b'\\')).wrapping_sub(splat(1)) & !(w ^ splat(b'\\')) & HIGH;
    control | quote | backslash != 0
}

/// `s` as a JSON string, escaped as `serde_json` escapes it: `\"`, `\\`,
/// `\b`, `\t`, `\n`, `\f`, `\r`, other control characters as `\u00xx`;
/// everything else (non-ASCII included) as is.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `bytes[start..i]` is written as is when the next escape (or the end)
    // comes.
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        while let Some(word) = bytes.get(i..i + 8) {
            let word = u64::from_ne_bytes(word.try_into().expect("eight bytes"));
            if needs_escape(word) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0..0x20 => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn strings_escape_as_serde_json_at_every_offset() {
        // Each character that needs an escape, and one that does not, at
        // every position of a string longer than two words.
        let specials = [
            '"', '\\', '\u{0}', '\u{8}', '\t', '\n', '\u{c}', '\r', '\u{1f}', '\u{7f}', 'é', ' ',
            '!', '#', '[', ']',
        ];
        for special in specials {
            for at in 0..20 {
                let mut s: String = "abcdefghijklmnopqrst".into();
                s.replace_range(at..=at, &special.to_string());
                assert_eq!(
                    json(&s),
                    serde_json::to_string(&s).expect("serializes"),
                    "{special:?} at {at}"
                );
            }
        }
        assert_eq!(json(""), "\"\"");
    }

    #[test]
    fn the_word_test_is_exact() {
        for b in 0..=255_u8 {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = b;
                let expected = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(
                    needs_escape(u64::from_ne_bytes(word)),
                    expected,
                    "{b} at {at}"
                );
            }
        }
    }
}
