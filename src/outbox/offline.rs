//! The outbox as the command-line tools open it, beside the daemon or
//! without it: `ferry status`'s backlog when the daemon is down (the
//! counters, read-only, no scan) and the connection `ferry dlq` edits dead
//! letters through. The SQL stays here, with the schema it reads.

use super::open_error::SchemaError;
use super::schema::{self, Counters};
use rusqlite::{Connection, OpenFlags};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a tool could not do with the outbox, and where.
#[derive(Debug)]
pub enum OfflineError {
    /// No outbox file at the path (nothing was ever stored there, or the
    /// config names another data directory).
    Missing(PathBuf),
    /// SQLite could not open or use the file.
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The backlog counters could not be read.
    Counters { path: PathBuf, source: SchemaError },
    /// A table could not be read.
    Read {
        what: &'static str,
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl fmt::Display for OfflineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfflineError::Missing(path) => write!(f, "no outbox at {}", path.display()),
            OfflineError::Open { path, source } => {
                write!(f, "cannot open {}: {source}", path.display())
            }
            OfflineError::Counters { path, source } => {
                write!(f, "{}: {source}", path.display())
            }
            OfflineError::Read { what, path, source } => {
                write!(f, "cannot read {what} from {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for OfflineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OfflineError::Missing(_) => None,
            OfflineError::Open { source, .. } | OfflineError::Read { source, .. } => Some(source),
            OfflineError::Counters { source, .. } => Some(source),
        }
    }
}

/// The backlog as the outbox's counters say (the daemon keeps them in the
/// same transactions as the rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub counters: Counters,
    /// When the oldest stored row was written (ms since the epoch).
    pub oldest_created_ms: Option<i64>,
}

/// The backlog of the outbox at `path`, opened read-only.
pub fn read_backlog(path: &Path) -> Result<Backlog, OfflineError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            OfflineError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let counters = schema::load_counters(&conn).map_err(|source| OfflineError::Counters {
        path: path.to_path_buf(),
        source,
    })?;
    let oldest_created_ms: Option<i64> = conn
        .query_row(
            "SELECT created_ms FROM blocks ORDER BY seq_first LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok();
    Ok(Backlog {
        counters,
        oldest_created_ms,
    })
}

/// The outbox at `path` opened for a tool's edits (dead letters), waiting
/// up to 10 s for the daemon's transactions.
pub fn open_for_edit(path: &Path) -> Result<Connection, OfflineError> {
    if !path.exists() {
        return Err(OfflineError::Missing(path.to_path_buf()));
    }
    let open = |source| OfflineError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(open)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(open)?;
    Ok(conn)
}

/// The dead letters stored in the outbox `conn` (opened by
/// [`open_for_edit`] at `path`).
pub fn count_dead_letters(conn: &Connection, path: &Path) -> Result<i64, OfflineError> {
    conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
        .map_err(|source| OfflineError::Read {
            what: "dead letters",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::config::Durability;

    #[test]
    fn a_new_outbox_reads_as_empty_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let missing = open_for_edit(&path).unwrap_err();
        assert!(missing.to_string().contains("no outbox at"), "{missing}");
        drop(crate::outbox::open_connection(&path, Durability::Relaxed).unwrap());
        assert_eq!(read_backlog(&path).unwrap(), Backlog::default());
        let conn = open_for_edit(&path).unwrap();
        assert_eq!(count_dead_letters(&conn, &path).unwrap(), 0);
    }
}
