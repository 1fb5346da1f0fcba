//! LEB128 varints, unsigned and zigzag-signed: the at-rest event encoding,
//! Kafka's record fields and the stored delivery plans all write them.
//! Pure; imports nothing of ferry.

/// Signed to unsigned, small magnitudes small.
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Append `v` as an unsigned LEB128 varint.
#[inline]
pub fn put_unsigned(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Append `v` zigzagged (Kafka's `varint`/`varlong`).
#[inline]
pub fn put_signed(out: &mut Vec<u8>, v: i64) {
    put_unsigned(out, zigzag(v));
}

/// Bytes [`put_signed`] writes for `v`.
#[inline]
pub fn signed_len(v: i64) -> usize {
    let bits = 64 - (zigzag(v) | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_the_encoding_and_zigzag_round_trips() {
        for v in [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            8191,
            8192,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            put_signed(&mut out, v);
            assert_eq!(out.len(), signed_len(v), "{v}");
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut out = Vec::new();
        put_unsigned(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
