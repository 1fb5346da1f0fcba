//! What the writer thread owns: the connection and its statements, the
//! blocks being built, counters, and what waits for the next transaction.

use super::packer::{Packer, TopicBlock};
use crate::outbox::command::Waiting;
use crate::outbox::config::OutboxConfig;
use crate::outbox::hot::HotStatements;
use crate::outbox::mqtt_marks;
use crate::outbox::reserve::Reserve;
use crate::pattern::PRIORITY_LEVELS;
use crate::stats::Stats;
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

pub(in crate::outbox) struct Writer {
    /// The append path's statements; declared before `conn`, so they are
    /// finalized before it closes.
    pub(super) hot: HotStatements,
    pub(super) conn: Connection,
    pub(super) config: OutboxConfig,
    pub(super) stats: Arc<Stats>,
    pub(super) path: PathBuf,
    pub(super) next_seq: i64,
    /// Blocks being built in this group commit, one per topic, reused
    /// between commits; and what stores them (compressor, run cutter).
    pub(super) building: Vec<TopicBlock>,
    pub(super) packer: Packer,
    /// Node id and whether to record loss markers for a loss topic.
    pub(super) node_id: String,
    pub(super) record_loss: bool,
    pub(super) priorities: crate::pattern::Priorities,
    /// Blocks stored per priority, counted after each commit: a read
    /// skips the priorities that have none.
    pub(super) blocks_by_priority: [u64; PRIORITY_LEVELS],
    /// Signalled after commits and drops, to wake the forwarder.
    pub(super) committed: Arc<Notify>,
    /// Side records waiting (shared with the handles).
    pub(super) waiting: Arc<Waiting>,
    /// Disk space held back for the drain's writes.
    pub(super) reserve: Reserve,
    /// Under `relaxed`: the connection's change count at the last sync of
    /// the write-ahead log, and the log file whose name was synced.
    pub(super) synced_changes: u64,
    pub(super) synced_log: Option<u64>,
    pub(super) sync_failures: crate::log_limit::LogLimiter,
    /// MQTT marks the broker has seen acknowledged, removed in the next
    /// transaction (no commit of their own: a mark left behind by a crash
    /// only makes a redelivery that cannot come look recognisable).
    pub(super) mqtt_forget: Vec<(String, Vec<mqtt_marks::Mark>)>,
}

/// Keep at most this many per-topic buffers between commits.
pub(super) const MAX_IDLE_TOPIC_BUFFERS: usize = 64;
