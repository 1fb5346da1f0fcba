//! The `lines` format: a byte stream cut into `\n`-terminated lines, a
//! trailing `\r` dropped, empty lines skipped, lines over the size limit
//! discarded whole (however many reads they span). Pure: the listener
//! turns each piece into an event or a counted refusal.

/// What the splitter found in the bytes fed to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// One line, without its `\n` (or `\r\n`); never empty, never over the
    /// limit.
    Line(&'a [u8]),
    /// A line longer than the limit was discarded.
    TooLong,
}

/// Splits a byte stream into lines, carrying a partial line between reads.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
    /// Inside a line already refused as too long: skip to its end.
    discarding: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            partial: Vec::new(),
            discarding: false,
        }
    }

    /// Feed the next bytes of the stream; `at_eof` ends it, so a last line
    /// without `\n` counts too. Each piece found goes to `out`.
    pub fn feed(&mut self, mut data: &[u8], at_eof: bool, mut out: impl FnMut(Piece<'_>)) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&data[..nl], &data[nl + 1..]);
            data = rest;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            if self.partial.is_empty() {
                self.emit(line, &mut out);
            } else {
                let mut joined = std::mem::take(&mut self.partial);
                joined.extend_from_slice(line);
                self.emit(&joined, &mut out);
                joined.clear();
                // Keep the allocation for the next partial line.
                self.partial = joined;
            }
        }
        if !self.discarding {
            // One byte of room for a `\r` that the line's end will strip:
            // whether a line fits must not depend on where a read ends.
            if self.partial.len() + data.len() > self.max + 1 {
                self.partial.clear();
                self.discarding = true;
                out(Piece::TooLong);
            } else {
                self.partial.extend_from_slice(data);
            }
        }
        if at_eof {
            self.discarding = false;
            if !self.partial.is_empty() {
                let last = std::mem::take(&mut self.partial);
                self.emit(&last, &mut out);
            }
        }
    }

    fn emit(&self, line: &[u8], out: &mut impl FnMut(Piece<'_>)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        if line.len() > self.max {
            out(Piece::TooLong);
        } else {
            out(Piece::Line(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `chunks` in turn (the last one at end of stream); what came out.
    fn split(max: usize, chunks: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        let mut s = LineSplitter::new(max);
        let mut got = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.feed(c, i + 1 == chunks.len(), |p| {
                got.push(match p {
                    Piece::Line(l) => Some(l.to_vec()),
                    Piece::TooLong => None,
                })
            });
        }
        got
    }

    fn line(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn lines_span_reads_and_crlf_and_blank_lines_are_handled() {
        assert_eq!(
            split(100, &[b"a\r\nb", b"c\n\n\r\nd"]),
            vec![line("a"), line("bc"), line("d")]
        );
    }

    #[test]
    fn an_over_long_line_is_refused_once_and_the_next_one_kept() {
        // Too long within one read, and across three reads.
        assert_eq!(split(3, &[b"abcdef\nok\n"]), vec![None, line("ok")]);
        assert_eq!(
            split(3, &[b"ab", b"cdef", b"gh\nok"]),
            vec![None, line("ok")]
        );
        // Exactly the limit, with and without \r, however the reads fall.
        assert_eq!(split(3, &[b"abc\r\nabc\n"]), vec![line("abc"), line("abc")]);
        assert_eq!(
            split(3, &[b"abc\r", b"\nabc\n"]),
            vec![line("abc"), line("abc")]
        );
        assert_eq!(split(3, &[b"abcd", b"\n"]), vec![None]);
    }
}
