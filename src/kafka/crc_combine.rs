//! CRC-32C of two byte strings joined, from their CRCs and the second's
//! length: how a stored run's batch CRC is made without reading its
//! records again (`record_batch::write_stored_run_header`).
//!
//! The `crc32c` crate has a combine, zlib's old one: it squares a 32×32
//! bit matrix per bit of the length, about 80,000 instructions for a run
//! of 10 KiB, more than computing the CRC of the records again with the
//! CPU's CRC instruction (11 % of ferry's instructions in the benchmark's
//! cachegrind run). This is zlib's newer method: multiply the first CRC
//! by x^(8·len) modulo the polynomial, that power built from a table of
//! x^(2^k), a few hundred instructions per set bit of the length.

/// The CRC-32C (Castagnoli) polynomial, bit-reversed.
const POLY: u32 = 0x82F6_3B78;

/// `a · b` modulo the polynomial, both in the reflected bit order (x^0 is
/// the top bit).
const fn mul_mod_poly(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut product = 0;
    loop {
        if a & m != 0 {
            product ^= b;
            if a & (m - 1) == 0 {
                return product;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        if m == 0 {
            return product;
        }
    }
}

/// `X_POW_2K[k]` = x^(2^k) modulo the polynomial, for every power a
/// length in bits can hold.
const X_POW_2K: [u32; 64] = {
    let mut table = [0u32; 64];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 64 {
        table[k] = p;
        p = mul_mod_poly(p, p);
        k += 1;
    }
    table
};

/// x^(n · 2^k) modulo the polynomial (n · 2^k below 2^64).
fn x_pow(mut n: u64, mut k: usize) -> u32 {
    let mut p = 1u32 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod_poly(X_POW_2K[k % 64], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC-32C of `A ‖ B` from `crc_a` = CRC-32C(A), `crc_b` = CRC-32C(B)
/// and `len_b` = |B| in bytes.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    // (A length in bits fits 64 bits below 2 EiB: a batch is megabytes.)
    // Shifting A's CRC over len_b zero bytes is a multiplication by
    // x^(8·len_b) = x^(len_b · 2^3).
    mul_mod_poly(x_pow(len_b as u64, 3), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the CRC of the joined bytes, for lengths of every size
    /// class up to a large run, and splits at both ends.
    #[test]
    fn combine_is_the_crc_of_the_joined_bytes() {
        let bytes: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut lens = vec![0usize, 1, 2, 3, 7, 8, 61, 255, 256, 4_096, 10_007];
        lens.extend([65_535, 69_999]);
        for &total in &lens {
            let data = &bytes[..total];
            for split in [0, 1, total / 3, total.saturating_sub(1), total] {
                let (a, b) = data.split_at(split.min(total));
                assert_eq!(
                    crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len()),
                    crc32c::crc32c(data),
                    "total {total}, split {split}"
                );
            }
        }
    }

    /// The same answers as the `crc32c` crate's combine.
    #[test]
    fn agrees_with_the_crates_combine() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let (a, b) = (seed as u32, (seed >> 32) as u32);
            let len = (seed >> 40) as usize;
            assert_eq!(
                crc32c_combine(a, b, len),
                crc32c::crc32c_combine(a, b, len),
                "{a:#x} {b:#x} {len}"
            );
        }
    }
}
