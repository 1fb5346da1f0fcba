//! The `frames` wire format (specified in README): length-prefixed binary
//! frames from clients, length-prefixed replies from ferry. [`check`] says
//! whether a whole frame is in the buffer before [`decode`] parses it, so a
//! partial read never produces a half-parsed event.

use crate::event::{Event, take_prefixed};
use std::fmt;

pub const VERSION: u8 = 1;
pub const KIND_EVENT: u8 = 1;
pub const KIND_STATUS: u8 = 2;

pub const FLAG_KEY: u8 = 0b01;
pub const FLAG_TIMESTAMP: u8 = 0b10;

pub const REPLY_ACK: u8 = 0;
pub const REPLY_ERROR: u8 = 1;
pub const REPLY_STATUS: u8 = 2;
pub const REPLY_FATAL: u8 = 3;

/// A frame declaring more than this is garbage, not a big event: ferry
/// closes the connection instead of trying to skip it.
pub const HARD_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Error codes in ERROR and FATAL replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    Malformed = 1,
    TooLarge = 2,
    InvalidTopic = 3,
    OutboxFull = 4,
    Storage = 5,
    ShuttingDown = 6,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Malformed,
            2 => Self::TooLarge,
            3 => Self::InvalidTopic,
            4 => Self::OutboxFull,
            5 => Self::Storage,
            6 => Self::ShuttingDown,
            _ => return None,
        })
    }
}

/// What the front of a receive buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Need at least this many bytes in total before anything can be said.
    Incomplete(usize),
    /// A whole frame: its body is `buf[4..total]`.
    Complete { total: usize },
    /// Declared body length above `HARD_MAX_FRAME`: the stream is garbage.
    Garbage { declared: usize },
}

pub fn check(buf: &[u8]) -> Check {
    if buf.len() < 4 {
        return Check::Incomplete(4);
    }
    let declared = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if declared > HARD_MAX_FRAME {
        return Check::Garbage { declared };
    }
    let total = 4 + declared;
    if buf.len() < total {
        Check::Incomplete(total)
    } else {
        Check::Complete { total }
    }
}

/// Declared body length of the frame at the front of `buf` (needs 4 bytes).
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    buf.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// An event; `timestamp_ms` is `None` when the client sent none.
    Event(Event<'a>, Option<i64>),
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn malformed(message: String) -> FrameError {
    FrameError {
        code: ErrorCode::Malformed,
        message,
    }
}

/// Decode a complete frame body (without its length prefix). Topic checks
/// and size limits are the caller's: this only parses.
pub fn decode(body: &[u8]) -> Result<Frame<'_>, FrameError> {
    let len = body.len();
    let (&version, rest) = body
        .split_first()
        .ok_or_else(|| malformed("empty frame: expected a version byte".into()))?;
    if version != VERSION {
        return Err(malformed(format!(
            "unsupported frame version {version} (this ferry speaks version {VERSION})"
        )));
    }
    let (&kind, rest) = rest
        .split_first()
        .ok_or_else(|| malformed("frame truncated after the version byte".into()))?;
    match kind {
        KIND_STATUS => return Ok(Frame::Status),
        KIND_EVENT => {}
        other => {
            return Err(malformed(format!(
                "unknown frame kind {other} (expected {KIND_EVENT} event or {KIND_STATUS} status)"
            )));
        }
    }
    let (&flags, rest) = rest
        .split_first()
        .ok_or_else(|| malformed("event frame truncated before its flags byte".into()))?;
    if flags & !(FLAG_KEY | FLAG_TIMESTAMP) != 0 {
        return Err(malformed(format!(
            "unknown flag bits {flags:#04x} in event frame"
        )));
    }
    let (topic, rest) = take_prefixed(rest, 2).ok_or_else(|| {
        malformed(format!(
            "event frame truncated in the topic (frame body is {len} bytes)"
        ))
    })?;
    let topic =
        std::str::from_utf8(topic).map_err(|_| malformed("topic is not valid UTF-8".into()))?;
    let (key, rest) = if flags & FLAG_KEY != 0 {
        let (k, rest) = take_prefixed(rest, 4).ok_or_else(|| {
            malformed(format!(
                "event frame truncated in the key (frame body is {len} bytes)"
            ))
        })?;
        (Some(k), rest)
    } else {
        (None, rest)
    };
    let (timestamp, rest) = if flags & FLAG_TIMESTAMP != 0 {
        let ts = rest
            .get(..8)
            .ok_or_else(|| malformed("event frame truncated in the timestamp".into()))?;
        let mut b = [0u8; 8];
        b.copy_from_slice(ts);
        (Some(i64::from_be_bytes(b)), &rest[8..])
    } else {
        (None, rest)
    };
    let headers_len = headers_span(rest)?;
    let (headers, value) = rest.split_at(headers_len);
    let event = Event {
        topic,
        key,
        headers: if headers_len == 2 { &[] } else { headers },
        value,
        timestamp_ms: 0,
        clock: None,
    };
    Ok(Frame::Event(event, timestamp))
}

/// Length of the header list at the front of `buf`, validating every entry.
fn headers_span(buf: &[u8]) -> Result<usize, FrameError> {
    let count = buf
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| malformed("event frame truncated before the header count".into()))?;
    let mut rest = &buf[2..];
    for i in 0..count {
        let (name, r) = take_prefixed(rest, 2).ok_or_else(|| {
            malformed(format!(
                "event frame truncated in the name of header {}",
                i + 1
            ))
        })?;
        if name.is_empty() || std::str::from_utf8(name).is_err() {
            return Err(malformed(format!(
                "header {} has an empty or non-UTF-8 name",
                i + 1
            )));
        }
        let (_, r) = take_prefixed(r, 4).ok_or_else(|| {
            malformed(format!(
                "event frame truncated in the value of header {}",
                i + 1
            ))
        })?;
        rest = r;
    }
    Ok(buf.len() - rest.len())
}

/// Append an event frame to `out` (what `ferry send` and tests speak).
pub fn encode_event(
    out: &mut Vec<u8>,
    topic: &str,
    key: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    value: &[u8],
    timestamp_ms: Option<i64>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.push(KIND_EVENT);
    let mut flags = 0;
    if key.is_some() {
        flags |= FLAG_KEY;
    }
    if timestamp_ms.is_some() {
        flags |= FLAG_TIMESTAMP;
    }
    out.push(flags);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if let Some(k) = key {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
    }
    if let Some(ts) = timestamp_ms {
        out.extend_from_slice(&ts.to_be_bytes());
    }
    crate::event::encode_headers(headers.iter().copied(), out);
    out.extend_from_slice(value);
    let body_len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
}

/// Append a status request frame to `out`.
pub fn encode_status_request(out: &mut Vec<u8>) {
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(&[VERSION, KIND_STATUS]);
}

/// A reply from ferry to a frames client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The next `count` event frames are durably stored.
    Ack(u32),
    /// The next `count` event frames were refused (not stored).
    Error(u32, ErrorCode, &'a str),
    Status(&'a str),
    /// The stream cannot continue; ferry closes the connection.
    Fatal(ErrorCode, &'a str),
}

impl Reply<'_> {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Reply::Ack(n) => {
                out.push(REPLY_ACK);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Reply::Error(count, code, msg) => {
                out.push(REPLY_ERROR);
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                out.extend_from_slice(msg.as_bytes());
            }
            Reply::Status(json) => {
                out.push(REPLY_STATUS);
                out.extend_from_slice(json.as_bytes());
            }
            Reply::Fatal(code, msg) => {
                out.push(REPLY_FATAL);
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                out.extend_from_slice(msg.as_bytes());
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decode a complete reply body (after its length prefix).
    pub fn decode(body: &[u8]) -> Option<Reply<'_>> {
        let (&kind, rest) = body.split_first()?;
        fn text(b: &[u8]) -> Option<&str> {
            std::str::from_utf8(b).ok()
        }
        match kind {
            REPLY_ACK => {
                let b: [u8; 4] = rest.get(..4)?.try_into().ok()?;
                Some(Reply::Ack(u32::from_be_bytes(b)))
            }
            REPLY_ERROR => {
                let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
                let code =
                    ErrorCode::from_u16(u16::from_be_bytes(rest.get(4..6)?.try_into().ok()?))?;
                Some(Reply::Error(count, code, text(&rest[6..])?))
            }
            REPLY_STATUS => Some(Reply::Status(text(rest)?)),
            REPLY_FATAL => {
                let code =
                    ErrorCode::from_u16(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?))?;
                Some(Reply::Fatal(code, text(&rest[2..])?))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trip() {
        let mut buf = Vec::new();
        encode_event(
            &mut buf,
            "sensors",
            Some(b"dev-1"),
            &[("unit", b"C")],
            b"{\"t\":21.5}",
            Some(42),
        );
        let Check::Complete { total } = check(&buf) else {
            panic!("frame incomplete")
        };
        assert_eq!(total, buf.len());
        let Frame::Event(e, ts) = decode(&buf[4..total]).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(e.topic, "sensors");
        assert_eq!(e.key, Some(&b"dev-1"[..]));
        assert_eq!(e.value, b"{\"t\":21.5}");
        assert_eq!(ts, Some(42));
        assert_eq!(
            e.header_iter().collect::<Vec<_>>(),
            vec![("unit", &b"C"[..])]
        );
    }

    #[test]
    fn no_headers_store_nothing() {
        let mut buf = Vec::new();
        encode_event(&mut buf, "t", None, &[], b"v", None);
        let Frame::Event(e, ts) = decode(&buf[4..]).unwrap() else {
            panic!()
        };
        assert!(e.headers.is_empty());
        assert_eq!(ts, None);
        assert_eq!(e.key, None);
    }

    #[test]
    fn every_truncation_is_incomplete_or_a_clear_error() {
        let mut buf = Vec::new();
        encode_event(
            &mut buf,
            "topic",
            Some(b"k"),
            &[("h", b"v")],
            b"value",
            Some(1),
        );
        for cut in 0..buf.len() {
            assert!(
                matches!(check(&buf[..cut]), Check::Incomplete(_)),
                "cut {cut}"
            );
        }
        // A body cut short but with a length prefix claiming it is whole.
        for cut in 0..buf.len() - 4 - 5 {
            let body = &buf[4..4 + cut];
            let r = decode(body);
            assert!(r.is_err(), "cut {cut} decoded: {r:?}");
            assert_eq!(r.unwrap_err().code, ErrorCode::Malformed);
        }
    }

    #[test]
    fn garbage_length_is_detected() {
        assert_eq!(
            check(b"GET / HTTP/1.1\r\n"),
            Check::Garbage {
                declared: u32::from_be_bytes(*b"GET ") as usize
            }
        );
    }

    #[test]
    fn bad_version_is_named() {
        let e = decode(&[9, 1]).unwrap_err();
        assert!(e.message.contains("version 9"), "{e}");
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Ack(7),
            Reply::Error(2, ErrorCode::InvalidTopic, "bad topic"),
            Reply::Status("{}"),
            Reply::Fatal(ErrorCode::Malformed, "garbage"),
        ] {
            let mut buf = Vec::new();
            r.encode_into(&mut buf);
            assert_eq!(declared_len(&buf), Some(buf.len() - 4));
            assert_eq!(Reply::decode(&buf[4..]), Some(r));
        }
    }
}
