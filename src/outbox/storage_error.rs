//! What a request to the outbox fails on once it is open: SQLite, or the
//! disk under it, at a step the error names.

/// SQLite failed while the writer was doing `what`.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StorageError {
    /// The step, as a reader of the log would want it ("reading outbox
    /// blocks").
    pub what: &'static str,
    pub source: rusqlite::Error,
}

impl StorageError {
    /// For `map_err`: a SQLite error met while doing `what`.
    pub fn at(what: &'static str) -> impl Fn(rusqlite::Error) -> StorageError + Copy {
        move |source| StorageError { what, source }
    }
}
