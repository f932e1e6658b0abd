//! The Device Defender protocol over any [`Transport`]: reports go from the
//! durable outbox to `$aws/things/<thing>/defender/metrics/<json|cbor>`,
//! replies on `…/accepted` and `…/rejected` are matched to reports by
//! `reportId`, and the 300 s floor between publishes holds across restarts.
//!
//! # Backlog policy: only the newest report goes to Device Defender
//!
//! Device Defender accepts current data only: historical reports are not
//! supported (device-defender.md §2, §7 #12). When several reports wait in the
//! outbox (the broker was away, or the process restarted), only the **newest**
//! is published. Every older one is *superseded*: counted in
//! `defender.superseded`, logged at warn with its report id, and only then
//! removed from the outbox. Nothing is dropped silently, and nothing is lost:
//! every sample went to the NDJSON output and, when configured, to the SIEM
//! path when it was collected.
//!
//! # The publish floor
//!
//! A publish attempt is no sooner than `minIntervalSeconds` (default 300)
//! after the previous attempt for the same thing. The attempt time is
//! persisted in the state directory *before* the report is sent, so neither a
//! restart nor a configuration change can publish early. Retries after a
//! failed attempt wait for the floor too: by then a newer report usually
//! supersedes the failed one, which is what Device Defender wants anyway.
//!
//! The attempt time lives in `defender-last-publish.json`. A file that is
//! corrupt or truncated is read as "a report was just published" (the floor
//! counts from start-up), logged and counted in `state.corrupt_files`; a
//! file that cannot be written (disk full, read-only) does not stop
//! publishing: the floor holds in memory, `defender.floor_unsaved` counts
//! the attempts whose time was not saved, and only a restart in that state
//! could publish early.
//!
//! # Outbox entries
//!
//! Each entry is the report id (`u64`, little endian) followed by the encoded
//! report, so replies can be matched after a restart without decoding it. An
//! entry that cannot be read back (media corruption) is skipped: counted in
//! `defender.entries_unreadable`, logged with its entry id, removed, and the
//! next newest report is published in its place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::outbox::{EntryId, Outbox, OutboxError};
use super::{Message, Transport, TransportError};
use crate::backoff::{Backoff, jitter};
use crate::report::{Format, MIN_INTERVAL_SECONDS};
use crate::status::Status;

/// The `publish.deviceDefender` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DefenderConfig {
    /// Publishes reports to Device Defender at all.
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub enabled: bool,
    /// Seconds between two publishes for one thing. Device Defender's floor
    /// is 300; lower it only for tests and local brokers (warned at start).
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub min_interval_seconds: u64,
    /// How long to wait for `accepted`/`rejected` before counting a report as
    /// unanswered (`defender.timed_out`).
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub reply_timeout_seconds: u64,
}

impl Default for DefenderConfig {
    fn default() -> Self {
        DefenderConfig {
            enabled: true,
            min_interval_seconds: MIN_INTERVAL_SECONDS,
            reply_timeout_seconds: 60,
        }
    }
}

/// What the publisher needs besides the transport and the outbox.
#[derive(Debug, Clone)]
pub struct DefenderOptions {
    pub thing_name: String,
    /// The encoding of the submitted reports; picks the topic.
    pub format: Format,
    /// Where the last publish time is persisted.
    pub state_dir: PathBuf,
    pub config: DefenderConfig,
}

/// Why the publisher could not start or take a report.
#[derive(Debug, thiserror::Error)]
pub enum DefenderError {
    #[error("thing name {name:?} cannot be used in a Device Defender topic: {reason}")]
    ThingName { name: String, reason: &'static str },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("cannot read or write Device Defender state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("the Device Defender publisher has stopped")]
    Stopped,
}

impl DefenderError {
    /// The storage condition behind a failed [`DefenderHandle::submit`], if
    /// that is what it was: the report was not stored, hold it and submit it
    /// again once [`DefenderHandle::recover_storage`] succeeds.
    pub fn storage_fault(&self) -> Option<super::outbox::StorageFault> {
        match self {
            DefenderError::Outbox(error) => error.storage_fault(),
            _ => None,
        }
    }
}

/// How [`DefenderHandle::flush`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Every report was acknowledged by the transport (or superseded).
    Acknowledged,
    /// Reports still wait in the outbox; they go out on the next run.
    QueuedInOutbox,
}

/// The Device Defender topics of one thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub publish: String,
    pub accepted: String,
    pub rejected: String,
}

impl Topics {
    /// `$aws/things/<thing>/defender/metrics/<json|cbor>` and its replies.
    pub fn new(thing: &str, format: Format) -> Result<Topics, DefenderError> {
        check_thing_name(thing)?;
        let publish = format!(
            "$aws/things/{thing}/defender/metrics/{}",
            format.topic_suffix()
        );
        Ok(Topics {
            accepted: format!("{publish}/accepted"),
            rejected: format!("{publish}/rejected"),
            publish,
        })
    }
}

fn check_thing_name(name: &str) -> Result<(), DefenderError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > 128 {
        "it is longer than 128 bytes"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else if name.contains(['/', '+', '#']) {
        "it contains '/', '+' or '#'"
    } else {
        return Ok(());
    };
    Err(DefenderError::ThingName {
        name: name.to_owned(),
        reason,
    })
}

/// A reply on `accepted` or `rejected`, decoded from JSON or CBOR.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Reply {
    #[serde(rename = "reportId")]
    pub report_id: Option<u64>,
    pub status: Option<String>,
    #[serde(rename = "statusDetails")]
    pub status_details: Option<StatusDetails>,
}

/// Why a report was rejected. `ErrorCode` is an open set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusDetails {
    #[serde(rename = "ErrorCode")]
    pub error_code: Option<String>,
    #[serde(rename = "ErrorMessage")]
    pub error_message: Option<String>,
}

impl Reply {
    /// Decodes a reply in the encoding of its topic.
    pub fn decode(format: Format, payload: &[u8]) -> Result<Reply, String> {
        match format {
            Format::Cbor => ciborium::from_reader(payload).map_err(|e| e.to_string()),
            Format::Json | Format::JsonShort => {
                serde_json::from_slice(payload).map_err(|e| e.to_string())
            }
        }
    }
}

/// Starts the Device Defender publisher.
#[derive(Debug)]
pub struct DefenderPublisher;

/// Talks to a running publisher; cheap to clone.
#[derive(Debug, Clone)]
pub struct DefenderHandle {
    commands: mpsc::Sender<Command>,
}

enum Command {
    Submit {
        report_id: u64,
        payload: Vec<u8>,
        done: oneshot::Sender<Result<(), DefenderError>>,
    },
    Flush {
        until: Instant,
        done: oneshot::Sender<FlushOutcome>,
    },
    RecoverStorage {
        done: oneshot::Sender<Result<(), DefenderError>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

impl DefenderPublisher {
    /// Starts the publisher task. It subscribes to `accepted` and `rejected`
    /// before the first publish, then sends the newest waiting report whenever
    /// the publish floor allows. The returned join handle ends after
    /// [`DefenderHandle::shutdown`].
    pub async fn start<T: Transport + 'static>(
        transport: Arc<T>,
        outbox: Outbox,
        options: DefenderOptions,
        status: Status,
    ) -> Result<(DefenderHandle, JoinHandle<()>), DefenderError> {
        let topics = Topics::new(&options.thing_name, options.format)?;
        let state = LastPublish::new(&options.state_dir, &options.thing_name);
        let last_publish_ms = match state.load() {
            Ok(last) => last,
            Err(reason) => {
                crate::state::note_corrupt(
                    &status,
                    &state.path,
                    &reason,
                    "the publish floor counts from now, as if a report was just published",
                );
                Some(now_ms())
            }
        };
        let min_interval = Duration::from_secs(options.config.min_interval_seconds);
        if options.config.min_interval_seconds < MIN_INTERVAL_SECONDS {
            warn!(
                min_interval_seconds = options.config.min_interval_seconds,
                "publish.deviceDefender.minIntervalSeconds is below Device Defender's {MIN_INTERVAL_SECONDS} s floor: use only with test or local brokers"
            );
        }
        let next_allowed = Instant::now() + floor_wait(last_publish_ms, now_ms(), min_interval);
        let (commands, receiver) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(256);
        let listener = tokio::spawn(listen(
            transport.clone(),
            topics.clone(),
            events_tx,
            status.clone(),
        ));
        let driver = Driver {
            transport,
            outbox: Arc::new(Mutex::new(outbox)),
            topics,
            options,
            status,
            state,
            min_interval,
            next_allowed,
            subscribed: false,
            in_flight: None,
            awaiting_reply: BTreeMap::new(),
            flushes: Vec::new(),
            backoff_until: None,
            failures: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            floor_unsaved: false,
        };
        let task = tokio::spawn(async move {
            driver.run(receiver, events).await;
            listener.abort();
        });
        Ok((DefenderHandle { commands }, task))
    }
}

impl DefenderHandle {
    /// Stores a report in the outbox; returns once it is durable there. The
    /// report goes out when the publish floor allows.
    pub async fn submit(&self, report_id: u64, payload: Vec<u8>) -> Result<(), DefenderError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Submit {
                report_id,
                payload,
                done,
            })
            .await
            .map_err(|_| DefenderError::Stopped)?;
        wait.await.map_err(|_| DefenderError::Stopped)?
    }

    /// Is the outbox writable again? After a submit failed with a storage
    /// fault ([`DefenderError::storage_fault`]): finishes what the fault
    /// postponed and checks the file system; `Ok` means submit what was held.
    /// See [`Outbox::recover_storage`].
    pub async fn recover_storage(&self) -> Result<(), DefenderError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::RecoverStorage { done })
            .await
            .map_err(|_| DefenderError::Stopped)?;
        wait.await.map_err(|_| DefenderError::Stopped)?
    }

    /// Waits until the outbox is empty (every report acknowledged or
    /// superseded) or `deadline` passed. For `run --once`.
    pub async fn flush(&self, deadline: Duration) -> FlushOutcome {
        let (done, wait) = oneshot::channel();
        let sent = self
            .commands
            .send(Command::Flush {
                until: Instant::now() + deadline,
                done,
            })
            .await;
        if sent.is_err() {
            return FlushOutcome::QueuedInOutbox;
        }
        wait.await.unwrap_or(FlushOutcome::QueuedInOutbox)
    }

    /// Stops the publisher: a publish in flight is abandoned (its report stays
    /// in the outbox), the outbox is closed. Nothing is lost.
    pub async fn shutdown(self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).await.is_ok() {
            let _ = wait.await;
        }
    }
}

enum Event {
    /// Both reply topics are subscribed.
    Ready,
    Reply(Message),
}

/// Subscribes to the reply topics (retrying with backoff until the transport
/// confirms), then forwards replies to the driver.
async fn listen<T: Transport>(
    transport: Arc<T>,
    topics: Topics,
    events: mpsc::Sender<Event>,
    status: Status,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let (mut accepted, mut rejected) = loop {
        let result = async {
            let accepted = transport.subscribe(&topics.accepted).await?;
            let rejected = transport.subscribe(&topics.rejected).await?;
            Ok::<_, TransportError>((accepted, rejected))
        }
        .await;
        match result {
            Ok(pair) => break pair,
            Err(error) => {
                status.add("defender.subscribe_failures", 1);
                let delay = backoff.next_delay();
                warn!(%error, topic = %topics.accepted, retry_in_ms = delay.as_millis() as u64, "cannot subscribe to Device Defender replies; reports wait until it works");
                tokio::time::sleep(delay).await;
            }
        }
    };
    if events.send(Event::Ready).await.is_err() {
        return;
    }
    loop {
        let message = tokio::select! {
            m = accepted.recv() => m,
            m = rejected.recv() => m,
        };
        let Some(message) = message else { break };
        if events.send(Event::Reply(message)).await.is_err() {
            break;
        }
    }
}

struct Driver<T: Transport> {
    transport: Arc<T>,
    outbox: Arc<Mutex<Outbox>>,
    topics: Topics,
    options: DefenderOptions,
    status: Status,
    state: LastPublish,
    min_interval: Duration,
    /// The publish floor: no attempt before this.
    next_allowed: Instant,
    subscribed: bool,
    in_flight: Option<InFlight>,
    /// Reports published and acknowledged by the transport, waiting for a
    /// Device Defender reply: report id → deadline.
    awaiting_reply: BTreeMap<u64, Instant>,
    flushes: Vec<(Instant, oneshot::Sender<FlushOutcome>)>,
    /// After a failed attempt, not before this (on top of the floor).
    backoff_until: Option<Instant>,
    /// The delay after a failed attempt; starts over on an acknowledgement.
    failures: Backoff,
    /// The last attempt time could not be saved; logged once per change.
    floor_unsaved: bool,
}

struct InFlight {
    entry: EntryId,
    report_id: u64,
    task: JoinHandle<Result<(), TransportError>>,
}

impl<T: Transport + 'static> Driver<T> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<Event>,
    ) {
        info!(
            topic = %self.topics.publish,
            waiting = self.depth(),
            "Device Defender publisher started"
        );
        loop {
            self.housekeeping();
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Submit { report_id, payload, done }) => {
                        let result = self.submit(report_id, payload).await;
                        let _ = done.send(result);
                    }
                    Some(Command::Flush { until, done }) => {
                        self.flushes.push((until, done));
                    }
                    Some(Command::RecoverStorage { done }) => {
                        let result = self.with_outbox(Outbox::recover_storage).await;
                        let _ = done.send(result.map_err(DefenderError::from));
                    }
                    Some(Command::Shutdown { done }) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.stop().await;
                        return;
                    }
                },
                event = events.recv(), if !events.is_closed() => match event {
                    Some(Event::Ready) => {
                        self.subscribed = true;
                        debug!(accepted = %self.topics.accepted, rejected = %self.topics.rejected, "subscribed to Device Defender replies");
                    }
                    Some(Event::Reply(message)) => self.on_reply(&message),
                    None => {}
                },
                result = async { (&mut self.in_flight.as_mut().expect("guarded by the condition").task).await }, if self.in_flight.is_some() => {
                    let in_flight = self.in_flight.take().expect("guarded by the condition");
                    let result = result.unwrap_or_else(|e| Err(TransportError::Unreachable {
                        peer: "transport".to_owned(),
                        reason: format!("publish task failed: {e}"),
                    }));
                    self.on_published(in_flight, result).await;
                }
                _ = sleep_until(wake) => {
                    self.maybe_publish().await;
                }
            }
        }
    }

    fn depth(&self) -> usize {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .depth()
    }

    /// Runs an outbox operation on a blocking thread: each does an fsync.
    async fn with_outbox<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Outbox) -> R + Send + 'static,
    ) -> R {
        let outbox = self.outbox.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut outbox = outbox.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut outbox)
        });
        match job.await {
            Ok(r) => r,
            // The closure panicked; the panic is already reported on stderr.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    async fn submit(&mut self, report_id: u64, payload: Vec<u8>) -> Result<(), DefenderError> {
        let mut entry = Vec::with_capacity(8 + payload.len());
        entry.extend_from_slice(&report_id.to_le_bytes());
        entry.extend_from_slice(&payload);
        let id = self.with_outbox(move |o| o.push(&entry)).await?;
        self.status.add("defender.submitted", 1);
        debug!(report_id, entry = %id, "report stored in the outbox");
        Ok(())
    }

    /// The earliest moment something needs doing without an outside event.
    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.subscribed && self.in_flight.is_none() && self.depth() > 0 {
            consider(
                self.next_allowed
                    .max(self.backoff_until.unwrap_or(self.next_allowed)),
            );
        }
        if let Some(first) = self.awaiting_reply.values().min() {
            consider(*first);
        }
        for (until, _) in &self.flushes {
            consider(*until);
        }
        wake
    }

    /// Counts unanswered reports and ends finished flushes.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .awaiting_reply
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for report_id in expired {
            self.awaiting_reply.remove(&report_id);
            self.status.add("defender.timed_out", 1);
            info!(
                report_id,
                timeout_s = self.options.config.reply_timeout_seconds,
                "no Device Defender reply for report"
            );
        }
        self.status
            .set("defender.awaiting_reply", self.awaiting_reply.len() as u64);

        if self.flushes.is_empty() {
            return;
        }
        let empty = self.depth() == 0 && self.in_flight.is_none();
        // When the floor keeps the next publish past a flush's deadline, waiting
        // cannot help: report the queue at once.
        let blocked_until = self.next_allowed.max(self.backoff_until.unwrap_or(now));
        let mut still = Vec::new();
        for (until, done) in self.flushes.drain(..) {
            if empty {
                let _ = done.send(FlushOutcome::Acknowledged);
            } else if now >= until || (self.in_flight.is_none() && blocked_until > until) {
                let _ = done.send(FlushOutcome::QueuedInOutbox);
            } else {
                still.push((until, done));
            }
        }
        self.flushes = still;
    }

    /// Publishes the newest waiting report when the floor and the backoff
    /// allow, superseding older ones.
    async fn maybe_publish(&mut self) {
        let now = Instant::now();
        if !self.subscribed
            || self.in_flight.is_some()
            || now < self.next_allowed
            || self.backoff_until.is_some_and(|t| now < t)
        {
            return;
        }
        let status = self.status.clone();
        let picked = self
            .with_outbox(move |outbox| pick_newest(outbox, &status))
            .await;
        let (entry, report_id, report) = match picked {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(error) => {
                warn!(%error, "cannot read the Device Defender outbox; retrying later");
                self.backoff_until = Some(now + jitter(Duration::from_secs(5)));
                return;
            }
        };

        // Persist the attempt first: a crash after the send must not let the
        // next run publish early. A file system that refuses the write must
        // not stop publishing either: the floor then holds in memory.
        let attempt_ms = now_ms();
        match self.state.store(attempt_ms) {
            Ok(()) if self.floor_unsaved => {
                self.floor_unsaved = false;
                info!(file = %self.state.path.display(), "Device Defender publish time is saved again");
            }
            Ok(()) => {}
            Err(error) => {
                self.status.add("defender.floor_unsaved", 1);
                if !self.floor_unsaved {
                    self.floor_unsaved = true;
                    warn!(%error, "cannot save the Device Defender publish time; publishing anyway, the floor holds in memory until the file can be written");
                }
            }
        }
        self.next_allowed = now + self.min_interval;
        let transport = self.transport.clone();
        let topic = self.topics.publish.clone();
        debug!(report_id, topic = %topic, bytes = report.len(), "publishing report");
        let task = tokio::spawn(async move { transport.publish(&topic, report).await });
        self.in_flight = Some(InFlight {
            entry,
            report_id,
            task,
        });
    }

    async fn on_published(&mut self, in_flight: InFlight, result: Result<(), TransportError>) {
        let InFlight {
            entry, report_id, ..
        } = in_flight;
        match result {
            Ok(()) => {
                // The invariant: the entry leaves the outbox only now.
                if let Err(error) = self.with_outbox(move |o| o.acknowledge(entry)).await {
                    warn!(%error, report_id, "report acknowledged but not removed from the outbox; it may be sent again");
                }
                self.backoff_until = None;
                self.failures.reset();
                self.status.add("defender.sent", 1);
                self.awaiting_reply.insert(
                    report_id,
                    Instant::now() + Duration::from_secs(self.options.config.reply_timeout_seconds),
                );
                info!(report_id, topic = %self.topics.publish, "report published");
            }
            Err(TransportError::Refused { peer, reason }) => {
                // The peer said no for good (e.g. the payload is too large):
                // retrying would block every newer report behind this one.
                // It leaves like a superseded report, counted apart.
                self.status.add("defender.refused", 1);
                self.status
                    .set_text("defender.last_error", format!("{peer} refused: {reason}"));
                warn!(%peer, %reason, report_id, "report refused by the transport; removed from the outbox, not retried");
                let removed = self.with_outbox(move |o| o.remove(entry)).await;
                if let Err(error) = removed {
                    warn!(%error, report_id, "refused report could not be removed from the outbox");
                }
            }
            Err(error) => {
                self.status.add("defender.publish_failures", 1);
                self.status
                    .set_text("defender.last_error", error.to_string());
                // The floor already spaces attempts by min_interval; this
                // backoff matters when the floor is low (tests, local brokers).
                let delay = self.failures.next_delay();
                self.backoff_until = Some(Instant::now() + delay);
                warn!(
                    %error,
                    report_id,
                    retry_in_s = self
                        .next_allowed
                        .max(Instant::now() + delay)
                        .saturating_duration_since(Instant::now())
                        .as_secs(),
                    "report not acknowledged; it stays in the outbox"
                );
            }
        }
    }

    fn on_reply(&mut self, message: &Message) {
        let reply = match Reply::decode(self.options.format, &message.payload) {
            Ok(reply) => reply,
            Err(error) => {
                self.status.add("defender.unreadable_replies", 1);
                warn!(topic = %message.topic, %error, "unreadable Device Defender reply");
                return;
            }
        };
        // A reply without reportId (unparsable header) belongs to the oldest
        // report still waiting for one.
        let report_id = reply
            .report_id
            .or_else(|| self.awaiting_reply.keys().next().copied());
        let known = report_id.is_some_and(|id| self.awaiting_reply.remove(&id).is_some());
        if message.topic == self.topics.accepted {
            self.status.add("defender.accepted", 1);
            info!(report_id = ?report_id, known, "Device Defender accepted report");
        } else {
            self.status.add("defender.rejected", 1);
            let details = reply.status_details.as_ref();
            let code = details.and_then(|d| d.error_code.as_deref()).unwrap_or("?");
            let text = details
                .and_then(|d| d.error_message.as_deref())
                .unwrap_or("");
            self.status
                .set_text("defender.last_rejection", format!("{code}: {text}"));
            warn!(
                report_id = ?report_id,
                error_code = code,
                error_message = text,
                topic = %message.topic,
                "Device Defender rejected report"
            );
        }
        self.status
            .set("defender.awaiting_reply", self.awaiting_reply.len() as u64);
    }

    async fn stop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            // The report stays in the outbox; the next run sends it.
            in_flight.task.abort();
        }
        for (_, done) in self.flushes.drain(..) {
            let _ = done.send(FlushOutcome::QueuedInOutbox);
        }
        info!(waiting = self.depth(), "Device Defender publisher stopped");
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Supersedes all but the newest readable waiting report and returns the
/// newest. Entries that cannot be read are skipped (counted, logged, removed)
/// so that one damaged entry never blocks the reports after it.
fn pick_newest(
    outbox: &mut Outbox,
    status: &Status,
) -> Result<Option<(EntryId, u64, Vec<u8>)>, OutboxError> {
    let pending = outbox.pending();
    let mut newest = None;
    for &entry in pending.iter().rev() {
        match outbox.read(entry) {
            Ok(bytes) => {
                newest = Some((entry, bytes));
                break;
            }
            Err(error) => skip_unreadable(outbox, entry, &error, status)?,
        }
    }
    let Some((newest, bytes)) = newest else {
        return Ok(None);
    };
    for &entry in pending.iter().take_while(|e| **e < newest) {
        let (report_id, _) = match outbox.read(entry) {
            Ok(bytes) => split_entry(bytes),
            Err(error) => {
                skip_unreadable(outbox, entry, &error, status)?;
                continue;
            }
        };
        status.add("defender.superseded", 1);
        warn!(
            report_id,
            "report superseded by a newer one: Device Defender takes current data only"
        );
        outbox.remove(entry)?;
    }
    let (report_id, payload) = split_entry(bytes);
    Ok(Some((newest, report_id, payload)))
}

/// Drops an entry that cannot be read back: retrying cannot help, and
/// leaving it would stop every report behind it.
fn skip_unreadable(
    outbox: &mut Outbox,
    entry: EntryId,
    error: &OutboxError,
    status: &Status,
) -> Result<(), OutboxError> {
    status.add("defender.entries_unreadable", 1);
    warn!(entry = %entry, %error, "Device Defender outbox entry unreadable: skipped and removed");
    outbox.remove(entry)
}

fn split_entry(mut entry: Vec<u8>) -> (u64, Vec<u8>) {
    match entry.split_first_chunk::<8>() {
        Some((id, _)) => {
            let id = u64::from_le_bytes(*id);
            entry.drain(..8);
            (id, entry)
        }
        None => (0, entry),
    }
}

/// How long to wait before the first publish, given the persisted last one.
fn floor_wait(last_publish_ms: Option<u64>, now_ms: u64, min_interval: Duration) -> Duration {
    let Some(last) = last_publish_ms else {
        return Duration::ZERO;
    };
    let interval = min_interval.as_millis() as u64;
    if last > now_ms {
        // The clock went back (a Pi without RTC before NTP): wait a whole
        // interval rather than trust either time.
        return min_interval;
    }
    Duration::from_millis((last + interval).saturating_sub(now_ms))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last publish time per thing, in `<state dir>/defender-last-publish.json`.
struct LastPublish {
    path: PathBuf,
    thing: String,
}

/// The state file's name.
pub const LAST_PUBLISH_FILE: &str = "defender-last-publish.json";

impl LastPublish {
    fn new(state_dir: &Path, thing: &str) -> LastPublish {
        LastPublish {
            path: state_dir.join(LAST_PUBLISH_FILE),
            thing: thing.to_owned(),
        }
    }

    /// Every thing's last publish time; `Err` names what is wrong with a
    /// file that exists but cannot be used.
    fn read_all(&self) -> Result<BTreeMap<String, u64>, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn load(&self) -> Result<Option<u64>, String> {
        Ok(self.read_all()?.get(&self.thing).copied())
    }

    /// Saves this thing's attempt time. A corrupt file is replaced (its
    /// other things' times were unreadable anyway).
    fn store(&self, ms: u64) -> Result<(), DefenderError> {
        let mut all = self.read_all().unwrap_or_default();
        all.insert(self.thing.clone(), ms);
        let state = |reason: String| DefenderError::State {
            path: self.path.clone(),
            reason,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| state(e.to_string()))?;
        }
        let json = serde_json::to_vec(&all).map_err(|e| state(e.to_string()))?;
        crate::state::write_atomically(&self.path, &json).map_err(|e| state(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_format() {
        let t = Topics::new("edge-01", Format::Cbor).expect("valid");
        assert_eq!(t.publish, "$aws/things/edge-01/defender/metrics/cbor");
        assert_eq!(
            t.accepted,
            "$aws/things/edge-01/defender/metrics/cbor/accepted"
        );
        assert_eq!(
            t.rejected,
            "$aws/things/edge-01/defender/metrics/cbor/rejected"
        );
        let short = Topics::new("edge-01", Format::JsonShort).expect("valid");
        assert_eq!(short.publish, "$aws/things/edge-01/defender/metrics/json");
        for bad in ["", "a/b", "a+b", "x#", "tab\there", &"x".repeat(129)] {
            assert!(Topics::new(bad, Format::Json).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_decode_with_and_without_report_id() {
        // (format, reply bytes, expected reportId, expected ErrorCode)
        type Case = (Format, Vec<u8>, Option<u64>, Option<&'static str>);
        let cases: [Case; 3] = [
            (
                Format::Json,
                br#"{"thingName":"t","reportId":7,"status":"ACCEPTED","timestamp":1}"#.to_vec(),
                Some(7),
                None,
            ),
            (
                Format::Json,
                br#"{"thingName":"t","status":"REJECTED","statusDetails":{"ErrorCode":"InvalidPayload","ErrorMessage":"Malformed metrics report"},"timestamp":1}"#.to_vec(),
                None,
                Some("InvalidPayload"),
            ),
            (
                Format::Cbor,
                {
                    let mut buf = Vec::new();
                    let value = serde_json::json!({"reportId": 9u64, "status": "ACCEPTED"});
                    ciborium::into_writer(&value, &mut buf).expect("cbor");
                    buf
                },
                Some(9),
                None,
            ),
        ];
        for (format, bytes, id, code) in cases {
            let reply = Reply::decode(format, &bytes).expect("decodes");
            assert_eq!(reply.report_id, id);
            assert_eq!(
                reply.status_details.and_then(|d| d.error_code).as_deref(),
                code
            );
        }
    }

    #[test]
    fn floor_counts_from_the_persisted_publish() {
        let five = Duration::from_secs(300);
        assert_eq!(floor_wait(None, 1_000_000, five), Duration::ZERO);
        assert_eq!(
            floor_wait(Some(1_000_000), 1_100_000, five),
            Duration::from_secs(200)
        );
        assert_eq!(floor_wait(Some(1_000_000), 2_000_000, five), Duration::ZERO);
        assert_eq!(
            floor_wait(Some(2_000_000), 1_000_000, five),
            five,
            "clock went back"
        );
    }

    /// Issue 12 item 2: an entry that cannot be read back is skipped,
    /// counted and removed, and the next newest report is published; an
    /// unreadable older one does not stop superseding either.
    #[test]
    fn unreadable_entries_are_skipped_and_the_next_report_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Status::new();
        let mut outbox = Outbox::open(
            dir.path(),
            crate::publish::outbox::OutboxLimits::default(),
            "outbox",
            status.clone(),
        )
        .expect("open");
        let entries: Vec<EntryId> = (1..=4u64)
            .map(|id| {
                let mut entry = id.to_le_bytes().to_vec();
                entry.extend_from_slice(format!("report {id}").as_bytes());
                outbox.push(&entry).expect("push")
            })
            .collect();
        // Media corruption after the outbox was opened: the payloads of
        // reports 4 (the newest) and 2 change on disk. Each record is a
        // 16-byte header, 8 bytes of report id and 8 of text.
        let segment = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("segment");
        let mut bytes = std::fs::read(&segment).expect("read");
        for index in [3usize, 1] {
            bytes[index * 32 + 30] ^= 0xff;
        }
        std::fs::write(&segment, &bytes).expect("write");

        let picked = pick_newest(&mut outbox, &status).expect("no error");
        let (entry, report_id, payload) = picked.expect("a report to publish");
        assert_eq!(entry, entries[2]);
        assert_eq!(report_id, 3, "the next newest report goes");
        assert_eq!(payload, b"report 3");
        assert_eq!(status.number("defender.entries_unreadable"), 2);
        assert_eq!(status.number("defender.superseded"), 1, "report 1");
        assert_eq!(outbox.pending(), vec![entries[2]]);
    }

    #[test]
    fn last_publish_is_kept_per_thing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = LastPublish::new(dir.path(), "a");
        let b = LastPublish::new(dir.path(), "b");
        assert_eq!(a.load().expect("load"), None);
        a.store(5).expect("store");
        b.store(7).expect("store");
        assert_eq!(a.load().expect("load"), Some(5));
        assert_eq!(b.load().expect("load"), Some(7));
    }
}
