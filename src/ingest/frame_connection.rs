//! One `frames` connection: frames read into one reused buffer, each
//! read one batch of the group commit, answered in order once committed.

use super::door::{Context, FRAME_OVERHEAD, READ_CHUNK, admit, stamp_time, too_large};
use super::frame::{self, Check, ErrorCode, Frame, Reply};
use crate::outbox::{Appender, StoreError};
use crate::shutdown::Shutdown;
use crate::stats::now_ms;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A producer that keeps the socket full gets larger reads, up to this:
/// each read becomes one batch of the group commit, so a busy connection
/// is stored in fewer, larger transactions (fewer flushes in `fsync`
/// durability, and less written per event).
const MAX_READ_CHUNK: usize = 512 * 1024;

/// What to answer, in order, once the batch of this round is committed.
enum Planned {
    Stored(u32),
    Refused(ErrorCode, String),
    Status,
}

/// A batch handed to the outbox whose answers are not written yet: what
/// each of its frames became, in stream order.
struct Unanswered {
    plan: Vec<Planned>,
    /// How storing its events went; `None` while they await the commit.
    outcome: Option<Result<(), StoreError>>,
}

/// One `frames` connection. It reads and decodes the next batch while the
/// outbox commits the last one (up to [`Appender::DEPTH`] batches), and
/// answers every batch in order once its commit is done.
pub(super) async fn serve_frames<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    ctx: &Context,
    mut shutdown: Shutdown,
) {
    let max_frame = ctx.max_event_bytes + FRAME_OVERHEAD;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut unanswered: VecDeque<Unanswered> = VecDeque::with_capacity(Appender::DEPTH + 1);
    // Plans of answered batches, reused.
    let mut spare_plans: Vec<Vec<Planned>> = Vec::new();
    let mut appender = Appender::new(&ctx.outbox);
    // Bytes of a refused oversized frame still to be discarded.
    let mut skip = 0usize;
    let mut chunk = READ_CHUNK;
    // End of stream, a read error, garbage (`fatal`) or shutdown: answer
    // what was read, then close.
    let mut closing = false;
    let mut fatal: Option<String> = None;
    loop {
        // Answer, in order, every batch whose outcome is known.
        while unanswered.front().is_some_and(|u| u.outcome.is_some()) {
            let Some(mut done) = unanswered.pop_front() else {
                break;
            };
            if !write_answers(&mut stream, &mut out, &mut done, ctx).await {
                return;
            }
            spare_plans.push(done.plan);
        }
        // From here on the oldest unanswered batch, if any, awaits its commit.
        if closing || unanswered.len() >= Appender::DEPTH {
            if unanswered.is_empty() {
                break;
            }
            let result = appender.answer().await;
            settle_oldest(&mut unanswered, result);
            continue;
        }
        if buf.capacity() - buf.len() < chunk / 4 {
            buf.reserve(chunk);
        }
        let room = buf.capacity() - buf.len();
        let n = tokio::select! {
            r = stream.read_buf(&mut buf) => r.unwrap_or(0),
            result = appender.answer(), if !unanswered.is_empty() => {
                settle_oldest(&mut unanswered, result);
                continue;
            }
            _ = shutdown.recv() => {
                closing = true;
                continue;
            }
        };
        if n == 0 {
            closing = true;
            continue;
        }
        // A full read means more is waiting: read more at once next time;
        // a light one lets the reads shrink back.
        if n == room && chunk < MAX_READ_CHUNK {
            chunk *= 2;
        } else if n < room / 4 && chunk > READ_CHUNK {
            chunk /= 2;
            if chunk == READ_CHUNK {
                // The burst is over: hand its buffers back.
                buf.shrink_to(READ_CHUNK.max(buf.len()));
                appender.release_spare();
            }
        }
        if skip > 0 {
            let d = skip.min(buf.len());
            buf.drain(..d);
            skip -= d;
        }
        let now = ctx.clock.read();
        let mut plan = spare_plans.pop().unwrap_or_default();
        // Room for everything this read holds: no growth per event.
        let mut batch = appender.batch(buf.len() + buf.len() / 4);
        let mut pos = 0usize;
        while pos < buf.len() {
            let total = match frame::check(&buf[pos..]) {
                Check::Incomplete(_) => {
                    // An oversized frame is refused as soon as its length is
                    // known, and its bytes are skipped as they arrive.
                    match frame::declared_len(&buf[pos..]) {
                        Some(len) if len > max_frame => {
                            ctx.stats.received.fetch_add(1, Relaxed);
                            ctx.stats.rejected.fetch_add(1, Relaxed);
                            plan.push(Planned::Refused(ErrorCode::TooLarge, too_large(len, ctx)));
                            skip = 4 + len - (buf.len() - pos);
                            pos = buf.len();
                        }
                        _ => {}
                    }
                    break;
                }
                Check::Garbage { declared } => {
                    fatal = Some(format!(
                        "garbage on the stream at byte {pos} of this read: a frame length of {declared} bytes (limit {}); is the client speaking ferry frames version {}?",
                        frame::HARD_MAX_FRAME,
                        frame::VERSION
                    ));
                    closing = true;
                    break;
                }
                Check::Complete { total } => total,
            };
            let body = &buf[pos + 4..pos + total];
            pos += total;
            if body.len() > max_frame {
                ctx.stats.received.fetch_add(1, Relaxed);
                ctx.stats.rejected.fetch_add(1, Relaxed);
                plan.push(Planned::Refused(
                    ErrorCode::TooLarge,
                    too_large(body.len(), ctx),
                ));
                continue;
            }
            match frame::decode(body) {
                Ok(Frame::Status) => plan.push(Planned::Status),
                Ok(Frame::Event(mut event, ts)) => {
                    ctx.stats.received.fetch_add(1, Relaxed);
                    if let Err(refusal) = admit(&event, ctx) {
                        ctx.stats.rejected.fetch_add(1, Relaxed);
                        plan.push(Planned::Refused(refusal.code, refusal.message));
                        continue;
                    }
                    stamp_time(&mut event, ts, &now);
                    event.encode_into(&mut batch.data);
                    batch.count += 1;
                    match plan.last_mut() {
                        Some(Planned::Stored(n)) => *n += 1,
                        _ => plan.push(Planned::Stored(1)),
                    }
                }
                Err(e) => {
                    // The length prefix was sound, so the stream stays in
                    // step: refuse this frame and go on with the next.
                    ctx.stats.received.fetch_add(1, Relaxed);
                    ctx.stats.rejected.fetch_add(1, Relaxed);
                    plan.push(Planned::Refused(e.code, e.message));
                }
            }
        }
        buf.drain(..pos);
        let outcome = match appender.submit(batch).await {
            Ok(true) => None,
            Ok(false) => Some(Ok(())),
            Err(e) => Some(Err(e)),
        };
        unanswered.push_back(Unanswered { plan, outcome });
    }
    if let Some(msg) = &fatal {
        out.clear();
        Reply::Fatal(ErrorCode::Malformed, msg).encode_into(&mut out);
        if stream.write_all(&out).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    }
}

/// The oldest batch waiting for its commit has its answer.
fn settle_oldest(unanswered: &mut VecDeque<Unanswered>, result: Result<(), StoreError>) {
    if let Some(u) = unanswered.iter_mut().find(|u| u.outcome.is_none()) {
        u.outcome = Some(result);
    }
}

/// Write the answers for one batch's frames; false if the client is gone.
async fn write_answers<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    batch: &mut Unanswered,
    ctx: &Context,
) -> bool {
    out.clear();
    for p in batch.plan.drain(..) {
        match p {
            Planned::Stored(n) => match &batch.outcome {
                Some(Err(e)) => Reply::Error(n, store_code(e), &e.to_string()).encode_into(out),
                // Answered only once the outcome is known: stored.
                _ => Reply::Ack(n).encode_into(out),
            },
            Planned::Refused(code, msg) => Reply::Error(1, code, &msg).encode_into(out),
            Planned::Status => {
                let snap = ctx.stats.snapshot(&ctx.node_id, now_ms());
                let json = serde_json::to_string(&snap).unwrap_or_default();
                Reply::Status(&json).encode_into(out)
            }
        }
    }
    out.is_empty() || stream.write_all(out).await.is_ok()
}

fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Full { .. } => ErrorCode::OutboxFull,
        StoreError::Storage(_) => ErrorCode::Storage,
        StoreError::Closed => ErrorCode::ShuttingDown,
    }
}
