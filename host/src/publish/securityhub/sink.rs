//! The Security Hub sink: `submit` stores an alarm's finding durably, a
//! worker task imports findings with `BatchImportFindings` and acknowledges
//! each one only once Security Hub accepted it.
//!
//! One outbox entry holds one finding (its ASFF JSON, account-free), so a
//! finding is the unit of acknowledgement. The account (STS
//! `GetCallerIdentity`) is asked for by the worker, not by `start`: a core
//! that boots without network starts the sink all the same and the worker
//! retries with backoff.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, ConfigLoader};
use aws_sdk_securityhub::Client;
use aws_sdk_securityhub::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_securityhub::operation::batch_import_findings::BatchImportFindingsError;
use aws_sdk_securityhub::types::{
    AwsSecurityFinding, Partition, ProcessDetails, RecordState, Resource, ResourceDetails,
    Severity, SeverityLabel,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::asff::{self, Finding, Target};
use super::{MAX_CALL_FINDINGS, SecurityHubConfig};
use crate::backoff::Backoff;
use crate::detect::AlarmEvent;
use crate::publish::aws::{self, error_chain, lock};
use crate::publish::outbox::{EntryId, Outbox};
use crate::status::Status;

/// Why the sink did not start, or a finding was not stored. Start-up errors
/// leave the rest of the component running: the caller logs them and goes
/// on without findings.
#[derive(Debug, thiserror::Error)]
pub enum SecurityHubError {
    /// The `publish.securityHub` section is inconsistent.
    #[error("invalid Security Hub configuration: {0}")]
    Config(String),
    /// Neither the configuration nor the SDK's chain gives a region.
    #[error("no AWS region for Security Hub: set AWS_REGION or publish.securityHub.region")]
    NoRegion,
    /// The outbox could not be opened or written.
    #[error("Security Hub outbox: {0}")]
    Outbox(String),
    /// The finding is larger than Security Hub takes; it is dropped.
    #[error("finding {id} is {bytes} bytes, above Security Hub's {max}")]
    TooLarge {
        id: String,
        bytes: usize,
        max: usize,
    },
    /// `submit` after `shutdown`, or the worker is gone.
    #[error("the Security Hub sink has stopped")]
    Stopped,
}

/// Starts the import of findings; see [`SecurityHubSink::start`].
#[derive(Debug)]
pub struct SecurityHubSink;

/// Submits findings to a running sink. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SecurityHubHandle {
    shared: Arc<Shared>,
    shutdown: Arc<watch::Sender<bool>>,
    finished: watch::Receiver<bool>,
}

#[derive(Debug)]
struct Shared {
    outbox: Arc<Mutex<Outbox>>,
    wake: Notify,
    status: Status,
}

impl SecurityHubSink {
    /// Loads the AWS configuration the standard way (environment, profile,
    /// container credentials from the Greengrass Token Exchange Service,
    /// `AWS_ENDPOINT_URL_SECURITYHUB` / `_STS`), opens the outbox under
    /// `state_dir` and spawns the import task. Missing credentials or an
    /// unreachable endpoint are not errors: findings wait in the outbox and
    /// the worker retries. `config.enabled` is the caller's to check.
    pub async fn start(
        config: &SecurityHubConfig,
        state_dir: &Path,
        status: Status,
    ) -> Result<(SecurityHubHandle, JoinHandle<()>), SecurityHubError> {
        let loader = aws_config::defaults(BehaviorVersion::latest());
        SecurityHubSink::start_with_loader(config, state_dir, status, loader).await
    }

    /// Like [`SecurityHubSink::start`], with an AWS configuration loader
    /// the caller prepared (credentials or endpoint set explicitly, as
    /// tests do). The HTTP client, timeouts and the configured region are
    /// applied on top of it.
    pub async fn start_with_loader(
        config: &SecurityHubConfig,
        state_dir: &Path,
        status: Status,
        loader: ConfigLoader,
    ) -> Result<(SecurityHubHandle, JoinHandle<()>), SecurityHubError> {
        config.check().map_err(SecurityHubError::Config)?;
        let sdk = aws::sdk_config(config.region.as_deref(), loader).await;
        let region = sdk
            .region()
            .map(ToString::to_string)
            .ok_or(SecurityHubError::NoRegion)?;
        // Credentials are not checked here: the worker's first call (STS)
        // needs them and retries with backoff, so a slow or absent credential
        // provider at boot never holds up the session's start.
        let dir = state_dir.join("securityhub-outbox");
        let outbox = Outbox::open(&dir, config.outbox, "securityhub.outbox", status.clone())
            .map_err(|e| SecurityHubError::Outbox(e.to_string()))?;
        let waiting = outbox.depth();
        let shared = Arc::new(Shared {
            outbox: Arc::new(Mutex::new(outbox)),
            wake: Notify::new(),
            status: status.clone(),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (finished_tx, finished_rx) = watch::channel(false);
        let worker = Worker {
            hub: Client::new(&sdk),
            sts: aws_sdk_sts::Client::new(&sdk),
            shared: shared.clone(),
            region: region.clone(),
            product_arn: config.product_arn.clone(),
            target: None,
            retry_base: Duration::from_millis(config.retry_base_ms),
            retry_max: Duration::from_millis(config.retry_max_ms),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
            shutdown: shutdown_rx,
            deadline: None,
        };
        info!(%region, waiting, "Security Hub sink started");
        let task = tokio::spawn(async move {
            worker.run().await;
            let _ = finished_tx.send(true);
        });
        Ok((
            SecurityHubHandle {
                shared,
                shutdown: Arc::new(shutdown_tx),
                finished: finished_rx,
            },
            task,
        ))
    }
}

impl SecurityHubHandle {
    /// Stores the finding of an alarm, clear or invalidation; when this
    /// returns `Ok` it survives a crash. The import happens later, on the
    /// worker.
    pub async fn submit(&self, event: &AlarmEvent) -> Result<(), SecurityHubError> {
        self.submit_finding(&Finding::from_alarm(event)).await
    }

    /// Stores a finding as it is (account-free; see [`Finding::bind`]).
    pub async fn submit_finding(&self, finding: &Finding) -> Result<(), SecurityHubError> {
        let shared = &self.shared;
        if *self.shutdown.borrow() {
            return Err(SecurityHubError::Stopped);
        }
        let payload = serde_json::to_vec(finding).unwrap_or_default();
        if payload.len() > asff::MAX_FINDING_BYTES {
            shared.status.add("securityhub.findings_oversized", 1);
            return Err(SecurityHubError::TooLarge {
                id: finding.id.clone(),
                bytes: payload.len(),
                max: asff::MAX_FINDING_BYTES,
            });
        }
        let outbox = shared.outbox.clone();
        let stored = tokio::task::spawn_blocking(move || lock(&outbox).push(&payload))
            .await
            .map_err(|e| SecurityHubError::Outbox(e.to_string()))?;
        stored.map_err(|e| SecurityHubError::Outbox(e.to_string()))?;
        shared.status.add("securityhub.findings_submitted", 1);
        shared.wake.notify_one();
        Ok(())
    }

    /// Asks the worker to import what is waiting (for at most the
    /// configured shutdown timeout) and to stop, and waits until it did.
    /// What was not imported stays in the outbox for the next start.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let mut finished = self.finished;
        let _ = finished.wait_for(|done| *done).await;
    }
}

/// The import task's settings and state.
struct Worker {
    hub: Client,
    sts: aws_sdk_sts::Client,
    shared: Arc<Shared>,
    region: String,
    product_arn: Option<String>,
    /// Known once STS named the account.
    target: Option<Target>,
    retry_base: Duration,
    retry_max: Duration,
    shutdown_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    /// Set when shutdown is requested: imports go on until then, and what
    /// is left stays in the outbox.
    deadline: Option<Instant>,
}

/// How an import pass ended.
enum Pass {
    /// The outbox is empty.
    Done,
    /// Something is left that may go through later; `fatal` when retrying
    /// soon will not help (access denied, hub not enabled).
    Retry { fatal: bool },
    /// The shutdown deadline passed.
    Interrupted,
}

/// Findings taken from the outbox for one call.
struct Batch {
    entries: Vec<EntryId>,
    findings: Vec<Finding>,
}

impl Worker {
    async fn run(mut self) {
        // Findings left by an earlier run are due at once.
        let mut retry = Backoff::new(self.retry_base, self.retry_max);
        loop {
            let pass = if self.depth() > 0 {
                self.import_all().await
            } else {
                Pass::Done
            };
            match pass {
                Pass::Interrupted => break,
                Pass::Done => {
                    retry.reset();
                    if self.deadline.is_some() {
                        break;
                    }
                    self.shared.status.set_text("securityhub.state", "running");
                    tokio::select! {
                        _ = self.shared.wake.notified() => {}
                        _ = self.shutdown.wait_for(|stop| *stop) => {
                            self.deadline = Some(Instant::now() + self.shutdown_timeout);
                        }
                    }
                }
                Pass::Retry { fatal } => {
                    self.shared.status.add("securityhub.retries", 1);
                    let delay = if fatal {
                        self.retry_max
                    } else {
                        retry.next_delay()
                    };
                    debug!(
                        delay_ms = delay.as_millis() as u64,
                        "Security Hub import retries later"
                    );
                    let waited = aws::pause(
                        delay,
                        &mut self.deadline,
                        &mut self.shutdown,
                        self.shutdown_timeout,
                    )
                    .await;
                    if !waited {
                        break;
                    }
                }
            }
        }
        let waiting = self.depth();
        info!(
            waiting,
            "Security Hub sink stopped; waiting findings stay in the outbox"
        );
        self.shared.status.set_text("securityhub.state", "stopped");
    }

    fn depth(&self) -> usize {
        lock(&self.shared.outbox).depth()
    }

    /// Runs `call` until the shutdown deadline, if one is set.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = T>) -> Option<T> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, call).await.ok(),
            None => Some(call.await),
        }
    }

    /// The account and product, from STS the first time.
    async fn target(&mut self) -> Result<Target, Pass> {
        if let Some(t) = &self.target {
            return Ok(t.clone());
        }
        let status = self.shared.status.clone();
        let result = self
            .bounded(self.sts.get_caller_identity().send())
            .await
            .ok_or(Pass::Interrupted)?;
        match result {
            Ok(out) => {
                let Some(account) = out.account() else {
                    warn!("STS GetCallerIdentity named no account; retrying");
                    return Err(Pass::Retry { fatal: false });
                };
                let target = Target::new(account, &self.region, self.product_arn.as_deref());
                info!(account, region = %self.region, product = %target.product_arn, "Security Hub account found");
                status.set_text("securityhub.product", target.product_arn.clone());
                self.target = Some(target.clone());
                Ok(target)
            }
            Err(e) => {
                let fatal = matches!(e, SdkError::ServiceError(_));
                let detail = error_chain(&e);
                status.add("securityhub.sts_errors", 1);
                status.set_text(
                    "securityhub.state",
                    format!("retrying: STS GetCallerIdentity: {detail}"),
                );
                warn!(region = %self.region, error = %detail, "cannot learn the AWS account from STS; findings wait in the outbox");
                Err(Pass::Retry { fatal })
            }
        }
    }

    /// Imports batches until the outbox is empty, something must wait, or
    /// the shutdown deadline passes.
    async fn import_all(&mut self) -> Pass {
        // Falls to one finding per call after Security Hub refused a whole
        // call, so the finding it refuses is found and only it is dropped.
        let mut limit = MAX_CALL_FINDINGS;
        loop {
            let target = match self.target().await {
                Ok(t) => t,
                Err(pass) => return pass,
            };
            let batch = self.take_batch(limit).await;
            if batch.entries.is_empty() {
                return Pass::Done;
            }
            let status = self.shared.status.clone();
            let sdk_findings: Vec<AwsSecurityFinding> = batch
                .findings
                .iter()
                .map(|f| to_sdk(&f.bind(&target)))
                .collect();
            status.add("securityhub.calls", 1);
            let call = self
                .hub
                .batch_import_findings()
                .set_findings(Some(sdk_findings))
                .send();
            let Some(result) = self.bounded(call).await else {
                // Abandoned in flight: the findings stay and may be
                // imported twice, which Security Hub treats as an update.
                return Pass::Interrupted;
            };
            match result {
                Ok(out) => {
                    let failed: BTreeMap<&str, (&str, &str)> = out
                        .failed_findings()
                        .iter()
                        .map(|f| {
                            (
                                f.id().unwrap_or_default(),
                                (
                                    f.error_code().unwrap_or_default(),
                                    f.error_message().unwrap_or_default(),
                                ),
                            )
                        })
                        .collect();
                    let unmatched = failed
                        .keys()
                        .any(|id| !batch.findings.iter().any(|f| f.id == *id));
                    if unmatched {
                        // Without an Id that names one of ours there is no
                        // telling which failed; sending all again only
                        // updates the ones that went through.
                        status.add("securityhub.unmatched_failures", 1);
                        warn!(
                            failed = failed.len(),
                            of = batch.entries.len(),
                            "Security Hub named a failed finding that was not sent; sending the call again"
                        );
                        return Pass::Retry { fatal: false };
                    }
                    let mut keep = false;
                    let mut acknowledged = Vec::new();
                    let mut refused = Vec::new();
                    for (entry, finding) in batch.entries.iter().zip(&batch.findings) {
                        match failed.get(finding.id.as_str()) {
                            None => acknowledged.push(*entry),
                            Some((code, message)) if transient(code) => {
                                keep = true;
                                status.add("securityhub.findings_failed", 1);
                                warn!(finding = %finding.id, code, message, "Security Hub failed a finding for now; retrying it");
                            }
                            Some((code, message)) => {
                                refused.push(*entry);
                                status.add("securityhub.findings_refused", 1);
                                error!(finding = %finding.id, code, message, "Security Hub refused a finding; dropping it");
                            }
                        }
                    }
                    status.add("securityhub.findings_imported", acknowledged.len() as u64);
                    self.settle(acknowledged, refused).await;
                    if keep {
                        return Pass::Retry { fatal: false };
                    }
                }
                Err(e) => {
                    let code = e.code().unwrap_or_default().to_owned();
                    let detail = error_chain(&e);
                    status.add("securityhub.call_errors", 1);
                    let invalid_input = matches!(
                        &e,
                        SdkError::ServiceError(s)
                            if matches!(s.err(), BatchImportFindingsError::InvalidInputException(_))
                    );
                    if invalid_input {
                        if batch.entries.len() > 1 {
                            warn!(findings = batch.entries.len(), error = %detail, "Security Hub refused a whole call; sending its findings one by one");
                            limit = 1;
                        } else {
                            status.add("securityhub.findings_refused", 1);
                            error!(finding = %batch.findings[0].id, error = %detail, "Security Hub refused a finding; dropping it");
                            self.settle(Vec::new(), batch.entries).await;
                        }
                        continue;
                    }
                    let fatal = match &e {
                        SdkError::ServiceError(s) => {
                            matches!(s.err(), BatchImportFindingsError::InvalidAccessException(_))
                                || matches!(
                                    code.as_str(),
                                    "AccessDeniedException"
                                        | "UnrecognizedClientException"
                                        | "InvalidSignatureException"
                                )
                        }
                        SdkError::ConstructionFailure(_) => true,
                        _ => false,
                    };
                    let state = if fatal { "failing" } else { "retrying" };
                    status.set_text(
                        "securityhub.state",
                        format!("{state}: BatchImportFindings: {detail}"),
                    );
                    if fatal {
                        error!(code, error = %detail, "Security Hub refused BatchImportFindings; retrying at the longest interval");
                    } else {
                        warn!(code, error = %detail, "BatchImportFindings failed; retrying");
                    }
                    return Pass::Retry { fatal };
                }
            }
        }
    }

    /// Reads the oldest findings, at most `limit`, and never two with the
    /// same `Id` (the alarm must be imported before the update that
    /// archives it, and `FailedFindings` names findings by `Id`).
    async fn take_batch(&self, limit: usize) -> Batch {
        let outbox = self.shared.outbox.clone();
        let status = self.shared.status.clone();
        let taken = tokio::task::spawn_blocking(move || {
            let mut outbox = lock(&outbox);
            let mut batch = Batch {
                entries: Vec::new(),
                findings: Vec::new(),
            };
            let mut ids = HashSet::new();
            let mut unreadable = Vec::new();
            for id in outbox.pending() {
                if batch.entries.len() >= limit {
                    break;
                }
                let finding = outbox
                    .read(id)
                    .map_err(|e| e.to_string())
                    .and_then(|p| {
                        serde_json::from_slice::<Finding>(&p).map_err(|e| e.to_string())
                    });
                let finding = match finding {
                    Ok(f) => f,
                    Err(e) => {
                        error!(entry = %id, error = %e, "Security Hub outbox entry unreadable; dropping it");
                        status.add("securityhub.entries_unreadable", 1);
                        unreadable.push(id);
                        continue;
                    }
                };
                if !ids.insert(finding.id.clone()) {
                    break;
                }
                batch.entries.push(id);
                batch.findings.push(finding);
            }
            // A corrupt entry would block the queue forever; it was logged
            // and counted, and leaves as removed, not acknowledged.
            for id in unreadable {
                let _ = outbox.remove(id);
            }
            batch
        })
        .await;
        taken.unwrap_or(Batch {
            entries: Vec::new(),
            findings: Vec::new(),
        })
    }

    /// Acknowledges imported entries and removes refused ones.
    async fn settle(&self, acknowledged: Vec<EntryId>, refused: Vec<EntryId>) {
        let outbox = self.shared.outbox.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut outbox = lock(&outbox);
            for id in acknowledged {
                if let Err(e) = outbox.acknowledge(id) {
                    // Imported again after a restart: an update, not a loss.
                    error!(entry = %id, error = %e, "cannot acknowledge an imported finding");
                }
            }
            for id in refused {
                if let Err(e) = outbox.remove(id) {
                    error!(entry = %id, error = %e, "cannot remove a refused finding");
                }
            }
        })
        .await;
    }
}

/// Whether a `FailedFindings` error code may go through on a later try.
/// Everything else (invalid input, a finding too large, access to the
/// product denied) is refused for good.
fn transient(code: &str) -> bool {
    let code = code.to_ascii_lowercase();
    [
        "internal",
        "throttl",
        "limitexceeded",
        "toomanyrequests",
        "unavailable",
        "timeout",
    ]
    .iter()
    .any(|c| code.contains(c))
}

/// The SDK's form of a bound finding.
fn to_sdk(f: &Finding) -> AwsSecurityFinding {
    let mut builder = AwsSecurityFinding::builder()
        .schema_version(&f.schema_version)
        .id(&f.id)
        .product_arn(&f.product_arn)
        .generator_id(&f.generator_id)
        .aws_account_id(&f.aws_account_id)
        .set_types(Some(f.types.clone()))
        .first_observed_at(&f.first_observed_at)
        .last_observed_at(&f.last_observed_at)
        .created_at(&f.created_at)
        .updated_at(&f.updated_at)
        .severity(
            Severity::builder()
                .label(SeverityLabel::from(f.severity.label.as_str()))
                .original(&f.severity.original)
                .build(),
        )
        .title(&f.title)
        .description(&f.description)
        .record_state(RecordState::from(f.record_state.as_str()))
        .set_product_fields(Some(f.product_fields.clone().into_iter().collect()));
    for r in &f.resources {
        builder = builder.resources(
            Resource::builder()
                .r#type(&r.kind)
                .id(&r.id)
                .partition(Partition::from(r.partition.as_str()))
                .region(&r.region)
                .details(
                    ResourceDetails::builder()
                        .set_other(Some(r.details.other.clone().into_iter().collect()))
                        .build(),
                )
                .build(),
        );
    }
    if let Some(p) = &f.process {
        builder = builder.process(
            ProcessDetails::builder()
                .name(&p.name)
                .set_path(p.path.clone())
                .set_pid(p.pid.map(|pid| pid as i32))
                .build(),
        );
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_and_lasting_failures() {
        for code in [
            "InternalException",
            "ThrottlingException",
            "LimitExceededException",
            "ServiceUnavailable",
        ] {
            assert!(transient(code), "{code}");
        }
        for code in [
            "InvalidInput",
            "InvalidInputException",
            "FindingSizeExceeded",
            "AccessDeniedException",
        ] {
            assert!(!transient(code), "{code}");
        }
    }
}
