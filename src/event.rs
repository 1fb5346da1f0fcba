//! The event as the hot path sees it: borrowed slices into a receive buffer
//! or a decompressed outbox block, never owned copies. Also its at-rest
//! encoding (postcard's format, written by hand into a reused buffer) and
//! the checks every event passes at the door.

use crate::varint::{put_unsigned as put_varint, unzigzag, zigzag};
use std::fmt;

/// Kafka's default `message.max.bytes` is 1 048 588 bytes for a whole record
/// batch; an event larger than 1 MiB can never be produced with defaults.
pub const KAFKA_MAX_EVENT_BYTES: u64 = 1024 * 1024;

/// The header every record ferry produces from an event carries:
/// `<node-id>:<outbox-seq>`, unique per node for the life of the outbox,
/// for consumers that dedupe themselves.
pub const FERRY_ID_HEADER: &str = "ferry-id";

/// Writes the [`FERRY_ID_HEADER`] value `<node-id>:<seq>` into `out`
/// (cleared first; reused, so no allocation per event). The number goes
/// through `itoa`: through `fmt` it was 3 % of ferry's instructions.
pub fn write_ferry_id(out: &mut Vec<u8>, node_id: &str, seq: i64) {
    out.clear();
    out.extend_from_slice(node_id.as_bytes());
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
}

/// One event. `headers` stays in its wire encoding (see [`HeaderIter`]) so
/// that neither ingest nor storage allocates per header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize, serde::Deserialize))]
pub struct Event<'a> {
    pub topic: &'a str,
    #[cfg_attr(test, serde(borrow))]
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

/// Why stored bytes are not an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end inside the event.
    Truncated,
    /// A length or number takes more bytes than its type allows.
    BadVarint,
    /// An optional field's marker is neither 0 nor 1.
    BadOption(u8),
    /// The topic is not UTF-8.
    TopicNotUtf8,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "the bytes end inside the event"),
            DecodeError::BadVarint => write!(f, "a length or number is malformed"),
            DecodeError::BadOption(b) => write!(f, "optional field marked {b} (not 0 or 1)"),
            DecodeError::TopicNotUtf8 => write!(f, "the topic is not UTF-8"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl<'a> Event<'a> {
    /// Size that counts against `max_event_bytes`: what Kafka will carry.
    pub fn payload_len(&self) -> usize {
        self.key.map_or(0, <[u8]>::len) + self.headers.len() + self.value.len()
    }

    /// Append the at-rest encoding to `out` (no allocation beyond `out`'s
    /// growth). The format is postcard's encoding of this struct, written
    /// out by hand because this is on every event's path: fields in order,
    /// lengths and integers as LEB128 varints (the signed timestamp
    /// zigzagged), options as a 0/1 marker.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.payload_len() + self.topic.len() + 40);
        put_bytes(out, self.topic.as_bytes());
        match self.key {
            Some(key) => {
                out.push(1);
                put_bytes(out, key);
            }
            None => out.push(0),
        }
        put_bytes(out, self.headers);
        put_bytes(out, self.value);
        put_varint(out, zigzag(self.timestamp_ms));
        match self.clock {
            Some(stamp) => {
                out.push(1);
                put_varint(out, u64::from(stamp.boot));
                put_varint(out, stamp.boot_ms);
            }
            None => out.push(0),
        }
    }

    /// Decode one event from the front of `bytes`, returning the rest.
    pub fn decode_from(bytes: &'a [u8]) -> Result<(Event<'a>, &'a [u8]), DecodeError> {
        let mut r = Reader(bytes);
        let topic = std::str::from_utf8(r.bytes()?).map_err(|_| DecodeError::TopicNotUtf8)?;
        Self::decode_after_topic(r, topic)
    }

    /// As [`Event::decode_from`], for an event of a stored block whose
    /// events were all checked to be of `topic` when it was read (see
    /// `outbox::verify_block`): the stored topic is skipped, not decoded
    /// and validated again on every later pass over the block.
    pub fn decode_in(
        bytes: &'a [u8],
        topic: &'a str,
    ) -> Result<(Event<'a>, &'a [u8]), DecodeError> {
        let mut r = Reader(bytes);
        r.bytes()?;
        Self::decode_after_topic(r, topic)
    }

    fn decode_after_topic(
        mut r: Reader<'a>,
        topic: &'a str,
    ) -> Result<(Event<'a>, &'a [u8]), DecodeError> {
        let key = match r.marker()? {
            true => Some(r.bytes()?),
            false => None,
        };
        let headers = r.bytes()?;
        let value = r.bytes()?;
        let timestamp_ms = unzigzag(r.varint(u64::BITS)?);
        let clock = match r.marker()? {
            true => Some(crate::clock::UnsyncedStamp {
                boot: r.varint(u32::BITS)? as u32,
                boot_ms: r.varint(u64::BITS)?,
            }),
            false => None,
        };
        let event = Event {
            topic,
            key,
            headers,
            value,
            timestamp_ms,
            clock,
        };
        Ok((event, r.0))
    }

    pub fn header_iter(&self) -> HeaderIter<'a> {
        HeaderIter::new(self.headers)
    }

    /// The headers as bytes, names not checked for UTF-8 again (they were
    /// at ingest): what a Kafka record carries.
    pub fn raw_header_iter(&self) -> RawHeaderIter<'a> {
        RawHeaderIter::new(self.headers)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The unread rest of an encoded event.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A LEB128 varint of a `bits`-bit integer: at most as many bytes as
    /// that needs, and no bits beyond it.
    fn varint(&mut self, bits: u32) -> Result<u64, DecodeError> {
        let max_bytes = bits.div_ceil(7) as usize;
        let mut v = 0u64;
        for i in 0..max_bytes {
            let Some(&b) = self.0.get(i) else {
                return Err(DecodeError::Truncated);
            };
            if i == max_bytes - 1 && u32::from(b) >> (bits - 7 * i as u32) != 0 {
                return Err(DecodeError::BadVarint);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint(usize::BITS)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::BadVarint)?;
        if self.0.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (body, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(body)
    }

    fn marker(&mut self) -> Result<bool, DecodeError> {
        let (&b, rest) = self.0.split_first().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadOption(other)),
        }
    }
}

/// Walks a header list in wire encoding; validated at ingest, so a decode
/// failure here means corruption and simply ends the iteration.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a>(RawHeaderIter<'a>);

impl<'a> HeaderIter<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Self(RawHeaderIter::new(raw))
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (name, value) = self.0.next()?;
        Some((std::str::from_utf8(name).ok()?, value))
    }
}

/// [`HeaderIter`] without the names' UTF-8 check.
#[derive(Debug, Clone)]
pub struct RawHeaderIter<'a> {
    rest: &'a [u8],
    remaining: u16,
}

impl<'a> RawHeaderIter<'a> {
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

impl<'a> Iterator for RawHeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let (name, rest) = take_prefixed(self.rest, 2)?;
        let (value, rest) = take_prefixed(rest, 4)?;
        self.rest = rest;
        Some((name, value))
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

/// The bytes a Kafka topic name may hold, by value: one load per byte of
/// every event's topic at ingest (the chain of comparisons was 2.5 % of
/// ferry's instructions in the benchmark's cachegrind run).
const TOPIC_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

/// Kafka's own rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic(topic: &str) -> Result<(), InvalidTopic> {
    let why = if topic.is_empty() {
        Some("it is empty")
    } else if topic.len() > 249 {
        Some("it is longer than 249 characters")
    } else if topic == "." || topic == ".." {
        Some("\".\" and \"..\" are not allowed")
    } else if !topic.bytes().all(|b| TOPIC_BYTE[usize::from(b)]) {
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
        e.encode_into(&mut buf);
        e.encode_into(&mut buf);
        let (a, rest) = Event::decode_from(&buf).unwrap();
        let (b, rest) = Event::decode_from(rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(a, e);
        assert_eq!(b, e);
        let hs: Vec<_> = a.header_iter().collect();
        assert_eq!(hs, vec![("a", &b"1"[..]), ("bee", &b""[..])]);
    }

    /// Events at the edges of every field: lengths around varint byte
    /// boundaries, extreme timestamps and clock stamps.
    fn edge_events(space: &[u8]) -> Vec<Event<'_>> {
        let mut out = Vec::new();
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 70_000] {
            for ts in [0i64, -1, 1, 1_700_000_000_123, i64::MIN, i64::MAX] {
                out.push(Event {
                    topic: "t",
                    key: (len % 2 == 1).then(|| &space[..len.min(200)]),
                    headers: &space[..len.min(3)],
                    value: &space[..len],
                    timestamp_ms: ts,
                    clock: (ts % 2 == 0).then_some(crate::clock::UnsyncedStamp {
                        boot: u32::MAX - len as u32,
                        boot_ms: u64::MAX - ts as u64,
                    }),
                });
            }
        }
        out
    }

    /// The hand-written encoding is byte for byte postcard's, in both
    /// directions: outboxes written before it (or after it) read the same.
    #[test]
    fn encoding_is_postcards() {
        let space: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        for e in edge_events(&space) {
            let mut ours = Vec::new();
            e.encode_into(&mut ours);
            let theirs = postcard::to_stdvec(&e).unwrap();
            assert!(ours == theirs, "encoding differs for {e:?}");
            let (back, rest) = Event::decode_from(&theirs).unwrap();
            assert_eq!(back, e);
            assert!(rest.is_empty());
        }
    }

    /// Whatever postcard refuses, the decoder refuses: every truncation,
    /// bad option markers, overlong varints, a topic that is not UTF-8.
    #[test]
    fn decoding_refuses_what_postcard_refuses() {
        let headers = [0u8, 0];
        let e = Event {
            topic: "t.x",
            key: Some(b"k"),
            headers: &headers,
            value: b"hello",
            timestamp_ms: -1_700_000_000_123,
            clock: Some(crate::clock::UnsyncedStamp {
                boot: 7,
                boot_ms: 300,
            }),
        };
        let mut good = Vec::new();
        e.encode_into(&mut good);
        let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        // The key's option marker (after topic length and topic) set to 2.
        let mut bad = good.clone();
        bad[4] = 2;
        cases.push(bad);
        // A topic that is not UTF-8.
        let mut bad = good.clone();
        bad[1] = 0xff;
        cases.push(bad);
        // Lengths and a timestamp that run past their type.
        cases.push(vec![0x80; 11]);
        cases.push([&[0u8, 0, 0, 0][..], &[0xff; 9], &[0x02]].concat());
        // A clock boot number beyond u32.
        cases.push([&[0u8, 0, 0, 0, 0, 1][..], &[0xff; 4], &[0x1f, 0]].concat());
        for bytes in cases {
            let theirs = postcard::take_from_bytes::<Event>(&bytes);
            let ours = Event::decode_from(&bytes);
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{bytes:?}: ours {ours:?}, postcard {theirs:?}"
            );
            assert!(ours.is_err(), "{bytes:?} decoded: {ours:?}");
        }
        // Non-canonical but in range: both accept.
        let padded = [&[0x83u8, 0x80, 0x00][..], b"t.x", &good[4..]].concat();
        assert_eq!(Event::decode_from(&padded).unwrap().0, e);
        assert!(postcard::take_from_bytes::<Event>(&padded).is_ok());
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
