//! Turning stored events into Kafka records: the [`RecordWriter`] adds
//! each record's `ferry-id` and clock headers and encodes a batch straight
//! from the outbox's blocks (no allocation per record), and the
//! [`WriterPool`] keeps writers and encoded buffers between batches. Lanes
//! and the side records (DLQ, loss markers) use it.

use super::plan::{Batch, Item};
use crate::clock::{Reading, Timestamp};
use crate::kafka::record_batch::{BatchEncoder, Codec, ProducerFields, write_stored_run_header};
use crate::outbox::Block;
use bytes::Bytes;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::event::{FERRY_ID_HEADER, write_ferry_id};
/// On events recorded before the clock was synchronised, whose timestamp
/// ferry recomputed: the original timestamp (ms).
pub const TS_CORRECTED_HEADER: &str = "ferry-ts-corrected";
/// On events recorded with an unsynchronised clock that could not be
/// corrected (clock still unsynchronised, or recorded in an earlier boot).
pub const TS_UNSYNCED_HEADER: &str = "ferry-ts-unsynced";

/// Record writers kept between batches, so that their buffers and LZ4
/// tables are not allocated again for every lane. Encoding a batch takes
/// one for that moment only (it never waits on the network), so there are
/// at most as many as there are worker threads. The encoded batch leaves
/// the writer in buffers of its own ([`EncodedBatch`]), held by the lane
/// until the batch is on the wire and then kept for another batch (a few).
#[derive(Clone, Default)]
pub struct WriterPool(Arc<std::sync::Mutex<Pools>>);

#[derive(Default)]
struct Pools {
    writers: Vec<RecordWriter>,
    spares: Vec<EncodedBatch>,
}

/// Batch buffers kept for reuse: a lane's next batch, or another lane's.
const SPARE_BATCHES: usize = 4;
/// A buffer grown larger than this by a burst's huge batch is not kept.
const KEEP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

impl WriterPool {
    /// Run `f` with a writer from the pool (a new one if none is free) and
    /// spare batch buffers for it to encode into.
    pub fn encode(
        &self,
        node_id: &Arc<str>,
        f: impl FnOnce(&mut RecordWriter, EncodedBatch) -> EncodedBatch,
    ) -> EncodedBatch {
        let (writer, spare) = match self.0.lock() {
            Ok(mut p) => (p.writers.pop(), p.spares.pop()),
            Err(_) => (None, None),
        };
        let mut w = writer.unwrap_or_else(|| RecordWriter::new(node_id.clone()));
        let out = f(&mut w, spare.unwrap_or_default());
        if let Ok(mut p) = self.0.lock() {
            p.writers.push(w);
        }
        out
    }

    /// The batch of a stored run (see `outbox::run`): its header, and its
    /// records as stored (compressed once, when they were stored).
    pub fn stored(&self, run: &Block, fields: ProducerFields) -> EncodedBatch {
        let spare = match self.0.lock() {
            Ok(mut p) => p.spares.pop(),
            Err(_) => None,
        };
        let EncodedBatch { mut head, mut body } = spare.unwrap_or_default();
        if let Some(r) = &run.run {
            write_stored_run_header(
                &mut head,
                r.header.codec,
                fields,
                r.header.shape,
                run.data.len(),
                r.header.records_crc,
            );
            body.clear();
            body.extend_from_slice(&run.data);
            crate::stats::STORED_RUN_BATCHES.fetch_add(1, Relaxed);
            crate::stats::STORED_RUN_EVENTS.fetch_add(u64::from(run.count), Relaxed);
        }
        EncodedBatch { head, body }
    }

    /// A batch on the wire: its buffers may serve another.
    pub fn recycle(&self, mut batch: EncodedBatch) {
        if batch.head.capacity() > KEEP_BUFFER_BYTES || batch.body.capacity() > KEEP_BUFFER_BYTES {
            return;
        }
        batch.head.clear();
        batch.body.clear();
        if let Ok(mut p) = self.0.lock()
            && p.spares.len() < SPARE_BATCHES
        {
            p.spares.push(batch);
        }
    }

    /// Hand the writers' memory back (ferry is idle).
    pub fn release(&self) {
        if let Ok(mut p) = self.0.lock() {
            p.writers.clear();
            p.spares.clear();
        }
    }
}

/// A finished record batch in two parts, sent one after the other: the
/// whole batch and nothing (compressed: the compressor wrote it there), or
/// the header and the records (uncompressed: the records as encoded; a
/// stored run: its records as stored, compressed or not).
#[derive(Default)]
pub struct EncodedBatch {
    head: Vec<u8>,
    body: Vec<u8>,
}

impl EncodedBatch {
    pub fn parts(&self) -> (&[u8], &[u8]) {
        (&self.head, &self.body)
    }
}

/// A record header: name and value.
type Header<'a> = (&'a [u8], &'a [u8]);

/// Builds Kafka records from stored events into one reused encoder.
pub struct RecordWriter {
    encoder: BatchEncoder,
    out: Vec<u8>,
    node_id: Arc<str>,
    id: Vec<u8>,
    original_ts: Vec<u8>,
}

impl RecordWriter {
    pub fn new(node_id: Arc<str>) -> Self {
        Self {
            encoder: BatchEncoder::default(),
            out: Vec::new(),
            node_id,
            id: Vec::new(),
            original_ts: Vec::new(),
        }
    }

    /// The record batch of `batch`'s items, encoded into the buffers of
    /// `spare` (no copy after compression).
    #[allow(clippy::too_many_arguments)]
    pub fn batch(
        &mut self,
        blocks: &[Block],
        items: &[Item],
        batch: &Batch,
        clock: &Reading,
        fields: ProducerFields,
        codec: Codec,
        spare: EncodedBatch,
    ) -> EncodedBatch {
        let from = batch.start as usize;
        for item in &items[from..from + batch.len as usize] {
            let Some(event) = blocks[item.block as usize].event_at(item.offset as usize) else {
                continue;
            };
            self.push(&event, item.seq, clock);
        }
        let EncodedBatch { mut head, body } = spare;
        let uncompressed = !self
            .encoder
            .finish_parts(codec, fields, &mut head)
            .1
            .is_empty();
        let body = if uncompressed {
            self.encoder.take_records(body)
        } else {
            body
        };
        EncodedBatch { head, body }
    }

    /// Add one event: the producer's headers exactly as sent (order and
    /// duplicates kept), then the clock header if any, then `ferry-id`.
    pub fn push(&mut self, event: &crate::event::Event<'_>, seq: i64, clock: &Reading) {
        self.push_with(event, Some(seq), clock, &[]);
    }

    /// A dead letter for the DLQ topic: as [`RecordWriter::push`], without
    /// `ferry-id`, with the `extra` headers (reason, time, original topic).
    pub fn push_dead_letter(
        &mut self,
        event: &crate::event::Event<'_>,
        clock: &Reading,
        extra: &[(&[u8], &[u8])],
    ) {
        self.push_with(event, None, clock, extra);
    }

    /// A record of ferry's own (a loss marker).
    pub fn push_plain(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) {
        self.encoder
            .push(timestamp_ms, key, value, headers.iter().copied());
    }

    fn push_with(
        &mut self,
        event: &crate::event::Event<'_>,
        seq: Option<i64>,
        clock: &Reading,
        extra: &[(&[u8], &[u8])],
    ) {
        match seq {
            Some(seq) => write_ferry_id(&mut self.id, &self.node_id, seq),
            None => self.id.clear(),
        }
        let (timestamp_ms, clock_header): (i64, Option<Header<'_>>) =
            match crate::clock::correct(event.timestamp_ms, event.clock, clock) {
                Timestamp::AsRecorded(ts) => (ts, None),
                Timestamp::Corrected {
                    corrected,
                    original,
                } => {
                    crate::stats::TIMESTAMPS_CORRECTED.fetch_add(1, Relaxed);
                    self.original_ts.clear();
                    let _ = write!(self.original_ts, "{original}");
                    (
                        corrected,
                        Some((TS_CORRECTED_HEADER.as_bytes(), &self.original_ts[..])),
                    )
                }
                Timestamp::Unsynced(ts) => (ts, Some((TS_UNSYNCED_HEADER.as_bytes(), &b"1"[..]))),
            };
        let headers = event
            .raw_header_iter()
            .chain(clock_header)
            .chain(extra.iter().copied())
            .chain(seq.map(|_| (FERRY_ID_HEADER.as_bytes(), &self.id[..])));
        self.encoder
            .push(timestamp_ms, event.key, event.value, headers);
    }

    /// Finish the records pushed so far into one batch of its own (for
    /// ferry's side records: loss markers, dead letters).
    pub fn finish(&mut self, fields: ProducerFields, codec: Codec) -> Bytes {
        self.encoder.finish_into(codec, fields, &mut self.out);
        let bytes = Bytes::copy_from_slice(&self.out);
        // A burst's one huge batch need not stay with the writer.
        if self.out.capacity() > 4 * 1024 * 1024 {
            self.out = Vec::new();
        }
        bytes
    }
}
