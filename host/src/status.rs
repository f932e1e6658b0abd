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
    /// When that process started, ms since the Unix epoch (0 in files
    /// written before it was recorded).
    #[serde(default)]
    pub started_ms: u64,
    pub values: BTreeMap<String, Value>,
}

/// The shared registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Status {
    inner: Arc<Mutex<BTreeMap<String, Value>>>,
    started_ms: u64,
}

impl Status {
    pub fn new() -> Status {
        Status {
            inner: Arc::default(),
            started_ms: crate::state::now_ms(),
        }
    }

    /// Removes `name` (an alarm that cleared, say).
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
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
            started_ms: self.started_ms,
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

/// A file the agent writes again and again (a state file, an output file)
/// on a disk that may fill up, be remounted read-only or fail. A failed write
/// never stops anything; it is said once per change of state: a warn line
/// when the writes start failing (or fail for another reason), an info line
/// when they work again; `<name>.storage` holds `ok`, `disk full`,
/// `read-only` or `failing` from the first failure on, and
/// `<name>.write_failures` counts every failed write (both make the agent's
/// health `degraded`, see `health.rs`).
#[derive(Debug, Clone)]
pub struct StorageWatch {
    name: &'static str,
    /// What the file is, for the log: `the report id`, `the NDJSON output`.
    what: &'static str,
    /// What is lost while it fails, for the log.
    consequence: &'static str,
    failing: Option<&'static str>,
}

impl StorageWatch {
    pub fn new(name: &'static str, what: &'static str, consequence: &'static str) -> Self {
        StorageWatch {
            name,
            what,
            consequence,
            failing: None,
        }
    }

    /// Whether the last write failed.
    pub fn is_failing(&self) -> bool {
        self.failing.is_some()
    }

    /// A write failed with `error`; `io` is the system error behind it, when
    /// known, which names the condition.
    pub fn failed(
        &mut self,
        status: &Status,
        error: &dyn std::fmt::Display,
        io: Option<&std::io::Error>,
    ) {
        let label = io.map_or("failing", storage_label);
        status.add(&format!("{}.write_failures", self.name), 1);
        if self.failing != Some(label) {
            tracing::warn!(
                file = self.what,
                condition = label,
                error = %error,
                consequence = self.consequence,
                "cannot write to the disk; going on without it until the disk takes writes again"
            );
            status.set_text(&format!("{}.storage", self.name), label);
            self.failing = Some(label);
        }
    }

    /// A write worked.
    pub fn worked(&mut self, status: &Status) {
        if let Some(was) = self.failing.take() {
            tracing::info!(file = self.what, was, "the disk takes writes again");
            status.set_text(&format!("{}.storage", self.name), "ok");
        }
    }
}

/// The storage condition of a failed write: `disk full` (`ENOSPC`,
/// `EDQUOT`), `read-only` (`EROFS`) or `failing` (anything else, `EIO`).
pub fn storage_label(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => "disk full",
        Some(libc::EROFS) => "read-only",
        _ => "failing",
    }
}

/// The system error at the root of `error`, if any.
pub fn io_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
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

/// Whether the process that wrote a status file still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// No process has that pid any more.
    Gone,
    /// The pid now belongs to another program.
    Reused,
}

/// The program name `run`'s process has in `/proc/<pid>/comm`.
const PROGRAM: &str = "defender-edge";

/// Looks the writer of `snapshot` up in `proc_root` (`/proc`).
pub fn liveness(snapshot: &Snapshot, proc_root: &Path) -> Liveness {
    match std::fs::read_to_string(proc_root.join(snapshot.pid.to_string()).join("comm")) {
        Err(_) => Liveness::Gone,
        Ok(comm) if comm.trim_end() == PROGRAM => Liveness::Running,
        Ok(_) => Liveness::Reused,
    }
}

/// Renders a snapshot as a table a person reads at a glance: whether its
/// writer still runs and since when, the age of the snapshot, the open
/// alarms, then one block per area, names aligned.
pub fn render_table(snapshot: &Snapshot, now_ms: u64, alive: Liveness) -> String {
    let age_s = now_ms.saturating_sub(snapshot.updated_ms) / 1000;
    let pid = snapshot.pid;
    let state = match alive {
        Liveness::Running if snapshot.started_ms > 0 => format!(
            "running (pid {pid}, up {})",
            format_age(now_ms.saturating_sub(snapshot.started_ms) / 1000)
        ),
        Liveness::Running => format!("running (pid {pid})"),
        Liveness::Gone => format!("NOT RUNNING (pid {pid} has exited)"),
        Liveness::Reused => format!("NOT RUNNING (pid {pid} is now another program)"),
    };
    let mut out = format!(
        "defender-edge {state}\nupdated {} UTC, {} ago\n",
        format_utc(snapshot.updated_ms),
        format_age(age_s)
    );
    let alarms: Vec<(&str, &Value)> = snapshot
        .values
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(ALARM_PREFIX).map(|k| (k, v)))
        .collect();
    let open = match alive {
        Liveness::Running => "open alarms",
        _ => "alarms open when it stopped",
    };
    if alarms.is_empty() {
        out.push_str(&format!("\n{open}: none\n"));
    } else {
        out.push_str(&format!("\n{open}\n"));
        for (behavior, value) in alarms {
            out.push_str(&format!("  {behavior}  {}\n", shown(value)));
        }
    }
    let counters = || {
        snapshot
            .values
            .iter()
            .filter(|(k, _)| !k.starts_with(ALARM_PREFIX))
    };
    let width = counters()
        .map(|(k, _)| k.split_once('.').map_or(k.len(), |(_, rest)| rest.len()))
        .max()
        .unwrap_or(0);
    let mut area = "";
    for (name, value) in counters() {
        let (this_area, rest) = name.split_once('.').unwrap_or(("", name.as_str()));
        if this_area != area {
            area = this_area;
            out.push_str(&format!(
                "\n{}\n",
                if area.is_empty() { "general" } else { area }
            ));
        }
        out.push_str(&format!("  {rest:<width$}  {}\n", shown(value)));
    }
    out
}

/// Open alarms are kept as `alarm.<profile>/<behavior>`.
pub const ALARM_PREFIX: &str = "alarm.";

fn shown(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::Text(t) => t.clone(),
    }
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
        status.set_text(
            "alarm.P/B",
            "since 2026-01-01 00:00:00 UTC: port 21 (not in 22)",
        );
        let mut snapshot = status.snapshot(1_767_225_600_000);
        snapshot.started_ms = 1_767_225_000_000;
        let table = render_table(&snapshot, 1_767_225_630_000, Liveness::Running);
        let expected = format!(
            "defender-edge running (pid {}, up 10 min)\n\
             updated 2026-01-01 00:00:00 UTC, 30 s ago\n\n\
             open alarms\n  P/B  since 2026-01-01 00:00:00 UTC: port 21 (not in 22)\n\n\
             collect\n  samples               3\n\n\
             outbox\n  depth                 0\n\n\
             plugin\n  port-allowlist.state  running\n",
            std::process::id()
        );
        assert_eq!(table, expected);
    }

    #[test]
    fn liveness_checks_the_pid_and_its_program() {
        let proc = tempfile::tempdir().expect("temp dir");
        let snapshot = Snapshot {
            pid: 42,
            ..Snapshot::default()
        };
        assert_eq!(liveness(&snapshot, proc.path()), Liveness::Gone);
        std::fs::create_dir(proc.path().join("42")).expect("pid dir");
        std::fs::write(proc.path().join("42/comm"), "bash\n").expect("comm");
        assert_eq!(liveness(&snapshot, proc.path()), Liveness::Reused);
        std::fs::write(proc.path().join("42/comm"), "defender-edge\n").expect("comm");
        assert_eq!(liveness(&snapshot, proc.path()), Liveness::Running);
        let table = render_table(&snapshot, 0, Liveness::Gone);
        assert!(table.starts_with("defender-edge NOT RUNNING (pid 42 has exited)\n"));
        assert!(table.contains("alarms open when it stopped: none"));
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
