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

/// The header every record's `ferry-id` is in (as the forwarder writes it).
pub const FERRY_ID_HEADER: &str = "ferry-id";

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
                // `node:seq`, the number written by `itoa` (through
                // `fmt` it was 3 % of ferry's instructions).
                self.id.clear();
                self.id.extend_from_slice(node_id.as_bytes());
                self.id.push(b':');
                self.id
                    .extend_from_slice(itoa::Buffer::new().format(first + n as i64).as_bytes());
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
) -> Result<DecodedRun, String> {
    let plain = decompress_records(header.codec, records, raw_bytes)?;
    let count = header.shape.count.max(0) as usize;
    let mut out = DecodedRun {
        data: Vec::with_capacity(raw_bytes + count * (topic.len() + 8)),
        offsets: Vec::with_capacity(count),
    };
    let mut rest = &plain[..];
    let mut headers = Vec::new();
    let mut frame_headers = Vec::new();
    for i in 0..count {
        let (record, after) =
            read_record(rest, &mut headers).map_err(|e| format!("record {i}: {e}"))?;
        rest = after;
        if record.offset_delta != i as i64 {
            return Err(format!(
                "record {i} has offset delta {}",
                record.offset_delta
            ));
        }
        match headers.pop() {
            Some((name, _)) if name == FERRY_ID_HEADER.as_bytes() => {}
            _ => return Err(format!("record {i} has no {FERRY_ID_HEADER} header last")),
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
        return Err(format!("{} bytes after {count} records", rest.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::encode_headers;
    use crate::kafka::record_batch::{ProducerFields, write_stored_run_header};

    const CODECS: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd(3)];

    fn shape(codec: Codec, partitions: i32) -> RunShape {
        RunShape {
            codec,
            partitions,
            max_events: 1000,
            max_raw_bytes: 1 << 20,
        }
    }

    /// `n` events of topic `t`: keys `k{i % keys}` (none where `keys` is
    /// 0), one header on odd events, an unsynced clock on the first when
    /// `unsynced`.
    fn events(n: usize, keys: usize, unsynced: bool) -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..n {
            let key = format!("k{}", i % keys.max(1));
            let mut headers = Vec::new();
            if i % 2 == 1 {
                encode_headers([("h", &b"v"[..]), ("h", &b""[..])], &mut headers);
            }
            let value = format!("value {i}");
            Event {
                topic: "t",
                key: (keys > 0).then_some(key.as_bytes()),
                headers: &headers,
                value: value.as_bytes(),
                timestamp_ms: 1_700_000_000_000 + (i as i64 % 5),
                clock: (unsynced && i == 0).then_some(crate::clock::UnsyncedStamp {
                    boot: 1,
                    boot_ms: i as u64,
                }),
            }
            .encode_into(&mut data);
        }
        data
    }

    enum Stored {
        Run(i64, u32, usize, Vec<u8>),
        Events(i64, u32, Vec<u8>),
    }

    fn cut(data: &[u8], shape: RunShape) -> (Vec<Stored>, i64) {
        let mut pieces = Vec::new();
        let next = RunCutter::default()
            .cut::<()>(data, "t", shape, "node-1", 100, |p| {
                pieces.push(match p {
                    Piece::Run {
                        seq_first,
                        count,
                        raw_bytes,
                        payload,
                    } => Stored::Run(seq_first, count, raw_bytes, payload.to_vec()),
                    Piece::Events {
                        seq_first,
                        count,
                        data,
                    } => Stored::Events(seq_first, count, data.to_vec()),
                });
                Ok(())
            })
            .unwrap();
        (pieces, next)
    }

    fn all_events(data: &[u8]) -> Vec<Event<'_>> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let (e, r) = Event::decode_from(rest).unwrap();
            out.push(e);
            rest = r;
        }
        out
    }

    /// Every event is in exactly one piece, a run's events hash to its
    /// partition, sequence numbers follow on, and each key's events keep
    /// their order.
    #[test]
    fn runs_and_the_rest_hold_every_event_once_with_keys_in_order() {
        let data = events(600, 40, true);
        let (pieces, next) = cut(&data, shape(Codec::Lz4, 4));
        assert_eq!(next, 700);
        let mut seq = 100;
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut runs = 0;
        for p in &pieces {
            match p {
                Stored::Run(first, count, raw, payload) => {
                    runs += 1;
                    assert_eq!(*first, seq);
                    let (h, records) = RunHeader::read(payload).unwrap();
                    assert!(*count as usize >= RUN_MIN_EVENTS);
                    assert_eq!(h.shape.count as u32, *count);
                    assert_eq!(h.records_crc, crc32c::crc32c(records));
                    let d = decode_run(&h, records, *raw, "t").unwrap();
                    for e in all_events(&d.data) {
                        let key = e.key.unwrap();
                        assert_eq!(partition_for_key(key, 4), h.partition);
                        assert!(e.clock.is_none());
                        seen.push((
                            String::from_utf8_lossy(key).into(),
                            String::from_utf8_lossy(e.value).into(),
                        ));
                    }
                    seq += *count as i64;
                }
                Stored::Events(first, count, data) => {
                    assert_eq!(*first, seq);
                    let es = all_events(data);
                    assert_eq!(es.len(), *count as usize);
                    for e in es {
                        seen.push((
                            String::from_utf8_lossy(e.key.unwrap()).into(),
                            String::from_utf8_lossy(e.value).into(),
                        ));
                    }
                    seq += *count as i64;
                }
            }
        }
        // The first event's partition stays events (its clock is unsynced).
        assert!(runs >= 3, "{runs} runs");
        assert_eq!(seen.len(), 600);
        let mut values: Vec<usize> = seen
            .iter()
            .map(|(_, v)| v.trim_start_matches("value ").parse().unwrap())
            .collect();
        // Per key, in acknowledgement order.
        for k in 0..40 {
            let of_key: Vec<usize> = seen
                .iter()
                .filter(|(key, _)| *key == format!("k{k}"))
                .map(|(_, v)| v.trim_start_matches("value ").parse().unwrap())
                .collect();
            assert!(of_key.windows(2).all(|w| w[0] < w[1]), "k{k}: {of_key:?}");
        }
        values.sort();
        assert_eq!(values, (0..600).collect::<Vec<_>>());
    }

    /// What a run's stored bytes send is the batch the forwarder would
    /// encode from the same events, byte for byte, in every codec; and the
    /// run decodes back to the events it was cut from.
    #[test]
    fn a_stored_run_sends_the_batch_the_events_would_make() {
        for codec in CODECS {
            let data = events(100, 0, false);
            let (pieces, _) = cut(&data, shape(codec, 3));
            let [Stored::Run(first, count, raw, payload)] = &pieces[..] else {
                panic!("one keyless run expected");
            };
            let (h, records) = RunHeader::read(payload).unwrap();
            assert_eq!(h.partitions, KEYLESS);
            let fields = ProducerFields {
                producer_id: 7,
                producer_epoch: 1,
                base_sequence: 40,
            };
            let mut sent = Vec::new();
            write_stored_run_header(
                &mut sent,
                h.codec,
                fields,
                h.shape,
                records.len(),
                h.records_crc,
            );
            sent.extend_from_slice(records);
            let mut enc = BatchEncoder::default();
            for (i, e) in all_events(&data).iter().enumerate() {
                let id = format!("node-1:{}", first + i as i64);
                let headers = e
                    .raw_header_iter()
                    .chain(std::iter::once((FERRY_ID_HEADER.as_bytes(), id.as_bytes())));
                enc.push(e.timestamp_ms, e.key, e.value, headers);
            }
            let mut whole = Vec::new();
            enc.finish_into(codec, fields, &mut whole);
            let first_difference = sent[61..]
                .iter()
                .zip(&whole[61..])
                .position(|(a, b)| a != b);
            assert_eq!(
                (sent.len(), first_difference),
                (whole.len(), None),
                "{codec:?}: the batch from the stored run differs"
            );
            let d = decode_run(&h, records, *raw, "t").unwrap();
            assert_eq!(d.offsets.len(), *count as usize);
            assert_eq!(all_events(&d.data), all_events(&data), "{codec:?}");
        }
    }

    #[test]
    fn runs_are_cut_at_the_batch_limits_and_small_groups_stay_events() {
        let data = events(250, 0, false);
        let mut s = shape(Codec::Lz4, 2);
        s.max_events = 100;
        let (pieces, next) = cut(&data, s);
        let counts: Vec<u32> = pieces
            .iter()
            .map(|p| match p {
                Stored::Run(_, c, _, _) => *c,
                Stored::Events(..) => 0,
            })
            .collect();
        assert_eq!(counts, [100, 100, 50]);
        assert_eq!(next, 350);
        // Under the threshold: everything stays events.
        let data = events(RUN_MIN_EVENTS - 1, 0, false);
        let (pieces, _) = cut(&data, s);
        assert!(matches!(&pieces[..], [Stored::Events(100, _, d)] if *d == data));
    }

    #[test]
    fn a_run_fits_only_where_it_was_cut_for() {
        let h = RunHeader {
            partitions: 4,
            partition: 2,
            codec: Codec::Lz4.number(),
            shape: RecordsShape {
                count: 3,
                base_timestamp: 0,
                max_timestamp: 0,
            },
            records_crc: 0,
            node: 9,
        };
        assert!(h.fits(4, 2, Codec::Lz4, 9));
        assert!(!h.fits(8, 2, Codec::Lz4, 9), "partition count changed");
        assert!(!h.fits(4, 1, Codec::Lz4, 9));
        assert!(!h.fits(4, 2, Codec::Zstd(3), 9), "codec changed");
        assert!(!h.fits(4, 2, Codec::Lz4, 8), "node id changed");
        let keyless = RunHeader {
            partitions: KEYLESS,
            ..h
        };
        assert!(keyless.fits(16, 11, Codec::Lz4, 9));
        let mut bytes = vec![0; RUN_HEADER_LEN];
        h.write(&mut bytes);
        assert_eq!(RunHeader::read(&bytes).map(|r| r.0), Some(h));
        bytes[0] = 9;
        assert_eq!(RunHeader::read(&bytes), None);
    }
}
