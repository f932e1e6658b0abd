//! Between the shared [`Sample`] and the WIT types, and the checks a
//! plugin's output must pass before it replaces the sample: plugin output is
//! input like any other.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::config::Limits;
use super::runtime::wit;
use crate::report::validate;
use crate::sample::{
    Alert, CustomMetricValue, EstablishedConnection, ListeningPort, NetworkStats, Sample, Severity,
};

/// Output that breaks a rule; the message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct OutputError {
    pub field: String,
    pub message: String,
}

fn reject<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, OutputError> {
    Err(OutputError {
        field: field.into(),
        message: message.into(),
    })
}

/// The sample as the plugin sees it.
pub(crate) fn to_wit(s: &Sample) -> wit::Sample {
    let port = |p: &ListeningPort| wit::ListeningPort {
        port: p.port,
        interface: p.interface.clone(),
    };
    wit::Sample {
        thing: s.thing.clone(),
        timestamp_ms: s.timestamp_ms,
        listening_tcp_ports: s.listening_tcp_ports.iter().map(port).collect(),
        listening_udp_ports: s.listening_udp_ports.iter().map(port).collect(),
        established_connections: s
            .established_connections
            .iter()
            .map(|c| wit::Connection {
                remote_addr: c.remote_addr.to_string(),
                local_port: c.local_port,
                local_interface: c.local_interface.clone(),
            })
            .collect(),
        network_stats: s.network_stats.map(|n| wit::NetworkStats {
            bytes_in: n.bytes_in,
            bytes_out: n.bytes_out,
            packets_in: n.packets_in,
            packets_out: n.packets_out,
        }),
        custom_metrics: s
            .custom_metrics
            .iter()
            .map(|(name, v)| wit::CustomMetric {
                name: name.clone(),
                value: metric_to_wit(v),
            })
            .collect(),
        annotations: s
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        alerts: s
            .alerts
            .iter()
            .map(|a| wit::Alert {
                source: a.source.clone(),
                name: a.name.clone(),
                severity: severity_to_wit(a.severity),
                message: a.message.clone(),
                attributes: a
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect(),
    }
}

fn metric_to_wit(v: &CustomMetricValue) -> wit::MetricValue {
    match v {
        CustomMetricValue::Number(n) => wit::MetricValue::Number(*n),
        CustomMetricValue::NumberList(l) => wit::MetricValue::NumberList(l.clone()),
        CustomMetricValue::StringList(l) => wit::MetricValue::StringList(l.clone()),
        CustomMetricValue::IpList(l) => wit::MetricValue::IpList(l.clone()),
    }
}

fn severity_to_wit(s: Severity) -> wit::Severity {
    match s {
        Severity::Info => wit::Severity::Info,
        Severity::Low => wit::Severity::Low,
        Severity::Medium => wit::Severity::Medium,
        Severity::High => wit::Severity::High,
        Severity::Critical => wit::Severity::Critical,
    }
}

fn severity_from_wit(s: wit::Severity) -> Severity {
    match s {
        wit::Severity::Info => Severity::Info,
        wit::Severity::Low => Severity::Low,
        wit::Severity::Medium => Severity::Medium,
        wit::Severity::High => Severity::High,
        wit::Severity::Critical => Severity::Critical,
    }
}

/// Turns a plugin's output into the next sample, or says which field broke
/// which rule. `before` is the sample the plugin was given.
pub(crate) fn from_wit(
    plugin: &str,
    out: wit::Sample,
    new_alerts: Vec<wit::NewAlert>,
    before: &Sample,
    limits: &Limits,
) -> Result<Sample, OutputError> {
    let max = limits.max_list_entries;
    if out.thing != before.thing {
        return reject("thing", "is read-only");
    }
    if out.timestamp_ms != before.timestamp_ms {
        return reject("timestamp-ms", "is read-only");
    }
    if out.alerts.len() != before.alerts.len() {
        return reject("alerts", "is read-only; raise alerts through output.alerts");
    }
    // A list may keep what the host handed over (a device under a port
    // scan has more than 10,000 connections) plus at most `max` entries.
    check_added(
        "listening-tcp-ports",
        out.listening_tcp_ports.len(),
        before.listening_tcp_ports.len(),
        max,
    )?;
    check_added(
        "listening-udp-ports",
        out.listening_udp_ports.len(),
        before.listening_udp_ports.len(),
        max,
    )?;
    check_added(
        "established-connections",
        out.established_connections.len(),
        before.established_connections.len(),
        max,
    )?;
    check_added(
        "annotations",
        out.annotations.len(),
        before.annotations.len(),
        max,
    )?;
    check_len(
        "custom-metrics",
        out.custom_metrics.len(),
        limits.max_custom_metrics,
    )?;
    check_len("alerts (raised)", new_alerts.len(), limits.max_alerts)?;

    let ports = |field: &str, list: Vec<wit::ListeningPort>| {
        let mut ports = list
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                if p.port == 0 {
                    return reject(format!("{field}[{i}].port"), "0 is not a port (1..65535)");
                }
                if let Some(name) = &p.interface {
                    check_interface(&format!("{field}[{i}].interface"), name)?;
                }
                Ok(ListeningPort {
                    port: p.port,
                    interface: p.interface,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Keep the Sample's promise: sorted, each pair once.
        ports.sort();
        ports.dedup();
        Ok::<_, OutputError>(ports)
    };
    let listening_tcp_ports = ports("listening-tcp-ports", out.listening_tcp_ports)?;
    let listening_udp_ports = ports("listening-udp-ports", out.listening_udp_ports)?;

    let mut established_connections = out
        .established_connections
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("established-connections[{i}]");
            let remote_addr: SocketAddr = c.remote_addr.parse().map_err(|_| OutputError {
                field: format!("{field}.remote-addr"),
                message: format!("{:?} is not ip:port", truncate(&c.remote_addr)),
            })?;
            if c.local_port == 0 {
                return reject(format!("{field}.local-port"), "0 is not a port (1..65535)");
            }
            if let Some(name) = &c.local_interface {
                check_interface(&format!("{field}.local-interface"), name)?;
            }
            Ok(EstablishedConnection {
                remote_addr,
                local_port: c.local_port,
                local_interface: c.local_interface,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    established_connections.sort();
    established_connections.dedup();

    let mut custom_metrics = BTreeMap::new();
    for (i, m) in out.custom_metrics.into_iter().enumerate() {
        let field = format!("custom-metrics[{i}]");
        let given = before.custom_metrics.get(&m.name).map_or(0, |v| match v {
            CustomMetricValue::Number(_) => 0,
            CustomMetricValue::NumberList(l) => l.len(),
            CustomMetricValue::StringList(l) | CustomMetricValue::IpList(l) => l.len(),
        });
        let value_field = format!("{field}.value");
        let value = match m.value {
            wit::MetricValue::Number(n) => CustomMetricValue::Number(n),
            wit::MetricValue::NumberList(l) => {
                check_added(&value_field, l.len(), given, max)?;
                CustomMetricValue::NumberList(l)
            }
            wit::MetricValue::StringList(l) => {
                check_added(&value_field, l.len(), given, max)?;
                CustomMetricValue::StringList(l)
            }
            wit::MetricValue::IpList(l) => {
                check_added(&value_field, l.len(), given, max)?;
                CustomMetricValue::IpList(l)
            }
        };
        if let Err(e) = validate::custom_metric(&m.name, &value) {
            return reject(field, e.to_string());
        }
        if custom_metrics.insert(m.name.clone(), value).is_some() {
            return reject(field, format!("metric {:?} given twice", m.name));
        }
    }

    let mut annotations = BTreeMap::new();
    for (i, (k, v)) in out.annotations.into_iter().enumerate() {
        let field = format!("annotations[{i}]");
        check_key(&field, &k)?;
        check_string(&format!("{field} ({k})"), &v, limits.max_string_bytes)?;
        annotations.insert(k, v);
    }

    let mut alerts = before.alerts.clone();
    for (i, a) in new_alerts.into_iter().enumerate() {
        let field = format!("output.alerts[{i}]");
        check_key(&format!("{field}.name"), &a.name)?;
        check_string(
            &format!("{field}.message"),
            &a.message,
            limits.max_string_bytes,
        )?;
        check_len(&format!("{field}.attributes"), a.attributes.len(), max)?;
        let mut attributes = BTreeMap::new();
        for (k, v) in a.attributes {
            check_key(&format!("{field}.attributes"), &k)?;
            check_string(
                &format!("{field}.attributes.{k}"),
                &v,
                limits.max_string_bytes,
            )?;
            attributes.insert(k, v);
        }
        alerts.push(Alert {
            source: plugin.to_owned(),
            name: a.name,
            severity: severity_from_wit(a.severity),
            message: a.message,
            attributes,
        });
    }

    Ok(Sample {
        thing: out.thing,
        timestamp_ms: out.timestamp_ms,
        listening_tcp_ports,
        listening_udp_ports,
        established_connections,
        network_stats: out.network_stats.map(|n| NetworkStats {
            bytes_in: n.bytes_in,
            bytes_out: n.bytes_out,
            packets_in: n.packets_in,
            packets_out: n.packets_out,
        }),
        custom_metrics,
        annotations,
        alerts,
    })
}

fn check_len(field: &str, len: usize, max: usize) -> Result<(), OutputError> {
    check_added(field, len, 0, max)
}

/// A list of `len` entries where the plugin was given `given`: at most
/// `max` more than it was given.
fn check_added(field: &str, len: usize, given: usize, max: usize) -> Result<(), OutputError> {
    if len <= given.saturating_add(max) {
        return Ok(());
    }
    let message = if given == 0 {
        format!("{len} entries, more than the limit of {max}")
    } else {
        format!(
            "{len} entries, {} more than the {given} the plugin was given, over the limit of {max}",
            len - given
        )
    };
    reject(field, message)
}

/// The bytes wasmtime counts against the hostcall fuel when a sample like
/// `s` comes back from a plugin: each list's length times its element's
/// size, plus every string's length (wasmtime's own accounting when it
/// lifts values). Only what a plugin adds beyond this should count against
/// `hostcallBytes`.
pub(crate) fn lifted_bytes(s: &wit::Sample) -> usize {
    fn list<T>(l: &[T]) -> usize {
        std::mem::size_of_val(l)
    }
    let opt = |v: &Option<String>| v.as_ref().map_or(0, String::len);
    let pairs = |l: &[(String, String)]| -> usize {
        list(l) + l.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    let ports = |l: &[wit::ListeningPort]| -> usize {
        list(l) + l.iter().map(|p| opt(&p.interface)).sum::<usize>()
    };
    let metrics: usize = s
        .custom_metrics
        .iter()
        .map(|m| {
            m.name.len()
                + match &m.value {
                    wit::MetricValue::Number(_) => 0,
                    wit::MetricValue::NumberList(l) => list(l),
                    wit::MetricValue::StringList(l) | wit::MetricValue::IpList(l) => {
                        list(l) + l.iter().map(String::len).sum::<usize>()
                    }
                }
        })
        .sum();
    let alerts: usize = s
        .alerts
        .iter()
        .map(|a| a.source.len() + a.name.len() + a.message.len() + pairs(&a.attributes))
        .sum();
    s.thing.len()
        + ports(&s.listening_tcp_ports)
        + ports(&s.listening_udp_ports)
        + list(&s.established_connections)
        + s.established_connections
            .iter()
            .map(|c| c.remote_addr.len() + opt(&c.local_interface))
            .sum::<usize>()
        + list(&s.custom_metrics)
        + metrics
        + pairs(&s.annotations)
        + list(&s.alerts)
        + alerts
}

/// Interface names on Linux are at most 15 bytes; allow some slack but no
/// megabyte strings.
fn check_interface(field: &str, name: &str) -> Result<(), OutputError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return reject(
            field,
            format!("{:?} is not an interface name", truncate(name)),
        );
    }
    Ok(())
}

/// Keys and names: 1 to 128 bytes of printable text.
fn check_key(field: &str, key: &str) -> Result<(), OutputError> {
    if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
        return reject(
            field,
            format!(
                "name {:?} must be 1 to 128 bytes without control characters",
                truncate(key)
            ),
        );
    }
    Ok(())
}

fn check_string(field: &str, value: &str, max: usize) -> Result<(), OutputError> {
    if value.len() > max {
        return reject(
            field,
            format!("{} bytes, more than the limit of {max}", value.len()),
        );
    }
    Ok(())
}

/// At most 64 characters of a bad value in a message, so one bad output
/// cannot flood the log.
fn truncate(s: &str) -> String {
    if s.chars().count() > 64 {
        format!("{}...", s.chars().take(64).collect::<String>())
    } else {
        s.to_owned()
    }
}

// A failing unwrap is a failing test, with the value in the message.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Change = Box<dyn Fn(&mut wit::Sample)>;

    fn sample() -> Sample {
        Sample {
            thing: "pi".into(),
            timestamp_ms: 7,
            listening_tcp_ports: vec![ListeningPort {
                port: 22,
                interface: None,
            }],
            established_connections: vec![EstablishedConnection {
                remote_addr: "[2001:db8::7]:8883".parse().unwrap(),
                local_port: 40112,
                local_interface: Some("eth0".into()),
            }],
            custom_metrics: [("n".to_owned(), CustomMetricValue::Number(1.0))].into(),
            annotations: [("site".to_owned(), "x".to_owned())].into(),
            ..Sample::default()
        }
    }

    #[test]
    fn round_trip_keeps_the_sample() {
        let s = sample();
        let back = from_wit("p", to_wit(&s), vec![], &s, &Limits::default()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn bad_output_names_the_field() {
        let s = sample();
        let limits = Limits::default();
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|w| w.listening_tcp_ports[0].port = 0),
                "listening-tcp-ports[0].port: 0 is not a port (1..65535)",
            ),
            (
                Box::new(|w| w.established_connections[0].remote_addr = "nope".into()),
                "established-connections[0].remote-addr: \"nope\" is not ip:port",
            ),
            (
                Box::new(|w| w.custom_metrics[0].name = "aws:x".into()),
                "custom-metrics[0]: custom metric name \"aws:x\" must not start with the reserved prefix \"aws:\"",
            ),
            (
                Box::new(|w| w.thing = "other".into()),
                "thing: is read-only",
            ),
            (
                Box::new(|w| {
                    w.listening_udp_ports = vec![
                        wit::ListeningPort {
                            port: 1,
                            interface: None
                        };
                        10_001
                    ]
                }),
                "listening-udp-ports: 10001 entries, more than the limit of 10000",
            ),
        ];
        for (change, expected) in cases {
            let mut w = to_wit(&s);
            change(&mut w);
            let err = from_wit("p", w, vec![], &s, &limits).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn lists_may_keep_what_the_host_gave_plus_the_limit() {
        let limits = Limits::default();
        let conn = |i: u32| EstablishedConnection {
            remote_addr: SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], 443)),
            local_port: 40000,
            local_interface: None,
        };
        let mut s = sample();
        s.established_connections = (0..12_000).map(conn).collect();
        s.established_connections.sort();
        let echoed = from_wit("p", to_wit(&s), vec![], &s, &limits).unwrap();
        assert_eq!(
            echoed, s,
            "a sample over maxListEntries comes back as it went"
        );

        let mut grown = to_wit(&s);
        let more = to_wit(&Sample {
            established_connections: (12_000..22_001).map(conn).collect(),
            ..Sample::default()
        });
        grown
            .established_connections
            .extend(more.established_connections);
        let err = from_wit("p", grown, vec![], &s, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "established-connections: 22001 entries, 10001 more than the 12000 the plugin was \
             given, over the limit of 10000"
        );
    }
}
