//! What an MQTT broker sends, from a hostile or broken broker: the framing
//! check, the head of an oversized PUBLISH, the packet decoder at both
//! protocol levels, MQTT 5 properties, and the topic mapping of whatever
//! topic a PUBLISH names. No input may panic; a decoded PUBLISH lies
//! inside its packet.
#![no_main]

use ferry::mqtt::codec::{self, Check, Incoming, LEVEL_3_1_1, LEVEL_5, Properties};
use ferry::mqtt::mapping::{Mapping, RouteSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&level, mut rest)) = data.split_first() else {
        return;
    };
    let level = if level & 1 == 0 { LEVEL_3_1_1 } else { LEVEL_5 };
    let mapping = Mapping::new([RouteSpec {
        filter: "+/#",
        qos: 1,
        topic: "t.{1}",
        key: "{topic}",
    }])
    .expect("a valid mapping");
    let (mut topic, mut key) = (String::new(), String::new());
    let _ = codec::publish_head(rest);
    while let Ok(Check::Complete { body_start, total }) = codec::check(rest) {
        let packet = &rest[..total];
        if let Ok(Incoming::Publish(p)) = codec::decode(packet, body_start, level) {
            assert!(p.payload.len() + p.topic.len() <= packet.len());
            let mut props = Properties::new(p.properties);
            while let Ok(Some(_)) = props.next_property() {}
            let _ = mapping.map(p.topic, &mut topic, &mut key);
            let _ = ferry::mqtt::digest(&p);
        }
        rest = &rest[total..];
    }
});
