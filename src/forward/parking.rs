//! Topic parking: a destination topic that cannot be produced to until an
//! operator acts (missing with auto-create off, not authorised) is parked,
//! and the blocks of the source topics routed to it are skipped until a
//! growing, jittered delay has passed, so other topics go on. A topic
//! Kafka does not know *yet* (a broker creating it) is first retried on a
//! short schedule. Pure: the caller passes the time and does the logging.

use crate::backoff::{Backoff, RetryConfig};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A topic Kafka does not know (yet) is retried on a short schedule for
/// this long (a broker that creates topics needs a moment)...
pub const NEW_TOPIC_GRACE: Duration = Duration::from_secs(10);
/// ...from this delay...
pub const NEW_TOPIC_INITIAL: Duration = Duration::from_millis(100);
/// ...to this one.
pub const NEW_TOPIC_MAX: Duration = Duration::from_secs(2);
/// Parked topics are retried after a growing delay from this...
pub const PARK_INITIAL: Duration = Duration::from_secs(10);
/// ...to this (or the retry maximum, if longer).
pub const PARK_MAX: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Parked {
    until: Instant,
    backoff: Backoff,
    /// When it was first found missing (the short schedule's start).
    since: Instant,
    /// Delay of the short schedule for a topic not known yet.
    short: Duration,
    /// Source topics whose blocks are held back while this one is parked.
    sources: HashSet<String>,
    reason: String,
}

impl Parked {
    /// Still holding blocks back. An inactive entry only remembers the
    /// backoff, so a topic that fails again is parked for longer.
    fn is_active(&self) -> bool {
        !self.sources.is_empty()
    }
}

/// How a topic was parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parking {
    /// Retried after this long.
    pub delay: Duration,
    /// On the short schedule of a topic not known yet.
    pub short: bool,
}

/// The parked destination topics.
#[derive(Debug)]
pub struct ParkedTopics {
    topics: HashMap<String, Parked>,
    seed: u64,
    /// The longest park (at least [`PARK_MAX`]).
    max: Duration,
}

impl ParkedTopics {
    /// `seed` jitters each topic's delays differently; `retry_max` (the
    /// `[retry] max`) lengthens the longest park if it is longer.
    pub fn new(seed: u64, retry_max: Duration) -> Self {
        Self {
            topics: HashMap::new(),
            seed,
            max: PARK_MAX.max(retry_max),
        }
    }

    /// Park `topic` at `now`, holding back `sources`. `missing`: Kafka does
    /// not know the topic (it may be being created).
    pub fn park(
        &mut self,
        topic: &str,
        sources: impl IntoIterator<Item = String>,
        missing: bool,
        reason: &str,
        now: Instant,
    ) -> Parking {
        let retry = RetryConfig {
            initial: PARK_INITIAL,
            max: self.max,
            multiplier: 2.0,
        };
        let seed = self.seed ^ crc32fast::hash(topic.as_bytes()) as u64;
        let p = self
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| Parked {
                until: now,
                backoff: Backoff::new(&retry, seed),
                since: now,
                short: NEW_TOPIC_INITIAL,
                sources: HashSet::new(),
                reason: String::new(),
            });
        let short = missing && now.duration_since(p.since) < NEW_TOPIC_GRACE;
        let delay = if short {
            let d = p.short;
            p.short = (p.short * 2).min(NEW_TOPIC_MAX);
            d
        } else {
            p.backoff.next_delay()
        };
        p.until = now + delay;
        p.sources.extend(sources);
        p.reason = reason.to_string();
        Parking { delay, short }
    }

    /// The topic is parked now (its blocks are held back).
    pub fn is_parked(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(Parked::is_active)
    }

    /// Hold back `sources` too for `topic`, if it is parked; false if not.
    pub fn hold(&mut self, topic: &str, sources: impl IntoIterator<Item = String>) -> bool {
        match self.topics.get_mut(topic).filter(|p| p.is_active()) {
            Some(p) => {
                p.sources.extend(sources);
                true
            }
            None => false,
        }
    }

    /// `topic` delivers again: forget its backoff if its park was lifted.
    /// True if it had been parked before.
    pub fn forgive(&mut self, topic: &str) -> bool {
        if self.topics.get(topic).is_some_and(|p| !p.is_active()) {
            self.topics.remove(topic);
            return true;
        }
        false
    }

    /// Source topics whose blocks are held back.
    pub fn held_sources(&self) -> Vec<String> {
        self.topics
            .values()
            .flat_map(|p| p.sources.iter().cloned())
            .collect()
    }

    /// The parked topics, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, p)| p.is_active())
            .map(|(t, _)| t.clone())
            .collect();
        names.sort();
        names
    }

    /// A parked topic is due for its retry at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.topics
            .values()
            .any(|p| p.is_active() && p.until <= now)
    }

    /// When the next parked topic is due, if any is parked.
    pub fn next_due(&self) -> Option<Instant> {
        self.topics
            .values()
            .filter(|p| p.is_active())
            .map(|p| p.until)
            .min()
    }

    /// Lift the parks whose time has come: `(topic, why it was parked)`.
    /// Each keeps its backoff, so failing again parks it for longer.
    pub fn lift_due(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut lifted = Vec::new();
        for (topic, p) in &mut self.topics {
            if p.is_active() && p.until <= now {
                p.sources.clear();
                lifted.push((topic.clone(), p.reason.clone()));
            }
        }
        lifted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_topic_not_known_yet_is_retried_on_the_short_schedule_then_backs_off() {
        let t0 = Instant::now();
        let mut p = ParkedTopics::new(7, Duration::from_secs(30));
        let mut delays = Vec::new();
        let mut now = t0;
        while now.duration_since(t0) < NEW_TOPIC_GRACE {
            let parking = p.park("new", sources(&["src"]), true, "unknown", now);
            assert!(parking.short);
            delays.push(parking.delay);
            now += parking.delay;
            assert!(p.due(now));
            p.lift_due(now);
        }
        // 100 ms doubling to 2 s, then 2 s until the grace is over.
        assert_eq!(
            delays[..6],
            [100, 200, 400, 800, 1600, 2000].map(Duration::from_millis)
        );
        let parking = p.park("new", sources(&["src"]), true, "unknown", now);
        assert!(!parking.short, "past the grace period");
        assert!(parking.delay <= PARK_INITIAL && parking.delay > Duration::ZERO);
    }

    #[test]
    fn parked_sources_are_held_until_due_and_the_backoff_grows_until_forgiven() {
        let t0 = Instant::now();
        let mut p = ParkedTopics::new(1, Duration::from_secs(30));
        let first = p.park("denied", sources(&["a", "b"]), false, "not authorised", t0);
        assert!(!first.short && p.is_parked("denied"));
        assert!(p.hold("denied", sources(&["c"])));
        assert!(!p.hold("other", sources(&["d"])));
        let mut held = p.held_sources();
        held.sort();
        assert_eq!(held, ["a", "b", "c"]);
        assert_eq!(p.names(), ["denied"]);
        assert!(!p.due(t0));
        let at = t0 + first.delay;
        assert_eq!(p.next_due(), Some(at));
        assert_eq!(
            p.lift_due(at),
            [("denied".to_string(), "not authorised".to_string())]
        );
        assert!(!p.is_parked("denied") && p.held_sources().is_empty());
        // Fails again: the delay keeps growing (full jitter, so compare
        // ceilings over a few parks).
        let mut ceiling = Duration::ZERO;
        let mut now = at;
        for _ in 0..6 {
            let d = p.park("denied", sources(&["a"]), false, "again", now).delay;
            ceiling = ceiling.max(d);
            now += d;
            p.lift_due(now);
        }
        assert!(ceiling > first.delay, "{ceiling:?} vs {:?}", first.delay);
        assert!(ceiling <= PARK_MAX);
        // Delivering again forgets it.
        assert!(p.forgive("denied"));
        assert!(!p.forgive("denied"));
    }
}
