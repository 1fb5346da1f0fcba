//! The MQTT packets a subscribing client reads, 3.1.1 and 5: what the
//! broker sends, decoded in place, borrowing the receive buffer (what
//! ferry sends is `encode`).
//!
//! Framing checks that a packet is complete ([`check`]) before it is
//! parsed ([`decode`]); a packet declared larger than the caller takes can
//! still be acknowledged from its head ([`publish_head`]) while its bytes
//! are skipped. Pure: no I/O, no allocation on the decode path.

use std::fmt;

/// Protocol levels in CONNECT.
pub const LEVEL_3_1_1: u8 = 4;
pub const LEVEL_5: u8 = 5;

/// MQTT's own bound on a packet (a 4-byte remaining length).
pub const MAX_REMAINING: usize = 268_435_455;

/// MQTT 5 reason codes ferry sends in PUBACK.
pub const REASON_SUCCESS: u8 = 0x00;
pub const REASON_QUOTA_EXCEEDED: u8 = 0x97;
pub const REASON_PAYLOAD_FORMAT_INVALID: u8 = 0x99;
pub const REASON_TOPIC_NAME_INVALID: u8 = 0x90;

/// Whether a buffer starts with a whole packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// More bytes are needed; the packet's total size once its length is known.
    Incomplete { total: Option<usize> },
    /// A whole packet of `total` bytes, its body from `body_start`.
    Complete { body_start: usize, total: usize },
}

/// Something a broker sent that is not MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Malformed {}

fn bad<T>(what: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(what.into()))
}

/// Decode a variable byte integer at the start of `buf`: `Ok(None)` if
/// `buf` ends inside it, else `(value, bytes used)`.
pub fn read_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, Malformed> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    bad("a length takes more than 4 bytes (MQTT allows 4)")
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            break;
        }
    }
}

/// Is a whole packet at the start of `buf`?
pub fn check(buf: &[u8]) -> Result<Check, Malformed> {
    if buf.is_empty() {
        return Ok(Check::Incomplete { total: None });
    }
    match read_varint(&buf[1..])? {
        None => Ok(Check::Incomplete { total: None }),
        Some((len, used)) => {
            let body_start = 1 + used;
            let total = body_start + len;
            if buf.len() >= total {
                Ok(Check::Complete { body_start, total })
            } else {
                Ok(Check::Incomplete { total: Some(total) })
            }
        }
    }
}

/// An application message from the broker, borrowing the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: &'a str,
    /// 0 for QoS 0 (which has none).
    pub packet_id: u16,
    /// MQTT 5 properties, still encoded (see [`Properties`]); empty for 3.1.1.
    pub properties: &'a [u8],
    pub payload: &'a [u8],
}

/// A packet from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    ConnAck {
        session_present: bool,
        /// 3.1.1 return code or MQTT 5 reason code; 0 is success.
        code: u8,
        /// MQTT 5: the broker's Receive Maximum, Maximum QoS and the like
        /// are not needed by a subscriber; the reason string is, and the
        /// Server Keep Alive, which the client must use instead of its own.
        reason: Option<&'a str>,
        server_keep_alive: Option<u16>,
    },
    Publish(Publish<'a>),
    SubAck {
        packet_id: u16,
        /// Granted QoS per filter, or a failure code (>= 0x80).
        codes: &'a [u8],
    },
    UnsubAck {
        packet_id: u16,
    },
    PingResp,
    /// MQTT 5: the broker says why it closes the connection.
    Disconnect {
        code: u8,
        reason: Option<&'a str>,
    },
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, AUTH and the like: a subscriber at
    /// QoS 1 that publishes nothing never expects them.
    Unexpected(u8),
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16, Malformed> {
    match buf.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => bad("the packet ends inside a two-byte field"),
    }
}

/// A length-prefixed UTF-8 string at `at`: (string, end).
fn str_at(buf: &[u8], at: usize) -> Result<(&str, usize), Malformed> {
    let len = u16_at(buf, at)? as usize;
    let Some(bytes) = buf.get(at + 2..at + 2 + len) else {
        return bad("the packet ends inside a string");
    };
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok((s, at + 2 + len)),
        Err(_) => bad("a string is not UTF-8"),
    }
}

/// MQTT 5 properties at `at`: (their bytes, end).
fn properties_at(buf: &[u8], at: usize) -> Result<(&[u8], usize), Malformed> {
    let Some((len, used)) = read_varint(buf.get(at..).unwrap_or(&[]))? else {
        return bad("the packet ends inside a property length");
    };
    let start = at + used;
    match buf.get(start..start + len) {
        Some(p) => Ok((p, start + len)),
        None => bad("the properties run past the packet"),
    }
}

/// Decode one complete packet (`Check::Complete`): `packet` is the whole
/// packet, `body_start` where its body begins, `level` the protocol level
/// the connection speaks.
pub fn decode(packet: &[u8], body_start: usize, level: u8) -> Result<Incoming<'_>, Malformed> {
    let first = packet[0];
    let kind = first >> 4;
    let flags = first & 0x0f;
    let body = &packet[body_start..];
    let v5 = level >= LEVEL_5;
    match kind {
        2 => {
            if body.len() < 2 {
                return bad("CONNACK shorter than 2 bytes");
            }
            let (mut reason, mut server_keep_alive) = (None, None);
            if v5 && body.len() > 2 {
                let (props, _) = properties_at(body, 2)?;
                let mut it = Properties::new(props);
                while let Some(p) = it.next_property()? {
                    match p {
                        Property::Str(0x1f, s) => reason = Some(s),
                        Property::U16(0x13, v) => server_keep_alive = Some(v),
                        _ => {}
                    }
                }
            }
            Ok(Incoming::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
                reason,
                server_keep_alive,
            })
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return bad("PUBLISH with QoS 3");
            }
            let (topic, mut at) = str_at(body, 0)?;
            let packet_id = if qos > 0 {
                let id = u16_at(body, at)?;
                at += 2;
                if id == 0 {
                    return bad("PUBLISH at QoS 1 or 2 with packet id 0");
                }
                id
            } else {
                0
            };
            let properties = if v5 {
                let (props, end) = properties_at(body, at)?;
                at = end;
                // Every property must be well formed: what is not MQTT is
                // refused here, not skipped when the headers are built.
                let mut it = Properties::new(props);
                while it.next_property()?.is_some() {}
                props
            } else {
                &[]
            };
            Ok(Incoming::Publish(Publish {
                dup: flags & 8 != 0,
                qos,
                retain: flags & 1 != 0,
                topic,
                packet_id,
                properties,
                payload: &body[at..],
            }))
        }
        9 => {
            let packet_id = u16_at(body, 0)?;
            let mut at = 2;
            if v5 {
                at = properties_at(body, at)?.1;
            }
            Ok(Incoming::SubAck {
                packet_id,
                codes: &body[at.min(body.len())..],
            })
        }
        11 => Ok(Incoming::UnsubAck {
            packet_id: u16_at(body, 0)?,
        }),
        13 => Ok(Incoming::PingResp),
        14 => {
            let code = body.first().copied().unwrap_or(0);
            let reason = if v5 && body.len() > 1 {
                let (props, _) = properties_at(body, 1)?;
                Properties::new(props).reason_string()?
            } else {
                None
            };
            Ok(Incoming::Disconnect { code, reason })
        }
        0 | 1 | 8 | 10 | 12 => bad(format!(
            "the broker sent packet type {kind}, which only clients send"
        )),
        other => Ok(Incoming::Unexpected(other)),
    }
}

/// The head of a PUBLISH whose body is not all here yet: enough to
/// acknowledge it while the rest is skipped. `Ok(None)` until the packet
/// id has arrived.
pub fn publish_head(buf: &[u8]) -> Result<Option<(u8, u16, &str)>, Malformed> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 != 3 {
        return Ok(None);
    }
    let qos = (first >> 1) & 3;
    if qos == 3 {
        return bad("PUBLISH with QoS 3");
    }
    let Some((_, used)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let body = &buf[1 + used..];
    let Ok(len) = u16_at(body, 0) else {
        return Ok(None);
    };
    let need = 2 + len as usize + if qos > 0 { 2 } else { 0 };
    if body.len() < need {
        return Ok(None);
    }
    let (topic, at) = str_at(body, 0)?;
    let packet_id = if qos > 0 { u16_at(body, at)? } else { 0 };
    if qos > 0 && packet_id == 0 {
        return bad("PUBLISH at QoS 1 or 2 with packet id 0");
    }
    Ok(Some((qos, packet_id, topic)))
}

/// MQTT 5 properties, read one at a time.
pub struct Properties<'a> {
    rest: &'a [u8],
}

/// One property: its identifier and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property<'a> {
    User(&'a str, &'a str),
    Str(u8, &'a str),
    /// Two-byte integers (Server Keep Alive, Receive Maximum, ...).
    U16(u8, u16),
    Other(u8),
}

impl<'a> Properties<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Self { rest: raw }
    }

    fn reason_string(mut self) -> Result<Option<&'a str>, Malformed> {
        while let Some(p) = self.next_property()? {
            if let Property::Str(0x1f, s) = p {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// The next property, or `None` at the end.
    pub fn next_property(&mut self) -> Result<Option<Property<'a>>, Malformed> {
        let Some((&id, after)) = self.rest.split_first() else {
            return Ok(None);
        };
        // Fixed widths from MQTT 5.0 section 2.2.2.2.
        let (property, used) = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => (Property::Other(id), 1),
            0x13 | 0x21 | 0x22 | 0x23 => (Property::U16(id, u16_at(after, 0)?), 2),
            0x02 | 0x11 | 0x18 | 0x27 => (Property::Other(id), 4),
            0x0b => match read_varint(after)? {
                Some((_, n)) => (Property::Other(id), n),
                None => return bad("a subscription identifier is cut short"),
            },
            0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => {
                let (s, end) = str_at(after, 0)?;
                (Property::Str(id, s), end)
            }
            0x09 | 0x16 => {
                let len = u16_at(after, 0)? as usize;
                (Property::Other(id), 2 + len)
            }
            0x26 => {
                let (name, end) = str_at(after, 0)?;
                let (value, end) = str_at(after, end)?;
                (Property::User(name, value), end)
            }
            other => return bad(format!("unknown MQTT 5 property 0x{other:02x}")),
        };
        match after.get(used..) {
            Some(rest) => {
                self.rest = rest;
                Ok(Some(property))
            }
            None => bad("a property runs past the packet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8], level: u8) -> Incoming<'_> {
        let Check::Complete { body_start, total } = check(buf).unwrap() else {
            panic!("incomplete");
        };
        assert_eq!(total, buf.len());
        decode(buf, body_start, level).unwrap()
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(read_varint(&out).unwrap(), Some((v, out.len())));
            assert_eq!(read_varint(&out[..out.len() - 1]).unwrap(), None);
        }
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn publish_3_1_1_and_5() {
        // QoS 1, DUP, topic "a/b", id 7, payload "hi".
        let p = [0x3a, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i'];
        match one(&p, LEVEL_3_1_1) {
            Incoming::Publish(p) => {
                assert!(p.dup && !p.retain);
                assert_eq!((p.qos, p.topic, p.packet_id), (1, "a/b", 7));
                assert_eq!(p.payload, b"hi");
            }
            other => panic!("{other:?}"),
        }
        // MQTT 5 with a user property ("k" = "v") and a content type.
        let props = [0x26, 0, 1, b'k', 0, 1, b'v', 0x03, 0, 1, b'x'];
        let mut p = vec![0x32, 0];
        p.extend_from_slice(&[0, 1, b't', 0, 9, props.len() as u8]);
        p.extend_from_slice(&props);
        p.extend_from_slice(b"body");
        p[1] = (p.len() - 2) as u8;
        let Incoming::Publish(publish) = one(&p, LEVEL_5) else {
            panic!()
        };
        assert_eq!(publish.payload, b"body");
        let mut it = Properties::new(publish.properties);
        assert_eq!(it.next_property().unwrap(), Some(Property::User("k", "v")));
        assert_eq!(it.next_property().unwrap(), Some(Property::Str(3, "x")));
        assert_eq!(it.next_property().unwrap(), None);
    }

    #[test]
    fn incomplete_until_the_last_byte() {
        let p = [0x32, 7, 0, 1, b't', 0, 1, b'x', b'y'];
        for cut in 0..p.len() {
            assert!(matches!(
                check(&p[..cut]).unwrap(),
                Check::Incomplete { .. }
            ));
        }
        assert_eq!(
            check(&p[..3]).unwrap(),
            Check::Incomplete { total: Some(9) }
        );
        // The head is known before the payload arrives.
        assert_eq!(publish_head(&p[..7]).unwrap(), Some((1, 1, "t")));
        assert_eq!(publish_head(&p[..6]).unwrap(), None);
    }

    #[test]
    fn connack_suback_ping_disconnect() {
        assert_eq!(
            one(&[0x20, 2, 1, 0], LEVEL_3_1_1),
            Incoming::ConnAck {
                session_present: true,
                code: 0,
                reason: None,
                server_keep_alive: None
            }
        );
        let connack5 = [0x20, 11, 0, 0x86, 8, 0x1f, 0, 2, b'n', b'o', 0x13, 0, 10];
        assert_eq!(
            one(&connack5, LEVEL_5),
            Incoming::ConnAck {
                session_present: false,
                code: 0x86,
                reason: Some("no"),
                server_keep_alive: Some(10)
            }
        );
        assert_eq!(
            one(&[0x90, 4, 0, 1, 1, 0x80], LEVEL_3_1_1),
            Incoming::SubAck {
                packet_id: 1,
                codes: &[1, 0x80]
            }
        );
        assert_eq!(one(&[0xd0, 0], LEVEL_5), Incoming::PingResp);
        assert_eq!(
            one(&[0xe0, 2, 0x8b, 0], LEVEL_5),
            Incoming::Disconnect {
                code: 0x8b,
                reason: None
            }
        );
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        // A client-only packet type, QoS 3, a bad property, a string that
        // runs past the end.
        assert!(decode(&[0x10, 0], 2, LEVEL_5).is_err());
        assert!(decode(&[0x36, 3, 0, 1, b't'], 2, LEVEL_3_1_1).is_err());
        assert!(decode(&[0x30, 4, 0, 1, b't', 1], 2, LEVEL_5).is_err());
        assert!(decode(&[0x30, 3, 0, 9, b't'], 2, LEVEL_3_1_1).is_err());
        assert!(decode(&[0x32, 3, 0, 1, b't'], 2, LEVEL_3_1_1).is_err());
        // An unknown property inside a PUBLISH; a head with QoS 3 or id 0.
        assert!(decode(&[0x30, 5, 0, 1, b't', 1, 0x7f], 2, LEVEL_5).is_err());
        assert!(publish_head(&[0x36, 9, 0, 1, b't', 0, 1]).is_err());
        assert!(publish_head(&[0x32, 9, 0, 1, b't', 0, 0]).is_err());
    }
}
