//! The writer thread: owns the SQLite connection; group-commits appended
//! batches into blocks (one per topic, filed under its priority), answers
//! reads, finishes delivered windows, stores plans, enforces the size and
//! age caps with loss markers, quarantines corrupt blocks.

use super::block::{BLOCK_TARGET_RAW, Block, Compressor, StoredRun, verify_block};
use super::command::{Command, Corrupt, Options, Pending, ReadLimits, StoreError, Waiting};
use super::config::{Durability, OutboxConfig, WhenFull};
use super::dead_letter::{self, NewDeadLetter};
use super::hot::{self, FORMAT_EVENTS, FORMAT_RUN, HotStatements};
use super::reserve::{self, Reserve};
use super::run::{CutError, Piece, RunCutter, RunHeader, RunShapes};
use super::{heartbeat, loss, mqtt_marks, plan, schema};
use crate::event::Event;
use crate::pattern::{MAX_PRIORITY, PRIORITY_LEVELS};
use crate::stats::{Stats, now_ms};
use log::{debug, error, info, warn};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::{Notify, mpsc};

/// Stop gathering a group commit at this many raw bytes.
const GROUP_COMMIT_MAX_RAW: usize = 8 * 1024 * 1024;

pub fn open_connection(path: &Path, durability: Durability) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::dirsync::create_dir_all(dir)
            .map_err(|e| format!("cannot create outbox directory {}: {e}", dir.display()))?;
    }
    let created = !path.exists();
    let conn = Connection::open(path)
        .map_err(|e| format!("cannot open outbox {}: {e}", path.display()))?;
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA cache_size=-256;"
    ))
    .map_err(|e| format!("cannot configure outbox {}: {e}", path.display()))?;
    schema::migrate(&conn).map_err(|e| format!("outbox {}: {e}", path.display()))?;
    if created {
        // SQLite syncs the directory for the logs it creates, not for the
        // database file: without this a power cut could take the new
        // outbox's name, and with it every event acknowledged since.
        crate::dirsync::sync_parent(path).map_err(|e| {
            format!(
                "cannot sync the directory of the new outbox {}: {e}",
                path.display()
            )
        })?;
    }
    Ok(conn)
}

pub(super) struct Writer {
    /// The append path's statements; declared before `conn`, so they are
    /// finalized before it closes.
    hot: HotStatements,
    conn: Connection,
    config: OutboxConfig,
    stats: Arc<Stats>,
    path: PathBuf,
    next_seq: i64,
    /// Blocks being built in this group commit, one per topic, reused
    /// between commits; and what stores them (compressor, run cutter).
    building: Vec<TopicBlock>,
    packer: Packer,
    /// Node id and whether to record loss markers for a loss topic.
    node_id: String,
    record_loss: bool,
    priorities: crate::pattern::Priorities,
    /// Blocks stored per priority, counted after each commit: a read
    /// skips the priorities that have none.
    blocks_by_priority: [u64; PRIORITY_LEVELS],
    /// Signalled after commits and drops, to wake the forwarder.
    committed: Arc<Notify>,
    /// Side records waiting (shared with the handles).
    waiting: Arc<Waiting>,
    /// Disk space held back for the drain's writes.
    reserve: Reserve,
    /// Under `relaxed`: the connection's change count at the last sync of
    /// the write-ahead log, and the log file whose name was synced.
    synced_changes: u64,
    synced_log: Option<u64>,
    sync_failures: crate::log_limit::LogLimiter,
    /// MQTT marks the broker has seen acknowledged, removed in the next
    /// transaction (no commit of their own: a mark left behind by a crash
    /// only makes a redelivery that cannot come look recognisable).
    mqtt_forget: Vec<(String, Vec<mqtt_marks::Mark>)>,
}

/// A block under construction: events of one topic, encoded back to back.
struct TopicBlock {
    topic: String,
    priority: u8,
    data: Vec<u8>,
    count: u32,
}

/// Keep at most this many per-topic buffers between commits.
const MAX_IDLE_TOPIC_BUFFERS: usize = 64;

impl Writer {
    pub(super) fn new(
        conn: Connection,
        config: OutboxConfig,
        stats: Arc<Stats>,
        path: PathBuf,
        options: Options,
        committed: Arc<Notify>,
        waiting: Arc<Waiting>,
    ) -> Result<Self, String> {
        let m = schema::load_meta(&conn).map_err(|e| format!("outbox {}: {e}", path.display()))?;
        stats.backlog_events.store(m.events, Relaxed);
        stats.backlog_bytes.store(m.stored_bytes, Relaxed);
        stats.backlog_raw_bytes.store(m.raw_bytes, Relaxed);
        stats.dropped_events.store(m.dropped_events, Relaxed);
        stats.dropped_bytes.store(m.dropped_bytes, Relaxed);
        stats.quarantined.store(m.quarantined_events, Relaxed);
        stats.dead_letters.store(m.dead_letters, Relaxed);
        if let Ok(mut u) = stats.uplink.lock() {
            *u = m.uplink;
        }
        let unsent: i64 = conn
            .query_row(
                "SELECT count(*) FROM dead_letters WHERE dlq_sent = 0",
                [],
                |r| r.get(0),
            )
            .map_err(|e| format!("outbox {}: {e}", path.display()))?;
        waiting.dead_letters.store(unsent as u64, Relaxed);
        let markers: i64 = conn
            .query_row("SELECT count(*) FROM loss_markers", [], |r| r.get(0))
            .map_err(|e| format!("outbox {}: {e}", path.display()))?;
        waiting.loss_markers.store(markers as u64, Relaxed);
        let beat =
            heartbeat::pending(&conn).map_err(|e| format!("outbox {}: {e}", path.display()))?;
        waiting.heartbeat.store(beat.is_some(), Relaxed);
        let path_for_reserve = path.clone();
        let hot = HotStatements::prepare(&conn)
            .map_err(|e| format!("outbox {}: cannot prepare statements: {e}", path.display()))?;
        let mut w = Self {
            hot,
            conn,
            config,
            stats,
            path,
            next_seq: m.next_seq,
            building: Vec::new(),
            packer: Packer {
                compressor: Compressor::default(),
                cutter: RunCutter::default(),
                shapes: options.run_shapes.clone(),
            },
            node_id: options.node_id,
            record_loss: options.record_loss,
            priorities: options.priorities,
            blocks_by_priority: [0; PRIORITY_LEVELS],
            committed,
            waiting,
            reserve: Reserve::open(&path_for_reserve),
            synced_changes: 0,
            synced_log: None,
            sync_failures: crate::log_limit::LogLimiter::new(std::time::Duration::from_secs(60)),
            mqtt_forget: Vec::new(),
        };
        {
            // One pass over the small (priority, sequence) index.
            let mut stmt = w
                .conn
                .prepare("SELECT priority, count(*), sum(count) FROM blocks GROUP BY priority")
                .map_err(|e| format!("outbox {}: {e}", w.path.display()))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| format!("outbox {}: {e}", w.path.display()))?;
            for (priority, n, events) in rows {
                let p = priority.clamp(0, MAX_PRIORITY as i64) as usize;
                w.blocks_by_priority[p] += n as u64;
                w.stats.backlog_by_priority[p].store(events.max(0) as u64, Relaxed);
            }
        }
        w.refresh_oldest();
        info!(
            "outbox {} open: {} events ({} bytes) waiting, next sequence {}",
            w.path.display(),
            m.events,
            m.stored_bytes,
            m.next_seq
        );
        Ok(w)
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group: Vec<Pending> = Vec::new();
        let mut deferred: Vec<Command> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut raw = 0usize;
            let mut next = Some(first);
            // Gather everything already waiting into one transaction.
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append { batch, reply } => {
                        raw += batch.data.len();
                        group.push((batch, reply));
                    }
                    // In order with the appends around it: a mark forgotten
                    // before a commit that stores the same one again must
                    // not remove the new one.
                    Command::MqttForget { link, marks } => self.mqtt_forget.push((link, marks)),
                    other => deferred.push(other),
                }
                if raw < GROUP_COMMIT_MAX_RAW {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                let stored = self.commit_group(&mut group);
                if stored {
                    self.committed.notify_one();
                }
            }
            for cmd in deferred.drain(..) {
                self.handle(cmd);
            }
        }
        let r = self.flush_mqtt_forget();
        self.log_mqtt_failure(r);
        info!("outbox {} closed", self.path.display());
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Append { .. } => unreachable!("appends are grouped"),
            Command::MqttMarks { link, reply } => {
                let r = self
                    .flush_mqtt_forget()
                    .and_then(|()| mqtt_marks::load(&self.conn, &link))
                    .map_err(|e| format!("outbox {}: MQTT marks: {e}", self.path.display()));
                let _ = reply.send(r);
            }
            // Taken while gathering a group (see `run`); kept for the
            // next transaction like there.
            Command::MqttForget { link, marks } => self.mqtt_forget.push((link, marks)),
            Command::MqttClear { link, reply } => {
                self.mqtt_forget.retain(|(l, _)| *l != link);
                let r = mqtt_marks::clear(&self.conn, &link)
                    .map_err(|e| format!("outbox {}: MQTT marks: {e}", self.path.display()));
                let _ = reply.send(r);
            }
            Command::Read {
                cursors,
                order,
                limits,
                skip_topics,
                skip_blocks,
                reply,
            } => {
                let mut found = Ok((order[0], Vec::new()));
                for p in order {
                    if self.blocks_by_priority[p as usize] == 0 {
                        continue;
                    }
                    let after = cursors[p as usize];
                    let skip = (&skip_topics[..], &skip_blocks[..]);
                    match self.read(p, after, limits, skip) {
                        Ok(Read::Nothing) => continue,
                        Ok(Read::Blocks(blocks)) => found = Ok((p, blocks)),
                        // A lower priority does not go instead.
                        Ok(Read::TooLarge) => {}
                        Err(e) => found = Err(e),
                    }
                    break;
                }
                let _ = reply.send(found);
            }
            Command::Finish {
                delivered,
                dead,
                plans,
                reply,
            } => {
                let r = self
                    .drain_write(|w| w.finish(&delivered, &dead, &plans))
                    .map_err(|e| e.to_string());
                if r.is_ok() && !self.reserve.is_held() {
                    // The disk was full: keep the log from growing back
                    // into the room the drain frees, then take the reserve
                    // again when there is room for it.
                    self.truncate_wal();
                    self.reserve.retake();
                }
                let _ = reply.send(r);
            }
            Command::SavePlan { save, reply } => {
                let r = self.drain_write(|w| plan::save(&w.conn, &save));
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Command::LoadPlans { reply } => {
                let _ = reply.send(plan::load(&self.conn).map_err(|e| e.to_string()));
            }
            Command::ForgetProducer { reply } => {
                let _ = reply.send(plan::forget_producer(&self.conn).map_err(|e| e.to_string()));
            }
            Command::Quarantine { corrupt } => self.quarantine_corrupt(corrupt),
            Command::ReadBlocks { seq_firsts, reply } => {
                let _ = reply.send(self.read_blocks(&seq_firsts));
            }
            Command::LossPending { reply } => {
                let _ = reply.send(loss::pending(&self.conn, 100).map_err(|e| e.to_string()));
            }
            Command::SetHeartbeat { body } => match heartbeat::set(&self.conn, &body) {
                Ok(()) => {
                    self.waiting.heartbeat.store(true, Relaxed);
                    // Wake an idle forwarder: it sends the heartbeat.
                    self.committed.notify_one();
                }
                Err(e) => warn!(
                    "outbox {}: cannot store the heartbeat: {e}; the next one is tried at the next interval",
                    self.path.display()
                ),
            },
            Command::HeartbeatPending { reply } => {
                let r = heartbeat::pending(&self.conn);
                if let Ok(None) = r {
                    self.waiting.heartbeat.store(false, Relaxed);
                }
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Command::HeartbeatSent { version } => {
                let left = heartbeat::sent(&self.conn, version)
                    .and_then(|()| heartbeat::pending(&self.conn));
                match left {
                    Ok(left) => self.waiting.heartbeat.store(left.is_some(), Relaxed),
                    Err(e) => error!(
                        "outbox {}: cannot clear the heartbeat sent: {e}",
                        self.path.display()
                    ),
                }
            }
            Command::LossDelivered { ids } => match loss::delivered(&self.conn, &ids) {
                Ok(()) => sub(&self.waiting.loss_markers, ids.len() as u64),
                Err(e) => error!(
                    "outbox {}: cannot clear loss markers: {e}",
                    self.path.display()
                ),
            },
            Command::DlqPending { reply } => {
                let r = dead_letter::pending_for_dlq(&self.conn, 500).map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            Command::Ping { reply } => {
                let _ = reply.send(());
            }
            Command::DlqSent { ids, state } => {
                if let Err(e) = dead_letter::mark_sent_to_dlq(&self.conn, &ids, state) {
                    error!(
                        "outbox {}: cannot mark dead letters sent: {e}",
                        self.path.display()
                    );
                }
            }
            Command::Present { seq_firsts, reply } => {
                let _ = reply.send(self.present(&seq_firsts).map_err(|e| e.to_string()));
            }
            Command::SetPriorities(p) => self.priorities = p,
            Command::EvictAged => {
                if let Err(e) = self.evict_aged() {
                    error!("outbox {}: age eviction failed: {e}", self.path.display());
                }
            }
            Command::ReleaseMemory => self.release_memory(),
            Command::SyncLog => self.sync_log(),
        }
    }

    /// A write the drain needs (a plan, a delete): when the disk is full,
    /// the write-ahead log is checkpointed and truncated (its file may hold
    /// most of the free space, and SQLite checkpoints only at 1,000 pages)
    /// and the write tried again; if the disk is still full, the space
    /// reserved for draining is given to SQLite, and once more (see
    /// [`super::reserve`]).
    fn drain_write<T>(
        &mut self,
        mut write: impl FnMut(&mut Self) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        match write(self) {
            Err(e) if reserve::is_disk_full(&e) => {
                self.truncate_wal();
                match write(self) {
                    Err(e) if reserve::is_disk_full(&e) && self.reserve.release() => {
                        self.truncate_wal();
                        write(self)
                    }
                    r => r,
                }
            }
            r => r,
        }
    }

    /// Copy the write-ahead log into the database and cut its file to
    /// nothing, giving its space back to the file system.
    fn truncate_wal(&mut self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            warn!(
                "outbox {}: cannot checkpoint the write-ahead log: {e}",
                self.path.display()
            );
        }
    }

    /// Remove the MQTT marks waiting to go, in a transaction of their own.
    fn flush_mqtt_forget(&mut self) -> rusqlite::Result<()> {
        if self.mqtt_forget.is_empty() {
            return Ok(());
        }
        self.conn.execute_batch("BEGIN")?;
        let r = self.forget_mqtt_marks();
        match r {
            Ok(()) => self.conn.execute_batch("COMMIT"),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Inside a transaction: remove the marks waiting to go.
    fn forget_mqtt_marks(&mut self) -> rusqlite::Result<()> {
        for (link, marks) in &self.mqtt_forget {
            mqtt_marks::forget(&self.conn, link, marks)?;
        }
        self.mqtt_forget.clear();
        Ok(())
    }

    fn log_mqtt_failure(&self, r: rusqlite::Result<()>) {
        if let Err(e) = r {
            // Left marks cost nothing but space; the next commit tries again.
            self.sync_failures.warn(&format!(
                "outbox {}: cannot remove MQTT redelivery marks: {e}",
                self.path.display()
            ));
        }
    }

    /// Give back the block buffers (each up to a few hundred KiB) and
    /// SQLite's page cache; both come back on the next busy moment.
    fn release_memory(&mut self) {
        let r = self.flush_mqtt_forget();
        self.log_mqtt_failure(r);
        self.building = Vec::new();
        self.packer.compressor.release();
        self.packer.cutter.release();
        if let Err(e) = self.conn.execute_batch("PRAGMA shrink_memory") {
            debug!(
                "outbox {}: cannot shrink SQLite's memory: {e}",
                self.path.display()
            );
        }
        // Trimming covers every thread's arena, so the forwarder's
        // finished windows are released here too.
        crate::memory::release_thread_cache();
        crate::memory::trim();
    }

    /// Commit a group of batches; acknowledge each. True if anything stored.
    fn commit_group(&mut self, group: &mut Vec<Pending>) -> bool {
        let reject_full = self.config.when_full == WhenFull::Reject
            && self.config.max_bytes > 0
            && self.stats.backlog_bytes.load(Relaxed) >= self.config.max_bytes;
        let result = if reject_full {
            Err(StoreError::Full {
                max_bytes: self.config.max_bytes,
            })
        } else {
            let seq_before = self.next_seq;
            self.write_group(group).map_err(|e| {
                // Nothing was stored, so the sequence numbers are unused.
                self.next_seq = seq_before;
                error!(
                    "outbox {}: commit failed, {} batches refused: {e}",
                    self.path.display(),
                    group.len()
                );
                if reserve::is_disk_full(&e) {
                    StoreError::Storage(format!(
                        "the disk holding the outbox ({}) is full; space frees as stored events are delivered, or free some on that disk",
                        self.path.display()
                    ))
                } else {
                    StoreError::Storage(e.to_string())
                }
            })
        };
        let stored = result.is_ok();
        let n: u64 = group.iter().map(|(b, _)| b.count as u64).sum();
        if stored {
            self.stats.stored.fetch_add(n, Relaxed);
        } else {
            self.stats.rejected.fetch_add(n, Relaxed);
        }
        for (batch, reply) in group.drain(..) {
            if let Some(reply) = reply {
                // Its channel has room for every batch a connection may
                // have waiting (Appender::DEPTH): never full.
                let _ = reply.try_send((result.clone(), batch.data));
            }
        }
        stored
    }

    fn write_group(&mut self, group: &[Pending]) -> rusqlite::Result<()> {
        self.hot.begin()?;
        let written = self
            .write_group_in_transaction(group)
            .and_then(|totals| self.hot.commit().map(|()| totals));
        if written.is_ok() {
            // Removed with this commit (kept for the next one if it failed).
            self.mqtt_forget.clear();
        }
        let (added, dropped) = match written {
            Ok(totals) => totals,
            Err(e) => {
                // Undo whatever part was written (an error path: allocating is fine).
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        self.apply(
            added,
            dropped,
            "outbox.max_bytes reached (when_full = \"drop_oldest\")",
        );
        if self.stats.oldest_ms.load(Relaxed) == 0 || dropped.events > 0 {
            self.refresh_oldest();
        }
        Ok(())
    }

    /// The body of a group commit: (added, dropped by the size cap).
    fn write_group_in_transaction(
        &mut self,
        group: &[Pending],
    ) -> rusqlite::Result<(Totals, Totals)> {
        let now = now_ms();
        let seq_before = self.next_seq;
        let mut added = Totals::default();
        for b in &mut self.building {
            b.data.clear();
            b.count = 0;
        }
        if self.building.len() > MAX_IDLE_TOPIC_BUFFERS {
            self.building.clear();
        }
        // Sort events into one block per topic, so a topic that cannot be
        // delivered can be skipped without holding up the others. Sequence
        // numbers are given per block, in acknowledgement order per topic.
        for (batch, _) in group {
            let mut rest = &batch.data[..];
            while !rest.is_empty() {
                let (event, after) = Event::decode_from(rest)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                let len = rest.len() - after.len();
                let i = match self.building.iter().position(|b| b.topic == event.topic) {
                    Some(i) => i,
                    None => {
                        self.building.push(TopicBlock {
                            topic: event.topic.to_string(),
                            priority: self.priorities.of(event.topic),
                            data: Vec::new(),
                            count: 0,
                        });
                        self.building.len() - 1
                    }
                };
                let b = &mut self.building[i];
                b.data.extend_from_slice(&rest[..len]);
                b.count += 1;
                rest = after;
                if b.data.len() >= BLOCK_TARGET_RAW {
                    let (totals, next) =
                        self.packer
                            .store(&self.hot, &self.node_id, b, self.next_seq, now)?;
                    added += totals;
                    self.next_seq = next;
                    b.data.clear();
                    b.count = 0;
                }
            }
        }
        for b in self.building.iter().filter(|b| b.count > 0) {
            let (totals, next) =
                self.packer
                    .store(&self.hot, &self.node_id, b, self.next_seq, now)?;
            added += totals;
            self.next_seq = next;
        }
        // Marks forgotten before this group's, then the group's own.
        for (link, marks) in &self.mqtt_forget {
            mqtt_marks::forget(&self.conn, link, marks)?;
        }
        for (batch, _) in group {
            if let Some(m) = &batch.marks {
                mqtt_marks::insert(&self.conn, &m.link, &m.marks)?;
            }
        }
        self.hot.add_appended(
            self.next_seq - seq_before,
            added.events as i64,
            added.stored as i64,
            added.raw as i64,
        )?;
        let dropped = if self.config.when_full == WhenFull::DropOldest && self.config.max_bytes > 0
        {
            let limit = self.config.max_bytes;
            let current = self.stats.backlog_bytes.load(Relaxed) + added.stored;
            let victims = oldest_over(&self.conn, current, limit, seq_before)?;
            self.drop_blocks(&self.conn, &victims, "max_bytes")?
        } else {
            Totals::default()
        };
        Ok((added, dropped))
    }

    /// Delete `victims` by policy inside `tx`: count them and, when a loss
    /// topic is configured, queue a loss marker naming what was dropped.
    fn drop_blocks(
        &self,
        tx: &Connection,
        victims: &[i64],
        reason: &str,
    ) -> rusqlite::Result<Totals> {
        if victims.is_empty() {
            return Ok(Totals::default());
        }
        let mut per_topic: std::collections::BTreeMap<String, loss::TopicLoss> = Default::default();
        let dropped = delete_blocks_with(tx, victims, |topic, first, count, raw| {
            let t = per_topic.entry(topic.to_string()).or_default();
            t.events += count;
            t.bytes += raw;
            t.ranges.push([first, first + count as i64 - 1]);
        })?;
        schema::add_meta(tx, "dropped_events", dropped.events as i64)?;
        schema::add_meta(tx, "dropped_bytes", dropped.raw as i64)?;
        if self.record_loss && dropped.events > 0 {
            let marker = loss::LossMarker {
                node: &self.node_id,
                reason,
                time_ms: now_ms(),
                events: dropped.events,
                bytes: dropped.raw,
                topics: per_topic,
            };
            loss::queue(tx, &marker)?;
            self.waiting.loss_markers.fetch_add(1, Relaxed);
        }
        Ok(dropped)
    }

    /// Move committed totals into the in-memory stats and log drops.
    fn apply(&mut self, added: Totals, dropped: Totals, reason: &str) {
        self.count_blocks(&added, &dropped);
        let s = &self.stats;
        s.backlog_events.fetch_add(added.events, Relaxed);
        s.backlog_bytes.fetch_add(added.stored, Relaxed);
        s.backlog_raw_bytes.fetch_add(added.raw, Relaxed);
        if dropped.events > 0 {
            sub(&s.backlog_events, dropped.events);
            sub(&s.backlog_bytes, dropped.stored);
            sub(&s.backlog_raw_bytes, dropped.raw);
            s.dropped_events.fetch_add(dropped.events, Relaxed);
            s.dropped_bytes.fetch_add(dropped.raw, Relaxed);
            warn!(
                "outbox {}: dropped {} events ({} bytes), sequences {}..={}: {reason}",
                self.path.display(),
                dropped.events,
                dropped.raw,
                dropped.seq_min,
                dropped.seq_max
            );
        }
    }

    fn refresh_oldest(&mut self) {
        let oldest: Option<i64> = self
            .conn
            .query_row(
                "SELECT created_ms FROM blocks ORDER BY seq_first LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .ok()
            .flatten();
        self.stats.oldest_ms.store(oldest.unwrap_or(0), Relaxed);
    }

    fn read(
        &mut self,
        priority: u8,
        after: i64,
        limits: ReadLimits,
        (skip_topics, skip_blocks): (&[String], &[i64]),
    ) -> Result<Read, String> {
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        let (mut events, mut raw) = (0usize, 0usize);
        let mut too_large = false;
        let ReadLimits {
            max_events,
            max_raw_bytes,
            strict_bytes,
            runs_decoded,
        } = limits;
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT seq_first, count, raw_bytes, created_ms, crc, payload, topic, format FROM blocks \
                     WHERE priority = ?1 AND seq_first > ?2 ORDER BY seq_first",
                )
                .map_err(|e| e.to_string())?;
            let mut rows = stmt
                .query(params![priority, after])
                .map_err(|e| e.to_string())?;
            while let Some(row) = rows.next().map_err(|e| e.to_string())? {
                let topic = row.get_ref(6).map_err(|e| e.to_string())?;
                let topic = topic.as_str().map_err(|e| e.to_string())?;
                if skip_topics.iter().any(|t| t == topic) {
                    continue;
                }
                if !skip_blocks.is_empty() {
                    let seq_first: i64 = row.get(0).map_err(|e| e.to_string())?;
                    if skip_blocks.binary_search(&seq_first).is_ok() {
                        continue;
                    }
                }
                // The size is a limit, not a target: a block that would
                // take the window over it waits for the next one (the
                // forwarder's memory budget counts on it), unless the
                // window would be empty; with strict limits, even then.
                // What the block will hold in memory: its events
                // decompressed, or a run's records as stored (and, when
                // the reader decodes runs, its events too).
                let decoded = row.get::<_, i64>(2).map(|n| n.max(0) as usize);
                let block_raw = match row.get::<_, i64>(7).map_err(|e| e.to_string())? {
                    FORMAT_RUN => row
                        .get_ref(5)
                        .and_then(|v| Ok(v.as_blob()?.len()))
                        .and_then(|stored| Ok(stored + if runs_decoded { decoded? } else { 0 })),
                    _ => decoded,
                }
                .map_err(|e| e.to_string())?;
                if raw.saturating_add(block_raw) > max_raw_bytes {
                    if out.is_empty() && strict_bytes {
                        too_large = true;
                    }
                    if !out.is_empty() || strict_bytes {
                        break;
                    }
                }
                match stored_block(row, topic.to_string())? {
                    Ok(block) => {
                        events += block.count as usize;
                        raw += block_raw;
                        out.push(block);
                    }
                    Err((seq_first, count, why)) => corrupt.push((seq_first, count, why)),
                }
                if events >= max_events || raw >= max_raw_bytes {
                    break;
                }
            }
        }
        self.quarantine_corrupt(corrupt);
        Ok(if !out.is_empty() {
            Read::Blocks(out)
        } else if too_large {
            Read::TooLarge
        } else {
            Read::Nothing
        })
    }

    /// Move corrupt blocks aside, each said in the log.
    fn quarantine_corrupt(&mut self, corrupt: Vec<Corrupt>) {
        for (seq_first, count, why) in corrupt {
            if let Err(e) = self.quarantine(seq_first, &why) {
                error!(
                    "outbox {}: cannot quarantine block {seq_first}: {e}",
                    self.path.display()
                );
            } else {
                error!(
                    "outbox {}: block of {count} events (sequences {seq_first}..{}) is corrupt ({why}); quarantined, the events behind it go on",
                    self.path.display(),
                    seq_first + count as i64 - 1
                );
            }
        }
    }

    /// Read the given blocks (those still stored), verified and decompressed.
    fn read_blocks(&mut self, seq_firsts: &[i64]) -> Result<Vec<Block>, String> {
        let mut out = Vec::with_capacity(seq_firsts.len());
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq_first, count, raw_bytes, created_ms, crc, payload, topic, format FROM blocks \
                 WHERE seq_first = ?1",
            )
            .map_err(|e| e.to_string())?;
        for &seq_first in seq_firsts {
            let mut rows = stmt.query([seq_first]).map_err(|e| e.to_string())?;
            let Some(row) = rows.next().map_err(|e| e.to_string())? else {
                continue;
            };
            let topic: String = row.get(6).map_err(|e| e.to_string())?;
            // A corrupt block is left for the ordinary read to quarantine.
            if let Ok(block) = stored_block(row, topic)? {
                out.push(block);
            }
        }
        Ok(out)
    }

    fn present(&mut self, seq_firsts: &[i64]) -> rusqlite::Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM blocks WHERE seq_first = ?1")?;
        let mut out = Vec::with_capacity(seq_firsts.len());
        for &s in seq_firsts {
            if stmt.exists([s])? {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn quarantine(&mut self, seq_first: i64, why: &str) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO quarantine (seq_first, topic, count, raw_bytes, created_ms, crc, payload, reason, quarantined_ms) \
             SELECT seq_first, topic, count, raw_bytes, created_ms, crc, payload, ?2, ?3 FROM blocks WHERE seq_first = ?1",
            params![seq_first, why, now_ms()],
        )?;
        let removed = delete_blocks(&tx, &[seq_first])?;
        schema::add_meta(&tx, "quarantined_events", removed.events as i64)?;
        tx.commit()?;
        self.apply_removed(removed);
        self.stats.quarantined.fetch_add(removed.events, Relaxed);
        Ok(())
    }

    /// Under `relaxed`, commits do not wait for the disk (SQLite's
    /// `synchronous=NORMAL` syncs the write-ahead log only before a
    /// checkpoint, which can be minutes apart on a quiet gateway). Synced
    /// here once a second instead, when anything was committed since: a
    /// power cut loses about the last second, at one `fdatasync` a second.
    /// A log file new since the last sync has its name synced too.
    fn sync_log(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if self.config.durability != Durability::Relaxed {
            return;
        }
        let changes = self.conn.total_changes();
        if changes == self.synced_changes {
            return;
        }
        let mut log = self.path.as_os_str().to_owned();
        log.push("-wal");
        let log = PathBuf::from(log);
        let synced = std::fs::File::open(&log).and_then(|f| {
            f.sync_data()?;
            let inode = f.metadata()?.ino();
            if self.synced_log != Some(inode) {
                crate::dirsync::sync_parent(&log)?;
                self.synced_log = Some(inode);
            }
            Ok(())
        });
        match synced {
            Ok(()) => self.synced_changes = changes,
            // No log: everything is in the database file, synced by the
            // checkpoint that removed the log.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.synced_changes = changes,
            Err(e) => self.sync_failures.warn(&format!(
                "outbox {}: cannot sync the write-ahead log {}: {e}; events committed since the last sync would not survive a power cut",
                self.path.display(),
                log.display()
            )),
        }
    }

    fn finish(
        &mut self,
        delivered: &[i64],
        dead: &[NewDeadLetter],
        plans: &[i64],
    ) -> rusqlite::Result<()> {
        // Removing delivered blocks need not reach the disk at once: if a
        // power cut undoes it, the events are sent again (duplicates that
        // `ferry-id` marks, never loss), and the next `fsync` commit of
        // new events syncs the write-ahead log, this change included.
        // That saves a flush per delivery window (SD-card wear, and the
        // writer stays free for appends).
        let fsync = self.config.durability == Durability::Fsync;
        if fsync {
            self.conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        }
        let result = self.finish_transaction(delivered, dead, plans);
        if fsync {
            self.conn.execute_batch("PRAGMA synchronous=FULL")?;
        }
        result
    }

    fn finish_transaction(
        &mut self,
        delivered: &[i64],
        dead: &[NewDeadLetter],
        plans: &[i64],
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        plan::delete(&tx, plans)?;
        for d in dead {
            dead_letter::insert(&tx, d)?;
        }
        schema::add_meta(&tx, "dead_letters", dead.len() as i64)?;
        let removed = delete_blocks(&tx, delivered)?;
        let uplink = self.stats.uplink.lock().map(|u| *u).unwrap_or_default();
        schema::set_uplink(&tx, &uplink)?;
        tx.commit()?;
        self.stats
            .dead_letters
            .fetch_add(dead.len() as u64, Relaxed);
        self.waiting
            .dead_letters
            .fetch_add(dead.len() as u64, Relaxed);
        self.apply_removed(removed);
        Ok(())
    }

    /// Blocks stored (`added`) and removed since the last call, by priority.
    fn count_blocks(&mut self, added: &Totals, removed: &Totals) {
        for p in 0..PRIORITY_LEVELS {
            let n = &mut self.blocks_by_priority[p];
            *n = (*n + added.blocks[p]).saturating_sub(removed.blocks[p]);
            let events = &self.stats.backlog_by_priority[p];
            events.fetch_add(added.events_by[p], Relaxed);
            sub(events, removed.events_by[p]);
        }
    }

    fn apply_removed(&mut self, removed: Totals) {
        self.count_blocks(&Totals::default(), &removed);
        sub(&self.stats.backlog_events, removed.events);
        sub(&self.stats.backlog_bytes, removed.stored);
        sub(&self.stats.backlog_raw_bytes, removed.raw);
        self.refresh_oldest();
    }

    fn evict_aged(&mut self) -> rusqlite::Result<()> {
        if self.config.max_age.is_zero() {
            return Ok(());
        }
        let cutoff = now_ms() - self.config.max_age.as_millis() as i64;
        let tx = self.conn.unchecked_transaction()?;
        let victims: Vec<i64> = {
            let mut stmt = tx.prepare_cached(
                "SELECT seq_first FROM blocks WHERE created_ms < ?1 ORDER BY seq_first",
            )?;
            stmt.query_map([cutoff], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        if victims.is_empty() {
            return Ok(());
        }
        let dropped = self.drop_blocks(&tx, &victims, "max_age")?;
        tx.commit()?;
        self.apply(Totals::default(), dropped, "older than outbox.max_age");
        self.refresh_oldest();
        self.committed.notify_one();
        Ok(())
    }
}

fn sub(a: &std::sync::atomic::AtomicU64, n: u64) {
    let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    events: u64,
    stored: u64,
    raw: u64,
    seq_min: i64,
    seq_max: i64,
    /// Blocks and events per priority.
    blocks: [u64; PRIORITY_LEVELS],
    events_by: [u64; PRIORITY_LEVELS],
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Self) {
        if o.events == 0 {
            return;
        }
        if self.events == 0 {
            self.seq_min = o.seq_min;
        }
        self.events += o.events;
        self.stored += o.stored;
        self.raw += o.raw;
        self.seq_min = self.seq_min.min(o.seq_min);
        self.seq_max = self.seq_max.max(o.seq_max);
        for (mine, theirs) in self.blocks.iter_mut().zip(o.blocks) {
            *mine += theirs;
        }
        for (mine, theirs) in self.events_by.iter_mut().zip(o.events_by) {
            *mine += theirs;
        }
    }
}

/// Stores a topic's block of one commit: as record runs where the
/// forwarder has said how (see `outbox::run`), the rest as a block of
/// events.
struct Packer {
    compressor: Compressor,
    cutter: RunCutter,
    shapes: Arc<RunShapes>,
}

impl Packer {
    /// Store `block`'s events from sequence `seq_first` on; returns what
    /// was added and the next sequence.
    fn store(
        &mut self,
        hot: &HotStatements,
        node_id: &str,
        block: &TopicBlock,
        seq_first: i64,
        now: i64,
    ) -> rusqlite::Result<(Totals, i64)> {
        let Some(shape) = self.shapes.shape_of(&block.topic) else {
            let totals = insert_events(
                hot,
                block,
                &block.data,
                block.count,
                &mut self.compressor,
                seq_first,
                now,
            )?;
            return Ok((totals, seq_first + block.count as i64));
        };
        let mut added = Totals::default();
        let compressor = &mut self.compressor;
        let next = self
            .cutter
            .cut(
                &block.data,
                &block.topic,
                shape,
                node_id,
                seq_first,
                |piece| {
                    added += match piece {
                        Piece::Run {
                            seq_first,
                            count,
                            raw_bytes,
                            payload,
                        } => insert_row(
                            hot,
                            block,
                            &block_row(
                                block,
                                (seq_first, count, raw_bytes),
                                now,
                                payload,
                                FORMAT_RUN,
                            ),
                        )?,
                        Piece::Events {
                            seq_first,
                            count,
                            data,
                        } => insert_events(hot, block, data, count, compressor, seq_first, now)?,
                    };
                    Ok(())
                },
            )
            .map_err(|e| match e {
                CutError::Decode(e) => rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
                CutError::Store(e) => e,
            })?;
        Ok((added, next))
    }
}

/// The row of `payload` (`format`), holding `count` events from
/// `seq_first` of `raw_bytes` uncompressed, checksummed.
fn block_row<'a>(
    block: &'a TopicBlock,
    (seq_first, count, raw_bytes): (i64, u32, usize),
    now: i64,
    payload: &'a [u8],
    format: i64,
) -> hot::BlockRow<'a> {
    hot::BlockRow {
        seq_first,
        topic: &block.topic,
        priority: block.priority,
        count,
        raw_bytes: raw_bytes as i64,
        created_ms: now,
        crc: crc32fast::hash(payload),
        payload,
        format,
    }
}

/// `count` events of `block`'s topic (`data`, at-rest encoding), stored
/// as one LZ4-compressed block.
fn insert_events(
    hot: &HotStatements,
    block: &TopicBlock,
    data: &[u8],
    count: u32,
    compressor: &mut Compressor,
    seq_first: i64,
    now: i64,
) -> rusqlite::Result<Totals> {
    let compressed = compressor
        .compress(data)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    insert_row(
        hot,
        block,
        &block_row(
            block,
            (seq_first, count, data.len()),
            now,
            compressed,
            FORMAT_EVENTS,
        ),
    )
}

fn insert_row(
    hot: &HotStatements,
    block: &TopicBlock,
    row: &hot::BlockRow<'_>,
) -> rusqlite::Result<Totals> {
    hot.insert_block(row)?;
    let mut blocks = [0; PRIORITY_LEVELS];
    let mut events_by = [0; PRIORITY_LEVELS];
    let p = usize::from(block.priority.min(MAX_PRIORITY));
    blocks[p] = 1;
    events_by[p] = u64::from(row.count);
    Ok(Totals {
        events: row.count as u64,
        stored: row.payload.len() as u64,
        raw: row.raw_bytes as u64,
        seq_min: row.seq_first,
        seq_max: row.seq_first + row.count as i64 - 1,
        blocks,
        events_by,
    })
}

/// What one priority's read found.
enum Read {
    Blocks(Vec<Block>),
    Nothing,
    /// Its next block is larger than the strict size asked for.
    TooLarge,
}

/// A `blocks` row (`seq_first, count, raw_bytes, created_ms, crc, payload`
/// first, `format` eighth), verified and decompressed (a run: checked and
/// kept as stored); a corrupt one as `(seq_first, count, why)`.
fn stored_block(row: &rusqlite::Row<'_>, topic: String) -> Result<Result<Block, Corrupt>, String> {
    let seq_first: i64 = row.get(0).map_err(|e| e.to_string())?;
    let count: u32 = row.get(1).map_err(|e| e.to_string())?;
    let raw_bytes = row.get::<_, i64>(2).map_err(|e| e.to_string())? as usize;
    let created_ms: i64 = row.get(3).map_err(|e| e.to_string())?;
    let crc: u32 = row.get(4).map_err(|e| e.to_string())?;
    let format: i64 = row.get(7).map_err(|e| e.to_string())?;
    let payload = row.get_ref(5).and_then(|v| v.as_blob().map_err(Into::into));
    let payload = payload.map_err(|e| e.to_string())?;
    let block = |data, run| Block {
        seq_first,
        topic: topic.clone(),
        count,
        created_ms,
        data,
        run,
    };
    Ok(match format {
        FORMAT_RUN => match verify_run(payload, crc, count) {
            Ok((header, records)) => Ok(block(
                records.to_vec(),
                Some(StoredRun::new(header, raw_bytes)),
            )),
            Err(why) => Err((seq_first, count, why)),
        },
        FORMAT_EVENTS => match verify_block(payload, crc, count, raw_bytes, &topic) {
            Ok(data) => Ok(block(data, None)),
            Err(why) => Err((seq_first, count, why)),
        },
        other => Err((
            seq_first,
            count,
            format!("stored in format {other}, unknown to this ferry"),
        )),
    })
}

/// A stored run's checksum and header (its records are decoded only if
/// it cannot be sent as stored: see `outbox::run`).
fn verify_run(payload: &[u8], crc: u32, count: u32) -> Result<(RunHeader, &[u8]), String> {
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    match RunHeader::read(payload) {
        Some((h, records)) if h.shape.count as i64 == i64::from(count) => Ok((h, records)),
        Some((h, _)) => Err(format!(
            "a run of {} records in a row of {count}",
            h.shape.count
        )),
        None => Err("not a record run".into()),
    }
}

fn delete_blocks(tx: &Connection, seq_firsts: &[i64]) -> rusqlite::Result<Totals> {
    delete_blocks_with(tx, seq_firsts, |_, _, _, _| {})
}

/// Delete blocks, keep the counters right, and tell `each` the topic, first
/// sequence, event count and raw bytes of every block actually deleted.
fn delete_blocks_with(
    tx: &Connection,
    seq_firsts: &[i64],
    mut each: impl FnMut(&str, i64, u64, u64),
) -> rusqlite::Result<Totals> {
    let mut t = Totals::default();
    let mut stmt = tx.prepare_cached(
        "DELETE FROM blocks WHERE seq_first = ?1 \
         RETURNING count, length(payload), raw_bytes, topic, priority",
    )?;
    for &s in seq_firsts {
        let row: Option<(i64, i64, i64, String, i64)> = stmt
            .query_row([s], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        if let Some((events, stored, raw, topic, priority)) = row {
            let (events, stored, raw) = (events as u64, stored as u64, raw as u64);
            each(&topic, s, events, raw);
            let mut blocks = [0; PRIORITY_LEVELS];
            let mut events_by = [0; PRIORITY_LEVELS];
            let p = priority.clamp(0, MAX_PRIORITY as i64) as usize;
            blocks[p] = 1;
            events_by[p] = events;
            t += Totals {
                events,
                stored,
                raw,
                seq_min: s,
                seq_max: s + events as i64 - 1,
                blocks,
                events_by,
            };
        }
    }
    drop(stmt);
    schema::add_meta(tx, "events", -(t.events as i64))?;
    schema::add_meta(tx, "stored_bytes", -(t.stored as i64))?;
    schema::add_meta(tx, "raw_bytes", -(t.raw as i64))?;
    Ok(t)
}

/// The oldest blocks (never those at or after `keep_from`, just written)
/// whose removal brings the stored bytes within `limit`.
fn oldest_over(
    tx: &Connection,
    mut current: u64,
    limit: u64,
    keep_from: i64,
) -> rusqlite::Result<Vec<i64>> {
    let mut victims = Vec::new();
    if current > limit {
        let mut stmt = tx.prepare_cached(
            "SELECT seq_first, length(payload) FROM blocks WHERE seq_first < ?1 ORDER BY seq_first",
        )?;
        let mut rows = stmt.query([keep_from])?;
        while current > limit {
            let Some(row) = rows.next()? else { break };
            let seq: i64 = row.get(0)?;
            let len = row.get::<_, i64>(1)? as u64;
            victims.push(seq);
            current = current.saturating_sub(len);
        }
    }
    Ok(victims)
}
