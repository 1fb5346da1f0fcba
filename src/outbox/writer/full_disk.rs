//! Writing on a full disk: the drain's writes (a plan, a delete) free
//! space first, so that delivering the backlog is what makes room.

use super::state::Writer;
use crate::outbox::reserve;
use log::warn;

impl Writer {
    /// A write the drain needs (a plan, a delete): when the disk is full,
    /// the write-ahead log is checkpointed and truncated (its file may hold
    /// most of the free space, and SQLite checkpoints only at 1,000 pages)
    /// and the write tried again; if the disk is still full, the space
    /// reserved for draining is given to SQLite, and once more (see
    /// [`super::reserve`]).
    pub(super) fn drain_write<T>(
        &mut self,
        mut write: impl FnMut(&mut Self) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        match write(self) {
            Err(e) if reserve::is_disk_full(&e) => {
                self.truncate_wal();
                match write(self) {
                    Err(e) if reserve::is_disk_full(&e) && self.reserve.release() => {
                        self.truncate_wal();
                        write(self)
                    }
                    r => r,
                }
            }
            r => r,
        }
    }

    /// Copy the write-ahead log into the database and cut its file to
    /// nothing, giving its space back to the file system.
    pub(super) fn truncate_wal(&mut self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            warn!(
                "outbox {}: cannot checkpoint the write-ahead log: {e}",
                self.path.display()
            );
        }
    }
}
