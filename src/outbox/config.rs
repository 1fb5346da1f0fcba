//! The `[outbox]` section: where the database lives, durability, and the
//! size and age caps. Owned by the outbox; `config` composes it.

use crate::units::{duration, size};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Defaults to `<data_dir>/outbox.db`.
    pub path: Option<PathBuf>,
    pub durability: Durability,
    /// Cap on stored (compressed) bytes; 0 = unlimited.
    #[serde(with = "size")]
    pub max_bytes: u64,
    /// Events older than this are dropped (counted); 0 = unlimited.
    #[serde(with = "duration")]
    pub max_age: Duration,
    pub when_full: WhenFull,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            path: None,
            durability: Durability::Fsync,
            max_bytes: 1024 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 24 * 3600),
            when_full: WhenFull::DropOldest,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    Relaxed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    DropOldest,
    Reject,
}
