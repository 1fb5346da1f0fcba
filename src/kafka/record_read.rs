//! Reading record batches (magic 2) back: what `ferry fleet` fetches. Every
//! length is checked against the bytes there before it is used, and a
//! batch decompresses to at most a bound, so a hostile or broken answer
//! costs an error, never a crash or an unbounded allocation. Codecs: none,
//! LZ4 (frame format) and zstd, what ferry writes; a gzip or snappy batch
//! is skipped and counted. Control batches (transaction markers) carry no
//! records. A batch cut off at the end of a fetch is normal (the broker
//! fills the byte limit): reading stops there.

use std::io::Read;

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// What a fetch's record bytes held.
#[derive(Debug, Default)]
pub struct ReadBatches {
    pub records: Vec<ReadRecord>,
    /// Batches in a codec ferry does not read (gzip, snappy).
    pub skipped_batches: usize,
    /// The offset to fetch from next (after the last whole batch).
    pub next_offset: Option<i64>,
}

/// Batch header up to and including the record count.
const HEADER: usize = 61;

/// Why bytes read back are not the batches or records they claim to be.
#[derive(Debug)]
pub enum ReadError {
    /// A batch's length field is below a header's size.
    BatchLength {
        base_offset: i64,
        length: i32,
    },
    /// Not a v2 record batch.
    Magic {
        base_offset: i64,
        magic: u8,
    },
    /// A batch's records could not be decompressed or read.
    InBatch {
        base_offset: i64,
        source: Box<ReadError>,
    },
    /// A record's length field disagrees with what it holds.
    RecordLength {
        actual: usize,
        declared: i64,
    },
    EndsEarly,
    VarintTooLong,
    /// Uncompressed records over the limit.
    RecordsTooLarge {
        len: usize,
        max: usize,
    },
    /// Compressed records that decompress to more than the limit.
    DecompressesTooLarge {
        max: usize,
    },
    Decompress(std::io::Error),
    UnknownCodec(u8),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::BatchLength {
                base_offset,
                length,
            } => write!(f, "a batch at offset {base_offset} claims {length} bytes"),
            ReadError::Magic { base_offset, magic } => write!(
                f,
                "a batch at offset {base_offset} has magic {magic} (only v2 batches are read)"
            ),
            ReadError::InBatch {
                base_offset,
                source,
            } => write!(f, "batch at offset {base_offset}: {source}"),
            ReadError::RecordLength { actual, declared } => {
                write!(f, "a record is {actual} bytes, its length says {declared}")
            }
            ReadError::EndsEarly => f.write_str("a record ends early"),
            ReadError::VarintTooLong => f.write_str("a varint longer than 64 bits"),
            ReadError::RecordsTooLarge { len, max } => {
                write!(f, "records of {len} bytes, more than {max}")
            }
            ReadError::DecompressesTooLarge { max } => {
                write!(f, "a batch decompresses to more than {max} bytes")
            }
            ReadError::Decompress(e) => write!(f, "cannot decompress a batch: {e}"),
            ReadError::UnknownCodec(c) => write!(f, "codec {c} is not one ferry writes"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Decode the batches in `data` (a fetch answer's records), each
/// decompressing to at most `max_batch_bytes`.
pub fn read_batches(data: &[u8], max_batch_bytes: usize) -> Result<ReadBatches, ReadError> {
    let mut out = ReadBatches::default();
    let mut at = 0usize;
    while data.len() - at >= 12 {
        let base_offset = be_i64(&data[at..]);
        let length = be_i32(&data[at + 8..]);
        if length < (HEADER - 12) as i32 {
            return Err(ReadError::BatchLength {
                base_offset,
                length,
            });
        }
        let end = at + 12 + length as usize;
        if end > data.len() {
            break; // cut off by the fetch's byte limit
        }
        let batch = &data[at..end];
        let magic = batch[16];
        if magic != 2 {
            return Err(ReadError::Magic { base_offset, magic });
        }
        let attributes = be_i16(&batch[21..]);
        let last_offset_delta = be_i32(&batch[23..]);
        let base_timestamp = be_i64(&batch[27..]);
        let count = be_i32(&batch[57..]);
        out.next_offset = Some(
            base_offset
                .saturating_add(i64::from(last_offset_delta))
                .saturating_add(1),
        );
        at = end;
        if attributes & 0x20 != 0 {
            continue; // a control batch
        }
        let body = &batch[HEADER..];
        let plain;
        let records: &[u8] = match attributes & 0x7 {
            0 => body,
            codec @ (3 | 4) => {
                plain = decompress_records(codec as u8, body, max_batch_bytes).map_err(|e| {
                    ReadError::InBatch {
                        base_offset,
                        source: Box::new(e),
                    }
                })?;
                &plain
            }
            _ => {
                out.skipped_batches += 1;
                continue;
            }
        };
        let mut r = Cursor {
            data: records,
            at: 0,
        };
        for _ in 0..count.max(0) {
            let len = r.varint()?;
            let start = r.at;
            let _attributes = r.byte()?;
            let ts_delta = r.varint()?;
            let offset_delta = r.varint()?;
            let key = r.nullable_bytes()?;
            let value = r.nullable_bytes()?;
            let headers = r.varint()?;
            for _ in 0..headers.max(0) {
                r.nullable_bytes()?;
                r.nullable_bytes()?;
            }
            if r.at - start != len as usize {
                return Err(ReadError::InBatch {
                    base_offset,
                    source: Box::new(ReadError::RecordLength {
                        actual: r.at - start,
                        declared: len,
                    }),
                });
            }
            out.records.push(ReadRecord {
                offset: base_offset.saturating_add(offset_delta),
                timestamp_ms: base_timestamp.saturating_add(ts_delta),
                key,
                value,
            });
        }
    }
    Ok(out)
}

/// The records section of a batch in codec `codec` (Kafka's number: 0
/// none, 3 LZ4 frame, 4 zstd), decompressed to at most `max` bytes.
pub fn decompress_records(codec: u8, body: &[u8], max: usize) -> Result<Vec<u8>, ReadError> {
    match codec {
        0 if body.len() <= max => Ok(body.to_vec()),
        0 => Err(ReadError::RecordsTooLarge {
            len: body.len(),
            max,
        }),
        3 => bounded(lz4_flex::frame::FrameDecoder::new(body), max),
        4 => {
            let decoder = zstd::stream::read::Decoder::new(body).map_err(ReadError::Decompress)?;
            bounded(decoder, max)
        }
        other => Err(ReadError::UnknownCodec(other)),
    }
}

/// One record of an uncompressed records section, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Read the record at the front of `data` (an uncompressed records
/// section), its headers into `headers` (cleared first; a null header
/// value reads as empty); returns the record and the bytes after it.
pub fn read_record<'a>(
    data: &'a [u8],
    headers: &mut Vec<(&'a [u8], &'a [u8])>,
) -> Result<(RecordRef<'a>, &'a [u8]), ReadError> {
    headers.clear();
    let mut r = Cursor { data, at: 0 };
    let len = r.varint()?;
    let start = r.at;
    let _attributes = r.byte()?;
    let timestamp_delta = r.varint()?;
    let offset_delta = r.varint()?;
    let key = r.slice()?;
    let value = r.slice()?;
    let count = r.varint()?;
    for _ in 0..count.max(0) {
        let name = r.slice()?.unwrap_or_default();
        let value = r.slice()?.unwrap_or_default();
        headers.push((name, value));
    }
    if usize::try_from(len).ok() != Some(r.at - start) {
        return Err(ReadError::RecordLength {
            actual: r.at - start,
            declared: len,
        });
    }
    let record = RecordRef {
        timestamp_delta,
        offset_delta,
        key,
        value,
    };
    Ok((record, &data[r.at..]))
}

/// Read `from` to its end, refusing more than `max` bytes.
fn bounded(from: impl Read, max: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    from.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(ReadError::Decompress)?;
    if out.len() > max {
        return Err(ReadError::DecompressesTooLarge { max });
    }
    Ok(out)
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]))
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes(b[..4].try_into().unwrap_or([0; 4]))
}

fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes(b[..2].try_into().unwrap_or([0; 2]))
}

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip(&mut self, n: usize) -> Result<(), ReadError> {
        if self.data.len() - self.at < n {
            return Err(ReadError::EndsEarly);
        }
        self.at += n;
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, ReadError> {
        let b = *self.data.get(self.at).ok_or(ReadError::EndsEarly)?;
        self.at += 1;
        Ok(b)
    }

    /// A zigzag varint (at most 64 bits).
    fn varint(&mut self) -> Result<i64, ReadError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(crate::varint::unzigzag(v));
            }
        }
        Err(ReadError::VarintTooLong)
    }

    /// Nullable bytes, borrowed.
    fn slice(&mut self) -> Result<Option<&'a [u8]>, ReadError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let start = self.at;
        self.skip(len as usize)?;
        Ok(Some(&self.data[start..self.at]))
    }

    fn nullable_bytes(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let start = self.at;
        self.skip(len as usize)?;
        Ok(Some(self.data[start..self.at].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::record_batch::{BatchEncoder, Codec, ProducerFields};

    fn batch(codec: Codec, n: usize) -> Vec<u8> {
        let mut enc = BatchEncoder::default();
        for i in 0..n {
            let key = format!("k{i}");
            let value = format!("value {i}");
            enc.push(
                1_000 + i as i64,
                Some(key.as_bytes()),
                value.as_bytes(),
                [(&b"h"[..], &b"v"[..])].into_iter(),
            );
        }
        let mut out = Vec::new();
        enc.finish_into(codec, ProducerFields::NONE, &mut out);
        out
    }

    #[test]
    fn reads_back_what_ferry_writes_in_each_codec() {
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd(3)] {
            let mut data = batch(codec, 5);
            data.extend(batch(codec, 2));
            let got = read_batches(&data, 1 << 20).unwrap();
            assert_eq!(got.records.len(), 7, "{codec:?}");
            assert_eq!(got.records[4].key.as_deref(), Some(&b"k4"[..]));
            assert_eq!(got.records[4].value.as_deref(), Some(&b"value 4"[..]));
            assert_eq!(got.records[4].timestamp_ms, 1_004);
        }
    }

    #[test]
    fn a_cut_off_batch_ends_the_read_and_garbage_is_an_error() {
        let data = batch(Codec::Lz4, 3);
        let got = read_batches(&data[..data.len() - 1], 1 << 20).unwrap();
        assert!(got.records.is_empty() && got.next_offset.is_none());
        let mut bad = data.clone();
        bad[16] = 1; // magic
        assert!(read_batches(&bad, 1 << 20).is_err());
        assert!(read_batches(&data, 10).is_err(), "decompressed size bound");
        for cut in 0..data.len() {
            let _ = read_batches(&data[..cut], 1 << 20);
        }
    }
}
