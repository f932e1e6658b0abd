//! Alarm events: what local detection tells the SIEM, the IoT topic and the
//! Greengrass local topic when a behavior starts or stops being violated.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

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

/// Whether a violation started or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    Alarm,
    Clear,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Alarm => "alarm",
            AlarmState::Clear => "clear",
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
}

impl AlarmEvent {
    /// The event as an alert of the sample, so plugins and the SIEM events
    /// see it. Alarms are `high`, clears `info`.
    pub fn to_alert(&self) -> Alert {
        let (severity, verb) = match self.state {
            AlarmState::Alarm => (Severity::High, "violates"),
            AlarmState::Clear => (Severity::Info, "no longer violates"),
        };
        let shown = self.offending.as_ref().unwrap_or(&self.value);
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
        Alert {
            source: AlertOrigin::Detection {
                profile: &self.profile,
            }
            .to_string(),
            name: self.behavior.clone(),
            severity,
            message: format!(
                "{} {verb} behavior {} of profile {} on {}: {}",
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
            AlarmState::Alarm => format!("ALARM {who} {}", self.finding()),
        }
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

    /// The JSON payload for the MQTT topic and Greengrass local pub/sub.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing this struct cannot fail: every map key is a string
        // and serde_json::Value holds no non-finite floats.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
