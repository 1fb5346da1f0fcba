//! Getting events in: `unix`, `tcp` and `udp` listeners speaking `frames`
//! (acked after commit) or `lines` (topic/key from the listener, no ack).
//!
//! Every connection reads into one reused buffer, turns each complete
//! frame or line into an [`Event`] borrowing that buffer, and encodes it
//! straight into the batch handed to the outbox: no allocation per event.
//! Bad input earns that client a clear error (or a counted, rate-limited
//! log line where there is nobody to answer) and touches nothing else.

pub mod config;
pub mod frame;
pub mod lines;

use crate::clock::{Reading, SystemClock};
use crate::event::{Event, validate_topic};
use crate::log_limit::LogLimiter;
use crate::outbox::{AppendBatch, Appender, Outbox, StoreError};
use crate::shutdown::Shutdown;
use crate::stats::{Stats, now_ms};
use config::{Format, ListenerConfig, ListenerKind, parse_mode};
use frame::{Check, ErrorCode, Frame, Reply};
use lines::{LineSplitter, Piece};
use log::{error, info, warn};
use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket, UnixListener};

/// Read this much at a time; a frame larger than this grows the buffer.
const READ_CHUNK: usize = 64 * 1024;
/// A producer that keeps the socket full gets larger reads, up to this:
/// each read becomes one batch of the group commit, so a busy connection
/// is stored in fewer, larger transactions (fewer flushes in `fsync`
/// durability, and less written per event).
const MAX_READ_CHUNK: usize = 512 * 1024;
/// Room for topic, key length, timestamp and header framing around
/// `max_event_bytes` of payload.
const FRAME_OVERHEAD: usize = 1024;

/// What every connection needs, shared.
pub struct Context {
    pub outbox: Outbox,
    pub clock: SystemClock,
    pub stats: Arc<Stats>,
    pub max_event_bytes: usize,
    pub node_id: String,
}

/// A bound listener, ready to serve.
pub enum Bound {
    Unix(UnixListener, PathBuf, ListenerConfig),
    Tcp(TcpListener, ListenerConfig),
    Udp(UdpSocket, ListenerConfig),
}

impl Bound {
    pub fn describe(&self) -> String {
        match self {
            Bound::Unix(_, p, l) => format!("unix {} ({:?})", p.display(), l.format),
            Bound::Tcp(t, l) => format!(
                "tcp {} ({:?})",
                t.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                l.format
            ),
            Bound::Udp(u, l) => format!(
                "udp {} ({:?})",
                u.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                l.format
            ),
        }
    }
}

/// Bind every configured listener; errors name the listener and the cause.
pub async fn bind_all(listeners: &[ListenerConfig], data_dir: &Path) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    for l in listeners {
        out.push(match l.kind {
            ListenerKind::Unix => {
                let path = l.socket_path(data_dir);
                let listener = bind_unix(&path, l)?;
                Bound::Unix(listener, path, l.clone())
            }
            ListenerKind::Tcp => {
                let addr = l.bind_address();
                let t = TcpListener::bind(&addr)
                    .await
                    .map_err(|e| format!("cannot listen on tcp {addr}: {e}"))?;
                Bound::Tcp(t, l.clone())
            }
            ListenerKind::Udp => {
                let addr = l.bind_address();
                let u = UdpSocket::bind(&addr)
                    .await
                    .map_err(|e| format!("cannot listen on udp {addr}: {e}"))?;
                Bound::Udp(u, l.clone())
            }
        });
    }
    Ok(out)
}

fn bind_unix(path: &std::path::Path, l: &ListenerConfig) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create socket directory {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another ferry is already listening on {}; stop it or use another data_dir",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on unix socket {}: {e}", path.display()))?;
    let mode = match &l.mode {
        Some(m) => parse_mode(m)?,
        None => 0o660,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:o} on {}: {e}", path.display()))?;
    if let Some(group) = &l.group {
        let gid = nix::unistd::Group::from_name(group)
            .map_err(|e| format!("cannot look up group {group}: {e}"))?
            .ok_or_else(|| format!("group {group} (listener.group) does not exist"))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| format!("cannot give {} to group {group}: {e}", path.display()))?;
    }
    Ok(listener)
}

/// Serve every bound listener until shutdown, on a thread of their own.
///
/// Producers wait for their acknowledgements; forwarding can wait. On the
/// shared runtime a connection that woke up queued behind forwarding work
/// (a lane encodes and compresses a whole produce request in one poll), so
/// under a full uplink the acks came late. On a single-threaded runtime of
/// its own, ingest keeps most of its speed while forwarding runs; the
/// forwarder catches up once the burst is stored. Measured: acknowledging 1 M events
/// while delivering them took 0.73-0.87 s instead of 1.4 s, and delivery
/// of all of them ended 5 % sooner.
///
/// The thread stops when `shutdown` fires, after every connection has
/// answered what it read; the daemon waits for that through `shutdown`.
pub fn spawn_all(bound: Vec<Bound>, ctx: Arc<Context>, shutdown: &Shutdown) -> Result<(), String> {
    let mut listeners = Vec::with_capacity(bound.len());
    for b in bound {
        info!("listening: {}", b.describe());
        let what = b.describe();
        let moved = match b {
            Bound::Unix(l, _, cfg) => l.into_std().map(|l| StdBound::Unix(l, cfg)),
            Bound::Tcp(l, cfg) => l.into_std().map(|l| StdBound::Tcp(l, cfg)),
            Bound::Udp(s, cfg) => s.into_std().map(|s| StdBound::Udp(s, cfg)),
        };
        listeners.push(moved.map_err(|e| format!("cannot hand over listener {what}: {e}"))?);
    }
    let mut daemon_shutdown = shutdown.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::memory::on_worker_park)
        .build()
        .map_err(|e| format!("cannot start the ingest runtime: {e}"))?;
    std::thread::Builder::new()
        .name("ferry-ingest".into())
        .spawn(move || {
            runtime.block_on(async move {
                let (trigger, shutdown) = crate::shutdown::channel();
                for l in listeners {
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_listener(l, ctx, shutdown).await {
                            error!("a listener could not be served: {e}");
                        }
                    });
                }
                drop(shutdown);
                daemon_shutdown.recv().await;
                trigger.fire();
                trigger.wait_for_tasks().await;
            });
        })
        .map_err(|e| format!("cannot start the ingest thread: {e}"))?;
    Ok(())
}

/// Register a handed-over listener with this thread's runtime and serve it.
async fn serve_listener(l: StdBound, ctx: Arc<Context>, shutdown: Shutdown) -> std::io::Result<()> {
    match l {
        StdBound::Unix(l, cfg) => accept_loop(shutdown, ctx, cfg, UnixListener::from_std(l)?).await,
        StdBound::Tcp(l, cfg) => accept_loop(shutdown, ctx, cfg, TcpListener::from_std(l)?).await,
        StdBound::Udp(s, cfg) => serve_udp(UdpSocket::from_std(s)?, cfg, ctx, shutdown).await,
    }
    Ok(())
}

/// A bound listener on its way to the ingest thread's runtime.
enum StdBound {
    Unix(std::os::unix::net::UnixListener, ListenerConfig),
    Tcp(std::net::TcpListener, ListenerConfig),
    Udp(std::net::UdpSocket, ListenerConfig),
}

/// A stream listener (unix or tcp).
trait Acceptor {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Acceptor for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Acceptor for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        let (s, _) = self.accept().await?;
        // Acks are small and latency-bound.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

async fn accept_loop<A: Acceptor>(
    mut shutdown: Shutdown,
    ctx: Arc<Context>,
    cfg: ListenerConfig,
    listener: A,
) {
    let limiter = Arc::new(LogLimiter::default());
    loop {
        let stream = tokio::select! {
            r = listener.accept_one() => r,
            _ = shutdown.recv() => return,
        };
        match stream {
            Ok(stream) => {
                let (ctx, cfg, shutdown, limiter) =
                    (ctx.clone(), cfg.clone(), shutdown.clone(), limiter.clone());
                tokio::spawn(async move {
                    match cfg.format {
                        Format::Frames => serve_frames(stream, &ctx, shutdown).await,
                        Format::Lines => serve_lines(stream, &ctx, &cfg, shutdown, &limiter).await,
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: never spin on it.
                warn!("accept failed: {e}; pausing this listener for 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

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
async fn serve_frames<S: AsyncRead + AsyncWrite + Unpin>(
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
                        plan.push(refusal);
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

/// A client's timestamp is kept as sent; otherwise ferry's, marked when
/// the wall clock is not synchronised so it can be corrected later.
fn stamp_time(event: &mut Event<'_>, client_ts: Option<i64>, now: &Reading) {
    match client_ts {
        Some(ts) => event.timestamp_ms = ts,
        None => {
            event.timestamp_ms = now.wall_ms;
            event.clock = now.stamp();
        }
    }
}

fn too_large(len: usize, ctx: &Context) -> String {
    format!(
        "event frame of {len} bytes refused: events may carry at most {} bytes of key, headers and value (ingest.max_event_bytes)",
        ctx.max_event_bytes
    )
}

fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Full { .. } => ErrorCode::OutboxFull,
        StoreError::Storage(_) => ErrorCode::Storage,
        StoreError::Closed => ErrorCode::ShuttingDown,
    }
}

/// The checks every event passes at the door.
fn admit(event: &Event<'_>, ctx: &Context) -> Result<(), Planned> {
    if let Err(e) = validate_topic(event.topic) {
        return Err(Planned::Refused(ErrorCode::InvalidTopic, e.to_string()));
    }
    let len = event.payload_len();
    if len > ctx.max_event_bytes {
        return Err(Planned::Refused(
            ErrorCode::TooLarge,
            format!(
                "event of {len} bytes (key + headers + value) refused: the limit is {} bytes (ingest.max_event_bytes)",
                ctx.max_event_bytes
            ),
        ));
    }
    Ok(())
}

/// One `lines` connection: each `\n`-terminated line is one event.
async fn serve_lines<S: AsyncRead + AsyncWrite + Unpin>(
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
struct LineEvents<'c> {
    topic: String,
    key: Option<Vec<u8>>,
    ctx: &'c Context,
}

impl<'c> LineEvents<'c> {
    fn new(cfg: &ListenerConfig, ctx: &'c Context) -> Self {
        Self {
            topic: cfg.topic.clone().unwrap_or_default(),
            key: cfg.key.as_ref().map(|k| k.as_bytes().to_vec()),
            ctx,
        }
    }

    fn take(&self, piece: Piece<'_>, now: &Reading, batch: &mut AppendBatch, limiter: &LogLimiter) {
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

/// One UDP socket: each datagram holds lines, or frames (never answered).
async fn serve_udp(
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
                                    Err(Planned::Refused(_, msg)) => Some(msg),
                                    Err(_) => None,
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
