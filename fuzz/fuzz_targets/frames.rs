//! The frames protocol from a hostile client: the framing check, the frame
//! decoder, and the reply decoder `ferry send` runs on the daemon's
//! answers. No input may panic; a frame that decodes encodes back the same.
#![no_main]

use ferry::ingest::frame::{self, Check, Frame, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // A stream of frames, as a connection reads it.
    while let Check::Complete { total } = frame::check(rest) {
        let body = &rest[4..total];
        if let Ok(Frame::Event(e, ts)) = frame::decode(body) {
            let headers: Vec<(&str, &[u8])> = e.header_iter().collect();
            let mut again = Vec::new();
            frame::encode_event(&mut again, e.topic, e.key, &headers, e.value, ts);
            let reparsed = frame::decode(&again[4..]).expect("an encoded frame decodes");
            assert_eq!(reparsed, Frame::Event(e, ts));
        }
        let _ = Reply::decode(body);
        rest = &rest[total..];
    }
    let _ = frame::declared_len(data);
});
