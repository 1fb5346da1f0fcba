//! The outbox's handles: [`Outbox`], cheap to clone, whose requests the
//! writer thread answers in order; [`Appender`], one per connection,
//! pipelining its batches into the group commit; and [`start`].

use super::block::Block;
use super::command::{
    AppendBatch, Command, CorruptBlock, Options, OutboxError, QUEUE_DEPTH, ReadLimits, StoreError,
    Stored, Waiting, closed,
};
use super::config::OutboxConfig;
use super::dead_letter::{self, NewDeadLetter};
use super::plan;
use super::writer::{Writer, open_connection};
use crate::pattern::PRIORITY_LEVELS;
use crate::stats::Stats;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};

/// Cheap, cloneable handle to the outbox writer thread.
#[derive(Clone)]
pub struct Outbox {
    pub(super) tx: mpsc::Sender<Command>,
    /// Signalled after every commit that stored events.
    pub committed: Arc<Notify>,
    /// Side records waiting for their topics.
    pub waiting: Arc<Waiting>,
    /// What the forwarder tells the writer of how it sends each topic
    /// (see `outbox::run`).
    pub run_shapes: Arc<super::run::RunShapes>,
}

/// Open the outbox, load its counters into `stats` and start the writer.
pub fn start(
    config: &OutboxConfig,
    path: PathBuf,
    stats: Arc<Stats>,
    options: Options,
) -> Result<(Outbox, std::thread::JoinHandle<()>), OutboxError> {
    let conn = open_connection(&path, config.durability)?;
    let committed = Arc::new(Notify::new());
    let waiting = Arc::new(Waiting::default());
    let run_shapes = options.run_shapes.clone();
    let writer = Writer::new(
        conn,
        config.clone(),
        stats,
        path,
        options,
        committed.clone(),
        waiting.clone(),
    )?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let handle = std::thread::Builder::new()
        .name("ferry-outbox".into())
        .spawn(move || writer.run(rx))
        .map_err(OutboxError::Thread)?;
    Ok((
        Outbox {
            tx,
            committed,
            waiting,
            run_shapes,
        },
        handle,
    ))
}

impl Outbox {
    /// Blocks after `after`, in order, up to the given limits (at least
    /// one), leaving out blocks of `skip_topics` (the unit tests' view; the
    /// forwarder reads by priority).
    #[cfg(test)]
    pub async fn read(
        &self,
        after: i64,
        max_events: usize,
        max_raw_bytes: usize,
        skip_topics: Vec<String>,
    ) -> Result<Vec<Block>, OutboxError> {
        let order = std::array::from_fn(|i| (PRIORITY_LEVELS - 1 - i) as u8);
        self.read_by_priority(
            [after; PRIORITY_LEVELS],
            order,
            ReadLimits {
                max_events,
                max_raw_bytes,
                strict_bytes: false,
                runs_decoded: false,
            },
            skip_topics,
            Default::default(),
        )
        .await
        .map(|(_, blocks)| blocks)
    }

    /// The next blocks of the first priority in `order` that has any after
    /// its cursor (`cursors[priority]`), in sequence order, within `limits`
    /// (when even the first block exceeds strict limits, nothing, and no
    /// lower priority instead), leaving out blocks
    /// of `skip_topics` and the blocks `skip_blocks` (sorted); and that
    /// priority. Each priority is read by the `(priority, seq_first)`
    /// index, without a scan.
    pub async fn read_by_priority(
        &self,
        cursors: [i64; PRIORITY_LEVELS],
        order: [u8; PRIORITY_LEVELS],
        limits: ReadLimits,
        skip_topics: Vec<String>,
        skip_blocks: std::sync::Arc<Vec<i64>>,
    ) -> Result<(u8, Vec<Block>), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Read {
                cursors,
                order,
                limits,
                skip_topics,
                skip_blocks,
                reply,
            })
            .await
            .map_err(closed)?;
        Ok(rx.await.map_err(closed)??)
    }

    /// In one transaction: store `dead` letters, delete the `delivered`
    /// blocks (every event acknowledged by Kafka or dead-lettered) and the
    /// delivered windows' `plans`.
    pub async fn finish(
        &self,
        delivered: Vec<i64>,
        dead: Vec<NewDeadLetter>,
        plans: Vec<i64>,
    ) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Command::Finish {
            delivered,
            dead,
            plans,
            reply,
        })
        .await?;
        Ok(rx.await.map_err(closed)??)
    }

    async fn ask(&self, cmd: Command) -> Result<(), OutboxError> {
        self.tx.send(cmd).await.map_err(closed)
    }

    /// Store a window's plan and the producer state it advanced, durably
    /// (as durable as `outbox.durability` makes commits) before it is sent.
    pub async fn save_plan(&self, save: plan::PlanSave) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Command::SavePlan {
            save: Box::new(save),
            reply,
        })
        .await?;
        Ok(rx.await.map_err(closed)??)
    }

    /// The producer state and the plans of windows not yet delivered.
    pub async fn load_plans(&self) -> Result<plan::Saved, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Command::LoadPlans { reply }).await?;
        Ok(rx.await.map_err(closed)??)
    }

    /// Drop the stored producer id and streams (not the plans).
    pub async fn forget_producer(&self) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Command::ForgetProducer { reply }).await?;
        Ok(rx.await.map_err(closed)??)
    }

    /// Move blocks found corrupt after they were read aside (see
    /// `outbox::run`), each with why it is corrupt.
    pub async fn quarantine(&self, corrupt: Vec<CorruptBlock>) -> Result<(), OutboxError> {
        self.ask(Command::Quarantine { corrupt }).await
    }

    /// These blocks (by first sequence number) as far as they are still
    /// stored, in order.
    pub async fn read_blocks(&self, seq_firsts: Vec<i64>) -> Result<Vec<Block>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Command::ReadBlocks { seq_firsts, reply }).await?;
        Ok(rx.await.map_err(closed)??)
    }

    /// Loss markers waiting for the loss topic: `(id, JSON)`.
    pub async fn loss_pending(&self) -> Result<Vec<(i64, String)>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::LossPending { reply })
            .await
            .map_err(closed)?;
        Ok(rx.await.map_err(closed)??)
    }

    /// Put a heartbeat in its slot, replacing one still waiting.
    pub async fn set_heartbeat(&self, body: String) {
        let _ = self.tx.send(Command::SetHeartbeat { body }).await;
    }

    /// The heartbeat waiting in its slot: `(version, JSON)`.
    pub async fn heartbeat_pending(&self) -> Result<Option<(i64, String)>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::HeartbeatPending { reply })
            .await
            .map_err(closed)?;
        Ok(rx.await.map_err(closed)??)
    }

    /// The heartbeat of `version` was delivered.
    pub async fn heartbeat_sent(&self, version: i64) {
        let _ = self.tx.send(Command::HeartbeatSent { version }).await;
    }

    pub async fn loss_delivered(&self, ids: Vec<i64>) {
        let _ = self.tx.send(Command::LossDelivered { ids }).await;
    }

    /// Dead letters not yet produced to the DLQ topic.
    pub async fn dlq_pending(&self) -> Result<Vec<dead_letter::ForDlq>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::DlqPending { reply })
            .await
            .map_err(closed)?;
        Ok(rx.await.map_err(closed)??)
    }

    /// True if the writer answers within `within` (it is not wedged).
    pub async fn ping(&self, within: std::time::Duration) -> bool {
        let (reply, rx) = oneshot::channel();
        let asked =
            async { self.tx.send(Command::Ping { reply }).await.is_ok() && rx.await.is_ok() };
        tokio::time::timeout(within, asked).await.unwrap_or(false)
    }

    pub async fn dlq_sent(&self, ids: Vec<i64>) {
        let _ = self.tx.send(Command::DlqSent { ids, state: 1 }).await;
    }

    /// The DLQ topic refused these dead letters for good: stop trying.
    pub async fn dlq_refused(&self, ids: Vec<i64>) {
        let _ = self.tx.send(Command::DlqSent { ids, state: 2 }).await;
    }

    /// Which of these blocks are still stored (the others were dropped by
    /// policy while waiting to be delivered).
    pub async fn present(&self, seq_firsts: Vec<i64>) -> Result<Vec<i64>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Present { seq_firsts, reply })
            .await
            .map_err(closed)?;
        Ok(rx.await.map_err(closed)??)
    }

    /// The redelivery marks of MQTT link `link` (see `outbox::mqtt_marks`).
    pub async fn mqtt_marks(
        &self,
        link: &str,
    ) -> Result<Vec<super::mqtt_marks::Mark>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Command::MqttMarks {
            link: link.to_string(),
            reply,
        })
        .await?;
        Ok(rx.await.map_err(closed)??)
    }

    /// The broker has seen these messages acknowledged.
    pub async fn mqtt_forget(&self, link: &str, marks: Vec<super::mqtt_marks::Mark>) {
        let link = link.to_string();
        let _ = self.tx.send(Command::MqttForget { link, marks }).await;
    }

    /// The broker lost link `link`'s session: remove its marks (answered
    /// once done, so no later commit's marks can be removed with them).
    pub async fn mqtt_clear(&self, link: &str) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Command::MqttClear {
            link: link.to_string(),
            reply,
        })
        .await?;
        Ok(rx.await.map_err(closed)??)
    }

    /// Priorities from a reloaded config, for blocks stored from now on.
    pub async fn set_priorities(&self, priorities: crate::pattern::Priorities) {
        let _ = self.tx.send(Command::SetPriorities(priorities)).await;
    }

    /// Ask the writer to drop events older than `max_age`.
    pub async fn evict_aged(&self) {
        let _ = self.tx.send(Command::EvictAged).await;
    }

    /// Under `relaxed` durability, sync the write-ahead log if anything
    /// was committed since the last sync (see `Writer::sync_log`).
    pub async fn sync_log(&self) {
        let _ = self.tx.send(Command::SyncLog).await;
    }

    /// Nothing has happened for a while: release what the writer keeps for
    /// speed, and trim the heap (every thread's arena) afterwards.
    pub async fn release_memory(&self) {
        let _ = self.tx.send(Command::ReleaseMemory).await;
    }
}

/// A connection's way to store batches: one reply channel for its whole
/// life, and each batch's buffer handed back after the commit for the
/// next one, so the ingest path allocates nothing per batch or event.
///
/// Up to [`Appender::DEPTH`] batches may wait for their commit at once
/// ([`Appender::submit`], then [`Appender::answer`] in the same order), so
/// a connection reads and decodes its next batch while the writer commits
/// the last one.
pub struct Appender {
    outbox: Outbox,
    reply_tx: mpsc::Sender<Stored>,
    reply_rx: mpsc::Receiver<Stored>,
    /// Buffers of answered batches, for the next ones.
    spares: Vec<Vec<u8>>,
}

impl Appender {
    /// Batches of one connection that may wait for a commit at once.
    pub const DEPTH: usize = 2;

    pub fn new(outbox: &Outbox) -> Self {
        // Room for every answer: the writer never waits on a connection.
        let (reply_tx, reply_rx) = mpsc::channel(Self::DEPTH);
        Self {
            outbox: outbox.clone(),
            reply_tx,
            reply_rx,
            spares: Vec::with_capacity(Self::DEPTH),
        }
    }

    /// An empty batch whose buffer holds at least `capacity` bytes (an
    /// earlier batch's buffer, recycled).
    pub fn batch(&mut self, capacity: usize) -> AppendBatch {
        let mut data = self.spares.pop().unwrap_or_default();
        data.clear();
        data.reserve(capacity);
        AppendBatch {
            data,
            count: 0,
            marks: None,
        }
    }

    /// Drop the recycled buffers (after a burst made them large).
    pub fn release_spare(&mut self) {
        self.spares.clear();
    }

    /// Store `batch` and wait for its commit (or, if it is empty, just
    /// keep its buffer). Nothing else may be waiting for an answer.
    pub async fn store(&mut self, batch: AppendBatch) -> Result<(), StoreError> {
        if self.submit(batch).await? {
            self.answer().await
        } else {
            Ok(())
        }
    }

    /// Hand `batch` to the writer without waiting for its commit: true if
    /// an [`Appender::answer`] will follow; an empty batch only gives back
    /// its buffer (false). The caller keeps at most [`Appender::DEPTH`]
    /// batches unanswered.
    pub async fn submit(&mut self, batch: AppendBatch) -> Result<bool, StoreError> {
        if batch.count == 0 {
            self.keep_spare(batch.data);
            return Ok(false);
        }
        self.outbox
            .tx
            .send(Command::Append {
                batch,
                reply: Some(self.reply_tx.clone()),
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(true)
    }

    /// The commit result of the oldest submitted batch not yet answered.
    /// Cancel safe: an answer not taken stays for the next call.
    pub async fn answer(&mut self) -> Result<(), StoreError> {
        match self.reply_rx.recv().await {
            Some((result, buffer)) => {
                self.keep_spare(buffer);
                result
            }
            None => Err(StoreError::Closed),
        }
    }

    fn keep_spare(&mut self, buffer: Vec<u8>) {
        if self.spares.len() < Self::DEPTH {
            self.spares.push(buffer);
        }
    }
}
