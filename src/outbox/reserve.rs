//! Space held back for draining. Draining is what frees a full disk, so
//! the writes the drain needs (storing a window's plan before it is sent,
//! deleting delivered blocks) must never fail for want of space. A file of
//! [`RESERVE_BYTES`] beside the database holds that space while appends
//! fill the disk; when a plan or a delete finds the disk full, the file is
//! removed and the write tried again in the room it leaves. Appends never
//! use it: producers get "disk full" first. Once delivered blocks are
//! deleted, SQLite reuses their pages for new events; the reserve is taken
//! again when the file system has room for it.

use log::{info, warn};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Enough for a checkpoint's growth of the database file (the write-ahead
/// log holds up to SQLite's 1,000-page auto-checkpoint, 4 MiB, and a
/// checkpoint that cannot grow the file frees nothing), then many plans
/// and deletes (each a few pages of the log).
pub const RESERVE_BYTES: usize = 6 * 1024 * 1024;

/// After a failed attempt to take the reserve again, wait this long
/// before the next (each attempt writes up to [`RESERVE_BYTES`]).
const RETAKE_INTERVAL: Duration = Duration::from_secs(10);

pub struct Reserve {
    path: PathBuf,
    held: bool,
    next_try: Option<Instant>,
}

/// Free space for an unprivileged writer on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    // (The counts are 32-bit on armv7: the casts are needed there.)
    #[allow(clippy::unnecessary_cast)]
    nix::sys::statvfs::statvfs(dir)
        .ok()
        .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Whether `e` is SQLite telling the disk (or the database's size limit)
/// is full.
pub fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull))
        || e.to_string().contains("disk is full")
}

impl Reserve {
    /// The reserve of the database at `db`, taken now if there is room.
    pub fn open(db: &Path) -> Self {
        let mut name = db.as_os_str().to_owned();
        name.push(".reserve");
        let mut r = Self {
            path: PathBuf::from(name),
            held: false,
            next_try: None,
        };
        let present = std::fs::metadata(&r.path)
            .map(|m| m.len() == RESERVE_BYTES as u64)
            .unwrap_or(false);
        if present {
            r.held = true;
        } else if let Err(e) = r.take() {
            warn!(
                "cannot set aside {} KiB for draining at {}: {e}; a full disk may slow the drain",
                RESERVE_BYTES / 1024,
                r.path.display()
            );
        }
        r
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Give the reserved space to SQLite: true if there was any to give.
    pub fn release(&mut self) -> bool {
        if !self.held {
            return false;
        }
        self.held = false;
        self.next_try = Some(Instant::now() + RETAKE_INTERVAL);
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                warn!(
                    "the disk holding the outbox is full: the {} KiB reserved for draining are used now; producers are refused until delivered events free space",
                    RESERVE_BYTES / 1024
                );
                true
            }
            Err(e) => {
                warn!("cannot remove {}: {e}", self.path.display());
                false
            }
        }
    }

    /// Take the reserve again if it was used and the file system has room
    /// (at most every [`RETAKE_INTERVAL`]).
    pub fn retake(&mut self) {
        if self.held || self.next_try.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Only when the file system has room to spare: a write bound to
        // fail would wear an SD card for nothing.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let free = free_bytes(dir).unwrap_or(0);
        if free < 2 * RESERVE_BYTES as u64 {
            self.next_try = Some(Instant::now() + RETAKE_INTERVAL);
            return;
        }
        match self.take() {
            Ok(()) => info!(
                "{} KiB reserved for draining again at {}",
                RESERVE_BYTES / 1024,
                self.path.display()
            ),
            Err(_) => self.next_try = Some(Instant::now() + RETAKE_INTERVAL),
        }
    }

    /// Write the reserve file in full and make it durable; on failure
    /// leave no partial file.
    fn take(&mut self) -> std::io::Result<()> {
        let written = (|| {
            let mut f = File::create(&self.path)?;
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..RESERVE_BYTES / chunk.len() {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        })();
        match written {
            Ok(()) => {
                self.held = true;
                self.next_try = None;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_file_of_its_size_given_up_and_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outbox.db");
        let mut r = Reserve::open(&db);
        let file = dir.path().join("outbox.db.reserve");
        assert!(r.is_held());
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            RESERVE_BYTES as u64
        );
        // Found again at the next start.
        assert!(Reserve::open(&db).is_held());
        assert!(r.release());
        assert!(!file.exists() && !r.release());
        // Not retaken before its interval.
        r.retake();
        assert!(!r.is_held());
        r.next_try = Some(Instant::now());
        r.retake();
        assert!(r.is_held() && file.exists());
    }
}
