//! The at-rest event encoding, against postcard (the format it writes by
//! hand): whatever ferry decodes, postcard decodes to the same event, and
//! ferry's encoding of it is postcard's, byte for byte.
#![no_main]

use ferry::event::Event;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

/// `Event`'s fields, in order, as postcard sees them.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Mirror<'a> {
    topic: &'a str,
    #[serde(borrow)]
    key: Option<&'a [u8]>,
    headers: &'a [u8],
    value: &'a [u8],
    timestamp_ms: i64,
    clock: Option<(u32, u64)>,
}

fuzz_target!(|data: &[u8]| {
    let Ok((event, rest)) = Event::decode_from(data) else {
        return;
    };
    let used = &data[..data.len() - rest.len()];
    let (mirror, after): (Mirror, &[u8]) =
        postcard::take_from_bytes(data).expect("postcard decodes what ferry decodes");
    assert_eq!(after.len(), rest.len());
    assert_eq!(mirror.topic, event.topic);
    assert_eq!(mirror.key, event.key);
    assert_eq!(mirror.headers, event.headers);
    assert_eq!(mirror.value, event.value);
    assert_eq!(mirror.timestamp_ms, event.timestamp_ms);
    assert_eq!(mirror.clock, event.clock.map(|c| (c.boot, c.boot_ms)));
    let mut ours = Vec::new();
    event.encode_into(&mut ours);
    let theirs = postcard::to_allocvec(&mirror).unwrap();
    assert_eq!(ours, theirs);
    // Canonical input re-encodes to itself.
    if used == theirs.as_slice() {
        assert_eq!(ours, used);
    }
    let _ = event.header_iter().count();
});
