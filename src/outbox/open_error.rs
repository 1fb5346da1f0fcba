//! What can go wrong opening the outbox: the directory, the SQLite file,
//! its schema and counters, each naming the path and what to do.

use std::fmt;
use std::path::PathBuf;

/// The schema or counters of an outbox could not be brought up to date
/// or read (`outbox::schema`).
#[derive(Debug)]
pub enum SchemaError {
    ReadVersion(rusqlite::Error),
    /// Written by a newer ferry (`found`) than this one knows (`known`).
    TooNew {
        found: i64,
        known: i64,
    },
    Migration {
        from: usize,
        to: usize,
        source: rusqlite::Error,
    },
    Counter {
        key: String,
        source: rusqlite::Error,
    },
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::ReadVersion(e) => write!(f, "cannot read schema version: {e}"),
            SchemaError::TooNew { found, known } => write!(
                f,
                "schema version {found} is newer than this ferry understands ({known}); \
                 run a newer ferry or move the outbox aside"
            ),
            SchemaError::Migration { from, to, source } => write!(
                f,
                "migration of the schema from version {from} to {to} failed: {source}"
            ),
            SchemaError::Counter { key, source } => {
                write!(f, "cannot read counter {key}: {source}")
            }
        }
    }
}

impl std::error::Error for SchemaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SchemaError::ReadVersion(e)
            | SchemaError::Migration { source: e, .. }
            | SchemaError::Counter { source: e, .. } => Some(e),
            SchemaError::TooNew { .. } => None,
        }
    }
}

/// Opening the outbox at `path` failed.
#[derive(Debug)]
pub enum OpenError {
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    Configure {
        path: PathBuf,
        source: rusqlite::Error,
    },
    Schema {
        path: PathBuf,
        source: SchemaError,
    },
    /// Reading what the writer starts from (counters, waiting records,
    /// statements) failed: `what`.
    Load {
        path: PathBuf,
        what: &'static str,
        source: rusqlite::Error,
    },
    SyncDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::CreateDir { dir, source } => write!(
                f,
                "cannot create outbox directory {}: {source}",
                dir.display()
            ),
            OpenError::Open { path, source } => {
                write!(f, "cannot open outbox {}: {source}", path.display())
            }
            OpenError::Configure { path, source } => {
                write!(f, "cannot configure outbox {}: {source}", path.display())
            }
            OpenError::Schema { path, source } => write!(f, "outbox {}: {source}", path.display()),
            OpenError::Load { path, what, source } => {
                write!(f, "outbox {}: cannot read {what}: {source}", path.display())
            }
            OpenError::SyncDir { path, source } => write!(
                f,
                "cannot sync the directory of the new outbox {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::CreateDir { source, .. } | OpenError::SyncDir { source, .. } => Some(source),
            OpenError::Open { source, .. }
            | OpenError::Configure { source, .. }
            | OpenError::Load { source, .. } => Some(source),
            OpenError::Schema { source, .. } => Some(source),
        }
    }
}
