//! Configuration update events, coalesced: the connection's reader hands each
//! changed key path over without ever waiting, and the receiver takes every
//! path changed since it last looked, at once.
//!
//! A deployment that changes many keys makes the nucleus send one event per
//! key. Queued in a bounded channel, the reader had to wait for room; the
//! component, busy reading the new configuration (a GetConfiguration whose
//! answer comes through that same reader), never made room: head-of-line
//! blocking until the request timed out, with sampling stalled meanwhile.
//! Coalesced, 500 events cost one set of paths and one read of the document.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// At most this many distinct paths are kept; past it, the whole
/// configuration (the empty path) counts as changed.
const MAX_PATHS: usize = 256;

#[derive(Default)]
struct Pending {
    paths: BTreeSet<Vec<String>>,
    /// The sending side (the subscription) is gone.
    ended: bool,
    /// The receiver is gone.
    dropped: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every change is one set operation: a poisoned lock is consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Receives the key paths of configuration changes, coalesced.
pub struct ConfigurationUpdates {
    shared: Arc<Shared>,
}

/// The reader's side: never blocks.
pub(super) struct UpdateSender {
    shared: Arc<Shared>,
}

/// A connected sender and receiver.
pub(super) fn channel() -> (UpdateSender, ConfigurationUpdates) {
    let shared = Arc::new(Shared::default());
    (
        UpdateSender {
            shared: shared.clone(),
        },
        ConfigurationUpdates { shared },
    )
}

impl UpdateSender {
    /// Records that `path` changed. Returns false when the receiver is gone.
    pub(super) fn send(&self, path: Vec<String>) -> bool {
        let mut pending = self.shared.lock();
        if pending.dropped {
            return false;
        }
        if pending.paths.len() >= MAX_PATHS && !pending.paths.contains(&path) {
            pending.paths.clear();
            pending.paths.insert(Vec::new());
        } else if !pending.paths.contains(&Vec::new()) {
            pending.paths.insert(path);
        }
        drop(pending);
        self.shared.notify.notify_one();
        true
    }

    pub(super) fn is_closed(&self) -> bool {
        self.shared.lock().dropped
    }
}

impl Drop for UpdateSender {
    fn drop(&mut self) {
        self.shared.lock().ended = true;
        self.shared.notify.notify_one();
    }
}

impl ConfigurationUpdates {
    /// Waits for changes and returns every key path changed since the last
    /// call (sorted; `[]` alone when too many changed to list). `None` once
    /// the subscription ended and nothing is left.
    pub async fn recv(&mut self) -> Option<Vec<Vec<String>>> {
        loop {
            {
                let mut pending = self.shared.lock();
                if !pending.paths.is_empty() {
                    return Some(std::mem::take(&mut pending.paths).into_iter().collect());
                }
                if pending.ended {
                    return None;
                }
            }
            // A notification sent between the check and here is kept as a
            // permit by `notify_one`, so none is missed.
            self.shared.notify.notified().await;
        }
    }
}

impl Drop for ConfigurationUpdates {
    fn drop(&mut self) {
        self.shared.lock().dropped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('/').map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn many_events_coalesce_into_one_set_without_waiting() {
        let (tx, mut rx) = channel();
        for n in 0..500 {
            assert!(tx.send(path(&format!("k{}", n % 10))));
        }
        let got = rx.recv().await.expect("changes");
        assert_eq!(got.len(), 10);
        assert_eq!(got[0], path("k0"));
        tx.send(path("a/b"));
        assert_eq!(rx.recv().await, Some(vec![path("a/b")]));
    }

    #[tokio::test]
    async fn too_many_distinct_paths_mean_the_whole_configuration() {
        let (tx, mut rx) = channel();
        for n in 0..(MAX_PATHS + 10) {
            tx.send(path(&format!("k{n}")));
        }
        assert_eq!(rx.recv().await, Some(vec![Vec::<String>::new()]));
    }

    #[tokio::test]
    async fn the_end_is_seen_after_what_is_left() {
        let (tx, mut rx) = channel();
        tx.send(path("x"));
        drop(tx);
        assert_eq!(rx.recv().await, Some(vec![path("x")]));
        assert_eq!(rx.recv().await, None);
        let (tx, rx) = channel();
        drop(rx);
        assert!(tx.is_closed());
        assert!(!tx.send(path("x")));
    }
}
