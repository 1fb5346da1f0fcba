//! The writer thread: owns the SQLite connection; group-commits appended
//! batches into blocks (per topic: record runs cut by partition and size,
//! or one block of events; filed under its priority), answers
//! reads, finishes delivered windows, stores plans, enforces the size and
//! age caps with loss markers, quarantines corrupt blocks. This file is
//! the thread's loop and its commands; each job has its file:
//!
//! ```text
//! start      opening the database; what the writer loads at start-up
//! state      what the thread owns (connection, statements, counters)
//! append     group commit: batches gathered, stored, acknowledged
//!   packer     a topic's events of a commit as record runs and blocks
//! reads      blocks for the forwarder (verified; corrupt ones quarantined)
//! finish     a delivered window's blocks removed, dead letters stored
//! retention  the size and age caps, with loss markers
//! removal    the one DELETE of blocks (delivered, dropped, quarantined)
//! full_disk  the drain's writes on a full disk: log truncated, reserve given
//! counting   totals applied after commits and drops
//!   totals     what a commit or drop adds or removes
//! ```

mod append;
mod counting;
mod finish;
mod full_disk;
mod packer;
mod reads;
mod removal;
mod retention;
mod start;
mod state;
mod totals;

use super::command::{Command, Pending};
use super::config::Durability;
use super::dead_letter;
use super::storage_error::StorageError;
use super::{heartbeat, loss, mqtt_marks, plan};
use log::{error, info, warn};
pub use start::open_connection;
pub(super) use state::Writer;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::mpsc;
use totals::sub;

/// Stop gathering a group commit at this many raw bytes.
const GROUP_COMMIT_MAX_RAW: usize = 8 * 1024 * 1024;

impl Writer {
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
