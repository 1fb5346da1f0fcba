//! Clock repair for gateways without a real-time clock: they boot with a
//! wrong wall clock and set it later (NTP). ferry records, with each event
//! it timestamps while the kernel says the clock is unsynchronised
//! (`adjtimex`), the boot id and the time since boot; once the clock is
//! synchronised in the same boot, such events are forwarded with the
//! timestamp recomputed from the boot-relative time and a
//! `ferry-ts-corrected` header carrying the original one.
//!
//! The correction is a pure function of clock readings, so it is tested
//! with injected readings; [`SystemClock`] reads the real ones, and works
//! under the shipped, sandboxed unit too (`synchronized` and `boot_id`
//! below say how).

use serde::{Deserialize, Serialize};

/// Stored with an event timestamped while the clock was unsynchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsyncedStamp {
    /// CRC-32 of the boot id: which boot the `boot_ms` belongs to.
    pub boot: u32,
    /// Milliseconds since boot (CLOCK_BOOTTIME) when the event arrived.
    pub boot_ms: u64,
}

/// One look at the clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub synchronized: bool,
    pub wall_ms: i64,
    pub boot_ms: u64,
    pub boot: u32,
}

impl Reading {
    /// The stamp to store with an event timestamped now, if the clock is
    /// not synchronised.
    pub fn stamp(&self) -> Option<UnsyncedStamp> {
        (!self.synchronized).then_some(UnsyncedStamp {
            boot: self.boot,
            boot_ms: self.boot_ms,
        })
    }
}

/// What to send for an event's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    /// Trusted as recorded.
    AsRecorded(i64),
    /// Recomputed; the original goes in `ferry-ts-corrected`.
    Corrected { corrected: i64, original: i64 },
    /// Recorded unsynchronised and not (yet) correctable: sent as recorded,
    /// marked with `ferry-ts-unsynced`.
    Unsynced(i64),
}

/// Decide the timestamp of an event recorded at `recorded_ms` with
/// `stamp`, given the clocks `now`.
pub fn correct(recorded_ms: i64, stamp: Option<UnsyncedStamp>, now: &Reading) -> Timestamp {
    match stamp {
        None => Timestamp::AsRecorded(recorded_ms),
        Some(s) if now.synchronized && s.boot == now.boot && s.boot_ms <= now.boot_ms => {
            let age = (now.boot_ms - s.boot_ms) as i64;
            Timestamp::Corrected {
                corrected: now.wall_ms - age,
                original: recorded_ms,
            }
        }
        Some(_) => Timestamp::Unsynced(recorded_ms),
    }
}

/// The real clocks: `adjtimex` for synchronisation, CLOCK_BOOTTIME, boot id.
#[derive(Debug, Clone)]
pub struct SystemClock {
    boot: u32,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            boot: crc32fast::hash(boot_id().as_bytes()),
        }
    }
}

/// The boot id, without dashes: `FERRY_BOOT_ID` where set (the shipped
/// unit sets it to `%b`, the kernel's, because its sandbox hides `/proc`'s
/// with `ProcSubset=pid`; the power-cut tests set one per simulated boot),
/// else the kernel's from `/proc`. Without either, an id of this process:
/// events timestamped unsynchronised can then be corrected only until a
/// restart (said once in the log).
pub fn boot_id() -> String {
    let from_env = std::env::var("FERRY_BOOT_ID");
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    match (from_proc, from_env) {
        (_, Ok(id)) | (Ok(id), _) if !id.trim().is_empty() => id.trim().replace('-', ""),
        (proc_err, _) => {
            let why = proc_err
                .err()
                .map_or("empty".to_string(), |e| e.to_string());
            log::warn!(
                "cannot read the boot id (/proc/sys/kernel/random/boot_id: {why}; FERRY_BOOT_ID not set): \
                 events timestamped before the clock is synchronised can be corrected only until ferry restarts"
            );
            format!("process-{}-{}", std::process::id(), now_ms())
        }
    }
}

impl SystemClock {
    pub fn read(&self) -> Reading {
        Reading {
            synchronized: synchronized(),
            wall_ms: now_ms(),
            boot_ms: boot_ms(),
            boot: self.boot,
        }
    }
}

/// Where systemd-timesyncd marks a synchronised clock.
const TIMESYNCD_DIR: &str = "/run/systemd/timesync";

/// Set to `1` where the kernel never learns that the clock is good (a VM
/// or container whose host keeps time, a gateway whose RTC is set but
/// whose time daemon does not discipline the kernel): the wall clock is
/// then taken as synchronised whatever `adjtimex` says.
pub const CLOCK_SYNCHRONIZED_ENV: &str = "FERRY_CLOCK_SYNCHRONIZED";

/// Whether [`CLOCK_SYNCHRONIZED_ENV`] is `1` (read once: the daemon says
/// so at start, as it changes how every event's timestamp is taken).
pub fn declared_synchronized() -> bool {
    static DECLARED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DECLARED.get_or_init(|| std::env::var(CLOCK_SYNCHRONIZED_ENV).is_ok_and(|v| v == "1"))
}

/// Whether the clock is synchronised. [`CLOCK_SYNCHRONIZED_ENV`] first;
/// then the kernel's view: `adjtimex` (read-only: modes 0) returns
/// TIME_ERROR while unsynchronised. Where a sandbox refuses the call,
/// systemd-timesyncd's flag file answers: it exists once timesyncd has
/// synchronised the clock. Without either the state is unknown: said once
/// in the log, and the clock is trusted (the alternative would mark every
/// event unsynchronised).
fn synchronized() -> bool {
    if declared_synchronized() {
        return true;
    }
    // SAFETY: an all-zero timex with modes = 0 only reads the clock state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid, writable timex.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state != -1 {
        return state != libc::TIME_ERROR;
    }
    let refused = std::io::Error::last_os_error();
    let dir = std::path::Path::new(TIMESYNCD_DIR);
    if dir.is_dir() {
        return dir.join("synchronized").exists();
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log::warn!(
            "cannot learn whether the clock is synchronised: adjtimex was refused ({refused}) and \
             {TIMESYNCD_DIR} does not exist (timesyncd not running); timestamps are taken as they \
             are. Under systemd, allow `SystemCallFilter=adjtimex clock_adjtime clock_adjtime64` (read-only without CAP_SYS_TIME) \
             or run systemd-timesyncd"
        );
    });
    true
}

fn boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Milliseconds on a clock that never jumps (since the first call).
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Milliseconds since the Unix epoch by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: u32 = 7;

    fn reading(synchronized: bool, wall_ms: i64, boot_ms: u64) -> Reading {
        Reading {
            synchronized,
            wall_ms,
            boot_ms,
            boot: BOOT,
        }
    }

    #[test]
    fn synchronised_clock_records_nothing_extra() {
        assert_eq!(reading(true, 1, 1).stamp(), None);
        assert_eq!(
            correct(1234, None, &reading(true, 9, 9)),
            Timestamp::AsRecorded(1234)
        );
    }

    #[test]
    fn event_from_before_sync_is_corrected_in_the_same_boot() {
        // Booted with the clock at 1970 + 60 s; event at 60 s after boot.
        let at_ingest = reading(false, 60_000, 60_000);
        let stamp = at_ingest.stamp().unwrap();
        // NTP set the clock; 40 s later (boot time 100 s) the event is sent.
        let now = reading(true, 1_764_000_000_000, 100_000);
        assert_eq!(
            correct(at_ingest.wall_ms, Some(stamp), &now),
            Timestamp::Corrected {
                corrected: 1_764_000_000_000 - 40_000,
                original: 60_000
            }
        );
    }

    #[test]
    fn not_yet_synchronised_or_other_boot_is_marked_not_corrected() {
        let stamp = reading(false, 5_000, 5_000).stamp();
        assert_eq!(
            correct(5_000, stamp, &reading(false, 9_000, 9_000)),
            Timestamp::Unsynced(5_000)
        );
        let other_boot = Reading {
            boot: BOOT + 1,
            ..reading(true, 1_764_000_000_000, 1_000)
        };
        assert_eq!(
            correct(5_000, stamp, &other_boot),
            Timestamp::Unsynced(5_000)
        );
    }

    #[test]
    fn system_clock_reads() {
        let r = SystemClock::default().read();
        assert!(r.boot_ms > 0);
        assert!(r.wall_ms > 0);
    }
}
