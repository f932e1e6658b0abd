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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::state::write_atomically;

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

/// Renders a snapshot as a table a person reads at a glance: one block per
/// area, names aligned, the age of the snapshot on top.
pub fn render_table(snapshot: &Snapshot, now_ms: u64) -> String {
    let age_s = now_ms.saturating_sub(snapshot.updated_ms) / 1000;
    let mut out = format!(
        "defender-edge status (pid {}, updated {} UTC, {} ago)\n",
        snapshot.pid,
        format_utc(snapshot.updated_ms),
        format_age(age_s)
    );
    let width = snapshot
        .values
        .keys()
        .map(|k| k.split_once('.').map_or(k.len(), |(_, rest)| rest.len()))
        .max()
        .unwrap_or(0);
    let mut area = "";
    for (name, value) in &snapshot.values {
        let (this_area, rest) = name.split_once('.').unwrap_or(("", name.as_str()));
        if this_area != area {
            area = this_area;
            out.push_str(&format!(
                "\n{}\n",
                if area.is_empty() { "general" } else { area }
            ));
        }
        let value = match value {
            Value::Number(n) => n.to_string(),
            Value::Text(t) => t.clone(),
        };
        out.push_str(&format!("  {rest:<width$}  {value}\n"));
    }
    out
}

fn format_age(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7199 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    }
}

/// `YYYY-MM-DD HH:MM:SS` for milliseconds since the epoch (proleptic
/// Gregorian calendar, Howard Hinnant's days-to-civil algorithm).
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_767_225_600_000), "2026-01-01 00:00:00");
        assert_eq!(
            format_utc(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03"
        );
    }

    #[test]
    fn table_groups_by_area() {
        let status = Status::new();
        status.add("collect.samples", 2);
        status.add("collect.samples", 1);
        status.set_text("plugin.port-allowlist.state", "running");
        status.set("outbox.depth", 0);
        let table = render_table(&status.snapshot(1_767_225_600_000), 1_767_225_630_000);
        let expected = format!(
            "defender-edge status (pid {}, updated 2026-01-01 00:00:00 UTC, 30 s ago)\n\n\
             collect\n  samples               3\n\n\
             outbox\n  depth                 0\n\n\
             plugin\n  port-allowlist.state  running\n",
            std::process::id()
        );
        assert_eq!(table, expected);
    }

    #[test]
    fn atomic_write_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Status::new();
        status.add("report.sent", 7);
        status.write(dir.path(), 5).expect("write");
        let back = read(dir.path()).expect("read");
        assert_eq!(back.values.get("report.sent"), Some(&Value::Number(7)));
        assert_eq!(back.updated_ms, 5);
    }
}
