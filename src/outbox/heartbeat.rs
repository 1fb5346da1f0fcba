//! The heartbeat's slot: at most one heartbeat waits in the outbox. A new
//! one replaces it (a day offline leaves one record, not one per
//! interval); the forwarder removes the one it sent only if no newer one
//! replaced it meanwhile (the version says which).

use rusqlite::{Connection, OptionalExtension, params};

/// Put `body` in the slot, replacing what waits there.
pub fn set(conn: &Connection, body: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO heartbeat (slot, version, body) VALUES (1, 1, ?1)
         ON CONFLICT (slot) DO UPDATE SET version = version + 1, body = excluded.body",
    )?
    .execute(params![body])?;
    Ok(())
}

/// The waiting heartbeat: `(version, body)`.
pub fn pending(conn: &Connection) -> rusqlite::Result<Option<(i64, String)>> {
    conn.prepare_cached("SELECT version, body FROM heartbeat WHERE slot = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// The heartbeat of `version` was delivered: empty the slot unless a newer
/// one waits.
pub fn sent(conn: &Connection, version: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM heartbeat WHERE slot = 1 AND version = ?1")?
        .execute(params![version])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_waits_at_most_and_a_newer_one_survives_the_older_ones_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::outbox::open_connection(
            &dir.path().join("o.db"),
            crate::outbox::config::Durability::Relaxed,
        )
        .unwrap();
        assert_eq!(pending(&conn).unwrap(), None);
        for i in 0..1_440 {
            set(&conn, &format!("beat {i}")).unwrap();
        }
        let (version, body) = pending(&conn).unwrap().unwrap();
        assert_eq!(body, "beat 1439");
        set(&conn, "newer").unwrap();
        sent(&conn, version).unwrap();
        assert_eq!(pending(&conn).unwrap().map(|p| p.1), Some("newer".into()));
        let (version, _) = pending(&conn).unwrap().unwrap();
        sent(&conn, version).unwrap();
        assert_eq!(pending(&conn).unwrap(), None);
    }
}
