//! Sizes and durations, both ways: parsed from what a person writes
//! ("64MiB", "1GB", "30s", "7d", or a plain number) and printed back the
//! same way (`check-config` shows `max_age = "7d"`, not milliseconds).
//! Pure; the serde helpers here are what every config section uses.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// The leading number of `s` and the unit after it.
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit))
}

/// Why a size, duration or file mode as written is not one; each names
/// the text and what it should look like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{0}` is not a size such as \"64MiB\" or 1048576")]
    NotASize(String),
    #[error("`{0}` has an unknown unit; use B, KiB, MiB, GiB, kB, MB, GB")]
    SizeUnit(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{0}` is not a duration such as \"30s\" or \"7d\"")]
    NotADuration(String),
    #[error("`{0}` has an unknown unit; use ms, s, m, h or d")]
    DurationUnit(String),
    #[error("`{0}` is too long")]
    TooLong(String),
    #[error("`{0}` is not an octal file mode such as \"0660\"")]
    NotAMode(String),
}

/// Parse "64MiB", "1GB", "512k" or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let s = s.trim();
    let (n, unit) = number_and_unit(s).ok_or_else(|| UnitError::NotASize(s.into()))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return Err(UnitError::SizeUnit(s.into())),
    };
    n.checked_mul(mult)
        .ok_or_else(|| UnitError::TooLarge(s.into()))
}

/// Parse "500ms", "30s", "5m", "12h", "7d" or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let s = s.trim();
    let (n, unit) = number_and_unit(s).ok_or_else(|| UnitError::NotADuration(s.into()))?;
    let ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(UnitError::DurationUnit(s.into())),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| UnitError::TooLong(s.into()))
}

/// A size as a person writes it: the largest binary or decimal unit that
/// divides it exactly ("1GiB", "200kB", "1000000" stays "1MB").
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1_000, "kB"),
    ];
    if bytes == 0 {
        return "0".into();
    }
    UNITS
        .iter()
        .find(|(unit, _)| bytes % unit == 0)
        .map_or_else(
            || format!("{bytes}B"),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
}

/// A duration as a person writes it: the largest of d, h, m, s, ms that
/// divides it exactly ("7d", "30s", "100ms").
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    if ms == 0 {
        return "0s".into();
    }
    UNITS.iter().find(|(unit, _)| ms % unit == 0).map_or_else(
        || format!("{ms}ms"),
        |(unit, name)| format!("{}{name}", ms / unit),
    )
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(u64),
    Str(String),
}

/// `#[serde(with = "crate::units::size")]`: a number of bytes or a string
/// with a unit; written back with a unit.
pub mod size {
    use super::*;
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            0 => s.serialize_u64(0),
            v => s.serialize_str(&format_size(v)),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match NumOrString::deserialize(d)? {
            NumOrString::Num(n) => Ok(n),
            NumOrString::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// `#[serde(with = "crate::units::duration")]`: a number of seconds or a
/// string with a unit; written back with a unit.
pub mod duration {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match NumOrString::deserialize(d)? {
            NumOrString::Num(n) => Ok(Duration::from_secs(n)),
            NumOrString::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_written_and_parse_back() {
        for (bytes, text) in [
            (1u64 << 30, "1GiB"),
            (200_000, "200kB"),
            (1_000_000, "1MB"),
            (64 << 20, "64MiB"),
            (1_048_577, "1048577B"),
            (0, "0"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text).unwrap(), bytes);
        }
    }

    #[test]
    fn durations_print_as_written_and_parse_back() {
        for (ms, text) in [
            (604_800_000u64, "7d"),
            (30_000, "30s"),
            (100, "100ms"),
            (300_000, "5m"),
            (7_200_000, "2h"),
            (1_500, "1500ms"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d);
        }
    }
}
