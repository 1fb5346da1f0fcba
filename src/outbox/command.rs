//! What the handles send the writer thread: batches to store and requests,
//! each with the channel its answer comes back on; and the shared pieces
//! both sides know (errors, options, waiting side records).

use super::block::Block;
use super::dead_letter::{self, NewDeadLetter};
use super::open_error::OpenError;
use super::plan;
use super::storage_error::StorageError;
use crate::pattern::PRIORITY_LEVELS;
use std::fmt;
use std::sync::atomic::AtomicU64;
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for the writer; senders wait when it is full (backpressure).
pub(super) const QUEUE_DEPTH: usize = 256;

/// Events encoded back to back with [`Event::encode_into`].
#[derive(Debug, Default)]
pub struct AppendBatch {
    pub data: Vec<u8>,
    pub count: u32,
    /// MQTT messages among them, marked in the same transaction.
    pub marks: Option<Box<super::mqtt_marks::LinkMarks>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// `when_full = "reject"` and the outbox is at `max_bytes`.
    Full { max_bytes: u64 },
    /// SQLite failed; the events are not stored.
    Storage(String),
    /// ferry is stopping.
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full { max_bytes } => write!(
                f,
                "outbox full ({max_bytes} bytes, when_full = \"reject\"): event not stored; retry later or raise outbox.max_bytes"
            ),
            StoreError::Storage(e) => write!(f, "outbox write failed, event not stored: {e}"),
            StoreError::Closed => write!(f, "ferry is shutting down: event not stored"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Where to send the result of storing a batch (none for formats without acks).
pub(super) type AckSender = Option<mpsc::Sender<Stored>>;
/// What the writer hands back: the outcome, and the batch's buffer for reuse.
pub(super) type Stored = (Result<(), StoreError>, Vec<u8>);
/// A batch waiting for the next group commit.
pub(super) type Pending = (AppendBatch, AckSender);

/// How much one read of the outbox takes: blocks until they hold
/// `max_events`, within `max_raw_bytes` of decompressed events. A block
/// that would exceed the bytes is left for the next read, unless it is the
/// first (at least one comes); with `strict_bytes`, not even then. A
/// stored run counts as its records as stored, or, with `runs_decoded`
/// (the reader will decode them), as those and its events decoded.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_events: usize,
    pub max_raw_bytes: usize,
    pub strict_bytes: bool,
    pub runs_decoded: bool,
}

/// A block found corrupt, to be quarantined: the reason is kept as text
/// beside it in the `quarantine` table (and said in the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBlock {
    pub seq_first: i64,
    pub events: u32,
    pub why: String,
}

pub(super) enum Command {
    Append {
        batch: AppendBatch,
        reply: AckSender,
    },
    Read {
        cursors: [i64; PRIORITY_LEVELS],
        order: [u8; PRIORITY_LEVELS],
        limits: ReadLimits,
        skip_topics: Vec<String>,
        /// Blocks to leave out (sorted): windows put aside (see
        /// `forward::deferral`).
        skip_blocks: std::sync::Arc<Vec<i64>>,
        reply: oneshot::Sender<Result<(u8, Vec<Block>), StorageError>>,
    },
    Finish {
        delivered: Vec<i64>,
        dead: Vec<NewDeadLetter>,
        plans: Vec<i64>,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    SavePlan {
        save: Box<plan::PlanSave>,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    LoadPlans {
        reply: oneshot::Sender<Result<plan::Saved, StorageError>>,
    },
    ForgetProducer {
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Blocks found corrupt after they were read (a stored run whose
    /// records do not decode): quarantined if still stored.
    Quarantine {
        corrupt: Vec<CorruptBlock>,
    },
    ReadBlocks {
        seq_firsts: Vec<i64>,
        reply: oneshot::Sender<Result<Vec<Block>, StorageError>>,
    },
    LossPending {
        reply: oneshot::Sender<Result<Vec<(i64, String)>, StorageError>>,
    },
    SetHeartbeat {
        body: String,
    },
    HeartbeatPending {
        reply: oneshot::Sender<Result<Option<(i64, String)>, StorageError>>,
    },
    HeartbeatSent {
        version: i64,
    },
    LossDelivered {
        ids: Vec<i64>,
    },
    DlqPending {
        reply: oneshot::Sender<Result<Vec<dead_letter::ForDlq>, StorageError>>,
    },
    DlqSent {
        ids: Vec<i64>,
        /// 1: produced to the DLQ topic; 2: refused there for good.
        state: i64,
    },
    /// A reloaded config's priorities, for blocks stored from now on.
    SetPriorities(crate::pattern::Priorities),
    /// Liveness check: answered when the writer gets to it.
    Ping {
        reply: oneshot::Sender<()>,
    },
    EvictAged,
    /// Under `relaxed` durability: make what was committed since the last
    /// such sync durable (sent once a second).
    SyncLog,
    /// ferry is idle: drop buffers kept for the next commit and SQLite's
    /// page cache, then hand free heap pages back to the system.
    ReleaseMemory,
    MqttMarks {
        link: String,
        reply: oneshot::Sender<Result<Vec<super::mqtt_marks::Mark>, StorageError>>,
    },
    /// Marks whose PUBACK the broker has seen (removed with the next commit).
    MqttForget {
        link: String,
        marks: Vec<super::mqtt_marks::Mark>,
    },
    MqttClear {
        link: String,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Present {
        seq_firsts: Vec<i64>,
        reply: oneshot::Sender<Result<Vec<i64>, StorageError>>,
    },
}

/// Side records waiting for their topics, counted by the outbox so that
/// the forwarder asks for them only when there are some.
#[derive(Debug, Default)]
pub struct Waiting {
    /// Loss markers not yet produced to the loss topic.
    pub loss_markers: AtomicU64,
    /// Dead letters not yet produced to the DLQ topic.
    pub dead_letters: AtomicU64,
    /// A heartbeat waits in its slot.
    pub heartbeat: std::sync::atomic::AtomicBool,
}

/// Open (creating or migrating) the outbox database at `path`.
/// What the writer needs beyond the `[outbox]` section.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub node_id: String,
    /// Queue loss markers when policy drops events (a loss topic is set).
    pub record_loss: bool,
    /// Each block is filed under its topic's priority.
    pub priorities: crate::pattern::Priorities,
    /// How the forwarder will send each topic, so commits store record
    /// runs it can send as stored (default: none told, no runs).
    pub run_shapes: std::sync::Arc<super::run::RunShapes>,
}

/// Why an outbox request failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The writer thread is gone: ferry is stopping, or the writer failed
    /// and logged why.
    #[error("outbox closed")]
    Closed,
    /// SQLite, or the disk under it, failed; the error says at what step.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// At start-up: the outbox could not be opened (what, where, and what
    /// to do).
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot start the outbox thread: {0}")]
    Thread(std::io::Error),
}

/// A request found the writer gone.
pub(super) fn closed(_: impl Sized) -> OutboxError {
    OutboxError::Closed
}
