//! Partition choice. Keyed events use the Java client's murmur2 partitioner
//! so they land where every other producer puts the same key; keyless
//! events stick to one partition per batch and rotate between batches.

/// Kafka's `Utils.murmur2` (Java client), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's `toPositive(murmur2(key)) % numPartitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Sticky spreading of keyless events: one partition for a whole batch,
/// the next one for the next batch.
#[derive(Debug, Default)]
pub struct Sticky {
    next: u32,
}

impl Sticky {
    pub fn seeded(seed: u32) -> Self {
        Self { next: seed }
    }

    /// The partition for the keyless events of the next batch.
    pub fn next_batch(&mut self, partitions: i32) -> i32 {
        let p = (self.next % partitions.max(1) as u32) as i32;
        self.next = self.next.wrapping_add(1);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the Java client's own test (`UtilsTest.testMurmur2`),
    /// re-checked here against `org.apache.kafka.common.utils.Utils`.
    #[test]
    fn matches_java_client() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key),
                *want,
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn partition_is_positive_modulo() {
        for key in [&b"21"[..], b"foobar", b"abc", b"", b"sensor-17"] {
            let p = partition_for_key(key, 7);
            assert!((0..7).contains(&p));
            assert_eq!(p, (murmur2(key) & 0x7fff_ffff) % 7);
        }
        // "21" hashes negative: toPositive, not abs.
        assert_eq!(
            partition_for_key(b"21", 1000),
            (-973932308i32 & 0x7fff_ffff) % 1000
        );
    }

    #[test]
    fn sticky_rotates_per_batch() {
        let mut s = Sticky::seeded(5);
        assert_eq!(s.next_batch(4), 1);
        assert_eq!(s.next_batch(4), 2);
        assert_eq!(s.next_batch(4), 3);
        assert_eq!(s.next_batch(4), 0);
    }
}
