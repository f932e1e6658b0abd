//! The sample and its parts as plain Rust values.

use std::collections::BTreeMap;

/// One observation of the device, as the host hands it to the plugin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Read-only: the AWS IoT thing name.
    pub thing: String,
    /// Read-only: collection time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Listening TCP ports; remove entries to keep them out of the report.
    pub listening_tcp_ports: Vec<ListeningPort>,
    pub listening_udp_ports: Vec<ListeningPort>,
    pub established_connections: Vec<Connection>,
    /// Traffic since the previous sample, when known.
    pub network_stats: Option<NetworkStats>,
    /// Custom metrics by name; names are 1 to 128 characters from
    /// `a-z A-Z 0-9 : _ -` and must not start with `aws:`.
    pub custom_metrics: BTreeMap<String, MetricValue>,
    /// Enrichment for SIEM events (owner, site...); never in the Device
    /// Defender report.
    pub annotations: BTreeMap<String, String>,
    /// Read-only: alerts already raised for this sample (local detection,
    /// earlier plugins). The host rejects output that changes them.
    pub alerts: Vec<Alert>,
    /// Alerts this plugin raised during this call; see [`Sample::raise`].
    pub raised: Vec<NewAlert>,
}

impl Sample {
    /// Raises an alert; the host records this plugin as its source. Returns
    /// it so attributes can be added.
    pub fn raise(
        &mut self,
        name: impl Into<String>,
        severity: Severity,
        message: impl Into<String>,
    ) -> &mut NewAlert {
        self.raised.push(NewAlert {
            name: name.into(),
            severity,
            message: message.into(),
            attributes: BTreeMap::new(),
        });
        let last = self.raised.len() - 1;
        &mut self.raised[last]
    }
}

/// A port something listens on; `interface` is `None` for a wildcard bind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListeningPort {
    pub port: u16,
    pub interface: Option<String>,
}

/// An established TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Connection {
    /// The peer as `ip:port`; IPv6 as `[addr]:port`.
    pub remote_addr: String,
    pub local_port: u16,
    pub local_interface: Option<String>,
}

impl Connection {
    /// The peer's address without the port.
    pub fn remote_ip(&self) -> Option<std::net::IpAddr> {
        self.remote_addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
    }
}

/// Interface traffic since the previous sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

/// A custom metric value: one of the four Device Defender types.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// At most 15 significant digits.
    Number(f64),
    NumberList(Vec<f64>),
    /// Strings of `a-z A-Z 0-9 : _ - / .`.
    StringList(Vec<String>),
    /// IPv4 or IPv6 addresses.
    IpList(Vec<String>),
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// An alert already raised for the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// A plugin's name, or `detect/<profile>` for local detection.
    pub source: String,
    pub name: String,
    pub severity: Severity,
    pub message: String,
    pub attributes: BTreeMap<String, String>,
}

/// An alert raised by this plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    pub name: String,
    pub severity: Severity,
    pub message: String,
    pub attributes: BTreeMap<String, String>,
}

impl NewAlert {
    /// Adds an attribute; returns the alert for chaining.
    pub fn with(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut NewAlert {
        self.attributes.insert(key.into(), value.into());
        self
    }
}
