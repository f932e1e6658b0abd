//! The durable outbox: reports and events wait here, on disk, until a
//! transport acknowledged them. It survives `kill -9` and power loss, is
//! bounded in bytes, and keeps only a few integers per waiting entry in memory.
//!
//! # Why an append-only segment log and not an embedded store
//!
//! The access pattern is a queue: append at the tail, read and delete at the
//! head, rarely out of order. An append-only log serves it with one `write` and
//! one `fdatasync` per push, which is the minimum any durable store can do.
//! Embedded key-value stores (redb, sled, fjall) bring B-trees or LSM trees,
//! compaction and tens of thousands of lines for ordering we get from the file
//! offset; sled is unmaintained, redb copies pages on every commit (several
//! fsyncs and a page write per entry), and all of them make memory and flash
//! wear harder to reason about on a Raspberry Pi class SD card. The log here is
//! a few hundred lines whose crash behaviour can be read in one sitting.
//!
//! # Layout
//!
//! The directory holds segments named by the id of their first entry:
//! `00000000000000000001.seg` with the entries and a sidecar
//! `00000000000000000001.ack` listing the ids of the entries of that segment
//! that left the outbox (acknowledged or evicted). A `lock` file is held with
//! `flock` so that two processes never share a directory.
//!
//! An entry record is a 16-byte header, little endian — payload length `u32`,
//! entry id `u64`, CRC-32 of (length, id, payload) `u32` — followed by the
//! payload. An ack record is 12 bytes: entry id `u64` and CRC-32 of it `u32`.
//!
//! # fsync discipline
//!
//! * [`Outbox::push`] writes header and payload with a single `write` and
//!   calls `fdatasync` before it returns `Ok`: an entry the caller was told
//!   about is on stable storage.
//! * A new segment is created, `fsync`ed, and its directory `fsync`ed before
//!   the first entry goes in, so the file itself cannot vanish on power loss.
//! * [`Outbox::acknowledge`] appends an ack record and `fdatasync`s it. Losing
//!   an ack would only resend an entry (at-least-once), but a resend of a Device
//!   Defender report costs a 300 s slot, so acks are made durable too.
//! * A segment whose entries all left is deleted (segment first, then its
//!   sidecar, so a crash in between never resurrects acknowledged entries).
//!
//! # Torn writes and corruption
//!
//! On [`Outbox::open`] every segment is scanned and every record's checksum
//! checked. A record that is cut short or fails its checksum at the end of a
//! segment is a torn write: the file is truncated at the record's start. A
//! corrupt record in the middle of a segment (a flipped bit) is skipped when the
//! record after it verifies, otherwise the rest of the segment is cut. Both are
//! counted in `<prefix>.recovered_torn` / `<prefix>.corrupt_records` and
//! logged at warn, naming the file and offset. Ack sidecars are checked the
//! same way; a torn ack record only means an entry is sent again.
//!
//! # Bounded in bytes: the oldest give way
//!
//! [`OutboxLimits::max_bytes`] bounds the disk space of the segments. When a
//! push would exceed it, the **oldest** waiting entries are evicted (recorded
//! like an acknowledgement) until the new entry fits: for monitoring data the
//! newest state of the device is worth more than the oldest. Every eviction is
//! counted in `<prefix>.evicted` and logged at warn with the entry id.
//!
//! # Memory
//!
//! Payloads stay on disk. Memory holds one 24-byte slot (id, segment, offset,
//! length) per waiting entry and one open file pair per segment, so 10,000
//! waiting reports cost about 240 KB whatever their size.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::status::Status;

/// Identifies an entry in an outbox; strictly increasing in push order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(pub u64);

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How large an outbox may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OutboxLimits {
    /// Disk space the segments may take; past it the oldest entries are
    /// evicted. At least twice `segmentBytes`.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub max_bytes: u64,
    /// Size at which a new segment file is started. Disk is reclaimed a whole
    /// segment at a time, once all of its entries left.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub segment_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_bytes: 32 * 1024 * 1024,
            segment_bytes: 1024 * 1024,
        }
    }
}

impl OutboxLimits {
    /// The largest payload one entry may carry.
    pub fn max_payload(&self) -> u64 {
        self.segment_bytes.saturating_sub(HEADER as u64)
    }

    /// Checks the limits; the message names the configuration key.
    pub fn check(&self, key: &str) -> Result<(), String> {
        if self.segment_bytes < 4096 {
            return Err(format!(
                "key `{key}.segmentBytes`: {} is too small; at least 4096 bytes are needed",
                self.segment_bytes
            ));
        }
        if self.segment_bytes > u64::from(u32::MAX) {
            return Err(format!(
                "key `{key}.segmentBytes`: {} is too large; at most {} bytes",
                self.segment_bytes,
                u32::MAX
            ));
        }
        if self.max_bytes < 2 * self.segment_bytes {
            return Err(format!(
                "key `{key}.maxBytes`: {} must be at least twice `{key}.segmentBytes` ({})",
                self.max_bytes, self.segment_bytes
            ));
        }
        Ok(())
    }
}

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file of the outbox could not be read, written or synced.
    #[error("outbox file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process (or another `Outbox` in this one) uses the directory.
    #[error("outbox {dir} is in use by another process")]
    Locked { dir: PathBuf },
    /// The limits are inconsistent.
    #[error("outbox {dir}: {message}")]
    Limits { dir: PathBuf, message: String },
    /// The payload cannot fit in one segment.
    #[error("outbox {dir}: a payload of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { dir: PathBuf, size: u64, max: u64 },
    /// The entry is not waiting (never pushed, or already acknowledged or evicted).
    #[error("outbox {dir}: entry {id} is not waiting")]
    UnknownEntry { dir: PathBuf, id: EntryId },
    /// The entry's bytes no longer match their checksum (media corruption
    /// after the outbox was opened).
    #[error("outbox file {path}: entry {id} at offset {offset} fails its checksum")]
    Corrupt {
        path: PathBuf,
        id: EntryId,
        offset: u64,
    },
}

/// Entry header: payload length u32, id u64, crc32 u32.
const HEADER: usize = 16;
/// Ack record: id u64, crc32 u32.
const ACK_RECORD: usize = 12;
const SEGMENT_EXT: &str = "seg";
const ACK_EXT: &str = "ack";
const LOCK_FILE: &str = "lock";

/// Where a waiting entry lives. Kept small: one per waiting entry.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    segment: u64,
    offset: u32,
    len: u32,
    /// Left the outbox (acknowledged or evicted) but still in front of a
    /// waiting entry, so not yet popped from the queue.
    gone: bool,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    ack_path: PathBuf,
    file: File,
    ack: File,
    size: u64,
    /// Entries of this segment still waiting.
    waiting: usize,
}

/// A durable, bounded FIFO of payloads. See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    limits: OutboxLimits,
    status: Status,
    prefix: String,
    /// Segments by the id of their first entry; the last one is appended to.
    segments: BTreeMap<u64, Segment>,
    /// Waiting entries in id order, with gone entries interleaved until the
    /// front is popped.
    queue: VecDeque<Slot>,
    waiting: usize,
    waiting_bytes: u64,
    next_id: u64,
    _lock: File,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, recovering from torn writes and
    /// corruption; waiting entries resume in their original order. Counters go
    /// to `status` under `status_prefix` (e.g. `outbox`, `firehose.outbox`).
    pub fn open(
        dir: &Path,
        limits: OutboxLimits,
        status_prefix: &str,
        status: Status,
    ) -> Result<Outbox, OutboxError> {
        limits
            .check("outbox")
            .map_err(|message| OutboxError::Limits {
                dir: dir.to_owned(),
                message,
            })?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock_dir(dir)?;

        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let mut ack_names: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = item.map_err(io(dir))?.path();
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

        let mut outbox = Outbox {
            dir: dir.to_owned(),
            limits,
            status,
            prefix: status_prefix.to_owned(),
            segments: BTreeMap::new(),
            queue: VecDeque::new(),
            waiting: 0,
            waiting_bytes: 0,
            next_id: 1,
            _lock: lock,
        };

        // A sidecar without its segment is left over from a crash between the
        // two deletions; its entries are gone already.
        for (first, path) in &ack_names {
            if names.binary_search_by_key(first, |(f, _)| *f).is_err() {
                std::fs::remove_file(path).map_err(io(path))?;
            }
        }

        for (first, path) in names {
            outbox.recover_segment(first, path)?;
        }
        if let Some(slot) = outbox.queue.back() {
            outbox.next_id = outbox.next_id.max(slot.id + 1);
        }
        outbox.pop_front_gone();
        outbox.reclaim_segments()?;
        outbox.publish_gauges();
        debug!(
            dir = %outbox.dir.display(),
            depth = outbox.waiting,
            bytes = outbox.waiting_bytes,
            "outbox opened"
        );
        Ok(outbox)
    }

    /// Appends `payload`; returns once it is on stable storage. When the
    /// outbox is full the oldest entries are evicted first (counted, logged).
    pub fn push(&mut self, payload: &[u8]) -> Result<EntryId, OutboxError> {
        let size = payload.len() as u64;
        if size > self.limits.max_payload() {
            return Err(OutboxError::TooLarge {
                dir: self.dir.clone(),
                size,
                max: self.limits.max_payload(),
            });
        }
        let record = HEADER as u64 + size;

        let needs_new_segment = match self.segments.last_key_value() {
            None => true,
            Some((_, s)) => s.size + record > self.limits.segment_bytes,
        };
        if needs_new_segment {
            self.start_segment()?;
        }
        self.make_room(record)?;

        let id = self.next_id;
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&entry_crc(payload.len() as u32, id, payload).to_le_bytes());
        buf.extend_from_slice(payload);

        let first = *self
            .segments
            .keys()
            .next_back()
            .expect("push starts a segment before it appends");
        let segment = self.active_mut();
        let offset = segment.size;
        if let Err(source) = segment
            .file
            .write_all(&buf)
            .and_then(|()| segment.file.sync_data())
        {
            // Cut a partial record off so that later appends stay readable;
            // if even that fails, recovery at the next open will do it.
            let _ = segment.file.set_len(offset);
            return Err(OutboxError::Io {
                path: segment.path.clone(),
                source,
            });
        }
        segment.size += record;
        segment.waiting += 1;
        self.queue.push_back(Slot {
            id,
            segment: first,
            offset: offset as u32,
            len: payload.len() as u32,
            gone: false,
        });
        self.next_id = id + 1;
        self.waiting += 1;
        self.waiting_bytes += size;
        self.status.add(&self.key("pushed"), 1);
        self.publish_gauges();
        Ok(EntryId(id))
    }

    /// The waiting entries, oldest first.
    pub fn pending(&self) -> Vec<EntryId> {
        self.queue
            .iter()
            .filter(|s| !s.gone)
            .map(|s| EntryId(s.id))
            .collect()
    }

    /// The oldest waiting entry, if any.
    pub fn oldest(&self) -> Option<EntryId> {
        self.queue.iter().find(|s| !s.gone).map(|s| EntryId(s.id))
    }

    /// The newest waiting entry, if any.
    pub fn newest(&self) -> Option<EntryId> {
        self.queue
            .iter()
            .rev()
            .find(|s| !s.gone)
            .map(|s| EntryId(s.id))
    }

    /// Reads a waiting entry's payload from disk, checking its checksum.
    pub fn read(&self, id: EntryId) -> Result<Vec<u8>, OutboxError> {
        let slot = self.slot(id)?;
        let segment = &self.segments[&slot.segment];
        let mut buf = vec![0u8; HEADER + slot.len as usize];
        segment
            .file
            .read_exact_at(&mut buf, u64::from(slot.offset))
            .map_err(io(&segment.path))?;
        match parse_entry(&buf, 0) {
            Some((read_id, len)) if read_id == id.0 && len == slot.len as usize => {
                buf.drain(..HEADER);
                Ok(buf)
            }
            _ => Err(OutboxError::Corrupt {
                path: segment.path.clone(),
                id,
                offset: u64::from(slot.offset),
            }),
        }
    }

    /// Removes an entry the transport acknowledged. Call it only after the
    /// acknowledgement: this is what makes delivery at-least-once.
    pub fn acknowledge(&mut self, id: EntryId) -> Result<(), OutboxError> {
        self.leave(id)?;
        self.status.add(&self.key("acknowledged"), 1);
        self.publish_gauges();
        Ok(())
    }

    /// Removes an entry that will never be sent, after the caller handed it on
    /// elsewhere (e.g. a Device Defender report superseded by a newer one).
    /// Counted in `<prefix>.removed`, apart from acknowledgements.
    pub fn remove(&mut self, id: EntryId) -> Result<(), OutboxError> {
        self.leave(id)?;
        self.status.add(&self.key("removed"), 1);
        self.publish_gauges();
        Ok(())
    }

    /// Entries waiting.
    pub fn depth(&self) -> usize {
        self.waiting
    }

    /// Payload bytes of the waiting entries.
    pub fn bytes(&self) -> u64 {
        self.waiting_bytes
    }

    /// Disk space the segment files take (bounded by `max_bytes`).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// The directory this outbox lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    fn publish_gauges(&self) {
        self.status.set(&self.key("depth"), self.waiting as u64);
        self.status.set(&self.key("bytes"), self.waiting_bytes);
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("push starts a segment before it appends")
    }

    fn slot_index(&self, id: EntryId) -> Option<usize> {
        self.queue
            .binary_search_by_key(&id.0, |s| s.id)
            .ok()
            .filter(|&i| !self.queue[i].gone)
    }

    fn slot(&self, id: EntryId) -> Result<Slot, OutboxError> {
        self.slot_index(id)
            .map(|i| self.queue[i])
            .ok_or_else(|| OutboxError::UnknownEntry {
                dir: self.dir.clone(),
                id,
            })
    }

    /// Records that an entry left the outbox, durably, and frees what it can.
    fn leave(&mut self, id: EntryId) -> Result<(), OutboxError> {
        let index = self
            .slot_index(id)
            .ok_or_else(|| OutboxError::UnknownEntry {
                dir: self.dir.clone(),
                id,
            })?;
        let slot = self.queue[index];
        let segment = self
            .segments
            .get_mut(&slot.segment)
            .expect("every slot's segment is open");
        let mut record = [0u8; ACK_RECORD];
        record[..8].copy_from_slice(&id.0.to_le_bytes());
        record[8..].copy_from_slice(&crc(&id.0.to_le_bytes()).to_le_bytes());
        segment
            .ack
            .write_all(&record)
            .and_then(|()| segment.ack.sync_data())
            .map_err(io(&segment.ack_path))?;
        segment.waiting -= 1;
        self.queue[index].gone = true;
        self.waiting -= 1;
        self.waiting_bytes -= u64::from(slot.len);
        self.pop_front_gone();
        if self.segments[&slot.segment].waiting == 0 {
            self.reclaim_segments()?;
        }
        Ok(())
    }

    fn pop_front_gone(&mut self) {
        while self.queue.front().is_some_and(|s| s.gone) {
            self.queue.pop_front();
        }
        // Gone entries behind a waiting one stay until it leaves; shrink the
        // buffer after a large backlog drained so memory follows the depth.
        if self.queue.capacity() > 64 && self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to(self.queue.len() * 2);
        }
    }

    /// Evicts the oldest waiting entries until `record` more bytes fit.
    fn make_room(&mut self, record: u64) -> Result<(), OutboxError> {
        while self.disk_bytes() + record > self.limits.max_bytes {
            let Some(oldest) = self.oldest() else { break };
            self.leave(oldest)?;
            self.status.add(&self.key("evicted"), 1);
            warn!(
                outbox = %self.dir.display(),
                entry = %oldest,
                max_bytes = self.limits.max_bytes,
                "outbox full: evicted the oldest entry"
            );
        }
        Ok(())
    }

    /// Deletes every segment but the active one whose entries all left.
    fn reclaim_segments(&mut self) -> Result<(), OutboxError> {
        let Some(&active) = self.segments.keys().next_back() else {
            return Ok(());
        };
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, s)| **first != active && s.waiting == 0)
            .map(|(first, _)| *first)
            .collect();
        for first in done {
            if let Some(segment) = self.segments.remove(&first) {
                // Segment before sidecar: a crash in between leaves an orphan
                // sidecar (removed at open), never entries without their acks.
                std::fs::remove_file(&segment.path).map_err(io(&segment.path))?;
                std::fs::remove_file(&segment.ack_path).map_err(io(&segment.ack_path))?;
                debug!(segment = %segment.path.display(), "outbox segment reclaimed");
            }
        }
        sync_dir(&self.dir)
    }

    /// Starts a new active segment named after the next id.
    fn start_segment(&mut self) -> Result<(), OutboxError> {
        let first = self.next_id;
        let path = self.dir.join(format!("{first:020}.{SEGMENT_EXT}"));
        let ack_path = self.dir.join(format!("{first:020}.{ACK_EXT}"));
        let file = open_append(&path)?;
        let ack = open_append(&ack_path)?;
        file.sync_all().map_err(io(&path))?;
        ack.sync_all().map_err(io(&ack_path))?;
        sync_dir(&self.dir)?;
        let size = file.metadata().map_err(io(&path))?.len();
        self.segments.insert(
            first,
            Segment {
                path,
                ack_path,
                file,
                ack,
                size,
                waiting: 0,
            },
        );
        self.reclaim_segments()
    }

    /// Scans one segment at open: checks every record, truncates a torn tail,
    /// skips a corrupt record in the middle, and queues the waiting entries.
    fn recover_segment(&mut self, first: u64, path: PathBuf) -> Result<(), OutboxError> {
        let ack_path = path.with_extension(ACK_EXT);
        let file = open_append(&path)?;
        let mut ack = open_append(&ack_path)?;
        let gone = self.recover_acks(&mut ack, &ack_path)?;

        // Records are read one at a time into one reused buffer, so opening
        // a large backlog costs one record of memory, not one segment.
        let mut size = file.metadata().map_err(io(&path))?.len();
        let mut buf = Vec::new();
        let mut offset = 0u64;
        let mut last_id = self.next_id.saturating_sub(1);
        let mut waiting = 0usize;
        while offset < size {
            let entry = entry_at(&file, size, offset, &mut buf)
                .map_err(io(&path))?
                .filter(|(id, _)| *id > last_id);
            if let Some((id, len)) = entry {
                if !gone.contains(&id) {
                    self.queue.push_back(Slot {
                        id,
                        segment: first,
                        offset: offset as u32,
                        len: len as u32,
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
                skip_corrupt(&file, size, offset, last_id, &mut buf).map_err(io(&path))?
            {
                self.status.add(&self.key("corrupt_records"), 1);
                warn!(
                    segment = %path.display(),
                    offset,
                    "outbox record fails its checksum: skipped, the entry is lost"
                );
                offset = next;
                continue;
            }
            let cut = size - offset;
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(io(&path))?;
            self.status.add(&self.key("recovered_torn"), 1);
            warn!(
                segment = %path.display(),
                offset,
                bytes = cut,
                "outbox segment ends in a torn or corrupt record: truncated"
            );
            size = offset;
        }
        self.next_id = self.next_id.max(last_id + 1).max(first);
        self.segments.insert(
            first,
            Segment {
                path,
                ack_path,
                file,
                ack,
                size,
                waiting,
            },
        );
        Ok(())
    }

    /// Reads a segment's ack sidecar, truncating a torn or corrupt tail.
    fn recover_acks(
        &self,
        ack: &mut File,
        ack_path: &Path,
    ) -> Result<std::collections::HashSet<u64>, OutboxError> {
        let mut data = Vec::new();
        ack.read_to_end(&mut data).map_err(io(ack_path))?;
        let mut gone = std::collections::HashSet::new();
        let mut offset = 0;
        while offset + ACK_RECORD <= data.len() {
            let id_bytes: [u8; 8] = data[offset..offset + 8].try_into().expect("8 bytes");
            let sum =
                u32::from_le_bytes(data[offset + 8..offset + 12].try_into().expect("4 bytes"));
            if crc(&id_bytes) != sum {
                break;
            }
            gone.insert(u64::from_le_bytes(id_bytes));
            offset += ACK_RECORD;
        }
        if offset != data.len() {
            ack.set_len(offset as u64)
                .and_then(|()| ack.sync_all())
                .map_err(io(ack_path))?;
            self.status.add(&self.key("recovered_torn"), 1);
            warn!(
                file = %ack_path.display(),
                offset,
                "outbox ack file ends in a torn record: truncated; those entries will be sent again"
            );
        }
        Ok(gone)
    }
}

/// Parses the entry record at `offset`: its id and payload length, when the
/// record is complete and its checksum matches.
fn parse_entry(data: &[u8], offset: usize) -> Option<(u64, usize)> {
    let header = data.get(offset..offset + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let id = u64::from_le_bytes(header[4..12].try_into().ok()?);
    let sum = u32::from_le_bytes(header[12..16].try_into().ok()?);
    let payload = data.get(offset + HEADER..offset + HEADER + len as usize)?;
    (entry_crc(len, id, payload) == sum).then_some((id, len as usize))
}

/// Reads and checks the entry record at `offset` of a segment `size` bytes
/// long: its id and payload length, when the record is complete and its
/// checksum matches. `buf` is reused between calls. I/O errors are errors,
/// not damage: a failing read must never make recovery cut good records.
fn entry_at(
    file: &File,
    size: u64,
    offset: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(u64, usize)>> {
    if offset + HEADER as u64 > size {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, offset)?;
    let (len, id, sum) = split_header(&header);
    if offset + HEADER as u64 + u64::from(len) > size {
        return Ok(None);
    }
    buf.resize(len as usize, 0);
    file.read_exact_at(buf, offset + HEADER as u64)?;
    Ok((entry_crc(len, id, buf) == sum).then_some((id, len as usize)))
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

/// When the record at `offset` is bad but its length field leads to a record
/// that verifies, the damage is confined to this one record: returns where the
/// next one starts. A bad record with nothing valid after it is a torn tail.
fn skip_corrupt(
    file: &File,
    size: u64,
    offset: u64,
    last_id: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<u64>> {
    if offset + HEADER as u64 > size {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, offset)?;
    let (len, _, _) = split_header(&header);
    let next = offset + HEADER as u64 + u64::from(len);
    Ok(entry_at(file, size, next, buf)?
        .filter(|(id, _)| *id > last_id)
        .map(|_| next))
}

fn entry_crc(len: u32, id: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&id.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

fn open_append(path: &Path) -> Result<File, OutboxError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io(path))
}

/// Makes creations, renames and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Takes an exclusive `flock` on `<dir>/lock`; the kernel releases it when the
/// process dies, even by `kill -9`, so a stale lock never blocks a restart.
fn lock_dir(dir: &Path) -> Result<File, OutboxError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for
    // the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == ErrorKind::WouldBlock {
            return Err(OutboxError::Locked {
                dir: dir.to_owned(),
            });
        }
        return Err(OutboxError::Io {
            path,
            source: error,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: OutboxLimits = OutboxLimits {
        max_bytes: 8192,
        segment_bytes: 4096,
    };

    fn open(dir: &Path, limits: OutboxLimits) -> (Outbox, Status) {
        let status = Status::new();
        let outbox = Outbox::open(dir, limits, "outbox", status.clone()).expect("outbox opens");
        (outbox, status)
    }

    fn contents(outbox: &Outbox) -> Vec<Vec<u8>> {
        outbox
            .pending()
            .into_iter()
            .map(|id| outbox.read(id).expect("entry reads"))
            .collect()
    }

    fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range.map(|i| format!("report {i}").into_bytes()).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("dir lists")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXT))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn reopen_resumes_waiting_entries_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, status) = open(dir.path(), OutboxLimits::default());
        let ids: Vec<EntryId> = payloads(0..5)
            .iter()
            .map(|p| outbox.push(p).expect("push"))
            .collect();
        outbox.acknowledge(ids[0]).expect("ack");
        outbox.acknowledge(ids[2]).expect("ack out of order");
        assert_eq!(outbox.depth(), 3);
        assert_eq!(status.number("outbox.depth"), 3);
        assert_eq!(status.number("outbox.acknowledged"), 2);
        drop(outbox);

        let (mut outbox, status) = open(dir.path(), OutboxLimits::default());
        assert_eq!(outbox.pending(), vec![ids[1], ids[3], ids[4]]);
        let expected = payloads(0..5);
        assert_eq!(
            contents(&outbox),
            vec![
                expected[1].clone(),
                expected[3].clone(),
                expected[4].clone()
            ]
        );
        assert_eq!(status.number("outbox.depth"), 3);
        assert_eq!(outbox.bytes(), (8 * 3) as u64);
        let next = outbox.push(b"after restart").expect("push");
        assert!(next > ids[4], "ids keep increasing across restarts");
        assert!(matches!(
            outbox.acknowledge(ids[0]),
            Err(OutboxError::UnknownEntry { .. })
        ));
    }

    #[test]
    fn torn_tail_is_truncated_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = open(dir.path(), OutboxLimits::default());
        for p in payloads(0..3) {
            outbox.push(&p).expect("push");
        }
        drop(outbox);
        // A crash in the middle of the third record's write.
        let segment = &segment_files(dir.path())[0];
        let len = std::fs::metadata(segment).expect("stat").len();
        let file = OpenOptions::new().write(true).open(segment).expect("open");
        file.set_len(len - 3).expect("truncate");
        drop(file);

        let (mut outbox, status) = open(dir.path(), OutboxLimits::default());
        assert_eq!(contents(&outbox), payloads(0..2));
        assert_eq!(status.number("outbox.recovered_torn"), 1);
        // The log stays appendable after the cut, and survives another reopen.
        let id = outbox.push(b"next").expect("push");
        assert_eq!(
            id,
            EntryId(3),
            "the torn entry's id is reused: it never existed"
        );
        drop(outbox);
        let (outbox, status) = open(dir.path(), OutboxLimits::default());
        assert_eq!(
            contents(&outbox).last().map(Vec::as_slice),
            Some(&b"next"[..])
        );
        assert_eq!(status.number("outbox.recovered_torn"), 0);
    }

    /// Flips one byte of a record's checksum: the last record is a torn tail
    /// (cut), a record in the middle is skipped and the ones after it kept.
    #[test]
    fn corrupt_checksums_are_recovered_and_counted() {
        let cases = [
            // (record to damage, expected survivors, torn, corrupt)
            (3usize, vec![0u32, 1, 2], 1u64, 0u64),
            (1, vec![0, 2, 3], 0, 1),
            (0, vec![1, 2, 3], 0, 1),
        ];
        for (damaged, survivors, torn, corrupt) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut outbox, _) = open(dir.path(), OutboxLimits::default());
            for p in payloads(0..4) {
                outbox.push(&p).expect("push");
            }
            drop(outbox);
            let segment = &segment_files(dir.path())[0];
            let mut bytes = std::fs::read(segment).expect("read");
            // Every payload here is 8 bytes long, so records are 24 bytes.
            bytes[damaged * (HEADER + 8) + 12] ^= 0x40;
            std::fs::write(segment, &bytes).expect("write");

            let (outbox, status) = open(dir.path(), OutboxLimits::default());
            let expected: Vec<Vec<u8>> = survivors
                .iter()
                .map(|i| format!("report {i}").into_bytes())
                .collect();
            assert_eq!(contents(&outbox), expected, "damaged record {damaged}");
            assert_eq!(status.number("outbox.recovered_torn"), torn);
            assert_eq!(status.number("outbox.corrupt_records"), corrupt);
        }
    }

    #[test]
    fn torn_ack_record_only_resends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = open(dir.path(), OutboxLimits::default());
        let ids: Vec<EntryId> = payloads(0..3)
            .iter()
            .map(|p| outbox.push(p).expect("push"))
            .collect();
        outbox.acknowledge(ids[0]).expect("ack");
        outbox.acknowledge(ids[1]).expect("ack");
        drop(outbox);
        let ack = segment_files(dir.path())[0].with_extension(ACK_EXT);
        let file = OpenOptions::new().write(true).open(&ack).expect("open");
        file.set_len((ACK_RECORD + 5) as u64).expect("truncate");
        drop(file);

        let (outbox, status) = open(dir.path(), OutboxLimits::default());
        assert_eq!(outbox.pending(), vec![ids[1], ids[2]]);
        assert_eq!(status.number("outbox.recovered_torn"), 1);
    }

    #[test]
    fn full_outbox_evicts_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, status) = open(dir.path(), SMALL);
        let payload = [7u8; 1000];
        let ids: Vec<EntryId> = (0..20)
            .map(|_| outbox.push(&payload).expect("push"))
            .collect();
        assert!(outbox.disk_bytes() <= SMALL.max_bytes);
        let evicted = status.number("outbox.evicted");
        assert!(evicted > 0, "the outbox had to make room");
        assert_eq!(
            evicted as usize + outbox.depth(),
            20,
            "every entry is waiting or evicted"
        );
        assert_eq!(
            outbox.pending(),
            ids[evicted as usize..].to_vec(),
            "the newest stay"
        );
        drop(outbox);

        let (outbox, _) = open(dir.path(), SMALL);
        assert_eq!(outbox.pending(), ids[evicted as usize..].to_vec());
        assert!(outbox.disk_bytes() <= SMALL.max_bytes);
        assert!(matches!(
            Outbox::open(dir.path(), SMALL, "outbox", Status::new()),
            Err(OutboxError::Locked { .. })
        ));
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = open(dir.path(), SMALL);
        let payload = [1u8; 1000];
        let ids: Vec<EntryId> = (0..7)
            .map(|_| outbox.push(&payload).expect("push"))
            .collect();
        assert_eq!(segment_files(dir.path()).len(), 2);
        for id in &ids {
            outbox.acknowledge(*id).expect("ack");
        }
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "only the active segment stays"
        );
        assert_eq!(outbox.depth(), 0);
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn oversized_payload_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut outbox, _) = open(dir.path(), SMALL);
        let error = outbox.push(&[0u8; 5000]).expect_err("too large");
        assert!(matches!(error, OutboxError::TooLarge { size: 5000, .. }));
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string())
        );
    }
}
