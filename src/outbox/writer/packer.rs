//! Storing one commit's events of a topic: as record runs where the
//! forwarder has said how (`outbox::run`), the rest as a block of events
//! (LZ4 at rest), each row checksummed.

use super::totals::Totals;
use crate::outbox::block::Compressor;
use crate::outbox::hot::{self, FORMAT_EVENTS, FORMAT_RUN, HotStatements};
use crate::outbox::run::{CutError, Piece, RunCutter, RunShapes};
use crate::pattern::{MAX_PRIORITY, PRIORITY_LEVELS};
use std::sync::Arc;

/// A block under construction: events of one topic, encoded back to back.
pub(super) struct TopicBlock {
    pub(super) topic: String,
    pub(super) priority: u8,
    pub(super) data: Vec<u8>,
    pub(super) count: u32,
}

/// Stores a topic's block of one commit: as record runs where the
/// forwarder has said how (see `outbox::run`), the rest as a block of
/// events.
pub(super) struct Packer {
    pub(super) compressor: Compressor,
    pub(super) cutter: RunCutter,
    pub(super) shapes: Arc<RunShapes>,
}

impl Packer {
    /// Store `block`'s events from sequence `seq_first` on; returns what
    /// was added and the next sequence.
    pub(super) fn store(
        &mut self,
        hot: &HotStatements,
        node_id: &str,
        block: &TopicBlock,
        seq_first: i64,
        now: i64,
    ) -> rusqlite::Result<(Totals, i64)> {
        let Some(shape) = self.shapes.shape_of(&block.topic) else {
            let totals = insert_events(
                hot,
                block,
                &block.data,
                block.count,
                &mut self.compressor,
                seq_first,
                now,
            )?;
            return Ok((totals, seq_first + block.count as i64));
        };
        let mut added = Totals::default();
        let compressor = &mut self.compressor;
        let next = self
            .cutter
            .cut(
                &block.data,
                &block.topic,
                shape,
                node_id,
                seq_first,
                |piece| {
                    added += match piece {
                        Piece::Run {
                            seq_first,
                            count,
                            raw_bytes,
                            payload,
                        } => insert_row(
                            hot,
                            block,
                            &block_row(
                                block,
                                (seq_first, count, raw_bytes),
                                now,
                                payload,
                                FORMAT_RUN,
                            ),
                        )?,
                        Piece::Events {
                            seq_first,
                            count,
                            data,
                        } => insert_events(hot, block, data, count, compressor, seq_first, now)?,
                    };
                    Ok(())
                },
            )
            .map_err(|e| match e {
                CutError::Decode(e) => rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
                CutError::Store(e) => e,
            })?;
        Ok((added, next))
    }
}

/// The row of `payload` (`format`), holding `count` events from
/// `seq_first` of `raw_bytes` uncompressed, checksummed.
pub(super) fn block_row<'a>(
    block: &'a TopicBlock,
    (seq_first, count, raw_bytes): (i64, u32, usize),
    now: i64,
    payload: &'a [u8],
    format: i64,
) -> hot::BlockRow<'a> {
    hot::BlockRow {
        seq_first,
        topic: &block.topic,
        priority: block.priority,
        count,
        raw_bytes: raw_bytes as i64,
        created_ms: now,
        crc: crc32fast::hash(payload),
        payload,
        format,
    }
}

/// `count` events of `block`'s topic (`data`, at-rest encoding), stored
/// as one LZ4-compressed block.
pub(super) fn insert_events(
    hot: &HotStatements,
    block: &TopicBlock,
    data: &[u8],
    count: u32,
    compressor: &mut Compressor,
    seq_first: i64,
    now: i64,
) -> rusqlite::Result<Totals> {
    let compressed = compressor
        .compress(data)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    insert_row(
        hot,
        block,
        &block_row(
            block,
            (seq_first, count, data.len()),
            now,
            compressed,
            FORMAT_EVENTS,
        ),
    )
}

pub(super) fn insert_row(
    hot: &HotStatements,
    block: &TopicBlock,
    row: &hot::BlockRow<'_>,
) -> rusqlite::Result<Totals> {
    hot.insert_block(row)?;
    let mut blocks = [0; PRIORITY_LEVELS];
    let mut events_by = [0; PRIORITY_LEVELS];
    let p = usize::from(block.priority.min(MAX_PRIORITY));
    blocks[p] = 1;
    events_by[p] = u64::from(row.count);
    Ok(Totals {
        events: row.count as u64,
        stored: row.payload.len() as u64,
        raw: row.raw_bytes as u64,
        seq_min: row.seq_first,
        seq_max: row.seq_first + row.count as i64 - 1,
        blocks,
        events_by,
    })
}
