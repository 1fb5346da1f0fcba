//! The statements of the append path, prepared once for the writer's life.
//!
//! rusqlite's statement cache allocates a key every time a cached statement
//! is used, and its transactions prepare `BEGIN` and `COMMIT` afresh: a few
//! heap allocations per group commit on the ingest path. These four are
//! prepared once through SQLite's C API and then only bound, stepped and
//! reset, so a group commit allocates nothing on the Rust heap.

use rusqlite::{Connection, ffi};
use std::ffi::{CStr, c_int};
use std::ptr;

const BEGIN: &CStr = c"BEGIN";
const COMMIT: &CStr = c"COMMIT";
const INSERT_BLOCK: &CStr =
    c"INSERT INTO blocks (seq_first, topic, count, raw_bytes, created_ms, crc, payload, priority, format) \
      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
/// A row's `format`: events (`outbox::block`), LZ4-compressed.
pub const FORMAT_EVENTS: i64 = 0;
/// A row's `format`: a record run (`outbox::run`).
pub const FORMAT_RUN: i64 = 1;
const ADD_APPENDED: &CStr = c"UPDATE meta SET value = value + CASE key \
      WHEN 'next_seq' THEN ?1 WHEN 'events' THEN ?2 \
      WHEN 'stored_bytes' THEN ?3 WHEN 'raw_bytes' THEN ?4 END \
      WHERE key IN ('next_seq', 'events', 'stored_bytes', 'raw_bytes')";

/// Prepared statements of one connection. Must be dropped before the
/// connection (the writer declares it first) and used only on the thread
/// that uses the connection.
pub struct HotStatements {
    db: *mut ffi::sqlite3,
    begin: *mut ffi::sqlite3_stmt,
    commit: *mut ffi::sqlite3_stmt,
    insert_block: *mut ffi::sqlite3_stmt,
    add_appended: *mut ffi::sqlite3_stmt,
}

// SAFETY: the statements belong to the writer's connection, which moves to
// the writer thread together with them and is only used there.
unsafe impl Send for HotStatements {}

/// One block row, as `INSERT_BLOCK` takes it.
pub struct BlockRow<'a> {
    pub seq_first: i64,
    pub topic: &'a str,
    pub priority: u8,
    pub count: u32,
    pub raw_bytes: i64,
    pub created_ms: i64,
    pub crc: u32,
    pub payload: &'a [u8],
    /// [`FORMAT_EVENTS`] or [`FORMAT_RUN`].
    pub format: i64,
}

impl HotStatements {
    pub fn prepare(conn: &Connection) -> rusqlite::Result<Self> {
        // SAFETY: the handle stays valid while `conn` lives, which outlives
        // these statements (see the type's comment).
        let db = unsafe { conn.handle() };
        let mut hot = Self {
            db,
            begin: ptr::null_mut(),
            commit: ptr::null_mut(),
            insert_block: ptr::null_mut(),
            add_appended: ptr::null_mut(),
        };
        // On an error, `hot` is dropped and finalizes what was prepared.
        hot.begin = hot.prepare_one(BEGIN)?;
        hot.commit = hot.prepare_one(COMMIT)?;
        hot.insert_block = hot.prepare_one(INSERT_BLOCK)?;
        hot.add_appended = hot.prepare_one(ADD_APPENDED)?;
        Ok(hot)
    }

    fn prepare_one(&self, sql: &CStr) -> rusqlite::Result<*mut ffi::sqlite3_stmt> {
        let mut stmt = ptr::null_mut();
        // SAFETY: `sql` is NUL-terminated (length -1); `stmt` receives the
        // statement or stays null on failure.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                self.db,
                sql.as_ptr(),
                -1,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        self.check(rc)?;
        Ok(stmt)
    }

    pub fn begin(&self) -> rusqlite::Result<()> {
        self.step(self.begin)
    }

    pub fn commit(&self) -> rusqlite::Result<()> {
        self.step(self.commit)
    }

    pub fn insert_block(&self, row: &BlockRow<'_>) -> rusqlite::Result<()> {
        let s = self.insert_block;
        self.bind_i64(s, 1, row.seq_first)?;
        self.bind_text(s, 2, row.topic)?;
        self.bind_i64(s, 3, row.count as i64)?;
        self.bind_i64(s, 4, row.raw_bytes)?;
        self.bind_i64(s, 5, row.created_ms)?;
        self.bind_i64(s, 6, row.crc as i64)?;
        self.bind_blob(s, 7, row.payload)?;
        self.bind_i64(s, 8, row.priority as i64)?;
        self.bind_i64(s, 9, row.format)?;
        self.step(s)
    }

    /// Add to the counters kept in `meta`, in one statement.
    pub fn add_appended(
        &self,
        seqs: i64,
        events: i64,
        stored_bytes: i64,
        raw_bytes: i64,
    ) -> rusqlite::Result<()> {
        let s = self.add_appended;
        self.bind_i64(s, 1, seqs)?;
        self.bind_i64(s, 2, events)?;
        self.bind_i64(s, 3, stored_bytes)?;
        self.bind_i64(s, 4, raw_bytes)?;
        self.step(s)
    }

    fn bind_i64(&self, stmt: *mut ffi::sqlite3_stmt, i: c_int, v: i64) -> rusqlite::Result<()> {
        // SAFETY: `stmt` is a live statement of this connection.
        self.check(unsafe { ffi::sqlite3_bind_int64(stmt, i, v) })
    }

    fn bind_text(&self, stmt: *mut ffi::sqlite3_stmt, i: c_int, v: &str) -> rusqlite::Result<()> {
        // SAFETY: SQLITE_STATIC: `v` outlives the step that reads it, and
        // `step` clears the bindings right after.
        self.check(unsafe {
            ffi::sqlite3_bind_text64(
                stmt,
                i,
                v.as_ptr().cast(),
                v.len() as u64,
                ffi::SQLITE_STATIC(),
                ffi::SQLITE_UTF8 as u8,
            )
        })
    }

    fn bind_blob(&self, stmt: *mut ffi::sqlite3_stmt, i: c_int, v: &[u8]) -> rusqlite::Result<()> {
        // SAFETY: as for `bind_text`.
        self.check(unsafe {
            ffi::sqlite3_bind_blob64(
                stmt,
                i,
                v.as_ptr().cast(),
                v.len() as u64,
                ffi::SQLITE_STATIC(),
            )
        })
    }

    /// Run a statement that returns no rows, then reset it and drop its
    /// bindings (they may point at buffers that are about to change).
    fn step(&self, stmt: *mut ffi::sqlite3_stmt) -> rusqlite::Result<()> {
        // SAFETY: `stmt` is a live statement of this connection.
        let rc = unsafe { ffi::sqlite3_step(stmt) };
        // SAFETY: as above; reset after an error returns that error again,
        // which `rc` already carries.
        unsafe {
            ffi::sqlite3_reset(stmt);
            ffi::sqlite3_clear_bindings(stmt);
        }
        if rc == ffi::SQLITE_DONE {
            Ok(())
        } else {
            self.check(rc)
                .and(Err(rusqlite::Error::ExecuteReturnedResults))
        }
    }

    /// An error code as rusqlite's error, with SQLite's message.
    fn check(&self, rc: c_int) -> rusqlite::Result<()> {
        if rc == ffi::SQLITE_OK {
            return Ok(());
        }
        // SAFETY: sqlite3_errmsg returns a NUL-terminated string owned by
        // the connection, valid until the next call; it is copied at once.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.db)) }
            .to_string_lossy()
            .into_owned();
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some(message),
        ))
    }
}

impl Drop for HotStatements {
    fn drop(&mut self) {
        for stmt in [
            self.begin,
            self.commit,
            self.insert_block,
            self.add_appended,
        ] {
            // SAFETY: each is null or a statement prepared on this
            // connection and not finalized yet; finalizing null is a no-op.
            unsafe {
                ffi::sqlite3_finalize(stmt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::config::Durability;

    fn row(seq_first: i64, payload: &[u8]) -> BlockRow<'_> {
        BlockRow {
            seq_first,
            topic: "t",
            priority: 5,
            count: 1,
            raw_bytes: payload.len() as i64,
            created_ms: 1,
            crc: 7,
            payload,
            format: FORMAT_EVENTS,
        }
    }

    #[test]
    fn statements_are_reused_and_errors_carry_sqlite_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = crate::outbox::open_connection(&dir.path().join("o.db"), Durability::Relaxed)
            .expect("open");
        let hot = HotStatements::prepare(&conn).expect("prepare");
        for round in 0..3i64 {
            hot.begin().expect("begin");
            hot.insert_block(&row(round * 10 + 1, b"abc"))
                .expect("insert");
            hot.add_appended(1, 1, 3, 3).expect("counters");
            hot.commit().expect("commit");
        }
        let (rows, payload): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT count(*), max(payload) FROM blocks WHERE topic = 't'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("count");
        assert_eq!((rows, payload), (3, b"abc".to_vec()));
        // The same sequence twice: SQLite's constraint error comes through,
        // and a rollback leaves nothing of that transaction.
        hot.begin().expect("begin");
        hot.insert_block(&row(100, b"x")).expect("insert");
        let err = hot.insert_block(&row(100, b"y")).expect_err("duplicate");
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        conn.execute_batch("ROLLBACK").expect("rollback");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM blocks", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 3);
        drop(hot);
        drop(conn);
    }
}
