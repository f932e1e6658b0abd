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

/// Who holds the sockets behind a sample's port and connection lists: the
/// process attribution of one sample.
///
/// A side table beside the [`Sample`], not a part of it: the collector
/// returns it in [`crate::collect::Collected::owners`], plugins never see it,
/// and it never reaches the Device Defender report. Its rows are keyed by the
/// list entries themselves (a [`ListeningPort`] per transport, an
/// [`EstablishedConnection`]), so a plugin that filters or reorders the lists
/// cannot mis-assign an owner: look an entry up after the plugins ran
/// ([`Owners::tcp_port`], [`Owners::connection`]), and an entry a plugin
/// added has no row. [`Owners::retain_listed`] drops the rows of entries a
/// plugin removed, before the table goes anywhere a removed entry must not.
///
/// Processes are listed once in [`Owners::processes`] and referred to by pid,
/// since one process often holds hundreds of connections.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    /// One row per entry of [`Sample::listening_tcp_ports`], in its order.
    pub listening_tcp_ports: Vec<PortOwners>,
    /// One row per entry of [`Sample::listening_udp_ports`], in its order.
    pub listening_udp_ports: Vec<PortOwners>,
    /// One row per entry of [`Sample::established_connections`], in its order.
    pub established_connections: Vec<ConnectionOwners>,
    /// Every process named by a [`SocketOwner::Process`] above, by pid.
    pub processes: BTreeMap<u32, Process>,
    /// Processes whose open descriptors could not be read in this sample
    /// (not privileged enough); a socket only they could hold is
    /// [`UnattributedReason::NotPermitted`].
    pub unreadable_processes: u32,
}

/// The owners of one listening port entry (all its sockets: IPv4 and IPv6
/// binds, `SO_REUSEPORT` groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortOwners {
    pub port: ListeningPort,
    /// Sorted and each owner once; never empty.
    pub owners: Vec<SocketOwner>,
}

/// The owners of one established connection entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionOwners {
    pub connection: EstablishedConnection,
    /// Sorted and each owner once; never empty.
    pub owners: Vec<SocketOwner>,
}

/// Who holds one socket. A socket inherited across `fork` or passed to
/// another process is held by each of them, so an entry may have several.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SocketOwner {
    /// A process with the socket among its open descriptors: its pid, a key
    /// of [`Owners::processes`].
    Process(u32),
    /// No process could be named; never a made-up pid.
    Unattributed(Unattributed),
}

/// A socket no process could be named for, and what is known anyway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unattributed {
    pub reason: UnattributedReason,
    /// The user the kernel records as the socket's owner (who created it),
    /// which anyone may read; `None` when the source does not give it.
    pub uid: Option<u32>,
    /// The name of `uid` in the passwd file of the system sampled.
    pub user: Option<String>,
}

/// Why a socket has no process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnattributedReason {
    /// Some processes' descriptors could not be read (the collector lacks
    /// `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`, docs/DEPLOY.md); the owner
    /// is probably one of them.
    NotPermitted,
    /// Every process was searched and none holds the socket: its owner
    /// exited, or passed it on, between the socket table and the search.
    ProcessGone,
    /// The kernel holds the socket itself (inode 0: WireGuard, NFS, SMB
    /// server); no process owns it.
    Kernel,
    /// The socket table gave no inode to look for (a captured or hand-made
    /// table whose lines stop early).
    NoInode,
}

impl UnattributedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnattributedReason::NotPermitted => "not_permitted",
            UnattributedReason::ProcessGone => "process_gone",
            UnattributedReason::Kernel => "kernel",
            UnattributedReason::NoInode => "no_inode",
        }
    }
}

/// A process that holds sockets, as `/proc/<pid>` showed it. Fields the
/// collector could not read (not privileged enough, the process exited
/// meanwhile) are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22);
    /// with the pid it names one process, since pids are reused.
    pub start_time: u64,
    /// The process name (`comm`, at most 15 bytes).
    pub name: String,
    /// The executable's path (`/proc/<pid>/exe`), which needs ptrace access.
    pub exe: Option<String>,
    /// The command line, arguments separated by spaces, at most
    /// [`Process::COMMAND_LINE_BYTES`] bytes (then ending in `…`).
    pub command_line: Option<String>,
    /// The effective user id.
    pub uid: Option<u32>,
    /// The name of `uid` in the passwd file of the system sampled.
    pub user: Option<String>,
    /// The innermost systemd unit of the process's cgroup
    /// (`vsftpd.service`, `session-3.scope`).
    pub unit: Option<String>,
    /// The Greengrass component the process belongs to: nucleus lite runs
    /// each in a unit `ggl.<component>.service`; the Java nucleus starts it
    /// in `<root>/work/<component>`.
    pub component: Option<String>,
}

impl Process {
    /// The bound on [`Process::command_line`].
    pub const COMMAND_LINE_BYTES: usize = 512;

    /// One line for people: `/usr/sbin/vsftpd (pid 812) as root, unit
    /// vsftpd.service, component com.example.Ftp`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} (pid {})",
            self.exe.as_deref().unwrap_or(&self.name),
            self.pid
        );
        match (&self.user, self.uid) {
            (Some(user), _) => text.push_str(&format!(" as {user}")),
            (None, Some(uid)) => text.push_str(&format!(" as uid {uid}")),
            (None, None) => {}
        }
        if let Some(unit) = &self.unit {
            text.push_str(&format!(", unit {unit}"));
        }
        if let Some(component) = &self.component {
            text.push_str(&format!(", component {component}"));
        }
        text
    }
}

impl Owners {
    /// The owners of a listening TCP port entry; `None` when the table has
    /// no row for it (a plugin added the entry).
    pub fn tcp_port(&self, port: &ListeningPort) -> Option<&[SocketOwner]> {
        find_port(&self.listening_tcp_ports, port)
    }

    /// The owners of a listening UDP port entry.
    pub fn udp_port(&self, port: &ListeningPort) -> Option<&[SocketOwner]> {
        find_port(&self.listening_udp_ports, port)
    }

    /// The owners of an established connection entry.
    pub fn connection(&self, connection: &EstablishedConnection) -> Option<&[SocketOwner]> {
        self.established_connections
            .binary_search_by(|row| row.connection.cmp(connection))
            .ok()
            .map(|i| self.established_connections[i].owners.as_slice())
    }

    /// The process behind a [`SocketOwner::Process`].
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    /// Keeps only the rows of entries `sample` still lists (after plugins
    /// filtered it), and the processes those rows name.
    pub fn retain_listed(&mut self, sample: &Sample) {
        self.listening_tcp_ports
            .retain(|row| sample.listening_tcp_ports.binary_search(&row.port).is_ok());
        self.listening_udp_ports
            .retain(|row| sample.listening_udp_ports.binary_search(&row.port).is_ok());
        self.established_connections.retain(|row| {
            sample
                .established_connections
                .binary_search(&row.connection)
                .is_ok()
        });
        let named: std::collections::BTreeSet<u32> = self
            .listening_tcp_ports
            .iter()
            .chain(&self.listening_udp_ports)
            .flat_map(|row| &row.owners)
            .chain(
                self.established_connections
                    .iter()
                    .flat_map(|row| &row.owners),
            )
            .filter_map(|owner| match owner {
                SocketOwner::Process(pid) => Some(*pid),
                SocketOwner::Unattributed(_) => None,
            })
            .collect();
        self.processes.retain(|pid, _| named.contains(pid));
    }
}

fn find_port<'a>(rows: &'a [PortOwners], port: &ListeningPort) -> Option<&'a [SocketOwner]> {
    rows.binary_search_by(|row| row.port.cmp(port))
        .ok()
        .map(|i| rows[i].owners.as_slice())
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
