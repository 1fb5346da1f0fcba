//! The event as the hot path sees it: borrowed slices into a receive buffer
//! or a decompressed outbox block, never owned copies. Also its at-rest
//! encoding (postcard, appended into a reused buffer) and the checks every
//! event passes at the door.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One event. `headers` stays in its wire encoding (see [`HeaderIter`]) so
/// that neither ingest nor storage allocates per header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<'a> {
    pub topic: &'a str,
    #[serde(borrow)]
    pub key: Option<&'a [u8]>,
    /// `u16 count` then per header `u16 name_len, name, u32 value_len, value`
    /// (big-endian), exactly as in a frame; empty when there are none.
    pub headers: &'a [u8],
    pub value: &'a [u8],
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Set when ferry timestamped the event while the wall clock was not
    /// synchronised (see `clock`).
    pub clock: Option<crate::clock::UnsyncedStamp>,
}

impl<'a> Event<'a> {
    /// Size that counts against `max_event_bytes`: what Kafka will carry.
    pub fn payload_len(&self) -> usize {
        self.key.map_or(0, <[u8]>::len) + self.headers.len() + self.value.len()
    }

    /// Append the at-rest encoding to `out` (no allocation beyond `out`'s growth).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        postcard::to_io(self, out).map(|_| ())
    }

    /// Decode one event from the front of `bytes`, returning the rest.
    pub fn decode_from(bytes: &'a [u8]) -> Result<(Event<'a>, &'a [u8]), postcard::Error> {
        postcard::take_from_bytes(bytes)
    }

    pub fn header_iter(&self) -> HeaderIter<'a> {
        HeaderIter::new(self.headers)
    }
}

/// Walks a header list in wire encoding; validated at ingest, so a decode
/// failure here means corruption and simply ends the iteration.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
    remaining: u16,
}

impl<'a> HeaderIter<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        if raw.len() < 2 {
            return Self {
                rest: &[],
                remaining: 0,
            };
        }
        Self {
            remaining: u16::from_be_bytes([raw[0], raw[1]]),
            rest: &raw[2..],
        }
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let (name, rest) = take_prefixed(self.rest, 2)?;
        let (value, rest) = take_prefixed(rest, 4)?;
        self.rest = rest;
        Some((std::str::from_utf8(name).ok()?, value))
    }
}

/// Split a big-endian length prefix of `width` (2 or 4) bytes and its body.
pub fn take_prefixed(buf: &[u8], width: usize) -> Option<(&[u8], &[u8])> {
    if buf.len() < width {
        return None;
    }
    let len = match width {
        2 => u16::from_be_bytes([buf[0], buf[1]]) as usize,
        _ => u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
    };
    let body = buf.get(width..width.checked_add(len)?)?;
    Some((body, &buf[width + len..]))
}

/// Why a Kafka topic name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTopic {
    pub topic: String,
    pub why: &'static str,
}

impl fmt::Display for InvalidTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid topic name {:?}: {}", self.topic, self.why)
    }
}

impl std::error::Error for InvalidTopic {}

/// Kafka's own rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic(topic: &str) -> Result<(), InvalidTopic> {
    let why = if topic.is_empty() {
        Some("it is empty")
    } else if topic.len() > 249 {
        Some("it is longer than 249 characters")
    } else if topic == "." || topic == ".." {
        Some("\".\" and \"..\" are not allowed")
    } else if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(InvalidTopic {
            topic: topic.chars().take(64).collect(),
            why,
        }),
    }
}

/// Build a header list in wire encoding (for clients and tests).
pub fn encode_headers<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    let mut count: u16 = 0;
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
        count += 1;
    }
    out[start..start + 2].copy_from_slice(&count.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_rest() {
        let mut headers = Vec::new();
        encode_headers([("a", &b"1"[..]), ("bee", &b""[..])], &mut headers);
        let e = Event {
            topic: "t.x",
            key: Some(b"k"),
            headers: &headers,
            value: b"hello",
            timestamp_ms: 1_700_000_000_123,
            clock: Some(crate::clock::UnsyncedStamp {
                boot: 3,
                boot_ms: 42,
            }),
        };
        let mut buf = Vec::new();
        e.encode_into(&mut buf).unwrap();
        e.encode_into(&mut buf).unwrap();
        let (a, rest) = Event::decode_from(&buf).unwrap();
        let (b, rest) = Event::decode_from(rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(a, e);
        assert_eq!(b, e);
        let hs: Vec<_> = a.header_iter().collect();
        assert_eq!(hs, vec![("a", &b"1"[..]), ("bee", &b""[..])]);
    }

    #[test]
    fn topic_rules() {
        assert!(validate_topic("sensors.temp-1_a").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic(".").is_err());
        assert!(validate_topic("..").is_err());
        assert!(validate_topic("a b").is_err());
        assert!(validate_topic("ü").is_err());
        assert!(validate_topic(&"x".repeat(249)).is_ok());
        assert!(validate_topic(&"x".repeat(250)).is_err());
    }
}
