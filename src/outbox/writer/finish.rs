//! Finishing a delivered window: its blocks deleted, dead letters stored
//! and its plan removed in one transaction.

use super::removal::delete_blocks;
use super::state::Writer;
use crate::outbox::config::Durability;
use crate::outbox::dead_letter::{self, NewDeadLetter};
use crate::outbox::{plan, schema};
use std::sync::atomic::Ordering::Relaxed;

impl Writer {
    pub(super) fn finish(
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

    pub(super) fn finish_transaction(
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
}
