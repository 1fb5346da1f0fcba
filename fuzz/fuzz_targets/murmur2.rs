//! murmur2 (differential): ferry's partitioner hash against a line-by-line
//! transcription of the Java client's `Utils.murmur2` (signed 32-bit
//! arithmetic, `>>>`, the fall-through switch), which is where keyed events
//! must land for other producers' consumers to agree.
#![no_main]

use ferry::kafka::partitioner::{murmur2, partition_for_key};
use libfuzzer_sys::fuzz_target;

/// `org.apache.kafka.common.utils.Utils.murmur2`, as Java writes it.
fn java_murmur2(data: &[u8]) -> i32 {
    let length = data.len() as i32;
    let seed: i32 = 0x9747b28c_u32 as i32;
    let m: i32 = 0x5bd1e995;
    let r = 24;
    let mut h: i32 = seed ^ length;
    let length4 = length / 4;
    for i in 0..length4 {
        let i4 = (i * 4) as usize;
        let mut k: i32 = (data[i4] as i32 & 0xff)
            + ((data[i4 + 1] as i32 & 0xff) << 8)
            + ((data[i4 + 2] as i32 & 0xff) << 16)
            + ((data[i4 + 3] as i32 & 0xff) << 24);
        k = k.wrapping_mul(m);
        k ^= ((k as u32) >> r) as i32;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let tail = (length & !3) as usize;
    let rem = length % 4;
    if rem == 3 {
        h ^= (data[tail + 2] as i32 & 0xff) << 16;
    }
    if rem >= 2 {
        h ^= (data[tail + 1] as i32 & 0xff) << 8;
    }
    if rem >= 1 {
        h ^= data[tail] as i32 & 0xff;
        h = h.wrapping_mul(m);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(m);
    h ^= ((h as u32) >> 15) as i32;
    h
}

fuzz_target!(|data: &[u8]| {
    let java = java_murmur2(data);
    assert_eq!(murmur2(data), java);
    // The Java client's partition: toPositive(hash) % partitions.
    for partitions in [1, 3, 12, 1000] {
        assert_eq!(
            partition_for_key(data, partitions),
            (java & 0x7fffffff) % partitions
        );
    }
});
