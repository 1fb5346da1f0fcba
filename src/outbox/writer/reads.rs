//! Reads for the forwarder: blocks by priority within the window's
//! limits, verified (a corrupt one quarantined, never blocking the rest),
//! and blocks named by a stored plan.

use super::removal::delete_blocks;
use super::state::Writer;
use crate::outbox::block::{Block, StoredRun, verify_block};
use crate::outbox::command::{CorruptBlock, ReadLimits};
use crate::outbox::corruption::Corruption;
use crate::outbox::hot::{FORMAT_EVENTS, FORMAT_RUN};
use crate::outbox::run::RunHeader;
use crate::outbox::schema;
use crate::outbox::storage_error::StorageError;
use crate::pattern::PRIORITY_LEVELS;
use crate::stats::now_ms;
use log::error;
use rusqlite::params;
use std::sync::atomic::Ordering::Relaxed;

impl Writer {
    /// The first priority in `order` with blocks after its cursor gives
    /// the read (a lower one does not go instead of one whose next block
    /// is too large): `(priority, blocks)`, none if nothing waits.
    pub(super) fn read_by_priority(
        &mut self,
        cursors: [i64; PRIORITY_LEVELS],
        order: [u8; PRIORITY_LEVELS],
        limits: ReadLimits,
        skip: (&[String], &[i64]),
    ) -> Result<(u8, Vec<Block>), StorageError> {
        for p in order {
            if self.blocks_by_priority[p as usize] == 0 {
                continue;
            }
            return match self.read(p, cursors[p as usize], limits, skip)? {
                Read::Nothing => continue,
                Read::Blocks(blocks) => Ok((p, blocks)),
                // A lower priority does not go instead.
                Read::TooLarge => Ok((order[0], Vec::new())),
            };
        }
        Ok((order[0], Vec::new()))
    }

    pub(super) fn read(
        &mut self,
        priority: u8,
        after: i64,
        limits: ReadLimits,
        (skip_topics, skip_blocks): (&[String], &[i64]),
    ) -> Result<Read, StorageError> {
        let sql = StorageError::at("reading outbox blocks");
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
                .map_err(sql)?;
            let mut rows = stmt.query(params![priority, after]).map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                let topic = row.get_ref(6).map_err(sql)?;
                let topic = topic.as_str().map_err(|e| sql(e.into()))?;
                if skip_topics.iter().any(|t| t == topic) {
                    continue;
                }
                if !skip_blocks.is_empty() {
                    let seq_first: i64 = row.get(0).map_err(sql)?;
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
                let block_raw = match row.get::<_, i64>(7).map_err(sql)? {
                    FORMAT_RUN => row
                        .get_ref(5)
                        .and_then(|v| Ok(v.as_blob()?.len()))
                        .and_then(|stored| Ok(stored + if runs_decoded { decoded? } else { 0 })),
                    _ => decoded,
                }
                .map_err(sql)?;
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
                    Err(bad) => corrupt.push(bad),
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
    pub(super) fn quarantine_corrupt(&mut self, corrupt: Vec<CorruptBlock>) {
        for CorruptBlock {
            seq_first,
            events: count,
            why,
        } in corrupt
        {
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
    pub(super) fn read_blocks(&mut self, seq_firsts: &[i64]) -> Result<Vec<Block>, StorageError> {
        let sql = StorageError::at("reading the outbox blocks of a stored plan");
        let mut out = Vec::with_capacity(seq_firsts.len());
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq_first, count, raw_bytes, created_ms, crc, payload, topic, format FROM blocks \
                 WHERE seq_first = ?1",
            )
            .map_err(sql)?;
        for &seq_first in seq_firsts {
            let mut rows = stmt.query([seq_first]).map_err(sql)?;
            let Some(row) = rows.next().map_err(sql)? else {
                continue;
            };
            let topic: String = row.get(6).map_err(sql)?;
            // A corrupt block is left for the ordinary read to quarantine.
            if let Ok(block) = stored_block(row, topic)? {
                out.push(block);
            }
        }
        Ok(out)
    }

    pub(super) fn present(&mut self, seq_firsts: &[i64]) -> rusqlite::Result<Vec<i64>> {
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

    pub(super) fn quarantine(&mut self, seq_first: i64, why: &str) -> rusqlite::Result<()> {
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
}

/// What one priority's read found.
pub(super) enum Read {
    Blocks(Vec<Block>),
    Nothing,
    /// Its next block is larger than the strict size asked for.
    TooLarge,
}

/// A `blocks` row (`seq_first, count, raw_bytes, created_ms, crc, payload`
/// first, `format` eighth), verified and decompressed (a run: checked and
/// kept as stored); a corrupt one as a [`CorruptBlock`].
pub(super) fn stored_block(
    row: &rusqlite::Row<'_>,
    topic: String,
) -> Result<Result<Block, CorruptBlock>, StorageError> {
    let sql = StorageError::at("reading an outbox block");
    let seq_first: i64 = row.get(0).map_err(sql)?;
    let count: u32 = row.get(1).map_err(sql)?;
    let raw_bytes = row.get::<_, i64>(2).map_err(sql)? as usize;
    let created_ms: i64 = row.get(3).map_err(sql)?;
    let crc: u32 = row.get(4).map_err(sql)?;
    let format: i64 = row.get(7).map_err(sql)?;
    let payload = row.get_ref(5).and_then(|v| v.as_blob().map_err(Into::into));
    let payload = payload.map_err(sql)?;
    let corrupt = |why: Corruption| CorruptBlock {
        seq_first,
        events: count,
        why: why.to_string(),
    };
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
            Err(why) => Err(corrupt(why)),
        },
        FORMAT_EVENTS => match verify_block(payload, crc, count, raw_bytes, &topic) {
            Ok(data) => Ok(block(data, None)),
            Err(why) => Err(corrupt(why)),
        },
        other => Err(corrupt(Corruption::UnknownFormat(other))),
    })
}

/// A stored run's checksum and header (its records are decoded only if
/// it cannot be sent as stored: see `outbox::run`).
pub(super) fn verify_run(
    payload: &[u8],
    crc: u32,
    count: u32,
) -> Result<(RunHeader, &[u8]), Corruption> {
    if crc32fast::hash(payload) != crc {
        return Err(Corruption::Checksum);
    }
    match RunHeader::read(payload) {
        Some((h, records)) if h.shape.count as i64 == i64::from(count) => Ok((h, records)),
        Some((h, _)) => Err(Corruption::RunCount {
            records: h.shape.count,
            count,
        }),
        None => Err(Corruption::NotARun),
    }
}
