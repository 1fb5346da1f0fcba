//! One UDP socket: each datagram holds lines or frames, never answered;
//! what is refused is counted and logged, rate-limited.

use super::config::{Format, ListenerConfig};
use super::door::{Context, FRAME_OVERHEAD, admit, stamp_time, too_large};
use super::frame::{self, Check, Frame};
use super::line_connection::LineEvents;
use super::lines::LineSplitter;
use crate::log_limit::LogLimiter;
use crate::outbox::Appender;
use crate::shutdown::Shutdown;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::net::UdpSocket;

/// One UDP socket: each datagram holds lines, or frames (never answered).
pub(super) async fn serve_udp(
    sock: UdpSocket,
    cfg: ListenerConfig,
    ctx: Arc<Context>,
    mut shutdown: Shutdown,
) {
    let limiter = LogLimiter::default();
    let mut buf = vec![0u8; 65_536];
    let mut appender = Appender::new(&ctx.outbox);
    let max_frame = ctx.max_event_bytes + FRAME_OVERHEAD;
    loop {
        let n = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, _)) => n,
                Err(e) => {
                    limiter.warn(&format!("udp receive failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => return,
        };
        let datagram = &buf[..n];
        let now = ctx.clock.read();
        let mut batch = appender.batch(n + n / 4);
        match cfg.format {
            Format::Lines => {
                let events = LineEvents::new(&cfg, &ctx);
                LineSplitter::new(ctx.max_event_bytes).feed(datagram, true, |p| {
                    events.take(p, &now, &mut batch, &limiter)
                });
            }
            Format::Frames => {
                let mut rest = datagram;
                while !rest.is_empty() {
                    let Check::Complete { total } = frame::check(rest) else {
                        ctx.stats.rejected.fetch_add(1, Relaxed);
                        limiter.warn("udp frames listener: a datagram ends in a truncated frame; the rest of it was dropped");
                        break;
                    };
                    let body = &rest[4..total];
                    rest = &rest[total..];
                    let refusal = if body.len() > max_frame {
                        ctx.stats.received.fetch_add(1, Relaxed);
                        Some(too_large(body.len(), &ctx))
                    } else {
                        match frame::decode(body) {
                            // Nobody to answer over UDP.
                            Ok(Frame::Status) => continue,
                            Ok(Frame::Event(mut event, ts)) => {
                                ctx.stats.received.fetch_add(1, Relaxed);
                                match admit(&event, &ctx) {
                                    Ok(()) => {
                                        stamp_time(&mut event, ts, &now);
                                        event.encode_into(&mut batch.data);
                                        batch.count += 1;
                                        None
                                    }
                                    Err(refusal) => Some(refusal.message),
                                }
                            }
                            Err(e) => {
                                ctx.stats.received.fetch_add(1, Relaxed);
                                Some(e.message)
                            }
                        }
                    };
                    if let Some(msg) = refusal {
                        ctx.stats.rejected.fetch_add(1, Relaxed);
                        limiter.warn(&format!("udp frames listener: event refused: {msg}"));
                    }
                }
            }
        }
        if let Err(e) = appender.store(batch).await {
            limiter.warn(&format!("udp listener: events not stored: {e}"));
        }
    }
}
