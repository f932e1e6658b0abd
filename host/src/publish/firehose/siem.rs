//! The SIEM path as `run` sees it: samples in, HEC events out through
//! Firehose. [`SiemSink`] exists in every build; the cargo feature
//! `firehose` decides only whether it can start, so no code outside this
//! folder knows the feature exists.

use std::path::Path;

use tracing::error;

use super::FirehoseConfig;
use crate::changes::Change;
use crate::health::Health;
use crate::sample::Sample;
use crate::status::Status;

/// Where `run` hands the samples whose events go to Splunk: the Firehose
/// sink when it is configured, built in and started; else nowhere.
#[derive(Debug)]
pub struct SiemSink {
    running: Option<Running>,
    /// `detection.sendToFirehose`: whether local detection's alerts go too.
    with_detection_alerts: bool,
    status: Status,
}

impl SiemSink {
    /// Starts the Firehose sink when `config.enabled`. A sink that cannot
    /// start is logged and shown in `status` (`firehose.state`); reports to
    /// Device Defender go on without it.
    pub async fn start(
        config: &FirehoseConfig,
        with_detection_alerts: bool,
        state_dir: &Path,
        status: &Status,
    ) -> SiemSink {
        let running = match config.enabled {
            true => Running::start(config, state_dir, status).await,
            false => None,
        };
        SiemSink {
            running,
            with_detection_alerts,
            status: status.clone(),
        }
    }

    /// Stores the events of `sample`, whose report id is `id`, for delivery:
    /// on a report tick all of them, on other ticks only when it carries
    /// alerts. A failure is logged and counted; it never stops the caller.
    pub async fn submit(&self, sample: &Sample, id: u64, report: bool) {
        let Some(running) = &self.running else {
            return;
        };
        let without_detection;
        let sample = if self.with_detection_alerts {
            sample
        } else {
            let mut copy = sample.clone();
            copy.alerts.retain(|alert| !alert.origin().is_detection());
            without_detection = copy;
            &without_detection
        };
        if sample.alerts.is_empty() && !report {
            return;
        }
        if let Err(error) = running.submit(sample, id).await {
            error!(%error, sample_id = id, "cannot store events for Firehose");
            self.status.add("firehose.submit_errors", 1);
        }
    }

    /// Stores the health event taken at `at_ms`. A failure is logged and
    /// counted; it never stops the caller.
    pub async fn submit_health(&self, health: &Health, thing: &str, at_ms: u64) {
        let Some(running) = &self.running else {
            return;
        };
        if let Err(error) = running.submit_health(health, thing, at_ms).await {
            error!(%error, "cannot store the health event for Firehose");
            self.status.add("firehose.submit_errors", 1);
        }
    }

    /// Stores the change events of one sample. A failure is logged and
    /// counted; it never stops the caller.
    pub async fn submit_changes(&self, changes: &[Change], thing: &str, at_ms: u64) {
        let Some(running) = &self.running else {
            return;
        };
        if changes.is_empty() {
            return;
        }
        if let Err(error) = running.submit_changes(changes, thing, at_ms).await {
            error!(%error, "cannot store change events for Firehose");
            self.status.add("firehose.submit_errors", 1);
        }
    }

    /// Sends what is waiting, for at most the configured shutdown timeout,
    /// and stops; the rest stays in the sink's outbox for the next start.
    pub async fn shutdown(self) {
        if let Some(running) = self.running {
            running.shutdown().await;
        }
    }
}

/// A started Firehose sink and its delivery task.
#[cfg(feature = "firehose")]
#[derive(Debug)]
struct Running {
    handle: super::FirehoseHandle,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "firehose")]
impl Running {
    async fn start(config: &FirehoseConfig, state_dir: &Path, status: &Status) -> Option<Running> {
        match super::FirehoseSink::start(config, state_dir, status.clone()).await {
            Ok((handle, task)) => Some(Running { handle, task }),
            Err(error) => {
                // Only a configuration the sink cannot work with gets here
                // (no region, invalid section, no outbox): peers not ready
                // at boot are waited for by the sink itself. Reports to
                // Device Defender go on; SIEM events are not collected
                // until the next start or configuration update.
                error!(%error, "Firehose sink not started; SIEM events are not sent");
                status.set_text("firehose.state", format!("not started: {error}"));
                None
            }
        }
    }

    async fn submit(&self, sample: &Sample, id: u64) -> Result<(), super::FirehoseError> {
        self.handle.submit(sample, id).await
    }

    async fn submit_health(
        &self,
        health: &Health,
        thing: &str,
        at_ms: u64,
    ) -> Result<(), super::FirehoseError> {
        self.handle.submit_health(health, thing, at_ms).await
    }

    async fn submit_changes(
        &self,
        changes: &[Change],
        thing: &str,
        at_ms: u64,
    ) -> Result<(), super::FirehoseError> {
        self.handle.submit_changes(changes, thing, at_ms).await
    }

    async fn shutdown(self) {
        self.handle.shutdown().await;
        let _ = self.task.await;
    }
}

/// Without the feature nothing can run: this type has no values.
#[cfg(not(feature = "firehose"))]
#[derive(Debug)]
enum Running {}

#[cfg(not(feature = "firehose"))]
impl Running {
    async fn start(
        _config: &FirehoseConfig,
        _state_dir: &Path,
        status: &Status,
    ) -> Option<Running> {
        error!(
            "publish.firehose.enabled is set, but this build has no Firehose support (cargo feature `firehose`)"
        );
        status.set_text("firehose.state", "not built in");
        None
    }

    async fn submit(&self, _sample: &Sample, _id: u64) -> Result<(), std::convert::Infallible> {
        match *self {}
    }

    async fn submit_health(
        &self,
        _health: &Health,
        _thing: &str,
        _at_ms: u64,
    ) -> Result<(), std::convert::Infallible> {
        match *self {}
    }

    async fn submit_changes(
        &self,
        _changes: &[Change],
        _thing: &str,
        _at_ms: u64,
    ) -> Result<(), std::convert::Infallible> {
        match *self {}
    }

    async fn shutdown(self) {
        match self {}
    }
}
