//! `ferry fleet`'s heartbeat decoder: anyone who may write to the heartbeat
//! topic can put anything there. No input may panic; each line is one
//! record, and the fleet built from them renders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferry::fleet::decode(data);
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = data
        .split(|b| *b == b'\n')
        .map(|line| (None, line.to_vec()))
        .collect();
    let now = 1_800_000_000_000;
    let (fleet, skipped) = ferry::fleet::gateways(&records, now);
    assert!(fleet.len() + skipped <= records.len());
    let _ = ferry::fleet::render(&fleet, skipped, now);
});
