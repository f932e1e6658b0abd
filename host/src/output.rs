//! `run`'s local output, for people and log shippers on the device: each
//! report as one JSON line (`output.ndjson`), and what the agent found, the
//! alarms, plugin alerts, annotations and changes of its own health, as
//! lines of their own (`output.events`).
//!
//! Two forms. NDJSON for tools: a report line is the report itself, byte for
//! byte what consumers have always read (no field added); an event line is a
//! JSON object whose `type` is `alarm`, `alert`, `annotations` or `health`,
//! and a report never has a `type` key, so one stream tells them apart. Human form,
//! for a person at a terminal (stdout is a terminal, or `run --human`): one
//! line per event, `HH:MM:SS KIND what`, and a one-line summary per report.
//! The human form applies to what goes to standard output; a file always
//! gets NDJSON.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::report::{self, Format, Report};
use crate::sample::Sample;

/// Where a kind of line goes.
pub enum Target {
    None,
    Stdout,
    File {
        path: PathBuf,
        file: BufWriter<File>,
    },
}

impl Target {
    /// `"-"` is standard output, anything else a file to append to; `key`
    /// names the setting in errors.
    pub fn open(target: Option<&str>, key: &str) -> anyhow::Result<Target> {
        Ok(match target {
            None => Target::None,
            Some("-") => Target::Stdout,
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("cannot open {key} file {path}: {e}"))?;
                Target::File {
                    path: path.into(),
                    file: BufWriter::new(file),
                }
            }
        })
    }

    fn write_line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        match self {
            Target::None => Ok(()),
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line)?;
                out.write_all(b"\n")?;
                out.flush()?;
                Ok(())
            }
            Target::File { path, file } => file
                .write_all(line)
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.flush())
                .map_err(|e| {
                    anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
                }),
        }
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Target::File { path, file } = self {
            file.flush().map_err(|e| {
                anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
            })?;
        }
        Ok(())
    }

    fn is_stdout(&self) -> bool {
        matches!(self, Target::Stdout)
    }
}

/// Something the agent found, ready for either form.
pub struct Event {
    /// `alarm`, `alert`, `annotations` or `health`: the `type` of the NDJSON
    /// line.
    pub kind: &'static str,
    pub timestamp_ms: u64,
    /// The line's fields (an object; `type` is added in front).
    pub fields: Value,
    /// The human line without its time, e.g.
    /// `ALARM DeviceRuleBaseline/UnexpectedListeningTcpPorts port 2121 (not in 22, 8883)`.
    pub human: String,
}

/// The reports' and events' lines.
pub struct Output {
    reports: Target,
    events: Target,
    /// Human form on standard output.
    human: bool,
    /// The annotations last shown: they are shown again only when they change.
    annotations: BTreeMap<String, String>,
}

impl Output {
    pub fn new(reports: Target, events: Target, human: bool) -> Output {
        Output {
            reports,
            events,
            human,
            annotations: BTreeMap::new(),
        }
    }

    /// Writes one report. NDJSON: the report as one line (CBOR reports as
    /// short-name JSON, the same document in text). Human: a summary line.
    pub fn report(&mut self, report: &Report, format: Format, now_ms: u64) -> anyhow::Result<()> {
        if self.human && self.reports.is_stdout() {
            let line = format!("{} {}", clock(now_ms), report_summary(report));
            return self.reports.write_line(line.as_bytes());
        }
        let text_format = if format == Format::Cbor {
            Format::JsonShort
        } else {
            format
        };
        self.reports
            .write_line(&report::encode(report, text_format))
    }

    /// Writes one event.
    pub fn event(&mut self, event: Event) -> anyhow::Result<()> {
        if self.human && self.events.is_stdout() {
            let line = format!("{} {}", clock(event.timestamp_ms), event.human);
            return self.events.write_line(line.as_bytes());
        }
        let mut line = Map::new();
        line.insert("type".to_owned(), Value::from(event.kind));
        if let Value::Object(fields) = event.fields {
            line.extend(fields);
        }
        // A map of strings and JSON values always serializes.
        self.events
            .write_line(&serde_json::to_vec(&line).unwrap_or_default())
    }

    /// Writes the plugin alerts of a sample (detection's own alerts are
    /// written as alarms), and its annotations when they changed since the
    /// last ones written. Returns how many lines were written, so the
    /// caller can tell a write that worked from no write at all.
    pub fn sample_events(&mut self, sample: &Sample) -> anyhow::Result<usize> {
        if matches!(self.events, Target::None) {
            return Ok(0);
        }
        let mut written = 0;
        for alert in sample.alerts.iter().filter(|a| !a.origin().is_detection()) {
            let mut fields = json!({"thing": sample.thing, "timestamp_ms": sample.timestamp_ms});
            if let (Value::Object(fields), Ok(Value::Object(alert))) =
                (&mut fields, serde_json::to_value(alert))
            {
                fields.extend(alert);
            }
            self.event(Event {
                kind: "alert",
                timestamp_ms: sample.timestamp_ms,
                fields,
                human: format!(
                    "ALERT {} {}/{}: {}",
                    alert.severity.as_str(),
                    alert.source,
                    alert.name,
                    alert.message
                ),
            })?;
            written += 1;
        }
        if sample.annotations != self.annotations {
            self.annotations = sample.annotations.clone();
            let shown: Vec<String> = sample
                .annotations
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            self.event(Event {
                kind: "annotations",
                timestamp_ms: sample.timestamp_ms,
                fields: json!({
                    "thing": sample.thing,
                    "timestamp_ms": sample.timestamp_ms,
                    "annotations": sample.annotations,
                }),
                human: match shown.is_empty() {
                    true => "NOTE annotations: none".to_owned(),
                    false => format!("NOTE annotations: {}", shown.join(", ")),
                },
            })?;
            written += 1;
        }
        Ok(written)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.reports.flush()?;
        self.events.flush()
    }
}

/// `HH:MM:SS` (UTC) of a time in ms since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// `REPORT 1764... : 3 TCP ports (22, 80, 443), 1 UDP port, 2 connections, 1.5 kB in, 0.3 kB out`.
fn report_summary(report: &Report) -> String {
    let mut parts = Vec::new();
    if let Some(metrics) = &report.metrics {
        let ports = |list: &crate::report::PortList, what: &str| {
            let shown: Vec<String> = list.ports.iter().map(|p| p.port.to_string()).collect();
            let mut shown = shown;
            shown.dedup();
            let noun = if list.total == 1 { "port" } else { "ports" };
            match shown.is_empty() {
                true => format!("{} {what} {noun}", list.total),
                false => format!("{} {what} {noun} ({})", list.total, shown.join(", ")),
            }
        };
        parts.push(ports(&metrics.listening_tcp_ports, "TCP"));
        parts.push(ports(&metrics.listening_udp_ports, "UDP"));
        let connections = metrics.tcp_connections.established_connections.total;
        parts.push(format!(
            "{connections} {}",
            if connections == 1 {
                "connection"
            } else {
                "connections"
            }
        ));
        if let Some(stats) = &metrics.network_stats {
            parts.push(format!(
                "{} B in, {} B out",
                stats.bytes_in, stats.bytes_out
            ));
        }
    }
    if !report.custom_metrics.is_empty() {
        let names: Vec<&str> = report.custom_metrics.keys().map(String::as_str).collect();
        parts.push(format!("custom metrics: {}", names.join(", ")));
    }
    format!("REPORT {}: {}", report.header.report_id, parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(
            clock(1_767_225_600_000 + 12 * 3_600_000 + 2 * 60_000 + 35_000),
            "12:02:35"
        );
    }
}
