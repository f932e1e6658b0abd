//! The durable outbox: reports and events wait here, on disk, until a
//! transport acknowledged them. It survives `kill -9` and power loss, is
//! bounded in bytes, keeps only a few integers per waiting entry in memory,
//! and goes on serving what it holds when the disk is full or read-only.
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
//! `00000000000000000001.ack` listing the entries of that segment that left
//! the outbox (acknowledged, removed or evicted), and `next-id`, the id
//! reservation. The directory itself is held with `flock` so that two
//! processes never share it.
//!
//! An entry record is a 16-byte header, little endian — payload length `u32`,
//! entry id `u64`, CRC-32 of (length, id, payload) `u32` — followed by the
//! payload. An ack record is 16 bytes: entry id `u64`, the CRC-32 of the
//! entry it acknowledges `u32`, and the CRC-32 of those 12 bytes `u32`. An
//! ack names the exact record it acknowledges, so it can never hide another
//! entry that carries the same id.
//!
//! # Ids are never reused
//!
//! Ids are reserved in blocks of 4096: before the first id of a block is
//! handed out, `next-id` (written atomically) says where the block ends, and
//! an outbox opens with ids past both that reservation and every id found in
//! a segment or an ack sidecar. A card that ignores flushes can lose the last
//! records and keep their acks; the next entry still gets a new id.
//!
//! # fsync discipline
//!
//! * [`Outbox::push`] writes header and payload with a single `pwrite` at the
//!   end of the valid records and calls `fdatasync` before it returns `Ok`: an
//!   entry the caller was told about is on stable storage.
//! * A new segment and its (empty) sidecar are created, `fsync`ed, and the
//!   directory `fsync`ed before the first entry goes in, so the files cannot
//!   vanish on power loss.
//! * [`Outbox::acknowledge`] appends an ack record and `fdatasync`s it. Losing
//!   an ack would only resend an entry (at-least-once), but a resend of a Device
//!   Defender report costs a 300 s slot, so acks are made durable too.
//! * Eviction writes the acks of all the entries it evicts at once: one
//!   `fdatasync` per segment touched, not one per entry.
//! * A segment whose entries all left is deleted (segment first, then its
//!   sidecar, so a crash in between never resurrects acknowledged entries).
//! * No descriptor open for writing is kept between operations: a file system
//!   with an open writer cannot be remounted read-only.
//!
//! # Torn writes and corruption
//!
//! On [`Outbox::open`] every segment is scanned and every record's checksum
//! checked. A bad record (cut short, a flipped bit, a corrupt length field)
//! is skipped by re-synchronising on the next record that verifies, anywhere
//! after it in the segment; the bytes in between are counted in
//! `<prefix>.corrupt_records` and logged at warn with file and offset. Only
//! when nothing valid follows is it a torn tail: the last segment (the one a
//! crash can tear) is truncated there (`<prefix>.recovered_torn`); an older
//! segment is left as it is, its damaged tail skipped, and deleted like any
//! other once its entries left. Ack sidecars are read up to their first bad
//! record, which is cut; a lost ack record only means an entry is sent again.
//!
//! # Bounded in bytes: the oldest give way
//!
//! [`OutboxLimits::max_bytes`] bounds the disk space of the segments. When a
//! push would exceed it, the **oldest** waiting entries are evicted (recorded
//! like an acknowledgement) until the new entry fits: for monitoring data the
//! newest state of the device is worth more than the oldest. Every eviction is
//! counted in `<prefix>.evicted` and logged at warn with the entry ids.
//!
//! # When the disk is full, read-only or failing
//!
//! The outbox opens on a read-only or full file system (it needs no writable
//! lock file), and reading, acknowledging and removing keep working: an ack
//! that cannot be written is kept in memory and written when the file system
//! takes writes again (until then, a restart would send the entry again).
//! Work that needs a write (cutting a torn tail, deleting a drained segment)
//! is likewise postponed. A push that fails says why in its error
//! ([`OutboxError::DiskFull`], [`OutboxError::ReadOnly`], see
//! [`OutboxError::storage_fault`]); on a full disk the outbox first deletes
//! its oldest segment (evicting its entries) and tries again. A failed write
//! never leaves the log in doubt: the segment's size is read back and the
//! partial record cut, or the segment is sealed and the next push starts a
//! new one. [`Outbox::storage_fault`] tells the current state and
//! [`Outbox::recover_storage`] checks whether the file system takes writes
//! again. Each change of state is logged once and shown in
//! `<prefix>.storage`.
//!
//! # Memory
//!
//! Payloads stay on disk. Memory holds one 32-byte slot (id, segment, offset,
//! length, checksum) per waiting entry and one read-only descriptor per
//! segment, so 10,000 waiting reports cost about 320 KB whatever their size.

#[cfg(test)]
mod model_tests;
mod recover;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::status::Status;

pub use storage::StorageFault;
use storage::{io, io_error};

pub(crate) use recover::{ack_ids, intact_prefix};

/// Identifies an entry in an outbox; strictly increasing in push order and
/// never reused, also across crashes.
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
    /// The file system is full (`ENOSPC`, `EDQUOT`): nothing was stored. Hold
    /// the payload elsewhere and push it again once
    /// [`Outbox::recover_storage`] succeeds.
    #[error("outbox file {path}: disk full: {source}")]
    DiskFull {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file system is read-only (`EROFS`): nothing was stored. Reading and
    /// acknowledging still work.
    #[error("outbox file {path}: read-only file system: {source}")]
    ReadOnly {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file of the outbox could not be read, written or synced for another
    /// reason (e.g. `EIO`).
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

impl OutboxError {
    /// The storage condition behind a failed write, if that is what it was:
    /// the caller degrades (holds the payload in memory) instead of failing.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self {
            OutboxError::DiskFull { .. } => Some(StorageFault::DiskFull),
            OutboxError::ReadOnly { .. } => Some(StorageFault::ReadOnly),
            OutboxError::Io { .. } => Some(StorageFault::Failing),
            _ => None,
        }
    }
}

/// Entry header: payload length u32, id u64, crc32 u32.
const HEADER: usize = 16;
/// Ack record: id u64, entry crc32 u32, crc32 u32.
const ACK_RECORD: usize = 16;
const SEGMENT_EXT: &str = "seg";
/// Ids from here on are never handed out (that would take 2^63 pushes): an id
/// this large on disk is damage, and the counter can never wrap.
const MAX_ID: u64 = 1 << 63;
const ACK_EXT: &str = "ack";

/// Where a waiting entry lives. Kept small: one per waiting entry.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    segment: u64,
    offset: u32,
    len: u32,
    /// The record's checksum, which its ack repeats.
    crc: u32,
    /// Left the outbox (acknowledged or evicted) but still in front of a
    /// waiting entry, so not yet popped from the queue.
    gone: bool,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    ack_path: PathBuf,
    /// Read-only: see "no descriptor open for writing" above.
    file: File,
    /// End of the valid records: where the next record goes.
    size: u64,
    /// Bytes in the file; more than `size` while a torn tail waits to be cut.
    file_len: u64,
    /// End of the valid ack records, and the bytes in the sidecar.
    ack_len: u64,
    ack_file_len: u64,
    /// Ack records not yet on disk (the file system refused them).
    unwritten_acks: Vec<u8>,
    /// Entries of this segment still waiting.
    waiting: usize,
    /// Takes no more records: a failed write left its end in doubt.
    sealed: bool,
}

/// Why entries leave the outbox; each has its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    Acknowledged,
    Removed,
    Evicted,
}

impl Leaving {
    fn counter(self) -> &'static str {
        match self {
            Leaving::Acknowledged => "acknowledged",
            Leaving::Removed => "removed",
            Leaving::Evicted => "evicted",
        }
    }
}

/// A durable, bounded FIFO of payloads. See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    /// The locked directory, also used to `fsync` it.
    dir_handle: File,
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
    /// Ids from this on were never handed out (persisted in `next-id`).
    reserved: u64,
    /// Files to delete once the file system allows (sidecars of deleted
    /// segments).
    doomed: Vec<PathBuf>,
    /// What keeps the outbox from writing, since the last failed write.
    fault: Option<StorageFault>,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, recovering from torn writes and
    /// corruption; waiting entries resume in their original order. Counters go
    /// to `status` under `status_prefix` (e.g. `outbox`, `firehose.outbox`).
    ///
    /// An existing outbox opens on a read-only or full file system; one that
    /// does not exist yet and cannot be created fails with
    /// [`OutboxError::ReadOnly`] or [`OutboxError::DiskFull`].
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
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let dir_handle = storage::lock_dir(dir)?;
        let mut outbox = Outbox {
            dir: dir.to_owned(),
            dir_handle,
            limits,
            status,
            prefix: status_prefix.to_owned(),
            segments: BTreeMap::new(),
            queue: VecDeque::new(),
            waiting: 0,
            waiting_bytes: 0,
            next_id: 1,
            reserved: 0,
            doomed: Vec::new(),
            fault: None,
        };
        outbox.recover()?;
        outbox.publish_gauges();
        outbox
            .status
            .set_text(&outbox.key("storage"), outbox.storage_text());
        debug!(
            dir = %outbox.dir.display(),
            depth = outbox.waiting,
            bytes = outbox.waiting_bytes,
            next_id = outbox.next_id,
            "outbox opened"
        );
        Ok(outbox)
    }

    /// Appends `payload`; returns once it is on stable storage. When the
    /// outbox is full the oldest entries are evicted first (counted, logged);
    /// when the disk is full the oldest segment is given up to make room.
    ///
    /// A failure to write is an [`OutboxError::DiskFull`],
    /// [`OutboxError::ReadOnly`] or [`OutboxError::Io`]: nothing was stored,
    /// the outbox stays consistent and usable for reading and acknowledging.
    pub fn push(&mut self, payload: &[u8]) -> Result<EntryId, OutboxError> {
        let size = payload.len() as u64;
        if size > self.limits.max_payload() {
            return Err(OutboxError::TooLarge {
                dir: self.dir.clone(),
                size,
                max: self.limits.max_payload(),
            });
        }
        self.finish_postponed();
        loop {
            match self.append(payload) {
                Ok(id) => {
                    self.clear_fault();
                    self.status.add(&self.key("pushed"), 1);
                    self.publish_gauges();
                    return Ok(id);
                }
                Err(error) => {
                    if error.storage_fault() == Some(StorageFault::DiskFull)
                        && self.give_up_oldest_segment()
                    {
                        continue;
                    }
                    self.note_fault(&error);
                    self.status.add(&self.key("write_failures"), 1);
                    self.publish_gauges();
                    return Err(error);
                }
            }
        }
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
        match recover::parse_entry(&buf, 0) {
            Some((read_id, len, _)) if read_id == id.0 && len == slot.len as usize => {
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
    /// acknowledgement: this is what makes delivery at-least-once. Fails only
    /// for an entry that is not waiting; an ack the file system refuses is
    /// kept in memory and written later (see [`Outbox::storage_fault`]).
    pub fn acknowledge(&mut self, id: EntryId) -> Result<(), OutboxError> {
        self.leave(&[id], Leaving::Acknowledged)
    }

    /// Removes an entry that will never be sent, after the caller handed it on
    /// elsewhere (e.g. a Device Defender report superseded by a newer one).
    /// Counted in `<prefix>.removed`, apart from acknowledgements.
    pub fn remove(&mut self, id: EntryId) -> Result<(), OutboxError> {
        self.leave(&[id], Leaving::Removed)
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
        self.segments.values().map(|s| s.file_len).sum()
    }

    /// The directory this outbox lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What kept the last write from succeeding, until a write succeeds again
    /// or [`Outbox::recover_storage`] finds the file system writable.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        self.fault
    }

    /// Is the outbox writable again? Finishes the work a storage fault
    /// postponed (writing acks kept in memory, cutting a torn tail, deleting
    /// drained segments) and checks that the file system is writable and has
    /// room for a record. `Ok` clears the fault: push what was held. Costs a
    /// `statvfs` when there is nothing to finish; meant to be called about
    /// once per sampling tick while degraded.
    pub fn recover_storage(&mut self) -> Result<(), OutboxError> {
        let result = self.check_storage();
        match &result {
            Ok(()) => self.clear_fault(),
            Err(error) => self.note_fault(error),
        }
        self.publish_gauges();
        result
    }

    fn check_storage(&mut self) -> Result<(), OutboxError> {
        let (read_only, available) = storage::space(&self.dir).map_err(io(&self.dir))?;
        if read_only {
            return Err(OutboxError::ReadOnly {
                path: self.dir.clone(),
                source: std::io::Error::from_raw_os_error(libc::EROFS),
            });
        }
        // Less than a page free: full for any practical record.
        if available < 4096 {
            return Err(OutboxError::DiskFull {
                path: self.dir.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        self.try_postponed()
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Counts `fsync`/`fdatasync` calls (`<prefix>.fsyncs`): flash wear.
    fn synced(&self, n: u64) {
        self.status.add(&self.key("fsyncs"), n);
    }

    fn publish_gauges(&self) {
        self.status.set(&self.key("depth"), self.waiting as u64);
        self.status.set(&self.key("bytes"), self.waiting_bytes);
        let unwritten: usize = self
            .segments
            .values()
            .map(|s| s.unwritten_acks.len() / ACK_RECORD)
            .sum();
        self.status
            .set(&self.key("acks_unwritten"), unwritten as u64);
    }

    fn storage_text(&self) -> String {
        match self.fault {
            None => "ok".to_owned(),
            Some(fault) => fault.label().to_owned(),
        }
    }

    /// Records a storage fault; logs only when the state changes.
    fn note_fault(&mut self, error: &OutboxError) {
        let Some(fault) = error.storage_fault() else {
            return;
        };
        if self.fault != Some(fault) {
            warn!(
                outbox = %self.dir.display(),
                %fault,
                %error,
                "outbox cannot write; it goes on reading and acknowledging, and keeps what it cannot write in memory until the file system recovers"
            );
            self.fault = Some(fault);
            self.status
                .set_text(&self.key("storage"), self.storage_text());
        }
    }

    fn clear_fault(&mut self) {
        if let Some(fault) = self.fault.take() {
            info!(outbox = %self.dir.display(), was = %fault, "outbox writes again");
            self.status
                .set_text(&self.key("storage"), self.storage_text());
        }
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

    /// Appends one record to the active segment (starting one when needed).
    fn append(&mut self, payload: &[u8]) -> Result<EntryId, OutboxError> {
        let record = HEADER as u64 + payload.len() as u64;
        let needs_new_segment = match self.segments.last_key_value() {
            None => true,
            Some((_, s)) => s.sealed || s.size + record > self.limits.segment_bytes,
        };
        if needs_new_segment {
            self.start_segment()?;
        }
        self.make_room(record)?;
        let id = self.next_id;
        if id >= MAX_ID {
            // Only forged records (a valid checksum on an absurd id) get here.
            return Err(OutboxError::Limits {
                dir: self.dir.clone(),
                message: format!(
                    "entry ids are exhausted at {id}; move the directory away to start afresh"
                ),
            });
        }
        if id >= self.reserved {
            let reserved = id.saturating_add(storage::RESERVATION_BLOCK);
            storage::write_reservation(&self.dir, reserved)?;
            self.synced(2);
            self.reserved = reserved;
        }
        let crc = recover::entry_crc(payload.len() as u32, id, payload);
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(payload);

        let (&first, segment) = self
            .segments
            .iter_mut()
            .next_back()
            .expect("a segment was started above");
        let offset = segment.size;
        if let Err(source) = write_record(segment, &buf) {
            settle_after_failed_write(segment);
            return Err(io_error(&segment.path, source));
        }
        segment.size += record;
        segment.file_len = segment.size;
        segment.waiting += 1;
        self.synced(1);
        self.queue.push_back(Slot {
            id,
            segment: first,
            offset: offset as u32,
            len: payload.len() as u32,
            crc,
            gone: false,
        });
        self.next_id = id + 1;
        self.waiting += 1;
        self.waiting_bytes += payload.len() as u64;
        Ok(EntryId(id))
    }

    /// Records that entries left the outbox and frees what it can. Their acks
    /// are written together, one `fdatasync` per segment; acks the file
    /// system refuses stay in memory until it takes them.
    fn leave(&mut self, ids: &[EntryId], why: Leaving) -> Result<(), OutboxError> {
        let mut indexes = Vec::with_capacity(ids.len());
        for &id in ids {
            let index = self
                .slot_index(id)
                .ok_or_else(|| OutboxError::UnknownEntry {
                    dir: self.dir.clone(),
                    id,
                })?;
            indexes.push(index);
        }
        let mut drained = false;
        for index in indexes {
            let slot = self.queue[index];
            let segment = self
                .segments
                .get_mut(&slot.segment)
                .expect("every slot's segment is open");
            segment
                .unwritten_acks
                .extend_from_slice(&recover::ack_record(slot.id, slot.crc));
            segment.waiting -= 1;
            drained |= segment.waiting == 0;
            self.queue[index].gone = true;
            self.waiting -= 1;
            self.waiting_bytes -= u64::from(slot.len);
        }
        self.status.add(&self.key(why.counter()), ids.len() as u64);
        self.pop_front_gone();
        // A segment about to be deleted needs no acks.
        if drained {
            self.reclaim_segments();
        }
        if let Err(error) = self.write_acks() {
            self.note_fault(&error);
        }
        self.publish_gauges();
        Ok(())
    }

    /// Writes the acks kept in memory, one write and one `fdatasync` per
    /// segment.
    fn write_acks(&mut self) -> Result<(), OutboxError> {
        let mut syncs = 0;
        let result = self.write_acks_counting(&mut syncs);
        self.synced(syncs);
        result
    }

    fn write_acks_counting(&mut self, syncs: &mut u64) -> Result<(), OutboxError> {
        for segment in self.segments.values_mut() {
            if segment.unwritten_acks.is_empty() {
                continue;
            }
            match write_unwritten_acks(segment) {
                Ok(()) => {
                    *syncs += 1;
                    segment.ack_len += segment.unwritten_acks.len() as u64;
                    segment.ack_file_len = segment.ack_len;
                    segment.unwritten_acks.clear();
                }
                Err(source) => {
                    // The records may be partly on disk: the next attempt
                    // writes them again at the same place.
                    return Err(io_error(&segment.ack_path, source));
                }
            }
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

    /// Evicts the oldest waiting entries until `record` more bytes fit in
    /// `max_bytes`, all in one batch.
    fn make_room(&mut self, record: u64) -> Result<(), OutboxError> {
        let mut disk = self.disk_bytes();
        if disk + record <= self.limits.max_bytes {
            return Ok(());
        }
        let active = self.segments.keys().next_back().copied();
        let mut left: HashMap<u64, usize> =
            self.segments.iter().map(|(k, s)| (*k, s.waiting)).collect();
        let mut evict = Vec::new();
        for slot in self.queue.iter().filter(|s| !s.gone) {
            if disk + record <= self.limits.max_bytes {
                break;
            }
            evict.push(EntryId(slot.id));
            let count = left.get_mut(&slot.segment).expect("slot's segment");
            *count -= 1;
            if *count == 0 && Some(slot.segment) != active {
                disk -= self.segments[&slot.segment].file_len;
            }
        }
        if let (Some(first), Some(last)) = (evict.first(), evict.last()) {
            warn!(
                outbox = %self.dir.display(),
                first = %first,
                last = %last,
                count = evict.len(),
                max_bytes = self.limits.max_bytes,
                "outbox full: evicted the oldest entries"
            );
            self.leave(&evict, Leaving::Evicted)?;
        }
        Ok(())
    }

    /// On a full disk: deletes the oldest segment that is not the active
    /// one, evicting its waiting entries, so the push can try again. Returns
    /// whether anything was freed.
    fn give_up_oldest_segment(&mut self) -> bool {
        let active = self.segments.keys().next_back().copied();
        let Some(oldest) = self.segments.keys().next().copied() else {
            return false;
        };
        if Some(oldest) == active {
            return false;
        }
        let evict: Vec<EntryId> = self
            .queue
            .iter()
            .filter(|s| !s.gone && s.segment == oldest)
            .map(|s| EntryId(s.id))
            .collect();
        warn!(
            outbox = %self.dir.display(),
            segment = %self.segments[&oldest].path.display(),
            first = ?evict.first().map(|e| e.0),
            last = ?evict.last().map(|e| e.0),
            count = evict.len(),
            "disk full: evicted the oldest segment's entries to make room"
        );
        if !evict.is_empty() && self.leave(&evict, Leaving::Evicted).is_err() {
            return false;
        }
        self.reclaim_segments();
        // Deleted when the file system allowed it; if not, nothing was freed.
        !self.segments.contains_key(&oldest)
    }

    /// Deletes every segment but the active one whose entries all left.
    /// Failures are noted and retried later: nothing depends on them.
    fn reclaim_segments(&mut self) {
        let Some(&active) = self.segments.keys().next_back() else {
            return;
        };
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, s)| **first != active && s.waiting == 0)
            .map(|(first, _)| *first)
            .collect();
        if done.is_empty() {
            return;
        }
        let mut deleted = false;
        for first in done {
            let path = self.segments[&first].path.clone();
            // Segment before sidecar: a crash in between leaves an orphan
            // sidecar (removed at open), never entries without their acks.
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    self.note_fault(&io_error(&path, source));
                    continue;
                }
            }
            let segment = self.segments.remove(&first).expect("listed above");
            deleted = true;
            self.doomed.push(segment.ack_path);
            debug!(segment = %segment.path.display(), "outbox segment reclaimed");
        }
        if deleted {
            match self.dir_handle.sync_all() {
                Ok(()) => self.synced(1),
                Err(source) => self.note_fault(&io_error(&self.dir, source)),
            }
        }
        if let Err(error) = self.delete_doomed() {
            self.note_fault(&error);
        }
    }

    /// Deletes the sidecars of deleted segments; returns the first failure.
    fn delete_doomed(&mut self) -> Result<(), OutboxError> {
        let mut first_error = None;
        let mut failed = Vec::new();
        for path in std::mem::take(&mut self.doomed) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_error.get_or_insert(io_error(&path, source));
                    failed.push(path);
                }
            }
        }
        self.doomed = failed;
        first_error.map_or(Ok(()), Err)
    }

    /// Best effort before a push: what a fault postponed.
    fn finish_postponed(&mut self) {
        if let Err(error) = self.try_postponed() {
            self.note_fault(&error);
        }
    }

    fn try_postponed(&mut self) -> Result<(), OutboxError> {
        self.write_acks()?;
        self.reclaim_segments();
        self.delete_doomed()?;
        let mut cut = false;
        if let Some(segment) = self.segments.values_mut().next_back()
            && segment.file_len > segment.size
            && !segment.sealed
        {
            storage::cut(&segment.path, segment.size).map_err(io(&segment.path))?;
            segment.file_len = segment.size;
            cut = true;
        }
        if cut {
            self.synced(1);
        }
        Ok(())
    }

    /// Starts a new active segment named after the next id. Both files are
    /// created empty: a sidecar left from an earlier life never carries over.
    fn start_segment(&mut self) -> Result<(), OutboxError> {
        let first = self.next_id;
        let path = self.dir.join(format!("{first:020}.{SEGMENT_EXT}"));
        let ack_path = self.dir.join(format!("{first:020}.{ACK_EXT}"));
        storage::create_empty(&ack_path).map_err(io(&ack_path))?;
        storage::create_empty(&path).map_err(io(&path))?;
        self.dir_handle.sync_all().map_err(io(&self.dir))?;
        self.synced(3);
        let file = File::open(&path).map_err(io(&path))?;
        self.segments.insert(
            first,
            Segment {
                path,
                ack_path,
                file,
                size: 0,
                file_len: 0,
                ack_len: 0,
                ack_file_len: 0,
                unwritten_acks: Vec::new(),
                waiting: 0,
                sealed: false,
            },
        );
        self.reclaim_segments();
        Ok(())
    }
}

/// Writes a segment's acks kept in memory after its valid ack records,
/// cutting a torn tail first, and syncs them.
fn write_unwritten_acks(segment: &mut Segment) -> std::io::Result<()> {
    let file = storage::open_for_write(&segment.ack_path)?;
    if segment.ack_file_len > segment.ack_len {
        file.set_len(segment.ack_len)?;
        segment.ack_file_len = segment.ack_len;
    }
    // From here the file may hold part of them: the next attempt writes
    // them again at the same place.
    segment.ack_file_len = segment.ack_len + segment.unwritten_acks.len() as u64;
    file.write_all_at(&segment.unwritten_acks, segment.ack_len)?;
    file.sync_data()
}

/// Writes one record at the end of the segment's valid records, cutting a
/// torn tail first, and syncs it.
fn write_record(segment: &mut Segment, record: &[u8]) -> std::io::Result<()> {
    let file = storage::open_for_write(&segment.path)?;
    if segment.file_len > segment.size {
        file.set_len(segment.size)?;
        segment.file_len = segment.size;
    }
    #[cfg(test)]
    if storage::inject::take(storage::inject::TEAR_NEXT_WRITE) {
        file.write_all_at(&record[..record.len() / 2], segment.size)?;
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    file.write_all_at(record, segment.size)?;
    file.sync_data()
}

/// After a failed write the file may hold part of the record. Cut it and
/// read the size back; if the file does not end where the valid records do,
/// seal the segment so that the next push starts a fresh one.
fn settle_after_failed_write(segment: &mut Segment) {
    let cut = storage::cut(&segment.path, segment.size);
    let len = segment.file.metadata().map(|m| m.len());
    match (cut, len) {
        (Ok(()), Ok(len)) if len == segment.size => segment.file_len = len,
        (_, len) => {
            segment.sealed = true;
            segment.file_len = len.unwrap_or(segment.size).max(segment.size);
            warn!(
                segment = %segment.path.display(),
                valid_bytes = segment.size,
                "outbox segment sealed after a failed write; the next entry starts a new segment"
            );
        }
    }
}
