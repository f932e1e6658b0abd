//! The sample: what the collector saw on the device at one instant, as it flows
//! through the pipeline (collect → plugins → detect → report/publish).
//!
//! These are plain values with no behaviour beyond small conveniences. Every
//! stage takes a `Sample` and gives one back; the Device Defender report and
//! the SIEM events are both derived from it, so key naming and wire shapes
//! never leak into this module.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One observation of the device.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// The AWS IoT thing the sample belongs to.
    pub thing: String,
    /// Wall-clock time of collection, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Listening TCP ports, sorted by (port, interface), each pair once.
    pub listening_tcp_ports: Vec<ListeningPort>,
    /// Listening (bound, unconnected) UDP ports, sorted and deduplicated like TCP.
    pub listening_udp_ports: Vec<ListeningPort>,
    /// Established TCP connections, sorted by (remote address, local port).
    pub established_connections: Vec<EstablishedConnection>,
    /// Traffic since the previous sample; `None` when no honest delta exists
    /// (first sample, counter reset, reboot).
    pub network_stats: Option<NetworkStats>,
    /// Custom metrics added by plugins, keyed by metric name.
    pub custom_metrics: BTreeMap<String, CustomMetricValue>,
    /// Enrichment added by plugins (owner, site, criticality...); travels with
    /// SIEM events, never into the Device Defender report.
    pub annotations: BTreeMap<String, String>,
    /// Alerts raised while processing this sample (plugins, local detection).
    pub alerts: Vec<Alert>,
}

/// A port something listens on, and the interface it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListeningPort {
    pub port: u16,
    /// The interface of the bound address; `None` for a wildcard bind
    /// (`0.0.0.0`, `::`), which listens on every interface.
    pub interface: Option<String>,
}

/// An established TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstablishedConnection {
    /// The peer. IPv4-mapped IPv6 peers are given as IPv4.
    pub remote_addr: SocketAddr,
    pub local_port: u16,
    /// Interface of the local address, when it could be resolved.
    pub local_interface: Option<String>,
}

/// Interface traffic since the previous sample, summed over the counted
/// interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

impl NetworkStats {
    /// The traffic of two windows together; saturates rather than wraps.
    pub fn plus(self, other: NetworkStats) -> NetworkStats {
        NetworkStats {
            bytes_in: self.bytes_in.saturating_add(other.bytes_in),
            bytes_out: self.bytes_out.saturating_add(other.bytes_out),
            packets_in: self.packets_in.saturating_add(other.packets_in),
            packets_out: self.packets_out.saturating_add(other.packets_out),
        }
    }
}

/// The four Device Defender custom metric types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CustomMetricValue {
    Number(f64),
    NumberList(Vec<f64>),
    StringList(Vec<String>),
    /// Addresses as text: plugins hand them over as strings, and validation
    /// (not the type) decides whether each is a valid IPv4 or IPv6 address.
    IpList(Vec<String>),
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// Something a plugin or the local detector wants a human to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Who raised it, as [`AlertOrigin`] writes it: a plugin's name, or
    /// `detect/<profile>` for local detection. Read it with
    /// [`Alert::origin`].
    pub source: String,
    pub name: String,
    pub severity: Severity,
    pub message: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl Alert {
    /// Who raised the alert.
    pub fn origin(&self) -> AlertOrigin<'_> {
        match self.source.strip_prefix(AlertOrigin::DETECTION_PREFIX) {
            Some(profile) => AlertOrigin::Detection { profile },
            None => AlertOrigin::Plugin { name: &self.source },
        }
    }
}

/// Who raised an alert: a plugin, or local detection judging one of its
/// security profiles. In [`Alert::source`] (and so in the plugin interface
/// and the HEC events) a plugin is its name and detection is
/// `detect/<profile>`. A plugin's name is its file's name, which cannot hold
/// a `/`, so the two never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertOrigin<'a> {
    Plugin { name: &'a str },
    Detection { profile: &'a str },
}

impl AlertOrigin<'_> {
    const DETECTION_PREFIX: &'static str = "detect/";

    /// Whether local detection raised the alert.
    pub fn is_detection(self) -> bool {
        matches!(self, AlertOrigin::Detection { .. })
    }
}

impl std::fmt::Display for AlertOrigin<'_> {
    /// The [`Alert::source`] text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AlertOrigin::Plugin { name } => f.write_str(name),
            AlertOrigin::Detection { profile } => {
                write!(f, "{}{profile}", AlertOrigin::DETECTION_PREFIX)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_origins_round_trip_through_the_source_text() {
        for origin in [
            AlertOrigin::Plugin {
                name: "port-allowlist",
            },
            AlertOrigin::Detection {
                profile: "DeviceRuleBaseline",
            },
        ] {
            let alert = Alert {
                source: origin.to_string(),
                name: "n".to_owned(),
                severity: Severity::Info,
                message: String::new(),
                attributes: BTreeMap::new(),
            };
            assert_eq!(alert.origin(), origin);
        }
        let detection = AlertOrigin::Detection { profile: "P" };
        assert_eq!(detection.to_string(), "detect/P");
        assert!(detection.is_detection());
    }
}
