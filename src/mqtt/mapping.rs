//! From an MQTT topic to a Kafka topic and key: topic filters (`+`, `#`)
//! and templates (`{N}` for the N-th level, `{topic}` for all of it).
//! Pure; rendering writes into buffers the caller reuses.

use super::codec::{Properties, Property, Publish};
use crate::bad_setting::BadSetting;
use crate::event::{encode_headers, validate_topic};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A level of the MQTT topic, from 0.
    Level(usize),
    Whole,
}

/// Why a topic filter or a topic or key template is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("`{0}`: a `{{` is not closed")]
    Unclosed(String),
    #[error("`{text}`: `{{{name}}}` is neither {{topic}} nor a level number {{1}}, {{2}}, …")]
    Placeholder { text: String, name: String },
    #[error("a topic filter must not be empty")]
    EmptyFilter,
    #[error(
        "`{0}`: shared subscriptions are not supported: each gateway's ferry needs every message of its own session"
    )]
    Shared(String),
    #[error("`{0}`: `+` and `#` must stand alone in a level")]
    WildcardInLevel(String),
    #[error("`{0}`: `#` must be the last level")]
    HashNotLast(String),
}

/// A Kafka topic or key built from the MQTT topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    pub fn parse(text: &str) -> Result<Template, MappingError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                None => {
                    pieces.push(Piece::Text(rest.to_string()));
                    break;
                }
                Some(open) => {
                    if open > 0 {
                        pieces.push(Piece::Text(rest[..open].to_string()));
                    }
                    let Some(close) = rest[open..].find('}') else {
                        return Err(MappingError::Unclosed(text.into()));
                    };
                    let name = &rest[open + 1..open + close];
                    pieces.push(match name {
                        "topic" => Piece::Whole,
                        n => match n.parse::<usize>() {
                            Ok(i) if i >= 1 => Piece::Level(i - 1),
                            _ => {
                                return Err(MappingError::Placeholder {
                                    text: text.into(),
                                    name: n.into(),
                                });
                            }
                        },
                    });
                    rest = &rest[open + close + 1..];
                }
            }
        }
        Ok(Template(pieces))
    }

    /// Fixed text only (no level, no whole topic).
    pub fn literal(&self) -> Option<String> {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push_str(t),
                _ => return None,
            }
        }
        Some(s)
    }

    fn max_level(&self) -> Option<usize> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Piece::Level(i) => Some(*i),
                _ => None,
            })
            .max()
    }

    /// Render for `topic` into `out` (cleared first); false if it names a
    /// level the topic does not have.
    pub fn render(&self, topic: &str, out: &mut String) -> bool {
        out.clear();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Whole => out.push_str(topic),
                Piece::Level(i) => match topic.split('/').nth(*i) {
                    Some(level) => out.push_str(level),
                    None => return false,
                },
            }
        }
        true
    }
}

/// One `[[mqtt.subscribe]]`: its filter and where its messages go.
#[derive(Debug, Clone)]
pub struct Route {
    pub filter: String,
    pub qos: u8,
    pub topic: Template,
    pub key: Option<Template>,
}

/// One subscription as the config gives it (`[[mqtt.subscribe]]`).
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec<'a> {
    pub filter: &'a str,
    pub qos: u8,
    pub topic: &'a str,
    /// "" for no key.
    pub key: &'a str,
}

impl Route {
    /// Errors: (the key within the subscription, what is wrong).
    pub fn new(s: RouteSpec<'_>) -> Result<Route, BadSetting> {
        check_filter(s.filter).map_err(|e| BadSetting::at("filter".to_string(), e.to_string()))?;
        let topic = Template::parse(s.topic)
            .map_err(|e| BadSetting::at("topic".to_string(), e.to_string()))?;
        if let Some(fixed) = topic.literal() {
            validate_topic(&fixed)
                .map_err(|e| BadSetting::at("topic".to_string(), e.to_string()))?;
        }
        let key = if s.key.is_empty() {
            None
        } else {
            Some(
                Template::parse(s.key)
                    .map_err(|e| BadSetting::at("key".to_string(), e.to_string()))?,
            )
        };
        // A level the filter always has: a fixed level or a `+`; `#` may be empty.
        let levels = s.filter.split('/').filter(|l| *l != "#").count();
        for (what, t) in [("topic", Some(&topic)), ("key", key.as_ref())] {
            if let Some(i) = t.and_then(Template::max_level)
                && i >= levels
            {
                return Err(BadSetting::at(
                    what.to_string(),
                    format!(
                        "`{}` uses level {{{}}}, but topics matching `{}` may have only {levels}",
                        if what == "topic" { s.topic } else { s.key },
                        i + 1,
                        s.filter
                    ),
                ));
            }
        }
        Ok(Route {
            filter: s.filter.to_string(),
            qos: s.qos,
            topic,
            key,
        })
    }
}

/// MQTT's rules for a topic filter.
fn check_filter(filter: &str) -> Result<(), MappingError> {
    if filter.is_empty() {
        return Err(MappingError::EmptyFilter);
    }
    if filter.starts_with("$share/") {
        return Err(MappingError::Shared(filter.into()));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wild = level.contains('+') || level.contains('#');
        if wild && *level != "+" && *level != "#" {
            return Err(MappingError::WildcardInLevel(filter.into()));
        }
        if *level == "#" && i != levels.len() - 1 {
            return Err(MappingError::HashNotLast(filter.into()));
        }
    }
    Ok(())
}

/// Does `topic` match `filter`? Topics starting with `$` match only
/// filters that name their first level.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The record headers of a message, in the event's header encoding, into
/// `out`: `mqtt-topic`, `mqtt-retained` for a retained message, then every
/// MQTT 5 user property in order. `Err(count)` if there are more than a
/// record's header list holds (65,535).
pub fn record_headers(p: &Publish<'_>, out: &mut Vec<u8>) -> Result<(), usize> {
    let user_properties = || {
        let mut it = Properties::new(p.properties);
        std::iter::from_fn(move || it.next_property().ok().flatten()).filter_map(
            |prop| match prop {
                Property::User(name, value) => Some((name, value.as_bytes())),
                _ => None,
            },
        )
    };
    let count = 1 + usize::from(p.retain) + user_properties().count();
    if count > u16::MAX as usize {
        return Err(count);
    }
    let retained = p.retain.then_some(("mqtt-retained", &b"1"[..]));
    encode_headers(
        [("mqtt-topic", p.topic.as_bytes())]
            .into_iter()
            .chain(retained)
            .chain(user_properties()),
        out,
    );
    Ok(())
}

/// Every subscription of one link, in config order.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub routes: Vec<Route>,
}

/// Why a message has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unroutable {
    /// No subscription's filter matches (the broker sent it anyway: an
    /// old subscription of a persistent session).
    NoRoute,
    /// The template names a level the topic lacks, or builds no valid
    /// Kafka topic name.
    BadTopic(String),
}

impl Mapping {
    pub fn new<'a>(
        subscriptions: impl IntoIterator<Item = RouteSpec<'a>>,
    ) -> Result<Mapping, BadSetting> {
        let routes = subscriptions
            .into_iter()
            .map(Route::new)
            .collect::<Result<_, _>>()?;
        Ok(Mapping { routes })
    }

    /// Kafka topic into `topic_out`, key (if any) into `key_out`: true if
    /// the message has a key.
    pub fn map(
        &self,
        mqtt_topic: &str,
        topic_out: &mut String,
        key_out: &mut String,
    ) -> Result<bool, Unroutable> {
        let Some(route) = self.routes.iter().find(|r| matches(&r.filter, mqtt_topic)) else {
            return Err(Unroutable::NoRoute);
        };
        if !route.topic.render(mqtt_topic, topic_out) {
            return Err(Unroutable::BadTopic(format!(
                "MQTT topic `{mqtt_topic}` has too few levels for the Kafka topic of filter `{}`",
                route.filter
            )));
        }
        if let Err(e) = validate_topic(topic_out) {
            return Err(Unroutable::BadTopic(format!(
                "MQTT topic `{mqtt_topic}` (filter `{}`) makes {e}",
                route.filter
            )));
        }
        match &route.key {
            None => Ok(false),
            Some(k) => {
                if !k.render(mqtt_topic, key_out) {
                    return Err(Unroutable::BadTopic(format!(
                        "MQTT topic `{mqtt_topic}` has too few levels for the key of filter `{}`",
                        route.filter
                    )));
                }
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub<'a>(filter: &'a str, topic: &'a str, key: &'a str) -> RouteSpec<'a> {
        RouteSpec {
            filter,
            qos: 1,
            topic,
            key,
        }
    }

    #[test]
    fn headers_are_the_topic_retained_flag_and_user_properties_in_order() {
        let props = [
            0x26, 0, 1, b'k', 0, 1, b'v', 0x03, 0, 1, b'x', 0x26, 0, 1, b'k', 0, 0,
        ];
        let p = Publish {
            dup: false,
            qos: 1,
            retain: true,
            topic: "a/b",
            packet_id: 1,
            properties: &props,
            payload: b"",
        };
        let mut out = Vec::new();
        record_headers(&p, &mut out).unwrap();
        let got: Vec<(&str, &[u8])> = crate::event::HeaderIter::new(&out).collect();
        assert_eq!(
            got,
            [
                ("mqtt-topic", &b"a/b"[..]),
                ("mqtt-retained", b"1"),
                ("k", b"v"),
                ("k", b"")
            ]
        );
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "x/y"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("+/+", "a/"));
    }

    #[test]
    fn zigbee2mqtt_tree_maps_to_topic_and_key() {
        let m = Mapping::new([
            sub("zigbee2mqtt/bridge/#", "zigbee.bridge", ""),
            sub("zigbee2mqtt/+", "zigbee.devices", "{2}"),
            sub("tele/+/SENSOR", "tasmota.{3}", "{topic}"),
        ])
        .unwrap();
        let (mut t, mut k) = (String::new(), String::new());
        assert_eq!(m.map("zigbee2mqtt/kitchen", &mut t, &mut k), Ok(true));
        assert_eq!((t.as_str(), k.as_str()), ("zigbee.devices", "kitchen"));
        assert_eq!(m.map("zigbee2mqtt/bridge/state", &mut t, &mut k), Ok(false));
        assert_eq!(t, "zigbee.bridge");
        assert_eq!(m.map("tele/plug1/SENSOR", &mut t, &mut k), Ok(true));
        assert_eq!(
            (t.as_str(), k.as_str()),
            ("tasmota.SENSOR", "tele/plug1/SENSOR")
        );
        assert_eq!(m.map("other", &mut t, &mut k), Err(Unroutable::NoRoute));
    }

    #[test]
    fn a_level_that_is_no_kafka_topic_is_refused_clearly() {
        let m = Mapping::new([sub("room/+", "room.{2}", "")]).unwrap();
        let (mut t, mut k) = (String::new(), String::new());
        match m.map("room/living room", &mut t, &mut k) {
            Err(Unroutable::BadTopic(e)) => assert!(e.contains("living room"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_config_names_the_key() {
        let e = Route::new(sub("a/#/b", "t", "")).unwrap_err();
        assert_eq!(e.key, "filter");
        let e = Route::new(sub("a/+", "t.{3}", "")).unwrap_err();
        assert_eq!(e.key, "topic");
        assert!(e.message.contains("{3}"), "{}", e.message);
        let e = Route::new(sub("a/+", "bad topic", "")).unwrap_err();
        assert_eq!(e.key, "topic");
        let e = Route::new(sub("a/+", "t", "{x}")).unwrap_err();
        assert_eq!(e.key, "key");
        let e = Route::new(sub("$share/g/a/+", "t", "")).unwrap_err();
        assert_eq!(e.key, "filter");
    }
}
