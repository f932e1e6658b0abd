//! Validation rules of the Device Defender report. Each rule has its own
//! error variant, and each message names the field and the offending value.
//!
//! Field paths in messages use the long key names whatever the wire format,
//! since they describe the model, not the bytes.

use std::net::SocketAddr;

use super::model::{PortList, Report};
use crate::sample::CustomMetricValue;

/// Longest thing name, in bytes of UTF-8, Device Defender accepts.
pub const MAX_THING_NAME_BYTES: usize = 128;
/// Longest custom metric name Device Defender accepts.
pub const MAX_METRIC_NAME_LEN: usize = 128;
/// Device Defender keeps at most 15 significant digits of a number.
pub const MAX_SIGNIFICANT_DIGITS: usize = 15;

/// A broken rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("custom metric name {name:?} must be 1 to 128 characters from a-z A-Z 0-9 : _ -")]
    MetricName { name: String },
    #[error("custom metric name {name:?} must not start with the reserved prefix \"aws:\"")]
    ReservedMetricName { name: String },
    #[error("custom metric {name:?}: {value} is not a finite number")]
    NotFinite { name: String, value: f64 },
    #[error("custom metric {name:?}: {value} has more than 15 significant digits")]
    TooPrecise { name: String, value: f64 },
    #[error(
        "custom metric {name:?}: string {value:?} must be non-empty and use only a-z A-Z 0-9 : _ - / ."
    )]
    BadString { name: String, value: String },
    #[error("custom metric {name:?}: {value:?} is not a valid IPv4 or IPv6 address")]
    BadIp { name: String, value: String },
    #[error("header.report_id {value} must be positive")]
    ReportId { value: u64 },
    #[error("header.version {value:?} must have the form Major.Minor, such as \"1.0\"")]
    Version { value: String },
    #[error("report has neither metrics nor custom_metrics; at least one is required")]
    NothingToReport,
    #[error("{field} {value} is not a port number in 1..65535")]
    Port { field: String, value: u32 },
    #[error("{field} {value} is not a local port number in 1..65535")]
    LocalPort { field: String, value: u32 },
    #[error(
        "{field} {value:?} must be an IPv4 address and port (203.0.113.7:443) or a bracketed IPv6 address and port ([2001:db8::7]:443), with a port in 1..65535 and no zone index"
    )]
    RemoteAddr { field: String, value: String },
    #[error("{field} {total} is less than the {listed} entries listed")]
    Total {
        field: String,
        total: u64,
        listed: usize,
    },
    #[error("thing name {name:?} is {len} bytes; it must be 1 to 128 bytes of UTF-8")]
    ThingNameLength { name: String, len: usize },
    #[error("thing name {name:?} contains the control character {ch:?}")]
    ThingNameControl { name: String, ch: char },
    #[error("thing name {name:?} contains {ch:?}, which MQTT reserves in topic names")]
    ThingNameTopic { name: String, ch: char },
    #[error(
        "the {format} report takes {minimal} bytes with every list emptied, over the budget of {max_bytes} bytes"
    )]
    DoesNotFit {
        format: &'static str,
        minimal: usize,
        max_bytes: usize,
    },
}

/// Checks every rule of a report, in document order, and returns the first
/// broken one.
pub fn report(report: &Report) -> Result<(), ValidationError> {
    if report.header.report_id == 0 {
        return Err(ValidationError::ReportId {
            value: report.header.report_id,
        });
    }
    version(&report.header.version)?;
    if report.metrics.is_none() && report.custom_metrics.is_empty() {
        return Err(ValidationError::NothingToReport);
    }
    if let Some(metrics) = &report.metrics {
        port_list(&metrics.listening_tcp_ports, "metrics.listening_tcp_ports")?;
        port_list(&metrics.listening_udp_ports, "metrics.listening_udp_ports")?;
        let list = &metrics.tcp_connections.established_connections;
        const PATH: &str = "metrics.tcp_connections.established_connections";
        for (i, conn) in list.connections.iter().enumerate() {
            if !remote_addr_ok(&conn.remote_addr) {
                return Err(ValidationError::RemoteAddr {
                    field: format!("{PATH}.connections[{i}].remote_addr"),
                    value: conn.remote_addr.clone(),
                });
            }
            if !port_ok(conn.local_port) {
                return Err(ValidationError::LocalPort {
                    field: format!("{PATH}.connections[{i}].local_port"),
                    value: conn.local_port,
                });
            }
        }
        total(list.total, list.connections.len(), PATH)?;
    }
    report
        .custom_metrics
        .iter()
        .try_for_each(|(name, value)| custom_metric(name, value))
}

/// Checks a thing name against Device Defender's rule (1 to 128 bytes of
/// UTF-8, no control characters) and refuses the characters that would
/// change the meaning of the `$aws/things/<thing>/defender/...` topic.
pub fn thing_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > MAX_THING_NAME_BYTES {
        return Err(ValidationError::ThingNameLength {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if let Some(ch) = name.chars().find(|c| c.is_control()) {
        return Err(ValidationError::ThingNameControl {
            name: name.to_owned(),
            ch,
        });
    }
    if let Some(ch) = name.chars().find(|c| matches!(c, '/' | '+' | '#')) {
        return Err(ValidationError::ThingNameTopic {
            name: name.to_owned(),
            ch,
        });
    }
    Ok(())
}

fn version(value: &str) -> Result<(), ValidationError> {
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match value.split_once('.') {
        Some((major, minor)) if number(major) && number(minor) => Ok(()),
        _ => Err(ValidationError::Version {
            value: value.to_owned(),
        }),
    }
}

fn port_ok(port: u32) -> bool {
    (1..=65535).contains(&port)
}

fn port_list(list: &PortList, path: &str) -> Result<(), ValidationError> {
    for (i, port) in list.ports.iter().enumerate() {
        if !port_ok(port.port) {
            return Err(ValidationError::Port {
                field: format!("{path}.ports[{i}].port"),
                value: port.port,
            });
        }
    }
    total(list.total, list.ports.len(), path)
}

fn total(total: u64, listed: usize, path: &str) -> Result<(), ValidationError> {
    if total < listed as u64 {
        return Err(ValidationError::Total {
            field: format!("{path}.total"),
            total,
            listed,
        });
    }
    Ok(())
}

/// `ip:port` or `[ipv6]:port`, a non-zero port, and no `%zone`, which only
/// means something on the device itself.
fn remote_addr_ok(text: &str) -> bool {
    match text.parse::<SocketAddr>() {
        Ok(addr) => addr.port() != 0 && !text.contains('%'),
        Err(_) => false,
    }
}

/// Checks one custom metric against Device Defender's rules. Device Defender
/// accepts a report with a broken value and then silently drops the value, so
/// checking here is the only way the author ever hears about it.
pub fn custom_metric(name: &str, value: &CustomMetricValue) -> Result<(), ValidationError> {
    metric_name(name)?;
    match value {
        CustomMetricValue::Number(n) => number(name, *n),
        CustomMetricValue::NumberList(list) => list.iter().try_for_each(|n| number(name, *n)),
        CustomMetricValue::StringList(list) => list.iter().try_for_each(|s| string(name, s)),
        CustomMetricValue::IpList(list) => list.iter().try_for_each(|s| {
            s.parse::<std::net::IpAddr>()
                .map(|_| ())
                .map_err(|_| ValidationError::BadIp {
                    name: name.to_owned(),
                    value: s.clone(),
                })
        }),
    }
}

fn metric_name(name: &str) -> Result<(), ValidationError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_METRIC_NAME_LEN || !valid_chars {
        return Err(ValidationError::MetricName {
            name: name.to_owned(),
        });
    }
    if name
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("aws:"))
    {
        return Err(ValidationError::ReservedMetricName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn number(name: &str, n: f64) -> Result<(), ValidationError> {
    if !n.is_finite() {
        return Err(ValidationError::NotFinite {
            name: name.to_owned(),
            value: n,
        });
    }
    if significant_digits(n) > MAX_SIGNIFICANT_DIGITS {
        return Err(ValidationError::TooPrecise {
            name: name.to_owned(),
            value: n,
        });
    }
    Ok(())
}

/// Significant digits of the shortest decimal that round-trips to `n`.
fn significant_digits(n: f64) -> usize {
    // `{:e}` prints the shortest round-tripping mantissa, e.g. 1.2345e3.
    let text = format!("{:e}", n.abs());
    let mantissa = text.split('e').next().unwrap_or("");
    mantissa.bytes().filter(u8::is_ascii_digit).count()
}

fn string(name: &str, s: &str) -> Result<(), ValidationError> {
    // Digits are allowed: AWS's SDK samples list letters and `: _ - / .` only,
    // but rejecting version strings such as `openssh-9.2` would make the type
    // useless; see docs/PLUGINS.md.
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'/' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::BadString {
            name: name.to_owned(),
            value: s.to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test that unwraps the wrong variant fails, which is its purpose"
)]
mod tests {
    use super::*;

    #[test]
    fn custom_metric_rules() {
        let num = CustomMetricValue::Number;
        assert_eq!(custom_metric("ok_name:1-x", &num(3.0)), Ok(()));
        assert_eq!(
            custom_metric("", &num(1.0)).unwrap_err().to_string(),
            "custom metric name \"\" must be 1 to 128 characters from a-z A-Z 0-9 : _ -"
        );
        assert!(custom_metric(&"a".repeat(129), &num(1.0)).is_err());
        assert_eq!(
            custom_metric("AWS:x", &num(1.0)).unwrap_err().to_string(),
            "custom metric name \"AWS:x\" must not start with the reserved prefix \"aws:\""
        );
        assert_eq!(
            custom_metric("n", &num(f64::NAN)).unwrap_err().to_string(),
            "custom metric \"n\": NaN is not a finite number"
        );
        assert_eq!(custom_metric("n", &num(123456789012345.0)), Ok(()));
        assert_eq!(
            custom_metric("n", &num(0.1234567890123456))
                .unwrap_err()
                .to_string(),
            "custom metric \"n\": 0.1234567890123456 has more than 15 significant digits"
        );
        assert!(
            custom_metric(
                "n",
                &CustomMetricValue::NumberList(vec![1.0, f64::INFINITY])
            )
            .is_err()
        );
        assert_eq!(
            custom_metric(
                "s",
                &CustomMetricValue::StringList(vec!["openssh-9.2/x:y_z".into()])
            ),
            Ok(())
        );
        assert_eq!(
            custom_metric("s", &CustomMetricValue::StringList(vec!["a b".into()]))
                .unwrap_err()
                .to_string(),
            "custom metric \"s\": string \"a b\" must be non-empty and use only a-z A-Z 0-9 : _ - / ."
        );
        assert_eq!(
            custom_metric(
                "i",
                &CustomMetricValue::IpList(vec!["10.0.0.1".into(), "2001:db8::1".into()])
            ),
            Ok(())
        );
        assert_eq!(
            custom_metric("i", &CustomMetricValue::IpList(vec!["10.0.0.0/8".into()]))
                .unwrap_err()
                .to_string(),
            "custom metric \"i\": \"10.0.0.0/8\" is not a valid IPv4 or IPv6 address"
        );
    }
}
