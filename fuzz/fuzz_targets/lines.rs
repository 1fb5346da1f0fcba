//! The `lines` splitter (differential): however a stream is cut into
//! reads, what comes out is what a plain split of the whole stream on
//! `\n` gives (trailing `\r` dropped, empty lines skipped, lines over the
//! limit refused once each).
#![no_main]

use ferry::ingest::lines::{LineSplitter, Piece};
use libfuzzer_sys::fuzz_target;

/// The whole stream at once: `None` for a refused line.
fn reference(stream: &[u8], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    for line in stream.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        out.push((line.len() <= max).then(|| line.to_vec()));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = 1 + data[0] as usize % 64;
    let mut cut_seed = u32::from(data[1]) | 1;
    let stream = &data[2..];
    let mut splitter = LineSplitter::new(max);
    let mut got = Vec::new();
    let mut rest = stream;
    loop {
        // Read sizes from a small LCG: 0 to 15 bytes at a time.
        cut_seed = cut_seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((cut_seed >> 16) as usize % 16).min(rest.len());
        let (read, after) = rest.split_at(n);
        rest = after;
        let at_eof = rest.is_empty();
        splitter.feed(read, at_eof, |p| {
            got.push(match p {
                Piece::Line(l) => {
                    assert!(!l.is_empty() && l.len() <= max);
                    Some(l.to_vec())
                }
                Piece::TooLong => None,
            })
        });
        if at_eof {
            break;
        }
    }
    assert_eq!(got, reference(stream, max), "max {max}");
});
