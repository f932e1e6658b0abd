//! An alarm as an AWS Security Finding Format (ASFF) finding (pure).
//!
//! One violation is one finding: the alarm imports it `ACTIVE`, the clear
//! or invalidation that ends the violation imports the same `Id` again with
//! `RecordState` `ARCHIVED`, the alarm's `CreatedAt` and `FirstObservedAt`
//! and a later `UpdatedAt` (Security Hub ignores an update whose
//! `UpdatedAt` is not newer).
//!
//! The finding is stored in the outbox before the account is known (a
//! device may boot without network), so [`Finding::from_alarm`] leaves
//! `ProductArn`, `AwsAccountId` and `Resources` empty and
//! [`Finding::bind`] fills them at import time. docs/SECURITYHUB.md shows
//! a complete finding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::detect::{AlarmEvent, AlarmState};
use crate::sample::Severity;

/// The ASFF version the findings follow.
pub const SCHEMA_VERSION: &str = "2018-10-08";

/// Security Hub's limit for one finding's JSON.
pub const MAX_FINDING_BYTES: usize = 240 * 1024;

/// Longest `Title` Security Hub accepts.
const MAX_TITLE: usize = 256;
/// Longest `Description`.
const MAX_DESCRIPTION: usize = 1024;
/// Longest value in `Resources[].Details.Other`.
const MAX_DETAIL: usize = 1024;
/// Longest value in `ProductFields`.
const MAX_PRODUCT_FIELD: usize = 2048;

/// Prefix of this product's keys in `ProductFields` and of finding ids.
const PRODUCT: &str = "defender-edge";

/// One finding, serialized as ASFF (the field names Security Hub's
/// `BatchImportFindings` takes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Finding {
    pub schema_version: String,
    /// `defender-edge/<thing>/<violation id>`: the alarm and the event
    /// that ends it carry the same.
    pub id: String,
    /// Filled by [`Finding::bind`].
    #[serde(default)]
    pub product_arn: String,
    /// `defender-edge/<security profile>/<behavior>`: the rule that found it.
    pub generator_id: String,
    /// Filled by [`Finding::bind`].
    #[serde(default)]
    pub aws_account_id: String,
    /// ASFF taxonomy, e.g. `Unusual Behaviors/Network Flow`.
    pub types: Vec<String>,
    /// When the violation began (the alarm's time), ISO 8601 UTC.
    pub first_observed_at: String,
    /// When this event happened.
    pub last_observed_at: String,
    /// The alarm's time, also on the archive update.
    pub created_at: String,
    /// This event's time.
    pub updated_at: String,
    pub severity: FindingSeverity,
    /// The thing name and the behavior.
    pub title: String,
    pub description: String,
    /// The thing; filled by [`Finding::bind`].
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// `ACTIVE` for an alarm, `ARCHIVED` once the violation ended.
    pub record_state: String,
    /// Violation id, state, `suppressAlerts`, profile, behavior, metric.
    pub product_fields: BTreeMap<String, String>,
    /// The process that holds the offending port or connection. Process
    /// attribution (`Collected::owners`) is not carried on alarm events
    /// yet, so this stays `None` until it is; [`Finding::from_alarm`] is
    /// the one place to fill it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The thing name and the offending values, copied into the resource's
    /// `Details.Other` by [`Finding::bind`]; not an ASFF field.
    #[serde(rename = "DefenderEdgeThing")]
    pub thing: String,
    #[serde(rename = "DefenderEdgeDetails")]
    pub details: BTreeMap<String, String>,
}

/// ASFF `Severity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FindingSeverity {
    /// `INFORMATIONAL`, `LOW`, `MEDIUM`, `HIGH` or `CRITICAL`.
    pub label: String,
    /// The agent's own severity.
    pub original: String,
}

/// ASFF `Resources[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resource {
    /// `Other`: ASFF has no IoT thing type.
    #[serde(rename = "Type")]
    pub kind: String,
    /// The thing's ARN, `arn:<partition>:iot:<region>:<account>:thing/<name>`.
    pub id: String,
    pub partition: String,
    pub region: String,
    /// `Details.Other`: the thing name and the offending values.
    pub details: ResourceDetails,
}

/// ASFF `Resources[].Details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceDetails {
    pub other: BTreeMap<String, String>,
}

/// ASFF `Process`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Process {
    pub name: String,
    pub path: Option<String>,
    pub pid: Option<u32>,
}

/// Where findings go: known only once STS named the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub account: String,
    pub region: String,
    pub product_arn: String,
}

impl Target {
    /// The account's default product in `region`, unless `product_arn` names
    /// another.
    pub fn new(account: &str, region: &str, product_arn: Option<&str>) -> Target {
        let product_arn = product_arn.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "arn:{}:securityhub:{region}:{account}:product/{account}/default",
                partition(region)
            )
        });
        Target {
            account: account.to_owned(),
            region: region.to_owned(),
            product_arn,
        }
    }
}

/// The ARN partition of a region.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// ASFF `Types` for a Device Defender metric.
pub fn types(metric: &str) -> Vec<String> {
    let category = match metric {
        "aws:destination-ip-addresses" => "IP address",
        "aws:listening-tcp-ports"
        | "aws:listening-udp-ports"
        | "aws:num-listening-tcp-ports"
        | "aws:num-listening-udp-ports"
        | "aws:num-established-tcp-connections"
        | "aws:all-bytes-in"
        | "aws:all-bytes-out"
        | "aws:all-packets-in"
        | "aws:all-packets-out" => "Network Flow",
        // Custom metrics are what a plugin or the device's software reports.
        _ => "Application",
    };
    vec![format!("Unusual Behaviors/{category}")]
}

/// The ASFF severity of an alarm: the alarm's own severity (`high`), or
/// `LOW` for a behavior with `suppressAlerts` (shown, but below the usual
/// paging threshold). The archive update keeps the alarm's severity.
pub fn severity(event: &AlarmEvent) -> FindingSeverity {
    let alarm_severity = AlarmEvent {
        state: AlarmState::Alarm,
        ..event.clone()
    }
    .to_alert()
    .severity;
    let label = if event.suppress_alerts {
        "LOW"
    } else {
        match alarm_severity {
            Severity::Critical => "CRITICAL",
            Severity::High => "HIGH",
            Severity::Medium => "MEDIUM",
            Severity::Low => "LOW",
            Severity::Info => "INFORMATIONAL",
        }
    };
    FindingSeverity {
        label: label.to_owned(),
        original: alarm_severity.as_str().to_owned(),
    }
}

/// ISO 8601 UTC with milliseconds, as ASFF timestamps are written.
pub fn timestamp(ms: u64) -> String {
    let date_time = crate::status::format_utc(ms).replacen(' ', "T", 1);
    format!("{date_time}.{:03}Z", ms % 1000)
}

impl Finding {
    /// The finding for one alarm event: `ACTIVE` for an alarm, `ARCHIVED`
    /// for the clear or invalidation that ends it.
    pub fn from_alarm(event: &AlarmEvent) -> Finding {
        let (record_state, verb) = match event.state {
            AlarmState::Alarm => ("ACTIVE", "violates"),
            AlarmState::Clear => ("ARCHIVED", "no longer violates"),
            AlarmState::Invalidated => ("ARCHIVED", "can no longer be judged against"),
        };
        let shown = event.offending.as_ref().unwrap_or(&event.value);
        let mut details = BTreeMap::from([
            ("ThingName".to_owned(), event.thing.clone()),
            ("SecurityProfileName".to_owned(), event.profile.clone()),
            ("BehaviorName".to_owned(), event.behavior.clone()),
            ("Metric".to_owned(), event.metric.clone()),
            ("MetricValue".to_owned(), json_text(&event.value)),
            ("Criteria".to_owned(), json_text(&event.criteria)),
        ]);
        if let Some(offending) = &event.offending {
            details.insert("OffendingValues".to_owned(), json_text(offending));
        }
        if let Some(threshold) = event.threshold {
            details.insert("Threshold".to_owned(), threshold.to_string());
        }
        if !event.processes.is_empty() {
            details.insert("Processes".to_owned(), event.processes_text());
        }
        for value in details.values_mut() {
            truncate(value, MAX_DETAIL);
        }
        let mut product_fields = BTreeMap::from([
            (field("ViolationId"), event.violation_id.clone()),
            (field("State"), event.state.as_str().to_owned()),
            (field("SecurityProfileName"), event.profile.clone()),
            (field("BehaviorName"), event.behavior.clone()),
            (field("Metric"), event.metric.clone()),
            (field("SuppressAlerts"), event.suppress_alerts.to_string()),
        ]);
        for value in product_fields.values_mut() {
            truncate(value, MAX_PRODUCT_FIELD);
        }
        let mut title = format!(
            "{}: behavior {} of security profile {} violated",
            event.thing, event.behavior, event.profile
        );
        truncate(&mut title, MAX_TITLE);
        let mut description = format!(
            "{} {verb} behavior {} of security profile {} on {}: {}",
            event.thing,
            event.behavior,
            event.profile,
            event.metric,
            json_text(shown)
        );
        truncate(&mut description, MAX_DESCRIPTION);
        Finding {
            schema_version: SCHEMA_VERSION.to_owned(),
            id: format!("{PRODUCT}/{}/{}", event.thing, event.violation_id),
            product_arn: String::new(),
            generator_id: format!("{PRODUCT}/{}/{}", event.profile, event.behavior),
            aws_account_id: String::new(),
            types: types(&event.metric),
            first_observed_at: timestamp(event.violation_start_ms),
            last_observed_at: timestamp(event.timestamp_ms),
            created_at: timestamp(event.violation_start_ms),
            updated_at: timestamp(event.timestamp_ms),
            severity: severity(event),
            title,
            description,
            resources: Vec::new(),
            record_state: record_state.to_owned(),
            product_fields,
            process: None,
            thing: event.thing.clone(),
            details,
        }
    }

    /// The finding as imported into `target`: product, account and the
    /// thing as its resource. A finding without a thing name gets no
    /// resource, which Security Hub refuses.
    pub fn bind(&self, target: &Target) -> Finding {
        let mut bound = self.clone();
        bound.product_arn = target.product_arn.clone();
        bound.aws_account_id = target.account.clone();
        bound.resources = if self.thing.is_empty() {
            Vec::new()
        } else {
            let partition = partition(&target.region);
            vec![Resource {
                kind: "Other".to_owned(),
                id: format!(
                    "arn:{partition}:iot:{}:{}:thing/{}",
                    target.region, target.account, self.thing
                ),
                partition: partition.to_owned(),
                region: target.region.clone(),
                details: ResourceDetails {
                    other: self.details.clone(),
                },
            }]
        };
        bound
    }

    /// The ASFF document Security Hub receives (without this crate's own
    /// storage fields).
    pub fn to_asff(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("DefenderEdgeThing");
            map.remove("DefenderEdgeDetails");
        }
        value
    }
}

fn field(name: &str) -> String {
    format!("{PRODUCT}/{name}")
}

fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the
/// cut with an ellipsis.
fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn alarm() -> AlarmEvent {
        AlarmEvent {
            violation_id: "v-0001".to_owned(),
            state: AlarmState::Alarm,
            thing: "edge-01".to_owned(),
            profile: "PortAllowlist".to_owned(),
            behavior: "OnlySsh".to_owned(),
            metric: "aws:listening-tcp-ports".to_owned(),
            value: json!({"ports": [22, 4444]}),
            offending: Some(json!({"ports": [4444]})),
            threshold: None,
            criteria: json!({"comparisonOperator": "in-port-set", "value": {"ports": [22]}}),
            violation_start_ms: 1_767_225_600_123,
            timestamp_ms: 1_767_225_600_123,
            suppress_alerts: false,
            processes: BTreeMap::new(),
        }
    }

    #[test]
    fn an_alarm_is_an_active_finding_on_the_thing() {
        let target = Target::new("123456789012", "eu-west-1", None);
        assert_eq!(
            target.product_arn,
            "arn:aws:securityhub:eu-west-1:123456789012:product/123456789012/default"
        );
        let f = Finding::from_alarm(&alarm()).bind(&target).to_asff();
        assert_eq!(
            f,
            json!({
                "SchemaVersion": "2018-10-08",
                "Id": "defender-edge/edge-01/v-0001",
                "ProductArn": "arn:aws:securityhub:eu-west-1:123456789012:product/123456789012/default",
                "GeneratorId": "defender-edge/PortAllowlist/OnlySsh",
                "AwsAccountId": "123456789012",
                "Types": ["Unusual Behaviors/Network Flow"],
                "FirstObservedAt": "2026-01-01T00:00:00.123Z",
                "LastObservedAt": "2026-01-01T00:00:00.123Z",
                "CreatedAt": "2026-01-01T00:00:00.123Z",
                "UpdatedAt": "2026-01-01T00:00:00.123Z",
                "Severity": {"Label": "HIGH", "Original": "high"},
                "Title": "edge-01: behavior OnlySsh of security profile PortAllowlist violated",
                "Description": "edge-01 violates behavior OnlySsh of security profile PortAllowlist on aws:listening-tcp-ports: {\"ports\":[4444]}",
                "Resources": [{
                    "Type": "Other",
                    "Id": "arn:aws:iot:eu-west-1:123456789012:thing/edge-01",
                    "Partition": "aws",
                    "Region": "eu-west-1",
                    "Details": {"Other": {
                        "ThingName": "edge-01",
                        "SecurityProfileName": "PortAllowlist",
                        "BehaviorName": "OnlySsh",
                        "Metric": "aws:listening-tcp-ports",
                        "MetricValue": "{\"ports\":[22,4444]}",
                        "OffendingValues": "{\"ports\":[4444]}",
                        "Criteria": "{\"comparisonOperator\":\"in-port-set\",\"value\":{\"ports\":[22]}}"
                    }}
                }],
                "RecordState": "ACTIVE",
                "ProductFields": {
                    "defender-edge/ViolationId": "v-0001",
                    "defender-edge/State": "alarm",
                    "defender-edge/SecurityProfileName": "PortAllowlist",
                    "defender-edge/BehaviorName": "OnlySsh",
                    "defender-edge/Metric": "aws:listening-tcp-ports",
                    "defender-edge/SuppressAlerts": "false"
                }
            })
        );
    }

    #[test]
    fn the_clear_and_the_invalidation_archive_the_same_finding() {
        let raised = Finding::from_alarm(&alarm());
        for state in [AlarmState::Clear, AlarmState::Invalidated] {
            let end = AlarmEvent {
                state,
                offending: None,
                value: json!({"ports": [22]}),
                timestamp_ms: 1_767_225_900_000,
                ..alarm()
            };
            let ended = Finding::from_alarm(&end);
            assert_eq!(ended.id, raised.id);
            assert_eq!(ended.record_state, "ARCHIVED");
            assert_eq!(
                ended.created_at, raised.created_at,
                "CreatedAt is the alarm's"
            );
            assert_eq!(ended.first_observed_at, raised.first_observed_at);
            assert_eq!(ended.updated_at, "2026-01-01T00:05:00.000Z");
            assert!(ended.updated_at > raised.updated_at);
            assert_eq!(
                ended.severity, raised.severity,
                "severity stays the alarm's"
            );
            assert_eq!(ended.title, raised.title);
            assert_eq!(ended.product_fields[&field("State")], state.as_str());
        }
    }

    #[test]
    fn severity_types_and_partitions() {
        let suppressed = AlarmEvent {
            suppress_alerts: true,
            ..alarm()
        };
        assert_eq!(severity(&suppressed).label, "LOW");
        assert_eq!(
            types("aws:destination-ip-addresses"),
            ["Unusual Behaviors/IP address"]
        );
        assert_eq!(
            types("aws:all-bytes-out"),
            ["Unusual Behaviors/Network Flow"]
        );
        assert_eq!(types("cpu-temperature"), ["Unusual Behaviors/Application"]);
        let china = Target::new("123456789012", "cn-north-1", None);
        assert!(china.product_arn.starts_with("arn:aws-cn:securityhub:"));
        let bound = Finding::from_alarm(&alarm()).bind(&china);
        assert_eq!(bound.resources[0].partition, "aws-cn");
        let own = Target::new(
            "123456789012",
            "eu-west-1",
            Some("arn:aws:securityhub:eu-west-1:999999999999:product/acme/edge"),
        );
        assert_eq!(
            Finding::from_alarm(&alarm()).bind(&own).product_arn,
            "arn:aws:securityhub:eu-west-1:999999999999:product/acme/edge"
        );
    }

    #[test]
    fn long_values_are_cut_to_security_hub_limits() {
        let ports: Vec<u32> = (1..=5000).collect();
        let big = AlarmEvent {
            offending: Some(json!({ "ports": ports })),
            behavior: "b".repeat(300),
            ..alarm()
        };
        let f = Finding::from_alarm(&big);
        assert!(f.title.len() <= MAX_TITLE && f.title.ends_with('…'));
        assert!(f.description.len() <= MAX_DESCRIPTION);
        assert!(f.details.values().all(|v| v.len() <= MAX_DETAIL));
        let stored = serde_json::to_vec(&f).expect("serializes");
        assert!(stored.len() < MAX_FINDING_BYTES);
        let back: Finding = serde_json::from_slice(&stored).expect("reads back");
        assert_eq!(back, f);
    }

    #[test]
    fn a_finding_without_a_thing_has_no_resource() {
        let nameless = AlarmEvent {
            thing: String::new(),
            ..alarm()
        };
        let target = Target::new("123456789012", "eu-west-1", None);
        assert!(
            Finding::from_alarm(&nameless)
                .bind(&target)
                .resources
                .is_empty()
        );
    }
}
