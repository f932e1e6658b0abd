//! Change events: what changed on the device since the previous sample, with
//! the process behind it (docs/CHANGES.md). A listener opened or closed, a
//! destination address first seen: the high-signal feed a SOC reads first
//! ("new listener on edge-17: /usr/sbin/vsftpd (pid 812) as root, unit
//! vsftpd.service").
//!
//! `run` only. The sample judged is the one the plugins passed on, so a
//! plugin that drops ephemeral ports keeps them out of change events too.
//! What was seen (the listeners with their processes, and the last
//! [`MAX_DESTINATIONS`] destination addresses, least recently seen first
//! out) is kept in `<stateDir>/changes.json`, so a restart does not announce
//! the whole device again. With no such file the first sample is the
//! baseline: it is recorded and announces nothing. Pure apart from
//! [`ChangeTracker::load`] and [`ChangeTracker::save`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::detect::{AlarmEvent, AlarmState};
use crate::sample::{Owners, Sample, SocketOwner};
use crate::state::{StateDir, StateError};

/// The `event.name` of a change event (and its HEC `fields.metric`).
pub const CHANGE_EVENT_NAME: &str = "edge:change";

/// The state file of what was seen.
pub const STATE_FILE: &str = "changes.json";

/// Destination addresses remembered; the least recently seen is forgotten
/// first, and announced again if it comes back.
pub const MAX_DESTINATIONS: usize = 4096;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    ListenerOpened,
    ListenerClosed,
    DestinationFirstSeen,
}

/// One change event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// `tcp` or `udp`.
    pub transport: &'static str,
    /// The listening port, or the destination's port.
    pub port: u16,
    /// The listener's interface (`None`: every interface), or the local
    /// interface of the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The destination address; destination events only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Who holds the socket, one line per process
    /// (`/usr/sbin/vsftpd (pid 812) as root, unit vsftpd.service`), or why
    /// nobody can be named (`unattributed: not_permitted, user ggc_user`).
    /// A closed listener names who held it when it opened. Empty when
    /// attribution is off.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

impl Change {
    /// The human line without its time, e.g.
    /// `CHANGE new listener tcp/2121 on *: /usr/sbin/vsftpd (pid 812) as root`.
    pub fn human(&self) -> String {
        let on = self.interface.as_deref().unwrap_or("*");
        let what = match self.kind {
            ChangeKind::ListenerOpened => {
                format!("new listener {}/{} on {on}", self.transport, self.port)
            }
            ChangeKind::ListenerClosed => {
                format!("listener closed {}/{} on {on}", self.transport, self.port)
            }
            ChangeKind::DestinationFirstSeen => format!(
                "first connection to {}:{}",
                self.address.as_deref().unwrap_or("?"),
                self.port
            ),
        };
        match self.processes.is_empty() {
            true => format!("CHANGE {what}"),
            false => format!("CHANGE {what}: {}", self.processes.join("; ")),
        }
    }
}

/// A listener as remembered: transport, port, interface.
type ListenerKey = (&'static str, u16, Option<String>);

/// What `changes.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    listeners: Vec<SavedListener>,
    /// Least recently seen first.
    destinations: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedListener {
    transport: String,
    port: u16,
    interface: Option<String>,
    processes: Vec<String>,
}

/// What was seen, and the changes of each new sample against it.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    listeners: BTreeMap<ListenerKey, Vec<String>>,
    /// Destination → when it was last seen (a sequence number), and the
    /// reverse, oldest first: a least-recently-seen set.
    destinations: HashMap<IpAddr, u64>,
    by_age: BTreeMap<u64, IpAddr>,
    next_seq: u64,
    /// No history yet: the next sample is recorded, not announced.
    baseline: bool,
    dirty: bool,
}

impl ChangeTracker {
    /// What the last run saw, from `changes.json`; with none (first start,
    /// or a corrupt file, logged and counted by `state`), the next sample is
    /// the baseline.
    pub fn load(state: &StateDir) -> ChangeTracker {
        match state.load::<Saved>(STATE_FILE) {
            Some(saved) => ChangeTracker::from_saved(saved),
            None => ChangeTracker {
                baseline: true,
                ..ChangeTracker::default()
            },
        }
    }

    fn from_saved(saved: Saved) -> ChangeTracker {
        let mut tracker = ChangeTracker::default();
        for l in saved.listeners {
            let transport = match l.transport.as_str() {
                "udp" => "udp",
                _ => "tcp",
            };
            tracker
                .listeners
                .insert((transport, l.port, l.interface), l.processes);
        }
        // An entry that does not parse (a hand-edited file) is forgotten:
        // at worst its address is announced once more.
        for address in saved.destinations.iter().filter_map(|a| a.parse().ok()) {
            tracker.touch(address);
        }
        tracker
    }

    /// Writes `changes.json` when something changed since the last save.
    pub fn save(&mut self, state: &StateDir) -> Result<(), StateError> {
        if !self.dirty {
            return Ok(());
        }
        let saved = Saved {
            listeners: self
                .listeners
                .iter()
                .map(|((transport, port, interface), processes)| SavedListener {
                    transport: (*transport).to_owned(),
                    port: *port,
                    interface: interface.clone(),
                    processes: processes.clone(),
                })
                .collect(),
            destinations: self.by_age.values().map(IpAddr::to_string).collect(),
        };
        state.save(STATE_FILE, &saved)?;
        self.dirty = false;
        Ok(())
    }

    /// The changes of `sample` against what was seen before, which it then
    /// becomes. `owners` names the processes (when attribution is on).
    pub fn observe(&mut self, sample: &Sample, owners: Option<&Owners>) -> Vec<Change> {
        let announce = !std::mem::take(&mut self.baseline);
        let mut changes = Vec::new();

        // A listener keeps the processes it opened with (the event of its
        // closing names them, even after they exited), so only a listener
        // not known with its processes is described: a steady device costs
        // no description per sample.
        let mut now: BTreeMap<ListenerKey, Vec<String>> = BTreeMap::new();
        for (transport, ports) in [
            ("tcp", &sample.listening_tcp_ports),
            ("udp", &sample.listening_udp_ports),
        ] {
            for port in ports {
                let key = (transport, port.port, port.interface.clone());
                let held = match self.listeners.get(&key) {
                    Some(before) if !before.is_empty() => before.clone(),
                    _ => owners
                        .and_then(|o| match transport {
                            "tcp" => o.tcp_port(port),
                            _ => o.udp_port(port),
                        })
                        .map(|rows| describe(owners, rows))
                        .unwrap_or_default(),
                };
                if announce && !self.listeners.contains_key(&key) {
                    changes.push(listener(ChangeKind::ListenerOpened, &key, held.clone()));
                }
                now.insert(key, held);
            }
        }
        for (key, processes) in &self.listeners {
            if announce && !now.contains_key(key) {
                changes.push(listener(ChangeKind::ListenerClosed, key, processes.clone()));
            }
        }
        if now != self.listeners {
            self.listeners = now;
            self.dirty = true;
        }

        for connection in &sample.established_connections {
            let address = connection.remote_addr.ip();
            let new = !self.destinations.contains_key(&address);
            self.touch(address);
            if new && announce {
                changes.push(Change {
                    kind: ChangeKind::DestinationFirstSeen,
                    transport: "tcp",
                    port: connection.remote_addr.port(),
                    interface: connection.local_interface.clone(),
                    address: Some(address.to_string()),
                    processes: owners
                        .and_then(|o| o.connection(connection))
                        .map(|rows| describe(owners, rows))
                        .unwrap_or_default(),
                });
            }
        }
        changes
    }

    /// Marks `address` as seen now; forgets the least recently seen beyond
    /// [`MAX_DESTINATIONS`].
    fn touch(&mut self, address: IpAddr) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.destinations.insert(address, seq) {
            self.by_age.remove(&old);
        } else {
            self.dirty = true;
        }
        self.by_age.insert(seq, address);
        while self.by_age.len() > MAX_DESTINATIONS {
            if let Some((_, oldest)) = self.by_age.pop_first() {
                self.destinations.remove(&oldest);
            }
        }
    }
}

fn listener(kind: ChangeKind, key: &ListenerKey, processes: Vec<String>) -> Change {
    Change {
        kind,
        transport: key.0,
        port: key.1,
        interface: key.2.clone(),
        address: None,
        processes,
    }
}

/// Names the processes behind an alarm of listening ports or destination
/// addresses: for each offending port or address, who holds it in `sample`
/// ([`AlarmEvent::processes`]). Other alarms, clears and invalidations are
/// left as they are.
pub fn name_processes(alarm: &mut AlarmEvent, sample: &Sample, owners: &Owners) {
    if alarm.state != AlarmState::Alarm {
        return;
    }
    let Some(offending) = &alarm.offending else {
        return;
    };
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match alarm.metric.as_str() {
        metric @ ("aws:listening-tcp-ports" | "aws:listening-udp-ports") => {
            let tcp = metric == "aws:listening-tcp-ports";
            let (transport, listed) = match tcp {
                true => ("tcp", &sample.listening_tcp_ports),
                false => ("udp", &sample.listening_udp_ports),
            };
            let ports = offending["ports"].as_array().into_iter().flatten();
            for port in ports.filter_map(serde_json::Value::as_u64) {
                for entry in listed.iter().filter(|e| u64::from(e.port) == port) {
                    let rows = match tcp {
                        true => owners.tcp_port(entry),
                        false => owners.udp_port(entry),
                    };
                    if let Some(rows) = rows {
                        found
                            .entry(format!("{transport}/{port}"))
                            .or_default()
                            .extend(describe(Some(owners), rows));
                    }
                }
            }
        }
        "aws:destination-ip-addresses" => {
            let cidrs = offending["cidrs"].as_array().into_iter().flatten();
            for cidr in cidrs.filter_map(serde_json::Value::as_str) {
                let address = cidr.split('/').next().unwrap_or(cidr);
                for connection in sample
                    .established_connections
                    .iter()
                    .filter(|c| c.remote_addr.ip().to_string() == address)
                {
                    if let Some(rows) = owners.connection(connection) {
                        found
                            .entry(address.to_owned())
                            .or_default()
                            .extend(describe(Some(owners), rows));
                    }
                }
            }
        }
        _ => {}
    }
    for who in found.values_mut() {
        who.sort();
        who.dedup();
    }
    alarm.processes = found;
}

/// One line per owner of a socket.
fn describe(owners: Option<&Owners>, rows: &[SocketOwner]) -> Vec<String> {
    rows.iter()
        .map(|row| match row {
            SocketOwner::Process(pid) => owners
                .and_then(|o| o.process(*pid))
                .map_or_else(|| format!("pid {pid}"), |p| p.describe()),
            SocketOwner::Unattributed(u) => match &u.user {
                Some(user) => format!("unattributed: {}, user {user}", u.reason.as_str()),
                None => format!("unattributed: {}", u.reason.as_str()),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{EstablishedConnection, ListeningPort};

    fn sample(tcp: &[u16], peers: &[&str]) -> Sample {
        Sample {
            listening_tcp_ports: tcp
                .iter()
                .map(|&port| ListeningPort {
                    port,
                    interface: None,
                })
                .collect(),
            established_connections: peers
                .iter()
                .map(|p| EstablishedConnection {
                    remote_addr: p.parse().expect("socket address"),
                    local_port: 50_000,
                    local_interface: Some("eth0".to_owned()),
                })
                .collect(),
            ..Sample::default()
        }
    }

    fn kinds(changes: &[Change]) -> Vec<(ChangeKind, u16)> {
        changes.iter().map(|c| (c.kind, c.port)).collect()
    }

    #[test]
    fn the_first_sample_is_the_baseline_then_changes_are_announced() {
        let mut tracker = ChangeTracker {
            baseline: true,
            ..ChangeTracker::default()
        };
        assert!(
            tracker
                .observe(&sample(&[22], &["10.0.0.1:443"]), None)
                .is_empty()
        );
        assert!(
            tracker
                .observe(&sample(&[22], &["10.0.0.1:443"]), None)
                .is_empty()
        );
        let changes = tracker.observe(
            &sample(&[22, 2121], &["10.0.0.1:8883", "10.0.0.2:443"]),
            None,
        );
        assert_eq!(
            kinds(&changes),
            [
                (ChangeKind::ListenerOpened, 2121),
                (ChangeKind::DestinationFirstSeen, 443)
            ]
        );
        assert_eq!(changes[1].address.as_deref(), Some("10.0.0.2"));
        assert_eq!(changes[0].human(), "CHANGE new listener tcp/2121 on *");
        let changes = tracker.observe(&sample(&[22], &[]), None);
        assert_eq!(kinds(&changes), [(ChangeKind::ListenerClosed, 2121)]);
        assert_eq!(changes[0].human(), "CHANGE listener closed tcp/2121 on *");
    }

    #[test]
    fn what_was_seen_survives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open(dir.path()).expect("state dir");
        let mut tracker = ChangeTracker::load(&state);
        tracker.observe(&sample(&[22], &["10.0.0.1:443"]), None);
        tracker.save(&state).expect("save");
        let mut again = ChangeTracker::load(&state);
        assert!(
            again
                .observe(&sample(&[22], &["10.0.0.1:443"]), None)
                .is_empty(),
            "nothing new after a restart"
        );
        let changes = again.observe(&sample(&[], &[]), None);
        assert_eq!(kinds(&changes), [(ChangeKind::ListenerClosed, 22)]);
    }

    #[test]
    fn the_least_recently_seen_destination_is_forgotten_first() {
        let mut tracker = ChangeTracker::default();
        tracker.observe(&sample(&[], &["192.0.2.1:443"]), None);
        for i in 0..MAX_DESTINATIONS {
            let peer = format!("10.{}.{}.{}:443", i >> 16 & 255, i >> 8 & 255, i & 255);
            // 192.0.2.1 stays in use, so it is never the least recent.
            let changes = tracker.observe(&sample(&[], &["192.0.2.1:443", &peer]), None);
            assert_eq!(changes.len(), 1);
        }
        assert_eq!(tracker.destinations.len(), MAX_DESTINATIONS);
        assert!(
            tracker
                .destinations
                .contains_key(&"192.0.2.1".parse::<IpAddr>().expect("address"))
        );
        // 10.0.0.0 was the least recently seen: forgotten, so new again.
        let changes = tracker.observe(&sample(&[], &["10.0.0.0:443"]), None);
        assert_eq!(kinds(&changes), [(ChangeKind::DestinationFirstSeen, 443)]);
    }
}
