//! The stored block: many events of one topic, LZ4-compressed with
//! reused tables and CRC-checked, and how a block read back is verified
//! (checksum, declared size, decompression, every event decodes) before
//! anything trusts it.

use super::corruption::Corruption;
use super::run::{DecodedRun, RunHeader, decode_run};
use crate::event::Event;
use std::sync::OnceLock;

/// Cut a new block once this many raw bytes are in it.
pub(super) const BLOCK_TARGET_RAW: usize = 256 * 1024;
/// No stored block is larger: the block target plus one event of the
/// largest size Kafka takes, with room to spare.
pub(super) const MAX_BLOCK_RAW: usize =
    4 * BLOCK_TARGET_RAW + 4 * crate::event::KAFKA_MAX_EVENT_BYTES as usize;

/// A stored block, decompressed and verified: events of one topic; or a
/// stored record run (see `outbox::run`), as stored.
#[derive(Debug)]
pub struct Block {
    pub seq_first: i64,
    pub topic: String,
    pub count: u32,
    pub created_ms: i64,
    /// The events in the at-rest encoding; for a run, its records as
    /// stored (compressed).
    pub data: Vec<u8>,
    /// A run's header (`None`: a block of events).
    pub run: Option<StoredRun>,
}

/// What a [`Block`] that is a stored run knows besides its records.
#[derive(Debug)]
pub struct StoredRun {
    pub header: RunHeader,
    /// The records' uncompressed size.
    pub raw_bytes: usize,
    /// Its events, decoded on first need (a run sent as stored never is).
    decoded: OnceLock<Result<DecodedRun, Corruption>>,
}

impl StoredRun {
    pub fn new(header: RunHeader, raw_bytes: usize) -> Self {
        Self {
            header,
            raw_bytes,
            decoded: OnceLock::new(),
        }
    }
}

impl Block {
    /// A run's events, decoded (once); `None` for a block of events.
    pub fn decoded_run(&self) -> Option<Result<&DecodedRun, &Corruption>> {
        let run = self.run.as_ref()?;
        let d = run
            .decoded
            .get_or_init(|| decode_run(&run.header, &self.data, run.raw_bytes, &self.topic));
        Some(d.as_ref())
    }

    /// The encoded events and where the one at `offset` starts: offsets
    /// are byte offsets in a block of events, indexes in a run.
    fn locate(&self, offset: usize) -> Option<&[u8]> {
        match self.decoded_run() {
            None => self.data.get(offset..),
            Some(Ok(d)) => d.data.get(*d.offsets.get(offset)? as usize..),
            Some(Err(_)) => None,
        }
    }

    /// The event stored at `offset` (as yielded by [`Block::events`]).
    pub fn event_at(&self, offset: usize) -> Option<Event<'_>> {
        Event::decode_in(self.locate(offset)?, &self.topic)
            .ok()
            .map(|(e, _)| e)
    }

    /// The encoded bytes of the event stored at `offset`.
    pub fn event_bytes(&self, offset: usize) -> Option<&[u8]> {
        let from = self.locate(offset)?;
        let (_, rest) = Event::decode_in(from, &self.topic).ok()?;
        Some(&from[..from.len() - rest.len()])
    }

    /// The block's events with their sequence numbers and offsets (a
    /// run's are decoded first; one that does not decode has none: see
    /// [`Block::decoded_run`]).
    pub fn events(&self) -> BlockEvents<'_> {
        let (rest, indexed) = match self.decoded_run() {
            None => (&self.data[..], false),
            Some(Ok(d)) => (&d.data[..], true),
            Some(Err(_)) => (&[][..], true),
        };
        BlockEvents {
            rest,
            topic: &self.topic,
            offset: 0,
            index: 0,
            indexed,
            seq: self.seq_first,
        }
    }

    /// Every event's sequence number and offset, without decoding a run.
    pub fn places(&self) -> Box<dyn Iterator<Item = (i64, usize)> + '_> {
        match &self.run {
            Some(_) => Box::new((0..self.count as usize).map(|i| (self.seq_first + i as i64, i))),
            None => Box::new(self.events().map(|(seq, offset, _)| (seq, offset))),
        }
    }

    /// The window memory it holds: its events decompressed, or a run's
    /// records as stored.
    pub fn held_bytes(&self) -> usize {
        self.data.len()
    }

    /// What it holds once a run's events are decoded too (`runs_decoded`):
    /// as the outbox's read counted it (`ReadLimits::runs_decoded`).
    pub fn held_bytes_decoded(&self, runs_decoded: bool) -> usize {
        match &self.run {
            Some(run) if runs_decoded => self.data.len() + run.raw_bytes,
            _ => self.data.len(),
        }
    }
}

pub struct BlockEvents<'a> {
    rest: &'a [u8],
    topic: &'a str,
    offset: usize,
    /// Yield indexes, not byte offsets (a run's events).
    indexed: bool,
    index: usize,
    seq: i64,
}

impl<'a> Iterator for BlockEvents<'a> {
    /// Sequence number, byte offset in the block, the event.
    type Item = (i64, usize, Event<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() == self.offset {
            return None;
        }
        // Blocks are verified when read, so a failure cannot happen here.
        let (event, rest) = Event::decode_in(&self.rest[self.offset..], self.topic).ok()?;
        let offset = if self.indexed {
            self.index
        } else {
            self.offset
        };
        self.offset = self.rest.len() - rest.len();
        self.index += 1;
        let seq = self.seq;
        self.seq += 1;
        Some((seq, offset, event))
    }
}

/// LZ4 block compression with its output buffer and hash tables kept
/// between blocks: lz4_flex's plain `compress_into` allocates a fresh
/// table for every call. Like `compress_into`, inputs under 64 KiB use the
/// table of 16-bit entries (measured: the other one slows ingest by ~15 %
/// on small blocks).
pub(super) struct Compressor {
    out: Vec<u8>,
    small: lz4_flex::block::CompressTable,
    large: lz4_flex::block::CompressTable,
}

impl Default for Compressor {
    fn default() -> Self {
        Self {
            out: Vec::new(),
            small: lz4_flex::block::CompressTable::small(),
            large: lz4_flex::block::CompressTable::large(),
        }
    }
}

impl Compressor {
    /// Give back the output buffer (after a burst).
    pub(super) fn release(&mut self) {
        self.out = Vec::new();
    }

    pub(super) fn compress(&mut self, raw: &[u8]) -> Result<&[u8], lz4_flex::block::CompressError> {
        // Grown once and not cleared: the compressor writes before it reads.
        let max = lz4_flex::block::get_maximum_output_size(raw.len());
        if self.out.len() < max {
            self.out.resize(max, 0);
        }
        let table = if raw.len() < u16::MAX as usize {
            &mut self.small
        } else {
            &mut self.large
        };
        let n = lz4_flex::block::compress_into_with_table(raw, &mut self.out[..max], table)?;
        Ok(&self.out[..n])
    }
}

/// Check the CRC, decompress and check every event decodes and is of the
/// block's `topic` (later passes over the block count on it: see
/// [`Event::decode_in`]).
pub fn verify_block(
    payload: &[u8],
    crc: u32,
    count: u32,
    raw_bytes: usize,
    topic: &str,
) -> Result<Vec<u8>, Corruption> {
    if crc32fast::hash(payload) != crc {
        return Err(Corruption::Checksum);
    }
    // The size comes from the same row: a damaged one must not make ferry
    // allocate gigabytes. No block is larger than a block's target plus
    // one event, and LZ4 expands at most ~255 times.
    if raw_bytes > MAX_BLOCK_RAW || raw_bytes > payload.len().saturating_mul(255) + 16 {
        return Err(Corruption::ImpossibleSize {
            declared: raw_bytes,
            payload: payload.len(),
        });
    }
    let data = lz4_flex::block::decompress(payload, raw_bytes)?;
    if data.len() != raw_bytes {
        return Err(Corruption::DecompressedSize {
            got: data.len(),
            expected: raw_bytes,
        });
    }
    let mut rest = &data[..];
    for i in 0..count {
        match Event::decode_from(rest) {
            Ok((e, _)) if e.topic != topic => {
                return Err(Corruption::ForeignTopic {
                    index: i,
                    found: e.topic.to_string(),
                    topic: topic.to_string(),
                });
            }
            Ok((_, r)) => rest = r,
            Err(source) => return Err(Corruption::Event { index: i, source }),
        }
    }
    if !rest.is_empty() {
        return Err(Corruption::TrailingEvents {
            extra: rest.len(),
            count,
        });
    }
    Ok(data)
}
