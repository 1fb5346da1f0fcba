//! Appending: batches gathered into one group commit, each topic's events
//! stored as record runs and blocks (`Packer`), acknowledged once the
//! transaction is committed.

use super::packer::TopicBlock;
use super::retention::oldest_over;
use super::state::{MAX_IDLE_TOPIC_BUFFERS, Writer};
use super::totals::Totals;
use crate::event::Event;
use crate::outbox::block::BLOCK_TARGET_RAW;
use crate::outbox::command::{Pending, StoreError};
use crate::outbox::config::WhenFull;
use crate::outbox::{mqtt_marks, reserve};
use crate::stats::now_ms;
use log::{debug, error};
use std::sync::atomic::Ordering::Relaxed;

impl Writer {
    /// Commit a group of batches; acknowledge each. True if anything stored.
    pub(super) fn commit_group(&mut self, group: &mut Vec<Pending>) -> bool {
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

    pub(super) fn write_group(&mut self, group: &[Pending]) -> rusqlite::Result<()> {
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
    pub(super) fn write_group_in_transaction(
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

    /// Give back the block buffers (each up to a few hundred KiB) and
    /// SQLite's page cache; both come back on the next busy moment.
    pub(super) fn release_memory(&mut self) {
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
}
