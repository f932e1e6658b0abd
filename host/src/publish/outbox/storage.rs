//! The outbox's contact with the file system: classifying failures (disk
//! full, read-only, failing), the directory lock, the id reservation file,
//! and the descriptors opened for one write at a time.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::OutboxError;

/// What keeps the outbox from writing. Reading, and acknowledging in memory,
/// go on through all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// The file system has no space left (`ENOSPC`, or a quota: `EDQUOT`).
    DiskFull,
    /// The file system is read-only (`EROFS`), e.g. an SD card the kernel
    /// remounted read-only after I/O errors.
    ReadOnly,
    /// Any other write failure (`EIO` on a bad sector, permissions).
    Failing,
}

impl StorageFault {
    /// Classifies an I/O error of a write.
    pub fn of(error: &std::io::Error) -> StorageFault {
        match error.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageFault::DiskFull,
            Some(libc::EROFS) => StorageFault::ReadOnly,
            _ => StorageFault::Failing,
        }
    }

    /// The words `status` shows.
    pub fn label(self) -> &'static str {
        match self {
            StorageFault::DiskFull => "disk full",
            StorageFault::ReadOnly => "read-only",
            StorageFault::Failing => "failing",
        }
    }
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The typed error for an I/O failure on `path`.
pub(super) fn io_error(path: &Path, source: std::io::Error) -> OutboxError {
    let path = path.to_owned();
    match StorageFault::of(&source) {
        StorageFault::DiskFull => OutboxError::DiskFull { path, source },
        StorageFault::ReadOnly => OutboxError::ReadOnly { path, source },
        StorageFault::Failing => OutboxError::Io { path, source },
    }
}

pub(super) fn io(path: &Path) -> impl Fn(std::io::Error) -> OutboxError + '_ {
    move |source| io_error(path, source)
}

/// Opens `dir` read-only and takes an exclusive `flock` on it. The kernel
/// releases it when the process dies, even by `kill -9`, so a stale lock never
/// blocks a restart; and locking the directory itself needs no writable lock
/// file, so a read-only or full file system still opens. The descriptor also
/// serves to `fsync` the directory.
pub(super) fn lock_dir(dir: &Path) -> Result<File, OutboxError> {
    let file = File::open(dir).map_err(io(dir))?;
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
        return Err(io_error(dir, error));
    }
    Ok(file)
}

/// Opens an existing file of the outbox for one write. No descriptor open
/// for writing outlives the operation that needed it: a file system with a
/// writer cannot be remounted read-only (`EBUSY`), and an idle outbox must
/// never be the reason.
pub(super) fn open_for_write(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).open(path)
}

/// Creates (or empties) a file and makes it durable, name included.
pub(super) fn create_empty(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.sync_all()
}

/// Cuts `path` to `len` bytes, durably.
pub(super) fn cut(path: &Path, len: u64) -> std::io::Result<()> {
    #[cfg(test)]
    inject::fail_if(inject::REFUSE_CUTS)?;
    let file = open_for_write(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Whether the file system under `dir` reports itself read-only, and the
/// bytes available to this process, by `statvfs`.
#[allow(
    clippy::useless_conversion,
    reason = "the statvfs field types differ between 32- and 64-bit targets"
)]
pub(super) fn space(dir: &Path) -> std::io::Result<(bool, u64)> {
    let mut name = dir.as_os_str().as_bytes().to_vec();
    name.push(0);
    // SAFETY: statvfs reads a NUL-terminated path and writes the struct it
    // is given; both live for the duration of the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(name.as_ptr().cast(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let read_only = stat.f_flag & libc::ST_RDONLY != 0;
    let available = u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize));
    Ok((read_only, available))
}

/// The id reservation: ids below the value in this file may have been
/// handed out, ids from it on never were.
pub(super) const RESERVATION_FILE: &str = "next-id";

/// Ids reserved per write of [`RESERVATION_FILE`]: one atomic write per this
/// many pushes, and at most this many ids skipped per restart.
pub(super) const RESERVATION_BLOCK: u64 = 4096;

/// What the reservation file said.
pub(super) enum Reservation {
    Absent,
    Valid(u64),
    Corrupt(String),
}

pub(super) fn read_reservation(dir: &Path) -> Reservation {
    let path = dir.join(RESERVATION_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            Some(n) => Reservation::Valid(n),
            None => Reservation::Corrupt(format!("{} bytes that are not a number", bytes.len())),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Reservation::Absent,
        Err(e) => Reservation::Corrupt(e.to_string()),
    }
}

pub(super) fn write_reservation(dir: &Path, next: u64) -> Result<(), OutboxError> {
    let path = dir.join(RESERVATION_FILE);
    crate::state::write_atomically(&path, format!("{next}\n").as_bytes()).map_err(io(&path))
}

/// Faults injected at this seam by unit tests, for what a real file system
/// cannot be made to do on demand (a write that lands half and then fails,
/// a truncate that fails after it). Per thread, so tests stay independent.
#[cfg(test)]
pub(super) mod inject {
    use std::cell::Cell;

    /// The next record write puts half its bytes down, then fails with EIO.
    pub const TEAR_NEXT_WRITE: u8 = 1;
    /// Every cut fails with EIO.
    pub const REFUSE_CUTS: u8 = 2;

    thread_local! {
        static FAULTS: Cell<u8> = const { Cell::new(0) };
    }

    pub fn set(faults: u8) {
        FAULTS.with(|f| f.set(faults));
    }

    pub fn active(fault: u8) -> bool {
        FAULTS.with(|f| f.get() & fault != 0)
    }

    pub fn fail_if(fault: u8) -> std::io::Result<()> {
        if active(fault) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// Clears a one-shot fault; whether it was set.
    pub fn take(fault: u8) -> bool {
        FAULTS.with(|f| {
            let was = f.get() & fault != 0;
            f.set(f.get() & !fault);
            was
        })
    }
}
