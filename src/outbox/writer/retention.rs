//! Retention: the size and age caps, enforced by dropping the oldest
//! blocks with their loss announced (loss markers).

use super::state::Writer;
use super::totals::Totals;
use crate::outbox::{loss, schema};
use crate::pattern::{MAX_PRIORITY, PRIORITY_LEVELS};
use crate::stats::now_ms;
use rusqlite::{Connection, OptionalExtension};
use std::sync::atomic::Ordering::Relaxed;

impl Writer {
    /// Delete `victims` by policy inside `tx`: count them and, when a loss
    /// topic is configured, queue a loss marker naming what was dropped.
    pub(super) fn drop_blocks(
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

    pub(super) fn evict_aged(&mut self) -> rusqlite::Result<()> {
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

pub(super) fn delete_blocks(tx: &Connection, seq_firsts: &[i64]) -> rusqlite::Result<Totals> {
    delete_blocks_with(tx, seq_firsts, |_, _, _, _| {})
}

/// Delete blocks, keep the counters right, and tell `each` the topic, first
/// sequence, event count and raw bytes of every block actually deleted.
pub(super) fn delete_blocks_with(
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
pub(super) fn oldest_over(
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
