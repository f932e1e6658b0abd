//! Alarm events to the IoT alarm topic, durable like reports: each event is
//! stored in its own outbox (`<stateDir>/alarm-outbox`) before anything is
//! sent, and a worker publishes the oldest first, acknowledging each once
//! the transport confirmed it (QoS 1), retrying with backoff while the
//! transport is down. An alarm raised during an outage reaches the topic
//! when the connection is back, across restarts too (docs/DETECTION.md,
//! "Where the events go in `run`").

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::publish::Transport;
use crate::publish::outbox::{Outbox, OutboxLimits};
use crate::status::Status;

/// The outbox's folder in the state directory.
pub const OUTBOX_DIR: &str = "alarm-outbox";

/// Alarm events are small and rare: 1 MiB holds thousands; past it the
/// oldest are evicted (counted by the outbox).
pub const LIMITS: OutboxLimits = OutboxLimits {
    max_bytes: 1024 * 1024,
    segment_bytes: 64 * 1024,
};

struct Shared {
    outbox: Mutex<Outbox>,
    wake: Notify,
    status: Status,
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // Every outbox operation leaves it consistent on disk and in memory,
        // so a panic elsewhere while holding the lock does not poison it.
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The durable path of alarm events to one IoT topic.
pub struct AlarmQueue {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AlarmQueue {
    /// Starts the worker that publishes what `outbox` holds, and what is
    /// pushed from now on, to `topic` over `transport`.
    pub fn start<T: Transport + Send + Sync + 'static>(
        transport: Arc<T>,
        topic: String,
        outbox: Outbox,
        status: Status,
    ) -> AlarmQueue {
        let shared = Arc::new(Shared {
            outbox: Mutex::new(outbox),
            wake: Notify::new(),
            status,
        });
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(worker(transport, topic, shared.clone(), stop));
        AlarmQueue {
            shared,
            shutdown,
            task,
        }
    }

    /// Stores one event for the topic; a failure (full or read-only disk) is
    /// logged and counted, and the event still reaches the local topic and
    /// the SIEM path.
    pub fn push(&self, payload: &[u8]) {
        let stored = tokio::task::block_in_place(|| self.shared.outbox().push(payload));
        match stored {
            Ok(_) => self.shared.wake.notify_one(),
            Err(error) => {
                warn!(%error, "cannot store an alarm event for the IoT topic");
                self.shared.status.add("detect.alarm_store_errors", 1);
            }
        }
    }

    /// Stops the worker; what it did not publish stays in the outbox for
    /// the next start.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

async fn worker<T: Transport + Send + Sync>(
    transport: Arc<T>,
    topic: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut failing = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let next = {
            let outbox = shared.outbox();
            outbox.oldest().map(|id| (id, outbox.read(id)))
        };
        let (id, payload) = match next {
            None => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            Some((id, Err(error))) => {
                warn!(%error, entry = ?id, "unreadable alarm event skipped");
                shared.status.add("detect.alarm_entries_unreadable", 1);
                let _ = shared.outbox().remove(id);
                continue;
            }
            Some((id, Ok(payload))) => (id, payload),
        };
        match transport.publish(&topic, payload).await {
            Ok(()) => {
                if let Err(error) = shared.outbox().acknowledge(id) {
                    warn!(%error, "cannot record a published alarm event; it may be sent again");
                }
                shared.status.add("detect.alarms_published", 1);
                if std::mem::take(&mut failing) {
                    info!(%topic, "alarm events reach the IoT topic again");
                }
                backoff.reset();
            }
            Err(error) => {
                shared.status.add("detect.alarm_publish_errors", 1);
                if !std::mem::replace(&mut failing, true) {
                    warn!(%topic, %error, "cannot publish alarm events; they wait in the alarm outbox");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}
