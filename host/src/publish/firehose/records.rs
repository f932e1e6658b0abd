//! Packing HEC event lines into Firehose records and records into
//! `PutRecordBatch` calls. Pure: no I/O, not async.
//!
//! Firehose concatenates record bytes into the HEC request body without a
//! delimiter, and HEC cannot join an event split across requests, so a record
//! always holds whole lines, each ending in `\n`. Firehose bills every record
//! rounded up to the next 5 KB, so records are filled up to a size budget
//! rather than sent one event each.

use std::ops::Range;

/// Firehose's limit for one record, before base64.
pub const MAX_RECORD_BYTES: usize = 1_000 * 1024;

/// Firehose's limit of records per `PutRecordBatch` call.
pub const MAX_CALL_RECORDS: usize = 500;

/// Bytes of record data per `PutRecordBatch` call. Firehose allows 4 MiB for
/// "the entire request" without saying whether base64 counts; 3,000 KiB of
/// data is 4,000 KiB once encoded, which leaves room for the JSON framing
/// under either reading.
pub const MAX_CALL_BYTES: usize = 3_000 * 1024;

/// A line longer than a Firehose record may be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event of {bytes} bytes exceeds Firehose's record limit of {MAX_RECORD_BYTES} bytes")]
pub struct OversizedEvent {
    pub bytes: usize,
}

/// Fills records with whole lines up to a byte budget.
#[derive(Debug)]
pub struct RecordPacker {
    budget: usize,
    records: Vec<Vec<u8>>,
    current: Vec<u8>,
}

impl RecordPacker {
    /// A packer whose records stay within `budget` bytes, except that a line
    /// longer than the budget gets a record of its own. The budget is clamped
    /// to [`MAX_RECORD_BYTES`].
    pub fn new(budget: usize) -> RecordPacker {
        let budget = budget.clamp(1, MAX_RECORD_BYTES);
        RecordPacker {
            budget,
            records: Vec::new(),
            current: Vec::with_capacity(budget),
        }
    }

    /// Adds one line, which must end in `\n`.
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), OversizedEvent> {
        debug_assert!(line.ends_with(b"\n"));
        if line.len() > MAX_RECORD_BYTES {
            return Err(OversizedEvent { bytes: line.len() });
        }
        if !self.current.is_empty() && self.current.len() + line.len() > self.budget {
            self.close_record();
        }
        self.current.extend_from_slice(line);
        Ok(())
    }

    /// Adds every line of `lines` (newline-terminated lines, as an outbox
    /// entry holds them); lines too long for any record are returned.
    pub fn push_lines(&mut self, lines: &[u8]) -> Vec<OversizedEvent> {
        split_lines(lines)
            .filter_map(|line| self.push_line(line).err())
            .collect()
    }

    /// Records so far, counting the one being filled.
    pub fn len(&self) -> usize {
        self.records.len() + usize::from(!self.current.is_empty())
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes so far.
    pub fn bytes(&self) -> usize {
        self.records.iter().map(Vec::len).sum::<usize>() + self.current.len()
    }

    /// The records, in the order their lines were added.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.current.is_empty() {
            self.close_record();
        }
        self.records
    }

    fn close_record(&mut self) {
        let full = std::mem::replace(&mut self.current, Vec::with_capacity(self.budget));
        self.records.push(full);
    }
}

/// The newline-terminated lines of `bytes`; a last line without `\n` (which
/// the sink never writes) is returned with its `\n` missing rather than lost.
pub fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split_inclusive(|b| *b == b'\n')
}

/// Splits records (given by their sizes) into consecutive `PutRecordBatch`
/// calls within [`MAX_CALL_RECORDS`] and [`MAX_CALL_BYTES`].
pub fn calls(sizes: &[usize]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, size) in sizes.iter().enumerate() {
        let full = i - start == MAX_CALL_RECORDS || bytes + size > MAX_CALL_BYTES;
        if i > start && full {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> Vec<u8> {
        let mut l = vec![b'x'; n - 1];
        l.push(b'\n');
        l
    }

    #[test]
    fn records_hold_whole_lines_within_budget() {
        let mut p = RecordPacker::new(100);
        for n in [40, 40, 40, 100, 10, 150, 5] {
            p.push_line(&line(n)).expect("fits a record");
        }
        let sizes: Vec<usize> = p.finish().iter().map(Vec::len).collect();
        // 40+40 | 40 | 100 | 10 | 150 (alone, over budget) | 5
        assert_eq!(sizes, [80, 40, 100, 10, 150, 5]);
    }

    #[test]
    fn no_line_is_ever_split_and_order_is_kept() {
        let mut input = Vec::new();
        for i in 0..500 {
            input.extend_from_slice(
                format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "p".repeat(i % 37)).as_bytes(),
            );
        }
        let mut p = RecordPacker::new(256);
        assert!(p.push_lines(&input).is_empty());
        let records = p.finish();
        assert!(records.iter().all(|r| r.ends_with(b"\n") && r.len() <= 256));
        assert_eq!(records.concat(), input);
    }

    #[test]
    fn oversized_line_is_refused() {
        let mut p = RecordPacker::new(5_000);
        let big = line(MAX_RECORD_BYTES + 1);
        assert_eq!(
            p.push_lines(&big),
            [OversizedEvent {
                bytes: MAX_RECORD_BYTES + 1
            }]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn calls_respect_record_and_byte_limits() {
        assert_eq!(calls(&[10; 1200]), [0..500, 500..1000, 1000..1200]);
        let big = MAX_RECORD_BYTES;
        // Three 1,000 KiB records fit in one call, the fourth does not.
        assert_eq!(calls(&[big; 5]), [0..3, 3..5]);
        assert_eq!(calls(&[]), Vec::<Range<usize>>::new());
    }
}
