//! The routing table: topic patterns map to one or more destination
//! topics. First matching route wins; an unmatched topic goes to itself.

use crate::config::RouteConfig;

#[derive(Debug, Default, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self {
            routes: routes.to_vec(),
        }
    }

    /// Call `f` with each destination of an event sent to `topic`.
    pub fn for_each_destination<'a>(&'a self, topic: &'a str, mut f: impl FnMut(&'a str)) {
        match self.routes.iter().find(|r| glob_match(&r.pattern, topic)) {
            Some(r) => r.to.iter().for_each(|t| f(t)),
            None => f(topic),
        }
    }
}

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
    fn first_match_wins_and_fan_out() {
        let r = Router::new(&[
            RouteConfig {
                pattern: "logs.*".into(),
                to: vec!["logs".into(), "archive".into()],
            },
            RouteConfig {
                pattern: "*".into(),
                to: vec!["other".into()],
            },
        ]);
        let mut got = Vec::new();
        r.for_each_destination("logs.app", |t| got.push(t.to_string()));
        assert_eq!(got, vec!["logs", "archive"]);
        got.clear();
        r.for_each_destination("metrics", |t| got.push(t.to_string()));
        assert_eq!(got, vec!["other"]);
        got.clear();
        Router::new(&[]).for_each_destination("metrics", |t| got.push(t.to_string()));
        assert_eq!(got, vec!["metrics"]);
    }
}
