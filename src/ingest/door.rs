//! What every listener does at the door: the shared context, the checks
//! every event passes (topic, size), and its timestamp.

use super::frame::ErrorCode;
use crate::clock::{Reading, SystemClock};
use crate::event::{Event, validate_topic};
use crate::outbox::Outbox;
use crate::stats::Stats;
use std::sync::Arc;

/// Read this much at a time; a frame larger than this grows the buffer.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// Room for topic, key length, timestamp and header framing around
/// `max_event_bytes` of payload.
pub(super) const FRAME_OVERHEAD: usize = 1024;

/// What every connection needs, shared.
pub struct Context {
    pub outbox: Outbox,
    pub clock: SystemClock,
    pub stats: Arc<Stats>,
    pub max_event_bytes: usize,
    pub node_id: String,
}

/// An event refused at the door: the code a `frames` client gets, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(super) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

/// A client's timestamp is kept as sent; otherwise ferry's, marked when
/// the wall clock is not synchronised so it can be corrected later.
pub(super) fn stamp_time(event: &mut Event<'_>, client_ts: Option<i64>, now: &Reading) {
    match client_ts {
        Some(ts) => event.timestamp_ms = ts,
        None => {
            event.timestamp_ms = now.wall_ms;
            event.clock = now.stamp();
        }
    }
}

pub(super) fn too_large(len: usize, ctx: &Context) -> String {
    format!(
        "event frame of {len} bytes refused: events may carry at most {} bytes of key, headers and value (ingest.max_event_bytes)",
        ctx.max_event_bytes
    )
}

/// The checks every event passes at the door.
pub(super) fn admit(event: &Event<'_>, ctx: &Context) -> Result<(), Refusal> {
    if let Err(e) = validate_topic(event.topic) {
        return Err(Refusal {
            code: ErrorCode::InvalidTopic,
            message: e.to_string(),
        });
    }
    let len = event.payload_len();
    if len > ctx.max_event_bytes {
        return Err(Refusal {
            code: ErrorCode::TooLarge,
            message: format!(
                "event of {len} bytes (key + headers + value) refused: the limit is {} bytes (ingest.max_event_bytes)",
                ctx.max_event_bytes
            ),
        });
    }
    Ok(())
}
