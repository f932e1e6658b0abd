//! The report as typed values, and how a [`Sample`] becomes one.
//!
//! The model holds what goes on the wire, not what the collector saw: ports
//! are `u32` and remote addresses are text, so a report decoded from
//! arbitrary bytes can still be represented, and [`super::validate()`] (not
//! the type) decides whether it is acceptable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::sample::{CustomMetricValue, NetworkStats, Sample};

/// The report format version every agent sends.
pub const VERSION: &str = "1.0";

/// A Device Defender metrics report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub header: Header,
    /// Device-side metrics; `None` for a report of custom metrics only.
    pub metrics: Option<Metrics>,
    /// Custom metrics by name; omitted from the wire when empty.
    pub custom_metrics: BTreeMap<String, CustomMetricValue>,
}

/// The report header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Positive and strictly increasing per thing; see [`next_report_id`].
    pub report_id: u64,
    /// `"Major.Minor"`; [`VERSION`] for reports we build.
    pub version: String,
}

/// The device-side metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub listening_tcp_ports: PortList,
    pub listening_udp_ports: PortList,
    pub tcp_connections: TcpConnections,
    /// Traffic since the previous report; omitted when no honest delta exists.
    pub network_stats: Option<NetworkStats>,
}

/// A list of listening ports with the true count, which stays exact when
/// the list is trimmed to fit the size budget.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortList {
    pub ports: Vec<Port>,
    pub total: u64,
}

/// One listening port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    /// 1..=65535 in a valid report.
    pub port: u32,
    /// `None` for a wildcard bind (`0.0.0.0`, `::`); the key is then omitted.
    pub interface: Option<String>,
}

/// The `tcp_connections` object, which only wraps the established ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TcpConnections {
    pub established_connections: ConnectionList,
}

/// Established connections with the true count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionList {
    pub connections: Vec<Connection>,
    pub total: u64,
}

/// One established TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `203.0.113.7:443` or `[2001:db8::7]:443`.
    pub remote_addr: String,
    /// 1..=65535 in a valid report.
    pub local_port: u32,
    /// `None` when the local address could not be mapped to an interface;
    /// the key is then omitted.
    pub local_interface: Option<String>,
}

/// The report id to use now: `max(now_ms, last + 1)`, and at least 1.
///
/// `now_ms` must be wall-clock milliseconds since the Unix epoch, never a
/// monotonic clock, which restarts at boot; `last` is the previous id,
/// persisted by the caller so ids keep increasing across restarts. Device
/// Defender silently discards a report whose id it has already seen.
pub fn next_report_id(now_ms: u64, last: Option<u64>) -> u64 {
    let floor = last.map_or(1, |last| last.saturating_add(1));
    now_ms.max(floor)
}

/// Builds the report for `sample`: lists sorted and deduplicated (the
/// trimming order depends on it), totals equal to the true counts, empty
/// lists kept (an empty port list means "nothing listens"), and
/// `network_stats` only when the sample has a delta. Annotations and alerts
/// never enter the report.
pub fn build(sample: &Sample, report_id: u64) -> Report {
    let metrics = Metrics {
        listening_tcp_ports: port_list(&sample.listening_tcp_ports),
        listening_udp_ports: port_list(&sample.listening_udp_ports),
        tcp_connections: TcpConnections {
            established_connections: connection_list(sample),
        },
        network_stats: sample.network_stats,
    };
    Report {
        header: Header {
            report_id,
            version: VERSION.to_owned(),
        },
        metrics: Some(metrics),
        custom_metrics: sample.custom_metrics.clone(),
    }
}

fn port_list(ports: &[crate::sample::ListeningPort]) -> PortList {
    // The collector already sorts, but plugins may add entries anywhere;
    // sorting references keeps the common, sorted case cheap.
    let mut sorted: Vec<&crate::sample::ListeningPort> = ports.iter().collect();
    if !sorted.is_sorted() {
        sorted.sort_unstable();
    }
    sorted.dedup();
    let ports: Vec<Port> = sorted
        .into_iter()
        .map(|p| Port {
            port: u32::from(p.port),
            interface: p.interface.clone(),
        })
        .collect();
    PortList {
        total: ports.len() as u64,
        ports,
    }
}

fn connection_list(sample: &Sample) -> ConnectionList {
    // IPv4-mapped IPv6 peers are canonicalised to IPv4 before sorting, so
    // the same peer always sorts and prints the same way.
    let mut keyed: Vec<(SocketAddr, u16, Option<&str>)> = sample
        .established_connections
        .iter()
        .map(|c| {
            let remote = SocketAddr::new(c.remote_addr.ip().to_canonical(), c.remote_addr.port());
            (remote, c.local_port, c.local_interface.as_deref())
        })
        .collect();
    if !keyed.is_sorted() {
        keyed.sort_unstable();
    }
    keyed.dedup();
    let connections: Vec<Connection> = keyed
        .into_iter()
        .map(|(remote, local_port, local_interface)| Connection {
            remote_addr: remote_addr_text(remote),
            local_port: u32::from(local_port),
            local_interface: local_interface.map(str::to_owned),
        })
        .collect();
    ConnectionList {
        total: connections.len() as u64,
        connections,
    }
}

/// `ip:port`, IPv6 in brackets, without the scope id that `SocketAddrV6`'s
/// `Display` would add: Device Defender expects a plain address.
pub(crate) fn remote_addr_text(addr: SocketAddr) -> String {
    let mut text = String::with_capacity(48);
    // Writing into a String cannot fail.
    let _ = match addr.ip() {
        IpAddr::V4(ip) => write!(text, "{ip}:{}", addr.port()),
        IpAddr::V6(ip) => write!(text, "[{ip}]:{}", addr.port()),
    };
    text
}

/// The sample a valid report describes, as far as a report can tell (for
/// `plugin test --sample` on what `collect` printed). A report does not
/// carry everything a sample holds:
/// - the thing name (the topic says it, not the report): left empty;
/// - the collection time: the report id stands in for it, since ids are
///   wall-clock milliseconds ([`next_report_id`]), one later or more;
/// - annotations and alerts, which never enter a report: left empty;
/// - entries trimmed to fit the size budget (`total` above the entries
///   listed): only the listed entries come back.
///
/// Lists come back in report order; a report of custom metrics only gives
/// empty lists.
pub fn to_sample(report: &Report) -> Result<Sample, super::ValidationError> {
    super::validate(report)?;
    // Validation guarantees ports in 1..=65535 and parseable addresses.
    let port = |p: &Port| crate::sample::ListeningPort {
        port: u16::try_from(p.port).unwrap_or(u16::MAX),
        interface: p.interface.clone(),
    };
    let mut sample = Sample {
        timestamp_ms: report.header.report_id,
        custom_metrics: report.custom_metrics.clone(),
        ..Sample::default()
    };
    if let Some(metrics) = &report.metrics {
        sample.listening_tcp_ports = metrics.listening_tcp_ports.ports.iter().map(port).collect();
        sample.listening_udp_ports = metrics.listening_udp_ports.ports.iter().map(port).collect();
        sample.established_connections = metrics
            .tcp_connections
            .established_connections
            .connections
            .iter()
            .filter_map(|c| {
                Some(crate::sample::EstablishedConnection {
                    remote_addr: c.remote_addr.parse().ok()?,
                    local_port: u16::try_from(c.local_port).ok()?,
                    local_interface: c.local_interface.clone(),
                })
            })
            .collect();
        sample.network_stats = metrics.network_stats;
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{EstablishedConnection, ListeningPort};

    #[test]
    fn report_ids_increase_strictly() {
        assert_eq!(next_report_id(1_767_225_600_000, None), 1_767_225_600_000);
        // Clock moved backwards (NTP step) or two reports in one millisecond.
        assert_eq!(next_report_id(1_000, Some(5_000)), 5_001);
        assert_eq!(next_report_id(5_000, Some(5_000)), 5_001);
        assert_eq!(next_report_id(9_000, Some(5_000)), 9_000);
        // A clock at the epoch still yields a positive id.
        assert_eq!(next_report_id(0, None), 1);
        let mut last = None;
        for now in [10, 10, 9, 3, 11, 11, 100] {
            let id = next_report_id(now, last);
            assert!(last.is_none_or(|l| id > l), "{id} after {last:?}");
            last = Some(id);
        }
    }

    #[test]
    fn build_sorts_dedups_and_counts() {
        let sample = Sample {
            listening_tcp_ports: vec![
                ListeningPort {
                    port: 443,
                    interface: None,
                },
                ListeningPort {
                    port: 22,
                    interface: Some("eth0".into()),
                },
                ListeningPort {
                    port: 443,
                    interface: None,
                },
            ],
            established_connections: vec![
                EstablishedConnection {
                    remote_addr: "[::ffff:10.0.0.9]:8883".parse().expect("valid address"),
                    local_port: 40000,
                    local_interface: None,
                },
                EstablishedConnection {
                    remote_addr: "[fe80::1%2]:22".parse().expect("valid address"),
                    local_port: 50000,
                    local_interface: Some("wlan0".into()),
                },
            ],
            ..Sample::default()
        };
        let report = build(&sample, 7);
        let metrics = report.metrics.expect("build always adds metrics");
        assert_eq!(
            metrics.listening_tcp_ports.ports,
            vec![
                Port {
                    port: 22,
                    interface: Some("eth0".into())
                },
                Port {
                    port: 443,
                    interface: None
                }
            ]
        );
        assert_eq!(metrics.listening_tcp_ports.total, 2);
        assert_eq!(metrics.listening_udp_ports, PortList::default());
        let conns = &metrics.tcp_connections.established_connections;
        assert_eq!(conns.total, 2);
        assert_eq!(conns.connections[0].remote_addr, "10.0.0.9:8883");
        assert_eq!(conns.connections[1].remote_addr, "[fe80::1]:22");
        assert_eq!(metrics.network_stats, None);
        assert_eq!(report.header.version, "1.0");
    }
}
