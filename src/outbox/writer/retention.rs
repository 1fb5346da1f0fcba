//! Retention: the size and age caps, enforced by dropping the oldest
//! blocks with their loss announced (loss markers).

use super::removal::delete_blocks_with;
use super::state::Writer;
use super::totals::Totals;
use crate::outbox::{loss, schema};
use crate::stats::now_ms;
use rusqlite::Connection;
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
