//! `FERRY_*` environment overrides: the fleet's short names
//! (`FERRY_BROKERS`, `FERRY_DATA_DIR`) and every key by its path
//! (`FERRY_KAFKA__LINGER_MS`), each read as the type of the value it
//! replaces; an error names the variable.

use super::{Config, ConfigError, Durability};
use std::path::PathBuf;

impl Config {
    pub(super) fn apply_env(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        for (name, value) in env {
            match name.as_str() {
                "FERRY_BROKERS" => {
                    self.kafka.brokers = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                "FERRY_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "FERRY_NODE_ID" => self.node_id = value.clone(),
                "FERRY_DURABILITY" => {
                    self.outbox.durability = match value.as_str() {
                        "fsync" => Durability::Fsync,
                        "relaxed" => Durability::Relaxed,
                        other => {
                            return Err(ConfigError {
                                file: None,
                                line: None,
                                key: Some("FERRY_DURABILITY".into()),
                                message: format!(
                                    "`{other}` is not a durability; use \"fsync\" or \"relaxed\""
                                ),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `FERRY_<SECTION>__<KEY>` (and deeper: `FERRY_KAFKA__SASL__USERNAME`,
    /// `FERRY_LISTENER__0__PATH` for the first listener in the file) sets
    /// any key. The value is read as the key's type: a string as it is
    /// (`7d`, `zstd`), a number or boolean as in TOML, a list as TOML
    /// (`["a:1", "b:2"]`) or comma-separated (`a:1,b:2`). An error names the
    /// variable (or, when only several together are wrong, all of them).
    pub(super) fn apply_env_paths(self, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut vars: Vec<&(String, String)> = env
            .iter()
            .filter(|(n, _)| n.starts_with("FERRY_") && n.contains("__"))
            .collect();
        if vars.is_empty() {
            return Ok(self);
        }
        vars.sort();
        let env_error = |name: &str, message: String| ConfigError {
            file: None,
            line: None,
            key: Some(name.to_string()),
            message,
        };
        let base = toml::Value::try_from(&self)
            .map_err(|e| env_error("FERRY_*", format!("cannot apply overrides: {e}")))?;
        let apply = |skip: Option<usize>| -> Result<toml::Value, ConfigError> {
            let mut v = base.clone();
            for (i, (name, raw)) in vars.iter().enumerate() {
                if Some(i) == skip {
                    continue;
                }
                let path: Vec<String> = name["FERRY_".len()..]
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect();
                set_path(&mut v, &path, raw).map_err(|m| env_error(name, m.to_string()))?;
            }
            Ok(v)
        };
        let message = match apply(None)?.try_into::<Config>() {
            Ok(config) => return Ok(config),
            Err(e) => e.message().trim().to_string(),
        };
        // Which one: the variable without which the rest load.
        for (i, (name, raw)) in vars.iter().enumerate() {
            if apply(Some(i))?.try_into::<Config>().is_ok() {
                return Err(env_error(name, format!("`{raw}`: {message}")));
            }
        }
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        Err(env_error(&names.join(", "), message))
    }
}

/// An environment value read as the type of the value it replaces (see
/// `Config::apply_env_paths`).
fn env_value(raw: &str, replaces: Option<&toml::Value>) -> toml::Value {
    let as_toml = || {
        format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match replaces {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Array(_)) if !raw.trim_start().starts_with('[') => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => as_toml().unwrap_or_else(|| toml::Value::String(raw.to_string())),
    }
}

/// Why an environment override's name does not lead to a key.
#[derive(Debug, thiserror::Error)]
enum OverrideError {
    #[error("names no key")]
    NoKey,
    #[error("`{0}` is not an index into the list")]
    NotAnIndex(String),
    #[error("there is no entry {index} in the list (it has {len})")]
    NoEntry { index: usize, len: usize },
    #[error("`{0}` is not a section")]
    NotASection(String),
    #[error("the parent of `{0}` is not a section")]
    ParentNotASection(String),
}

/// Set the value of `raw` at `path` (table keys, or indexes into existing
/// lists) in `root`, creating sections the file left out.
fn set_path(root: &mut toml::Value, path: &[String], raw: &str) -> Result<(), OverrideError> {
    let Some((last, parents)) = path.split_last() else {
        return Err(OverrideError::NoKey);
    };
    let index = |part: &str, len: usize| -> Result<usize, OverrideError> {
        let i: usize = part
            .parse()
            .map_err(|_| OverrideError::NotAnIndex(part.into()))?;
        if i < len {
            Ok(i)
        } else {
            Err(OverrideError::NoEntry { index: i, len })
        }
    };
    let mut at = root;
    for part in parents {
        at = match at {
            toml::Value::Table(t) => t
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default())),
            toml::Value::Array(a) => {
                let i = index(part, a.len())?;
                &mut a[i]
            }
            _ => return Err(OverrideError::NotASection(part.clone())),
        };
    }
    match at {
        toml::Value::Table(t) => {
            let value = env_value(raw, t.get(last.as_str()));
            t.insert(last.clone(), value);
            Ok(())
        }
        toml::Value::Array(a) => {
            let i = index(last, a.len())?;
            a[i] = env_value(raw, Some(&a[i]));
            Ok(())
        }
        _ => Err(OverrideError::ParentNotASection(last.clone())),
    }
}
