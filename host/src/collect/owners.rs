//! Socket → process attribution for one sample: the [`Owners`] side table.
//!
//! The process table (`processes.rs`) knows which pids held which socket
//! inodes when it last read them. A sample asks it about every inode behind
//! the sample's lists; an inode it does not know is searched for in this
//! order, stopping as soon as nothing is missing:
//! 1. processes that are new since the last sample (always read: a new
//!    process is also how an inherited listener gains a holder);
//! 2. processes whose descriptor count changed (Linux 6.2 and later give
//!    the count as the size of `/proc/<pid>/fd`, so this costs one `stat`
//!    per process);
//! 3. for an established connection, the processes holding the listener on
//!    its local port (a server that accepted one connection and closed
//!    another keeps its count);
//! 4. every other process, unless each inode still missing was already
//!    missing after such a search in the previous sample (it belongs to a
//!    process we may not read; searching again would find nothing new).
//!
//! What is still missing then is `unattributed`: `not_permitted` when some
//! process could not be read, `process_gone` when every process was read.

use std::collections::{HashMap, HashSet};

use crate::sample::{
    ConnectionOwners, EstablishedConnection, ListeningPort, Owners, PortOwners, Process,
    SocketOwner, Unattributed, UnattributedReason,
};

use super::processes::{ProcessTable, ScanCounts};

/// What attribution needs of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SocketId {
    /// `None` when the socket table gave no inode (a cut-short line).
    pub inode: Option<u64>,
    pub uid: Option<u32>,
}

/// The sample's lists, each entry with the sockets behind it.
pub(crate) struct Listed<'a> {
    pub tcp: &'a [(ListeningPort, Vec<SocketId>)],
    pub udp: &'a [(ListeningPort, Vec<SocketId>)],
    pub established: &'a [(EstablishedConnection, Vec<SocketId>)],
}

impl Listed<'_> {
    fn sockets(&self) -> impl Iterator<Item = &SocketId> {
        let ports = self.tcp.iter().chain(self.udp).flat_map(|(_, s)| s);
        ports.chain(self.established.iter().flat_map(|(_, s)| s))
    }
}

/// Attribution state kept between samples.
#[derive(Debug)]
pub(crate) struct Attributor {
    table: ProcessTable,
    /// Inodes a search through every process did not find last time.
    not_found: HashSet<u64>,
}

impl Attributor {
    pub(crate) fn new(table: ProcessTable) -> Attributor {
        Attributor {
            table,
            not_found: HashSet::new(),
        }
    }

    /// What the last [`Attributor::attribute`] cost.
    pub(crate) fn counts(&self) -> ScanCounts {
        self.table.counts()
    }

    /// The owners of every listed entry; `None` when the proc root shows no
    /// processes at all (a captured tree of `net/` files only).
    pub(crate) fn attribute(&mut self, listed: &Listed<'_>) -> Option<Owners> {
        if !self.table.begin() {
            return None;
        }
        let wanted: Vec<u64> = listed
            .sockets()
            .filter_map(|s| s.inode)
            .filter(|i| *i != 0)
            .collect();
        for pid in self.holders_of(&wanted) {
            self.table.verify(pid);
        }
        self.search(listed, &wanted);

        // A socket no readable process holds: if some process could not be
        // read it is probably one of those; if all could, its holder is gone.
        let missing_reason = if self.table.unreadable() > 0 {
            UnattributedReason::NotPermitted
        } else {
            UnattributedReason::ProcessGone
        };
        let mut processes: HashMap<u32, Process> = HashMap::new();
        for pid in self.holders_of(&wanted) {
            // A holder that exited since it was read is not named.
            if let Some(details) = self.table.details(pid) {
                processes.insert(pid, details);
            }
        }
        let table = &self.table;
        let owners_of = |sockets: &[SocketId]| -> Vec<SocketOwner> {
            let mut owners = Vec::with_capacity(sockets.len());
            for socket in sockets {
                let unattributed = |reason| {
                    SocketOwner::Unattributed(Unattributed {
                        reason,
                        uid: socket.uid,
                        user: socket.uid.and_then(|u| table.user_name(u)),
                    })
                };
                let inode = match socket.inode {
                    None => {
                        owners.push(unattributed(UnattributedReason::NoInode));
                        continue;
                    }
                    Some(0) => {
                        owners.push(unattributed(UnattributedReason::Kernel));
                        continue;
                    }
                    Some(inode) => inode,
                };
                let before = owners.len();
                for pid in table.holders(inode) {
                    if processes.contains_key(pid) {
                        owners.push(SocketOwner::Process(*pid));
                    }
                }
                if owners.len() == before {
                    owners.push(unattributed(missing_reason));
                }
            }
            owners.sort_unstable();
            owners.dedup();
            owners
        };
        let ports = |rows: &[(ListeningPort, Vec<SocketId>)]| -> Vec<PortOwners> {
            rows.iter()
                .map(|(port, sockets)| PortOwners {
                    port: port.clone(),
                    owners: owners_of(sockets),
                })
                .collect()
        };
        let listening_tcp_ports = ports(listed.tcp);
        let listening_udp_ports = ports(listed.udp);
        let established_connections = listed
            .established
            .iter()
            .map(|(connection, sockets)| ConnectionOwners {
                connection: connection.clone(),
                owners: owners_of(sockets),
            })
            .collect();
        Some(Owners {
            listening_tcp_ports,
            listening_udp_ports,
            established_connections,
            processes: processes.into_iter().collect(),
            unreadable_processes: self.table.unreadable(),
        })
    }

    /// Every pid holding one of `inodes`, once.
    fn holders_of(&self, inodes: &[u64]) -> HashSet<u32> {
        inodes
            .iter()
            .flat_map(|i| self.table.holders(*i))
            .copied()
            .collect()
    }

    /// Looks for the wanted inodes no process is known to hold (see the
    /// module documentation for the order).
    fn search(&mut self, listed: &Listed<'_>, wanted: &[u64]) {
        let missing = |table: &ProcessTable| -> Vec<u64> {
            wanted
                .iter()
                .copied()
                .filter(|i| table.holders(*i).is_empty())
                .collect()
        };
        if missing(&self.table).is_empty() {
            self.not_found.clear();
            return;
        }
        self.table.rescan_changed();
        let still = missing(&self.table);
        if still.is_empty() {
            self.not_found.clear();
            return;
        }
        // Listeners' holders, for connections accepted on their port.
        let missing_set: HashSet<u64> = still.iter().copied().collect();
        let mut servers: HashSet<u32> = HashSet::new();
        let ports: HashSet<u16> = listed
            .established
            .iter()
            .filter(|(_, sockets)| {
                sockets
                    .iter()
                    .any(|s| s.inode.is_some_and(|i| missing_set.contains(&i)))
            })
            .map(|(c, _)| c.local_port)
            .collect();
        for (port, sockets) in listed.tcp {
            if ports.contains(&port.port) {
                for inode in sockets.iter().filter_map(|s| s.inode) {
                    servers.extend(self.table.holders(inode));
                }
            }
        }
        for pid in servers {
            self.table.rescan(pid);
        }
        let still = missing(&self.table);
        if still.iter().any(|i| !self.not_found.contains(i)) {
            self.table.rescan_all();
            self.not_found = missing(&self.table).into_iter().collect();
        } else {
            // Nothing new is missing: a search would find nothing new.
            self.not_found = still.into_iter().collect();
        }
    }
}
