//! Alarm events: what local detection tells the SIEM, the IoT topic and the
//! Greengrass local topic when a behavior starts or stops being violated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::sample::{Alert, AlertOrigin, Severity};

/// A metric value for a person: `port 2121`, `ports 2121, 8080`, `count 57`,
/// `10.1.2.3`, `3.5`.
fn describe(value: &Value) -> String {
    let Some(object) = value.as_object() else {
        return value.to_string();
    };
    match object.iter().next() {
        Some((key, inner)) => match (key.as_str(), inner) {
            ("ports", Value::Array(ports)) if ports.len() == 1 => format!("port {}", list(inner)),
            ("ports", _) => format!("ports {}", list(inner)),
            ("count", _) => format!("count {}", list(inner)),
            _ => list(inner),
        },
        None => value.to_string(),
    }
}

/// A criteria or metric value as a plain list: `22, 8883`, `50`, `10.0.0.0/8`.
fn list(value: &Value) -> String {
    match value {
        Value::Array(items) => items.iter().map(list).collect::<Vec<_>>().join(", "),
        Value::Object(object) if object.len() == 1 => object.values().map(list).collect(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// What a violation of `operator` means: Device Defender's criteria say what
/// is expected, an alarm is its opposite.
fn broken(operator: &str) -> &'static str {
    match operator {
        "less-than" => ">=",
        "less-than-equals" => ">",
        "greater-than" => "<=",
        "greater-than-equals" => "<",
        "in-port-set" | "in-cidr-set" | "in-set" => "not in",
        "not-in-port-set" | "not-in-cidr-set" | "not-in-set" => "in",
        _ => "breaks",
    }
}

/// The alert attribute that marks an event of a behavior with
/// `suppressAlerts`; the Firehose events index it as `suppressed`.
pub const SUPPRESS_ALERTS_ATTRIBUTE: &str = "suppress_alerts";

/// The shape of the events on the IoT alarm topic (`detection.alarmFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlarmFormat {
    /// [`AlarmEvent::to_json`]: every field defender-edge knows.
    #[default]
    DefenderEdge,
    /// [`AlarmEvent::to_violation_event_json`]: Device Defender's
    /// `ViolationEvent`, as Detect hands it to its alert targets.
    DeviceDefender,
}

/// Whether a violation started or ended, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    /// The behavior is violated (Device Defender's `in-alarm`).
    Alarm,
    /// The behavior conforms again (`alarm-cleared`).
    Clear,
    /// The violation is closed because its behavior can no longer be judged:
    /// the profile changed or was removed, or the metric stopped arriving for
    /// the behavior's duration (`alarm-invalidated`). It carries the
    /// `violation_id` of the alarm it closes, and says nothing about whether
    /// the behavior conforms.
    Invalidated,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Alarm => "alarm",
            AlarmState::Clear => "clear",
            AlarmState::Invalidated => "invalidated",
        }
    }
}

/// One alarm or clear of one behavior. Serialized as documented in
/// docs/DETECTION.md.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmEvent {
    /// The same for an alarm and the clear that ends it.
    pub violation_id: String,
    pub state: AlarmState,
    pub thing: String,
    /// `securityProfileName`.
    pub profile: String,
    /// The behavior's `name`.
    pub behavior: String,
    /// The metric as written in the profile, e.g. `aws:listening-tcp-ports`.
    pub metric: String,
    /// The datapoint judged, in the shape of Device Defender's metric values
    /// (`{"ports": [...]}`, `{"count": n}`, `{"cidrs": [...]}`,
    /// `{"number": x}`, `{"numbers": [...]}`, `{"strings": [...]}`).
    pub value: Value,
    /// For list metrics: the elements that break the criteria (empty on a
    /// clear).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offending: Option<Value>,
    /// The threshold a statistical behavior resolved to for this datapoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The behavior's `criteria`, as written in the profile.
    pub criteria: Value,
    /// When the violation began (the alarm's time), ms since the Unix epoch.
    pub violation_start_ms: u64,
    /// When this event happened, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The behavior's `suppressAlerts`: consumers that page people may skip it.
    pub suppress_alerts: bool,
    /// Who holds what broke the criteria, for alarms of listening ports and
    /// destination addresses when process attribution sees it:
    /// `tcp/2121` or the address → one line per process
    /// (`/usr/sbin/vsftpd (pid 812) as root, unit vsftpd.service`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub processes: BTreeMap<String, Vec<String>>,
}

impl AlarmEvent {
    /// The event as an alert of the sample, so plugins and the SIEM events
    /// see it. Alarms are `high`, clears and invalidations `info`. An alarm of
    /// a behavior with `suppressAlerts` is `low`, not paging-grade, and
    /// carries the attribute `suppress_alerts` = `true`: the violation stays
    /// visible, as in Device Defender, but nothing that pages fires on it.
    pub fn to_alert(&self) -> Alert {
        let (severity, verb) = match self.state {
            AlarmState::Alarm if self.suppress_alerts => (Severity::Low, "violates"),
            AlarmState::Alarm => (Severity::High, "violates"),
            AlarmState::Clear => (Severity::Info, "no longer violates"),
            AlarmState::Invalidated => (Severity::Info, "can no longer be judged against"),
        };
        let shown = match self.offending.as_ref().unwrap_or(&self.value) {
            Value::Null => String::new(),
            value => format!(": {value}"),
        };
        let mut attributes = BTreeMap::from([
            ("violation_id".to_owned(), self.violation_id.clone()),
            ("state".to_owned(), self.state.as_str().to_owned()),
            ("metric".to_owned(), self.metric.clone()),
            ("value".to_owned(), self.value.to_string()),
            ("criteria".to_owned(), self.criteria.to_string()),
        ]);
        if let Some(offending) = &self.offending {
            attributes.insert("offending".to_owned(), offending.to_string());
        }
        if let Some(threshold) = self.threshold {
            attributes.insert("threshold".to_owned(), threshold.to_string());
        }
        if self.suppress_alerts {
            attributes.insert(SUPPRESS_ALERTS_ATTRIBUTE.to_owned(), "true".to_owned());
        }
        if !self.processes.is_empty() {
            attributes.insert("processes".to_owned(), self.processes_text());
        }
        Alert {
            source: AlertOrigin::Detection {
                profile: &self.profile,
            }
            .to_string(),
            name: self.behavior.clone(),
            severity,
            message: format!(
                "{} {verb} behavior {} of profile {} on {}{}",
                self.thing, self.behavior, self.profile, self.metric, shown
            ),
            attributes,
        }
    }

    /// The line a person reads, without its time: for an alarm what broke
    /// the criteria and the expectation it broke
    /// (`ALARM DeviceRuleBaseline/UnexpectedListeningTcpPorts port 2121 (not in 22, 8883)`),
    /// for a clear the behavior and when its alarm began.
    pub fn human(&self) -> String {
        let who = self.key();
        match self.state {
            AlarmState::Clear => format!(
                "CLEAR {who} (alarm since {} UTC)",
                crate::output::clock(self.violation_start_ms)
            ),
            AlarmState::Alarm if self.processes.is_empty() => {
                format!("ALARM {who} {}", self.finding())
            }
            AlarmState::Alarm => format!(
                "ALARM {who} {} by {}",
                self.finding(),
                self.processes_text()
            ),
            AlarmState::Invalidated => format!(
                "INVALIDATED {who} (alarm since {} UTC; its behavior can no longer be judged)",
                crate::output::clock(self.violation_start_ms)
            ),
        }
    }

    /// The processes as one text:
    /// `tcp/2121: /usr/sbin/vsftpd (pid 812) as root; udp/69: ...`.
    pub fn processes_text(&self) -> String {
        self.processes
            .iter()
            .map(|(what, who)| format!("{what}: {}", who.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// `<profile>/<behavior>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.profile, self.behavior)
    }

    /// What broke the criteria, and the expectation it broke:
    /// `port 2121 (not in 22, 8883)`, `count 57 (>= 50)`.
    pub fn finding(&self) -> String {
        let seen = describe(self.offending.as_ref().unwrap_or(&self.value));
        let expected = match self.threshold {
            Some(threshold) => Some(threshold.to_string()),
            None => self.criteria.get("value").map(list),
        };
        let operator = self
            .criteria
            .get("comparisonOperator")
            .and_then(Value::as_str)
            .map(broken);
        match (operator, expected) {
            (Some(operator), Some(expected)) => format!("{seen} ({operator} {expected})"),
            _ => seen,
        }
    }

    /// Device Defender's `violationEventType`.
    pub fn violation_event_type(&self) -> &'static str {
        match self.state {
            AlarmState::Alarm => "in-alarm",
            AlarmState::Clear => "alarm-cleared",
            AlarmState::Invalidated => "alarm-invalidated",
        }
    }

    /// The event in the shape of Device Defender's `ViolationEvent` (IoT API
    /// reference): `violationId`, `thingName`, `securityProfileName`,
    /// `behavior` {`name`, `metric`, `criteria`, `suppressAlerts`},
    /// `metricValue`, `violationEventType`, `violationEventTime`. Times are
    /// epoch seconds, as the API's JSON gives them (docs/DETECTION.md).
    pub fn to_violation_event_json(&self) -> Vec<u8> {
        let mut event = json!({
            "violationId": self.violation_id,
            "thingName": self.thing,
            "securityProfileName": self.profile,
            "behavior": {
                "name": self.behavior,
                "metric": self.metric,
                "criteria": self.criteria,
                "suppressAlerts": self.suppress_alerts,
            },
            "metricValue": self.value,
            "violationEventType": self.violation_event_type(),
            "violationEventTime": self.timestamp_ms / 1000,
        });
        // An invalidation has no value: the metric could not be judged.
        if self.value.is_null()
            && let Some(map) = event.as_object_mut()
        {
            map.remove("metricValue");
        }
        serde_json::to_vec(&event).unwrap_or_default()
    }

    /// The payload for the IoT alarm topic in `format`, or `None` when the
    /// event is not sent there: in the `device-defender` format, whose topic
    /// feeds alert targets, a behavior with `suppressAlerts` sends nothing,
    /// as Detect sends no alert for it.
    pub fn alarm_topic_payload(&self, format: AlarmFormat) -> Option<Vec<u8>> {
        match format {
            AlarmFormat::DefenderEdge => Some(self.to_json()),
            AlarmFormat::DeviceDefender if self.suppress_alerts => None,
            AlarmFormat::DeviceDefender => Some(self.to_violation_event_json()),
        }
    }

    /// The JSON payload for the MQTT topic and Greengrass local pub/sub.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing this struct cannot fail: every map key is a string
        // and serde_json::Value holds no non-finite floats.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(state: AlarmState, suppress_alerts: bool) -> AlarmEvent {
        AlarmEvent {
            violation_id: "0123456789abcdef0123456789abcdef".to_owned(),
            state,
            thing: "edge-01".to_owned(),
            profile: "P".to_owned(),
            behavior: "B".to_owned(),
            metric: "aws:listening-tcp-ports".to_owned(),
            value: serde_json::json!({"ports": [22, 4444]}),
            offending: Some(serde_json::json!({"ports": [4444]})),
            threshold: None,
            criteria: serde_json::json!({"comparisonOperator": "in-port-set", "value": {"ports": [22]}}),
            violation_start_ms: 1_000,
            timestamp_ms: 1_000,
            suppress_alerts,
            processes: BTreeMap::new(),
        }
    }

    #[test]
    fn suppress_alerts_lowers_the_alarm_and_marks_every_event() {
        let cases = [
            (AlarmState::Alarm, false, Severity::High),
            (AlarmState::Alarm, true, Severity::Low),
            (AlarmState::Clear, false, Severity::Info),
            (AlarmState::Clear, true, Severity::Info),
            (AlarmState::Invalidated, true, Severity::Info),
        ];
        for (state, suppress, severity) in cases {
            let alert = event(state, suppress).to_alert();
            assert_eq!(alert.severity, severity, "{state:?} suppress={suppress}");
            assert_eq!(
                alert
                    .attributes
                    .get(SUPPRESS_ALERTS_ATTRIBUTE)
                    .map(String::as_str),
                suppress.then_some("true"),
                "{state:?} suppress={suppress}"
            );
            assert_eq!(alert.attributes["state"], state.as_str());
        }
    }

    #[test]
    fn the_device_defender_shape_is_a_violation_event() {
        let cases = [
            (AlarmState::Alarm, "in-alarm"),
            (AlarmState::Clear, "alarm-cleared"),
            (AlarmState::Invalidated, "alarm-invalidated"),
        ];
        for (state, kind) in cases {
            let e = event(state, false);
            let payload = e
                .alarm_topic_payload(AlarmFormat::DeviceDefender)
                .expect("sent");
            let v: Value = serde_json::from_slice(&payload).expect("json");
            assert_eq!(
                v,
                json!({
                    "violationId": "0123456789abcdef0123456789abcdef",
                    "thingName": "edge-01",
                    "securityProfileName": "P",
                    "behavior": {"name": "B", "metric": "aws:listening-tcp-ports",
                        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
                        "suppressAlerts": false},
                    "metricValue": {"ports": [22, 4444]},
                    "violationEventType": kind,
                    "violationEventTime": 1
                })
            );
            assert_eq!(
                e.alarm_topic_payload(AlarmFormat::DefenderEdge),
                Some(e.to_json())
            );
            // Suppressed: no alert target hears of it in Detect's shape.
            let suppressed = event(state, true);
            assert_eq!(
                suppressed.alarm_topic_payload(AlarmFormat::DeviceDefender),
                None
            );
            assert!(
                suppressed
                    .alarm_topic_payload(AlarmFormat::DefenderEdge)
                    .is_some()
            );
        }
        for (format, text) in [
            (AlarmFormat::DefenderEdge, "defender-edge"),
            (AlarmFormat::DeviceDefender, "device-defender"),
        ] {
            assert_eq!(serde_json::to_value(format).expect("format"), json!(text));
            assert_eq!(
                serde_json::from_value::<AlarmFormat>(json!(text)).expect("format"),
                format
            );
        }
    }

    #[test]
    fn states_serialize_as_documented() {
        for (state, text) in [
            (AlarmState::Alarm, "alarm"),
            (AlarmState::Clear, "clear"),
            (AlarmState::Invalidated, "invalidated"),
        ] {
            assert_eq!(
                serde_json::to_value(state).expect("a state serializes"),
                Value::from(text)
            );
            assert_eq!(state.as_str(), text);
        }
    }
}
