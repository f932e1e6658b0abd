//! The plugin directory watcher for hot reload.
//!
//! Only three things mean "a plugin file changed": a write that finished
//! (the file was closed after writing), a rename into or out of the folder,
//! and a removal. Opening or reading a file is not a change; reacting to it
//! made the host's own load start the next one, forever. The host also
//! compares the file's content (sha256) with what it loaded before acting
//! (`Inner::changed`), so a write of the same bytes keeps the running
//! instance and its state.
//!
//! Events are debounced: a file is handled once no event arrived for it in
//! [`DEBOUNCE`] (editors and `cp` write in several steps). The thread that
//! does this sleeps without a timeout while nothing is pending, so a quiet
//! folder costs no wake-ups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Quiet time after the last event on a file before it is handled.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches one folder until dropped.
pub(crate) struct DirWatcher {
    // Dropped first: no more events once the watcher goes.
    _watcher: RecommendedWatcher,
    pending: Arc<Pending>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.pending.lock().stopped = true;
        self.pending.wake.notify_one();
    }
}

struct Pending {
    state: Mutex<PendingState>,
    wake: Condvar,
}

#[derive(Default)]
struct PendingState {
    /// Changed files and when their last event came.
    files: BTreeMap<PathBuf, Instant>,
    stopped: bool,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether an event of this kind may have changed what a file holds or
/// whether it is there.
pub(crate) fn is_change(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}

impl DirWatcher {
    /// Watches `dir` (not its subfolders) and calls `changed` on a thread of
    /// its own with each file in it that `wanted` accepts, once its events
    /// settle. `changed` returns `false` to stop watching.
    pub fn start(
        dir: &Path,
        wanted: impl Fn(&Path) -> bool + Send + 'static,
        changed: impl Fn(&Path) -> bool + Send + 'static,
    ) -> Result<DirWatcher, String> {
        let pending = Arc::new(Pending {
            state: Mutex::new(PendingState::default()),
            wake: Condvar::new(),
        });
        let events = pending.clone();
        let watch_dir = dir.to_owned();
        let mut watcher =
            notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
                let event = match result {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, "plugin directory watcher error");
                        return;
                    }
                };
                if !is_change(&event.kind) {
                    return;
                }
                let now = Instant::now();
                let mut state = events.lock();
                for path in event.paths {
                    if path.parent() == Some(watch_dir.as_path()) && wanted(&path) {
                        state.files.insert(path, now);
                    }
                }
                events.wake.notify_one();
            })
            .map_err(|e| e.to_string())?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| e.to_string())?;
        let settle = pending.clone();
        std::thread::Builder::new()
            .name("plugin-reload".into())
            .spawn(move || settle.run(changed))
            .map_err(|e| e.to_string())?;
        Ok(DirWatcher {
            _watcher: watcher,
            pending,
        })
    }
}

impl Pending {
    fn run(&self, changed: impl Fn(&Path) -> bool) {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let settled: Vec<PathBuf> = state
                .files
                .iter()
                .filter(|(_, last)| now.duration_since(**last) >= DEBOUNCE)
                .map(|(path, _)| path.clone())
                .collect();
            if !settled.is_empty() {
                for path in &settled {
                    state.files.remove(path);
                }
                drop(state);
                for path in &settled {
                    if !changed(path) {
                        return;
                    }
                }
                state = self.lock();
                continue;
            }
            let next = state.files.values().min().map(|last| *last + DEBOUNCE);
            state = super::call::sleep_until(&self.wake, state, next, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn only_finished_writes_renames_and_removals_are_changes() {
        let changes = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Remove(RemoveKind::File),
        ];
        let not_changes = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ];
        for kind in changes {
            assert!(is_change(&kind), "{kind:?}");
        }
        for kind in not_changes {
            assert!(!is_change(&kind), "{kind:?}");
        }
    }
}
