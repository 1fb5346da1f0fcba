//! What a corrupt SD card hands back: a stored block's payload, checksum,
//! event count and size, verified, decompressed and decoded. Never a panic;
//! a block that passes yields exactly `count` decodable events of its topic.
#![no_main]

use ferry::event::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let count = u16::from_le_bytes([data[0], data[1]]) as u32;
    // Any declared size (a damaged row may say anything): ferry must not
    // allocate what the payload cannot hold.
    let raw = u32::from_le_bytes([data[2], data[3], data[4], data[5] & 0x7f]) as usize;
    let honest_crc = data[5] & 0x80 == 0;
    let payload = &data[6..];
    let crc = if honest_crc {
        crc32fast::hash(payload)
    } else {
        u32::from_le_bytes([data[6 % data.len()], data[7 % data.len()], 0, 0])
    };
    // Blocks hold one topic; the verified ones are then read without it.
    if let Ok(events) = ferry::outbox::verify_block(payload, crc, count, raw, "t") {
        let mut rest = &events[..];
        for _ in 0..count {
            let (event, r) = Event::decode_from(rest).expect("verified events decode");
            let (again, r2) = Event::decode_in(rest, "t").expect("and decode in their block");
            assert_eq!((event, r), (again, r2));
            rest = r;
        }
        assert!(rest.is_empty());
    }
});
