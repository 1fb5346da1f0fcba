//! Kafka's record batch (message format v2), encoded straight from borrowed
//! event parts into buffers the encoder keeps: no heap allocation per
//! record. Compression is `none`, LZ4 in the frame format Kafka reads
//! (64 KiB independent blocks, no checksums but the header's), written by
//! hand so that lz4_flex's reusable hash table serves every block, or zstd
//! (one frame, through a compression context kept for the next batch).
//!
//! Layout (all big-endian; see the Kafka protocol guide, "Record Batch"):
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 = 2
//! crc u32 (CRC-32C of attributes..end) | attributes i16 | lastOffsetDelta i32
//! baseTimestamp i64 | maxTimestamp i64 | producerId i64 | producerEpoch i16
//! baseSequence i32 | recordCount i32 | records (compressed as a whole)
//! ```

use super::crc_combine;
use crate::varint::{put_signed as put_varint, signed_len as varint_len};

/// Bytes before the records.
pub const HEADER_LEN: usize = 61;
/// Offset of the attributes field: the CRC covers everything from here.
const ATTRIBUTES_AT: usize = 21;
/// Records are compressed in independent LZ4 blocks of at most this size.
const LZ4_BLOCK: usize = 64 * 1024;
/// LZ4 frame: magic, FLG (version 1, independent blocks), BD (64 KiB
/// blocks) and the header checksum, `(xxh32(FLG, BD) >> 8) & 0xff`, which
/// is a constant for these flags (checked by a test against lz4_flex).
const LZ4_FRAME_HEADER: [u8; 7] = [0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82];

/// Record batch compression (Kafka's codec numbers in the attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Lz4,
    /// zstd at this level; brokers read it from Produce v7 (Kafka 2.1).
    Zstd(i32),
}

impl Codec {
    fn attribute(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 3,
            Codec::Zstd(_) => 4,
        }
    }
}

impl Codec {
    /// Kafka's codec number (the attributes' low bits).
    pub fn number(self) -> u8 {
        self.attribute() as u8
    }
}

/// What the batch header says of its records: how many, and their first
/// and largest timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordsShape {
    pub count: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
}

/// The 61-byte header of a batch whose records were compressed earlier
/// (codec number `codec`, `records_len` bytes whose CRC-32C is
/// `records_crc`), written into `out` (cleared first). The batch CRC is
/// combined from the header's and the records' (CRC-32C combines), so
/// the records are not read again.
pub fn write_stored_run_header(
    out: &mut Vec<u8>,
    codec: u8,
    producer: ProducerFields,
    shape: RecordsShape,
    records_len: usize,
    records_crc: u32,
) {
    out.clear();
    out.resize(HEADER_LEN, 0);
    write_header(out, i16::from(codec), producer, shape, records_len);
    let head = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
    let crc = crc_combine::crc32c_combine(head, records_crc, records_len);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// The batch header for `records_len` bytes of (compressed) records, all
/// but its CRC (the CRC-32C of the attributes onwards, which the caller
/// computes once the header is written).
fn write_header(
    header: &mut [u8],
    attributes: i16,
    producer: ProducerFields,
    shape: RecordsShape,
    records_len: usize,
) {
    let batch_length = (HEADER_LEN + records_len - 12) as i32;
    let mut h = header;
    put_i64(&mut h, 0); // base offset: the broker assigns offsets
    put_i32(&mut h, batch_length);
    put_i32(&mut h, -1); // partition leader epoch
    h[0] = 2; // magic
    h = &mut h[5..]; // magic, then the CRC, written last
    put_i16(&mut h, attributes);
    put_i32(&mut h, shape.count - 1);
    put_i64(&mut h, shape.base_timestamp);
    put_i64(&mut h, shape.max_timestamp);
    put_i64(&mut h, producer.producer_id);
    put_i16(&mut h, producer.producer_epoch);
    put_i32(&mut h, producer.base_sequence);
    put_i32(&mut h, shape.count);
}

/// The oldest Produce version a broker reads zstd batches in.
pub const ZSTD_MIN_PRODUCE_VERSION: i16 = 7;

/// The idempotent producer's fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerFields {
    /// A producer without idempotence.
    pub const NONE: ProducerFields = ProducerFields {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// Builds one record batch at a time; its buffers and LZ4 table are kept
/// for the next batch.
pub struct BatchEncoder {
    /// The records, uncompressed.
    records: Vec<u8>,
    /// LZ4 hash tables for blocks under 64 KiB and for full blocks.
    small_table: lz4_flex::block::CompressTable,
    large_table: lz4_flex::block::CompressTable,
    /// Where LZ4 compresses a block (a block's bound, kept).
    lz4_room: Vec<u8>,
    /// zstd's context, made on the first zstd batch and kept.
    zstd: Option<(i32, zstd::bulk::Compressor<'static>)>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    /// The records belong to a finished batch (sent from this buffer, see
    /// [`BatchEncoder::finish_parts`]): the next record starts a new one.
    finished: bool,
}

impl Default for BatchEncoder {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            small_table: lz4_flex::block::CompressTable::small(),
            // Made large by lz4_flex on the first full block.
            large_table: lz4_flex::block::CompressTable::small(),
            lz4_room: Vec::new(),
            zstd: None,
            count: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            finished: false,
        }
    }
}

impl BatchEncoder {
    /// Start a new batch (forgetting any unfinished one).
    pub fn clear(&mut self) {
        self.records.clear();
        self.count = 0;
        self.finished = false;
    }

    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// Uncompressed size of the records so far.
    pub fn records_len(&self) -> usize {
        self.records.len()
    }

    /// Append one record. `headers` is walked twice (size, then bytes), so
    /// it must yield the same headers each time it is cloned.
    pub fn push<'h, H>(&mut self, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8], headers: H)
    where
        H: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    {
        if self.finished {
            self.clear();
        }
        if self.count == 0 {
            self.base_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let ts_delta = timestamp_ms - self.base_timestamp;
        let offset_delta = i64::from(self.count);
        let mut header_count = 0i64;
        let mut headers_len = 0usize;
        for (name, value) in headers.clone() {
            header_count += 1;
            headers_len += bytes_len(name.len()) + bytes_len(value.len());
        }
        let body_len = 1
            + varint_len(ts_delta)
            + varint_len(offset_delta)
            + key.map_or(varint_len(-1), |k| bytes_len(k.len()))
            + bytes_len(value.len())
            + varint_len(header_count)
            + headers_len;
        let out = &mut self.records;
        out.reserve(body_len + 5);
        put_varint(out, body_len as i64);
        out.push(0); // record attributes
        put_varint(out, ts_delta);
        put_varint(out, offset_delta);
        match key {
            Some(k) => put_bytes(out, k),
            None => put_varint(out, -1),
        }
        put_bytes(out, value);
        put_varint(out, header_count);
        for (name, value) in headers {
            put_bytes(out, name);
            put_bytes(out, value);
        }
        self.count += 1;
    }

    /// Write the finished batch to `out` (cleared first) and start a new
    /// one. The batch is complete and checksummed.
    pub fn finish_into(&mut self, codec: Codec, producer: ProducerFields, out: &mut Vec<u8>) {
        out.clear();
        out.resize(HEADER_LEN, 0);
        match codec {
            Codec::None => out.extend_from_slice(&self.records),
            Codec::Lz4 => self.lz4_frame_into(out),
            Codec::Zstd(level) => self.zstd_frame_into(level, out),
        }
        let records_len = out.len() - HEADER_LEN;
        self.write_header(out, codec, producer, records_len);
        let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        self.clear();
    }

    /// The finished batch as two parts to send one after the other, with
    /// no copy of the records: uncompressed, the header (in `out`) and the
    /// encoder's own records (kept until the next record is pushed);
    /// compressed, the whole batch in `out` (compression wrote it there)
    /// and nothing.
    pub fn finish_parts<'a>(
        &'a mut self,
        codec: Codec,
        producer: ProducerFields,
        out: &'a mut Vec<u8>,
    ) -> (&'a [u8], &'a [u8]) {
        if codec != Codec::None {
            self.finish_into(codec, producer, out);
            return (out, &[]);
        }
        out.clear();
        out.resize(HEADER_LEN, 0);
        self.write_header(out, codec, producer, self.records.len());
        // The CRC covers the header's tail and then the records.
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[ATTRIBUTES_AT..]), &self.records);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        self.finished = true;
        (out, &self.records)
    }

    /// The header of the batch of the records pushed so far, `records_len`
    /// bytes in `codec`, at the front of `out` (all but its CRC).
    fn write_header(
        &self,
        out: &mut [u8],
        codec: Codec,
        producer: ProducerFields,
        records_len: usize,
    ) {
        write_header(
            &mut out[..HEADER_LEN],
            codec.attribute(),
            producer,
            self.shape(),
            records_len,
        );
    }

    /// The count and timestamps of the records pushed so far.
    fn shape(&self) -> RecordsShape {
        RecordsShape {
            count: self.count,
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
        }
    }

    /// The records pushed so far, compressed in `codec` and appended to
    /// `out`, with no batch header: what the outbox stores as a record
    /// run, to be sent later behind [`write_stored_run_header`]. Starts a
    /// new batch.
    pub fn finish_records(&mut self, codec: Codec, out: &mut Vec<u8>) -> RecordsShape {
        match codec {
            Codec::None => out.extend_from_slice(&self.records),
            Codec::Lz4 => self.lz4_frame_into(out),
            Codec::Zstd(level) => self.zstd_frame_into(level, out),
        }
        let shape = self.shape();
        self.clear();
        shape
    }

    /// The records as an LZ4 frame of independent blocks, appended to
    /// `out`. Each block is compressed into the encoder's own room (grown
    /// once, never zero-filled again) and copied after its size: copying
    /// the compressed block touches about a quarter of the bytes that
    /// zero-filling a block's bound in `out` for each batch did (that
    /// fill was 3 % of ferry's instructions in the benchmark's cachegrind
    /// run). Blocks under 64 KiB (every stored run's) use the small table,
    /// which is half the large one to clear.
    fn lz4_frame_into(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&LZ4_FRAME_HEADER);
        for chunk in self.records.chunks(LZ4_BLOCK) {
            let max = lz4_flex::block::get_maximum_output_size(chunk.len());
            if self.lz4_room.len() < max {
                self.lz4_room.resize(max, 0);
            }
            let table = if chunk.len() < u16::MAX as usize {
                &mut self.small_table
            } else {
                &mut self.large_table
            };
            let n =
                lz4_flex::block::compress_into_with_table(chunk, &mut self.lz4_room[..max], table);
            match n {
                // Stored compressed only when that is smaller.
                Ok(n) if n < chunk.len() => {
                    out.extend_from_slice(&(n as u32).to_le_bytes());
                    out.extend_from_slice(&self.lz4_room[..n]);
                }
                _ => {
                    let stored = chunk.len() as u32 | 0x8000_0000;
                    out.extend_from_slice(&stored.to_le_bytes());
                    out.extend_from_slice(chunk);
                }
            }
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // end mark
    }

    /// The records as one zstd frame (zstd's bound leaves room for
    /// incompressible data, so compression cannot run out of space).
    fn zstd_frame_into(&mut self, level: i32, out: &mut Vec<u8>) {
        let at = out.len();
        let bound = zstd::zstd_safe::compress_bound(self.records.len());
        out.resize(at + bound, 0);
        let compressor = match &mut self.zstd {
            Some((l, c)) if *l == level => Ok(c),
            slot => zstd::bulk::Compressor::new(level).map(|c| &mut slot.insert((level, c)).1),
        };
        let written = compressor.and_then(|c| c.compress_to_buffer(&self.records, &mut out[at..]));
        match written {
            Ok(n) => out.truncate(at + n),
            // Only a context that cannot be made (out of memory) gets
            // here: a frame of raw blocks is still valid zstd.
            Err(_) => {
                out.truncate(at);
                zstd_raw_frame_into(&self.records, out);
            }
        }
    }

    /// The records of a batch finished by [`BatchEncoder::finish_parts`],
    /// taken out to be sent; `with` (cleared) holds the next batch's.
    pub fn take_records(&mut self, with: Vec<u8>) -> Vec<u8> {
        let taken = std::mem::replace(&mut self.records, with);
        self.clear();
        taken
    }

    /// Hand back the records buffer's and the LZ4 room's memory (after a
    /// burst).
    pub fn release(&mut self) {
        self.records = Vec::new();
        self.lz4_room = Vec::new();
    }
}

/// `data` as a zstd frame of raw (stored) blocks: what any zstd reader
/// takes, made without a compression context.
fn zstd_raw_frame_into(data: &[u8], out: &mut Vec<u8>) {
    // Magic, then a frame header descriptor with no content size, no
    // checksum, single segment off, and a window of 128 KiB (exponent 7).
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    out.push(0x00);
    out.push(7 << 3);
    let mut chunks = data.chunks(128 * 1024).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0, 0]); // one empty last raw block
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none() as u32;
        let header = last | ((chunk.len() as u32) << 3); // type 0: raw
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
}

/// Bytes of a length-prefixed field.
fn bytes_len(len: usize) -> usize {
    varint_len(len as i64) + len
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn put_i16(h: &mut &mut [u8], v: i16) {
    put_raw(h, &v.to_be_bytes());
}
fn put_i32(h: &mut &mut [u8], v: i32) {
    put_raw(h, &v.to_be_bytes());
}
fn put_i64(h: &mut &mut [u8], v: i64) {
    put_raw(h, &v.to_be_bytes());
}
fn put_raw(h: &mut &mut [u8], bytes: &[u8]) {
    let (head, rest) = std::mem::take(h).split_at_mut(bytes.len());
    head.copy_from_slice(bytes);
    *h = rest;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const NO_HEADERS: std::iter::Empty<(&[u8], &[u8])> = std::iter::empty();

    fn one_record_batch(codec: Codec) -> Vec<u8> {
        let mut enc = BatchEncoder::default();
        let headers: [(&[u8], &[u8]); 2] = [(b"h", b"1"), (b"h", b"2")];
        enc.push(1_700_000_000_000, Some(b"k"), b"v", headers.iter().copied());
        let mut out = Vec::new();
        let producer = ProducerFields {
            producer_id: 7,
            producer_epoch: 1,
            base_sequence: 42,
        };
        enc.finish_into(codec, producer, &mut out);
        out
    }

    /// The spec's layout, byte for byte, for one record with a key, a value
    /// and two headers of the same name.
    #[test]
    fn uncompressed_batch_matches_the_spec_layout() {
        let out = one_record_batch(Codec::None);
        let record: &[u8] = &[
            0x20, // length 16 (zigzag)
            0,    // attributes
            0,    // timestamp delta
            0,    // offset delta
            2, b'k', // key
            2, b'v', // value
            4,    // 2 headers
            2, b'h', 2, b'1', 2, b'h', 2, b'2',
        ];
        let mut expected = Vec::new();
        expected.extend_from_slice(&0i64.to_be_bytes());
        expected.extend_from_slice(&((HEADER_LEN - 12 + record.len()) as i32).to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.push(2);
        expected.extend_from_slice(&[0; 4]); // crc, checked below
        expected.extend_from_slice(&0i16.to_be_bytes());
        expected.extend_from_slice(&0i32.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        expected.extend_from_slice(&7i64.to_be_bytes());
        expected.extend_from_slice(&1i16.to_be_bytes());
        expected.extend_from_slice(&42i32.to_be_bytes());
        expected.extend_from_slice(&1i32.to_be_bytes());
        expected.extend_from_slice(record);
        let crc = u32::from_be_bytes(out[17..21].try_into().unwrap());
        expected[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(out, expected);
        // CRC-32C of "123456789" is the standard check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc, crc32c::crc32c(&out[ATTRIBUTES_AT..]));
    }

    #[test]
    fn a_batch_in_parts_is_the_batch_in_one_piece() {
        let fields = ProducerFields {
            producer_id: 42,
            producer_epoch: 3,
            base_sequence: 17,
        };
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd(3)] {
            let mut enc = BatchEncoder::default();
            let mut whole = Vec::new();
            let mut out = Vec::new();
            // Twice: the second batch must not carry the first's records.
            for round in 0..2 {
                let fill = |e: &mut BatchEncoder| {
                    for i in 0..50 {
                        let value = format!("{{\"round\":{round},\"reading\":{i}}}");
                        let headers = [(&b"h"[..], &b"v"[..])];
                        let at = 1_700_000_000_000 + i;
                        e.push(at, Some(b"k"), value.as_bytes(), headers.iter().copied());
                    }
                };
                fill(&mut enc);
                let mut twin = BatchEncoder::default();
                fill(&mut twin);
                twin.finish_into(codec, fields, &mut whole);
                let (head, rest) = enc.finish_parts(codec, fields, &mut out);
                assert_eq!([head, rest].concat(), whole, "{codec:?}, batch {round}");
                assert_eq!(rest.is_empty(), codec != Codec::None);
            }
        }
    }

    #[test]
    fn lz4_frame_header_checksum_is_what_lz4_computes() {
        let mut info = lz4_flex::frame::FrameInfo::new();
        info.block_size = lz4_flex::frame::BlockSize::Max64KB;
        info.block_mode = lz4_flex::frame::BlockMode::Independent;
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        std::io::Write::write_all(&mut enc, b"x").unwrap();
        let frame = enc.finish().unwrap();
        assert_eq!(&frame[..7], &LZ4_FRAME_HEADER);
    }

    #[test]
    fn lz4_batch_decompresses_to_the_uncompressed_records() {
        let plain = one_record_batch(Codec::None);
        let packed = one_record_batch(Codec::Lz4);
        assert_eq!(i16::from_be_bytes([packed[21], packed[22]]), 3);
        let mut records = Vec::new();
        lz4_flex::frame::FrameDecoder::new(&packed[HEADER_LEN..])
            .read_to_end(&mut records)
            .unwrap();
        assert_eq!(records, plain[HEADER_LEN..]);
        assert_eq!(
            u32::from_be_bytes(packed[17..21].try_into().unwrap()),
            crc32c::crc32c(&packed[ATTRIBUTES_AT..])
        );
    }

    #[test]
    fn zstd_batch_decompresses_to_the_uncompressed_records_at_each_level() {
        let plain = one_record_batch(Codec::None);
        for level in [1, 3, 19] {
            let packed = one_record_batch(Codec::Zstd(level));
            assert_eq!(i16::from_be_bytes([packed[21], packed[22]]), 4);
            let records = zstd::decode_all(&packed[HEADER_LEN..]).unwrap();
            assert_eq!(records, plain[HEADER_LEN..], "level {level}");
            assert_eq!(
                u32::from_be_bytes(packed[17..21].try_into().unwrap()),
                crc32c::crc32c(&packed[ATTRIBUTES_AT..])
            );
        }
    }

    #[test]
    fn a_raw_zstd_frame_is_read_by_zstd() {
        for len in [0, 1, 128 * 1024, 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut frame = Vec::new();
            zstd_raw_frame_into(&data, &mut frame);
            assert_eq!(zstd::decode_all(&frame[..]).unwrap(), data, "{len} bytes");
        }
    }

    #[test]
    fn incompressible_blocks_are_stored_among_compressed_ones_and_round_trip() {
        // Noise, then text, then noise: stored, compressed, stored blocks,
        // each written where the one before ended.
        let mut rng = crate::backoff::SplitMix64(7);
        let mut value = vec![0u8; 3 * LZ4_BLOCK];
        for (i, b) in value.iter_mut().enumerate() {
            if !(LZ4_BLOCK..2 * LZ4_BLOCK).contains(&i) {
                *b = rng.next_u64() as u8;
            }
        }
        value[LZ4_BLOCK..2 * LZ4_BLOCK].fill(b'x');
        let mut enc = BatchEncoder::default();
        let mut packed = Vec::new();
        // Twice into the same buffer: the second batch finds it long.
        for _ in 0..2 {
            enc.push(1, None, &value, NO_HEADERS);
            let mut plain = BatchEncoder::default();
            plain.push(1, None, &value, NO_HEADERS);
            let mut whole = Vec::new();
            plain.finish_into(Codec::None, ProducerFields::NONE, &mut whole);
            enc.finish_into(Codec::Lz4, ProducerFields::NONE, &mut packed);
            let mut records = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&packed[HEADER_LEN..])
                .read_to_end(&mut records)
                .unwrap();
            assert_eq!(records, whole[HEADER_LEN..]);
            let crc = crc32c::crc32c(&packed[ATTRIBUTES_AT..]);
            assert_eq!(packed[17..21], crc.to_be_bytes());
        }
    }

    #[test]
    fn large_batches_span_several_lz4_blocks_and_round_trip() {
        let mut enc = BatchEncoder::default();
        let value: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for i in 0..300 {
            enc.push(i, None, &value, NO_HEADERS);
        }
        let raw_len = enc.records_len();
        assert!(raw_len > 2 * LZ4_BLOCK);
        let mut plain = Vec::new();
        let mut enc2 = BatchEncoder::default();
        for i in 0..300 {
            enc2.push(i, None, &value, NO_HEADERS);
        }
        enc2.finish_into(Codec::None, ProducerFields::NONE, &mut plain);
        let mut packed = Vec::new();
        enc.finish_into(Codec::Lz4, ProducerFields::NONE, &mut packed);
        let mut records = Vec::new();
        lz4_flex::frame::FrameDecoder::new(&packed[HEADER_LEN..])
            .read_to_end(&mut records)
            .unwrap();
        assert_eq!(records, plain[HEADER_LEN..]);
        // Last offset delta and the max timestamp.
        assert_eq!(i32::from_be_bytes(packed[23..27].try_into().unwrap()), 299);
        assert_eq!(i64::from_be_bytes(packed[35..43].try_into().unwrap()), 299);
    }
}
