//! Removing blocks: the one DELETE every removal goes through (delivered,
//! dropped by a cap, quarantined), keeping the `meta` counters right in the
//! same transaction and saying what went as [`Totals`].

use super::totals::Totals;
use crate::outbox::schema;
use crate::pattern::{MAX_PRIORITY, PRIORITY_LEVELS};
use rusqlite::{Connection, OptionalExtension};

/// Delete blocks; what they held.
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
