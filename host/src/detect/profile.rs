//! Security profiles in AWS's own format: the JSON given to
//! `aws iot create-security-profile --cli-input-json`, loaded unchanged.
//!
//! Loading has two steps. The document is first read into structs that
//! mirror the API with `deny_unknown_fields`, so a misspelt key is an error
//! rather than a criterion silently ignored. Each behavior is then compiled
//! into a [`Behavior`] the evaluator can run, or set aside as a
//! [`SkippedBehavior`] when only the cloud can judge it (cloud-side metrics,
//! ML Detect, metric dimensions). Every error names the profile, the
//! behavior and the field.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::criteria::{Check, Cidr, NumOp, STATISTICS, SetOp, Threshold};
use super::metric::{self, Classified, Metric, Shape};

/// The statistics period when a statistical behavior has no
/// `durationSeconds`: one Device Defender report interval.
pub(crate) const DEFAULT_PERIOD_SECONDS: u64 = 300;

/// The `durationSeconds` Device Defender accepts for device-side metrics.
pub(crate) const DEVICE_DURATIONS: [u64; 5] = [300, 600, 900, 1800, 3600];

/// A profile that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ProfileError {
    /// Where the document came from: a file path or a configuration key.
    pub origin: String,
    /// `securityProfileName`, when it could be read.
    pub profile: Option<String>,
    /// The behavior's name (or `behaviors[i]` when it has none).
    pub behavior: Option<String>,
    /// The field, as a path inside the profile or behavior.
    pub field: String,
    pub message: String,
}

impl ProfileError {
    fn render(&self) -> String {
        let mut out = String::from("security profile");
        if let Some(profile) = &self.profile {
            out.push_str(&format!(" `{profile}`"));
        }
        out.push_str(&format!(" ({})", self.origin));
        if let Some(behavior) = &self.behavior {
            out.push_str(&format!(": behavior `{behavior}`"));
        }
        if !self.field.is_empty() {
            out.push_str(&format!(": field `{}`", self.field));
        }
        out.push_str(&format!(": {}", self.message));
        out
    }
}

/// A behavior the device can judge.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Behavior {
    pub profile: String,
    pub name: String,
    /// The metric as written in the profile.
    pub metric_name: String,
    pub metric: Metric,
    pub check: Check,
    pub to_alarm: u32,
    pub to_clear: u32,
    /// `durationSeconds`, if given.
    pub duration_seconds: Option<u64>,
    pub suppress_alerts: bool,
    /// The behavior's `criteria` as written, repeated in alarm events.
    pub criteria: Value,
}

impl Behavior {
    /// The window (traffic) and statistics period, in ms.
    pub(crate) fn period_ms(&self) -> u64 {
        self.duration_seconds.unwrap_or(DEFAULT_PERIOD_SECONDS) * 1000
    }

    /// `profile/behavior`: unique, since neither name may contain `/`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.profile, self.name)
    }
}

/// A behavior loaded but not judged on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SkippedBehavior {
    pub kind: SkipKind,
    pub behavior: String,
    pub metric: String,
    pub reason: String,
}

/// Why a behavior is not judged on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipKind {
    /// A metric only AWS IoT measures.
    CloudSide,
    /// `mlDetectionConfig`: the model lives in the cloud.
    MlDetect,
    /// `metricDimension`: resolved in the cloud.
    Dimension,
    /// No criteria: the behavior only retains a metric.
    RetainOnly,
}

impl SkipKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipKind::CloudSide => "cloud-side",
            SkipKind::MlDetect => "ML Detect",
            SkipKind::Dimension => "metric-dimension",
            SkipKind::RetainOnly => "retain-only",
        }
    }
}

/// A loaded profile.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoadedProfile {
    pub name: String,
    pub behaviors: Vec<Behavior>,
    pub skipped: Vec<SkippedBehavior>,
}

// The document, mirroring the CreateSecurityProfile request. Fields the
// device has no use for are still typed, so that their shape is checked.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // Read for validation only; the cloud-facing fields have no local meaning.
struct ProfileDocument {
    security_profile_name: String,
    #[serde(default)]
    security_profile_description: Option<String>,
    #[serde(default)]
    behaviors: Vec<BehaviorDocument>,
    #[serde(default)]
    alert_targets: Option<BTreeMap<String, AlertTarget>>,
    #[serde(default)]
    additional_metrics_to_retain: Vec<String>,
    #[serde(default)]
    additional_metrics_to_retain_v2: Vec<MetricToRetain>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    metrics_export_config: Option<MetricsExportConfig>,
    // What `aws iot describe-security-profile` adds to the document, so its
    // output can be saved and loaded as it is.
    #[serde(default)]
    security_profile_arn: Option<String>,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    creation_date: Option<Value>,
    #[serde(default)]
    last_modified_date: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // Validation only.
struct AlertTarget {
    alert_target_arn: String,
    role_arn: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // Validation only.
struct MetricToRetain {
    metric: String,
    #[serde(default)]
    metric_dimension: Option<MetricDimension>,
    #[serde(default)]
    export_metric: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Validation only.
struct Tag {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // Validation only.
struct MetricsExportConfig {
    mqtt_topic: String,
    role_arn: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BehaviorDocument {
    name: String,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    metric_dimension: Option<MetricDimension>,
    #[serde(default)]
    criteria: Option<CriteriaDocument>,
    #[serde(default)]
    suppress_alerts: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)] // Export is a cloud feature.
    export_metric: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MetricDimension {
    dimension_name: String,
    #[serde(default)]
    operator: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CriteriaDocument {
    #[serde(default)]
    comparison_operator: Option<String>,
    #[serde(default)]
    value: Option<MetricValueDocument>,
    #[serde(default)]
    duration_seconds: Option<i64>,
    #[serde(default)]
    consecutive_datapoints_to_alarm: Option<i64>,
    #[serde(default)]
    consecutive_datapoints_to_clear: Option<i64>,
    #[serde(default)]
    statistical_threshold: Option<StatisticalThresholdDocument>,
    #[serde(default)]
    ml_detection_config: Option<MlDetectionConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatisticalThresholdDocument {
    #[serde(default)]
    statistic: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MlDetectionConfig {
    confidence_level: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricValueDocument {
    /// A whole number; CloudFormation writes it as a string.
    #[serde(default)]
    count: Option<Value>,
    #[serde(default)]
    cidrs: Option<Vec<String>>,
    #[serde(default)]
    ports: Option<Vec<i64>>,
    #[serde(default)]
    number: Option<f64>,
    #[serde(default)]
    numbers: Option<Vec<f64>>,
    #[serde(default)]
    strings: Option<Vec<String>>,
}

impl MetricValueDocument {
    /// The keys that are set, in the API's order.
    fn present(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.count.is_some() {
            keys.push("count");
        }
        if self.cidrs.is_some() {
            keys.push("cidrs");
        }
        if self.ports.is_some() {
            keys.push("ports");
        }
        if self.number.is_some() {
            keys.push("number");
        }
        if self.numbers.is_some() {
            keys.push("numbers");
        }
        if self.strings.is_some() {
            keys.push("strings");
        }
        keys
    }
}

/// Parses profile JSON text; `origin` names the file in errors.
pub(crate) fn parse_text(text: &str, origin: &str) -> Result<LoadedProfile, ProfileError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ProfileError {
        origin: origin.to_owned(),
        profile: None,
        behavior: None,
        field: String::new(),
        message: format!("not valid JSON: {e}"),
    })?;
    compile(value, origin)
}

/// Loads a profile given as a JSON value (inline in the configuration). A
/// string holding the JSON is accepted too, because Greengrass recipes often
/// carry documents as strings.
pub(crate) fn compile(value: Value, origin: &str) -> Result<LoadedProfile, ProfileError> {
    let value = match value {
        Value::String(text) => {
            return parse_text(&text, origin);
        }
        other => other,
    };
    let profile_name = value
        .get("securityProfileName")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let criteria_values: Vec<Value> = value
        .get("behaviors")
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .map(|b| b.get("criteria").cloned().unwrap_or(Value::Null))
                .collect()
        })
        .unwrap_or_default();
    let behavior_label = |index: usize| -> String {
        value
            .get("behaviors")
            .and_then(|b| b.get(index))
            .and_then(|b| b.get("name"))
            .and_then(Value::as_str)
            .map_or_else(|| format!("behaviors[{index}]"), str::to_owned)
    };
    let document: ProfileDocument = serde_path_to_error::deserialize(&value).map_err(|e| {
        // Point at the behavior by name when the error is inside one.
        let segments: Vec<String> = e.path().iter().map(|s| s.to_string()).collect();
        let path = e.path().to_string();
        let (behavior, field) = match segments.first().map(String::as_str) {
            Some("behaviors") => match path
                .strip_prefix("behaviors[")
                .and_then(|rest| rest.split_once(']'))
            {
                Some((index, rest)) => {
                    let label = index.parse::<usize>().map(behavior_label).ok();
                    (label, rest.trim_start_matches('.').to_owned())
                }
                None => (None, path.clone()),
            },
            _ if path == "." => (None, String::new()),
            _ => (None, path.clone()),
        };
        ProfileError {
            origin: origin.to_owned(),
            profile: profile_name.clone(),
            behavior,
            field,
            message: e.inner().to_string(),
        }
    })?;

    let err = |behavior: Option<&str>, field: &str, message: String| ProfileError {
        origin: origin.to_owned(),
        profile: Some(document.security_profile_name.clone()),
        behavior: behavior.map(str::to_owned),
        field: field.to_owned(),
        message,
    };
    if !metric::is_valid_name(&document.security_profile_name) {
        return Err(err(
            None,
            "securityProfileName",
            "must be 1-128 characters of a-z A-Z 0-9 : _ -".to_owned(),
        ));
    }
    for (i, m) in document.additional_metrics_to_retain.iter().enumerate() {
        metric::classify(m)
            .map_err(|message| err(None, &format!("additionalMetricsToRetain[{i}]"), message))?;
    }
    for (i, m) in document.additional_metrics_to_retain_v2.iter().enumerate() {
        metric::classify(&m.metric).map_err(|message| {
            err(
                None,
                &format!("additionalMetricsToRetainV2[{i}].metric"),
                message,
            )
        })?;
    }

    let mut loaded = LoadedProfile {
        name: document.security_profile_name.clone(),
        behaviors: Vec::new(),
        skipped: Vec::new(),
    };
    let mut names = BTreeSet::new();
    for (i, b) in document.behaviors.iter().enumerate() {
        if !metric::is_valid_name(&b.name) {
            return Err(err(
                Some(&behavior_label(i)),
                "name",
                "must be 1-128 characters of a-z A-Z 0-9 : _ -".to_owned(),
            ));
        }
        if !names.insert(b.name.as_str()) {
            return Err(err(
                Some(&b.name),
                "name",
                "another behavior of this profile has the same name".to_owned(),
            ));
        }
        let criteria_json = criteria_values.get(i).cloned().unwrap_or(Value::Null);
        match compile_behavior(&document.security_profile_name, b, criteria_json) {
            Ok(Compiled::Judged(behavior)) => loaded.behaviors.push(*behavior),
            Ok(Compiled::Skipped(skipped)) => loaded.skipped.push(skipped),
            Err((field, message)) => return Err(err(Some(&b.name), &field, message)),
        }
    }
    Ok(loaded)
}

enum Compiled {
    Judged(Box<Behavior>),
    Skipped(SkippedBehavior),
}

type FieldError = (String, String);

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    (field.to_owned(), message.into())
}

fn compile_behavior(
    profile: &str,
    b: &BehaviorDocument,
    criteria_json: Value,
) -> Result<Compiled, FieldError> {
    let metric_name = b
        .metric
        .clone()
        .ok_or_else(|| field_error("metric", "is required"))?;
    let classified = metric::classify(&metric_name).map_err(|m| field_error("metric", m))?;
    let skip = |kind: SkipKind, reason: &str| {
        Ok(Compiled::Skipped(SkippedBehavior {
            kind,
            behavior: b.name.clone(),
            metric: metric_name.clone(),
            reason: reason.to_owned(),
        }))
    };
    if let Some(dimension) = &b.metric_dimension {
        if dimension.dimension_name.is_empty() {
            return Err(field_error(
                "metricDimension.dimensionName",
                "must not be empty",
            ));
        }
        if let Some(op) = &dimension.operator
            && op != "IN"
            && op != "NOT_IN"
        {
            return Err(field_error(
                "metricDimension.operator",
                format!("`{op}` is not IN or NOT_IN"),
            ));
        }
    }
    let Some(criteria) = &b.criteria else {
        return skip(
            SkipKind::RetainOnly,
            "no criteria: the behavior only retains the metric in the cloud",
        );
    };
    if let Some(ml) = &criteria.ml_detection_config
        && !matches!(ml.confidence_level.as_str(), "LOW" | "MEDIUM" | "HIGH")
    {
        return Err(field_error(
            "criteria.mlDetectionConfig.confidenceLevel",
            format!("`{}` is not LOW, MEDIUM or HIGH", ml.confidence_level),
        ));
    }
    let to_alarm = consecutive(
        criteria.consecutive_datapoints_to_alarm,
        "criteria.consecutiveDatapointsToAlarm",
    )?;
    let to_clear = consecutive(
        criteria.consecutive_datapoints_to_clear,
        "criteria.consecutiveDatapointsToClear",
    )?;
    let duration_seconds = match criteria.duration_seconds {
        None => None,
        Some(d) if (1..=86_400).contains(&d) => Some(d as u64),
        Some(d) => {
            return Err(field_error(
                "criteria.durationSeconds",
                format!("{d} is outside 1..=86400 seconds"),
            ));
        }
    };
    let metric = match classified {
        Classified::CloudSide => {
            return skip(
                SkipKind::CloudSide,
                "cloud-side metric: only AWS IoT measures it",
            );
        }
        Classified::Device(metric) => metric,
    };
    if criteria.ml_detection_config.is_some() {
        return skip(
            SkipKind::MlDetect,
            "ML Detect behavior: its model is trained and kept in the cloud",
        );
    }
    if b.metric_dimension.is_some() {
        return skip(
            SkipKind::Dimension,
            "metric dimension: dimensions are defined and resolved in the cloud",
        );
    }
    if let Some(d) = duration_seconds
        && !metric.is_custom()
        && !DEVICE_DURATIONS.contains(&d)
    {
        return Err(field_error(
            "criteria.durationSeconds",
            format!(
                "{d} is not one Device Defender accepts for the device-side metric `{metric_name}` (300, 600, 900, 1800 or 3600)"
            ),
        ));
    }

    let operator = criteria.comparison_operator.as_deref().ok_or_else(|| {
        field_error(
            "criteria.comparisonOperator",
            "is required (or mlDetectionConfig for an ML behavior)",
        )
    })?;
    let op = Operator::parse(operator)?;
    let statistic = match &criteria.statistical_threshold {
        None => None,
        Some(st) => {
            let name = st.statistic.as_deref().ok_or_else(|| {
                field_error("criteria.statisticalThreshold.statistic", "is required")
            })?;
            let statistic = STATISTICS.iter().find(|s| s.name == name).ok_or_else(|| {
                let all: Vec<&str> = STATISTICS.iter().map(|s| s.name).collect();
                let why = match name {
                    "Average" => " (CloudFormation lists `Average`, but the IoT API refuses it: use a percentile such as p50)",
                    _ => "",
                };
                field_error(
                    "criteria.statisticalThreshold.statistic",
                    format!("`{name}` is not one of {}{why}", all.join(", ")),
                )
            })?;
            Some(*statistic)
        }
    };
    let value = criteria.value.as_ref();
    match (value, statistic) {
        (Some(_), Some(_)) => {
            return Err(field_error(
                "criteria",
                "give either value or statisticalThreshold, not both",
            ));
        }
        (None, None) => {
            return Err(field_error(
                "criteria.value",
                "is required (or statisticalThreshold)",
            ));
        }
        _ => {}
    }

    let check = build_check(&metric, op, value, statistic)?;
    let is_list = !matches!(check, Check::Compare { .. });
    if is_list && duration_seconds.is_some() {
        return Err(field_error(
            "criteria.durationSeconds",
            format!("cannot be used with the list metric `{metric_name}`"),
        ));
    }
    Ok(Compiled::Judged(Box::new(Behavior {
        profile: profile.to_owned(),
        name: b.name.clone(),
        metric_name,
        metric,
        check,
        to_alarm,
        to_clear,
        duration_seconds,
        suppress_alerts: b.suppress_alerts.unwrap_or(false),
        criteria: criteria_json,
    })))
}

fn consecutive(value: Option<i64>, field: &str) -> Result<u32, FieldError> {
    match value {
        None => Ok(1),
        Some(n) if (1..=10).contains(&n) => Ok(n as u32),
        Some(n) => Err(field_error(field, format!("{n} is outside 1..=10"))),
    }
}

#[derive(Debug, Clone, Copy)]
enum Operator {
    Num(NumOp),
    Set(SetOp, SetKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetKind {
    Ports,
    Cidrs,
    Plain,
}

impl Operator {
    fn parse(text: &str) -> Result<Operator, FieldError> {
        Ok(match text {
            "less-than" => Operator::Num(NumOp::LessThan),
            "less-than-equals" => Operator::Num(NumOp::LessThanEquals),
            "greater-than" => Operator::Num(NumOp::GreaterThan),
            "greater-than-equals" => Operator::Num(NumOp::GreaterThanEquals),
            "in-port-set" => Operator::Set(SetOp::In, SetKind::Ports),
            "not-in-port-set" => Operator::Set(SetOp::NotIn, SetKind::Ports),
            "in-cidr-set" => Operator::Set(SetOp::In, SetKind::Cidrs),
            "not-in-cidr-set" => Operator::Set(SetOp::NotIn, SetKind::Cidrs),
            "in-set" => Operator::Set(SetOp::In, SetKind::Plain),
            "not-in-set" => Operator::Set(SetOp::NotIn, SetKind::Plain),
            other => {
                return Err(field_error(
                    "criteria.comparisonOperator",
                    format!(
                        "unknown operator `{other}` (less-than, less-than-equals, greater-than, \
                         greater-than-equals, in-port-set, not-in-port-set, in-cidr-set, \
                         not-in-cidr-set, in-set, not-in-set)"
                    ),
                ));
            }
        })
    }
}

/// Refuses value keys other than `allowed`.
fn only_keys(value: &MetricValueDocument, allowed: &[&str], why: &str) -> Result<(), FieldError> {
    for key in value.present() {
        if !allowed.contains(&key) {
            return Err(field_error(
                &format!("criteria.value.{key}"),
                format!("does not apply here: {why}"),
            ));
        }
    }
    Ok(())
}

fn build_check(
    metric: &Metric,
    op: Operator,
    value: Option<&MetricValueDocument>,
    statistic: Option<super::criteria::Statistic>,
) -> Result<Check, FieldError> {
    let shape = metric.shape();
    let operator_mismatch = |expected: &str| {
        Err(field_error(
            "criteria.comparisonOperator",
            format!("does not apply to this metric; use {expected}"),
        ))
    };
    match op {
        Operator::Num(num) => {
            if matches!(shape, Shape::Ports) {
                return operator_mismatch("in-port-set or not-in-port-set");
            }
            if matches!(shape, Shape::Addresses) {
                return operator_mismatch("in-cidr-set or not-in-cidr-set");
            }
            let threshold = match (value, statistic) {
                (_, Some(s)) => Threshold::Statistical(s),
                (Some(v), None) => {
                    only_keys(
                        v,
                        &["count", "number"],
                        "a numeric comparison takes count or number",
                    )?;
                    match (&v.count, v.number) {
                        (Some(_), Some(_)) => {
                            return Err(field_error(
                                "criteria.value",
                                "give either count or number, not both",
                            ));
                        }
                        (Some(count), None) => Threshold::Fixed(parse_count(count)? as f64),
                        (None, Some(n)) if n.is_finite() => Threshold::Fixed(n),
                        (None, Some(_)) => {
                            return Err(field_error("criteria.value.number", "must be finite"));
                        }
                        (None, None) => {
                            return Err(field_error(
                                "criteria.value",
                                "needs count (or number for a custom metric)",
                            ));
                        }
                    }
                }
                (None, None) => unreachable_value()?,
            };
            Ok(Check::Compare { op: num, threshold })
        }
        Operator::Set(set, kind) => {
            if statistic.is_some() {
                return Err(field_error(
                    "criteria.statisticalThreshold",
                    "only applies to numeric comparisons",
                ));
            }
            let Some(v) = value else {
                return unreachable_value();
            };
            match (shape, kind) {
                (Shape::Ports, SetKind::Ports) => {
                    only_keys(v, &["ports"], "a port set takes ports")?;
                    let ports = v
                        .ports
                        .as_ref()
                        .ok_or_else(|| field_error("criteria.value.ports", "is required"))?;
                    let mut out = Vec::with_capacity(ports.len());
                    for (i, p) in ports.iter().enumerate() {
                        let port = u16::try_from(*p).map_err(|_| {
                            field_error(
                                &format!("criteria.value.ports[{i}]"),
                                format!("{p} is outside 0..=65535"),
                            )
                        })?;
                        out.push(port);
                    }
                    out.sort_unstable();
                    out.dedup();
                    Ok(Check::Ports {
                        op: set,
                        ports: out,
                    })
                }
                (Shape::Addresses | Shape::Custom, SetKind::Cidrs) => {
                    only_keys(v, &["cidrs"], "a CIDR set takes cidrs")?;
                    let cidrs = v
                        .cidrs
                        .as_ref()
                        .ok_or_else(|| field_error("criteria.value.cidrs", "is required"))?;
                    let mut out = Vec::with_capacity(cidrs.len());
                    for (i, c) in cidrs.iter().enumerate() {
                        out.push(
                            Cidr::parse(c).map_err(|m| {
                                field_error(&format!("criteria.value.cidrs[{i}]"), m)
                            })?,
                        );
                    }
                    Ok(Check::Cidrs {
                        op: set,
                        cidrs: out,
                    })
                }
                (Shape::Custom, SetKind::Plain) => match (&v.numbers, &v.strings) {
                    (Some(numbers), None) => {
                        only_keys(v, &["numbers"], "in-set takes numbers or strings")?;
                        if let Some(i) = numbers.iter().position(|n| !n.is_finite()) {
                            return Err(field_error(
                                &format!("criteria.value.numbers[{i}]"),
                                "must be finite",
                            ));
                        }
                        Ok(Check::Numbers {
                            op: set,
                            numbers: numbers.clone(),
                        })
                    }
                    (None, Some(strings)) => {
                        only_keys(v, &["strings"], "in-set takes numbers or strings")?;
                        Ok(Check::Strings {
                            op: set,
                            strings: strings.iter().cloned().collect(),
                        })
                    }
                    (Some(_), Some(_)) => Err(field_error(
                        "criteria.value",
                        "give either numbers or strings, not both",
                    )),
                    (None, None) => Err(field_error(
                        "criteria.value",
                        "in-set and not-in-set need numbers or strings",
                    )),
                },
                (Shape::Ports, _) => operator_mismatch("in-port-set or not-in-port-set"),
                (Shape::Addresses, _) => operator_mismatch("in-cidr-set or not-in-cidr-set"),
                (Shape::Custom, SetKind::Ports) => operator_mismatch(
                    "in-set or not-in-set (number or string list) or in-cidr-set (IP address list)",
                ),
                (Shape::Gauge | Shape::Traffic, _) => operator_mismatch(
                    "less-than, less-than-equals, greater-than or greater-than-equals",
                ),
            }
        }
    }
}

/// `(None, None)` was refused before `build_check`; this keeps the match
/// total without a panic.
fn unreachable_value<T>() -> Result<T, FieldError> {
    Err(field_error(
        "criteria.value",
        "is required (or statisticalThreshold)",
    ))
}

fn parse_count(value: &Value) -> Result<u64, FieldError> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        field_error(
            "criteria.value.count",
            format!("{value} is not a whole non-negative number"),
        )
    })
}
