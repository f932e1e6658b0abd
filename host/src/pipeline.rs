//! The pipeline: one sample of the device through every stage, in order:
//! collect → detect (device metrics) → plugins → detect (custom metrics) →
//! report. [`Pipeline::step`] is the only place that calls the stages, for
//! the `collect` command (once) and for `run` (every tick).
//!
//! The pipeline is synchronous and opens no connection: it reads the proc
//! tree, runs the plugins, and keeps what must outlive the process (the
//! network window, report ids, detection statistics) in the state
//! directory. Everything that leaves the process is the caller's: `collect`
//! prints the report, `run` hands a [`Tick`]'s report to its outbox, its
//! sample to the SIEM path and its alarms to their topics. So a tick can be
//! tested with a proc tree and a temporary directory, without a device, a
//! peer or an async runtime.

use std::time::Duration;

use anyhow::Context;

use crate::changes::{Change, ChangeTracker};
use crate::collect::{Collected, Collector, Counters};
use crate::config::Config;
use crate::detect::{AlarmEvent, Detector};
use crate::plugin::{PluginHost, Processed};
use crate::report::{self, Format, Prepared, ValidationError};
use crate::sample::{NetworkStats, Sample};
use crate::state::StateDir;
use crate::status::Status;
use crate::status::StorageWatch;

/// The state file holding `collect`'s network baseline. `run` keeps its own
/// (see [`RUN_NETWORK_STATE`]), so a `collect` by hand never shifts the
/// deltas that `run` reports.
const COLLECT_BASELINE: &str = "net-collect.json";

/// `run`'s network window: the last sample's counters and the traffic summed
/// since the last report.
const RUN_NETWORK_STATE: &str = "net-run.json";

/// How the traffic of a report is counted, and where it is kept between
/// processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// `collect`: the traffic since the previous `collect` (its counters are
    /// kept in `net-collect.json`), or since the first of two samples.
    SincePreviousCollect,
    /// `run`: the traffic of every sample since the last report, kept with
    /// the last counters in `net-run.json` after every sample, so that
    /// neither a restart nor a sample without a report loses any.
    SinceLastReport,
}

/// The stages built from one configuration.
#[derive(Debug)]
pub struct Pipeline {
    thing: String,
    state: StateDir,
    status: Status,
    collector: Collector,
    detector: Detector,
    plugins: Option<PluginHost>,
    window: Window,
    network: NetworkWindow,
    format: Format,
    report_budget: usize,
    /// `net-run.json` is written at most this often, unless a report
    /// closed the window ([`Pipeline::persist`]).
    network_saves: Throttle,
    /// A report closed the network window since the last save.
    window_closed: bool,
    /// `run`'s change events (listeners, destinations); `None` for
    /// `collect`.
    changes: Option<ChangeTracker>,
    changes_writes: StorageWatch,
    /// Whether `net-run.json` and `detect-state.json` could be written, said
    /// once per change (a full or read-only disk costs a delta or a baseline
    /// after a restart, never a sample).
    network_writes: StorageWatch,
    detection_writes: StorageWatch,
}

/// What one [`Pipeline::step`] made of a sample.
#[derive(Debug)]
pub struct Tick {
    /// Alarms and clears of local detection: device metrics first, then
    /// custom metrics. Also appended to the sample's alerts.
    pub alarms: Vec<AlarmEvent>,
    /// What changed since the previous sample that the plugins passed on
    /// (`run` only; [`crate::changes`]).
    pub changes: Vec<Change>,
    pub outcome: Outcome,
}

/// What became of the sample.
#[derive(Debug)]
pub enum Outcome {
    /// The sample went through the plugins.
    Passed(Box<Passed>),
    /// A fail-closed plugin failed: the sample goes nowhere.
    Held { plugin: String, reason: String },
    /// A plugin asked for no report of this sample.
    Dropped { plugin: String },
}

/// A sample that went through the plugins, and its report.
#[derive(Debug)]
pub struct Passed {
    /// The sample after the plugins, with the alerts of detection and
    /// plugins. On a report tick its `network_stats` are the traffic of the
    /// whole report window.
    pub sample: Sample,
    /// The id the sample leaves under, its report's id: on a report tick,
    /// and on other ticks when it carries alerts for the SIEM path.
    pub id: Option<u64>,
    /// On a report tick: the report, or the rule it breaks.
    pub report: Option<Result<Prepared, ValidationError>>,
}

impl Pipeline {
    /// Builds the stages: the collector, the detector (profiles read now,
    /// statistics restored from the state directory), the plugins (loaded
    /// and compiled now, which blocks) and the network window of `window`.
    pub fn start(
        config: &Config,
        state: StateDir,
        status: Status,
        window: Window,
    ) -> anyhow::Result<Pipeline> {
        let thing = thing_name(config)?;
        crate::collect::check_proc_root(&config.collect.proc_root)?;
        let plugins = match config.plugins.dir {
            Some(_) => Some(PluginHost::start(
                &config.plugins,
                &state.subdir("plugin-cache")?,
                status.clone(),
            )?),
            None => None,
        };
        let detector = Detector::new(
            &config.detection,
            state.path(),
            &status,
            Duration::from_secs(config.report.interval_seconds),
        )
        .context("loading the security profiles (detection)")?;
        let network = match window {
            Window::SincePreviousCollect => {
                NetworkWindow::open(state.load::<Counters>(COLLECT_BASELINE))
            }
            Window::SinceLastReport => state.load(RUN_NETWORK_STATE).unwrap_or_default(),
        };
        Ok(Pipeline {
            collector: Collector::new(&config.collect),
            thing,
            status,
            detector,
            plugins,
            window,
            network,
            format: config.report.format,
            report_budget: config.report.max_bytes,
            network_saves: Throttle::new(config.state_write_seconds),
            window_closed: false,
            network_writes: StorageWatch::new(
                "state.network",
                "net-run.json",
                "the traffic owed is kept in memory; a restart now would lose it",
            ),
            detection_writes: StorageWatch::new(
                "detect.state_file",
                "detect-state.json",
                "the learned baselines are kept in memory; a restart now would lose them",
            ),
            changes_writes: StorageWatch::new(
                "changes.state_file",
                "changes.json",
                "what was seen is kept in memory; a restart now would announce its changes again",
            ),
            changes: (window == Window::SinceLastReport).then(|| ChangeTracker::load(&state)),
            state,
        })
    }

    /// Checks a configuration the way [`Pipeline::start`] would, without
    /// loading anything: for refusing a configuration update before the
    /// running pipeline stops.
    pub fn check(config: &Config) -> anyhow::Result<()> {
        thing_name(config)?;
        crate::collect::check_proc_root(&config.collect.proc_root)?;
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

    /// The thing the samples belong to.
    pub fn thing(&self) -> &str {
        &self.thing
    }

    /// The detection interval, when any behavior is judged on the device.
    pub fn detection_interval(&self) -> Option<Duration> {
        self.detector.is_active().then(|| self.detector.interval())
    }

    /// Lowers the report's size budget to what one message of the transport
    /// carries.
    pub fn limit_report_bytes(&mut self, bytes: usize) {
        self.report_budget = self.report_budget.min(bytes);
    }

    /// The report's size budget in bytes.
    pub fn report_budget(&self) -> usize {
        self.report_budget
    }

    /// Takes a first sample only for its counters, so that the next step's
    /// traffic is that of the time in between (`collect --delta-window`).
    pub fn prime(&mut self, now_ms: u64) {
        let first = self.collector.sample(&self.thing, now_ms, None);
        self.network.counters = Some(first.counters);
    }

    /// One sample through every stage. `report_due`: whether this sample
    /// makes a report (its traffic then covers the whole window). Never
    /// fails: a report id that cannot be persisted comes from memory
    /// ([`StateDir::next_report_id`]).
    pub fn step(&mut self, now_ms: u64, report_due: bool) -> Tick {
        let collected = self
            .collector
            .sample(&self.thing, now_ms, self.network.counters.as_ref());
        log_collect_problems(&collected, &self.status);
        self.status.add("collect.samples", 1);
        self.network
            .absorb(collected.counters, collected.sample.network_stats);
        let owners = collected.owners;
        let mut sample = collected.sample;

        let mut alarms = self.detector.evaluate_device(&sample, now_ms, report_due);
        if let Some(owners) = &owners {
            for alarm in &mut alarms {
                crate::changes::name_processes(alarm, &sample, owners);
            }
        }
        sample
            .alerts
            .extend(alarms.iter().map(AlarmEvent::to_alert));
        let mut sample = match self.run_plugins(sample) {
            Processed::Pass(sample) => sample,
            Processed::Held { plugin, reason } => {
                return Tick {
                    alarms,
                    changes: Vec::new(),
                    outcome: Outcome::Held { plugin, reason },
                };
            }
            Processed::Dropped { plugin } => {
                return Tick {
                    alarms,
                    changes: Vec::new(),
                    outcome: Outcome::Dropped { plugin },
                };
            }
        };
        let changes = match &mut self.changes {
            Some(tracker) => tracker.observe(&sample, owners.as_ref()),
            None => Vec::new(),
        };
        let custom = self.detector.evaluate_custom(&sample, now_ms, report_due);
        sample
            .alerts
            .extend(custom.iter().map(AlarmEvent::to_alert));
        alarms.extend(custom);

        if !report_due {
            // Alarms and plugin alerts go to the SIEM path at once, with the
            // sample that raised them and an id of their own.
            let id = match sample.alerts.is_empty() {
                true => None,
                false => Some(self.state.next_report_id(now_ms)),
            };
            return Tick {
                alarms,
                changes,
                outcome: Outcome::Passed(Box::new(Passed {
                    sample,
                    id,
                    report: None,
                })),
            };
        }
        // The report carries the traffic of its whole window; a plugin that
        // removed network_stats keeps them out.
        if sample.network_stats.is_some() {
            sample.network_stats = self.network.traffic();
        }
        let id = self.state.next_report_id(now_ms);
        let report = report::prepare(&sample, id, self.format, self.report_budget);
        if let Ok(prepared) = &report {
            // A report that was not built leaves the window open, so its
            // traffic goes to the next one rather than vanishing.
            self.network.close();
            self.window_closed = true;
            self.status.add("report.built", 1);
            let trimmed = prepared.trimmed.total();
            if trimmed > 0 {
                tracing::warn!(report_id = id, trimmed = ?prepared.trimmed, budget = self.report_budget, "report over budget; entries trimmed");
                self.status.add("report.trimmed_entries", trimmed);
            }
        }
        Tick {
            alarms,
            changes,
            outcome: Outcome::Passed(Box::new(Passed {
                sample,
                id: Some(id),
                report: Some(report),
            })),
        }
    }

    /// Writes what must outlive the process: the network window and, when
    /// `stateSaveSeconds` passed, the detection statistics. Failures are
    /// logged; they cost a delta or a baseline after a restart, never a
    /// sample.
    ///
    /// The window (`net-run.json`: the last counters and the traffic summed
    /// since the last report) is written when a report closed it, and else
    /// at most every `stateWriteSeconds` (SD wear: it was every sample).
    /// The traffic owed stays exact across `kill -9`: the file always holds
    /// counters and a sum taken together, so after a restart the first
    /// delta (today's counters minus the saved ones) covers exactly what the
    /// sum lacks, however old the file; and because every report rewrites
    /// it, a restart never counts traffic a report already carried. Only a
    /// counter reset (reboot) between the save and the restart loses the
    /// window, as it always did (the report then omits network_stats).
    pub fn persist(&mut self, now_ms: u64) {
        match self.window {
            Window::SincePreviousCollect => {
                let saved = match &self.network.counters {
                    Some(counters) => self.state.save(COLLECT_BASELINE, counters),
                    None => Ok(()),
                };
                if let Err(error) = saved {
                    tracing::warn!(%error, "cannot save the network baseline; the next collect reports no network_stats");
                }
            }
            Window::SinceLastReport => {
                self.save_detection(now_ms, false);
                if self.window_closed || self.network_saves.due(now_ms) {
                    self.save_changes();
                    self.save_network(now_ms);
                }
            }
        }
    }

    /// Saves the detection statistics and the network window whatever
    /// their age, at shutdown.
    pub fn finish(&mut self, now_ms: u64) {
        if self.window == Window::SinceLastReport {
            self.save_detection(now_ms, true);
            self.save_changes();
            self.save_network(now_ms);
        }
    }

    /// Writes what the change events have seen, when it changed; a failure
    /// costs repeated change events after a restart, never a sample.
    fn save_changes(&mut self) {
        let Some(tracker) = &mut self.changes else {
            return;
        };
        match tracker.save(&self.state) {
            Ok(()) => self.changes_writes.worked(&self.status),
            Err(error) => {
                let io = crate::status::io_cause(&error);
                self.changes_writes.failed(&self.status, &error, io);
            }
        }
    }

    fn save_detection(&mut self, now_ms: u64, force: bool) {
        match self.detector.save(now_ms, force) {
            Ok(()) => self.detection_writes.worked(&self.status),
            Err(error) => {
                let io = crate::status::io_cause(&error);
                self.detection_writes.failed(&self.status, &error, io);
            }
        }
    }

    fn save_network(&mut self, now_ms: u64) {
        match self.state.save(RUN_NETWORK_STATE, &self.network) {
            Ok(()) => {
                self.window_closed = false;
                self.network_saves.done(now_ms);
                self.network_writes.worked(&self.status);
            }
            Err(error) => {
                let io = crate::status::io_cause(&error);
                self.network_writes.failed(&self.status, &error, io);
            }
        }
    }

    fn run_plugins(&self, sample: Sample) -> Processed {
        let Some(host) = &self.plugins else {
            return Processed::Pass(sample);
        };
        // `process` never panics by contract; should it all the same, the
        // sample goes on unchanged rather than taking the pipeline down.
        let fallback = sample.clone();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host.process(sample))) {
            Ok(processed) => processed,
            Err(_) => {
                tracing::error!("plugin processing panicked; passing the sample on unchanged");
                Processed::Pass(fallback)
            }
        }
    }
}

/// The report of this machine for the `collect` command: the encoded bytes.
/// Local detection judges the sample too when profiles are configured, with
/// the baselines `run` saved; its alarms are logged, and nothing of it is
/// written back, so a `collect` by hand never shifts what `run` learned.
pub fn collect_once(
    config: &Config,
    format: Format,
    delta_window: Option<Duration>,
) -> anyhow::Result<Vec<u8>> {
    let (thing, passed) = collect_passed(config, format, delta_window)?;
    let report = passed
        .report
        .context("a step with a report due returned no report")?;
    let prepared = report.with_context(|| format!("the report for {thing} is invalid"))?;
    Ok(prepared.bytes)
}

/// The sample of this machine as the pipeline ends with it, for `collect
/// --format sample`: after the plugins, with their annotations and alerts
/// and detection's. The same step as [`collect_once`], so the report of
/// the sample must be valid too.
pub fn collect_sample(config: &Config, delta_window: Option<Duration>) -> anyhow::Result<Sample> {
    let (_, passed) = collect_passed(config, config.report.format, delta_window)?;
    Ok(passed.sample)
}

fn collect_passed(
    config: &Config,
    format: Format,
    delta_window: Option<Duration>,
) -> anyhow::Result<(String, Box<Passed>)> {
    let state = StateDir::open(&config.state_dir)?;
    let mut config = config.clone();
    config.report.format = format;
    let mut pipeline =
        Pipeline::start(&config, state, Status::new(), Window::SincePreviousCollect)?;
    if let Some(window) = delta_window {
        pipeline.prime(crate::state::now_ms());
        std::thread::sleep(window);
    }
    let tick = pipeline.step(crate::state::now_ms(), true);
    pipeline.persist(crate::state::now_ms());
    for alarm in &tick.alarms {
        tracing::warn!(alarm = %String::from_utf8_lossy(&alarm.to_json()), "detection");
    }
    match tick.outcome {
        Outcome::Passed(passed) => Ok((pipeline.thing().to_owned(), passed)),
        Outcome::Held { plugin, reason } => anyhow::bail!(
            "plugin {plugin} failed and its policy is fail-closed, so no report is printed: {reason}"
        ),
        Outcome::Dropped { plugin } => anyhow::bail!("plugin {plugin} dropped this report"),
    }
}

/// The thing name: configuration, then `AWS_IOT_THING_NAME` (set by
/// Greengrass), then the host name.
pub fn thing_name(config: &Config) -> anyhow::Result<String> {
    let name = match &config.thing_name {
        Some(name) => name.clone(),
        None => match std::env::var("AWS_IOT_THING_NAME") {
            Ok(name) if !name.is_empty() => name,
            _ => host_name().context(
                "no thing name configured (thingName, AWS_IOT_THING_NAME) and no host name",
            )?,
        },
    };
    report::validate::thing_name(&name).with_context(|| format!("thing name {name:?}"))?;
    Ok(name)
}

fn host_name() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and gethostname writes
    // at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    anyhow::ensure!(
        rc == 0,
        "gethostname failed: {}",
        std::io::Error::last_os_error()
    );
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn log_collect_problems(collected: &Collected, status: &Status) {
    for warning in &collected.warnings {
        tracing::warn!(%warning, "partial sample");
    }
    if collected.malformed_lines > 0 {
        tracing::warn!(
            lines = collected.malformed_lines,
            "skipped malformed proc lines"
        );
        status.add("collect.malformed_lines", collected.malformed_lines);
    }
    status.add("collect.warnings", collected.warnings.len() as u64);
    if collected.unresolved_addresses > 0 {
        tracing::debug!(
            sockets = collected.unresolved_addresses,
            "sockets bound to an address of no known interface"
        );
        status.add(
            "collect.unresolved_addresses",
            collected.unresolved_addresses,
        );
    }
}

/// At most one write per period: due when nothing was written yet, or the
/// period passed since the last write (a clock stepped back counts as due).
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    every_ms: u64,
    last_ms: Option<u64>,
}

impl Throttle {
    pub fn new(every_seconds: u64) -> Throttle {
        Throttle {
            every_ms: every_seconds.saturating_mul(1000),
            last_ms: None,
        }
    }

    pub fn due(&self, now_ms: u64) -> bool {
        match self.last_ms {
            None => true,
            Some(last) => now_ms < last || now_ms - last >= self.every_ms,
        }
    }

    pub fn done(&mut self, now_ms: u64) {
        self.last_ms = Some(now_ms);
    }

    /// Makes the next `due` true whatever the time: for a change worth
    /// writing at once.
    pub fn expire(&mut self) {
        self.last_ms = None;
    }
}

/// The network side of the pipeline: the counters of the last sample, the
/// baseline of the next delta, and the traffic owed to the next report.
/// Persisted as `net-run.json` by `run`; the field names are that file's.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct NetworkWindow {
    counters: Option<Counters>,
    /// Traffic since the last report; `None` once any sample in the window
    /// had no honest delta (reset, reboot), so the report says nothing
    /// rather than a partial sum.
    since_report: Option<NetworkStats>,
    /// False until the first delta after a report, so the first report after
    /// a fresh start omits network_stats.
    window_valid: bool,
}

impl NetworkWindow {
    /// A window that is honest from its first delta on (`collect`: the
    /// report carries the delta against `counters`, if there is one).
    fn open(counters: Option<Counters>) -> NetworkWindow {
        NetworkWindow {
            counters,
            since_report: Some(NetworkStats::default()),
            window_valid: true,
        }
    }

    /// Adds a sample: its counters become the next baseline, its delta
    /// joins the window (no delta spoils the window).
    fn absorb(&mut self, counters: Counters, delta: Option<NetworkStats>) {
        self.counters = Some(counters);
        match (delta, self.since_report) {
            (Some(d), Some(sum)) if self.window_valid => self.since_report = Some(sum.plus(d)),
            _ => {
                self.since_report = None;
                self.window_valid = false;
            }
        }
    }

    /// The traffic of the window so far; `None` when it is not honest.
    fn traffic(&self) -> Option<NetworkStats> {
        self.since_report.filter(|_| self.window_valid)
    }

    /// A report carried the window's traffic: the next window starts now.
    fn close(&mut self) {
        self.since_report = Some(NetworkStats::default());
        self.window_valid = true;
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Report ids continue from here whatever the clock (see
    /// tests/integration/golden.rs, whose files these tests share).
    const SEED: u64 = 4_000_000_000_000;
    const T0: u64 = 1_767_225_600_000;

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(path)
    }

    /// A state directory and a proc root that is a link the test points at
    /// one captured tree or another between steps.
    struct Device {
        dir: tempfile::TempDir,
    }

    impl Device {
        fn new() -> Device {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::create_dir(dir.path().join("state")).expect("state dir");
            std::fs::write(dir.path().join("state/report-id"), SEED.to_string())
                .expect("seed report ids");
            let device = Device { dir };
            device.show("captured");
            device
        }

        /// Points the proc root at `tests/fixtures/proc/<tree>`.
        fn show(&self, tree: &str) {
            let link = self.dir.path().join("proc");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(fixture("proc").join(tree), &link).expect("proc link");
        }

        fn config(&self) -> Config {
            let mut config = Config {
                thing_name: Some("golden-thing".to_owned()),
                state_dir: self.dir.path().join("state"),
                ..Config::default()
            };
            config.collect.proc_root = self.dir.path().join("proc");
            config.detection.profile_paths = vec![fixture("golden/profile.json")];
            // These tests pin what every tick hands on: judge every sample.
            config.detection.per_sample = vec!["*".to_owned()];
            config
        }

        fn pipeline(&self, window: Window) -> Pipeline {
            let config = self.config();
            let state = StateDir::open(&config.state_dir).expect("state dir");
            Pipeline::start(&config, state, Status::new(), window).expect("pipeline starts")
        }
    }

    fn passed(
        tick: Tick,
    ) -> (
        Sample,
        Option<u64>,
        Option<Result<Prepared, ValidationError>>,
    ) {
        match tick.outcome {
            Outcome::Passed(passed) => (passed.sample, passed.id, passed.report),
            other => panic!("expected the sample to pass, got {other:?}"),
        }
    }

    fn behaviors(tick: &Tick) -> Vec<&str> {
        tick.alarms.iter().map(|a| a.behavior.as_str()).collect()
    }

    /// The traffic between the two captured trees (eth0 only; loopback is
    /// not counted by default).
    fn captured_delta() -> NetworkStats {
        NetworkStats {
            bytes_in: 123_456,
            bytes_out: 65_432,
            packets_in: 789,
            packets_out: 321,
        }
    }

    #[test]
    fn run_ticks_carry_alarms_at_once_and_the_whole_window_in_the_report() {
        let device = Device::new();
        let mut pipeline = device.pipeline(Window::SinceLastReport);

        // A report tick right after a fresh start: no honest traffic yet.
        let tick = pipeline.step(T0, true);
        assert_eq!(behaviors(&tick), ["ExpectedTcpPorts", "KnownDestinations"]);
        let (sample, id, report) = passed(tick);
        assert_eq!(id, Some(SEED + 1));
        assert_eq!(sample.alerts.len(), 2, "alarms travel as alerts");
        assert!(sample.alerts.iter().all(|a| a.origin().is_detection()));
        let report = report.expect("a report tick").expect("a valid report");
        assert_eq!(report.report.header.report_id, SEED + 1);
        let metrics = report.report.metrics.expect("device metrics");
        assert_eq!(metrics.network_stats, None);

        // Between reports: the traffic goes to the window; the second
        // violating datapoint raises an alarm, which leaves with an id.
        device.show("captured-later");
        let tick = pipeline.step(T0 + 1_000, false);
        assert_eq!(behaviors(&tick), ["FewListeners"]);
        let (sample, id, report) = passed(tick);
        assert!(report.is_none());
        assert_eq!(id, Some(SEED + 2));
        assert_eq!(
            sample.network_stats,
            Some(captured_delta()),
            "this tick's delta"
        );

        // Nothing new: no id is spent.
        let (_, id, _) = passed(pipeline.step(T0 + 2_000, false));
        assert_eq!(id, None);

        // The report sums the window.
        let (sample, id, report) = passed(pipeline.step(T0 + 3_000, true));
        assert_eq!(id, Some(SEED + 3));
        assert_eq!(sample.network_stats, Some(captured_delta()));
        let report = report.expect("a report tick").expect("a valid report");
        let metrics = report.report.metrics.expect("device metrics");
        assert!(metrics.network_stats.is_some());
        assert_eq!(pipeline.network.traffic(), Some(NetworkStats::default()));
    }

    /// `run`'s pipeline after its first report, the device showing the
    /// later tree: the next step's delta is [`captured_delta`].
    fn after_a_first_report() -> (Device, Pipeline) {
        let device = Device::new();
        let mut pipeline = device.pipeline(Window::SinceLastReport);
        pipeline.step(T0, true);
        device.show("captured-later");
        (device, pipeline)
    }

    #[test]
    fn a_report_that_is_not_built_leaves_its_traffic_to_the_next() {
        let (_device, mut pipeline) = after_a_first_report();
        pipeline.limit_report_bytes(100);
        let (_, _, report) = passed(pipeline.step(T0 + 1_000, true));
        assert!(
            matches!(report, Some(Err(ValidationError::DoesNotFit { .. }))),
            "{report:?}"
        );
        assert_eq!(
            pipeline.network.traffic(),
            Some(captured_delta()),
            "the window stays open"
        );
    }

    #[test]
    fn the_run_window_survives_a_restart() {
        let (device, mut pipeline) = after_a_first_report();
        pipeline.step(T0 + 1_000, false);
        pipeline.persist(T0 + 1_000);
        drop(pipeline);

        let mut restarted = device.pipeline(Window::SinceLastReport);
        assert_eq!(restarted.network.traffic(), Some(captured_delta()));
        let (sample, _, _) = passed(restarted.step(T0 + 2_000, true));
        assert_eq!(sample.network_stats, Some(captured_delta()));
    }

    /// `net-run.json` is written when a report closes the window and else
    /// at most once per `stateWriteSeconds` (SD wear), and a `kill -9`
    /// between two writes still leaves the traffic owed exact.
    #[test]
    fn the_window_is_written_at_reports_and_once_a_minute_and_stays_exact_after_a_kill() {
        let device = Device::new();
        let file = device.dir.path().join("state").join(RUN_NETWORK_STATE);
        // Every write is a rename of a new file: the inode tells writes apart.
        let written = || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&file).expect("net-run.json").ino()
        };
        let mut pipeline = device.pipeline(Window::SinceLastReport);
        pipeline.step(T0, true);
        pipeline.persist(T0);
        let at_report = written();

        device.show("captured-later");
        pipeline.step(T0 + 1_000, false);
        pipeline.persist(T0 + 1_000);
        assert_eq!(written(), at_report, "not due: nothing written");

        // kill -9 now: the file is a second old and lacks the last delta.
        drop(pipeline);
        let mut restarted = device.pipeline(Window::SinceLastReport);
        let (sample, _, _) = passed(restarted.step(T0 + 2_000, true));
        assert_eq!(
            sample.network_stats,
            Some(captured_delta()),
            "the first delta after the restart covers what the file lacked"
        );
        restarted.persist(T0 + 2_000);
        let after_report = written();
        assert_ne!(
            after_report, at_report,
            "a report closes the window: written"
        );

        restarted.step(T0 + 3_000, false);
        restarted.persist(T0 + 3_000);
        assert_eq!(
            written(),
            after_report,
            "within the minute: nothing written"
        );
        restarted.step(T0 + 62_000, false);
        restarted.persist(T0 + 62_000);
        let a_minute_later = written();
        assert_ne!(a_minute_later, after_report, "a minute later: written");
        restarted.step(T0 + 63_000, false);
        restarted.persist(T0 + 63_000);
        assert_eq!(written(), a_minute_later);
        restarted.finish(T0 + 63_000);
        assert_ne!(written(), a_minute_later, "shutdown writes it");
    }

    /// `collect` twice gives the reports of the golden files (which hold
    /// them as printed, with a newline): the pipeline step is the one
    /// `collect` and `run` go through.
    #[test]
    fn collect_windows_give_the_golden_reports() {
        let printed = |report: Option<Result<Prepared, ValidationError>>| {
            let bytes = report.expect("a report").expect("a valid report").bytes;
            format!("{}\n", String::from_utf8(bytes).expect("JSON"))
        };
        let golden = |name: &str| {
            std::fs::read_to_string(fixture("golden").join(name)).expect("golden file")
        };
        let device = Device::new();
        let mut first = device.pipeline(Window::SincePreviousCollect);
        let tick = first.step(T0, true);
        first.persist(T0);
        let (_, _, report) = passed(tick);
        assert_eq!(printed(report), golden("collect-first.json"));

        device.show("captured-later");
        let mut later = device.pipeline(Window::SincePreviousCollect);
        let (sample, _, report) = passed(later.step(T0 + 60_000, true));
        assert_eq!(sample.network_stats, Some(captured_delta()));
        assert_eq!(printed(report), golden("collect-later.json"));
    }

    #[test]
    fn network_window_is_honest_or_silent() {
        let stats = |n| NetworkStats {
            bytes_in: n,
            bytes_out: n,
            packets_in: n,
            packets_out: n,
        };
        let mut window = NetworkWindow::default();
        window.absorb(Counters::default(), Some(stats(5)));
        assert_eq!(window.traffic(), None, "the first delta after a start");
        window.close();
        window.absorb(Counters::default(), Some(stats(10)));
        window.absorb(Counters::default(), Some(stats(1)));
        assert_eq!(window.traffic(), Some(stats(11)));
        window.absorb(Counters::default(), None);
        assert_eq!(window.traffic(), None, "a reset spoils the window");
        window.close();
        assert_eq!(window.traffic(), Some(stats(0)));
        let mut collect = NetworkWindow::open(None);
        collect.absorb(Counters::default(), Some(stats(3)));
        assert_eq!(collect.traffic(), Some(stats(3)));
    }
}
