//! `run`: the long-running component.
//!
//! A *session* is the pipeline built from one configuration: collector,
//! plugin host, detector, NDJSON output, transport, Device Defender publisher
//! and Firehose sink. `run` keeps one session at a time. When Greengrass
//! announces a configuration update, the new document is parsed and checked
//! first; an invalid one is refused with a log line and the running session
//! goes on untouched. A valid one replaces the session: the old one is shut
//! down (its outboxes closed, nothing lost), the new one starts in the same
//! process. If the new one cannot start (a plugin directory that does not
//! exist, say), the old configuration is started again.
//!
//! Sampling: one tick per detection interval (10 s by default), or per report
//! interval when detection is off. Every tick collects, judges device
//! metrics, runs the plugins, judges custom metrics, and dispatches alarms at
//! once. A tick at or after the report deadline also builds a report, hands
//! it to the publisher's outbox and to Firehose. The publisher decides when
//! Device Defender may have it (300 s floor); `run` never waits for it except
//! with `--once`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::collect::Collector;
use crate::config::{Config, ConfigError};
use crate::detect::{AlarmEvent, Detector};
use crate::output::NdjsonOutput;
use crate::pipeline::{NetworkState, RUN_NETWORK_STATE, log_collect_problems, thing_name};
use crate::plugin::{PluginHost, Processed};
use crate::publish::defender::{DefenderHandle, DefenderOptions, DefenderPublisher, FlushOutcome};
use crate::publish::ipc::{ComponentState, IpcClient};
use crate::publish::mqtt::MqttTransport;
use crate::publish::outbox::Outbox;
use crate::publish::{Message, Transport, TransportError, TransportKind};
use crate::report;
use crate::sample::{NetworkStats, Sample};
use crate::state::{StateDir, now_ms};
use crate::status::Status;

/// The `source` prefix of alerts raised by local detection
/// (`detect/<profile>`).
const DETECT_ALERT_SOURCE: &str = "detect/";

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
}

/// Reads the component configuration from the nucleus: the whole document,
/// without the recipe's `accessControl` (which is the nucleus's business,
/// not a setting of ours).
pub async fn greengrass_configuration(ipc: &IpcClient) -> anyhow::Result<Config> {
    let mut value = ipc
        .get_configuration(&[])
        .await
        .context("reading the component configuration from the Greengrass nucleus")?;
    if let Some(map) = value.as_object_mut() {
        map.remove("accessControl");
    }
    Ok(Config::from_value(
        value,
        "the Greengrass component configuration",
    )?)
}

/// Runs until SIGTERM/SIGINT (or, with `once`, until one report was handled).
pub async fn run(
    config: Config,
    ipc: Option<IpcClient>,
    status: Status,
    options: RunOptions,
) -> anyhow::Result<RunOutcome> {
    let mut updates = match (&ipc, options.live_configuration && !options.once) {
        (Some(ipc), true) => Some(
            ipc.subscribe_to_configuration_update(&[])
                .await
                .context("subscribing to configuration updates from the Greengrass nucleus")?,
        ),
        _ => None,
    };
    let mut stop = Box::pin(crate::signals::stopped());
    let mut config = config;
    // The configuration to go back to when an update cannot start.
    let mut previous: Option<Config> = None;
    let mut last_report: Option<Instant> = None;
    loop {
        let mut session = match Session::start(&config, ipc.clone(), status.clone()).await {
            Ok(session) => session,
            Err(error) => match previous.take() {
                Some(old) => {
                    warn!(error = %format!("{error:#}"), "refused configuration update; going back to the previous configuration");
                    status.add("run.configuration_refused", 1);
                    config = old;
                    continue;
                }
                None => {
                    if let Some(ipc) = &ipc {
                        let _ = ipc.update_state(ComponentState::Errored).await;
                    }
                    return Err(error);
                }
            },
        };
        if previous.take().is_some() {
            info!("applied configuration update");
            status.add("run.configuration_updates", 1);
        }
        if let Some(ipc) = &ipc
            && let Err(error) = ipc.update_state(ComponentState::Running).await
        {
            warn!(%error, "cannot report the RUNNING state to the nucleus");
        }
        session.last_report = last_report;
        let ended = session
            .drive(&mut stop, updates.as_mut(), ipc.as_ref(), &options, &config)
            .await;
        last_report = session.last_report;
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
                if let Some(ipc) = &ipc {
                    let _ = ipc.update_state(ComponentState::Errored).await;
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

#[cfg(feature = "firehose")]
type Firehose = Option<(crate::publish::firehose::FirehoseHandle, JoinHandle<()>)>;
#[cfg(not(feature = "firehose"))]
type Firehose = Option<((), JoinHandle<()>)>;

/// The pipeline built from one configuration.
struct Session {
    state: StateDir,
    thing: String,
    status: Status,
    collector: Collector,
    plugins: Option<PluginHost>,
    detector: Detector,
    output: NdjsonOutput,
    transport: Option<Arc<AnyTransport>>,
    publisher: Option<(DefenderHandle, JoinHandle<()>)>,
    firehose: Firehose,
    ipc: Option<IpcClient>,
    network: NetworkState,
    format: report::Format,
    report_budget: usize,
    report_every: Duration,
    tick_every: Duration,
    last_report: Option<Instant>,
    alarm_topic: String,
    alarm_format: crate::detect::AlarmFormat,
    local_topic: String,
    alarms_to_firehose: bool,
    /// Whether the last `--once` report went to the publisher.
    submitted: bool,
}

impl Session {
    /// Checks a configuration the way `start` would, without starting
    /// anything: for refusing an update before the running session stops.
    fn probe(config: &Config) -> anyhow::Result<()> {
        thing_name(config)?;
        if let Some(dir) = &config.plugins.dir {
            anyhow::ensure!(
                dir.is_dir(),
                "key `plugins.dir`: {} is not a directory",
                dir.display()
            );
        }
        Detector::new(
            &config.detection,
            &config.state_dir,
            &Status::new(),
            Duration::from_secs(config.report.interval_seconds),
        )
        .context("key `detection`")?;
        Ok(())
    }

    async fn start(
        config: &Config,
        ipc: Option<IpcClient>,
        status: Status,
    ) -> anyhow::Result<Session> {
        let state = StateDir::open(&config.state_dir)?;
        let thing = thing_name(config)?;
        status.set_text("run.thing", thing.clone());
        let collector = Collector::new(&config.collect);
        let plugins = match config.plugins.dir {
            // Loading compiles and instantiates plugins, and wasmtime-wasi
            // drives its own futures to completion there: it must run where
            // blocking is allowed, not on an async worker.
            Some(_) => {
                let cache = state.subdir("plugin-cache")?;
                let host = tokio::task::block_in_place(|| {
                    PluginHost::start(&config.plugins, &cache, status.clone())
                })?;
                Some(host)
            }
            None => None,
        };
        let detector = Detector::new(
            &config.detection,
            state.path(),
            &status,
            Duration::from_secs(config.report.interval_seconds),
        )
        .context("loading the security profiles (detection)")?;
        let output = NdjsonOutput::open(config.output.ndjson.as_deref())?;
        let network: NetworkState = state.load(RUN_NETWORK_STATE).unwrap_or_default();

        let kind = config
            .publish
            .transport
            .resolve(ipc.is_some(), &config.publish);
        let transport = match kind {
            TransportKind::Ipc => match &ipc {
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
        let report_budget = match (&ipc, kind) {
            (Some(ipc), TransportKind::Ipc) => {
                config.report.max_bytes.min(ipc.max_publish_payload(&topic))
            }
            (_, TransportKind::Mqtt) => config
                .report
                .max_bytes
                .min(crate::publish::mqtt::max_publish_payload(&topic)),
            _ => config.report.max_bytes,
        };
        if report_budget < config.report.max_bytes {
            info!(
                budget = report_budget,
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
                    // Superseded reports lose nothing: every sample already
                    // went to the NDJSON output and, when configured, to
                    // Firehose when it was collected.
                    on_superseded: None,
                };
                Some(
                    DefenderPublisher::start(transport.clone(), outbox, options, status.clone())
                        .await?,
                )
            }
            _ => None,
        };
        let firehose = start_firehose(config, &state, &status).await;
        let report_every = Duration::from_secs(config.report.interval_seconds);
        let tick_every = if detector.is_active() {
            detector.interval().min(report_every)
        } else {
            report_every
        };
        info!(%thing, transport = ?kind, report_interval_s = report_every.as_secs(), sample_interval_s = tick_every.as_secs_f64(), "defender-edge running");
        Ok(Session {
            alarm_topic: crate::detect::alarm_topic(&config.detection, &thing),
            alarm_format: config.detection.alarm_format,
            local_topic: config.detection.local_topic.clone(),
            alarms_to_firehose: config.detection.send_to_firehose,
            state,
            thing,
            status,
            collector,
            plugins,
            detector,
            output,
            transport,
            publisher,
            firehose,
            ipc,
            network,
            format,
            report_budget,
            report_every,
            tick_every,
            last_report: None,
            submitted: false,
        })
    }

    /// Ticks until stopped, `--once` is done, or a configuration update
    /// arrives that parses and passes its checks.
    async fn drive(
        &mut self,
        stop: &mut std::pin::Pin<Box<impl std::future::Future<Output = &'static str>>>,
        mut updates: Option<&mut mpsc::Receiver<Vec<String>>>,
        ipc: Option<&IpcClient>,
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
                    let Some(path) = changed else {
                        warn!("the nucleus ended the configuration subscription; updates are no longer followed");
                        updates = None;
                        continue;
                    };
                    if let Some(new) = read_update(ipc, &path, options, current, &self.status).await {
                        return Ok(Ended::Reconfigure(Box::new(new)));
                    }
                    continue;
                }
            }
            let reported = self.tick().await?;
            if let Err(error) = self.status.write(self.state.path(), now_ms()) {
                warn!(%error, "cannot write the status file");
            }
            if options.once && reported {
                return Ok(Ended::Once);
            }
        }
    }

    /// One sample through the pipeline; returns whether a report was built.
    async fn tick(&mut self) -> anyhow::Result<bool> {
        let now = Instant::now();
        let report_due = self.last_report.is_none_or(|last| {
            now.duration_since(last) + Duration::from_millis(50) >= self.report_every
        });
        let collected =
            self.collector
                .sample(&self.thing, now_ms(), self.network.counters.as_ref());
        log_collect_problems(&collected, &self.status);
        self.status.add("collect.samples", 1);
        self.network.absorb(collected.sample.network_stats);
        self.network.counters = Some(collected.counters);
        let mut sample: Sample = collected.sample;
        let window = if report_due {
            self.last_report = Some(now);
            Some(self.network.take_for_report())
        } else {
            None
        };
        let mut alarms = self
            .detector
            .evaluate_device(&sample, sample.timestamp_ms, report_due);
        sample
            .alerts
            .extend(alarms.iter().map(AlarmEvent::to_alert));
        let mut sample = match &self.plugins {
            Some(host) => match host.process_async(sample).await {
                Processed::Pass(changed) => Some(changed),
                Processed::Held { plugin, reason } => {
                    warn!(%plugin, %reason, "sample held back by a fail-closed plugin");
                    self.status.add("report.held", 1);
                    None
                }
                Processed::Dropped { plugin } => {
                    info!(%plugin, "sample dropped by plugin");
                    self.status.add("report.dropped_by_plugin", 1);
                    None
                }
            },
            None => Some(sample),
        };
        if let Some(sample) = &mut sample {
            let custom = self
                .detector
                .evaluate_custom(sample, sample.timestamp_ms, report_due);
            sample
                .alerts
                .extend(custom.iter().map(AlarmEvent::to_alert));
            alarms.extend(custom);
        }
        if let Err(error) = self.detector.save(now_ms(), false) {
            warn!(%error, "cannot save the detection statistics");
        }
        self.dispatch_alarms(&alarms);
        let reported = self.report(sample, window).await;
        if let Err(error) = self.state.save(RUN_NETWORK_STATE, &self.network) {
            warn!(%error, "cannot persist network counters");
        }
        reported
    }

    /// Builds and hands on the report of a report tick; on other ticks sends
    /// alerts to the SIEM path. Returns whether this was a report tick.
    async fn report(
        &mut self,
        sample: Option<Sample>,
        window: Option<Option<NetworkStats>>,
    ) -> anyhow::Result<bool> {
        let report_due = window.is_some();

        let Some(mut sample) = sample else {
            // No report this time: the window's traffic goes to the next one.
            if let Some(window) = window {
                self.network.give_back(window);
            }
            return Ok(report_due);
        };
        let Some(window) = window else {
            // Not a report tick: alarms and plugin alerts go to the SIEM path
            // at once, with the sample that raised them.
            if !sample.alerts.is_empty() {
                let id = self.state.next_report_id(now_ms())?;
                self.to_firehose(&sample, id, false).await;
            }
            return Ok(false);
        };
        // The report carries the traffic of its whole window; a plugin that
        // removed network_stats keeps them out.
        if sample.network_stats.is_some() {
            sample.network_stats = window;
        }
        let id = self.state.next_report_id(now_ms())?;
        self.to_firehose(&sample, id, true).await;
        match report::prepare(&sample, id, self.format, self.report_budget) {
            Ok(prepared) => {
                self.status.add("report.built", 1);
                let trimmed = prepared.trimmed.total();
                if trimmed > 0 {
                    warn!(report_id = id, trimmed = ?prepared.trimmed, budget = self.report_budget, "report over budget; entries trimmed");
                    self.status.add("report.trimmed_entries", trimmed);
                }
                // Outbox first: once a report is anywhere, it is durable.
                let text = prepared.report;
                if let Some((publisher, _)) = &self.publisher {
                    publisher
                        .submit(id, prepared.bytes)
                        .await
                        .with_context(|| format!("storing report {id} in the outbox"))?;
                    self.submitted = true;
                }
                self.output.write(&text, self.format)?;
            }
            Err(error) => {
                error!(report_id = id, %error, "report failed validation; not sent");
                self.status.add("report.validation_failures", 1);
                self.network.give_back(window);
            }
        }
        Ok(true)
    }

    #[cfg(feature = "firehose")]
    async fn to_firehose(&self, sample: &Sample, id: u64, report: bool) {
        if let Some((firehose, _)) = &self.firehose {
            let without_alarms;
            let sample = if self.alarms_to_firehose {
                sample
            } else {
                let mut copy = sample.clone();
                copy.alerts
                    .retain(|a| !a.source.starts_with(DETECT_ALERT_SOURCE));
                without_alarms = copy;
                &without_alarms
            };
            if sample.alerts.is_empty() && !report {
                return;
            }
            if let Err(error) = firehose.submit(sample, id).await {
                error!(%error, sample_id = id, "cannot store events for Firehose");
                self.status.add("firehose.submit_errors", 1);
            }
        }
    }

    #[cfg(not(feature = "firehose"))]
    async fn to_firehose(&self, _sample: &Sample, _id: u64, _report: bool) {}

    /// Sends alarm events to the IoT topic and the local topic, in the
    /// background so that an unreachable peer never delays sampling.
    fn dispatch_alarms(&self, alarms: &[AlarmEvent]) {
        for alarm in alarms {
            let payload = alarm.to_json();
            warn!(alarm = %String::from_utf8_lossy(&payload), "detection");
            let on_topic = alarm.alarm_topic_payload(self.alarm_format);
            if on_topic.is_none() {
                self.status.add("detect.alarms_suppressed", 1);
            }
            if let (Some(transport), Some(payload)) = (&self.transport, on_topic) {
                let transport = transport.clone();
                let topic = self.alarm_topic.clone();
                let status = self.status.clone();
                tokio::spawn(async move {
                    match transport.publish(&topic, payload).await {
                        Ok(()) => status.add("detect.alarms_published", 1),
                        Err(error) => {
                            warn!(%topic, %error, "cannot publish an alarm event");
                            status.add("detect.alarm_publish_errors", 1);
                        }
                    }
                });
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
        if let Some((publisher, task)) = self.publisher.take() {
            publisher.shutdown().await;
            let _ = task.await;
        }
        #[cfg(feature = "firehose")]
        if let Some((firehose, task)) = self.firehose.take() {
            firehose.shutdown().await;
            let _ = task.await;
        }
        if let Some(transport) = self.transport.take()
            && let AnyTransport::Mqtt(mqtt) = &*transport
        {
            mqtt.shutdown().await;
        }
        if let Err(error) = self.detector.save(now_ms(), true) {
            warn!(%error, "cannot save the detection statistics");
        }
        if let Err(error) = self.output.flush() {
            warn!(%error, "cannot flush the NDJSON output");
        }
        if let Err(error) = self.status.write(self.state.path(), now_ms()) {
            warn!(%error, "cannot write the status file");
        }
    }
}

#[cfg(feature = "firehose")]
async fn start_firehose(config: &Config, state: &StateDir, status: &Status) -> Firehose {
    if !config.publish.firehose.enabled {
        return None;
    }
    match crate::publish::firehose::FirehoseSink::start(
        &config.publish.firehose,
        state.path(),
        status.clone(),
    )
    .await
    {
        Ok(sink) => Some(sink),
        Err(error) => {
            // Reports to Device Defender go on; SIEM events are not collected
            // until the next start or configuration update.
            error!(%error, "Firehose sink not started; SIEM events are not sent");
            status.set_text("firehose.state", format!("not started: {error}"));
            None
        }
    }
}

#[cfg(not(feature = "firehose"))]
async fn start_firehose(config: &Config, _state: &StateDir, status: &Status) -> Firehose {
    if config.publish.firehose.enabled {
        error!(
            "publish.firehose.enabled is set, but this build has no Firehose support (cargo feature `firehose`)"
        );
        status.set_text("firehose.state", "not built in");
    }
    None
}

async fn next_update(
    updates: &mut Option<&mut mpsc::Receiver<Vec<String>>>,
) -> Option<Vec<String>> {
    match updates {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the configuration after an update event; `None` when it is invalid
/// (logged and counted) or unchanged.
async fn read_update(
    ipc: Option<&IpcClient>,
    path: &[String],
    options: &RunOptions,
    current: &Config,
    status: &Status,
) -> Option<Config> {
    let ipc = ipc?;
    // Greengrass sends one event per changed key; a deployment that changes
    // several sends several. Let them settle, then read the whole document.
    tokio::time::sleep(Duration::from_millis(200)).await;
    info!(key_path = ?path, "configuration update announced");
    let mut config = match greengrass_configuration(ipc).await {
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
    if let Err(error) = Session::probe(&config) {
        warn!(error = %format!("{error:#}"), "refused configuration update; keeping the running configuration");
        status.add("run.configuration_refused", 1);
        return None;
    }
    Some(config)
}
