//! Names made durable. A file's `fsync` makes its data durable, not its
//! name: a directory ferry creates, and a file created in it, survive a
//! power cut only once the directory holding the new name is synced too
//! (POSIX promises no more, and `tests/power_cut.rs` holds ferry to it).
//! SQLite syncs the directory of the write-ahead log it creates, not of
//! the database file; that, and the data directory, are ferry's to sync.

use std::io;
use std::path::Path;

/// Create `dir` and any missing parents, each one's name synced in its
/// parent. An existing directory costs one `stat`.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // The missing ancestors, nearest the root first.
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        at = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        sync_parent(created)?;
    }
    Ok(())
}

/// `fsync` the directory holding `path`, making its name durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// `fsync` a directory: the names created, removed or renamed in it
/// become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_parents_and_accepts_existing() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        sync_parent(&deep.join("file")).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(create_dir_all(&file.join("d")).is_err());
    }
}
