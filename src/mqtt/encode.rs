//! The MQTT packets ferry sends, 3.1.1 and 5 (CONNECT, SUBSCRIBE,
//! UNSUBSCRIBE, PUBACK, PINGREQ, DISCONNECT), encoded into a reused
//! buffer; and what a CONNACK's refusal code means.

use super::codec::{LEVEL_5, REASON_SUCCESS, put_varint};

/// What ferry says when it connects.
#[derive(Debug, Clone)]
pub struct Connect<'a> {
    pub level: u8,
    pub client_id: &'a str,
    pub clean_start: bool,
    pub keep_alive_s: u16,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// MQTT 5: how long the broker keeps the session after a disconnect.
    pub session_expiry_s: u32,
    /// MQTT 5: how many QoS 1 messages may await ferry's PUBACK at once.
    pub receive_maximum: u16,
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Write the fixed header for a body built at `out[start..]`.
fn finish(out: &mut Vec<u8>, start: usize, first: u8) {
    let len = out.len() - start;
    let mut header = Vec::with_capacity(5);
    header.push(first);
    put_varint(&mut header, len);
    out.splice(start..start, header);
}

impl Connect<'_> {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        put_str(out, b"MQTT");
        out.push(self.level);
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0x02;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        out.push(flags);
        out.extend_from_slice(&self.keep_alive_s.to_be_bytes());
        if self.level >= LEVEL_5 {
            let mut props = Vec::with_capacity(8);
            props.push(0x11);
            props.extend_from_slice(&self.session_expiry_s.to_be_bytes());
            props.push(0x21);
            props.extend_from_slice(&self.receive_maximum.max(1).to_be_bytes());
            put_varint(out, props.len());
            out.extend_from_slice(&props);
        }
        put_str(out, self.client_id.as_bytes());
        if let Some(u) = self.username {
            put_str(out, u.as_bytes());
        }
        if let Some(p) = self.password {
            put_str(out, p);
        }
        finish(out, start, 0x10);
    }
}

/// SUBSCRIBE to `filters`, each at `max_qos`. MQTT 5 asks for retained
/// messages only when the subscription is new (retain handling 1).
pub fn encode_subscribe(out: &mut Vec<u8>, level: u8, packet_id: u16, filters: &[(&str, u8)]) {
    let start = out.len();
    out.extend_from_slice(&packet_id.to_be_bytes());
    if level >= LEVEL_5 {
        out.push(0);
    }
    for (filter, qos) in filters {
        put_str(out, filter.as_bytes());
        let mut options = (*qos).min(1);
        if level >= LEVEL_5 {
            options |= 1 << 4;
        }
        out.push(options);
    }
    finish(out, start, 0x82);
}

pub fn encode_unsubscribe(out: &mut Vec<u8>, level: u8, packet_id: u16, filters: &[&str]) {
    let start = out.len();
    out.extend_from_slice(&packet_id.to_be_bytes());
    if level >= LEVEL_5 {
        out.push(0);
    }
    for filter in filters {
        put_str(out, filter.as_bytes());
    }
    finish(out, start, 0xa2);
}

/// PUBACK; MQTT 5 carries `reason` unless it is success.
pub fn encode_puback(out: &mut Vec<u8>, level: u8, packet_id: u16, reason: u8) {
    let id = packet_id.to_be_bytes();
    if level >= LEVEL_5 && reason != REASON_SUCCESS {
        out.extend_from_slice(&[0x40, 3, id[0], id[1], reason]);
    } else {
        out.extend_from_slice(&[0x40, 2, id[0], id[1]]);
    }
}

pub fn encode_pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xc0, 0]);
}

/// DISCONNECT, normal: the persistent session stays with the broker.
pub fn encode_disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xe0, 0]);
}

/// What a CONNACK code means, for the log: 3.1.1 return codes and MQTT 5
/// reason codes.
pub fn connack_meaning(level: u8, code: u8) -> &'static str {
    if level < LEVEL_5 {
        return match code {
            1 => "unacceptable protocol version",
            2 => "client id rejected",
            3 => "server unavailable",
            4 => "bad user name or password",
            5 => "not authorized",
            _ => "refused",
        };
    }
    match code {
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x84 => "unsupported protocol version",
        0x85 => "client id not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8a => "banned",
        0x8c => "bad authentication method",
        0x95 => "packet too large",
        0x97 => "quota exceeded",
        0x9c => "use another server",
        0x9d => "server moved",
        0x9f => "connection rate exceeded",
        _ => "refused",
    }
}

/// True if a CONNACK code says the credentials are wrong (no retry will
/// fix them without the operator).
pub fn is_auth_refusal(level: u8, code: u8) -> bool {
    if level < LEVEL_5 {
        matches!(code, 4 | 5)
    } else {
        matches!(code, 0x86 | 0x87 | 0x8c)
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{LEVEL_3_1_1, REASON_QUOTA_EXCEEDED};
    use super::*;

    #[test]
    fn what_ferry_sends() {
        let mut out = Vec::new();
        Connect {
            level: LEVEL_3_1_1,
            client_id: "gw",
            clean_start: false,
            keep_alive_s: 30,
            username: Some("u"),
            password: Some(b"p"),
            session_expiry_s: 0,
            receive_maximum: 0,
        }
        .encode_into(&mut out);
        assert_eq!(
            out,
            [
                0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc0, 0, 30, 0, 2, b'g', b'w', 0, 1,
                b'u', 0, 1, b'p'
            ]
        );
        out.clear();
        encode_subscribe(&mut out, LEVEL_5, 3, &[("a/#", 1)]);
        assert_eq!(out, [0x82, 9, 0, 3, 0, 0, 3, b'a', b'/', b'#', 0x11]);
        out.clear();
        encode_puback(&mut out, LEVEL_5, 258, REASON_QUOTA_EXCEEDED);
        encode_puback(&mut out, LEVEL_3_1_1, 258, REASON_QUOTA_EXCEEDED);
        assert_eq!(out, [0x40, 3, 1, 2, 0x97, 0x40, 2, 1, 2]);
    }
}
