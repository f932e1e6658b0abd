//! `defender-edge baseline`: Device Defender's fleet semantics for
//! statistical thresholds, computed from the events the fleet already sends.
//!
//! In the cloud a `statisticalThreshold` ranks a device's datapoint against
//! the datapoints of every device attached to the profile; on the device it
//! is a percentile of the device's own history ([`super::statistics`]). This
//! module reads the fleet's events, forms each device's datapoints as the
//! detector forms them by default (one per report period; traffic summed
//! over `durationSeconds` in whole periods, with the detector's own
//! [`PeriodSums`]), takes the behavior's percentile over every device's
//! datapoints with the detector's own percentile, and writes it back into the
//! profile as a fixed `value`. The profile stays in AWS's format, so the
//! strict loader reads it and Greengrass deploys it as `detection.profiles`.
//!
//! Two kinds of lines are read, because a fleet keeps one or the other:
//!
//! - Splunk HEC events as the Firehose sink sends them (and Firehose
//!   delivers them to S3): one event per metric per sample, the thing in
//!   `host`, the sample in `event.edge.report_id`. The metric events carry
//!   the values; `edge:alert` events only mark their sample.
//! - Device Defender reports, as `run` writes them to `output.ndjson` and
//!   `collect` prints them: one per report period, exactly the datapoints
//!   Detect judged. A report names no thing, so a file of reports is one
//!   device's, named after its thing (`edge-01.ndjson`).
//!
//! Between two reports `run` sends a sample to the SIEM only because it
//! carries an alert, and the traffic of such a sample covers one detection
//! interval, not a report period. The events do not say which samples ended
//! a report period, so a HEC sample carrying an alert gives no traffic
//! datapoint; counts and custom numbers are taken from every sample.
//!
//! [`Fleet::add_text`] and [`fleet_profile`] do no I/O, so the computation is
//! tested with plain strings; [`read_events`] and [`compute`] read the files.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::criteria::{Check, NumOp, Statistic, Threshold};
use super::metric::{self, Classified, Metric, Shape};
use super::profile::{self, Behavior, ProfileError};
use super::statistics::{PeriodSums, percentile_of_sorted};
use crate::report::Format;
use crate::sample::CustomMetricValue;

/// The `event.name` of an alert event in the SIEM path. Written here rather
/// than imported: `publish` sits beside `detect` and imports it, never the
/// other way round.
const ALERT_EVENT_NAME: &str = "edge:alert";

/// Device Defender's limit on `securityProfileDescription`.
const DESCRIPTION_LIMIT: usize = 1000;

/// Input that cannot give fleet thresholds. Every message names the file
/// (and the line) or the profile and behavior.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{origin}: the file is gzip-compressed; decompress it first (`gunzip -k {origin}`, or pipe `zcat` into `defender-edge baseline` without --events)"
    )]
    Compressed { origin: String },
    #[error("{origin}:{line}: {message}")]
    Input {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("no metric event or Device Defender report in {inputs}: the input is empty")]
    Empty { inputs: String },
    #[error("{0}")]
    Profile(#[from] ProfileError),
    #[error(
        "security profile `{profile}` ({origin}): no behavior judged on the device has a statisticalThreshold; there is nothing to compute"
    )]
    NothingStatistical { profile: String, origin: String },
    #[error(
        "security profile `{profile}` ({origin}): no statistical behavior has a datapoint in the events ({behaviors}); are these the fleet's events for this profile?"
    )]
    NoData {
        profile: String,
        origin: String,
        behaviors: String,
    },
}

/// The fleet's samples, by thing and sample id.
#[derive(Debug, Default)]
pub struct Fleet {
    devices: BTreeMap<String, BTreeMap<u64, FleetSample>>,
    /// Metric events and reports read.
    metric_events: usize,
}

/// What one sample of one device said: its numeric metrics.
#[derive(Debug, Default)]
struct FleetSample {
    time_ms: u64,
    /// By metric name: counts, traffic and custom numbers. List metrics have
    /// no statistical threshold and are not kept.
    numbers: BTreeMap<String, f64>,
    /// A HEC sample with an alert: it may be a tick between two reports,
    /// whose traffic covers only a detection interval.
    alerted: bool,
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::default()
    }

    /// Devices with at least one sample.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Metric events and reports read so far.
    pub fn metric_events(&self) -> usize {
        self.metric_events
    }

    /// Reads JSON objects, newline-separated or concatenated as Firehose
    /// writes them to S3. `origin` names the input in errors; `file_thing`
    /// is the thing a report belongs to (the file's name), `None` when the
    /// input has no name to give (standard input).
    pub fn add_text(
        &mut self,
        text: &str,
        origin: &str,
        file_thing: Option<&str>,
    ) -> Result<(), BaselineError> {
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        loop {
            let offset = stream.byte_offset();
            let rest = &text[offset..];
            let start = offset + (rest.len() - rest.trim_start().len());
            let line = 1 + text[..start].bytes().filter(|b| *b == b'\n').count();
            let error = |message: String| BaselineError::Input {
                origin: origin.to_owned(),
                line,
                message,
            };
            match stream.next() {
                None => return Ok(()),
                Some(Err(e)) => {
                    // serde_json appends its own position; the line is given
                    // once, in front.
                    let text = e.to_string();
                    let what = text.split(" at line ").next().unwrap_or(&text);
                    return Err(BaselineError::Input {
                        origin: origin.to_owned(),
                        line: e.line(),
                        message: format!("not valid JSON: {what}"),
                    });
                }
                Some(Ok(value)) => self.add_value(value, file_thing).map_err(error)?,
            }
        }
    }

    fn sample(&mut self, thing: &str, id: u64, time_ms: u64) -> &mut FleetSample {
        let sample = self
            .devices
            .entry(thing.to_owned())
            .or_default()
            .entry(id)
            .or_default();
        sample.time_ms = time_ms;
        sample
    }

    fn add_value(&mut self, value: Value, file_thing: Option<&str>) -> Result<(), String> {
        let Some(object) = value.as_object() else {
            return Err(format!("expected a JSON object, found {}", kind(&value)));
        };
        if let Some(event) = object.get("event").and_then(Value::as_object) {
            return self.add_event(object, event);
        }
        if object.contains_key("header") || object.contains_key("hed") {
            return self.add_report(&value, file_thing);
        }
        Err("neither a HEC event (`event.name`) nor a Device Defender report (`header`)".to_owned())
    }

    /// One HEC event of the SIEM path (docs/SPLUNK.md).
    fn add_event(
        &mut self,
        object: &Map<String, Value>,
        event: &Map<String, Value>,
    ) -> Result<(), String> {
        let name = event
            .get("name")
            .and_then(Value::as_str)
            .ok_or("`event.name` is missing: not a defender-edge HEC event")?;
        let thing = object
            .get("host")
            .and_then(Value::as_str)
            .or_else(|| event.get("thing").and_then(Value::as_str))
            .filter(|thing| !thing.is_empty())
            .ok_or("the event names no thing (`host` or `event.thing`)")?;
        let time_ms = event
            .get("timestamp")
            .and_then(Value::as_u64)
            .or_else(|| {
                object
                    .get("time")
                    .and_then(Value::as_f64)
                    .map(|s| (s * 1000.0) as u64)
            })
            .ok_or("the event has no time (`event.timestamp` or `time`)")?;
        let id = event
            .get("edge")
            .and_then(|edge| edge.get("report_id"))
            .and_then(Value::as_u64)
            .unwrap_or(time_ms);
        if name == ALERT_EVENT_NAME {
            self.sample(thing, id, time_ms).alerted = true;
            return Ok(());
        }
        let metric = match metric::classify(name)? {
            Classified::Device(metric) => metric,
            Classified::CloudSide => {
                return Err(format!(
                    "`{name}` is a cloud-side metric: AWS IoT measures it, devices do not send it"
                ));
            }
        };
        let value = event
            .get("value")
            .ok_or_else(|| format!("metric `{name}` has no `event.value`"))?;
        let number = match metric.shape() {
            Shape::Gauge | Shape::Traffic => Some(
                value
                    .get("count")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| {
                        format!("metric `{name}`: `event.value.count` is not a whole non-negative number: {value}")
                    })? as f64,
            ),
            // A custom metric's list values have no statistical threshold.
            Shape::Custom => value.get("number").and_then(Value::as_f64),
            Shape::Ports | Shape::Addresses => None,
        };
        self.metric_events += 1;
        let sample = self.sample(thing, id, time_ms);
        if let Some(number) = number {
            sample.numbers.insert(name.to_owned(), number);
        }
        Ok(())
    }

    /// One Device Defender report (`output.ndjson`, `collect`).
    fn add_report(&mut self, value: &Value, file_thing: Option<&str>) -> Result<(), String> {
        let thing = file_thing.ok_or(
            "a Device Defender report names no thing: give each device's reports in a file named after its thing (edge-01.ndjson)",
        )?;
        let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        let report = crate::report::decode(&bytes, Format::Json)
            .map_err(|e| format!("not a Device Defender report: {e}"))?;
        let id = report.header.report_id;
        let mut numbers = BTreeMap::new();
        if let Some(metrics) = &report.metrics {
            let distinct = |ports: &[crate::report::Port]| {
                let mut numbers: Vec<u32> = ports.iter().map(|p| p.port).collect();
                numbers.sort_unstable();
                numbers.dedup();
                numbers.len() as f64
            };
            numbers.insert(
                "aws:num-listening-tcp-ports",
                distinct(&metrics.listening_tcp_ports.ports),
            );
            numbers.insert(
                "aws:num-listening-udp-ports",
                distinct(&metrics.listening_udp_ports.ports),
            );
            numbers.insert(
                "aws:num-established-tcp-connections",
                metrics.tcp_connections.established_connections.total as f64,
            );
            if let Some(stats) = metrics.network_stats {
                numbers.insert("aws:all-bytes-in", stats.bytes_in as f64);
                numbers.insert("aws:all-bytes-out", stats.bytes_out as f64);
                numbers.insert("aws:all-packets-in", stats.packets_in as f64);
                numbers.insert("aws:all-packets-out", stats.packets_out as f64);
            }
        }
        self.metric_events += 1;
        // A report id is the time it was made in ms (`max(now, last + 1)`).
        let sample = self.sample(thing, id, id);
        for (name, number) in numbers {
            sample.numbers.insert(name.to_owned(), number);
        }
        for (name, value) in &report.custom_metrics {
            if let CustomMetricValue::Number(n) = value {
                sample.numbers.insert(name.clone(), *n);
            }
        }
        Ok(())
    }

    /// Every device's datapoints of `behavior`, as the detector forms them
    /// by default: a count or custom number is the value of each report;
    /// traffic is the sum of the last `durationSeconds` in whole report
    /// periods. Returns the datapoints and how many devices gave any.
    fn datapoints(&self, behavior: &Behavior, report_interval_ms: u64) -> (Vec<f64>, usize) {
        let traffic = behavior.metric.shape() == Shape::Traffic;
        let periods = behavior
            .period_ms()
            .div_ceil(report_interval_ms.max(1))
            .max(1) as usize;
        let mut values = Vec::new();
        let mut devices = 0;
        for samples in self.devices.values() {
            let before = values.len();
            let mut ordered: Vec<&FleetSample> = samples.values().collect();
            ordered.sort_by_key(|s| s.time_ms);
            let mut sums = PeriodSums::default();
            sums.reset(true);
            for sample in ordered {
                let number = sample.numbers.get(&behavior.metric_name).copied();
                if !traffic {
                    values.extend(number);
                    continue;
                }
                if sample.alerted {
                    continue;
                }
                match number {
                    Some(amount) => {
                        sums.add(amount as u64);
                        let (total, whole) = sums.close(periods);
                        if whole {
                            values.push(total as f64);
                        }
                    }
                    // No honest delta (a restart, a counter reset): the
                    // device's sums start over, and so do these.
                    None => sums.reset(true),
                }
            }
            if values.len() > before {
                devices += 1;
            }
        }
        (values, devices)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A statistical behavior resolved to the fleet's percentile.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub behavior: String,
    pub metric: String,
    /// `p90`, as written in the profile.
    pub statistic: &'static str,
    pub devices: usize,
    pub datapoints: usize,
    /// The percentile of the fleet's datapoints.
    pub fleet_value: f64,
    /// The criteria's new `value`: `{"count": n}` or `{"number": x}`.
    pub value: Value,
    pub operator: &'static str,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {} of {} datapoints from {} devices = {}; written as {} {}",
            self.behavior,
            self.metric,
            self.statistic,
            self.datapoints,
            self.devices,
            self.fleet_value,
            self.operator,
            self.value
        )
    }
}

/// A statistical behavior the events gave no datapoint for: it stays
/// statistical, judged against each device's own history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub behavior: String,
    pub metric: String,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "warning: {} ({}): no datapoint in the events; left statistical, judged against each device's own history",
            self.behavior, self.metric
        )
    }
}

/// The profile with fleet thresholds, and what was done to each behavior.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// The profile document, in AWS's format.
    pub profile: Value,
    pub resolved: Vec<Resolved>,
    pub unresolved: Vec<Unresolved>,
}

impl Baseline {
    /// One line per statistical behavior, for the person who ran it.
    pub fn summary(&self) -> Vec<String> {
        let resolved = self.resolved.iter().map(ToString::to_string);
        let unresolved = self.unresolved.iter().map(ToString::to_string);
        resolved.chain(unresolved).collect()
    }
}

/// Resolves every statistical behavior of the profile `text` (from `origin`)
/// to the percentile of the fleet's datapoints. `report_interval_s` is the
/// fleet's `report.intervalSeconds`: how many reports a traffic datapoint
/// sums. Other behaviors, and every other field, are kept as written.
pub fn fleet_profile(
    text: &str,
    origin: &str,
    fleet: &Fleet,
    report_interval_s: u64,
) -> Result<Baseline, BaselineError> {
    let loaded = profile::parse_text(text, origin)?;
    // The loader accepted the text, so it is JSON: an object, or a string
    // holding one, as Greengrass recipes carry profiles.
    let mut document: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if let Value::String(inner) = &document {
        document = serde_json::from_str(inner).unwrap_or(Value::Null);
    }
    let statistical: Vec<(&Behavior, NumOp, Statistic)> = loaded
        .behaviors
        .iter()
        .filter_map(|b| match b.check {
            Check::Compare {
                op,
                threshold: Threshold::Statistical(statistic),
            } => Some((b, op, statistic)),
            _ => None,
        })
        .collect();
    if statistical.is_empty() {
        return Err(BaselineError::NothingStatistical {
            profile: loaded.name,
            origin: origin.to_owned(),
        });
    }
    let mut resolved = Vec::new();
    let mut unresolved = Vec::new();
    for (behavior, op, statistic) in statistical {
        let (mut values, devices) =
            fleet.datapoints(behavior, report_interval_s.saturating_mul(1000));
        if values.is_empty() {
            unresolved.push(Unresolved {
                behavior: behavior.name.clone(),
                metric: behavior.metric_name.clone(),
            });
            continue;
        }
        values.sort_unstable_by(f64::total_cmp);
        let fleet_value = tidy(percentile_of_sorted(&values, statistic.quantile));
        let value = match behavior.metric {
            Metric::Custom(_) => json!({ "number": fleet_value }),
            _ => json!({ "count": whole(op, fleet_value) }),
        };
        rewrite(&mut document, &behavior.name, &value);
        resolved.push(Resolved {
            behavior: behavior.name.clone(),
            metric: behavior.metric_name.clone(),
            statistic: statistic.name,
            devices,
            datapoints: values.len(),
            fleet_value,
            value,
            operator: operator_name(op),
        });
    }
    if resolved.is_empty() {
        let names: Vec<&str> = unresolved.iter().map(|u| u.behavior.as_str()).collect();
        return Err(BaselineError::NoData {
            profile: loaded.name,
            origin: origin.to_owned(),
            behaviors: names.join(", "),
        });
    }
    note_origin(&mut document, fleet, &resolved, &unresolved);
    Ok(Baseline {
        profile: document,
        resolved,
        unresolved,
    })
}

/// The value to 13 significant digits: the interpolation's rounding error
/// (p90 of 1..=10 comes out as 9.100000000000001) is not part of the
/// fleet's threshold, and must not push a whole-number bound up by one.
fn tidy(value: f64) -> f64 {
    format!("{value:.12e}").parse().unwrap_or(value)
}

/// The whole number that judges whole datapoints (counts, bytes, packets)
/// exactly as the percentile would: `x <= 9.1` holds for the same whole `x`
/// as `x <= 9`, and `x < 9.1` for the same as `x < 10`. Device Defender's
/// `count` is a whole number.
fn whole(op: NumOp, value: f64) -> u64 {
    let rounded = match op {
        NumOp::LessThanEquals | NumOp::GreaterThan => value.floor(),
        NumOp::LessThan | NumOp::GreaterThanEquals => value.ceil(),
    };
    rounded.max(0.0) as u64
}

fn operator_name(op: NumOp) -> &'static str {
    match op {
        NumOp::LessThan => "less-than",
        NumOp::LessThanEquals => "less-than-equals",
        NumOp::GreaterThan => "greater-than",
        NumOp::GreaterThanEquals => "greater-than-equals",
    }
}

/// Replaces the named behavior's `statisticalThreshold` with `value`; the
/// operator, `durationSeconds` and the consecutive datapoints stay.
fn rewrite(document: &mut Value, behavior: &str, value: &Value) {
    let Some(behaviors) = document.get_mut("behaviors").and_then(Value::as_array_mut) else {
        return;
    };
    for b in behaviors {
        if b.get("name").and_then(Value::as_str) != Some(behavior) {
            continue;
        }
        if let Some(criteria) = b.get_mut("criteria").and_then(Value::as_object_mut) {
            criteria.remove("statisticalThreshold");
            criteria.insert("value".to_owned(), value.clone());
        }
    }
}

/// Says in `securityProfileDescription` (the one free-text field the API
/// and the strict loader take) where the thresholds came from, after the
/// description the profile had.
fn note_origin(
    document: &mut Value,
    fleet: &Fleet,
    resolved: &[Resolved],
    unresolved: &[Unresolved],
) {
    let Some(object) = document.as_object_mut() else {
        return;
    };
    let thresholds: Vec<String> = resolved
        .iter()
        .map(|r| format!("{} {} = {}", r.behavior, r.statistic, r.fleet_value))
        .collect();
    let mut note = format!(
        "Fleet thresholds by defender-edge baseline from {} devices: {}",
        fleet.devices(),
        thresholds.join(", ")
    );
    if !unresolved.is_empty() {
        let names: Vec<&str> = unresolved.iter().map(|u| u.behavior.as_str()).collect();
        note.push_str(&format!(
            "; still each device's own history: {}",
            names.join(", ")
        ));
    }
    let description = match object
        .get("securityProfileDescription")
        .and_then(Value::as_str)
    {
        Some(before) if !before.is_empty() => format!("{before} | {note}"),
        _ => note,
    };
    object.insert(
        "securityProfileDescription".to_owned(),
        Value::from(truncate(description, DESCRIPTION_LIMIT)),
    );
}

/// At most `limit` characters, ending in `...` when cut.
fn truncate(text: String, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text;
    }
    let kept: String = text.chars().take(limit.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// Reads the event files into `fleet`: each path is a file or a folder,
/// read recursively (an S3 prefix synced to disk), hidden files skipped.
/// Without paths, standard input is read. A file of reports is the device
/// its name names, up to the first dot (`edge-01.ndjson`: `edge-01`).
pub fn read_events(paths: &[PathBuf], fleet: &mut Fleet) -> Result<(), BaselineError> {
    if paths.is_empty() {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|source| BaselineError::Read {
                path: PathBuf::from("<standard input>"),
                source,
            })?;
        return add_bytes(fleet, &bytes, "<standard input>", None);
    }
    for path in paths {
        let mut files = Vec::new();
        collect_files(path, &mut files)?;
        for file in files {
            let bytes = std::fs::read(&file).map_err(|source| BaselineError::Read {
                path: file.clone(),
                source,
            })?;
            let thing = file
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.split('.').next())
                .filter(|name| !name.is_empty());
            add_bytes(fleet, &bytes, &file.display().to_string(), thing)?;
        }
    }
    Ok(())
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), BaselineError> {
    let read_error = |source| BaselineError::Read {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(read_error)?.is_dir() {
        files.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with('.'));
        if !hidden {
            collect_files(&entry, files)?;
        }
    }
    Ok(())
}

fn add_bytes(
    fleet: &mut Fleet,
    bytes: &[u8],
    origin: &str,
    file_thing: Option<&str>,
) -> Result<(), BaselineError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(BaselineError::Compressed {
            origin: origin.to_owned(),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| BaselineError::Input {
        origin: origin.to_owned(),
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count(),
        message: "not UTF-8 text".to_owned(),
    })?;
    fleet.add_text(text, origin, file_thing)
}

/// The whole command: reads the profile and the events, and resolves the
/// profile's statistical behaviors.
pub fn compute(
    profile_path: &Path,
    events: &[PathBuf],
    report_interval_s: u64,
) -> Result<Baseline, BaselineError> {
    let text = std::fs::read_to_string(profile_path).map_err(|source| BaselineError::Read {
        path: profile_path.to_owned(),
        source,
    })?;
    let origin = profile_path.display().to_string();
    // A broken profile is refused before the events are read.
    profile::parse_text(&text, &origin)?;
    let mut fleet = Fleet::new();
    read_events(events, &mut fleet)?;
    if fleet.metric_events() == 0 {
        let inputs: Vec<String> = events.iter().map(|p| p.display().to_string()).collect();
        return Err(BaselineError::Empty {
            inputs: match inputs.is_empty() {
                true => "standard input".to_owned(),
                false => inputs.join(", "),
            },
        });
    }
    fleet_profile(&text, &origin, &fleet, report_interval_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A HEC event in the shape the Firehose sink sends (docs/SPLUNK.md).
    fn hec(thing: &str, id: u64, name: &str, value: Value) -> String {
        json!({
            "time": id as f64 / 1000.0, "host": thing, "source": "defender-edge",
            "sourcetype": "aws_iot_device_defender",
            "fields": {"thing": thing, "metric": name},
            "event": {"name": name, "thing": thing, "value": value, "timestamp": id,
                      "edge": {"report_id": id, "event_id": format!("{thing}/{id}/{name}")}}
        })
        .to_string()
    }

    fn alert(thing: &str, id: u64) -> String {
        json!({
            "time": id as f64 / 1000.0, "host": thing,
            "fields": {"thing": thing, "metric": "edge:alert", "severity": "high"},
            "event": {"name": "edge:alert", "thing": thing, "timestamp": id,
                      "alert": {"source": "plugin", "name": "x", "severity": "high",
                                "message": "m", "attributes": {}},
                      "edge": {"report_id": id, "event_id": format!("{thing}/{id}/edge:alert/0")}}
        })
        .to_string()
    }

    /// A Device Defender report line as `collect` prints it.
    fn report(id: u64, connections: u64, bytes_out: Option<u64>) -> String {
        let mut metrics = json!({
            "listening_tcp_ports": {"ports": [{"port": 22}, {"port": 22, "interface": "lo"}], "total": 2},
            "listening_udp_ports": {"ports": [], "total": 0},
            "tcp_connections": {"established_connections": {"connections": [], "total": connections}}
        });
        if let Some(out) = bytes_out {
            metrics["network_stats"] =
                json!({"bytes_in": 0, "bytes_out": out, "packets_in": 0, "packets_out": 0});
        }
        json!({"header": {"report_id": id, "version": "1.0"}, "metrics": metrics}).to_string()
    }

    const PROFILE: &str = r#"{"securityProfileName": "Fleet", "securityProfileDescription": "Written for Detect",
      "behaviors": [
        {"name": "FewConnections", "metric": "aws:num-established-tcp-connections",
         "criteria": {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"},
                      "durationSeconds": 300, "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 3}},
        {"name": "SomeConnections", "metric": "aws:num-established-tcp-connections",
         "criteria": {"comparisonOperator": "greater-than-equals", "statisticalThreshold": {"statistic": "p10"}}},
        {"name": "Temperature", "metric": "temperature",
         "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p50"}}},
        {"name": "OnlySsh", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}},
        {"name": "Messages", "metric": "aws:num-messages-sent",
         "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p90"}}}
      ]}"#;

    fn behavior<'a>(profile: &'a Value, name: &str) -> &'a Value {
        profile["behaviors"]
            .as_array()
            .expect("behaviors")
            .iter()
            .find(|b| b["name"] == name)
            .expect("behavior kept")
    }

    /// Four devices, five samples each, connections 1 to 20: p90 is 18.1
    /// and p10 2.9 (linear between closest ranks, as the device computes
    /// them); whole datapoints make them `count` 18 and 3.
    #[test]
    fn baseline_percentiles_over_several_devices_become_fixed_thresholds() {
        let mut lines = Vec::new();
        for (d, thing) in ["edge-a", "edge-b", "edge-c", "edge-d"].iter().enumerate() {
            for s in 0..5u64 {
                let id = 1_767_225_600_000 + s * 300_000;
                let connections = d as u64 * 5 + s + 1;
                lines.push(hec(
                    thing,
                    id,
                    "aws:num-established-tcp-connections",
                    json!({"count": connections}),
                ));
                lines.push(hec(
                    thing,
                    id,
                    "aws:listening-tcp-ports",
                    json!({"ports": [22]}),
                ));
            }
        }
        lines.push(hec("edge-a", 1, "temperature", json!({"number": 20.5})));
        lines.push(hec("edge-a", 2, "temperature", json!({"number": 21.5})));
        lines.push(hec("edge-b", 1, "temperature", json!({"number": 30.0})));
        let mut fleet = Fleet::new();
        fleet
            .add_text(&lines.join("\n"), "events.ndjson", None)
            .expect("events read");
        assert_eq!(fleet.devices(), 4);

        let baseline = fleet_profile(PROFILE, "fleet.json", &fleet, 300).expect("resolved");
        let by_name = |name: &str| {
            baseline
                .resolved
                .iter()
                .find(|r| r.behavior == name)
                .expect(name)
        };
        let few = by_name("FewConnections");
        assert!((few.fleet_value - 18.1).abs() < 1e-9, "{few}");
        assert_eq!((few.devices, few.datapoints), (4, 20));
        assert_eq!(few.value, json!({"count": 18}));
        let some = by_name("SomeConnections");
        assert!((some.fleet_value - 2.9).abs() < 1e-9, "{some}");
        assert_eq!(some.value, json!({"count": 3}));
        assert_eq!(by_name("Temperature").value, json!({"number": 21.5}));
        assert!(baseline.unresolved.is_empty());

        let p = &baseline.profile;
        assert_eq!(
            behavior(p, "FewConnections")["criteria"],
            json!({"comparisonOperator": "less-than-equals", "value": {"count": 18},
                   "durationSeconds": 300, "consecutiveDatapointsToAlarm": 2,
                   "consecutiveDatapointsToClear": 3}),
            "operator, duration and datapoints kept; the statistic replaced"
        );
        let original: Value = serde_json::from_str(PROFILE).expect("json");
        for unchanged in ["OnlySsh", "Messages"] {
            assert_eq!(behavior(p, unchanged), behavior(&original, unchanged));
        }
        let description = p["securityProfileDescription"]
            .as_str()
            .expect("description");
        assert!(
            description.starts_with("Written for Detect | Fleet thresholds by defender-edge baseline from 4 devices: FewConnections p90 = 18.1"),
            "{description}"
        );

        // The strict loader takes it, with fixed thresholds the detector
        // judges at once.
        let loaded = profile::compile(p.clone(), "written").expect("loads");
        let fixed: Vec<(String, Threshold)> = loaded
            .behaviors
            .iter()
            .filter_map(|b| match b.check {
                Check::Compare { threshold, .. } => Some((b.name.clone(), threshold)),
                _ => None,
            })
            .collect();
        assert_eq!(
            fixed,
            vec![
                ("FewConnections".to_owned(), Threshold::Fixed(18.0)),
                ("SomeConnections".to_owned(), Threshold::Fixed(3.0)),
                ("Temperature".to_owned(), Threshold::Fixed(21.5)),
            ]
        );
    }

    #[test]
    fn baseline_rounding_keeps_the_verdict_of_every_whole_datapoint() {
        for op in [
            NumOp::LessThan,
            NumOp::LessThanEquals,
            NumOp::GreaterThan,
            NumOp::GreaterThanEquals,
        ] {
            for fleet_value in [0.0, 2.9, 3.0, 18.1, 7.5] {
                let written = whole(op, fleet_value) as f64;
                for x in 0..25 {
                    let x = f64::from(x);
                    assert_eq!(
                        op.holds(x, written),
                        op.holds(x, fleet_value),
                        "{op:?} {fleet_value} -> {written} differs at {x}"
                    );
                }
            }
        }
    }

    /// Traffic is summed over `durationSeconds` in whole report periods, as
    /// the device sums it; a report without traffic starts the sums over; a
    /// HEC sample with an alert gives no traffic datapoint, but its counts
    /// count.
    #[test]
    fn baseline_traffic_sums_whole_report_periods() {
        let profile = r#"{"securityProfileName": "Traffic", "behaviors": [
            {"name": "BytesOut", "metric": "aws:all-bytes-out",
             "criteria": {"comparisonOperator": "less-than-equals", "durationSeconds": 600,
                          "statisticalThreshold": {"statistic": "p100"}}},
            {"name": "Connections", "metric": "aws:num-established-tcp-connections",
             "criteria": {"comparisonOperator": "less-than-equals",
                          "statisticalThreshold": {"statistic": "p100"}}}]}"#;
        let reports = [
            report(1_000, 1, Some(10)),
            report(301_000, 1, Some(20)),
            report(601_000, 1, Some(30)),
            report(901_000, 1, None),
            report(1_201_000, 1, Some(1_000)),
            report(1_501_000, 1, Some(5)),
        ];
        let mut fleet = Fleet::new();
        fleet
            .add_text(&reports.join("\n"), "edge-a.ndjson", Some("edge-a"))
            .expect("reports read");
        let lines = [
            hec("edge-b", 10, "aws:all-bytes-out", json!({"count": 40})),
            hec("edge-b", 20, "aws:all-bytes-out", json!({"count": 2})),
            hec(
                "edge-b",
                20,
                "aws:num-established-tcp-connections",
                json!({"count": 9}),
            ),
            alert("edge-b", 20),
            hec("edge-b", 30, "aws:all-bytes-out", json!({"count": 50})),
        ];
        fleet
            .add_text(&lines.join("\n"), "events", None)
            .expect("events read");
        let edge_b = fleet.devices.get("edge-b").expect("edge-b");
        assert!(edge_b[&20].alerted);

        let loaded = profile::parse_text(profile, "p").expect("profile");
        assert_eq!(
            fleet.datapoints(&loaded.behaviors[0], 300_000),
            (vec![30.0, 50.0, 1_005.0, 90.0], 2),
            "edge-a: 10+20, 20+30, (reset) 1000+5; edge-b: 40+50 around the alerted sample"
        );
        let baseline = fleet_profile(profile, "p", &fleet, 300).expect("resolved");
        assert_eq!(baseline.resolved[0].value, json!({"count": 1_005}));
        assert_eq!(
            baseline.resolved[1].value,
            json!({"count": 9}),
            "the alerted sample's count is a datapoint"
        );
    }

    #[test]
    fn baseline_duplicates_and_concatenated_objects_are_read_once() {
        let once = hec(
            "edge-a",
            7,
            "aws:num-listening-tcp-ports",
            json!({"count": 3}),
        );
        // Firehose joins records without a delimiter; at-least-once delivery
        // repeats events.
        let text = format!("{once}{once}\n{once}");
        let mut fleet = Fleet::new();
        fleet.add_text(&text, "s3-object", None).expect("read");
        let loaded = profile::parse_text(
            r#"{"securityProfileName": "P", "behaviors": [{"name": "Ports",
                "metric": "aws:num-listening-tcp-ports", "criteria": {
                "comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p50"}}}]}"#,
            "p",
        )
        .expect("profile");
        assert_eq!(
            fleet.datapoints(&loaded.behaviors[0], 300_000),
            (vec![3.0], 1)
        );
    }

    #[test]
    fn baseline_bad_input_names_the_line_and_what_is_wrong() {
        let good = hec(
            "edge-a",
            1,
            "aws:num-listening-tcp-ports",
            json!({"count": 3}),
        );
        let cases = [
            (
                format!("{good}\n{}", hec("edge-a", 2, "aws:num-listening-tcp-portz", json!({"count": 1}))),
                None,
                "events.ndjson:2: unknown Device Defender metric `aws:num-listening-tcp-portz`",
            ),
            (
                format!("{good}\n\n{}", hec("edge-a", 2, "aws:num-messages-sent", json!({"count": 1}))),
                None,
                "events.ndjson:3: `aws:num-messages-sent` is a cloud-side metric",
            ),
            (
                format!("{good}\n{{\"event\": {{\"name\": "),
                None,
                "events.ndjson:2: not valid JSON: EOF while parsing",
            ),
            (
                format!("{good}\n[1]"),
                None,
                "events.ndjson:2: expected a JSON object, found an array",
            ),
            (
                format!("{good}\n{{\"type\": \"alarm\"}}"),
                None,
                "events.ndjson:2: neither a HEC event (`event.name`) nor a Device Defender report (`header`)",
            ),
            (
                hec("edge-a", 1, "aws:all-bytes-out", json!({"count": -4})),
                None,
                "events.ndjson:1: metric `aws:all-bytes-out`: `event.value.count` is not a whole non-negative number: {\"count\":-4}",
            ),
            (
                report(1, 1, None),
                None,
                "events.ndjson:1: a Device Defender report names no thing",
            ),
            (
                json!({"header": {"report_id": 1, "version": "1.0"}, "metrics": {"listening_tcp_ports": 3}}).to_string(),
                Some("edge-a"),
                "events.ndjson:1: not a Device Defender report: ",
            ),
        ];
        for (text, thing, expected) in cases {
            let error = Fleet::new()
                .add_text(&text, "events.ndjson", thing)
                .expect_err(expected)
                .to_string();
            assert!(
                error.starts_with(expected),
                "{error}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn baseline_refuses_a_profile_with_nothing_to_compute_and_events_without_data() {
        let mut fleet = Fleet::new();
        fleet
            .add_text(
                &hec(
                    "edge-a",
                    1,
                    "aws:num-listening-tcp-ports",
                    json!({"count": 3}),
                ),
                "e",
                None,
            )
            .expect("read");
        let fixed = r#"{"securityProfileName": "Fixed", "behaviors": [{"name": "Ports",
            "metric": "aws:num-listening-tcp-ports",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}]}"#;
        let error =
            fleet_profile(fixed, "fixed.json", &fleet, 300).expect_err("nothing statistical");
        assert_eq!(
            error.to_string(),
            "security profile `Fixed` (fixed.json): no behavior judged on the device has a statisticalThreshold; there is nothing to compute"
        );

        // Every statistical behavior without data: an error. Some without
        // data: they stay statistical, each with a warning.
        let error = fleet_profile(PROFILE, "fleet.json", &fleet, 300).expect_err("no data");
        assert_eq!(
            error.to_string(),
            "security profile `Fleet` (fleet.json): no statistical behavior has a datapoint in the events (FewConnections, SomeConnections, Temperature); are these the fleet's events for this profile?"
        );
        fleet
            .add_text(
                &hec("edge-a", 1, "temperature", json!({"number": 40.0})),
                "e",
                None,
            )
            .expect("read");
        let baseline = fleet_profile(PROFILE, "fleet.json", &fleet, 300).expect("partly resolved");
        assert_eq!(baseline.resolved.len(), 1);
        assert_eq!(
            baseline.summary()[1],
            "warning: FewConnections (aws:num-established-tcp-connections): no datapoint in the events; left statistical, judged against each device's own history"
        );
        let few = behavior(&baseline.profile, "FewConnections");
        assert_eq!(
            few["criteria"]["statisticalThreshold"],
            json!({"statistic": "p90"})
        );
        profile::compile(baseline.profile.clone(), "written").expect("still loads");
    }
}
