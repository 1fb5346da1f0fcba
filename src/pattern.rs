//! Topic patterns (`*` matches any run of characters) and the priority
//! each pattern gives its topics. Pure; used by routing and by the outbox,
//! which files each block under its topic's priority.

/// The priority of a topic no route names: the middle of 0 (lowest) … 9.
pub const DEFAULT_PRIORITY: u8 = 5;
/// The highest priority.
pub const MAX_PRIORITY: u8 = 9;
/// Priorities 0 … 9.
pub const PRIORITY_LEVELS: usize = MAX_PRIORITY as usize + 1;

/// `*` matches any run of characters (including none); all else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Patterns in order with their priorities: the first that matches a
/// topic gives its priority, as the first matching route gives its
/// destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Priorities(pub Vec<(String, u8)>);

impl Priorities {
    /// The priority of events sent to `topic`.
    pub fn of(&self, topic: &str) -> u8 {
        self.0
            .iter()
            .find(|(p, _)| glob_match(p, topic))
            .map_or(DEFAULT_PRIORITY, |&(_, prio)| prio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("sensors.*", "sensors.temp"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYc"));
        assert!(!glob_match("a*b*c", "aXXbY"));
        assert!(!glob_match("sensors.*", "sensor.temp"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn first_matching_pattern_gives_the_priority() {
        let p = Priorities(vec![("alarms.*".into(), 9), ("*".into(), 2)]);
        assert_eq!(p.of("alarms.fire"), 9);
        assert_eq!(p.of("temp"), 2);
        assert_eq!(Priorities::default().of("temp"), DEFAULT_PRIORITY);
    }
}
