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
//! A report id that cannot be *written* stops `run` (exit 1): handing out ids
//! that a restart could repeat would make Device Defender drop reports.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::status::Status;

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

    /// The next report id, persisted before it is returned so that no id is
    /// ever handed out twice, also across crashes.
    pub fn next_report_id(&self, now_ms: u64) -> Result<u64, StateError> {
        let path = self.root.join("report-id");
        let last = match std::fs::read(&path) {
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
        let id = crate::report::next_report_id(now_ms, last);
        write_atomically(&path, id.to_string().as_bytes())
            .map_err(|source| StateError::Write { path, source })?;
        Ok(id)
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
        let state = StateDir::open(dir.path())
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
        let id = state.next_report_id(1_000).expect("next id");
        assert!(id > written, "{id} after {written}");
        assert_eq!(status.number("state.corrupt_files"), 2);
        assert_eq!(state.next_report_id(1_000).expect("next id"), id + 1);
    }
}
