//! Why an MQTT connection was given up (the link connects again after a
//! pause): the broker's words, a malformed packet, or a dead socket.

use super::codec::Malformed;
use std::io;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("malformed packet from the broker: {0}")]
    Malformed(#[from] Malformed),
    #[error("the broker sent a packet of {total} bytes (type {kind})")]
    Oversized { total: usize, kind: u8 },
    #[error("the broker disconnected ferry (reason 0x{code:02x}{})",
        reason.as_ref().map(|r| format!(", \"{r}\"")).unwrap_or_default())]
    Disconnected { code: u8, reason: Option<String> },
    #[error("a second CONNACK on one connection")]
    SecondConnAck,
    #[error("packet type {0}, which a QoS 1 subscriber never expects")]
    Unexpected(u8),
    #[error("cannot write {what}: {source}")]
    Write {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot write {what}: the broker has not read for {waited:?}")]
    WriteStalled {
        what: &'static str,
        waited: Duration,
    },
    #[error("{broker} closed the connection")]
    Closed { broker: String },
    #[error("read from {broker} failed: {source}")]
    Read { broker: String, source: io::Error },
    #[error("no answer to PINGREQ within {0:?} (mqtt.keep_alive)")]
    NoPingAnswer(Duration),
}
