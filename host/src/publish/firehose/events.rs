//! Splunk HEC events from a [`Sample`]. Pure: no I/O, not async.
//!
//! Each metric becomes one HEC event whose `event` has the shape of an element
//! of Device Defender's metrics export (`name`, `thing`, `value`, `timestamp`),
//! so the searches written for the export (`max(value.count)`,
//! `spath value.ports{}`) work unchanged. What defender-edge adds lives under
//! one key, `edge`, so it can never collide with a future export field.
//! Alerts become events of their own named [`ALERT_EVENT_NAME`].
//!
//! The events borrow from the sample and serialize through serde's derived
//! code straight into a caller's buffer: this runs for every metric of every
//! sample, and building a `serde_json::Value` tree first costs several times
//! as much (see host/benches/firehose.rs).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::changes::{CHANGE_EVENT_NAME, Change};
use crate::health::{HEALTH_EVENT_NAME, Health};
use crate::sample::{Alert, CustomMetricValue, ListeningPort, Sample};

/// The `event.name` of an alert event.
pub const ALERT_EVENT_NAME: &str = "edge:alert";

/// The default HEC `source`.
pub const DEFAULT_SOURCE: &str = "defender-edge";

/// The default HEC `sourcetype`; docs/SPLUNK.md gives its `props.conf`.
pub const DEFAULT_SOURCETYPE: &str = "aws_iot_device_defender";

/// Envelope settings that come from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOptions {
    /// HEC `source`.
    pub source: String,
    /// HEC `sourcetype`.
    pub sourcetype: String,
    /// HEC `index`; only set when the HEC token may write to it, otherwise
    /// Splunk rejects the whole request.
    pub index: Option<String>,
}

impl Default for EventOptions {
    fn default() -> Self {
        EventOptions {
            source: DEFAULT_SOURCE.to_owned(),
            sourcetype: DEFAULT_SOURCETYPE.to_owned(),
            index: None,
        }
    }
}

/// One Splunk HEC event (the `/services/collector/event` format).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HecEvent<'a> {
    /// Seconds since the Unix epoch, with milliseconds as the fraction.
    pub time: f64,
    /// The thing name.
    pub host: &'a str,
    pub source: &'a str,
    pub sourcetype: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<&'a str>,
    /// Indexed fields; HEC wants flat string values.
    pub fields: IndexedFields<'a>,
    pub event: EventBody<'a>,
}

/// The HEC `fields` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexedFields<'a> {
    pub thing: &'a str,
    /// The event's `event.name`.
    pub metric: &'a str,
    /// The alert's severity; alerts only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<&'static str>,
    /// `true` on the alert of a detection behavior with `suppressAlerts`:
    /// visible, but searches that page people leave it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<&'static str>,
}

/// The HEC `event` object: a Device Defender metrics export element plus
/// `edge`, or an alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventBody<'a> {
    /// `aws:listening-tcp-ports`, a custom metric's name, or `edge:alert`.
    pub name: &'a str,
    pub thing: &'a str,
    /// The metric value in the export's shape; absent on alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<MetricValue<'a>>,
    /// The alert; alerts only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertBody<'a>>,
    /// When the sample was taken, milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub edge: Edge<'a>,
}

/// A metric value with the export's key names: serializes as `{"count":2}`,
/// `{"ports":[22,443]}` and so on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricValue<'a> {
    Count(u64),
    Ports(Vec<u16>),
    /// Addresses without a prefix length, as the device reports them.
    Cidrs(Vec<Cow<'a, str>>),
    Number(f64),
    Numbers(&'a [f64]),
    Strings(&'a [String]),
}

/// An alert raised by a plugin or by local detection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertBody<'a> {
    /// The plugin's name, or `detect/<profile>`.
    pub source: &'a str,
    pub name: &'a str,
    pub severity: &'static str,
    pub message: &'a str,
    pub attributes: &'a BTreeMap<String, String>,
}

/// Everything defender-edge adds to an export element, under one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge<'a> {
    /// The sample's id; the Device Defender report built from the same
    /// sample carries it as its `report_id`.
    pub report_id: u64,
    /// Unique per thing, sample and event, and the same every time the event
    /// is sent: at-least-once duplicates share it (`dedup edge.event_id`).
    pub event_id: EventId<'a>,
    /// Plugin annotations (owner, site...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: &'a BTreeMap<String, String>,
}

/// `<thing>/<report_id>/<name>`, plus `/<n>` for the n-th alert of a sample.
/// Written out only when serialized, so building an event allocates nothing
/// for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventId<'a> {
    pub thing: &'a str,
    pub report_id: u64,
    pub name: &'a str,
    pub alert_index: Option<usize>,
}

impl fmt::Display for EventId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.thing, self.report_id, self.name)?;
        if let Some(n) = self.alert_index {
            write!(f, "/{n}")?;
        }
        Ok(())
    }
}

impl Serialize for EventId<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl HecEvent<'_> {
    /// Appends the event as one JSON line ending in `\n`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Serializing plain structs, strings and numbers into a Vec cannot
        // fail: serde_json only errors on I/O or on maps with non-string keys.
        serde_json::to_writer(&mut *out, self).expect("HEC event serializes");
        out.push(b'\n');
    }
}

/// The HEC events of one sample: one per Device Defender metric, one per
/// custom metric, one per alert. Traffic metrics are left out when the sample
/// has no honest delta.
pub fn events<'a>(
    sample: &'a Sample,
    sample_id: u64,
    options: &'a EventOptions,
) -> Vec<HecEvent<'a>> {
    let thing = sample.thing.as_str();
    let envelope = |name: &'a str,
                    value: Option<MetricValue<'a>>,
                    alert: Option<(usize, &'a Alert)>|
     -> HecEvent<'a> {
        let severity = alert.map(|(_, a)| a.severity.as_str());
        let suppressed = alert
            .and_then(|(_, a)| a.attributes.get(crate::detect::SUPPRESS_ALERTS_ATTRIBUTE))
            .filter(|v| *v == "true")
            .map(|_| "true");
        HecEvent {
            time: sample.timestamp_ms as f64 / 1000.0,
            host: thing,
            source: &options.source,
            sourcetype: &options.sourcetype,
            index: options.index.as_deref(),
            fields: IndexedFields {
                thing,
                metric: name,
                severity,
                suppressed,
            },
            event: EventBody {
                name,
                thing,
                value,
                alert: alert.map(|(_, a)| AlertBody {
                    source: &a.source,
                    name: &a.name,
                    severity: a.severity.as_str(),
                    message: &a.message,
                    attributes: &a.attributes,
                }),
                timestamp: sample.timestamp_ms,
                edge: Edge {
                    report_id: sample_id,
                    event_id: EventId {
                        thing,
                        report_id: sample_id,
                        name,
                        alert_index: alert.map(|(i, _)| i),
                    },
                    annotations: &sample.annotations,
                },
            },
        }
    };

    let mut out = Vec::with_capacity(10 + sample.custom_metrics.len() + sample.alerts.len());
    let tcp = distinct_ports(&sample.listening_tcp_ports);
    let udp = distinct_ports(&sample.listening_udp_ports);
    out.push(envelope(
        "aws:num-listening-tcp-ports",
        Some(MetricValue::Count(tcp.len() as u64)),
        None,
    ));
    out.push(envelope(
        "aws:listening-tcp-ports",
        Some(MetricValue::Ports(tcp)),
        None,
    ));
    out.push(envelope(
        "aws:num-listening-udp-ports",
        Some(MetricValue::Count(udp.len() as u64)),
        None,
    ));
    out.push(envelope(
        "aws:listening-udp-ports",
        Some(MetricValue::Ports(udp)),
        None,
    ));
    out.push(envelope(
        "aws:num-established-tcp-connections",
        Some(MetricValue::Count(
            sample.established_connections.len() as u64
        )),
        None,
    ));
    let destinations: BTreeSet<IpAddr> = sample
        .established_connections
        .iter()
        .map(|c| c.remote_addr.ip())
        .collect();
    out.push(envelope(
        "aws:destination-ip-addresses",
        Some(MetricValue::Cidrs(
            destinations
                .into_iter()
                .map(|ip| Cow::Owned(ip.to_string()))
                .collect(),
        )),
        None,
    ));
    if let Some(stats) = sample.network_stats {
        for (name, count) in [
            ("aws:all-bytes-in", stats.bytes_in),
            ("aws:all-bytes-out", stats.bytes_out),
            ("aws:all-packets-in", stats.packets_in),
            ("aws:all-packets-out", stats.packets_out),
        ] {
            out.push(envelope(name, Some(MetricValue::Count(count)), None));
        }
    }
    for (name, value) in &sample.custom_metrics {
        let value = match value {
            CustomMetricValue::Number(n) => MetricValue::Number(*n),
            CustomMetricValue::NumberList(list) => MetricValue::Numbers(list),
            CustomMetricValue::StringList(list) => MetricValue::Strings(list),
            // Device Defender does not document which export key an
            // ip-address-list custom metric uses; `cidrs` is the key its
            // MetricValue type has for addresses.
            CustomMetricValue::IpList(list) => {
                MetricValue::Cidrs(list.iter().map(|s| Cow::Borrowed(s.as_str())).collect())
            }
        };
        out.push(envelope(name, Some(value), None));
    }
    for (i, alert) in sample.alerts.iter().enumerate() {
        out.push(envelope(ALERT_EVENT_NAME, None, Some((i, alert))));
    }
    out
}

/// The HEC `event` of a health event: the health beside `name`, `thing`
/// and `timestamp`, and the event id under `edge` as every event has it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthBody<'a> {
    /// [`crate::health::HEALTH_EVENT_NAME`].
    pub name: &'static str,
    pub thing: &'a str,
    /// When the health was taken, milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub health: &'a Health,
    pub edge: HealthEdge,
}

/// `edge` of a health or change event: its id
/// (`<thing>/edge:health/<timestamp>`, `<thing>/edge:change/<timestamp>/<n>`),
/// unique per thing and event and the same every time it is sent (neither
/// is tied to a report id).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthEdge {
    pub event_id: String,
}

/// Appends the health event taken at `timestamp_ms` as one line, with the
/// same envelope as the sample's events (`fields.metric` is `edge:health`).
pub fn write_health(
    health: &Health,
    thing: &str,
    timestamp_ms: u64,
    options: &EventOptions,
    out: &mut Vec<u8>,
) {
    let body = HealthBody {
        name: HEALTH_EVENT_NAME,
        thing,
        timestamp: timestamp_ms,
        health,
        edge: HealthEdge {
            event_id: format!("{thing}/{HEALTH_EVENT_NAME}/{timestamp_ms}"),
        },
    };
    write_envelope(thing, timestamp_ms, HEALTH_EVENT_NAME, options, &body, out);
}

/// Appends the change events of one sample taken at `timestamp_ms` as one
/// line each, with the same envelope as the sample's events (`fields.metric`
/// is `edge:change`); the n-th has the id `<thing>/edge:change/<timestamp>/<n>`.
pub fn write_changes(
    changes: &[Change],
    thing: &str,
    timestamp_ms: u64,
    options: &EventOptions,
    out: &mut Vec<u8>,
) {
    #[derive(Serialize)]
    struct Body<'a> {
        name: &'static str,
        thing: &'a str,
        timestamp: u64,
        change: &'a Change,
        edge: HealthEdge,
    }
    for (n, change) in changes.iter().enumerate() {
        let body = Body {
            name: CHANGE_EVENT_NAME,
            thing,
            timestamp: timestamp_ms,
            change,
            edge: HealthEdge {
                event_id: format!("{thing}/{CHANGE_EVENT_NAME}/{timestamp_ms}/{n}"),
            },
        };
        write_envelope(thing, timestamp_ms, CHANGE_EVENT_NAME, options, &body, out);
    }
}

/// One line of an event that is not a metric or an alert: the HEC envelope
/// of the sample's events (`fields.metric` is the event's name) around
/// `event`.
fn write_envelope<T: Serialize>(
    thing: &str,
    timestamp_ms: u64,
    name: &'static str,
    options: &EventOptions,
    event: &T,
    out: &mut Vec<u8>,
) {
    #[derive(Serialize)]
    struct Line<'a, T> {
        time: f64,
        host: &'a str,
        source: &'a str,
        sourcetype: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<&'a str>,
        fields: IndexedFields<'a>,
        event: &'a T,
    }
    let line = Line {
        time: timestamp_ms as f64 / 1000.0,
        host: thing,
        source: &options.source,
        sourcetype: &options.sourcetype,
        index: options.index.as_deref(),
        fields: IndexedFields {
            thing,
            metric: name,
            severity: None,
            suppressed: None,
        },
        event,
    };
    // As in HecEvent::write_line: plain structs and string-keyed maps.
    serde_json::to_writer(&mut *out, &line).expect("event serializes");
    out.push(b'\n');
}

/// Appends the events of a sample to `out`, one line each, and returns how
/// many were written. An event whose line (newline included) is longer than
/// `max_line` bytes is left out and handed to `oversized` with its name and
/// size, so the caller can count and log it.
pub fn write_sample(
    sample: &Sample,
    sample_id: u64,
    options: &EventOptions,
    max_line: usize,
    out: &mut Vec<u8>,
    mut oversized: impl FnMut(&str, usize),
) -> usize {
    let mut written = 0;
    for event in events(sample, sample_id, options) {
        let start = out.len();
        event.write_line(out);
        let bytes = out.len() - start;
        if bytes > max_line {
            out.truncate(start);
            oversized(event.event.name, bytes);
        } else {
            written += 1;
        }
    }
    written
}

/// The distinct port numbers, ascending: the sample lists a port once per
/// interface, the export once.
fn distinct_ports(ports: &[ListeningPort]) -> Vec<u16> {
    let mut out: Vec<u16> = ports.iter().map(|p| p.port).collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{EstablishedConnection, NetworkStats, Severity};
    use serde_json::{Value, json};

    fn sample() -> Sample {
        let port = |port, interface: Option<&str>| ListeningPort {
            port,
            interface: interface.map(str::to_owned),
        };
        Sample {
            thing: "edge-01".to_owned(),
            timestamp_ms: 1_767_225_600_123,
            listening_tcp_ports: vec![
                port(22, None),
                port(443, Some("eth0")),
                port(443, Some("wlan0")),
            ],
            listening_udp_ports: vec![port(53, Some("lo"))],
            established_connections: vec![
                EstablishedConnection {
                    remote_addr: "203.0.113.5:443".parse().expect("addr"),
                    local_port: 50000,
                    local_interface: Some("eth0".to_owned()),
                },
                EstablishedConnection {
                    remote_addr: "203.0.113.5:8443".parse().expect("addr"),
                    local_port: 50001,
                    local_interface: None,
                },
                EstablishedConnection {
                    remote_addr: "[2001:db8::1]:22".parse().expect("addr"),
                    local_port: 50002,
                    local_interface: None,
                },
            ],
            network_stats: Some(NetworkStats {
                bytes_in: 1000,
                bytes_out: 2000,
                packets_in: 10,
                packets_out: 20,
            }),
            custom_metrics: BTreeMap::from([
                ("temperature".to_owned(), CustomMetricValue::Number(41.5)),
                (
                    "peers".to_owned(),
                    CustomMetricValue::IpList(vec!["10.0.0.1".to_owned()]),
                ),
            ]),
            annotations: BTreeMap::from([("site".to_owned(), "plant-7".to_owned())]),
            alerts: vec![Alert {
                source: "detect/baseline".to_owned(),
                name: "new-listening-port".to_owned(),
                severity: Severity::High,
                message: "port 4444 opened".to_owned(),
                attributes: BTreeMap::from([("port".to_owned(), "4444".to_owned())]),
            }],
        }
    }

    fn lines(sample: &Sample, options: &EventOptions) -> Vec<Value> {
        let mut buf = Vec::new();
        let n = write_sample(sample, 7, options, usize::MAX, &mut buf, |name, _| {
            panic!("{name} is not oversized")
        });
        let text = String::from_utf8(buf).expect("utf-8");
        assert!(text.ends_with('\n'));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), n);
        lines
    }

    fn by_name<'v>(lines: &'v [Value], name: &str) -> &'v Value {
        lines
            .iter()
            .find(|l| l["event"]["name"] == name)
            .unwrap_or_else(|| panic!("no event named {name}"))
    }

    #[test]
    fn one_event_per_metric_and_alert() {
        let lines = lines(&sample(), &EventOptions::default());
        let names: Vec<&str> = lines
            .iter()
            .map(|l| l["event"]["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            [
                "aws:num-listening-tcp-ports",
                "aws:listening-tcp-ports",
                "aws:num-listening-udp-ports",
                "aws:listening-udp-ports",
                "aws:num-established-tcp-connections",
                "aws:destination-ip-addresses",
                "aws:all-bytes-in",
                "aws:all-bytes-out",
                "aws:all-packets-in",
                "aws:all-packets-out",
                "peers",
                "temperature",
                "edge:alert",
            ]
        );
    }

    #[test]
    fn metric_event_has_the_export_element_shape() {
        let lines = lines(&sample(), &EventOptions::default());
        assert_eq!(
            by_name(&lines, "aws:listening-tcp-ports"),
            &json!({
                "time": 1767225600.123,
                "host": "edge-01",
                "source": "defender-edge",
                "sourcetype": "aws_iot_device_defender",
                "fields": {"thing": "edge-01", "metric": "aws:listening-tcp-ports"},
                "event": {
                    "name": "aws:listening-tcp-ports",
                    "thing": "edge-01",
                    "value": {"ports": [22, 443]},
                    "timestamp": 1767225600123u64,
                    "edge": {
                        "report_id": 7,
                        "event_id": "edge-01/7/aws:listening-tcp-ports",
                        "annotations": {"site": "plant-7"}
                    }
                }
            })
        );
    }

    /// The JSON paths of the searches in AWS's Splunk walkthrough:
    /// `chart max(value.count) by thing` and `spath value.ports{}`.
    #[test]
    fn walkthrough_search_paths_resolve() {
        let lines = lines(&sample(), &EventOptions::default());
        let count = by_name(&lines, "aws:num-listening-tcp-ports");
        assert_eq!(count["event"]["value"]["count"], 2);
        assert_eq!(count["event"]["thing"], "edge-01");
        let ports = by_name(&lines, "aws:listening-tcp-ports");
        assert_eq!(ports["event"]["value"]["ports"], json!([22, 443]));
        assert_eq!(
            by_name(&lines, "aws:num-listening-udp-ports")["event"]["value"]["count"],
            1
        );
        assert_eq!(
            by_name(&lines, "aws:num-established-tcp-connections")["event"]["value"]["count"],
            3
        );
        assert_eq!(
            by_name(&lines, "aws:destination-ip-addresses")["event"]["value"]["cidrs"],
            json!(["203.0.113.5", "2001:db8::1"])
        );
        assert_eq!(
            by_name(&lines, "aws:all-bytes-out")["event"]["value"]["count"],
            2000
        );
        assert_eq!(
            by_name(&lines, "aws:all-packets-in")["event"]["value"]["count"],
            10
        );
        assert_eq!(
            by_name(&lines, "temperature")["event"]["value"],
            json!({"number": 41.5})
        );
        assert_eq!(
            by_name(&lines, "peers")["event"]["value"],
            json!({"cidrs": ["10.0.0.1"]})
        );
    }

    #[test]
    fn a_suppressed_detection_alarm_is_marked_in_the_indexed_fields() {
        let mut s = sample();
        s.alerts[0].severity = Severity::Low;
        s.alerts[0].attributes.insert(
            crate::detect::SUPPRESS_ALERTS_ATTRIBUTE.to_owned(),
            "true".to_owned(),
        );
        let lines = lines(&s, &EventOptions::default());
        let alert = by_name(&lines, "edge:alert");
        assert_eq!(
            alert["fields"],
            json!({"thing": "edge-01", "metric": "edge:alert", "severity": "low", "suppressed": "true"})
        );
        assert_eq!(
            alert["event"]["alert"]["attributes"]["suppress_alerts"],
            "true"
        );
    }

    #[test]
    fn alert_event_carries_severity_message_and_attributes() {
        let lines = lines(&sample(), &EventOptions::default());
        let alert = by_name(&lines, "edge:alert");
        assert_eq!(
            alert["event"]["alert"],
            json!({
                "source": "detect/baseline",
                "name": "new-listening-port",
                "severity": "high",
                "message": "port 4444 opened",
                "attributes": {"port": "4444"}
            })
        );
        assert!(alert["event"].get("value").is_none());
        assert_eq!(
            alert["fields"],
            json!({"thing": "edge-01", "metric": "edge:alert", "severity": "high"})
        );
        assert_eq!(alert["event"]["edge"]["event_id"], "edge-01/7/edge:alert/0");
    }

    #[test]
    fn event_ids_are_unique_within_a_sample_and_stable() {
        let mut s = sample();
        s.alerts.push(s.alerts[0].clone());
        let first = lines(&s, &EventOptions::default());
        let ids: BTreeSet<String> = first
            .iter()
            .map(|l| {
                l["event"]["edge"]["event_id"]
                    .as_str()
                    .expect("id")
                    .to_owned()
            })
            .collect();
        assert_eq!(ids.len(), first.len());
        assert_eq!(first, lines(&s, &EventOptions::default()));
    }

    #[test]
    fn an_event_over_the_line_limit_is_left_out_and_named() {
        let mut s = sample();
        s.custom_metrics.insert(
            "huge".to_owned(),
            CustomMetricValue::StringList(vec!["x".repeat(2000)]),
        );
        let mut buf = Vec::new();
        let mut left_out = Vec::new();
        let n = write_sample(
            &s,
            7,
            &EventOptions::default(),
            1500,
            &mut buf,
            |name, bytes| left_out.push((name.to_owned(), bytes)),
        );
        assert_eq!(left_out.len(), 1);
        assert_eq!(left_out[0].0, "huge");
        assert!(left_out[0].1 > 2000, "{left_out:?}");
        let text = String::from_utf8(buf).expect("utf-8");
        assert_eq!(text.lines().count(), n);
        assert!(
            !text.contains("\"huge\""),
            "the oversized event is not written"
        );
        assert_eq!(n, 13, "every other event is");
    }

    #[test]
    fn index_only_when_configured_and_no_traffic_without_delta() {
        let mut s = sample();
        s.network_stats = None;
        s.annotations.clear();
        let options = EventOptions {
            source: "src".to_owned(),
            sourcetype: "st".to_owned(),
            index: Some("iot".to_owned()),
        };
        let with_index = lines(&s, &options);
        assert!(
            with_index
                .iter()
                .all(|l| l["index"] == "iot" && l["sourcetype"] == "st")
        );
        assert!(
            with_index
                .iter()
                .all(|l| l["event"]["edge"].get("annotations").is_none())
        );
        assert!(
            !with_index
                .iter()
                .any(|l| l["event"]["name"] == "aws:all-bytes-in")
        );
        let none = lines(&sample(), &EventOptions::default());
        assert!(none.iter().all(|l| l.get("index").is_none()));
    }
}
