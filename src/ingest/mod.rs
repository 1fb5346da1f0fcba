//! Getting events in: `unix`, `tcp` and `udp` listeners speaking `frames`
//! (acked after commit) or `lines` (topic/key from the listener, no ack).
//!
//! Every connection reads into one reused buffer, turns each complete
//! frame or line into an [`Event`](crate::event::Event) borrowing that buffer, and encodes it
//! straight into the batch handed to the outbox: no allocation per event.
//! Bad input earns that client a clear error (or a counted, rate-limited
//! log line where there is nobody to answer) and touches nothing else.
//!
//! ```text
//! mod.rs            binding listeners and accepting connections
//!   bind_error        what binding and starting them can fail on
//!   frame_connection  a `frames` connection: batches, acks in order
//!   line_connection   a `lines` connection
//!   datagrams         a UDP socket (lines or frames, never answered)
//!     door              the shared context and the checks at the door
//!     frame lines       the frame codec and the line splitter (pure)
//!     config            the [[listener]] and [ingest] sections
//! ```

mod bind_error;
pub mod config;
mod datagrams;
mod door;
pub mod frame;
mod frame_connection;
mod line_connection;
pub mod lines;

pub use bind_error::BindError;
pub use door::Context;

use crate::log_limit::LogLimiter;
use crate::shutdown::Shutdown;
use config::{Format, ListenerConfig, ListenerKind, parse_mode};
use datagrams::serve_udp;
use frame_connection::serve_frames;
use line_connection::serve_lines;
use log::{error, info, warn};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UdpSocket, UnixListener};

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
pub async fn bind_all(
    listeners: &[ListenerConfig],
    data_dir: &Path,
) -> Result<Vec<Bound>, BindError> {
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
                    .map_err(|source| BindError::Tcp { addr, source })?;
                Bound::Tcp(t, l.clone())
            }
            ListenerKind::Udp => {
                let addr = l.bind_address();
                let u = UdpSocket::bind(&addr)
                    .await
                    .map_err(|source| BindError::Udp { addr, source })?;
                Bound::Udp(u, l.clone())
            }
        });
    }
    Ok(out)
}

fn bind_unix(path: &Path, l: &ListenerConfig) -> Result<UnixListener, BindError> {
    let at = || path.to_path_buf();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| BindError::SocketDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse { path: at() });
        }
        std::fs::remove_file(path)
            .map_err(|source| BindError::StaleSocket { path: at(), source })?;
    }
    let listener =
        UnixListener::bind(path).map_err(|source| BindError::Unix { path: at(), source })?;
    let mode = match &l.mode {
        Some(m) => parse_mode(m)?,
        None => 0o660,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        BindError::SetMode {
            mode,
            path: at(),
            source,
        }
    })?;
    if let Some(group) = &l.group {
        let named = || group.clone();
        let gid = nix::unistd::Group::from_name(group)
            .map_err(|source| BindError::GroupLookup {
                group: named(),
                source,
            })?
            .ok_or_else(|| BindError::NoGroup { group: named() })?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|source| BindError::Chown {
            path: at(),
            group: named(),
            source,
        })?;
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
pub fn spawn_all(
    bound: Vec<Bound>,
    ctx: Arc<Context>,
    shutdown: &Shutdown,
) -> Result<(), BindError> {
    let mut listeners = Vec::with_capacity(bound.len());
    for b in bound {
        info!("listening: {}", b.describe());
        let what = b.describe();
        let moved = match b {
            Bound::Unix(l, _, cfg) => l.into_std().map(|l| StdBound::Unix(l, cfg)),
            Bound::Tcp(l, cfg) => l.into_std().map(|l| StdBound::Tcp(l, cfg)),
            Bound::Udp(s, cfg) => s.into_std().map(|s| StdBound::Udp(s, cfg)),
        };
        listeners.push(moved.map_err(|source| BindError::HandOver { what, source })?);
    }
    let mut daemon_shutdown = shutdown.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::memory::on_worker_park)
        .build()
        .map_err(BindError::Runtime)?;
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
        .map_err(BindError::Thread)?;
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
