//! The writer thread: owns the SQLite connection; group-commits appended
//! batches into blocks (one per topic, filed under its priority), answers
//! reads, finishes delivered windows, stores plans, enforces the size and
//! age caps with loss markers, quarantines corrupt blocks. This file is
//! the thread's loop and its commands; each job has its file:
//!
//! ```text
//! state      what the thread owns (connection, statements, counters)
//! append     group commit: batches gathered, stored, acknowledged
//!   packer     a topic's events of a commit as record runs and blocks
//! reads      blocks for the forwarder (verified; corrupt ones quarantined)
//! finish     a delivered window's blocks removed, dead letters stored
//! retention  the size and age caps, with loss markers
//! counting   totals applied after commits and drops
//!   totals     what a commit or drop adds or removes
//! ```

mod append;
mod counting;
mod finish;
mod packer;
mod reads;
mod retention;
mod state;
mod totals;

use super::block::Compressor;
use super::command::{Command, Options, Pending, Waiting};
use super::config::{Durability, OutboxConfig};
use super::dead_letter::{self};
use super::hot::HotStatements;
use super::open_error::OpenError;
use super::reserve::{self, Reserve};
use super::run::RunCutter;
use super::storage_error::StorageError;
use super::{heartbeat, loss, mqtt_marks, plan, schema};
use crate::pattern::{MAX_PRIORITY, PRIORITY_LEVELS};
use crate::stats::Stats;
use log::{error, info, warn};
use packer::Packer;
use rusqlite::Connection;
pub(super) use state::Writer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::{Notify, mpsc};
use totals::sub;

/// Stop gathering a group commit at this many raw bytes.
const GROUP_COMMIT_MAX_RAW: usize = 8 * 1024 * 1024;

pub fn open_connection(path: &Path, durability: Durability) -> Result<Connection, OpenError> {
    let at = || path.to_path_buf();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::dirsync::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    let created = !path.exists();
    let conn = Connection::open(path).map_err(|source| OpenError::Open { path: at(), source })?;
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA cache_size=-256;"
    ))
    .map_err(|source| OpenError::Configure { path: at(), source })?;
    schema::migrate(&conn).map_err(|source| OpenError::Schema { path: at(), source })?;
    if created {
        // SQLite syncs the directory for the logs it creates, not for the
        // database file: without this a power cut could take the new
        // outbox's name, and with it every event acknowledged since.
        crate::dirsync::sync_parent(path)
            .map_err(|source| OpenError::SyncDir { path: at(), source })?;
    }
    Ok(conn)
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        config: OutboxConfig,
        stats: Arc<Stats>,
        path: PathBuf,
        options: Options,
        committed: Arc<Notify>,
        waiting: Arc<Waiting>,
    ) -> Result<Self, OpenError> {
        let m = schema::load_meta(&conn).map_err(|source| OpenError::Schema {
            path: path.clone(),
            source,
        })?;
        let load = |what| {
            let path = path.clone();
            move |source| OpenError::Load { path, what, source }
        };
        let c = m.counters;
        stats.backlog_events.store(c.events, Relaxed);
        stats.backlog_bytes.store(c.stored_bytes, Relaxed);
        stats.backlog_raw_bytes.store(c.raw_bytes, Relaxed);
        stats.dropped_events.store(c.dropped_events, Relaxed);
        stats.dropped_bytes.store(c.dropped_bytes, Relaxed);
        stats.quarantined.store(c.quarantined_events, Relaxed);
        stats.dead_letters.store(c.dead_letters, Relaxed);
        if let Ok(mut u) = stats.uplink.lock() {
            *u = m.uplink;
        }
        let unsent: i64 = conn
            .query_row(
                "SELECT count(*) FROM dead_letters WHERE dlq_sent = 0",
                [],
                |r| r.get(0),
            )
            .map_err(load("dead letters"))?;
        waiting.dead_letters.store(unsent as u64, Relaxed);
        let markers: i64 = conn
            .query_row("SELECT count(*) FROM loss_markers", [], |r| r.get(0))
            .map_err(load("loss markers"))?;
        waiting.loss_markers.store(markers as u64, Relaxed);
        let beat = heartbeat::pending(&conn).map_err(load("the heartbeat"))?;
        waiting.heartbeat.store(beat.is_some(), Relaxed);
        let path_for_reserve = path.clone();
        let hot = HotStatements::prepare(&conn).map_err(load("its statements"))?;
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
                .map_err(|source| OpenError::Load {
                    path: w.path.clone(),
                    what: "the blocks per priority",
                    source,
                })?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|source| OpenError::Load {
                    path: w.path.clone(),
                    what: "the blocks per priority",
                    source,
                })?;
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
            c.events,
            c.stored_bytes,
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
                    .map_err(StorageError::at("loading MQTT marks"));
                let _ = reply.send(r);
            }
            // Taken while gathering a group (see `run`); kept for the
            // next transaction like there.
            Command::MqttForget { link, marks } => self.mqtt_forget.push((link, marks)),
            Command::MqttClear { link, reply } => {
                self.mqtt_forget.retain(|(l, _)| *l != link);
                let r = mqtt_marks::clear(&self.conn, &link)
                    .map_err(StorageError::at("clearing MQTT marks"));
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
                let skip = (&skip_topics[..], &skip_blocks[..]);
                let _ = reply.send(self.read_by_priority(cursors, order, limits, skip));
            }
            Command::Finish {
                delivered,
                dead,
                plans,
                reply,
            } => {
                let r = self
                    .drain_write(|w| w.finish(&delivered, &dead, &plans))
                    .map_err(StorageError::at("finishing delivered windows"));
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
                let _ = reply.send(r.map_err(StorageError::at("saving a plan")));
            }
            Command::LoadPlans { reply } => {
                let r = plan::load(&self.conn).map_err(StorageError::at("loading stored plans"));
                let _ = reply.send(r);
            }
            Command::ForgetProducer { reply } => {
                let r = plan::forget_producer(&self.conn)
                    .map_err(StorageError::at("forgetting the producer id"));
                let _ = reply.send(r);
            }
            Command::Quarantine { corrupt } => self.quarantine_corrupt(corrupt),
            Command::ReadBlocks { seq_firsts, reply } => {
                let _ = reply.send(self.read_blocks(&seq_firsts));
            }
            Command::LossPending { reply } => {
                let r = loss::pending(&self.conn, 100)
                    .map_err(StorageError::at("reading loss markers"));
                let _ = reply.send(r);
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
                let _ = reply.send(r.map_err(StorageError::at("reading the heartbeat")));
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
                let r = dead_letter::pending_for_dlq(&self.conn, 500)
                    .map_err(StorageError::at("reading dead letters for the DLQ topic"));
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
                let r = self.present(&seq_firsts);
                let _ = reply.send(r.map_err(StorageError::at("checking blocks are stored")));
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
}
