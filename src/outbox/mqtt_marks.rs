//! Redelivery marks of MQTT messages (`[[mqtt]]` links): for each QoS 1
//! message stored but not known to be acknowledged at the broker, its
//! packet id and a digest, written in the same transaction as the events.
//! After a crash between the commit and the PUBACK, the broker redelivers
//! the message (DUP set, same packet id): the link finds the mark and
//! acknowledges without storing it again. A mark is removed once the
//! broker has seen the PUBACK (the link confirms that with a PINGREQ).

use rusqlite::{Connection, params};

/// One mark: (packet id, digest of topic and payload).
pub type Mark = (u16, u64);

/// The marks of one link that a batch stores with its events.
#[derive(Debug, Clone, Default)]
pub struct LinkMarks {
    pub link: String,
    pub marks: Vec<Mark>,
}

pub(super) fn insert(conn: &Connection, link: &str, marks: &[Mark]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO mqtt_marks (link, packet_id, digest) VALUES (?1, ?2, ?3)",
    )?;
    for (id, digest) in marks {
        stmt.execute(params![link, *id as i64, *digest as i64])?;
    }
    Ok(())
}

pub(super) fn load(conn: &Connection, link: &str) -> rusqlite::Result<Vec<Mark>> {
    let mut stmt =
        conn.prepare_cached("SELECT packet_id, digest FROM mqtt_marks WHERE link = ?1")?;
    let rows = stmt.query_map([link], |r| {
        Ok((r.get::<_, i64>(0)? as u16, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// Remove marks the broker has seen acknowledged (only if not replaced by
/// a newer message with the same packet id).
pub(super) fn forget(conn: &Connection, link: &str, marks: &[Mark]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM mqtt_marks WHERE link = ?1 AND packet_id = ?2 AND digest = ?3",
    )?;
    for (id, digest) in marks {
        stmt.execute(params![link, *id as i64, *digest as i64])?;
    }
    Ok(())
}

/// The broker lost the session: none of its packet ids mean anything now.
pub(super) fn clear(conn: &Connection, link: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM mqtt_marks WHERE link = ?1")?
        .execute([link])?;
    Ok(())
}
