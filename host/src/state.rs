//! The state directory: small files that must survive restarts.
//!
//! - `report-id`: the last report id used, so ids keep increasing across
//!   restarts even when the wall clock steps back.
//! - `net-run.json` / `net-collect.json`: the interface counters of the
//!   previous sample (and, for `run`, the traffic owed to the next report),
//!   so network deltas survive restarts and span `collect` invocations.
//! - `status.json`: see [`crate::status`].
//! - Owned by other areas: `outbox/`, `firehose-outbox/`, `plugin-cache/`,
//!   `defender-last-publish.json`, `detect-state.json`.
//!
//! Every write is atomic (temp file, fsync, rename): a crash leaves the old
//! value or the new one. A state file that is corrupt or truncated (power
//! loss on a card that ignores flushes, a human editing it) never stops
//! anything: it is logged at warn, counted in `state.corrupt_files`, and
//! read conservatively: a JSON file as absent (at worst one network delta is
//! lost), a `report-id` as "ids continue after the time the file was last
//! written", so ids keep increasing even when the clock stepped back since.
//! A report id that cannot be *written* (a full or read-only disk) does not
//! stop `run`: ids go on from the last one kept in memory, so they never go
//! backwards in this process, and the file is written again with the next
//! id once the disk takes writes. Only a restart during the fault, with a
//! wall clock stepped back behind the ids handed out meanwhile, could repeat
//! an id (Device Defender would drop that report); stopping the monitor on
//! every full disk was the worse trade.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::status::{Status, StorageWatch};

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A state directory that exists.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// Where corrupt files are counted; a registry of its own until
    /// [`StateDir::counting_in`] names the component's.
    status: Status,
    /// The last report id handed out by this value, so ids never go
    /// backwards while `report-id` cannot be written.
    last_report_id: Option<u64>,
    /// Whether `report-id` could be written, said once per change.
    report_id_writes: StorageWatch,
}

impl StateDir {
    /// Opens `root`, creating it (mode 0700: it holds the plugin cache, whose
    /// compiled code is trusted) if needed.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| StateError::Create {
                path: root.to_owned(),
                source,
            })?;
        Ok(StateDir {
            root: root.to_owned(),
            status: Status::new(),
            last_report_id: None,
            report_id_writes: StorageWatch::new(
                "state.report_id",
                "report-id",
                "report ids continue from memory",
            ),
        })
    }

    /// Counts corrupt state files in `status` (`state.corrupt_files`).
    pub fn counting_in(mut self, status: &Status) -> StateDir {
        self.status = status.clone();
        self
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A sub-directory, created on demand (outboxes, plugin cache, detection
    /// history).
    pub fn subdir(&self, name: &str) -> Result<PathBuf, StateError> {
        StateDir::open(&self.root.join(name)).map(|d| d.root)
    }

    /// The next report id: `max(now_ms, last + 1)`, persisted before it is
    /// returned so that no id is handed out twice, also across crashes.
    /// When `report-id` cannot be written the id is still handed out, from
    /// the last one kept in memory (see the module documentation); the
    /// failure is counted in `state.report_id.write_failures` and said once
    /// per change.
    pub fn next_report_id(&mut self, now_ms: u64) -> u64 {
        let path = self.root.join("report-id");
        let on_disk = match std::fs::read(&path) {
            Ok(bytes) => match std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                Some(id) => Some(id),
                None => {
                    note_corrupt(
                        &self.status,
                        &path,
                        "not a number",
                        "report ids continue after the time the file was last written",
                    );
                    Some(modified_ms(&path))
                }
            },
            Err(_) => None,
        };
        let last = match (self.last_report_id, on_disk) {
            (Some(memory), Some(disk)) => Some(memory.max(disk)),
            (memory, disk) => memory.or(disk),
        };
        let id = crate::report::next_report_id(now_ms, last);
        self.last_report_id = Some(id);
        match write_atomically(&path, id.to_string().as_bytes()) {
            Ok(()) => self.report_id_writes.worked(&self.status),
            Err(error) => self.report_id_writes.failed(
                &self.status,
                &format!("cannot write {}: {error}", path.display()),
                Some(&error),
            ),
        }
        id
    }

    /// Reads a JSON state file; a missing file is `None`, a corrupt one is
    /// logged, counted and `None`.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let path = self.root.join(name);
        let parsed = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => Err(e.to_string()),
        };
        parsed
            .map_err(|reason| note_corrupt(&self.status, &path, &reason, "starting without it"))
            .ok()
    }

    /// Writes a JSON state file atomically.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.root.join(name);
        let bytes = serde_json::to_vec(value).map_err(|e| StateError::Write {
            path: path.clone(),
            source: e.into(),
        })?;
        write_atomically(&path, &bytes).map_err(|source| StateError::Write { path, source })
    }
}

/// Logs (warn) and counts (`state.corrupt_files`) a state file that cannot be
/// used; `consequence` says how the agent goes on without it.
pub fn note_corrupt(status: &Status, path: &Path, reason: &str, consequence: &str) {
    status.add("state.corrupt_files", 1);
    tracing::warn!(
        file = %path.display(),
        reason,
        consequence,
        "state file is corrupt or truncated; going on without it"
    );
}

/// When `path` was last written, ms since the Unix epoch (0 if unknown).
fn modified_ms(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Replaces `path` with `bytes` so that readers and a crash see either the old
/// or the new content, never a mix: a temporary file beside it, fsync,
/// rename, fsync of the directory. Every file that must survive a crash is
/// written through here.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Persist the rename itself.
    std::fs::File::open(dir)?.sync_all()
}

/// Milliseconds since the Unix epoch by the wall clock. Report ids and
/// timestamps must be wall-clock based: a monotonic clock restarts at boot.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 7: corrupt or truncated state files are read
    /// conservatively, logged and counted; none stops anything.
    #[test]
    fn corrupt_state_files_are_read_conservatively_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Status::new();
        let mut state = StateDir::open(dir.path())
            .expect("open")
            .counting_in(&status);

        // A JSON state file cut short.
        std::fs::write(
            dir.path().join("net-run.json"),
            br#"{"counters": {"boot_id"#,
        )
        .expect("write");
        assert_eq!(state.load::<serde_json::Value>("net-run.json"), None);
        assert_eq!(status.number("state.corrupt_files"), 1);
        assert_eq!(state.load::<serde_json::Value>("absent.json"), None);
        assert_eq!(
            status.number("state.corrupt_files"),
            1,
            "absent is not corrupt"
        );

        // A report id that is not a number: ids continue after the time the
        // file was written, even with a clock that went back since.
        let path = dir.path().join("report-id");
        std::fs::write(&path, b"\x00\x00garbage").expect("write");
        let written = modified_ms(&path);
        assert!(written > 1_000_000, "the file has a modification time");
        let id = state.next_report_id(1_000);
        assert!(id > written, "{id} after {written}");
        assert_eq!(status.number("state.corrupt_files"), 2);
        assert_eq!(state.next_report_id(1_000), id + 1);
    }

    /// Issue 12 item 1: a `report-id` that cannot be written stops nothing;
    /// ids go on from memory, never backwards, and the file is written again
    /// once it can be.
    #[test]
    fn report_ids_go_on_from_memory_while_the_file_cannot_be_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Status::new();
        let mut state = StateDir::open(dir.path())
            .expect("open")
            .counting_in(&status);
        let first = state.next_report_id(5_000);
        assert_eq!(first, 5_000);
        // The temporary file's name taken by a directory: every write fails,
        // also for root (a full or read-only disk needs a mount; the
        // integration tests in run.rs make those).
        let blocker = dir.path().join(".report-id.tmp");
        std::fs::create_dir(&blocker).expect("blocker");
        let ids: Vec<u64> = [5_000, 4_000, 9_000]
            .into_iter()
            .map(|now| state.next_report_id(now))
            .collect();
        assert_eq!(ids, vec![5_001, 5_002, 9_000], "from memory, never back");
        assert_eq!(status.number("state.report_id.write_failures"), 3);
        assert_eq!(
            status.get("state.report_id.storage"),
            Some(crate::status::Value::Text("failing".to_owned()))
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("report-id")).expect("read"),
            "5000"
        );

        std::fs::remove_dir(&blocker).expect("unblock");
        assert_eq!(state.next_report_id(1_000), 9_001);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("report-id")).expect("read"),
            "9001"
        );
        assert_eq!(
            status.get("state.report_id.storage"),
            Some(crate::status::Value::Text("ok".to_owned()))
        );
        // A restart continues after what the file says.
        let mut restarted = StateDir::open(dir.path()).expect("open");
        assert_eq!(restarted.next_report_id(1_000), 9_002);
    }
}
