//! Opening the outbox: the database file made (and its name made durable),
//! WAL and the durability's sync level set, the schema migrated; then what
//! the writer loads before its first command (the counters into `Stats`,
//! the pending side records, the prepared statements).

use super::packer::Packer;
use super::state::Writer;
use crate::outbox::block::Compressor;
use crate::outbox::command::{Options, Waiting};
use crate::outbox::config::{Durability, OutboxConfig};
use crate::outbox::hot::HotStatements;
use crate::outbox::open_error::OpenError;
use crate::outbox::reserve::Reserve;
use crate::outbox::run::RunCutter;
use crate::outbox::{heartbeat, schema};
use crate::pattern::{MAX_PRIORITY, PRIORITY_LEVELS};
use crate::stats::Stats;
use log::info;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::Notify;

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
    /// The writer of the database `conn` opened by [`open_connection`].
    pub(in crate::outbox) fn new(
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
}
