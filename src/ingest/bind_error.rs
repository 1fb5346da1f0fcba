//! What binding and starting the listeners can fail on; each names the
//! listener's address or path and the cause.

use crate::units::UnitError;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on tcp {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("cannot listen on udp {addr}: {source}")]
    Udp { addr: String, source: io::Error },
    #[error("cannot create socket directory {}: {source}", dir.display())]
    SocketDir { dir: PathBuf, source: io::Error },
    #[error("another ferry is already listening on {}; stop it or use another data_dir", path.display())]
    InUse { path: PathBuf },
    #[error("cannot remove stale socket {}: {source}", path.display())]
    StaleSocket { path: PathBuf, source: io::Error },
    #[error("cannot listen on unix socket {}: {source}", path.display())]
    Unix { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Mode(#[from] UnitError),
    #[error("cannot set mode {mode:o} on {}: {source}", path.display())]
    SetMode {
        mode: u32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot look up group {group}: {source}")]
    GroupLookup { group: String, source: nix::Error },
    #[error("group {group} (listener.group) does not exist")]
    NoGroup { group: String },
    #[error("cannot give {} to group {group}: {source}", path.display())]
    Chown {
        path: PathBuf,
        group: String,
        source: nix::Error,
    },
    #[error("cannot hand over listener {what}: {source}")]
    HandOver { what: String, source: io::Error },
    #[error("cannot start the ingest runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot start the ingest thread: {0}")]
    Thread(io::Error),
}
