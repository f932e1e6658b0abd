//! `run`: the long-running component.
//!
//! A *session* is what one configuration starts: the [`Pipeline`] and
//! everything around it that does I/O: the NDJSON output, the transport, the
//! Device Defender publisher, the SIEM sink and the alarm topics. `run` keeps
//! one session at a time. When Greengrass announces a configuration update,
//! the new document is parsed and checked first; an invalid one is refused
//! with a log line and the running session goes on untouched. A valid one
//! replaces the session: the old one is shut down (its outboxes closed,
//! nothing lost), the new one starts in the same process. If the new one
//! cannot start (a plugin directory that does not exist, say), the old
//! configuration is started again.
//!
//! Sampling: one tick per detection interval (10 s by default), or per report
//! interval when detection is off. Every tick is one [`Pipeline::step`],
//! run where blocking is allowed; its alarms go out at once, its sample to
//! the SIEM path when it carries alerts, and a tick at or after the report
//! deadline hands its report to the publisher's outbox. The publisher
//! decides when Device Defender may have it (300 s floor); `run` never waits
//! for it except with `--once`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::detect::{AlarmEvent, AlarmState};
use crate::greengrass::Nucleus;
use crate::greengrass::ipc::{ConfigurationUpdates, IpcClient};
use crate::health::{HealthMonitor, HealthState};
use crate::output::{Event, Output, Target};
use crate::pipeline::{Outcome, Passed, Pipeline, Throttle, Window};
use crate::publish::defender::{DefenderHandle, DefenderOptions, DefenderPublisher, FlushOutcome};
use crate::publish::firehose::SiemSink;
use crate::publish::mqtt::MqttTransport;
use crate::publish::outbox::Outbox;
use crate::publish::{Message, Transport, TransportError, TransportKind};
use crate::state::{StateDir, now_ms};
use crate::status::{Status, StorageWatch};

/// How `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Stopped by a signal, or `--once` with the report acknowledged.
    Done,
    /// `--once`: the peer could not be reached; the report waits in the outbox.
    Queued,
}

impl RunOutcome {
    /// The process exit status documented in `run --help`.
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::Done => 0,
            RunOutcome::Queued => 3,
        }
    }
}

/// Command-line settings that win over every configuration document,
/// including the ones Greengrass sends later.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub plugins_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(dir) = &self.plugins_dir {
            config.plugins.dir = Some(dir.clone());
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
    }
}

/// How `run` was asked to behave.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Publish one report, wait for its acknowledgement, exit.
    pub once: bool,
    /// With `once`: how long to wait for the acknowledgement.
    pub once_wait: Duration,
    pub overrides: Overrides,
    /// Follow Greengrass configuration updates (the configuration came from
    /// the nucleus, not from a local file).
    pub live_configuration: bool,
    /// Readable lines instead of NDJSON on standard output (`--human`, or
    /// standard output is a terminal).
    pub human: bool,
}

/// When the next report is due. Kept across sessions, so a configuration
/// update does not make an early report.
#[derive(Debug, Default)]
struct ReportClock {
    last: Option<Instant>,
}

impl ReportClock {
    /// Whether a report is due at `now` (with 50 ms of slack for a ticker
    /// that fires a little early); if so, the next one is due a whole
    /// interval later.
    fn take(&mut self, now: Instant, every: Duration) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) + Duration::from_millis(50) >= every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Runs until SIGTERM/SIGINT (or, with `once`, until one report was handled).
pub async fn run(
    config: Config,
    nucleus: Option<Nucleus>,
    status: Status,
    options: RunOptions,
) -> anyhow::Result<RunOutcome> {
    let mut updates = match (&nucleus, options.live_configuration && !options.once) {
        (Some(nucleus), true) => Some(nucleus.configuration_updates().await?),
        _ => None,
    };
    let mut stop = Box::pin(crate::signals::stopped());
    let mut config = config;
    // The configuration to go back to when an update cannot start.
    let mut previous: Option<Config> = None;
    let mut clock = ReportClock::default();
    loop {
        let mut session = match Session::start(
            &config,
            nucleus.as_ref(),
            status.clone(),
            options.human,
        )
        .await
        {
            Ok(session) => session,
            Err(error) => match previous.take() {
                Some(old) => {
                    warn!(error = %format!("{error:#}"), "refused configuration update; going back to the previous configuration");
                    status.add("run.configuration_refused", 1);
                    config = old;
                    continue;
                }
                None => {
                    if let Some(nucleus) = &nucleus {
                        nucleus.errored().await;
                    }
                    return Err(error);
                }
            },
        };
        if previous.take().is_some() {
            info!("applied configuration update");
            status.add("run.configuration_updates", 1);
        }
        if let Some(nucleus) = &nucleus {
            nucleus.running().await;
        }
        let ended = session
            .drive(
                &mut clock,
                &mut stop,
                updates.as_mut(),
                nucleus.as_ref(),
                &options,
                &config,
            )
            .await;
        match ended {
            Ok(Ended::Stopped) => {
                session.shutdown().await;
                return Ok(RunOutcome::Done);
            }
            Ok(Ended::Once) => {
                let outcome = session.finish_once(options.once_wait).await;
                session.shutdown().await;
                return Ok(outcome);
            }
            Ok(Ended::Reconfigure(new)) => {
                session.shutdown().await;
                previous = Some(std::mem::replace(&mut config, *new));
            }
            Err(error) => {
                session.shutdown().await;
                if let Some(nucleus) = &nucleus {
                    nucleus.errored().await;
                }
                return Err(error);
            }
        }
    }
}

enum Ended {
    Stopped,
    Once,
    Reconfigure(Box<Config>),
}

/// Either transport, so the publisher and alarms take one type.
enum AnyTransport {
    Ipc(IpcClient),
    Mqtt(MqttTransport),
}

impl AnyTransport {
    /// The largest payload one message to `topic` carries.
    fn max_payload(&self, topic: &str) -> usize {
        match self {
            AnyTransport::Ipc(ipc) => ipc.max_publish_payload(topic),
            AnyTransport::Mqtt(_) => crate::publish::mqtt::max_publish_payload(topic),
        }
    }
}

impl Transport for AnyTransport {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), TransportError> {
        match self {
            AnyTransport::Ipc(t) => t.publish(topic, payload).await,
            AnyTransport::Mqtt(t) => t.publish(topic, payload).await,
        }
    }

    async fn subscribe(&self, filter: &str) -> Result<mpsc::Receiver<Message>, TransportError> {
        match self {
            AnyTransport::Ipc(t) => t.subscribe(filter).await,
            AnyTransport::Mqtt(t) => t.subscribe(filter).await,
        }
    }
}

/// The pipeline of one configuration and the I/O around it.
struct Session {
    pipeline: Pipeline,
    state: StateDir,
    status: Status,
    output: Output,
    transport: Option<Arc<AnyTransport>>,
    publisher: Option<(DefenderHandle, JoinHandle<()>)>,
    siem: SiemSink,
    /// Alarms as Security Hub findings (`publish.securityHub`).
    findings: crate::publish::securityhub::FindingsSink,
    alarms: AlarmTopics,
    format: crate::report::Format,
    report_every: Duration,
    tick_every: Duration,
    /// Whether the last `--once` report went to the publisher.
    submitted: bool,
    /// `status.json` at most every `stateWriteSeconds` (SD wear).
    status_writes: Throttle,
    /// The health event of each report period (`health`).
    health: HealthMonitor,
    health_topic: Option<String>,
    /// The state and problems last written to the local output (`ok` and
    /// none at start): a health line is written when they change, not
    /// every period.
    health_shown: Option<(HealthState, Vec<String>)>,
    thing: String,
    /// Reports the outbox could not store (disk full or read-only), oldest
    /// first, until it can.
    held: HeldReports,
    /// Whether `output.ndjson`, `output.events` and `status.json` could be
    /// written, said once per change.
    report_writes: StorageWatch,
    event_writes: StorageWatch,
    status_file_writes: StorageWatch,
}

/// How many reports `run` holds in memory while the outbox cannot store
/// them, and how many bytes they may take together, whichever bound is met
/// first. When a new report would exceed it, the oldest held one is
/// dropped: Device Defender takes current data only, and the publisher
/// itself supersedes older waiting reports, so the newest is what is worth
/// keeping. 16 reports are 80 minutes at the default 300 s interval; 256 KiB
/// is 2 to 16 reports of the largest sizes a transport carries.
const HELD_REPORTS_MAX: usize = 16;
const HELD_BYTES_MAX: usize = 256 * 1024;

/// Reports waiting in memory for the outbox (docs/OUTBOX.md, "When the disk
/// is full, read-only or failing"). Counted in `report.held_in_memory` (a
/// gauge), `report.dropped_unstored` and `report.stored_late`.
#[derive(Debug, Default)]
struct HeldReports {
    reports: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    /// The storage condition that made the last submit fail, until a submit
    /// works again.
    fault: Option<crate::publish::outbox::StorageFault>,
    /// Reports dropped since the fault began, for the recovery line.
    dropped: u64,
}

impl HeldReports {
    /// Holds a report, dropping the oldest held ones to stay within the
    /// bounds; returns the ids dropped.
    fn hold(&mut self, id: u64, bytes: Vec<u8>) -> Vec<u64> {
        self.bytes += bytes.len();
        self.reports.push_back((id, bytes));
        let mut dropped = Vec::new();
        while self.reports.len() > 1
            && (self.reports.len() > HELD_REPORTS_MAX || self.bytes > HELD_BYTES_MAX)
        {
            if let Some((id, bytes)) = self.reports.pop_front() {
                self.bytes -= bytes.len();
                dropped.push(id);
            }
        }
        self.dropped += dropped.len() as u64;
        dropped
    }

    fn pop_front(&mut self) -> Option<(u64, Vec<u8>)> {
        let (id, bytes) = self.reports.pop_front()?;
        self.bytes -= bytes.len();
        Some((id, bytes))
    }

    fn push_front(&mut self, id: u64, bytes: Vec<u8>) {
        self.bytes += bytes.len();
        self.reports.push_front((id, bytes));
    }
}

impl Session {
    async fn start(
        config: &Config,
        nucleus: Option<&Nucleus>,
        status: Status,
        human: bool,
    ) -> anyhow::Result<Session> {
        let state = StateDir::open(&config.state_dir)?.counting_in(&status);
        // Loading compiles and instantiates plugins, and wasmtime-wasi
        // drives its own futures to completion there: it must run where
        // blocking is allowed, not on an async worker.
        let mut pipeline = tokio::task::block_in_place(|| {
            Pipeline::start(
                config,
                state.clone(),
                status.clone(),
                Window::SinceLastReport,
            )
        })?;
        let thing = pipeline.thing().to_owned();
        status.set_text("run.thing", thing.clone());
        let output = Output::new(
            Target::open(config.output.ndjson.as_deref(), "output.ndjson")?,
            Target::open(config.output.events.as_deref(), "output.events")?,
            human,
        );
        let ipc = nucleus.map(Nucleus::client);

        let kind = config
            .publish
            .transport
            .resolve(ipc.is_some(), &config.publish);
        let transport = match kind {
            TransportKind::Ipc => match ipc {
                Some(ipc) => Some(Arc::new(AnyTransport::Ipc(ipc.clone()))),
                None => anyhow::bail!(ConfigError::Invalid {
                    origin: "the configuration".to_owned(),
                    message: "key `publish.transport`: `ipc` needs Greengrass (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT and SVCUID are not set)".to_owned(),
                }),
            },
            TransportKind::Mqtt => Some(Arc::new(AnyTransport::Mqtt(
                MqttTransport::start(&config.publish.mqtt, &thing, status.clone())
                    .context("starting the MQTT transport (publish.mqtt)")?,
            ))),
            TransportKind::None | TransportKind::Auto => None,
        };
        status.set_text("run.transport", format!("{kind:?}").to_lowercase());

        let format = config.report.format;
        let topic = crate::publish::defender::Topics::new(&thing, format)?.publish;
        // The report must fit one message of the transport: nucleus lite
        // takes IPC frames of 10,000 bytes at most (the payload travels in
        // base64), and an MQTT packet holds the topic beside the payload.
        match (ipc, kind) {
            (Some(ipc), TransportKind::Ipc) => {
                pipeline.limit_report_bytes(ipc.max_publish_payload(&topic))
            }
            (_, TransportKind::Mqtt) => {
                pipeline.limit_report_bytes(crate::publish::mqtt::max_publish_payload(&topic))
            }
            _ => {}
        }
        if pipeline.report_budget() < config.report.max_bytes {
            info!(
                budget = pipeline.report_budget(),
                configured = config.report.max_bytes,
                "report size budget lowered to what one message of the transport carries"
            );
        }

        let publisher = match &transport {
            Some(transport) if config.publish.device_defender.enabled => {
                let outbox = Outbox::open(
                    &state.path().join("outbox"),
                    config.publish.outbox,
                    "outbox",
                    status.clone(),
                )?;
                let options = DefenderOptions {
                    thing_name: thing.clone(),
                    format,
                    state_dir: state.path().to_owned(),
                    config: config.publish.device_defender.clone(),
                };
                Some(
                    DefenderPublisher::start(transport.clone(), outbox, options, status.clone())
                        .await?,
                )
            }
            _ => None,
        };
        let siem = SiemSink::start(
            &config.publish.firehose,
            config.detection.send_to_firehose,
            state.path(),
            &status,
        )
        .await;
        let findings = crate::publish::securityhub::FindingsSink::start(
            &config.publish.security_hub,
            state.path(),
            &status,
        )
        .await;
        let report_every = Duration::from_secs(config.report.interval_seconds);
        let tick_every = pipeline
            .detection_interval()
            .map_or(report_every, |every| every.min(report_every));
        info!(%thing, transport = ?kind, report_interval_s = report_every.as_secs(), sample_interval_s = tick_every.as_secs_f64(), "defender-edge running");
        Ok(Session {
            alarms: AlarmTopics {
                queue: match &transport {
                    Some(transport) => start_alarm_queue(
                        transport.clone(),
                        crate::detect::alarm_topic(&config.detection, &thing),
                        &state,
                        &status,
                    ),
                    None => None,
                },
                format: config.detection.alarm_format,
                local_topic: config.detection.local_topic.clone(),
                ipc: ipc.cloned(),
                status: status.clone(),
            },
            pipeline,
            state,
            status,
            output,
            transport,
            publisher,
            siem,
            findings,
            format,
            report_every,
            tick_every,
            submitted: false,
            status_writes: Throttle::new(config.state_write_seconds),
            // A new session (a configuration update) judges error counters
            // from zero again: a problem of the last period may be named
            // once more, never one hidden.
            health: HealthMonitor::new(),
            health_topic: config.health.topic_for(&thing),
            // A healthy start writes nothing: the local output shows the
            // health when it first goes wrong and when it changes after.
            health_shown: Some((HealthState::Ok, Vec::new())),
            thing,
            held: HeldReports::default(),
            report_writes: StorageWatch::new(
                "output.ndjson",
                "output.ndjson",
                "report lines are not written",
            ),
            event_writes: StorageWatch::new(
                "output.events",
                "output.events",
                "event lines are not written",
            ),
            status_file_writes: StorageWatch::new(
                "state.status_file",
                "status.json",
                "`defender-edge status` shows older values",
            ),
        })
    }

    /// Ticks until stopped, `--once` is done, or a configuration update
    /// arrives that parses and passes its checks.
    async fn drive(
        &mut self,
        clock: &mut ReportClock,
        stop: &mut std::pin::Pin<Box<impl std::future::Future<Output = &'static str>>>,
        mut updates: Option<&mut ConfigurationUpdates>,
        nucleus: Option<&Nucleus>,
        options: &RunOptions,
        current: &Config,
    ) -> anyhow::Result<Ended> {
        let mut ticker = tokio::time::interval(self.tick_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                signal = stop.as_mut() => {
                    info!(%signal, "stopping");
                    return Ok(Ended::Stopped);
                }
                changed = next_update(&mut updates) => {
                    let Some(paths) = changed else {
                        warn!("the nucleus ended the configuration subscription; updates are no longer followed");
                        updates = None;
                        continue;
                    };
                    if let Some(new) = read_update(nucleus, &paths, options, current, &self.status).await {
                        return Ok(Ended::Reconfigure(Box::new(new)));
                    }
                    continue;
                }
            }
            let reported = self
                .tick(clock.take(Instant::now(), self.report_every))
                .await?;
            if reported {
                self.send_health().await;
            }
            self.write_status_when_due();
            if options.once && reported {
                return Ok(Ended::Once);
            }
        }
    }

    /// Rewrites `status.json` when `stateWriteSeconds` passed since the last
    /// time, on a tick that opened or closed an alarm, and always at
    /// shutdown: `status` may show counters up to that old (it says when they
    /// were written, `updated_ms`), but never an alarm list that old.
    fn write_status_when_due(&mut self) {
        let now = now_ms();
        if !self.status_writes.due(now) {
            return;
        }
        match self.status.write(self.state.path(), now) {
            Ok(_) => {
                self.status_writes.done(now);
                self.status_file_writes.worked(&self.status);
            }
            Err(error) => self
                .status_file_writes
                .failed(&self.status, &error, Some(&error)),
        }
    }

    /// Notes the outcome of writing an output line; a failure (a full or
    /// read-only disk under `output.ndjson` or `output.events`) is counted
    /// and said once per change, never fatal.
    fn written(watch: &mut StorageWatch, status: &Status, outcome: anyhow::Result<()>) -> bool {
        match outcome {
            Ok(()) => {
                watch.worked(status);
                true
            }
            Err(error) => {
                let io = crate::status::io_cause(error.as_ref());
                watch.failed(status, &format!("{error:#}"), io);
                false
            }
        }
    }

    /// The agent's health, once per report period: to Firehose (durable, as
    /// the sample's events), to the IoT topic `health.topic` in the
    /// background, and to the local output when its state or problems
    /// changed. Nothing here can stop the session.
    async fn send_health(&mut self) {
        let now = now_ms();
        let health = self.health.health(&self.status.snapshot(now), now);
        self.status.set_text(
            "health.state",
            match health.problems.is_empty() {
                true => health.state.as_str().to_owned(),
                false => format!("{}: {}", health.state.as_str(), health.problems.join("; ")),
            },
        );
        self.siem.submit_health(&health, &self.thing, now).await;
        let event = health.to_event_json(&self.thing, now);
        if let (Some(topic), Some(transport)) = (&self.health_topic, &self.transport) {
            let (payload, cut) =
                health.payload_within(&self.thing, now, transport.max_payload(topic));
            if cut {
                self.status.add("health.status_left_out", 1);
            }
            publish_in_background(
                transport,
                topic,
                payload,
                &self.status,
                ("health.published", "health.publish_errors"),
                "cannot publish the health event",
            );
        }
        let shown = Some((health.state, health.problems.clone()));
        if shown != self.health_shown {
            if health.state == HealthState::Degraded {
                warn!(problems = ?health.problems, "agent health degraded");
            }
            let line = Event {
                kind: "health",
                timestamp_ms: now,
                fields: event,
                human: health.human(),
            };
            let outcome = self.output.event(line);
            if Session::written(&mut self.event_writes, &self.status, outcome) {
                self.health_shown = shown;
            }
        }
    }

    /// Change events: to the event output (one line each) and to Firehose.
    /// Nothing here can stop the session.
    async fn deliver_changes(&mut self, changes: &[crate::changes::Change]) {
        if changes.is_empty() {
            return;
        }
        let now = now_ms();
        self.status.add("changes.events", changes.len() as u64);
        for change in changes {
            let mut fields = serde_json::json!({"thing": self.thing, "timestamp_ms": now});
            if let (Some(map), Ok(serde_json::Value::Object(more))) =
                (fields.as_object_mut(), serde_json::to_value(change))
            {
                map.extend(more);
            }
            let line = Event {
                kind: "change",
                timestamp_ms: now,
                fields,
                human: change.human(),
            };
            let outcome = self.output.event(line);
            Session::written(&mut self.event_writes, &self.status, outcome);
        }
        self.siem.submit_changes(changes, &self.thing, now).await;
    }

    /// One pipeline step, then its outputs handed on; returns whether this
    /// was a report tick.
    async fn tick(&mut self, report_due: bool) -> anyhow::Result<bool> {
        // Plugins are synchronous and bounded by their budgets: the step
        // runs where blocking is allowed.
        let pipeline = &mut self.pipeline;
        let tick = tokio::task::block_in_place(|| pipeline.step(now_ms(), report_due));
        self.pipeline.persist(now_ms());
        self.alarms.deliver(&tick.alarms);
        self.findings.submit(&tick.alarms).await;
        if !tick.alarms.is_empty() {
            // Alarms are rare and are what a person runs `status` for.
            self.status_writes.expire();
        }
        for alarm in &tick.alarms {
            // `status` lists the open alarms.
            let key = format!("alarm.{}", alarm.key());
            match alarm.state {
                AlarmState::Alarm => self.status.set_text(
                    &key,
                    format!(
                        "since {} UTC: {}",
                        crate::status::format_utc(alarm.violation_start_ms),
                        alarm.finding()
                    ),
                ),
                AlarmState::Clear | AlarmState::Invalidated => self.status.remove(&key),
            }
            let outcome = self.output.event(Event {
                kind: "alarm",
                timestamp_ms: alarm.timestamp_ms,
                fields: serde_json::to_value(alarm).unwrap_or_default(),
                human: alarm.human(),
            });
            Session::written(&mut self.event_writes, &self.status, outcome);
        }
        self.deliver_changes(&tick.changes).await;
        // Reports held in memory go to the outbox first, in order, as soon
        // as it takes writes again.
        self.store_held(None).await?;
        let Passed { sample, id, report } = match tick.outcome {
            Outcome::Passed(passed) => *passed,
            Outcome::Held { plugin, reason } => {
                warn!(%plugin, %reason, "sample held back by a fail-closed plugin");
                self.status.add("report.held", 1);
                return Ok(report_due);
            }
            Outcome::Dropped { plugin } => {
                info!(%plugin, "sample dropped by plugin");
                self.status.add("report.dropped_by_plugin", 1);
                return Ok(report_due);
            }
        };
        // A sample with nothing to show writes nothing, which says nothing
        // about the disk.
        match self.output.sample_events(&sample) {
            Ok(0) => {}
            outcome => {
                Session::written(&mut self.event_writes, &self.status, outcome.map(|_| ()));
            }
        }
        if let Some(id) = id {
            self.siem.submit(&sample, id, report.is_some()).await;
        }
        match report {
            None => {}
            Some(Ok(prepared)) => {
                // Outbox first: once a report is anywhere, it is durable.
                // When the outbox cannot store it (a full or read-only
                // disk), it waits in memory behind the reports held before.
                let id = prepared.report.header.report_id;
                if self.publisher.is_some() {
                    for dropped in self.held.hold(id, prepared.bytes) {
                        self.status.add("report.dropped_unstored", 1);
                        if self.held.dropped == 1 {
                            warn!(
                                report_id = dropped,
                                held = HELD_REPORTS_MAX,
                                held_bytes = HELD_BYTES_MAX,
                                "too many reports held in memory; dropping the oldest (counted in report.dropped_unstored)"
                            );
                        }
                    }
                    self.store_held(Some(id)).await?;
                }
                let outcome = self.output.report(&prepared.report, self.format, now_ms());
                Session::written(&mut self.report_writes, &self.status, outcome);
            }
            Some(Err(error)) => {
                error!(report_id = id, %error, "report failed validation; not sent");
                self.status.add("report.validation_failures", 1);
            }
        }
        Ok(report_due)
    }

    /// Stores the reports held in memory in the outbox, oldest first, until
    /// one fails for the disk; said once per change of the disk's state.
    /// Fails only for what no disk explains (a report the outbox refuses,
    /// a publisher that stopped), which stopped `run` before too.
    /// `current` is the report of this tick, which is not counted as stored
    /// late when it goes at once.
    async fn store_held(&mut self, current: Option<u64>) -> anyhow::Result<()> {
        let Some((publisher, _)) = &self.publisher else {
            return Ok(());
        };
        if self.held.reports.is_empty() {
            return Ok(());
        }
        if self.held.fault.is_some() && publisher.recover_storage().await.is_err() {
            // Still full or read-only: one statvfs, no write attempted.
            self.status
                .set("report.held_in_memory", self.held.reports.len() as u64);
            return Ok(());
        }
        let mut stored_late = 0u64;
        while let Some((id, bytes)) = self.held.pop_front() {
            let late = Some(id) != current;
            match publisher.submit(id, bytes.clone()).await {
                Ok(()) => {
                    self.submitted = true;
                    if late {
                        stored_late += 1;
                        self.status.add("report.stored_late", 1);
                    }
                }
                Err(error) => match error.storage_fault() {
                    Some(fault) => {
                        self.held.push_front(id, bytes);
                        if self.held.fault != Some(fault) {
                            warn!(
                                report_id = id,
                                condition = %fault,
                                %error,
                                "the outbox cannot store reports; holding them in memory (report.held_in_memory) until the disk takes writes again"
                            );
                            self.held.fault = Some(fault);
                        }
                        break;
                    }
                    None => {
                        return Err(anyhow::Error::new(error)
                            .context(format!("storing report {id} in the outbox")));
                    }
                },
            }
        }
        if self.held.reports.is_empty() && self.held.fault.take().is_some() {
            info!(
                stored = stored_late,
                dropped = self.held.dropped,
                "the outbox stores reports again; the reports held in memory are stored"
            );
            self.held.dropped = 0;
        }
        self.status
            .set("report.held_in_memory", self.held.reports.len() as u64);
        Ok(())
    }

    /// `--once`: waits for the report's acknowledgement.
    async fn finish_once(&self, wait: Duration) -> RunOutcome {
        match &self.publisher {
            Some((publisher, _)) if self.submitted => match publisher.flush(wait).await {
                FlushOutcome::Acknowledged => RunOutcome::Done,
                FlushOutcome::QueuedInOutbox => {
                    warn!(
                        wait_s = wait.as_secs(),
                        "the report was not acknowledged in time; it waits in the outbox for the next run"
                    );
                    RunOutcome::Queued
                }
            },
            _ => RunOutcome::Done,
        }
    }

    /// Stops everything this session started; what is unsent stays on disk.
    async fn shutdown(mut self) {
        // A last chance for reports held in memory; what the outbox still
        // cannot take is lost with the process, and said so.
        if let Err(error) = self.store_held(None).await {
            warn!(error = %format!("{error:#}"), "cannot store the reports held in memory");
        }
        if !self.held.reports.is_empty() {
            let ids: Vec<u64> = self.held.reports.iter().map(|(id, _)| *id).collect();
            warn!(report_ids = ?ids, "stopping with reports the outbox could not store; they are lost");
            self.status
                .add("report.dropped_unstored", self.held.reports.len() as u64);
            self.status.set("report.held_in_memory", 0);
        }
        if let Some((publisher, task)) = self.publisher.take() {
            publisher.shutdown().await;
            let _ = task.await;
        }
        self.siem.shutdown().await;
        self.findings.shutdown().await;
        if let Some(queue) = self.alarms.queue.take() {
            queue.shutdown().await;
        }
        if let Some(transport) = self.transport.take()
            && let AnyTransport::Mqtt(mqtt) = &*transport
        {
            mqtt.shutdown().await;
        }
        self.pipeline.finish(now_ms());
        // A flush with nothing buffered says nothing about the disk: only its
        // failure is noted.
        if let Err(error) = self.output.flush() {
            Session::written(&mut self.report_writes, &self.status, Err(error));
        }
        if let Err(error) = self.status.write(self.state.path(), now_ms()) {
            self.status_file_writes
                .failed(&self.status, &error, Some(&error));
        }
    }
}

/// Where alarm events go: the IoT topic over the transport and the
/// Greengrass local topic.
struct AlarmTopics {
    /// The durable path to the IoT alarm topic (`detection.alarmTopic`);
    /// `None` without a transport.
    queue: Option<crate::publish::alarms::AlarmQueue>,
    /// The shape of the events on the alarm topic (`detection.alarmFormat`).
    format: crate::detect::AlarmFormat,
    local_topic: String,
    ipc: Option<IpcClient>,
    status: Status,
}

impl AlarmTopics {
    /// Logs each event and publishes it in the background, so that an
    /// unreachable peer never delays sampling.
    fn deliver(&self, alarms: &[AlarmEvent]) {
        for alarm in alarms {
            let payload = alarm.to_json();
            warn!(alarm = %String::from_utf8_lossy(&payload), "detection");
            let on_topic = alarm.alarm_topic_payload(self.format);
            if on_topic.is_none() {
                self.status.add("detect.alarms_suppressed", 1);
            }
            if let (Some(queue), Some(payload)) = (&self.queue, on_topic) {
                queue.push(&payload);
            }
            if let Some(ipc) = &self.ipc {
                let ipc = ipc.clone();
                let topic = self.local_topic.clone();
                let status = self.status.clone();
                tokio::spawn(async move {
                    match ipc.publish_to_topic(&topic, &payload).await {
                        Ok(()) => status.add("detect.alarms_local", 1),
                        Err(error) => {
                            warn!(%topic, %error, "cannot publish an alarm event locally");
                            status.add("detect.alarm_local_errors", 1);
                        }
                    }
                });
            }
        }
    }
}

/// Opens the alarm outbox and starts its worker; an outbox that cannot be
/// opened (a read-only state directory) is logged, and the alarm topic then
/// gets nothing while the local topic and the SIEM path still do.
fn start_alarm_queue(
    transport: Arc<AnyTransport>,
    topic: String,
    state: &StateDir,
    status: &Status,
) -> Option<crate::publish::alarms::AlarmQueue> {
    use crate::publish::alarms::{AlarmQueue, LIMITS, OUTBOX_DIR};
    match Outbox::open(
        &state.path().join(OUTBOX_DIR),
        LIMITS,
        "detect.alarm_outbox",
        status.clone(),
    ) {
        Ok(outbox) => Some(AlarmQueue::start(transport, topic, outbox, status.clone())),
        Err(error) => {
            error!(%error, "cannot open the alarm outbox; alarm events do not reach the IoT topic");
            status.set_text("detect.alarm_outbox.storage", "not opened");
            None
        }
    }
}

/// Publishes on the transport in the background, so that an unreachable
/// peer never delays sampling; counts the outcome in `counters` (published,
/// failed) and logs a failure with `failure`.
fn publish_in_background(
    transport: &Arc<AnyTransport>,
    topic: &str,
    payload: Vec<u8>,
    status: &Status,
    counters: (&'static str, &'static str),
    failure: &'static str,
) {
    let transport = transport.clone();
    let topic = topic.to_owned();
    let status = status.clone();
    tokio::spawn(async move {
        match transport.publish(&topic, payload).await {
            Ok(()) => status.add(counters.0, 1),
            Err(error) => {
                warn!(%topic, %error, "{failure}");
                status.add(counters.1, 1);
            }
        }
    });
}

async fn next_update(updates: &mut Option<&mut ConfigurationUpdates>) -> Option<Vec<Vec<String>>> {
    match updates {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the configuration after an update event; `None` when it is invalid
/// (logged and counted) or unchanged.
async fn read_update(
    nucleus: Option<&Nucleus>,
    paths: &[Vec<String>],
    options: &RunOptions,
    current: &Config,
    status: &Status,
) -> Option<Config> {
    let nucleus = nucleus?;
    // Greengrass sends one event per changed key; a deployment that changes
    // several sends several (coalesced by the client). Let them settle, then
    // read the whole document.
    tokio::time::sleep(Duration::from_millis(200)).await;
    info!(key_paths = ?paths, "configuration update announced");
    let mut config = match nucleus.configuration().await {
        Ok(config) => config,
        Err(error) => {
            warn!(error = %format!("{error:#}"), "refused configuration update; keeping the running configuration");
            status.add("run.configuration_refused", 1);
            return None;
        }
    };
    options.overrides.apply(&mut config);
    if config == *current {
        return None;
    }
    if let Err(error) = Pipeline::check(&config) {
        warn!(error = %format!("{error:#}"), "refused configuration update; keeping the running configuration");
        status.add("run.configuration_refused", 1);
        return None;
    }
    Some(config)
}
