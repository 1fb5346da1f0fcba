//! The record run (see `STORED_FORMAT.md`): a commit's events of one topic
//! bound for one partition, stored as the records section of a Kafka
//! record batch, already compressed in the codec the wire uses and with
//! each record's `ferry-id`, so that sending it is a 61-byte batch header
//! and a CRC combined from stored ones (`kafka::record_batch::
//! write_stored_run_header`): each byte compressed once, each event
//! encoded once. A run is stored only where the forwarder has told the
//! writer the topic's partition count ([`RunShapes`]) and a partition has
//! enough events in the commit to be worth a batch; the rest stays a block
//! of events. Anything that does not fit when the run is sent (the
//! partition count, the codec or the batch limits changed; a batch is
//! halved or refused) is decoded back to events ([`decode_run`]) and sent
//! as blocks are.
//!
//! A stored run row's payload: [`RunHeader`] (fixed size, big-endian),
//! then the compressed records.

use super::corruption::Corruption;
use crate::event::Event;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::record_batch::{BatchEncoder, Codec, RecordsShape};
use crate::kafka::record_read::{decompress_records, read_record};
use std::collections::HashMap;
use std::sync::RwLock;

/// A commit's events of one partition become a run only when there are at
/// least this many: a run is one record batch, one request of the
/// partition's five in flight, and below this the request's own cost
/// outweighs the compression and encoding saved (see `STORED_FORMAT.md`).
pub const RUN_MIN_EVENTS: usize = 32;

use crate::event::{FERRY_ID_HEADER, write_ferry_id};

/// Bytes of [`RunHeader`] in a stored payload.
pub const RUN_HEADER_LEN: usize = 38;
/// The layout's version, the payload's first byte.
const RUN_LAYOUT: u8 = 1;
/// `partitions` of a run of keyless events (any partition will do).
pub const KEYLESS: i32 = -1;

/// What a stored run holds besides its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunHeader {
    /// `P > 0`: every record's key hashes (murmur2) to `partition` under `P`
    /// partitions; [`KEYLESS`]: no record has a key.
    pub partitions: i32,
    pub partition: i32,
    /// Kafka's codec number of the records.
    pub codec: u8,
    pub shape: RecordsShape,
    /// CRC-32C of the compressed records (combined into the batch's).
    pub records_crc: u32,
    /// Hash of the node id the records' `ferry-id`s name.
    pub node: u32,
}

impl RunHeader {
    fn write(&self, out: &mut [u8]) {
        out[0] = RUN_LAYOUT;
        out[1..5].copy_from_slice(&self.partitions.to_be_bytes());
        out[5..9].copy_from_slice(&self.partition.to_be_bytes());
        out[9] = self.codec;
        out[10..14].copy_from_slice(&self.shape.count.to_be_bytes());
        out[14..22].copy_from_slice(&self.shape.base_timestamp.to_be_bytes());
        out[22..30].copy_from_slice(&self.shape.max_timestamp.to_be_bytes());
        out[30..34].copy_from_slice(&self.records_crc.to_be_bytes());
        out[34..38].copy_from_slice(&self.node.to_be_bytes());
    }

    /// The header and the records of a stored payload; `None` if it is not
    /// one (the row's CRC matched, so only a ferry bug gets here).
    pub fn read(payload: &[u8]) -> Option<(RunHeader, &[u8])> {
        let h = payload.get(..RUN_HEADER_LEN)?;
        if h[0] != RUN_LAYOUT {
            return None;
        }
        let i32_at = |i: usize| i32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let i64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            i64::from_be_bytes(b)
        };
        let header = RunHeader {
            partitions: i32_at(1),
            partition: i32_at(5),
            codec: h[9],
            shape: RecordsShape {
                count: i32_at(10),
                base_timestamp: i64_at(14),
                max_timestamp: i64_at(22),
            },
            records_crc: u32_at(30),
            node: u32_at(34),
        };
        let ok = header.shape.count > 0
            && (header.partitions == KEYLESS
                || (header.partitions > 0 && (0..header.partitions).contains(&header.partition)));
        ok.then_some((header, &payload[RUN_HEADER_LEN..]))
    }

    /// May this run go as stored to `partition` of a topic of
    /// `partitions` partitions, in `codec`, from node `node`, within the
    /// batch limits? (Otherwise it is decoded and sent as events.)
    pub fn fits(&self, partitions: i32, partition: i32, codec: Codec, node: u32) -> bool {
        let placed = self.partitions == KEYLESS
            || (self.partitions == partitions && self.partition == partition);
        placed && self.codec == codec.number() && self.node == node
    }
}

/// The hash of a node id that a run records (`RunHeader::node`).
pub fn node_hash(node_id: &str) -> u32 {
    crc32fast::hash(node_id.as_bytes())
}

/// What the forwarder tells the writer, so that runs are cut as they will
/// be sent: the codec and batch limits in force, and each source topic's
/// partition count (of its destination; absent where it is not known, or
/// its destinations differ). Shared by the two; read once per block.
#[derive(Debug, Default)]
pub struct RunShapes(RwLock<Shapes>);

#[derive(Debug, Default)]
struct Shapes {
    /// `None`: no runs (not told yet).
    codec: Option<Codec>,
    max_events: usize,
    max_raw_bytes: usize,
    partitions: HashMap<String, i32>,
}

/// How to cut one topic's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunShape {
    pub codec: Codec,
    pub partitions: i32,
    pub max_events: usize,
    pub max_raw_bytes: usize,
}

impl RunShapes {
    /// The codec and batch limits in force (at start and on reload).
    pub fn set_limits(&self, codec: Codec, max_events: usize, max_raw_bytes: usize) {
        if let Ok(mut s) = self.0.write() {
            s.codec = Some(codec);
            s.max_events = max_events;
            s.max_raw_bytes = max_raw_bytes;
        }
    }

    /// The partition count the events of source `topic` are sent with
    /// (`None`: unknown, or not one count).
    pub fn set_partitions(&self, topic: &str, partitions: Option<i32>) {
        let current = self
            .0
            .read()
            .ok()
            .and_then(|s| s.partitions.get(topic).copied());
        if current == partitions {
            return;
        }
        if let Ok(mut s) = self.0.write() {
            match partitions {
                Some(p) if p > 0 => s.partitions.insert(topic.to_string(), p),
                _ => s.partitions.remove(topic),
            };
        }
    }

    pub fn shape_of(&self, topic: &str) -> Option<RunShape> {
        let s = self.0.read().ok()?;
        Some(RunShape {
            codec: s.codec?,
            partitions: *s.partitions.get(topic)?,
            max_events: s.max_events,
            max_raw_bytes: s.max_raw_bytes,
        })
    }
}

/// One piece of a topic's block as stored: a run or the events left.
pub enum Piece<'a> {
    Run {
        seq_first: i64,
        count: u32,
        /// The records' uncompressed size.
        raw_bytes: usize,
        /// [`RunHeader`] then the records.
        payload: &'a [u8],
    },
    Events {
        seq_first: i64,
        count: u32,
        /// Events in the at-rest encoding.
        data: &'a [u8],
    },
}

/// Why a cut failed: an event did not decode (the writer encoded them,
/// so a bug), or storing a piece failed.
#[derive(Debug)]
pub enum CutError<E> {
    Decode(crate::event::DecodeError),
    Store(E),
}

/// Cuts a topic's events of one commit into runs and what is left, with
/// every buffer kept for the next commit.
#[derive(Default)]
pub struct RunCutter {
    encoder: BatchEncoder,
    /// Per event: its group (a partition, or `partitions` for keyless; a
    /// group that stays events is counted as `partitions + 1`) and where
    /// it is in the data.
    events: Vec<(u32, u32, u32)>,
    counts: Vec<u32>,
    /// Groups with an event stamped while the clock was unsynchronised.
    unsynced: Vec<u32>,
    /// Event indexes sorted by group (stable).
    order: Vec<u32>,
    payload: Vec<u8>,
    rest: Vec<u8>,
    id: Vec<u8>,
}

impl RunCutter {
    /// Cut `data` (`count` events of `topic`, at-rest encoding, in
    /// acknowledgement order) and hand each piece to `store` with the
    /// sequence numbers from `next_seq` on; returns the next sequence.
    /// A key's events stay in one piece, in order (per-key order).
    pub fn cut<E>(
        &mut self,
        data: &[u8],
        topic: &str,
        shape: RunShape,
        node_id: &str,
        mut next_seq: i64,
        mut store: impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<i64, CutError<E>> {
        let partitions = shape.partitions.max(1);
        let keyless = partitions as u32;
        let stays = keyless + 1;
        self.events.clear();
        self.counts.clear();
        self.counts.resize(stays as usize + 1, 0);
        let mut rest = data;
        while !rest.is_empty() {
            let (event, after) = Event::decode_in(rest, topic).map_err(CutError::Decode)?;
            let at = (data.len() - rest.len()) as u32;
            let len = (rest.len() - after.len()) as u32;
            let group = match event.key {
                Some(k) => partition_for_key(k, partitions) as u32,
                None => keyless,
            };
            // Events stamped before the clock was known are corrected when
            // sent, which a stored run cannot be: their group stays events
            // whole, so that no key's events are split across pieces.
            if event.clock.is_some() {
                self.unsynced.push(group);
            }
            self.counts[group as usize] += 1;
            self.events.push((group, at, len));
            rest = after;
        }
        for &g in &self.unsynced {
            self.counts[stays as usize] += std::mem::take(&mut self.counts[g as usize]);
        }
        self.unsynced.clear();
        for g in 0..stays as usize {
            if (self.counts[g] as usize) < RUN_MIN_EVENTS {
                self.counts[stays as usize] += std::mem::take(&mut self.counts[g]);
            }
        }
        // A stable counting sort by group, the small groups now counted
        // with the events that stay.
        let mut start: Vec<u32> = Vec::with_capacity(self.counts.len());
        let mut sum = 0;
        for &c in &self.counts {
            start.push(sum);
            sum += c;
        }
        self.order.clear();
        self.order.resize(self.events.len(), 0);
        for (i, &(g, _, _)) in self.events.iter().enumerate() {
            let g = if self.counts[g as usize] == 0 {
                stays
            } else {
                g
            };
            self.order[start[g as usize] as usize] = i as u32;
            start[g as usize] += 1;
        }
        let node = node_hash(node_id);
        let mut i = 0;
        while i < self.order.len() {
            let (group, _, _) = self.events[self.order[i] as usize];
            let group = if self.counts[group as usize] == 0 {
                stays
            } else {
                group
            };
            if group == stays {
                break; // the rest, after every run
            }
            // One run, cut at the batch limits.
            self.payload.clear();
            self.payload.resize(RUN_HEADER_LEN, 0);
            let first = next_seq;
            let mut n = 0usize;
            while i < self.order.len() {
                let (g, at, len) = self.events[self.order[i] as usize];
                if g != group {
                    break;
                }
                let bytes = &data[at as usize..(at + len) as usize];
                let (event, _) = Event::decode_in(bytes, topic).map_err(CutError::Decode)?;
                let room = self.encoder.records_len() + event.payload_len() + 64 + node_id.len();
                if n > 0 && (n >= shape.max_events || room > shape.max_raw_bytes) {
                    break;
                }
                write_ferry_id(&mut self.id, node_id, first + n as i64);
                let headers = event
                    .raw_header_iter()
                    .chain(std::iter::once((FERRY_ID_HEADER.as_bytes(), &self.id[..])));
                self.encoder
                    .push(event.timestamp_ms, event.key, event.value, headers);
                n += 1;
                i += 1;
            }
            let raw_bytes = self.encoder.records_len();
            let shape_of_records = self.encoder.finish_records(shape.codec, &mut self.payload);
            let records = &self.payload[RUN_HEADER_LEN..];
            let header = RunHeader {
                partitions: if group == keyless {
                    KEYLESS
                } else {
                    partitions
                },
                partition: if group == keyless { 0 } else { group as i32 },
                codec: shape.codec.number(),
                shape: shape_of_records,
                records_crc: crc32c::crc32c(records),
                node,
            };
            header.write(&mut self.payload[..RUN_HEADER_LEN]);
            next_seq += n as i64;
            store(Piece::Run {
                seq_first: first,
                count: n as u32,
                raw_bytes,
                payload: &self.payload,
            })
            .map_err(CutError::Store)?;
        }
        if i < self.order.len() {
            self.rest.clear();
            let n = self.order.len() - i;
            for &e in &self.order[i..] {
                let (_, at, len) = self.events[e as usize];
                self.rest
                    .extend_from_slice(&data[at as usize..(at + len) as usize]);
            }
            store(Piece::Events {
                seq_first: next_seq,
                count: n as u32,
                data: &self.rest,
            })
            .map_err(CutError::Store)?;
            next_seq += n as i64;
        }
        Ok(next_seq)
    }

    /// Hand back the buffers' memory (after a burst).
    pub fn release(&mut self) {
        *self = Self::default();
    }
}

/// A run decoded back to events: the at-rest encoding of each, and where
/// each (by its index in the run) starts.
#[derive(Debug)]
pub struct DecodedRun {
    pub data: Vec<u8>,
    pub offsets: Vec<u32>,
}

/// Decode a run's `records` (as stored, `raw_bytes` uncompressed) back to
/// events of `topic`, without the `ferry-id` each record carries: what a
/// block of the same events would hold. Every record is checked.
pub fn decode_run(
    header: &RunHeader,
    records: &[u8],
    raw_bytes: usize,
    topic: &str,
) -> Result<DecodedRun, Corruption> {
    let plain =
        decompress_records(header.codec, records, raw_bytes).map_err(Corruption::Records)?;
    let count = header.shape.count.max(0) as usize;
    let mut out = DecodedRun {
        data: Vec::with_capacity(raw_bytes + count * (topic.len() + 8)),
        offsets: Vec::with_capacity(count),
    };
    let mut rest = &plain[..];
    let mut headers = Vec::new();
    let mut frame_headers = Vec::new();
    for i in 0..count {
        let (record, after) = read_record(rest, &mut headers)
            .map_err(|source| Corruption::Record { index: i, source })?;
        rest = after;
        if record.offset_delta != i as i64 {
            return Err(Corruption::OffsetDelta {
                index: i,
                delta: record.offset_delta,
            });
        }
        match headers.pop() {
            Some((name, _)) if name == FERRY_ID_HEADER.as_bytes() => {}
            _ => {
                return Err(Corruption::NoFerryId {
                    index: i,
                    header: FERRY_ID_HEADER,
                });
            }
        }
        frame_headers.clear();
        if !headers.is_empty() {
            frame_headers.extend_from_slice(&(headers.len() as u16).to_be_bytes());
            for (name, value) in &headers {
                frame_headers.extend_from_slice(&(name.len() as u16).to_be_bytes());
                frame_headers.extend_from_slice(name);
                frame_headers.extend_from_slice(&(value.len() as u32).to_be_bytes());
                frame_headers.extend_from_slice(value);
            }
        }
        let event = Event {
            topic,
            key: record.key,
            headers: &frame_headers,
            value: record.value.unwrap_or_default(),
            timestamp_ms: header.shape.base_timestamp + record.timestamp_delta,
            clock: None,
        };
        out.offsets.push(out.data.len() as u32);
        event.encode_into(&mut out.data);
    }
    if !rest.is_empty() {
        return Err(Corruption::TrailingRecords {
            extra: rest.len(),
            count,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
