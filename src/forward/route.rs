//! The routing table: topic patterns map to one or more destination
//! topics. First matching route wins; an unmatched topic goes to itself,
//! and so does a matching route that names no destinations (one that only
//! sets a priority).

use crate::bad_setting::BadSetting;
use crate::pattern::{Priorities, glob_match};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Topic pattern; `*` matches any run of characters.
    pub pattern: String,
    /// Destination topics for events whose topic matches; none: the topic
    /// itself (a route that only sets a priority).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// 0 (lowest) … 9 (highest): with more to send than the uplink takes,
    /// higher priorities go first (each level doubles the share).
    #[serde(default = "default_priority")]
    pub priority: u8,
}

fn default_priority() -> u8 {
    crate::pattern::DEFAULT_PRIORITY
}

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
            Some(r) if !r.to.is_empty() => r.to.iter().for_each(|t| f(t)),
            _ => f(topic),
        }
    }

    /// Each route's pattern with its priority, in order.
    pub fn priorities(&self) -> Priorities {
        Priorities(
            self.routes
                .iter()
                .map(|r| (r.pattern.clone(), r.priority))
                .collect(),
        )
    }
}

impl RouteConfig {
    /// Semantic checks of one `[[route]]`; the error names the key.
    pub fn check(&self) -> Result<(), BadSetting> {
        let r = self;
        if r.pattern.is_empty() {
            return Err(BadSetting::at(
                "route.pattern".into(),
                "must not be empty".into(),
            ));
        }
        if r.priority > crate::pattern::MAX_PRIORITY {
            return Err(BadSetting::at(
                "route.priority".into(),
                format!(
                    "route `{}`: priority {} is out of range: 0 (lowest) to 9 (highest)",
                    r.pattern, r.priority
                ),
            ));
        }
        for t in &r.to {
            crate::event::validate_topic(t)
                .map_err(|e| BadSetting::at("route.to".to_string(), e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_wins_and_fan_out() {
        let r = Router::new(&[
            RouteConfig {
                pattern: "logs.*".into(),
                to: vec!["logs".into(), "archive".into()],
                priority: 5,
            },
            RouteConfig {
                pattern: "*".into(),
                to: vec!["other".into()],
                priority: 5,
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
