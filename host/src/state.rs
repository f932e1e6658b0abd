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
//! value or the new one. A JSON file that cannot be parsed is logged and
//! treated as absent, which at worst costs one network delta. A `report-id`
//! that cannot be parsed is logged too; ids then restart from the clock,
//! which keeps them increasing unless the clock stepped back. A report id
//! that cannot be *written* stops `run` (exit 1): handing out ids that a
//! restart could repeat would make Device Defender drop reports.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

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
        })
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
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(id) => Some(id),
                Err(_) => {
                    tracing::warn!(file = %path.display(), "report id file is corrupt; continuing from the clock");
                    None
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
    /// logged and `None`.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let path = self.root.join(name);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "state file is corrupt; starting without it");
                None
            }
        }
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

/// Milliseconds since the Unix epoch by the wall clock. Report ids and
/// timestamps must be wall-clock based: a monotonic clock restarts at boot.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Persist the rename itself.
    std::fs::File::open(dir)?.sync_all()
}
