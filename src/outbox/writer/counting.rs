//! The outbox's running totals (events, bytes, oldest, per priority),
//! kept in memory and in the `meta` table so start-up needs no scan.

use super::state::Writer;
use super::totals::{Totals, sub};
use crate::pattern::PRIORITY_LEVELS;
use log::warn;
use rusqlite::OptionalExtension;
use std::sync::atomic::Ordering::Relaxed;

impl Writer {
    /// Move committed totals into the in-memory stats and log drops.
    pub(super) fn apply(&mut self, added: Totals, dropped: Totals, reason: &str) {
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

    pub(super) fn refresh_oldest(&mut self) {
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

    /// Blocks stored (`added`) and removed since the last call, by priority.
    pub(super) fn count_blocks(&mut self, added: &Totals, removed: &Totals) {
        for p in 0..PRIORITY_LEVELS {
            let n = &mut self.blocks_by_priority[p];
            *n = (*n + added.blocks[p]).saturating_sub(removed.blocks[p]);
            let events = &self.stats.backlog_by_priority[p];
            events.fetch_add(added.events_by[p], Relaxed);
            sub(events, removed.events_by[p]);
        }
    }

    pub(super) fn apply_removed(&mut self, removed: Totals) {
        self.count_blocks(&Totals::default(), &removed);
        sub(&self.stats.backlog_events, removed.events);
        sub(&self.stats.backlog_bytes, removed.stored);
        sub(&self.stats.backlog_raw_bytes, removed.raw);
        self.refresh_oldest();
    }
}
