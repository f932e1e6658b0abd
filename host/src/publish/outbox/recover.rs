//! Opening an outbox: every segment scanned, every checksum checked, torn
//! tails cut, damage skipped by re-synchronising on the next valid record,
//! and the id counter placed past every id ever seen or reserved.
//!
//! Nothing here needs a writable file system: a cut that the file system
//! refuses is remembered and done before the next write.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::storage::{self, Reservation, io};
use super::{ACK_EXT, ACK_RECORD, HEADER, MAX_ID, Outbox, OutboxError, SEGMENT_EXT, Segment, Slot};

/// How much of a damaged segment is read at a time while looking for the
/// next valid record.
const RESYNC_WINDOW: usize = 64 * 1024;

impl Outbox {
    /// Loads the directory's segments; see the module documentation.
    pub(super) fn recover(&mut self) -> Result<(), OutboxError> {
        let dir = self.dir.clone();
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let mut ack_names: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = item.map_err(io(&dir))?.path();
            let Some(first) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            match path.extension().and_then(|e| e.to_str()) {
                Some(SEGMENT_EXT) => names.push((first, path)),
                Some(ACK_EXT) => ack_names.push((first, path)),
                _ => {}
            }
        }
        names.sort();

        // A sidecar without its segment is left over from a crash between the
        // two deletions; its entries are gone already.
        for (first, path) in ack_names {
            if names.binary_search_by_key(&first, |(f, _)| *f).is_err() {
                self.doomed.push(path);
            }
        }
        if let Err(error) = self.delete_doomed() {
            self.note_fault(&error);
        }

        let last = names.last().map(|(first, _)| *first);
        let mut highest_acked = 0;
        for (first, path) in names {
            let acked = self.recover_segment(first, path, Some(first) == last)?;
            highest_acked = highest_acked.max(acked);
        }
        // An ack can outlive the record it acknowledges (a card that ignores
        // flushes): its id was handed out all the same.
        self.next_id = self.next_id.max(highest_acked.saturating_add(1));
        self.reserved = match storage::read_reservation(&dir) {
            Reservation::Valid(n) if n <= MAX_ID => n,
            Reservation::Valid(n) => {
                let path = dir.join(storage::RESERVATION_FILE);
                crate::state::note_corrupt(
                    &self.status,
                    &path,
                    &format!("{n} is beyond any id ever handed out"),
                    "ids continue after the highest id found in the segments and acks",
                );
                0
            }
            Reservation::Absent => 0,
            Reservation::Corrupt(reason) => {
                let path = dir.join(storage::RESERVATION_FILE);
                crate::state::note_corrupt(
                    &self.status,
                    &path,
                    &reason,
                    "ids continue after the highest id found in the segments and acks",
                );
                0
            }
        };
        self.next_id = self.next_id.max(self.reserved);
        self.pop_front_gone();
        self.reclaim_segments();
        Ok(())
    }

    /// Scans one segment: queues its waiting entries, skips damage, and cuts
    /// a torn tail when it is the last segment. Returns the highest id its
    /// sidecar acknowledges.
    fn recover_segment(
        &mut self,
        first: u64,
        path: PathBuf,
        last: bool,
    ) -> Result<u64, OutboxError> {
        let ack_path = path.with_extension(ACK_EXT);
        let file = File::open(&path).map_err(io(&path))?;
        let (acks, ack_len, ack_file_len) = self.recover_acks(&ack_path)?;
        let highest_acked = acks.keys().max().copied().unwrap_or(0);

        // Records are read one at a time into one reused buffer, so opening
        // a large backlog costs one record of memory, not one segment.
        let file_len = file.metadata().map_err(io(&path))?.len();
        // Offsets are kept in 32 bits (segments are at most 4 GiB); bytes
        // past that are damage.
        let scan_end = file_len.min(u64::from(u32::MAX));
        let mut buf = Vec::new();
        let mut offset = 0u64;
        let mut last_id = self.next_id.saturating_sub(1);
        let mut waiting = 0usize;
        let mut size = file_len;
        while offset < scan_end {
            let entry = entry_at(&file, scan_end, offset, &mut buf)
                .map_err(io(&path))?
                .filter(|(id, _, _)| *id > last_id);
            if let Some((id, len, crc)) = entry {
                if acks.get(&id) != Some(&crc) {
                    self.queue.push_back(Slot {
                        id,
                        segment: first,
                        offset: offset as u32,
                        len: len as u32,
                        crc,
                        gone: false,
                    });
                    waiting += 1;
                    self.waiting += 1;
                    self.waiting_bytes += len as u64;
                }
                last_id = id;
                offset += (HEADER + len) as u64;
                continue;
            }
            if let Some(next) =
                next_valid(&file, scan_end, offset, last_id, &mut buf).map_err(io(&path))?
            {
                self.status.add(&self.key("corrupt_records"), 1);
                warn!(
                    segment = %path.display(),
                    offset,
                    skipped_bytes = next - offset,
                    resumed_at = next,
                    "outbox record fails its checksum: skipped up to the next valid record; the entry is lost"
                );
                offset = next;
                continue;
            }
            if last {
                self.status.add(&self.key("recovered_torn"), 1);
                warn!(
                    segment = %path.display(),
                    offset,
                    bytes = file_len - offset,
                    "outbox segment ends in a torn or corrupt record: truncated"
                );
                size = offset;
            } else {
                // Not a tear (a crash tears only the segment being written):
                // the damage stays on disk for inspection, skipped, until the
                // segment is deleted with its last entry.
                self.status.add(&self.key("corrupt_records"), 1);
                warn!(
                    segment = %path.display(),
                    offset,
                    bytes = file_len - offset,
                    "outbox segment ends in damaged bytes: skipped and left in place"
                );
            }
            break;
        }
        self.next_id = self
            .next_id
            .max(last_id.saturating_add(1))
            .max(first.min(MAX_ID));
        let mut segment = Segment {
            path,
            ack_path,
            file,
            size: if last { size } else { file_len },
            file_len,
            ack_len,
            ack_file_len,
            unwritten_acks: Vec::new(),
            waiting,
            // Only the last segment is appended to; one with damage past
            // its records must not be, and older ones never are.
            sealed: !last,
        };
        if segment.file_len > segment.size {
            match storage::cut(&segment.path, segment.size) {
                Ok(()) => segment.file_len = segment.size,
                Err(source) => self.note_fault(&storage::io_error(&segment.path, source)),
            }
        }
        if segment.ack_file_len > segment.ack_len {
            match storage::cut(&segment.ack_path, segment.ack_len) {
                Ok(()) => segment.ack_file_len = segment.ack_len,
                Err(source) => self.note_fault(&storage::io_error(&segment.ack_path, source)),
            }
        }
        self.segments.insert(first, segment);
        Ok(highest_acked)
    }

    /// Reads a segment's ack sidecar up to its first bad record: the
    /// acknowledged ids with the checksum of the record each acknowledges,
    /// the valid length, and the file's length.
    fn recover_acks(&self, ack_path: &Path) -> Result<(HashMap<u64, u32>, u64, u64), OutboxError> {
        let mut data = Vec::new();
        match File::open(ack_path) {
            Ok(mut f) => {
                f.read_to_end(&mut data).map_err(io(ack_path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(storage::io_error(ack_path, source)),
        }
        let mut acks = HashMap::new();
        let mut offset = 0;
        while let Some((id, crc)) = parse_ack(&data, offset) {
            acks.insert(id, crc);
            offset += ACK_RECORD;
        }
        if offset != data.len() {
            self.status.add(&self.key("recovered_torn"), 1);
            warn!(
                file = %ack_path.display(),
                offset,
                "outbox ack file ends in a torn record: truncated; those entries will be sent again"
            );
        }
        Ok((acks, offset as u64, data.len() as u64))
    }
}

/// Parses the entry record at `offset` of `data`: its id, payload length
/// and checksum, when the record is complete and its checksum matches.
pub(super) fn parse_entry(data: &[u8], offset: usize) -> Option<(u64, usize, u32)> {
    let header: &[u8; HEADER] = data.get(offset..offset + HEADER)?.try_into().ok()?;
    let (len, id, sum) = split_header(header);
    let start = offset + HEADER;
    let payload = data.get(start..start.checked_add(len as usize)?)?;
    (id < MAX_ID && entry_crc(len, id, payload) == sum).then_some((id, len as usize, sum))
}

/// Parses the ack record at `offset`: the entry id and the checksum of the
/// entry it acknowledges.
fn parse_ack(data: &[u8], offset: usize) -> Option<(u64, u32)> {
    let record = data.get(offset..offset + ACK_RECORD)?;
    let sum = u32::from_le_bytes(record[12..16].try_into().ok()?);
    if crc32fast::hash(&record[..12]) != sum {
        return None;
    }
    let id = u64::from_le_bytes(record[..8].try_into().ok()?);
    let entry = u32::from_le_bytes(record[8..12].try_into().ok()?);
    (id < MAX_ID).then_some((id, entry))
}

/// The ack record for the entry `id` whose record has checksum `entry_crc`.
pub(super) fn ack_record(id: u64, entry_crc: u32) -> [u8; ACK_RECORD] {
    let mut record = [0u8; ACK_RECORD];
    record[..8].copy_from_slice(&id.to_le_bytes());
    record[8..12].copy_from_slice(&entry_crc.to_le_bytes());
    let sum = crc32fast::hash(&record[..12]);
    record[12..].copy_from_slice(&sum.to_le_bytes());
    record
}

/// The ids of the records that verify one after the other from the start of
/// a segment, with increasing ids: what recovery must keep whatever follows.
/// For the fuzz target's invariants.
pub(crate) fn intact_prefix(data: &[u8]) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut offset = 0;
    while let Some((id, len, _)) = parse_entry(data, offset) {
        if ids.last().is_some_and(|last| id <= *last) {
            break;
        }
        ids.push(id);
        offset += HEADER + len;
    }
    ids
}

/// The ids acknowledged by the valid records at the start of a sidecar.
pub(crate) fn ack_ids(data: &[u8]) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut offset = 0;
    while let Some((id, _)) = parse_ack(data, offset) {
        ids.push(id);
        offset += ACK_RECORD;
    }
    ids
}

/// Reads and checks the entry record at `offset` of a segment `size` bytes
/// long: its id, payload length and checksum, when the record is complete
/// and its checksum matches. `buf` is reused between calls. I/O errors are
/// errors, not damage: a failing read must never make recovery cut good
/// records.
fn entry_at(
    file: &File,
    size: u64,
    offset: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(u64, usize, u32)>> {
    if offset + HEADER as u64 > size {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, offset)?;
    let (len, id, sum) = split_header(&header);
    if offset + HEADER as u64 + u64::from(len) > size {
        return Ok(None);
    }
    if id >= MAX_ID {
        return Ok(None);
    }
    buf.resize(len as usize, 0);
    file.read_exact_at(buf, offset + HEADER as u64)?;
    Ok((entry_crc(len, id, buf) == sum).then_some((id, len as usize, sum)))
}

fn split_header(header: &[u8; HEADER]) -> (u32, u64, u32) {
    let mut len = [0u8; 4];
    let mut id = [0u8; 8];
    let mut sum = [0u8; 4];
    len.copy_from_slice(&header[0..4]);
    id.copy_from_slice(&header[4..12]);
    sum.copy_from_slice(&header[12..16]);
    (
        u32::from_le_bytes(len),
        u64::from_le_bytes(id),
        u32::from_le_bytes(sum),
    )
}

/// Where the next valid record after the bad one at `offset` starts, if
/// any: the earliest later offset holding a record that verifies and carries
/// an id above `last_id`, so a corrupt length field costs one record, not
/// the rest of the segment. (Following the bad record's own length field
/// first would be faster after a flipped payload bit, but it can jump over
/// a valid record: the earliest one must win.) A false match needs a CRC-32
/// collision.
fn next_valid(
    file: &File,
    size: u64,
    offset: u64,
    last_id: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<u64>> {
    // Scan window by window; a window overlaps the next by a header so a
    // record starting near its end is seen whole.
    let mut window = vec![0u8; RESYNC_WINDOW + HEADER];
    let mut start = offset + 1;
    while start + HEADER as u64 <= size {
        let n = (size - start).min(window.len() as u64) as usize;
        file.read_exact_at(&mut window[..n], start)?;
        let candidates = n.saturating_sub(HEADER - 1);
        for at in 0..candidates.min(RESYNC_WINDOW) {
            let header: &[u8; HEADER] = window[at..at + HEADER].try_into().expect("16 bytes");
            let (len, id, _) = split_header(header);
            let candidate = start + at as u64;
            if id <= last_id || candidate + HEADER as u64 + u64::from(len) > size {
                continue;
            }
            if entry_at(file, size, candidate, buf)?.is_some() {
                return Ok(Some(candidate));
            }
        }
        start += RESYNC_WINDOW as u64;
    }
    Ok(None)
}

pub(super) fn entry_crc(len: u32, id: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&id.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}
