//! Local detection: Device Defender security profiles judged on the device,
//! every few seconds, against each sample.
//!
//! Profiles are written exactly as for `aws iot create-security-profile
//! --cli-input-json` ([`profile`]). Each behavior the device can measure is
//! compiled into a [`criteria::Check`] and given an alarm state machine
//! ([`alarm`]); behaviors only the cloud can judge (cloud-side metrics, ML
//! Detect, metric dimensions) are loaded, counted and skipped with one
//! warning each. Statistical thresholds use the device's own history
//! ([`statistics`]), persisted in the state directory so a restart keeps the
//! baseline. See docs/DETECTION.md for the choices and the event format.
//!
//! The [`Detector`] does no network I/O and is not async: the run loop hands
//! it samples and publishes the [`AlarmEvent`]s it returns. Its only I/O is
//! reading profiles at start and writing its state file in [`Detector::save`].
//!
//! [`baseline`] is the `defender-edge baseline` command: fleet percentiles
//! from the fleet's events, written into a profile as fixed thresholds.

mod alarm;
pub mod baseline;
mod criteria;
mod event;
mod metric;
pub(crate) mod profile;
mod statistics;

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::sample::{CustomMetricValue, ListeningPort, Sample};
use crate::status::Status;

use alarm::{AlarmMachine, Transition};
use criteria::{AddressItem, Check, Threshold};
use metric::{Metric, Shape};
use profile::{Behavior, LoadedProfile};
use statistics::{History, PeriodSums, SavedHistory, TrafficWindow};

pub use event::{AlarmEvent, AlarmFormat, AlarmState, SUPPRESS_ALERTS_ATTRIBUTE};
pub use profile::{ProfileError, SkipKind};

/// The default `alarmTopic`.
pub const DEFAULT_ALARM_TOPIC: &str = "defender-edge/{thing}/alarms";
/// The default `localTopic`.
pub const DEFAULT_LOCAL_TOPIC: &str = "defender-edge/alarms";
/// The statistics file in the state directory.
pub const STATE_FILE: &str = "detect-state.json";

/// The `detection` section of the configuration. See docs/DETECTION.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DetectionConfig {
    /// `None`: on when a profile is given. `Some(false)` turns detection off
    /// while keeping the profiles in the configuration.
    #[serde(deserialize_with = "crate::lenient::opt_bool")]
    pub enabled: Option<bool>,
    /// Seconds between detection samples.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub interval_seconds: u64,
    /// Security profile files (the `--cli-input-json` document).
    pub profile_paths: Vec<PathBuf>,
    /// Security profiles inline (objects, or strings holding the JSON).
    pub profiles: Vec<Value>,
    /// Datapoints (periods) kept per statistical behavior.
    #[serde(deserialize_with = "crate::lenient::usize")]
    pub statistics_window: usize,
    /// No statistical datapoint is judged before the baseline has this many.
    #[serde(deserialize_with = "crate::lenient::usize")]
    pub statistics_min_datapoints: usize,
    /// Seconds between writes of the statistics file.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub state_save_seconds: u64,
    /// MQTT/IoT topic for alarm events; `{thing}` is replaced by the thing.
    pub alarm_topic: String,
    /// The shape of the events on `alarm_topic`.
    pub alarm_format: AlarmFormat,
    /// Greengrass local publish/subscribe topic for alarm events.
    pub local_topic: String,
    /// Also send alarm events to the Firehose (SIEM) sink.
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub send_to_firehose: bool,
    /// Behaviors judged on every detection sample rather than once per
    /// report period: `Profile`, `Profile/Behavior`, or `*` for all. An
    /// opt-in: their consecutive datapoints count samples, not reports.
    pub per_sample: Vec<String>,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            enabled: None,
            interval_seconds: 10,
            profile_paths: Vec::new(),
            profiles: Vec::new(),
            statistics_window: 2016,
            statistics_min_datapoints: 36,
            state_save_seconds: 300,
            alarm_topic: DEFAULT_ALARM_TOPIC.to_owned(),
            alarm_format: AlarmFormat::DefenderEdge,
            local_topic: DEFAULT_LOCAL_TOPIC.to_owned(),
            send_to_firehose: true,
            per_sample: Vec::new(),
        }
    }
}

impl DetectionConfig {
    /// Whether any profile is configured.
    pub fn has_profiles(&self) -> bool {
        !self.profile_paths.is_empty() || !self.profiles.is_empty()
    }

    /// Whether detection should run: on by default when a profile is given.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true) && self.has_profiles()
    }

    /// Checks beyond the document's shape; the message names the key.
    /// Inline profiles are compiled here so a broken one stops the
    /// configuration from loading; files are read by [`Detector::new`].
    pub fn check(&self) -> Result<(), String> {
        if self.enabled == Some(true) && !self.has_profiles() {
            return Err(
                "detection.enabled is true but neither detection.profilePaths nor detection.profiles is set"
                    .to_owned(),
            );
        }
        if !(1..=86_400).contains(&self.interval_seconds) {
            return Err(format!(
                "detection.intervalSeconds: {} is outside 1..=86400",
                self.interval_seconds
            ));
        }
        if !(1..=1_000_000).contains(&self.statistics_window) {
            return Err(format!(
                "detection.statisticsWindow: {} is outside 1..=1000000",
                self.statistics_window
            ));
        }
        if self.statistics_min_datapoints == 0
            || self.statistics_min_datapoints > self.statistics_window
        {
            return Err(format!(
                "detection.statisticsMinDatapoints: {} must be at least 1 and at most statisticsWindow ({})",
                self.statistics_min_datapoints, self.statistics_window
            ));
        }
        if self.state_save_seconds == 0 {
            return Err("detection.stateSaveSeconds: must be at least 1".to_owned());
        }
        check_topic("detection.alarmTopic", &self.alarm_topic)?;
        check_topic("detection.localTopic", &self.local_topic)?;
        for (i, entry) in self.per_sample.iter().enumerate() {
            let parts: Vec<&str> = entry.split('/').collect();
            if entry != "*" && (parts.len() > 2 || parts.iter().any(|p| p.is_empty())) {
                return Err(format!(
                    "detection.perSample[{i}]: `{entry}` is not `*`, `Profile` or `Profile/Behavior`"
                ));
            }
        }
        for (i, value) in self.profiles.iter().enumerate() {
            profile::compile(value.clone(), &format!("detection.profiles[{i}]"))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

pub(crate) fn check_topic(key: &str, topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err(format!("{key}: must not be empty"));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(format!(
            "{key}: `{topic}` contains a wildcard or NUL; events are published to one topic"
        ));
    }
    if topic.starts_with('$') {
        return Err(format!(
            "{key}: `{topic}` starts with `$`, which is reserved for AWS IoT topics"
        ));
    }
    if topic.len() > 256 {
        return Err(format!("{key}: longer than 256 bytes"));
    }
    Ok(())
}

/// The MQTT/IoT topic for a thing's alarm events.
pub fn alarm_topic(config: &DetectionConfig, thing: &str) -> String {
    config.alarm_topic.replace("{thing}", thing)
}

/// Why detection could not start or save its state. Messages name the file,
/// profile, behavior and field.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read security profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] ProfileError),
    #[error("security profile `{name}` is given twice: in {first} and in {second}")]
    DuplicateProfile {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "detection.perSample: `{0}` names no loaded profile or behavior (write `Profile` or `Profile/Behavior`)"
    )]
    UnknownPerSample(String),
    #[error("cannot save detection state to {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What detection judges and what it cannot: read by `status` (as the
/// `detect.state` text) and by the agent's health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// Detection is configured and on.
    pub enabled: bool,
    pub profiles: usize,
    /// Behaviors judged on the device.
    pub judged: usize,
    /// Behaviors loaded but not judged, by reason.
    pub skipped: BTreeMap<SkipKind, usize>,
}

impl Coverage {
    /// Every behavior loaded, judged or not.
    pub fn total(&self) -> usize {
        self.judged + self.skipped.values().sum::<usize>()
    }

    /// E.g. `running: 5 of 8 behaviors; 3 cloud-side skipped`.
    pub fn state_text(&self) -> String {
        if !self.enabled {
            return "off".to_owned();
        }
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| format!("{n} {}", kind.as_str()))
            .collect();
        let skipped = match skipped.is_empty() {
            true => String::new(),
            false => format!("; {} skipped", skipped.join(", ")),
        };
        match self.judged {
            0 => format!("idle: no behavior can be judged on the device{skipped}"),
            judged => format!("running: {judged} of {} behaviors{skipped}", self.total()),
        }
    }
}

/// A behavior with its running state.
#[derive(Debug)]
struct Judged {
    behavior: Behavior,
    alarm: AlarmMachine,
    /// Judged on every sample (`perSample`) rather than once per report
    /// period.
    per_sample: bool,
    /// Traffic metrics judged per sample: the deltas of the last
    /// `durationSeconds`.
    window: Option<TrafficWindow>,
    /// Traffic metrics judged per report period: the period sums.
    periods: Option<PeriodSums>,
    /// How many report periods a traffic datapoint sums: `durationSeconds`
    /// in whole periods, rounded up.
    periods_per_datapoint: usize,
    /// Statistical behaviors: the baseline.
    history: Option<History>,
    /// A custom metric of the wrong type was reported; warned once.
    warned_type: bool,
    /// When the metric last arrived (custom metrics, traffic deltas), or
    /// when this process first looked: an open alarm whose metric stays
    /// away for `durationSeconds` is invalidated.
    last_seen_ms: Option<u64>,
}

/// What the state file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedState {
    version: u32,
    saved_ms: u64,
    /// By `profile/behavior`.
    behaviors: BTreeMap<String, SavedBehavior>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedBehavior {
    metric: String,
    /// The criteria as written, to tell a changed behavior from the same
    /// one (absent in files written before invalidation existed).
    #[serde(default)]
    criteria: Option<Value>,
    #[serde(default)]
    suppress_alerts: bool,
    #[serde(default)]
    history: Option<SavedHistory>,
    #[serde(default)]
    alarm: AlarmMachine,
}

const STATE_VERSION: u32 = 1;

/// Judges samples against the configured security profiles.
#[derive(Debug)]
pub struct Detector {
    active: bool,
    coverage: Coverage,
    interval: Duration,
    /// One datapoint, for behaviors judged per report period.
    report_period: Duration,
    behaviors: Vec<Judged>,
    min_datapoints: usize,
    state_path: PathBuf,
    save_every_ms: u64,
    last_save_ms: Option<u64>,
    /// Something worth persisting changed since the last save.
    changed: bool,
    /// Time of the previous device evaluation: the span of a traffic delta.
    last_device_ms: Option<u64>,
    /// Invalidations found when the state was restored (a behavior with an
    /// open alarm removed or changed), sent with the first evaluation, which
    /// knows the thing.
    pending: Vec<AlarmEvent>,
    status: Status,
}

impl Detector {
    /// Loads profiles (files + inline), restores statistics from `state_dir`.
    /// `report_period` is `report.intervalSeconds`: one datapoint of a
    /// behavior that is not judged per sample.
    pub fn new(
        config: &DetectionConfig,
        state_dir: &Path,
        status: &Status,
        report_period: Duration,
    ) -> Result<Detector, DetectError> {
        let mut detector = Detector {
            active: false,
            coverage: Coverage::default(),
            interval: Duration::from_secs(config.interval_seconds.max(1)),
            report_period: report_period.max(Duration::from_secs(1)),
            behaviors: Vec::new(),
            min_datapoints: config.statistics_min_datapoints.max(1),
            state_path: state_dir.join(STATE_FILE),
            save_every_ms: config.state_save_seconds.saturating_mul(1000),
            last_save_ms: None,
            changed: false,
            last_device_ms: None,
            pending: Vec::new(),
            status: status.clone(),
        };
        if !config.is_enabled() {
            status.set_text("detect.state", "off");
            return Ok(detector);
        }

        let mut profiles: Vec<(String, LoadedProfile)> = Vec::new();
        for path in &config.profile_paths {
            let text = std::fs::read_to_string(path).map_err(|source| DetectError::Read {
                path: path.clone(),
                source,
            })?;
            let origin = path.display().to_string();
            profiles.push((origin.clone(), profile::parse_text(&text, &origin)?));
        }
        for (i, value) in config.profiles.iter().enumerate() {
            let origin = format!("detection.profiles[{i}]");
            profiles.push((origin.clone(), profile::compile(value.clone(), &origin)?));
        }

        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut skipped = 0u64;
        let mut skipped_by_kind: BTreeMap<SkipKind, usize> = BTreeMap::new();
        for (origin, loaded) in profiles {
            if let Some(first) = seen.insert(loaded.name.clone(), origin.clone()) {
                return Err(DetectError::DuplicateProfile {
                    name: loaded.name,
                    first,
                    second: origin,
                });
            }
            for s in &loaded.skipped {
                tracing::warn!(
                    profile = %loaded.name,
                    behavior = %s.behavior,
                    metric = %s.metric,
                    reason = %s.reason,
                    "behavior cannot be judged on the device; skipped"
                );
                skipped += 1;
                *skipped_by_kind.entry(s.kind).or_default() += 1;
            }
            for behavior in loaded.behaviors {
                let per_sample = config.per_sample.iter().any(|entry| {
                    entry == "*" || *entry == behavior.profile || *entry == behavior.key()
                });
                detector.behaviors.push(Judged::new(
                    behavior,
                    config,
                    per_sample,
                    detector.report_period,
                ));
            }
        }
        for entry in &config.per_sample {
            let known = entry == "*"
                || seen.contains_key(entry)
                || detector
                    .behaviors
                    .iter()
                    .any(|j| j.behavior.key() == *entry);
            if !known {
                return Err(DetectError::UnknownPerSample(entry.clone()));
            }
        }
        detector.active = !detector.behaviors.is_empty();
        detector.coverage = Coverage {
            enabled: true,
            profiles: seen.len(),
            judged: detector.behaviors.len(),
            skipped: skipped_by_kind,
        };
        status.set("detect.profiles", seen.len() as u64);
        status.set("detect.behaviors", detector.behaviors.len() as u64);
        status.set("detect.behaviors_skipped", skipped);
        status.set_text("detect.state", detector.coverage.state_text());
        detector.restore();
        tracing::info!(
            profiles = seen.len(),
            behaviors = detector.behaviors.len(),
            skipped,
            interval_s = detector.interval.as_secs(),
            "local detection loaded"
        );
        Ok(detector)
    }

    /// False when there is nothing to judge.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// What is judged and what is not.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// The detection sample interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Judges device-side metrics (before plugins run).
    ///
    /// `sample.network_stats` must be the traffic since the previous call
    /// (one detection interval), not a report's five-minute sum.
    /// `period_closed`: this sample ends a report period (it makes a
    /// report). Behaviors judged per report period give a datapoint only
    /// then; between, their traffic is summed and their baseline fed.
    pub fn evaluate_device(
        &mut self,
        sample: &Sample,
        now_ms: u64,
        period_closed: bool,
    ) -> Vec<AlarmEvent> {
        // The span of this sample's traffic delta: the time since the
        // previous evaluation. Unknown for the first one after a start (the
        // delta may cover downtime), and after the clock stepped back.
        let span_ms = self
            .last_device_ms
            .and_then(|last| now_ms.checked_sub(last))
            .filter(|span| *span > 0);
        self.last_device_ms = Some(now_ms);
        let view = DeviceView::new(sample);
        let mut events = self.take_pending(&sample.thing, now_ms);
        for index in 0..self.behaviors.len() {
            if self.behaviors[index].behavior.metric.is_custom() {
                continue;
            }
            let judged = &mut self.behaviors[index];
            let judge_now = judged.per_sample || period_closed;
            let arrived = judged.behavior.metric.shape() != Shape::Traffic
                || (sample.network_stats.is_some() && span_ms.is_some());
            let datapoint = judged
                .device_datapoint(&view, span_ms, now_ms, period_closed, self.min_datapoints)
                .judged_only_if(judge_now);
            self.apply(index, datapoint, sample, now_ms, &mut events);
            self.note_arrival(index, arrived, &sample.thing, now_ms, &mut events);
        }
        self.status.add("detect.evaluations", 1);
        events
    }

    /// Judges custom metrics (after plugins added them). `period_closed` as
    /// for [`Detector::evaluate_device`]: a custom metric judged per report
    /// period gives its datapoint from the sample that ends the period.
    pub fn evaluate_custom(
        &mut self,
        sample: &Sample,
        now_ms: u64,
        period_closed: bool,
    ) -> Vec<AlarmEvent> {
        let mut events = self.take_pending(&sample.thing, now_ms);
        for index in 0..self.behaviors.len() {
            let value = match &self.behaviors[index].behavior.metric {
                Metric::Custom(name) => sample.custom_metrics.get(name),
                _ => continue,
            };
            let datapoint = match value {
                None => Datapoint::None,
                Some(value) => {
                    let judged = &mut self.behaviors[index];
                    let datapoint = judged.custom_datapoint(value, now_ms, self.min_datapoints);
                    if matches!(datapoint, Datapoint::WrongType) {
                        if !judged.warned_type {
                            judged.warned_type = true;
                            tracing::warn!(
                                profile = %judged.behavior.profile,
                                behavior = %judged.behavior.name,
                                metric = %judged.behavior.metric_name,
                                "custom metric has a type the behavior's criteria cannot judge; ignored"
                            );
                        }
                        self.status.add("detect.type_mismatches", 1);
                    }
                    let judge_now = judged.per_sample || period_closed;
                    datapoint.judged_only_if(judge_now)
                }
            };
            let arrived = value.is_some();
            self.apply(index, datapoint, sample, now_ms, &mut events);
            self.note_arrival(index, arrived, &sample.thing, now_ms, &mut events);
        }
        events
    }

    /// Persists statistics and alarm states if `stateSaveSeconds` elapsed (or
    /// `force`). Nothing is written when nothing changed, to spare flash.
    pub fn save(&mut self, now_ms: u64, force: bool) -> Result<(), DetectError> {
        if !self.active || !self.changed {
            return Ok(());
        }
        let due = match self.last_save_ms {
            None => true,
            Some(last) => now_ms.saturating_sub(last) >= self.save_every_ms,
        };
        if !(force || due) {
            return Ok(());
        }
        let state = SavedState {
            version: STATE_VERSION,
            saved_ms: now_ms,
            behaviors: self
                .behaviors
                .iter()
                .map(|j| {
                    (
                        j.behavior.key(),
                        SavedBehavior {
                            metric: j.behavior.metric_name.clone(),
                            criteria: Some(j.behavior.criteria.clone()),
                            suppress_alerts: j.behavior.suppress_alerts,
                            history: j.history.as_ref().map(History::save),
                            alarm: j.alarm.clone(),
                        },
                    )
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&state).map_err(|e| DetectError::Save {
            path: self.state_path.clone(),
            source: std::io::Error::other(e),
        })?;
        if let Some(dir) = self.state_path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| DetectError::Save {
                path: self.state_path.clone(),
                source,
            })?;
        }
        crate::state::write_atomically(&self.state_path, &bytes).map_err(|source| {
            DetectError::Save {
                path: self.state_path.clone(),
                source,
            }
        })?;
        self.last_save_ms = Some(now_ms);
        self.changed = false;
        self.status.add("detect.state_saves", 1);
        Ok(())
    }

    /// Restores baselines and alarms saved by a previous process. A state file
    /// that cannot be read costs the baseline, never the start.
    fn restore(&mut self) {
        let bytes = match std::fs::read(&self.state_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                crate::state::note_corrupt(
                    &self.status,
                    &self.state_path,
                    &error.to_string(),
                    "starting without a baseline",
                );
                return;
            }
        };
        let saved: SavedState = match serde_json::from_slice(&bytes) {
            Ok(saved) => saved,
            Err(error) => {
                crate::state::note_corrupt(
                    &self.status,
                    &self.state_path,
                    &error.to_string(),
                    "starting without a baseline",
                );
                return;
            }
        };
        if saved.version != STATE_VERSION {
            tracing::warn!(file = %self.state_path.display(), version = saved.version, "detection state has an unknown version; starting without a baseline");
            return;
        }
        let mut restored = 0u64;
        let now_ms = crate::state::now_ms();
        for (key, entry) in &saved.behaviors {
            let Some(violation) = &entry.alarm.active else {
                continue;
            };
            let current = self.behaviors.iter().find(|j| j.behavior.key() == *key);
            let reason = match current {
                None => "its behavior is no longer in the configured profiles",
                Some(j) if j.behavior.metric_name != entry.metric => {
                    "its behavior now watches another metric"
                }
                Some(j)
                    if entry
                        .criteria
                        .as_ref()
                        .is_some_and(|c| *c != j.behavior.criteria) =>
                {
                    "its behavior's criteria changed"
                }
                Some(_) => continue,
            };
            let (profile, behavior) = key.split_once('/').unwrap_or((key.as_str(), ""));
            tracing::info!(%profile, %behavior, violation_id = %violation.violation_id, reason, "open violation invalidated");
            self.pending.push(AlarmEvent {
                violation_id: violation.violation_id.clone(),
                state: AlarmState::Invalidated,
                thing: String::new(),
                profile: profile.to_owned(),
                behavior: behavior.to_owned(),
                metric: entry.metric.clone(),
                value: Value::Null,
                offending: None,
                threshold: None,
                criteria: entry.criteria.clone().unwrap_or(Value::Null),
                violation_start_ms: violation.since_ms,
                timestamp_ms: now_ms,
                suppress_alerts: entry.suppress_alerts,
                processes: BTreeMap::new(),
            });
            // The state file must forget the violation even if nothing else
            // changes.
            self.changed = true;
        }
        for judged in &mut self.behaviors {
            let Some(entry) = saved.behaviors.get(&judged.behavior.key()) else {
                continue;
            };
            if entry.metric != judged.behavior.metric_name {
                // The behavior now watches another metric: its past says nothing.
                continue;
            }
            if entry
                .criteria
                .as_ref()
                .is_some_and(|c| *c != judged.behavior.criteria)
            {
                // Changed criteria: the baseline still describes the metric,
                // but the open alarm was invalidated above.
                if let (Some(history), Some(saved)) = (&mut judged.history, &entry.history)
                    && history.restore(saved)
                {
                    restored += 1;
                }
                continue;
            }
            if let (Some(history), Some(saved)) = (&mut judged.history, &entry.history)
                && history.restore(saved)
            {
                restored += 1;
            }
            judged.alarm = entry.alarm.clone();
        }
        self.status.set("detect.baselines_restored", restored);
    }

    /// The invalidations found at restore, now that the thing is known.
    fn take_pending(&mut self, thing: &str, now_ms: u64) -> Vec<AlarmEvent> {
        let mut events = std::mem::take(&mut self.pending);
        for event in &mut events {
            event.thing = thing.to_owned();
            event.timestamp_ms = now_ms;
            self.status.add("detect.invalidations", 1);
        }
        events
    }

    /// Notes whether the behavior's metric arrived in this sample. An open
    /// alarm whose metric stayed away for the behavior's duration
    /// (`durationSeconds`, else 300 s) can no longer be judged: it is closed
    /// with an invalidation, as Device Defender closes the violations of a
    /// thing that stopped reporting.
    fn note_arrival(
        &mut self,
        index: usize,
        arrived: bool,
        thing: &str,
        now_ms: u64,
        events: &mut Vec<AlarmEvent>,
    ) {
        let judged = &mut self.behaviors[index];
        if arrived {
            judged.last_seen_ms = Some(now_ms);
            return;
        }
        let since = *judged.last_seen_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) < judged.behavior.period_ms() {
            return;
        }
        let Some(violation) = judged.alarm.active.take() else {
            return;
        };
        judged.alarm = AlarmMachine::default();
        self.changed = true;
        let b = &judged.behavior;
        tracing::info!(profile = %b.profile, behavior = %b.name, violation_id = %violation.violation_id, "metric stopped arriving; open violation invalidated");
        self.status.add("detect.invalidations", 1);
        events.push(AlarmEvent {
            violation_id: violation.violation_id,
            state: AlarmState::Invalidated,
            thing: thing.to_owned(),
            profile: b.profile.clone(),
            behavior: b.name.clone(),
            metric: b.metric_name.clone(),
            value: Value::Null,
            offending: None,
            threshold: None,
            criteria: b.criteria.clone(),
            violation_start_ms: violation.since_ms,
            timestamp_ms: now_ms,
            suppress_alerts: b.suppress_alerts,
            processes: BTreeMap::new(),
        });
    }

    /// Runs the state machine on a datapoint and turns a transition into an
    /// event.
    fn apply(
        &mut self,
        index: usize,
        datapoint: Datapoint,
        sample: &Sample,
        now_ms: u64,
        events: &mut Vec<AlarmEvent>,
    ) {
        let (violated, observed, threshold, recorded) = match datapoint {
            Datapoint::None | Datapoint::WrongType => return,
            Datapoint::Recorded => {
                self.changed = true;
                return;
            }
            Datapoint::Judged {
                violated,
                observed,
                threshold,
                recorded,
            } => (violated, observed, threshold, recorded),
        };
        if recorded {
            self.changed = true;
        }
        let judged = &mut self.behaviors[index];
        let b = &judged.behavior;
        let transition = judged
            .alarm
            .observe(violated, b.to_alarm, b.to_clear, now_ms, || {
                violation_id(&sample.thing, &b.profile, &b.name, now_ms)
            });
        let Some(transition) = transition else {
            return;
        };
        self.changed = true;
        let (state, violation) = match transition {
            Transition::Raised(v) => (AlarmState::Alarm, v),
            Transition::Cleared(v) => (AlarmState::Clear, v),
        };
        let (value, offending) = observed.describe(&b.check);
        tracing::info!(
            profile = %b.profile,
            behavior = %b.name,
            metric = %b.metric_name,
            state = state.as_str(),
            violation_id = %violation.violation_id,
            %value,
            "local detection"
        );
        self.status.add(
            match state {
                AlarmState::Alarm => "detect.alarms",
                AlarmState::Clear => "detect.clears",
                AlarmState::Invalidated => "detect.invalidations",
            },
            1,
        );
        events.push(AlarmEvent {
            violation_id: violation.violation_id,
            state,
            thing: sample.thing.clone(),
            profile: b.profile.clone(),
            behavior: b.name.clone(),
            metric: b.metric_name.clone(),
            value,
            offending,
            threshold,
            criteria: b.criteria.clone(),
            violation_start_ms: violation.since_ms,
            timestamp_ms: now_ms,
            suppress_alerts: b.suppress_alerts,
            processes: BTreeMap::new(),
        });
    }
}

/// A violation id: unique per alarm, 32 hex digits.
fn violation_id(thing: &str, profile: &str, behavior: &str, now_ms: u64) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    for part in [thing, profile, behavior] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.update(now_ms.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(SEQUENCE.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.update(nanos.to_le_bytes());
    hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The result of judging one behavior on one sample.
enum Datapoint<'a> {
    /// No datapoint: metric absent, baseline learning, window inconclusive.
    None,
    /// No judgement, but the baseline recorded a value.
    Recorded,
    /// A custom metric of another type than the criteria judge.
    WrongType,
    Judged {
        violated: bool,
        observed: Observed<'a>,
        threshold: Option<f64>,
        /// The baseline recorded a value.
        recorded: bool,
    },
}

impl<'a> Datapoint<'a> {
    /// Between two report periods a behavior judged per period gives no
    /// datapoint; what its baseline recorded still counts.
    fn judged_only_if(self, judge_now: bool) -> Datapoint<'a> {
        match self {
            Datapoint::Judged { recorded, .. } if !judge_now => match recorded {
                true => Datapoint::Recorded,
                false => Datapoint::None,
            },
            other => other,
        }
    }
}

/// The value judged, kept to describe it in an event.
enum Observed<'a> {
    Number(f64),
    /// Traffic summed over the window; `count` in the event.
    Count(u64),
    Ports(&'a [u16]),
    Addresses(&'a [IpAddr]),
    AddressTexts(&'a [String]),
    Numbers(&'a [f64]),
    Strings(&'a [String]),
}

impl Observed<'_> {
    /// The value in Device Defender's shape, and the offending elements of a
    /// list.
    fn describe(&self, check: &Check) -> (Value, Option<Value>) {
        match self {
            Observed::Number(n) => match check {
                Check::Compare { .. } if n.fract() == 0.0 && *n >= 0.0 && *n < 9.0e15 => {
                    (json!({ "count": *n as u64 }), None)
                }
                _ => (json!({ "number": n }), None),
            },
            Observed::Count(c) => (json!({ "count": c }), None),
            Observed::Ports(ports) => (
                json!({ "ports": ports }),
                check.port_offenders(ports).map(|o| json!({ "ports": o })),
            ),
            Observed::Addresses(addresses) => {
                let items = addresses.iter().map(|a| AddressItem::Parsed(*a));
                (
                    json!({ "cidrs": addresses.iter().map(ToString::to_string).collect::<Vec<_>>() }),
                    check
                        .address_offenders(items)
                        .map(|o| json!({ "cidrs": o })),
                )
            }
            Observed::AddressTexts(texts) => {
                let items = texts.iter().map(|t| AddressItem::Text(t));
                (
                    json!({ "cidrs": texts }),
                    check
                        .address_offenders(items)
                        .map(|o| json!({ "cidrs": o })),
                )
            }
            Observed::Numbers(numbers) => (
                json!({ "numbers": numbers }),
                check
                    .number_offenders(numbers)
                    .map(|o| json!({ "numbers": o })),
            ),
            Observed::Strings(strings) => (
                json!({ "strings": strings }),
                check
                    .string_offenders(strings)
                    .map(|o| json!({ "strings": o })),
            ),
        }
    }
}

/// The device-side metrics of a sample, each derived at most once per
/// evaluation however many behaviors read it.
struct DeviceView<'a> {
    sample: &'a Sample,
    tcp_ports: OnceCell<Vec<u16>>,
    udp_ports: OnceCell<Vec<u16>>,
    destinations: OnceCell<Vec<IpAddr>>,
}

impl<'a> DeviceView<'a> {
    fn new(sample: &'a Sample) -> Self {
        DeviceView {
            sample,
            tcp_ports: OnceCell::new(),
            udp_ports: OnceCell::new(),
            destinations: OnceCell::new(),
        }
    }

    fn tcp_ports(&self) -> &[u16] {
        self.tcp_ports
            .get_or_init(|| port_numbers(&self.sample.listening_tcp_ports))
    }

    fn udp_ports(&self) -> &[u16] {
        self.udp_ports
            .get_or_init(|| port_numbers(&self.sample.listening_udp_ports))
    }

    /// Distinct remote addresses of established connections.
    fn destinations(&self) -> &[IpAddr] {
        self.destinations.get_or_init(|| {
            let set: BTreeSet<IpAddr> = self
                .sample
                .established_connections
                .iter()
                .map(|c| c.remote_addr.ip())
                .collect();
            set.into_iter().collect()
        })
    }

    /// Distinct port numbers, whatever the interface (Device Defender's
    /// port metrics are numbers).
    fn traffic(&self, metric: &Metric) -> Option<u64> {
        let stats = self.sample.network_stats?;
        Some(match metric {
            Metric::BytesIn => stats.bytes_in,
            Metric::BytesOut => stats.bytes_out,
            Metric::PacketsIn => stats.packets_in,
            Metric::PacketsOut => stats.packets_out,
            _ => return None,
        })
    }
}

fn port_numbers(ports: &[ListeningPort]) -> Vec<u16> {
    let mut numbers: Vec<u16> = ports.iter().map(|p| p.port).collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
}

impl Judged {
    fn new(
        behavior: Behavior,
        config: &DetectionConfig,
        per_sample: bool,
        report_period: Duration,
    ) -> Judged {
        let statistical = matches!(
            behavior.check,
            Check::Compare {
                threshold: Threshold::Statistical(_),
                ..
            }
        );
        let traffic = behavior.metric.shape() == Shape::Traffic;
        let window = (traffic && per_sample).then(TrafficWindow::default);
        let periods = (traffic && !per_sample).then(PeriodSums::default);
        let period_ms = u64::try_from(report_period.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let periods_per_datapoint = behavior.period_ms().div_ceil(period_ms).max(1) as usize;
        let history =
            statistical.then(|| History::new(config.statistics_window, behavior.period_ms()));
        Judged {
            behavior,
            alarm: AlarmMachine::default(),
            per_sample,
            window,
            periods,
            periods_per_datapoint,
            history,
            warned_type: false,
            last_seen_ms: None,
        }
    }

    /// The threshold for a numeric comparison, or `None` while a statistical
    /// baseline is still learning.
    fn threshold(&mut self, min_datapoints: usize) -> Option<f64> {
        match &self.behavior.check {
            Check::Compare {
                threshold: Threshold::Fixed(t),
                ..
            } => Some(*t),
            Check::Compare {
                threshold: Threshold::Statistical(s),
                ..
            } => {
                let quantile = s.quantile;
                self.history.as_mut()?.percentile(quantile, min_datapoints)
            }
            _ => None,
        }
    }

    fn device_datapoint<'a>(
        &mut self,
        view: &'a DeviceView<'a>,
        span_ms: Option<u64>,
        now_ms: u64,
        period_closed: bool,
        min_datapoints: usize,
    ) -> Datapoint<'a> {
        let metric = &self.behavior.metric;
        match metric {
            Metric::ListeningTcpPorts => self.judge_list(Observed::Ports(view.tcp_ports())),
            Metric::ListeningUdpPorts => self.judge_list(Observed::Ports(view.udp_ports())),
            Metric::DestinationIpAddresses => {
                self.judge_list(Observed::Addresses(view.destinations()))
            }
            Metric::NumListeningTcpPorts => {
                self.judge_count(view.tcp_ports().len() as f64, now_ms, min_datapoints)
            }
            Metric::NumListeningUdpPorts => {
                self.judge_count(view.udp_ports().len() as f64, now_ms, min_datapoints)
            }
            Metric::NumEstablishedTcpConnections => self.judge_count(
                view.sample.established_connections.len() as f64,
                now_ms,
                min_datapoints,
            ),
            Metric::BytesIn | Metric::BytesOut | Metric::PacketsIn | Metric::PacketsOut => {
                let amount = view.traffic(metric);
                self.judge_traffic(amount, span_ms, now_ms, period_closed, min_datapoints)
            }
            Metric::Custom(_) => Datapoint::None,
        }
    }

    fn custom_datapoint<'a>(
        &mut self,
        value: &'a CustomMetricValue,
        now_ms: u64,
        min_datapoints: usize,
    ) -> Datapoint<'a> {
        match (&self.behavior.check, value) {
            (Check::Compare { .. }, CustomMetricValue::Number(n)) if n.is_finite() => {
                self.judge_count(*n, now_ms, min_datapoints)
            }
            (Check::Compare { .. }, CustomMetricValue::Number(_)) => Datapoint::None,
            (Check::Numbers { .. }, CustomMetricValue::NumberList(list)) => {
                self.judge_list(Observed::Numbers(list))
            }
            (Check::Strings { .. }, CustomMetricValue::StringList(list)) => {
                self.judge_list(Observed::Strings(list))
            }
            (Check::Cidrs { .. }, CustomMetricValue::IpList(list)) => {
                self.judge_list(Observed::AddressTexts(list))
            }
            _ => Datapoint::WrongType,
        }
    }

    fn judge_list<'a>(&self, observed: Observed<'a>) -> Datapoint<'a> {
        let check = &self.behavior.check;
        let violated = match &observed {
            Observed::Ports(p) => check.port_offenders(p).is_some_and(|o| !o.is_empty()),
            Observed::Addresses(a) => check
                .address_offenders(a.iter().map(|a| AddressItem::Parsed(*a)))
                .is_some_and(|o| !o.is_empty()),
            Observed::AddressTexts(t) => check
                .address_offenders(t.iter().map(|t| AddressItem::Text(t)))
                .is_some_and(|o| !o.is_empty()),
            Observed::Numbers(n) => check.number_offenders(n).is_some_and(|o| !o.is_empty()),
            Observed::Strings(s) => check.string_offenders(s).is_some_and(|o| !o.is_empty()),
            Observed::Number(_) | Observed::Count(_) => return Datapoint::None,
        };
        Datapoint::Judged {
            violated,
            observed,
            threshold: None,
            recorded: false,
        }
    }

    /// A count or custom number, judged as it is; the baseline records the
    /// value at the end of each period.
    fn judge_count<'a>(&mut self, value: f64, now_ms: u64, min_datapoints: usize) -> Datapoint<'a> {
        let Check::Compare { op, threshold } = self.behavior.check else {
            return Datapoint::WrongType;
        };
        // Judge against the baseline before this value joins it.
        let resolved = self.threshold(min_datapoints);
        let recorded = self
            .history
            .as_mut()
            .is_some_and(|h| h.add_count(now_ms, value));
        let Some(limit) = resolved else {
            return if recorded {
                Datapoint::Recorded
            } else {
                Datapoint::None
            };
        };
        Datapoint::Judged {
            violated: !op.holds(value, limit),
            observed: Observed::Number(value),
            threshold: matches!(threshold, Threshold::Statistical(_)).then_some(limit),
            recorded,
        }
    }

    /// Traffic: the sum of the last `durationSeconds` (300 s if absent): per
    /// report period, the sum of that many whole periods, judged when a
    /// period closes; per sample, a sliding window judged every sample.
    /// Until the sum covers the whole duration, only a conclusive datapoint
    /// counts.
    fn judge_traffic<'a>(
        &mut self,
        amount: Option<u64>,
        span_ms: Option<u64>,
        now_ms: u64,
        period_closed: bool,
        min_datapoints: usize,
    ) -> Datapoint<'a> {
        let Check::Compare { op, threshold } = self.behavior.check else {
            return Datapoint::None;
        };
        let window_ms = self.behavior.period_ms();
        let (Some(amount), Some(span)) = (amount, span_ms) else {
            // No honest delta (counter reset, reboot), or one whose span is
            // unknown: the window and the open period start over.
            if let Some(w) = &mut self.window {
                w.reset();
            }
            if let Some(p) = &mut self.periods {
                p.reset(period_closed);
            }
            if let Some(h) = &mut self.history {
                h.start(now_ms);
            }
            return Datapoint::None;
        };
        let resolved = self.threshold(min_datapoints);
        let judged = match (&mut self.window, &mut self.periods) {
            (Some(window), _) => {
                window.push(now_ms, span, amount, window_ms);
                Some((window.total(), window.is_full(window_ms)))
            }
            (None, Some(periods)) => {
                periods.add(amount);
                period_closed.then(|| periods.close(self.periods_per_datapoint))
            }
            (None, None) => return Datapoint::None,
        };
        let recorded = self
            .history
            .as_mut()
            .is_some_and(|h| h.add_traffic(now_ms, amount as f64));
        let none = if recorded {
            Datapoint::Recorded
        } else {
            Datapoint::None
        };
        let Some((total, full)) = judged else {
            return none;
        };
        let Some(limit) = resolved else {
            return none;
        };
        let violated = !op.holds(total as f64, limit);
        // A partial window's sum can only grow: a violation of "at most" and
        // the conformity of "at least" are already certain, the rest is not.
        if !full && violated != op.bounds_from_above() {
            return none;
        }
        Datapoint::Judged {
            violated,
            observed: Observed::Count(total),
            threshold: matches!(threshold, Threshold::Statistical(_)).then_some(limit),
            recorded,
        }
    }
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;
