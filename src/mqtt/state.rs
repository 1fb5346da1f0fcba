//! What a link keeps across its connections (config, mapping, marks,
//! protocol level, subscriptions), why a connection ended, and the digest
//! that recognises a redelivered message.

use super::codec::Publish;
use super::config::MqttConfig;
use super::mapping::Mapping;
use super::session_error::SessionError;
use crate::ingest::Context;
use crate::log_limit::LogLimiter;
use crate::outbox::StoreError;
use crate::stats::MqttLinkStats;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// The config a link runs with; `None` once the link was removed.
pub type Watched = watch::Receiver<Option<Arc<MqttConfig>>>;

/// What a link keeps across its connections, and each connection reads.
pub(super) struct LinkState {
    pub config: Arc<MqttConfig>,
    pub mapping: Mapping,
    /// The mapping before the last reload: messages of a filter it removed
    /// that the broker had already queued still go where they were meant to.
    pub retired: Option<Mapping>,
    pub ctx: Arc<Context>,
    pub stats: Arc<MqttLinkStats>,
    /// Packet id → digest of messages stored whose PUBACK the broker may
    /// not have seen (loaded from the outbox at start; a session holds
    /// them while it runs).
    pub marks: HashMap<u16, u64>,
    /// Protocol level in use; `Protocol::Auto` falls back to 3.1.1 once.
    pub level: u8,
    /// Filters subscribed in this process (a changed config subscribes again).
    pub subscribed: Option<Vec<(String, u8)>>,
    /// Filters of an earlier config to unsubscribe on the next connection.
    pub unsubscribe: Vec<String>,
    pub limiter: LogLimiter,
}

impl LinkState {
    /// The filters (and QoS) the config asks for.
    pub fn wanted(&self) -> Vec<(String, u8)> {
        self.config
            .subscriptions
            .iter()
            .map(|s| (s.filter.clone(), s.qos))
            .collect()
    }
}

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    /// ferry is stopping: everything read was stored and acknowledged.
    Shutdown,
    /// The link's config changed: reconnect with the new one.
    Reconfigure,
    /// The connection failed or the broker misbehaved; retry after a pause.
    Failed(SessionError),
    /// Storing failed (outbox full under `reject`, disk): no more acks on
    /// this connection; retry after a pause.
    Store(StoreError),
}

/// A 64-bit digest of a message: CRC-32C over topic and payload, and the
/// payload's length. Not the MQTT 5 properties: a broker rewrites some on
/// each send (the Message Expiry Interval counts down), so a redelivery's
/// may differ from the first delivery's.
pub fn digest(p: &Publish<'_>) -> u64 {
    let mut crc = crc32c::crc32c(p.topic.as_bytes());
    crc = crc32c::crc32c_append(crc, p.payload);
    ((crc as u64) << 32) | (p.payload.len() as u32 as u64)
}
