//! One `lines` connection: each `\n`-terminated line is one event of the
//! listener's topic (and key); nothing is answered.

use super::config::ListenerConfig;
use super::door::{Context, READ_CHUNK};
use super::lines::{LineSplitter, Piece};
use crate::clock::Reading;
use crate::event::Event;
use crate::log_limit::LogLimiter;
use crate::outbox::{AppendBatch, Appender};
use crate::shutdown::Shutdown;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// One `lines` connection: each `\n`-terminated line is one event.
pub(super) async fn serve_lines<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    ctx: &Context,
    cfg: &ListenerConfig,
    mut shutdown: Shutdown,
    limiter: &LogLimiter,
) {
    let mut lines = LineSplitter::new(ctx.max_event_bytes);
    let events = LineEvents::new(cfg, ctx);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut appender = Appender::new(&ctx.outbox);
    loop {
        buf.clear();
        let n = tokio::select! {
            r = stream.read_buf(&mut buf) => r.unwrap_or(0),
            _ = shutdown.recv() => 0,
        };
        let at_eof = n == 0;
        let mut batch = appender.batch(buf.len() + buf.len() / 4);
        let now = ctx.clock.read();
        lines.feed(&buf, at_eof, |p| events.take(p, &now, &mut batch, limiter));
        if let Err(e) = appender.store(batch).await {
            limiter.warn(&format!("lines listener: events not stored: {e}"));
        }
        if at_eof {
            return;
        }
    }
}

/// Turns the lines of one read into events in `batch`; an over-long line
/// is counted and logged.
pub(super) struct LineEvents<'c> {
    pub(super) topic: String,
    pub(super) key: Option<Vec<u8>>,
    pub(super) ctx: &'c Context,
}

impl<'c> LineEvents<'c> {
    pub(super) fn new(cfg: &ListenerConfig, ctx: &'c Context) -> Self {
        Self {
            topic: cfg.topic.clone().unwrap_or_default(),
            key: cfg.key.as_ref().map(|k| k.as_bytes().to_vec()),
            ctx,
        }
    }

    pub(super) fn take(
        &self,
        piece: Piece<'_>,
        now: &Reading,
        batch: &mut AppendBatch,
        limiter: &LogLimiter,
    ) {
        self.ctx.stats.received.fetch_add(1, Relaxed);
        match piece {
            Piece::TooLong => {
                self.ctx.stats.rejected.fetch_add(1, Relaxed);
                limiter.warn(&format!(
                    "lines listener for topic {}: a line longer than {} bytes (ingest.max_event_bytes) was discarded",
                    self.topic, self.ctx.max_event_bytes
                ));
            }
            Piece::Line(value) => {
                let event = Event {
                    topic: &self.topic,
                    key: self.key.as_deref(),
                    headers: &[],
                    value,
                    timestamp_ms: now.wall_ms,
                    clock: now.stamp(),
                };
                event.encode_into(&mut batch.data);
                batch.count += 1;
            }
        }
    }
}
