//! Counters and states of the running component: one registry that every
//! area writes to, written atomically to `status.json` in the state directory
//! and printed by `defender-edge status`.
//!
//! Names are dotted paths whose first segment is the area, e.g.
//! `collect.samples`, `report.trimmed_entries`, `plugin.port-allowlist.traps`,
//! `outbox.depth`. A string-keyed registry keeps areas from having to edit a
//! shared struct; the cost (a map lookup per update) is paid a few times per
//! sample, never per socket.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// A value in the status registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A counter or gauge.
    Number(u64),
    /// A state such as `running`, `disabled: 5 failures in 300 s`.
    Text(String),
}

/// What `status.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the snapshot was taken, ms since the Unix epoch.
    pub updated_ms: u64,
    /// The process that wrote it.
    pub pid: u32,
    pub values: BTreeMap<String, Value>,
}

/// The shared registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Status {
    inner: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl Status {
    pub fn new() -> Status {
        Status::default()
    }

    /// Adds `n` to the counter `name` (created at zero).
    pub fn add(&self, name: &str, n: u64) {
        let mut map = self.lock();
        match map.get_mut(name) {
            Some(Value::Number(v)) => *v = v.saturating_add(n),
            _ => {
                map.insert(name.to_owned(), Value::Number(n));
            }
        }
    }

    /// Sets the gauge `name`.
    pub fn set(&self, name: &str, n: u64) {
        self.lock().insert(name.to_owned(), Value::Number(n));
    }

    /// Sets the state `name` to a text.
    pub fn set_text(&self, name: &str, text: impl Into<String>) {
        self.lock()
            .insert(name.to_owned(), Value::Text(text.into()));
    }

    /// The current value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.lock().get(name).cloned()
    }

    /// The number `name` holds, or 0.
    pub fn number(&self, name: &str) -> u64 {
        match self.get(name) {
            Some(Value::Number(n)) => n,
            _ => 0,
        }
    }

    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        Snapshot {
            updated_ms: now_ms,
            pid: std::process::id(),
            values: self.lock().clone(),
        }
    }

    /// Writes the snapshot to `<dir>/status.json` atomically (temp file,
    /// fsync, rename), so a reader never sees half a file.
    pub fn write(&self, dir: &Path, now_ms: u64) -> std::io::Result<PathBuf> {
        let path = dir.join(STATUS_FILE);
        let json =
            serde_json::to_vec_pretty(&self.snapshot(now_ms)).map_err(std::io::Error::other)?;
        write_atomically(&path, &json)?;
        Ok(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single insert), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The status file's name inside the state directory.
pub const STATUS_FILE: &str = "status.json";

/// Reads a status file written by [`Status::write`].
pub fn read(dir: &Path) -> Result<Snapshot, String> {
    let path = dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a status file: {e}", path.display()))
}

/// Replaces `path` with `bytes` so that readers and a crash see either the old
/// or the new content, never a mix.
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
