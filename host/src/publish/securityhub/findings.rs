//! The findings path as `run` sees it: alarm events in, Security Hub
//! findings out. [`FindingsSink`] exists in every build; the cargo feature
//! `securityhub` decides only whether it can start, so no code outside this
//! folder knows the feature exists.

use std::path::Path;

use tracing::error;

use super::SecurityHubConfig;
use crate::detect::AlarmEvent;
use crate::status::Status;

/// Where `run` hands local detection's alarm events: the Security Hub sink
/// when it is enabled, built in and started; else nowhere.
#[derive(Debug)]
pub struct FindingsSink {
    running: Option<Running>,
    status: Status,
}

impl FindingsSink {
    /// Starts the Security Hub sink when `config.enabled`. A sink that
    /// cannot start is logged and shown in `status` (`securityhub.state`);
    /// everything else goes on without it.
    pub async fn start(config: &SecurityHubConfig, state_dir: &Path, status: &Status) -> Self {
        let running = match config.enabled {
            true => Running::start(config, state_dir, status).await,
            false => None,
        };
        FindingsSink {
            running,
            status: status.clone(),
        }
    }

    /// Whether findings are being stored for import.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stores one finding per event for import. A failure is logged and
    /// counted; it never stops the caller.
    pub async fn submit(&self, events: &[AlarmEvent]) {
        let Some(running) = &self.running else {
            return;
        };
        for event in events {
            if let Err(error) = running.submit(event).await {
                error!(%error, violation_id = %event.violation_id, "cannot store a Security Hub finding");
                self.status.add("securityhub.submit_errors", 1);
            }
        }
    }

    /// Imports what is waiting, for at most the configured shutdown
    /// timeout, and stops; the rest stays in the sink's outbox for the next
    /// start.
    pub async fn shutdown(self) {
        if let Some(running) = self.running {
            running.shutdown().await;
        }
    }
}

/// A started Security Hub sink and its import task.
#[cfg(feature = "securityhub")]
#[derive(Debug)]
struct Running {
    handle: super::SecurityHubHandle,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "securityhub")]
impl Running {
    async fn start(config: &SecurityHubConfig, state_dir: &Path, status: &Status) -> Option<Self> {
        match super::SecurityHubSink::start(config, state_dir, status.clone()).await {
            Ok((handle, task)) => Some(Running { handle, task }),
            Err(error) => {
                error!(%error, "Security Hub sink not started; alarms do not become findings");
                status.set_text("securityhub.state", format!("not started: {error}"));
                None
            }
        }
    }

    async fn submit(&self, event: &AlarmEvent) -> Result<(), super::SecurityHubError> {
        self.handle.submit(event).await
    }

    async fn shutdown(self) {
        self.handle.shutdown().await;
        let _ = self.task.await;
    }
}

/// Without the feature nothing can run: this type has no values.
#[cfg(not(feature = "securityhub"))]
#[derive(Debug)]
enum Running {}

#[cfg(not(feature = "securityhub"))]
impl Running {
    async fn start(
        _config: &SecurityHubConfig,
        _state_dir: &Path,
        status: &Status,
    ) -> Option<Running> {
        error!(
            "publish.securityHub.enabled is set, but this build has no Security Hub support (cargo feature `securityhub`)"
        );
        status.set_text("securityhub.state", "not built in");
        None
    }

    async fn submit(&self, _event: &AlarmEvent) -> Result<(), std::convert::Infallible> {
        match *self {}
    }

    async fn shutdown(self) {
        match self {}
    }
}
