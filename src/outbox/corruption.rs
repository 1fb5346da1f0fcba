//! Why a stored row read back is not what ferry wrote: the reason a block
//! or run is quarantined (and the text kept with it in `quarantine`).

use crate::event::DecodeError;
use crate::kafka::record_read::ReadError;

/// What is wrong with a stored block or run.
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    #[error("checksum mismatch")]
    Checksum,
    /// The row's own size field cannot be true of its payload.
    #[error("declared size {declared} bytes is impossible for a {payload}-byte payload")]
    ImpossibleSize { declared: usize, payload: usize },
    #[error("decompression failed: {0}")]
    Decompress(#[from] lz4_flex::block::DecompressError),
    #[error("decompressed to {got} bytes, expected {expected}")]
    DecompressedSize { got: usize, expected: usize },
    #[error("event {index} is of topic {found:?}, in a block of {topic:?}")]
    ForeignTopic {
        index: u32,
        found: String,
        topic: String,
    },
    #[error("event {index} does not decode: {source}")]
    Event { index: u32, source: DecodeError },
    #[error("{extra} trailing bytes after {count} events")]
    TrailingEvents { extra: usize, count: u32 },
    #[error("stored in format {0}, unknown to this ferry")]
    UnknownFormat(i64),
    #[error("not a record run")]
    NotARun,
    #[error("a run of {records} records in a row of {count}")]
    RunCount { records: i32, count: u32 },
    /// A run's records do not decompress.
    #[error("{0}")]
    Records(ReadError),
    #[error("record {index}: {source}")]
    Record { index: usize, source: ReadError },
    #[error("record {index} has offset delta {delta}")]
    OffsetDelta { index: usize, delta: i64 },
    #[error("record {index} has no {header} header last")]
    NoFerryId { index: usize, header: &'static str },
    #[error("{extra} bytes after {count} records")]
    TrailingRecords { extra: usize, count: usize },
}
