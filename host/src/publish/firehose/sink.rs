//! The Firehose sink: `submit` stores a sample's HEC events durably, a worker
//! task delivers them with `PutRecordBatch` and acknowledges them only once
//! Firehose accepted every record that carried them.
//!
//! The worker owns delivery and its retry state; callers only push into the
//! outbox and wake it. One outbox entry holds one sample's event lines, so a
//! sample is the unit of acknowledgement while records are packed across
//! samples up to the billing-friendly size budget.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_sdk_firehose::Client;
use aws_sdk_firehose::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_firehose::operation::describe_delivery_stream::DescribeDeliveryStreamError;
use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchError;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{DeliveryStreamStatus, Record};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::records::{self, RecordPacker};
use super::{EventOptions, FirehoseConfig, events};
use crate::backoff::Backoff;
use crate::changes::Change;
use crate::health::Health;
use crate::publish::aws::{self, error_chain, lock};
use crate::publish::outbox::{EntryId, Outbox};
use crate::sample::Sample;
use crate::status::Status;

/// Why the sink did not start, or a sample was not stored. Start-up errors
/// leave the rest of the component running: the caller logs them and goes on
/// without SIEM events.
#[derive(Debug, thiserror::Error)]
pub enum FirehoseError {
    /// The `publish.firehose` section is inconsistent.
    #[error("invalid Firehose configuration: {0}")]
    Config(String),
    /// Neither the configuration nor the SDK's chain gives a region.
    #[error(
        "no AWS region for Firehose delivery stream {stream}: set AWS_REGION or publish.firehose.region"
    )]
    NoRegion { stream: String },
    /// The default credential chain found nothing usable.
    #[error("no AWS credentials for Firehose delivery stream {stream} in {region}: {reason}")]
    NoCredentials {
        stream: String,
        region: String,
        reason: String,
    },
    /// DescribeDeliveryStream says the stream does not exist.
    #[error("Firehose delivery stream {stream} does not exist in {region}")]
    StreamNotFound { stream: String, region: String },
    /// The stream exists but is being deleted or failed to create.
    #[error("Firehose delivery stream {stream} in {region} is {state}, not ACTIVE")]
    StreamNotUsable {
        stream: String,
        region: String,
        state: String,
    },
    /// Firehose refused DescribeDeliveryStream (access denied, bad
    /// signature...).
    #[error("Firehose refused to describe delivery stream {stream} in {region}: {reason}")]
    Refused {
        stream: String,
        region: String,
        reason: String,
    },
    /// The outbox could not be opened or written.
    #[error("Firehose outbox for delivery stream {stream}: {reason}")]
    Outbox { stream: String, reason: String },
    /// `submit` after `shutdown`, or the worker is gone.
    #[error("the Firehose sink for delivery stream {stream} has stopped")]
    Stopped { stream: String },
}

/// Starts Firehose delivery; see [`FirehoseSink::start`].
#[derive(Debug)]
pub struct FirehoseSink;

/// Submits samples to a running sink. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FirehoseHandle {
    shared: Arc<Shared>,
    shutdown: Arc<watch::Sender<bool>>,
    finished: watch::Receiver<bool>,
}

#[derive(Debug)]
struct Shared {
    stream: String,
    options: EventOptions,
    outbox: Arc<Mutex<Outbox>>,
    wake: Notify,
    status: Status,
}

impl FirehoseSink {
    /// Loads the AWS configuration the standard way (environment, profile,
    /// container credentials from the Greengrass Token Exchange Service,
    /// `AWS_ENDPOINT_URL_FIREHOSE`), checks the region, opens the outbox
    /// under `state_dir` and spawns the delivery task; `submit` stores events
    /// from then on. The task checks the credentials and the stream first,
    /// and retries those checks with backoff until they pass (no network or
    /// no credentials yet at boot, a stream created after the device, a
    /// throttled DescribeDeliveryStream after a fleet-wide reboot): only then
    /// does it send. `config.enabled` is the caller's to check.
    pub async fn start(
        config: &FirehoseConfig,
        state_dir: &Path,
        status: Status,
    ) -> Result<(FirehoseHandle, JoinHandle<()>), FirehoseError> {
        let loader = aws_config::defaults(BehaviorVersion::latest());
        FirehoseSink::start_with_loader(config, state_dir, status, loader).await
    }

    /// Like [`FirehoseSink::start`], with an AWS configuration loader the
    /// caller prepared (credentials or endpoint set explicitly, as tests
    /// do). The HTTP client, timeouts and the configured region are applied
    /// on top of it.
    pub async fn start_with_loader(
        config: &FirehoseConfig,
        state_dir: &Path,
        status: Status,
        loader: ConfigLoader,
    ) -> Result<(FirehoseHandle, JoinHandle<()>), FirehoseError> {
        config.check().map_err(FirehoseError::Config)?;
        let stream = config.delivery_stream.clone();
        let sdk = aws::sdk_config(config.region.as_deref(), loader).await;
        let region =
            sdk.region()
                .map(ToString::to_string)
                .ok_or_else(|| FirehoseError::NoRegion {
                    stream: stream.clone(),
                })?;
        let client = Client::new(&sdk);

        let dir = state_dir.join("firehose-outbox");
        let outbox =
            Outbox::open(&dir, config.outbox, "firehose.outbox", status.clone()).map_err(|e| {
                FirehoseError::Outbox {
                    stream: stream.clone(),
                    reason: e.to_string(),
                }
            })?;
        let waiting = outbox.depth();
        let shared = Arc::new(Shared {
            stream: stream.clone(),
            options: config.event_options(),
            outbox: Arc::new(Mutex::new(outbox)),
            wake: Notify::new(),
            status: status.clone(),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (finished_tx, finished_rx) = watch::channel(false);
        let worker = Worker {
            client,
            sdk,
            shared: shared.clone(),
            region: region.clone(),
            record_bytes: config.record_bytes,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            flush_bytes: config.flush_bytes,
            retry_base: Duration::from_millis(config.retry_base_ms),
            retry_max: Duration::from_millis(config.retry_max_ms),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
            shutdown: shutdown_rx,
            deadline: None,
        };
        status.set_text("firehose.state", "starting");
        info!(%stream, %region, waiting, "Firehose sink started; events are stored from now on");
        let task = tokio::spawn(async move {
            worker.run().await;
            let _ = finished_tx.send(true);
        });
        Ok((
            FirehoseHandle {
                shared,
                shutdown: Arc::new(shutdown_tx),
                finished: finished_rx,
            },
            task,
        ))
    }
}

impl FirehoseHandle {
    /// Encodes the sample's events and stores them in the outbox; when this
    /// returns `Ok` they survive a crash. Delivery happens later, on the
    /// worker. Events too large for a Firehose record are dropped, counted
    /// and logged.
    pub async fn submit(&self, sample: &Sample, sample_id: u64) -> Result<(), FirehoseError> {
        let shared = &self.shared;
        if *self.shutdown.borrow() {
            return Err(FirehoseError::Stopped {
                stream: shared.stream.clone(),
            });
        }
        let mut payload = Vec::with_capacity(4096);
        let count = events::write_sample(
            sample,
            sample_id,
            &shared.options,
            records::MAX_RECORD_BYTES,
            &mut payload,
            |metric, bytes| {
                shared.status.add("firehose.events_oversized", 1);
                error!(stream = %shared.stream, metric, bytes, "event exceeds Firehose's record limit and is dropped");
            },
        );
        if count == 0 {
            return Ok(());
        }
        self.store(payload, count).await
    }

    /// Stores the health event taken at `timestamp_ms` (see
    /// [`crate::health`]); as durable as the sample's events.
    pub async fn submit_health(
        &self,
        health: &Health,
        thing: &str,
        timestamp_ms: u64,
    ) -> Result<(), FirehoseError> {
        let mut payload = Vec::with_capacity(2048);
        events::write_health(
            health,
            thing,
            timestamp_ms,
            &self.shared.options,
            &mut payload,
        );
        if payload.len() > records::MAX_RECORD_BYTES {
            self.shared.status.add("firehose.events_oversized", 1);
            error!(stream = %self.shared.stream, bytes = payload.len(), "health event exceeds Firehose's record limit and is dropped");
            return Ok(());
        }
        self.store(payload, 1).await
    }

    /// Stores the change events of one sample (see [`crate::changes`]); as
    /// durable as the sample's events.
    pub async fn submit_changes(
        &self,
        changes: &[Change],
        thing: &str,
        timestamp_ms: u64,
    ) -> Result<(), FirehoseError> {
        let mut payload = Vec::with_capacity(512 * changes.len());
        events::write_changes(
            changes,
            thing,
            timestamp_ms,
            &self.shared.options,
            &mut payload,
        );
        self.store(payload, changes.len()).await
    }

    /// Puts `count` encoded events in the outbox and wakes the worker.
    async fn store(&self, payload: Vec<u8>, count: usize) -> Result<(), FirehoseError> {
        let shared = &self.shared;
        if *self.shutdown.borrow() {
            return Err(FirehoseError::Stopped {
                stream: shared.stream.clone(),
            });
        }
        let outbox = shared.outbox.clone();
        let stored = tokio::task::spawn_blocking(move || lock(&outbox).push(&payload))
            .await
            .map_err(|e| FirehoseError::Outbox {
                stream: shared.stream.clone(),
                reason: e.to_string(),
            })?;
        stored.map_err(|e| FirehoseError::Outbox {
            stream: shared.stream.clone(),
            reason: e.to_string(),
        })?;
        shared.status.add("firehose.events_submitted", count as u64);
        shared.wake.notify_one();
        Ok(())
    }

    /// Asks the worker to send what is waiting (for at most the configured
    /// shutdown timeout) and to stop, and waits until it did. What was not
    /// delivered stays in the outbox for the next start.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let mut finished = self.finished;
        // An error means the worker is gone (aborted or panicked), which is
        // as finished as it gets.
        let _ = finished.wait_for(|done| *done).await;
    }
}

async fn check_credentials(
    sdk: &SdkConfig,
    stream: &str,
    region: &str,
) -> Result<(), FirehoseError> {
    aws::check_credentials(sdk)
        .await
        .map_err(|reason| FirehoseError::NoCredentials {
            stream: stream.to_owned(),
            region: region.to_owned(),
            reason,
        })
}

async fn check_stream(client: &Client, stream: &str, region: &str) -> Result<(), FirehoseError> {
    let result = client
        .describe_delivery_stream()
        .delivery_stream_name(stream)
        .send()
        .await;
    match result {
        Ok(out) => {
            let state = out
                .delivery_stream_description()
                .map(|d| d.delivery_stream_status().clone());
            match state {
                Some(DeliveryStreamStatus::Deleting)
                | Some(DeliveryStreamStatus::CreatingFailed)
                | Some(DeliveryStreamStatus::DeletingFailed) => {
                    Err(FirehoseError::StreamNotUsable {
                        stream: stream.to_owned(),
                        region: region.to_owned(),
                        state: state.map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    })
                }
                _ => Ok(()),
            }
        }
        Err(SdkError::ServiceError(e)) => match e.err() {
            DescribeDeliveryStreamError::ResourceNotFoundException(_) => {
                Err(FirehoseError::StreamNotFound {
                    stream: stream.to_owned(),
                    region: region.to_owned(),
                })
            }
            other => Err(FirehoseError::Refused {
                stream: stream.to_owned(),
                region: region.to_owned(),
                reason: error_chain(other),
            }),
        },
        // No answer (offline at boot, endpoint down): start anyway, the
        // outbox holds events until the endpoint answers.
        Err(e) => {
            warn!(%stream, %region, error = %error_chain(&e), "cannot reach Firehose to check the delivery stream; starting anyway");
            Ok(())
        }
    }
}

/// A delivery task's settings and state.
struct Worker {
    client: Client,
    /// For the credential check.
    sdk: SdkConfig,
    shared: Arc<Shared>,
    region: String,
    record_bytes: usize,
    flush_interval: Duration,
    flush_bytes: u64,
    retry_base: Duration,
    retry_max: Duration,
    shutdown_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    /// Set when shutdown is requested: delivery goes on until then, and what
    /// is left stays in the outbox.
    deadline: Option<Instant>,
}

/// The shutdown deadline passed in the middle of a delivery.
struct Interrupted;

/// Samples taken from the outbox for one delivery, and their records.
struct Batch {
    entries: Vec<EntryId>,
    records: Vec<Vec<u8>>,
}

impl Worker {
    async fn run(mut self) {
        if !self.wait_until_ready().await {
            let (waiting, _) = self.depth();
            info!(stream = %self.shared.stream, waiting, "Firehose sink stopped before its checks passed; waiting events stay in the outbox");
            self.shared.status.set_text("firehose.state", "stopped");
            return;
        }
        // Entries left by an earlier run are due at once.
        let mut oldest: Option<Instant> =
            (self.depth().0 > 0).then(|| Instant::now() - self.flush_interval);
        while self.deadline.is_none() {
            let due = oldest.map(|t| t + self.flush_interval);
            tokio::select! {
                _ = self.shared.wake.notified() => {
                    oldest.get_or_insert_with(Instant::now);
                }
                _ = sleep_until_opt(due) => {}
                _ = self.shutdown.wait_for(|stop| *stop) => {
                    self.deadline = Some(Instant::now() + self.shutdown_timeout);
                }
            }
            let (depth, bytes) = self.depth();
            let interval_up = oldest.is_some_and(|t| t.elapsed() >= self.flush_interval);
            if self.deadline.is_none()
                && (depth == 0 || !(interval_up || bytes >= self.flush_bytes))
            {
                continue;
            }
            if self.deliver_all().await.is_ok() {
                oldest = None;
            }
        }
        // A shutdown requested during a delivery lets that delivery finish
        // (until the deadline) instead of abandoning it: abandoned records
        // that Firehose had already accepted would be sent again next start.
        if self.deadline.is_some() && self.depth().0 > 0 {
            let _ = self.deliver_all().await;
        }
        let stream = self.shared.stream.clone();
        let (waiting, _) = self.depth();
        info!(%stream, waiting, "Firehose sink stopped; waiting events stay in the outbox");
        self.shared.status.set_text("firehose.state", "stopped");
    }

    /// Checks the credentials and the stream, again and again with backoff
    /// until both pass; events submitted meanwhile wait in the outbox. Each
    /// new reason is logged once and shown in `firehose.state`. A shutdown
    /// while waiting gets one last check within the shutdown timeout (and
    /// then delivery until it); returns false when that failed too.
    async fn wait_until_ready(&mut self) -> bool {
        let stream = self.shared.stream.clone();
        let status = self.shared.status.clone();
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut last: Option<String> = None;
        loop {
            let checked = async {
                check_credentials(&self.sdk, &stream, &self.region).await?;
                check_stream(&self.client, &stream, &self.region).await
            };
            let result = match self.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, checked)
                    .await
                    .unwrap_or_else(|_| {
                        Err(FirehoseError::Stopped {
                            stream: stream.clone(),
                        })
                    }),
                None => checked.await,
            };
            let problem = match result {
                Ok(()) => break,
                Err(_) if self.deadline.is_some() => return false,
                Err(error) => error.to_string(),
            };
            status.add("firehose.start_check_failures", 1);
            let delay = backoff.next_delay();
            if last.as_ref() != Some(&problem) {
                warn!(%stream, error = %problem, retry_in_ms = delay.as_millis() as u64, "Firehose not ready; events are stored and sent once it is");
                status.set_text("firehose.state", format!("waiting: {problem}"));
                last = Some(problem);
            }
            // No deadline yet here (a failed check past it returned above).
            aws::pause(
                delay,
                &mut self.deadline,
                &mut self.shutdown,
                self.shutdown_timeout,
            )
            .await;
        }
        if last.is_some() {
            info!(%stream, region = %self.region, "Firehose checks pass now; sending");
        }
        status.set_text("firehose.state", "running");
        true
    }

    fn depth(&self) -> (usize, u64) {
        let outbox = lock(&self.shared.outbox);
        (outbox.depth(), outbox.bytes())
    }

    /// Delivers batches until the outbox is empty, or the shutdown deadline
    /// passes.
    async fn deliver_all(&mut self) -> Result<(), Interrupted> {
        loop {
            let batch = self.take_batch().await;
            if batch.entries.is_empty() {
                return Ok(());
            }
            self.deliver(batch.records).await?;
            let outbox = self.shared.outbox.clone();
            let entries = batch.entries;
            let stream = self.shared.stream.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut outbox = lock(&outbox);
                for id in entries {
                    if let Err(e) = outbox.acknowledge(id) {
                        // The entry will be sent again after a restart:
                        // a duplicate, not a loss.
                        error!(%stream, entry = %id, error = %e, "cannot acknowledge a delivered outbox entry");
                    }
                }
            })
            .await;
        }
    }

    /// Reads the oldest entries, up to one `PutRecordBatch` call's worth
    /// (always at least one), and packs their lines into records.
    async fn take_batch(&self) -> Batch {
        let outbox = self.shared.outbox.clone();
        let budget = self.record_bytes;
        let stream = self.shared.stream.clone();
        let status = self.shared.status.clone();
        let taken = tokio::task::spawn_blocking(move || {
            let mut outbox = lock(&outbox);
            let mut packer = RecordPacker::new(budget);
            let mut entries = Vec::new();
            let mut unreadable = Vec::new();
            for id in outbox.pending() {
                let payload = match outbox.read(id) {
                    Ok(p) => p,
                    Err(e) => {
                        error!(%stream, entry = %id, error = %e, "outbox entry unreadable; dropping it");
                        status.add("firehose.entries_unreadable", 1);
                        unreadable.push(id);
                        continue;
                    }
                };
                let full = !entries.is_empty()
                    && (packer.len() + payload.len().div_ceil(budget) > records::MAX_CALL_RECORDS
                        || packer.bytes() + payload.len() > records::MAX_CALL_BYTES);
                if full {
                    break;
                }
                for too_big in packer.push_lines(&payload) {
                    error!(%stream, entry = %id, error = %too_big, "dropping an event");
                }
                entries.push(id);
            }
            // A corrupt entry would block the queue forever; it was logged
            // and counted, and leaves as removed, not acknowledged.
            for id in unreadable {
                let _ = outbox.remove(id);
            }
            Batch {
                entries,
                records: packer.finish(),
            }
        })
        .await;
        taken.unwrap_or(Batch {
            entries: Vec::new(),
            records: Vec::new(),
        })
    }

    /// Sends records until Firehose accepted each of them, resending only
    /// the failed ones, with exponential backoff and jitter between rounds.
    async fn deliver(&mut self, records: Vec<Vec<u8>>) -> Result<(), Interrupted> {
        let status = self.shared.status.clone();
        let mut waiting: Vec<Blob> = records.into_iter().map(Blob::new).collect();
        let mut round: u32 = 0;
        let mut retry = Backoff::new(self.retry_base, self.retry_max);
        loop {
            let sizes: Vec<usize> = waiting.iter().map(|b| b.as_ref().len()).collect();
            let mut failed = Vec::new();
            let mut fatal = false;
            for call in records::calls(&sizes) {
                let chunk = &waiting[call];
                let outcome = match self.deadline {
                    // Past the deadline a call in flight is abandoned; its
                    // records stay in the outbox and may arrive twice.
                    Some(deadline) => tokio::time::timeout_at(deadline, self.put(chunk))
                        .await
                        .map_err(|_| Interrupted)?,
                    None => self.put(chunk).await,
                };
                match outcome {
                    CallOutcome::Accepted(failed_positions) => {
                        let failed_bytes: usize = failed_positions
                            .iter()
                            .map(|&i| chunk[i].as_ref().len())
                            .sum();
                        let all_bytes: usize = chunk.iter().map(|b| b.as_ref().len()).sum();
                        status.add(
                            "firehose.records_sent",
                            (chunk.len() - failed_positions.len()) as u64,
                        );
                        status.add("firehose.bytes_sent", (all_bytes - failed_bytes) as u64);
                        failed.extend(failed_positions.into_iter().map(|i| chunk[i].clone()));
                    }
                    CallOutcome::Failed { fatal: is_fatal } => {
                        fatal |= is_fatal;
                        failed.extend(chunk.iter().cloned());
                    }
                }
            }
            if failed.is_empty() {
                if round > 0 {
                    status.set_text("firehose.state", "running");
                }
                return Ok(());
            }
            round += 1;
            status.add("firehose.retries", 1);
            let delay = if fatal {
                self.retry_max
            } else {
                retry.next_delay()
            };
            debug!(stream = %self.shared.stream, records = failed.len(), round, delay_ms = delay.as_millis() as u64, "resending failed records");
            waiting = failed;
            if !aws::pause(
                delay,
                &mut self.deadline,
                &mut self.shutdown,
                self.shutdown_timeout,
            )
            .await
            {
                return Err(Interrupted);
            }
        }
    }

    /// One `PutRecordBatch` call.
    async fn put(&self, chunk: &[Blob]) -> CallOutcome {
        let stream = &self.shared.stream;
        let region = &self.region;
        let status = &self.shared.status;
        let records: Vec<Record> = chunk
            .iter()
            .filter_map(|data| Record::builder().data(data.clone()).build().ok())
            .collect();
        status.add("firehose.calls", 1);
        let result = self
            .client
            .put_record_batch()
            .delivery_stream_name(stream)
            .set_records(Some(records))
            .send()
            .await;
        match result {
            Ok(out) => {
                let responses = out.request_responses();
                if responses.len() != chunk.len() {
                    // Without a one-to-one answer there is no telling which
                    // records arrived; resending all may duplicate some.
                    status.add("firehose.length_mismatches", 1);
                    warn!(%stream, %region, sent = chunk.len(), answered = responses.len(), "PutRecordBatch answered a different number of records; resending all");
                    return CallOutcome::Accepted((0..chunk.len()).collect());
                }
                let failed: Vec<usize> = responses
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.error_code().is_some())
                    .map(|(i, _)| i)
                    .collect();
                if !failed.is_empty() {
                    status.add("firehose.records_failed", failed.len() as u64);
                    let first = &responses[failed[0]];
                    warn!(%stream, %region, failed = failed.len(), of = chunk.len(), code = first.error_code().unwrap_or_default(), message = first.error_message().unwrap_or_default(), "Firehose failed some records; resending those");
                }
                CallOutcome::Accepted(failed)
            }
            Err(e) => {
                let code = e.code().unwrap_or_default().to_owned();
                let fatal = match &e {
                    SdkError::ServiceError(s) => {
                        matches!(
                            s.err(),
                            PutRecordBatchError::ResourceNotFoundException(_)
                                | PutRecordBatchError::InvalidArgumentException(_)
                                | PutRecordBatchError::InvalidKmsResourceException(_)
                                | PutRecordBatchError::InvalidSourceException(_)
                        ) || matches!(
                            code.as_str(),
                            "AccessDeniedException"
                                | "UnrecognizedClientException"
                                | "InvalidSignatureException"
                        )
                    }
                    SdkError::ConstructionFailure(_) => true,
                    _ => false,
                };
                status.add("firehose.call_errors", 1);
                let detail = error_chain(&e);
                if fatal {
                    // Retrying soon will not help, but the events stay in the
                    // outbox: the stream or the role may be fixed without a
                    // restart.
                    status.set_text(
                        "firehose.state",
                        format!("failing: delivery stream {stream} in {region}: {detail}"),
                    );
                    error!(%stream, %region, code, error = %detail, "Firehose refused PutRecordBatch; retrying at the longest interval");
                } else {
                    if code.contains("Throttling") || code == "ServiceUnavailableException" {
                        status.add("firehose.throttled", 1);
                    }
                    status.set_text(
                        "firehose.state",
                        format!("retrying: delivery stream {stream} in {region}: {detail}"),
                    );
                    warn!(%stream, %region, code, error = %detail, "PutRecordBatch failed; retrying");
                }
                CallOutcome::Failed { fatal }
            }
        }
    }
}

/// What one call did with its records.
enum CallOutcome {
    /// Firehose answered; the positions of the records that failed.
    Accepted(Vec<usize>),
    /// The whole call failed; `fatal` when retrying soon will not help.
    Failed { fatal: bool },
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
