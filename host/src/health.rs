//! The agent's own health, once per report period: what a fleet operator
//! needs to tell a sick agent from a silent one (docs/SPLUNK.md, "Agent
//! health"; docs/CONFIGURATION.md, `health`).
//!
//! A health event is built from the status registry, the same values
//! `defender-edge status` shows, so every area that counts something is in it
//! without this module knowing the area. On top of the values it judges:
//! `degraded` when a part is in a bad state (a plugin disabled, a sink not
//! started, an outbox on a read-only disk, MQTT disconnected, detection
//! unable to judge anything) or an error counter grew since the previous
//! health event; `ok` otherwise. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::status::{ALARM_PREFIX, Snapshot, Value};

/// The `event.name` of a health event (and its HEC `fields.metric`).
pub const HEALTH_EVENT_NAME: &str = "edge:health";

/// The default `health.topic`.
pub const DEFAULT_HEALTH_TOPIC: &str = "defender-edge/{thing}/health";

/// The `health` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HealthConfig {
    /// The IoT topic the health event is published to once per report
    /// period (`{thing}` is replaced by the thing name); `null` publishes
    /// none. Firehose, when enabled, gets the event either way.
    pub topic: Option<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            topic: Some(DEFAULT_HEALTH_TOPIC.to_owned()),
        }
    }
}

impl HealthConfig {
    /// Names the key and the problem.
    pub fn check(&self) -> Result<(), String> {
        match &self.topic {
            Some(topic) => crate::detect::check_topic("health.topic", topic),
            None => Ok(()),
        }
    }

    /// The topic for `thing`, if health events are published.
    pub fn topic_for(&self, thing: &str) -> Option<String> {
        self.topic.as_ref().map(|t| t.replace("{thing}", thing))
    }
}

/// Whether the agent works as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Ok,
    Degraded,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Ok => "ok",
            HealthState::Degraded => "degraded",
        }
    }
}

/// One health event's content.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// The defender-edge release.
    pub version: &'static str,
    /// Seconds since this process started.
    pub uptime_s: u64,
    pub state: HealthState,
    /// Why it is degraded, one readable line each; empty when `ok`.
    pub problems: Vec<String>,
    /// Open alarms, `profile/behavior` → since when and what.
    pub open_alarms: BTreeMap<String, String>,
    /// Every status value by area (`plugin`, `outbox`, `firehose`,
    /// `detect`...), the rest of its name as the key: what
    /// `defender-edge status` shows.
    pub status: BTreeMap<String, BTreeMap<String, Value>>,
}

/// States that mean a part does not work as configured, by their first
/// words (`plugin.<name>.state`, `firehose.state`, `securityhub.state`,
/// `mqtt.state`, `detect.state`).
const BAD_STATES: [&str; 8] = [
    "failed",
    "disabled",
    "missing",
    "not started",
    "not built in",
    "waiting",
    "disconnected",
    "idle",
];

/// Counters whose growth is trouble, by the end of their name: errors and
/// failures of every area, records an outbox found corrupt, reports refused
/// or held back, events too large to send.
const TROUBLE_COUNTERS: [&str; 12] = [
    "errors",
    "failures",
    "_failed",
    "corrupt_records",
    "corrupt_files",
    "unreadable",
    "refused",
    "rejected",
    "timed_out",
    "warnings",
    "malformed_lines",
    "oversized",
];

/// Builds health events and remembers the counters of the previous one, so
/// that an error counted once at boot does not keep an agent `degraded`.
#[derive(Debug, Default)]
pub struct HealthMonitor {
    previous: BTreeMap<String, u64>,
}

impl HealthMonitor {
    pub fn new() -> HealthMonitor {
        HealthMonitor::default()
    }

    /// The health at `now_ms`, judged against the previous call's counters
    /// (against zero on the first call: errors since the start count).
    pub fn health(&mut self, snapshot: &Snapshot, now_ms: u64) -> Health {
        let mut problems = Vec::new();
        let mut open_alarms = BTreeMap::new();
        let mut status: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let mut counters = BTreeMap::new();
        for (name, value) in &snapshot.values {
            if let Some(alarm) = name.strip_prefix(ALARM_PREFIX) {
                open_alarms.insert(alarm.to_owned(), shown(value));
                continue;
            }
            let last = name.rsplit('.').next().unwrap_or(name);
            match value {
                Value::Text(text) if last == "state" && is_bad_state(text) => {
                    problems.push(format!("{name}: {text}"));
                }
                Value::Text(text) if last == "storage" && text != "ok" => {
                    problems.push(format!("{name}: {text}"));
                }
                Value::Number(n) if TROUBLE_COUNTERS.iter().any(|t| last.ends_with(t)) => {
                    let before = self.previous.get(name).copied().unwrap_or(0);
                    // A counter that went down belongs to a part restarted by
                    // a configuration update: all of it is new.
                    let grew = if *n >= before { n - before } else { *n };
                    if grew > 0 {
                        problems.push(format!("{name}: +{grew} since the last health event"));
                    }
                    counters.insert(name.clone(), *n);
                }
                _ => {}
            }
            let (area, rest) = name.split_once('.').unwrap_or(("general", name));
            status
                .entry(area.to_owned())
                .or_default()
                .insert(rest.to_owned(), value.clone());
        }
        self.previous = counters;
        Health {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: now_ms.saturating_sub(snapshot.started_ms) / 1000,
            state: match problems.is_empty() {
                true => HealthState::Ok,
                false => HealthState::Degraded,
            },
            problems,
            open_alarms,
            status,
        }
    }
}

fn is_bad_state(text: &str) -> bool {
    BAD_STATES.iter().any(|bad| text.starts_with(bad))
}

fn shown(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::Text(t) => t.clone(),
    }
}

impl Health {
    /// The human line without its time: `HEALTH ok`, or `HEALTH degraded:`
    /// and the problems.
    pub fn human(&self) -> String {
        match self.state {
            HealthState::Ok => "HEALTH ok".to_owned(),
            HealthState::Degraded => {
                format!("HEALTH degraded: {}", self.problems.join("; "))
            }
        }
    }

    /// The event for a message that carries at most `max_bytes`: the whole
    /// event when it fits, else without `status` (the state, the problems
    /// and the open alarms are what a fleet operator needs; nucleus lite
    /// carries 10,000-byte frames). The flag says whether `status` was left
    /// out.
    pub fn payload_within(
        &self,
        thing: &str,
        timestamp_ms: u64,
        max_bytes: usize,
    ) -> (Vec<u8>, bool) {
        let mut event = self.to_event_json(thing, timestamp_ms);
        let whole = event.to_string().into_bytes();
        if whole.len() <= max_bytes {
            return (whole, false);
        }
        if let Some(health) = event.get_mut("health").and_then(|h| h.as_object_mut()) {
            health.remove("status");
        }
        (event.to_string().into_bytes(), true)
    }

    /// The event as published on the IoT topic and written locally: the
    /// health with `name`, `thing` and `timestamp` beside it, as the other
    /// events have them.
    pub fn to_event_json(&self, thing: &str, timestamp_ms: u64) -> serde_json::Value {
        serde_json::json!({
            "name": HEALTH_EVENT_NAME,
            "thing": thing,
            "timestamp": timestamp_ms,
            "health": self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(values: &[(&str, Value)]) -> Snapshot {
        Snapshot {
            updated_ms: 10_000,
            pid: 1,
            started_ms: 4_000,
            values: values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    fn text(t: &str) -> Value {
        Value::Text(t.to_owned())
    }

    #[test]
    fn a_working_agent_is_ok_and_shows_every_value_by_area() {
        let snap = snapshot(&[
            ("collect.samples", Value::Number(12)),
            ("plugin.port-allowlist.state", text("running")),
            ("firehose.state", text("running")),
            ("outbox.depth", Value::Number(0)),
            ("outbox.storage", text("ok")),
            ("detect.state", text("running: 3 of 3 behaviors")),
            ("mqtt.state", text("connected")),
            ("securityhub.state", text("off")),
        ]);
        let health = HealthMonitor::new().health(&snap, 64_000);
        assert_eq!(health.state, HealthState::Ok, "{:?}", health.problems);
        assert_eq!(health.uptime_s, 60);
        assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            health.status["plugin"]["port-allowlist.state"],
            text("running")
        );
        assert_eq!(health.status["outbox"]["depth"], Value::Number(0));
        assert_eq!(health.human(), "HEALTH ok");
    }

    #[test]
    fn bad_states_and_storage_faults_are_problems() {
        let snap = snapshot(&[
            (
                "plugin.conn-limit.state",
                text("disabled: 5 failures in 300 s"),
            ),
            ("firehose.state", text("waiting: no credentials")),
            ("securityhub.state", text("not started: no region")),
            ("mqtt.state", text("disconnected: connection refused")),
            ("outbox.storage", text("read-only")),
            (
                "detect.state",
                text("idle: no behavior can be judged on the device"),
            ),
            ("plugin.other.state", text("running")),
        ]);
        let health = HealthMonitor::new().health(&snap, 10_000);
        assert_eq!(health.state, HealthState::Degraded);
        assert_eq!(health.problems.len(), 6, "{:?}", health.problems);
        assert!(
            health
                .problems
                .contains(&"plugin.conn-limit.state: disabled: 5 failures in 300 s".to_owned())
        );
        assert!(health.human().starts_with("HEALTH degraded: "));
        assert!(health.human().contains("outbox.storage: read-only"));
    }

    #[test]
    fn error_counters_count_only_while_they_grow() {
        let mut monitor = HealthMonitor::new();
        let first = monitor.health(
            &snapshot(&[
                ("firehose.call_errors", Value::Number(2)),
                ("collect.samples", Value::Number(5)),
            ]),
            10_000,
        );
        assert_eq!(
            first.problems,
            ["firehose.call_errors: +2 since the last health event"]
        );
        let second = monitor.health(
            &snapshot(&[
                ("firehose.call_errors", Value::Number(2)),
                ("collect.samples", Value::Number(9)),
            ]),
            20_000,
        );
        assert_eq!(second.state, HealthState::Ok, "{:?}", second.problems);
        let third = monitor.health(
            &snapshot(&[
                ("firehose.call_errors", Value::Number(3)),
                ("plugin.x.load_errors", Value::Number(1)),
                ("outbox.write_failures", Value::Number(0)),
            ]),
            30_000,
        );
        assert_eq!(
            third.problems,
            [
                "firehose.call_errors: +1 since the last health event",
                "plugin.x.load_errors: +1 since the last health event"
            ]
        );
    }

    #[test]
    fn open_alarms_are_listed_not_counted_as_values() {
        let snap = snapshot(&[(
            "alarm.NoRogueListener/RoguePortClosed",
            text("since 2026-12-03 10:00:00 UTC: port 2121"),
        )]);
        let health = HealthMonitor::new().health(&snap, 10_000);
        assert_eq!(
            health.open_alarms["NoRogueListener/RoguePortClosed"],
            "since 2026-12-03 10:00:00 UTC: port 2121"
        );
        assert!(health.status.is_empty());
        // An alarm is what detection found, not a fault of the agent.
        assert_eq!(health.state, HealthState::Ok);
        let event = health.to_event_json("edge-01", 10_000);
        assert_eq!(event["name"], HEALTH_EVENT_NAME);
        assert_eq!(event["health"]["state"], "ok");
        assert_eq!(event["health"]["uptime_s"], 6);
    }

    #[test]
    fn a_payload_too_large_for_the_transport_leaves_the_status_out() {
        let values: Vec<(String, Value)> = (0..1000)
            .map(|i| (format!("plugin.p{i}.calls"), Value::Number(i)))
            .chain([("plugin.p1.state".to_owned(), text("failed: bad magic"))])
            .collect();
        let snap = Snapshot {
            values: values.into_iter().collect(),
            ..snapshot(&[])
        };
        let health = HealthMonitor::new().health(&snap, 10_000);
        let (whole, cut) = health.payload_within("edge-01", 10_000, 1_000_000);
        assert!(!cut);
        assert!(whole.len() > 7_000, "{}", whole.len());
        let (short, cut) = health.payload_within("edge-01", 10_000, 7_000);
        assert!(cut);
        let event: serde_json::Value = serde_json::from_slice(&short).expect("JSON");
        assert!(event["health"].get("status").is_none());
        assert_eq!(event["health"]["state"], "degraded");
        assert_eq!(
            event["health"]["problems"][0],
            "plugin.p1.state: failed: bad magic"
        );
    }

    #[test]
    fn the_topic_is_checked_and_can_be_turned_off() {
        let config = HealthConfig::default();
        assert_eq!(
            config.topic_for("edge-01").as_deref(),
            Some("defender-edge/edge-01/health")
        );
        let none: HealthConfig = serde_json::from_str(r#"{"topic": null}"#).expect("null topic");
        assert_eq!(none.topic_for("edge-01"), None);
        assert!(none.check().is_ok());
        let bad = HealthConfig {
            topic: Some("a/+/b".to_owned()),
        };
        let error = bad.check().expect_err("a wildcard topic");
        assert!(error.starts_with("health.topic: "), "{error}");
    }
}
