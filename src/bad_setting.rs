//! A setting a component refuses when it checks its own config section:
//! the key (`kafka.linger_ms`, `mqtt.subscribe.topic`) and why. `config`
//! turns it into an error naming the file and line.

/// A config value that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BadSetting {
    /// The setting's key, as the file spells it.
    pub key: String,
    /// What is wrong with it, and what would do.
    pub message: String,
}

impl BadSetting {
    pub fn at(key: String, message: String) -> Self {
        Self { key, message }
    }
}
