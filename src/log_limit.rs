//! Rate-limited logging: at most one line per interval from one source; the
//! rest are counted and reported with the next line, so bad input or a
//! long outage cannot flood the journal.

use log::Level;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    pub fn warn(&self, msg: &str) {
        self.log(Level::Warn, msg);
    }

    pub fn error(&self, msg: &str) {
        self.log(Level::Error, msg);
    }

    /// Log `msg` unless a line went out less than `interval` ago; true if logged.
    pub fn log(&self, level: Level, msg: &str) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        if let Some(last) = s.0 {
            if now.duration_since(last) < self.interval {
                s.1 += 1;
                return false;
            }
        }
        if s.1 > 0 {
            log::log!(level, "{msg} ({} similar messages suppressed)", s.1);
        } else {
            log::log!(level, "{msg}");
        }
        *s = (Some(now), 0);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_line_within_interval_is_suppressed() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert!(l.log(Level::Warn, "one"));
        assert!(!l.log(Level::Warn, "two"));
        let l = LogLimiter::new(Duration::ZERO);
        assert!(l.log(Level::Warn, "one"));
        assert!(l.log(Level::Warn, "two"));
    }
}
