//! Alarm events: what local detection tells the SIEM, the IoT topic and the
//! Greengrass local topic when a behavior starts or stops being violated.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::sample::{Alert, Severity};

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
}

impl AlarmEvent {
    /// The event as an alert of the sample, so plugins and the SIEM events
    /// see it. Alarms are `high`, clears and invalidations `info`.
    pub fn to_alert(&self) -> Alert {
        let (severity, verb) = match self.state {
            AlarmState::Alarm => (Severity::High, "violates"),
            AlarmState::Clear => (Severity::Info, "no longer violates"),
            AlarmState::Invalidated => (Severity::Info, "can no longer be judged against"),
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
            source: format!("detect/{}", self.profile),
            name: self.behavior.clone(),
            severity,
            message: format!(
                "{} {verb} behavior {} of profile {} on {}: {}",
                self.thing, self.behavior, self.profile, self.metric, shown
            ),
            attributes,
        }
    }

    /// The JSON payload for the MQTT topic and Greengrass local pub/sub.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing this struct cannot fail: every map key is a string
        // and serde_json::Value holds no non-finite floats.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
