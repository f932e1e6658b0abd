//! Reading proc files line by line through one reusable buffer.
//!
//! `/proc/net/tcp` with thousands of sockets is megabytes of text, but the
//! kernel hands it out at most a page per `read(2)` anyway (seq_file), so
//! reading it whole into memory buys nothing. A fixed buffer keeps the
//! collector's memory flat however many sockets the device has, and avoids the
//! per-line `String` that `BufRead::lines` would allocate.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Size of the read buffer. Larger than a page so that regular files (fixture
/// trees) are read in few calls; no proc line comes anywhere near it.
pub(crate) const BUFFER_BYTES: usize = 64 * 1024;

/// A reusable line reader.
#[derive(Debug)]
pub(crate) struct LineReader {
    buf: Box<[u8]>,
}

impl Default for LineReader {
    fn default() -> Self {
        LineReader {
            buf: vec![0; BUFFER_BYTES].into_boxed_slice(),
        }
    }
}

impl LineReader {
    /// Calls `on_line` with every line of `path` (without its newline; a last
    /// line without a newline counts too). Returns how many lines were too long
    /// for the buffer: those are skipped, and the caller counts them as
    /// malformed, because no proc line we read is legitimately that long.
    pub(crate) fn for_each_line(
        &mut self,
        path: &Path,
        mut on_line: impl FnMut(&[u8]),
    ) -> io::Result<u64> {
        // `File::open` + `read` only: `fs::read` would add a statx call per file
        // for a size hint that proc files do not give anyway.
        let mut file = File::open(path)?;
        let buf = &mut self.buf[..];
        let mut filled = 0;
        let mut overlong = 0;
        // True while discarding the rest of a line that did not fit.
        let mut skipping = false;
        loop {
            let n = match file.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let end = filled + n;
            let mut start = 0;
            while let Some(pos) = memchr(b'\n', &buf[start..end]) {
                let line = &buf[start..start + pos];
                if skipping {
                    skipping = false;
                } else {
                    on_line(line);
                }
                start += pos + 1;
            }
            if n == 0 {
                if start < end && !skipping {
                    on_line(&buf[start..end]);
                }
                return Ok(overlong);
            }
            if start == 0 && end == buf.len() {
                // A whole buffer without a newline: drop it and the rest of
                // the line.
                if !skipping {
                    overlong += 1;
                }
                skipping = true;
                filled = 0;
            } else if skipping {
                filled = 0;
            } else {
                buf.copy_within(start..end, 0);
                filled = end - start;
            }
        }
    }

    /// Reads a small file whole (at most one buffer) and returns its text.
    pub(crate) fn read_small(&mut self, path: &Path) -> io::Result<&[u8]> {
        let mut file = File::open(path)?;
        let mut filled = 0;
        loop {
            if filled == self.buf.len() {
                break;
            }
            match file.read(&mut self.buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(&self.buf[..filled])
    }
}

/// Position of the first `needle` in `haystack`. Proc lines are short, so a
/// plain scan (which the compiler vectorises) is as fast as a SIMD crate here.
fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(content: &[u8], buffer: usize) -> (Vec<Vec<u8>>, u64) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, content).expect("write");
        let mut reader = LineReader {
            buf: vec![0; buffer].into_boxed_slice(),
        };
        let mut out = Vec::new();
        let overlong = reader
            .for_each_line(&path, |l| out.push(l.to_vec()))
            .expect("read");
        (out, overlong)
    }

    #[test]
    fn splits_lines_across_buffer_refills() {
        let (lines, overlong) = lines_of(b"ab\ncdef\ngh\nlast", 5);
        assert_eq!(
            lines,
            vec![
                b"ab".to_vec(),
                b"cdef".to_vec(),
                b"gh".to_vec(),
                b"last".to_vec()
            ]
        );
        assert_eq!(overlong, 0);
    }

    #[test]
    fn skips_and_counts_lines_longer_than_the_buffer() {
        let (lines, overlong) = lines_of(b"ok\n0123456789abcdef\nfine\n", 6);
        assert_eq!(lines, vec![b"ok".to_vec(), b"fine".to_vec()]);
        assert_eq!(overlong, 1);
    }

    #[test]
    fn empty_file_has_no_lines() {
        let (lines, overlong) = lines_of(b"", 8);
        assert!(lines.is_empty());
        assert_eq!(overlong, 0);
    }
}
