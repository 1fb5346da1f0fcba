//! Record batches as a Fetch answer carries them (`kafka::record_read`),
//! what `ferry fleet` reads from a broker: no input may panic or
//! decompress past the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(read) = ferry::kafka::record_read::read_batches(data, 1 << 20) {
        for r in &read.records {
            assert!(r.value.as_ref().is_none_or(|v| v.len() <= 1 << 20));
        }
    }
});
