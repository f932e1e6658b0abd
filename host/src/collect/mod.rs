//! `/proc` → [`crate::sample::Sample`], and who owns its sockets
//! ([`crate::sample::Owners`]). Reads proc files and the kernel's socket
//! diagnostics, nothing else.
//!
//! One [`Collector::sample`] reads, in this order: the interface map
//! (`net/if_inet6`, `net/route`, `net/fib_trie`), the socket tables, the
//! counters (`net/dev`, `net/igmp`, `sys/kernel/random/boot_id`), and, with
//! attribution on, the processes holding the listed sockets
//! (`<pid>/fd`, `stat`, `status`, `cmdline`, `cgroup`, `exe`, `cwd`).
//!
//! The socket tables come over netlink `sock_diag` when the proc root is the
//! live one (it shows our own network namespace), and from `net/tcp`,
//! `tcp6`, `udp` and `udp6` otherwise (a captured tree, `collect.source:
//! proc`) or once netlink has refused a dump. Both give the same sample: the
//! kernel filters a netlink dump by state and sends binary records, where the
//! files print every socket as text (see `netlink.rs`).
//!
//! Why the parsing is hand-written rather than `procfs`'s: procfs parses a
//! whole file into a `Vec` and fails the whole file on the first bad line, so
//! one malformed line would cost every socket of that file, and it allocates
//! a `String` per line and a `Vec` per address. Here each file is streamed
//! through one reusable 64 KiB buffer, bad lines are skipped and counted, and
//! memory stays flat whatever the number of sockets.
//!
//! Choices, also documented in docs/CONFIGURATION.md:
//! - A UDP socket is a listener when it is bound and unconnected: state `07`
//!   with remote address `0:0`. A connected UDP socket (state `01`) only talks
//!   to its one peer, so it is not a listener.
//! - Listening ports are one entry per (port, interface) pair, whether bound
//!   over IPv4, IPv6 or both. A wildcard bind (`0.0.0.0`, `::`) has no
//!   interface. A specific address whose interface cannot be found has none
//!   either; such addresses are counted in [`Collected::unresolved_addresses`].
//! - Established connections are TCP state `01`, one entry per socket. Both
//!   ends of a loopback connection are local sockets, so each appears once
//!   from each side. A socket table read in several chunks while sockets
//!   come and go can list a socket twice (the kernel's seq_file resumes by
//!   position), so rows with the same local and remote address and port,
//!   which no two established sockets share, count once.
//! - Empty lines are ignored; any other line that does not parse is skipped
//!   and counted.

mod counters;
mod interfaces;
mod netlink;
mod owners;
pub(crate) mod parse;
mod processes;
mod read;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::sample::{EstablishedConnection, ListeningPort, Owners, Sample};

pub use counters::{Counters, DeltaOutcome, InterfaceCounters};
use interfaces::{InterfaceMap, Resolved};
use netlink::{SockDiag, Table};
use owners::{Attributor, Listed, SocketId};
pub use processes::ScanCounts;
use read::LineReader;

/// The Greengrass root when the nucleus does not say otherwise (the Java
/// nucleus installer's default).
const DEFAULT_GREENGRASS_ROOT: &str = "/greengrass/v2";

/// The `collect` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CollectConfig {
    /// Root of the proc file system to read.
    pub proc_root: std::path::PathBuf,
    /// Count loopback (`lo`) traffic in network_stats.
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub include_loopback_traffic: bool,
    /// Name the process behind every listed socket ([`Collected::owners`]).
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub attribution: bool,
    /// Where the socket tables are read from.
    pub source: SocketSource,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            proc_root: "/proc".into(),
            include_loopback_traffic: false,
            attribution: true,
            source: SocketSource::Auto,
        }
    }
}

/// The `collect.source` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketSource {
    /// Netlink when the proc root shows this process's own network
    /// namespace (the live `/proc`), the proc files otherwise.
    #[default]
    Auto,
    /// Netlink whatever the proc root; the interface map and the counters
    /// still come from the proc root.
    Netlink,
    /// The `net/tcp`, `tcp6`, `udp` and `udp6` files of the proc root.
    Proc,
}

/// Where one sample's socket tables came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketsFrom {
    Netlink,
    ProcFiles,
}

/// Something that made a sample partial; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CollectWarning {
    /// The file is missing (a kernel without IPv6 has no `net/tcp6`) or
    /// could not be read; what it would have contributed is absent.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Lines of the file did not parse and were skipped.
    #[error("skipped {lines} malformed lines in {path}")]
    Malformed { path: PathBuf, lines: u64 },
    /// Netlink `sock_diag` could not be opened or refused a dump (a kernel
    /// without `inet_diag`, a seccomp filter); this sample and every later
    /// one read the proc files instead. Given once per collector.
    #[error(
        "netlink sock_diag unavailable ({what}: {source}); reading the socket tables from {root}/net from now on"
    )]
    Netlink {
        what: String,
        root: PathBuf,
        source: std::io::Error,
    },
}

impl CollectWarning {
    /// The proc file the warning is about; `None` for netlink.
    pub fn path(&self) -> Option<&Path> {
        match self {
            CollectWarning::Unreadable { path, .. } | CollectWarning::Malformed { path, .. } => {
                Some(path)
            }
            CollectWarning::Netlink { .. } => None,
        }
    }
}

/// The result of one [`Collector::sample`].
#[derive(Debug)]
pub struct Collected {
    pub sample: Sample,
    /// The counters seen now: the baseline to persist for the next sample.
    pub counters: Counters,
    /// Files that were missing, unreadable or had malformed lines; empty for a
    /// complete sample.
    pub warnings: Vec<CollectWarning>,
    /// Lines skipped because they did not parse, over all files.
    pub malformed_lines: u64,
    /// Sockets bound to a specific address whose interface could not be
    /// found (reported with no interface).
    pub unresolved_addresses: u64,
    /// Why `sample.network_stats` is or is not there.
    pub network_stats: DeltaOutcome,
    /// Where the socket tables came from.
    pub sockets_from: SocketsFrom,
    /// Who holds each listed socket: a side table keyed by the sample's
    /// entries, never part of the report. `None` when `collect.attribution`
    /// is off or the proc root shows no processes (a captured tree of `net/`
    /// files only).
    pub owners: Option<Owners>,
    /// What attribution cost in this sample (zero when off).
    pub attribution: ScanCounts,
}

/// Proc file paths, joined once.
#[derive(Debug)]
struct Paths {
    if_inet6: PathBuf,
    route: PathBuf,
    fib_trie: PathBuf,
    tcp: PathBuf,
    tcp6: PathBuf,
    udp: PathBuf,
    udp6: PathBuf,
    dev: PathBuf,
    igmp: PathBuf,
    boot_id: PathBuf,
}

/// Reads samples from a proc tree. Keep it for the life of the process:
/// it holds the netlink socket and what attribution learnt, so that later
/// samples only look at what changed. `sample` may be called from any thread
/// (calls are serialized).
#[derive(Debug)]
pub struct Collector {
    include_loopback_traffic: bool,
    root: PathBuf,
    paths: Paths,
    state: Mutex<State>,
}

/// What a collector keeps between samples.
#[derive(Debug)]
struct State {
    /// The read buffer, reused across samples so the hot path does not
    /// allocate it again.
    reader: LineReader,
    netlink: Netlink,
    /// `Some` when attribution is on.
    attributor: Option<Attributor>,
}

#[derive(Debug)]
enum Netlink {
    /// Not used: `collect.source` is `proc`, or `auto` with a proc root that
    /// is not the live one, or netlink failed and that was reported.
    Off,
    Ready(SockDiag),
    /// Opening the socket failed; reported by the next sample.
    Failed(std::io::Error),
}

/// Accumulates what goes wrong while reading the files of one sample.
#[derive(Default)]
struct Problems {
    warnings: Vec<CollectWarning>,
    malformed_lines: u64,
}

impl Problems {
    /// Streams `path` through `parse` after skipping `header_lines`; `parse`
    /// returns false for a malformed line. Returns whether the file was read.
    fn read(
        &mut self,
        reader: &mut LineReader,
        path: &Path,
        header_lines: usize,
        mut parse: impl FnMut(&[u8]) -> bool,
    ) -> bool {
        let mut index = 0usize;
        let mut bad = 0u64;
        let result = reader.for_each_line(path, |line| {
            index += 1;
            if index <= header_lines || line.trim_ascii().is_empty() {
                return;
            }
            if !parse(line) {
                bad += 1;
            }
        });
        match result {
            Ok(overlong) => {
                self.note_malformed(path, bad + overlong);
                true
            }
            Err(source) => {
                // Lines parsed before the error were used; count them too.
                self.note_malformed(path, bad);
                self.warnings.push(CollectWarning::Unreadable {
                    path: path.to_owned(),
                    source,
                });
                false
            }
        }
    }

    fn note_malformed(&mut self, path: &Path, lines: u64) {
        if lines > 0 {
            self.malformed_lines += lines;
            self.warnings.push(CollectWarning::Malformed {
                path: path.to_owned(),
                lines,
            });
        }
    }
}

/// Which table a socket line came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
}

/// What the socket tables yielded, before interface names are attached.
#[derive(Default)]
struct Sockets {
    tcp_listening: Vec<(u16, Resolved, SocketId)>,
    udp_listening: Vec<(u16, Resolved, SocketId)>,
    /// (remote, local port, local interface, local address, socket).
    established: Vec<(SocketAddr, u16, Resolved, IpAddr, SocketId)>,
    unresolved: u64,
}

impl Sockets {
    fn add(&mut self, protocol: Protocol, line: &parse::SocketLine, map: &mut InterfaceMap) {
        let listening = match protocol {
            Protocol::Tcp => line.state == parse::STATE_LISTEN,
            Protocol::Udp => {
                line.state == parse::STATE_CLOSE
                    && line.remote.is_unspecified()
                    && line.remote_port == 0
            }
        };
        let established = protocol == Protocol::Tcp && line.state == parse::STATE_ESTABLISHED;
        if !(listening || established) || line.local_port == 0 {
            return;
        }
        let resolved = map.resolve(line.local);
        if resolved == Resolved::Unknown {
            self.unresolved += 1;
        }
        let id = SocketId {
            inode: line.inode,
            uid: line.uid,
        };
        if established {
            let remote = match line.remote {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            };
            self.established.push((
                SocketAddr::new(remote, line.remote_port),
                line.local_port,
                resolved,
                line.local,
                id,
            ));
        } else if protocol == Protocol::Tcp {
            self.tcp_listening.push((line.local_port, resolved, id));
        } else {
            self.udp_listening.push((line.local_port, resolved, id));
        }
    }
}

fn interface_name(map: &InterfaceMap, resolved: Resolved) -> Option<String> {
    match resolved {
        Resolved::Interface(id) => Some(map.name(id).to_owned()),
        Resolved::Wildcard | Resolved::Unknown => None,
    }
}

/// The listening ports, sorted and each (port, interface) pair once, with
/// the sockets behind each entry.
fn listening_ports(
    map: &InterfaceMap,
    mut raw: Vec<(u16, Resolved, SocketId)>,
) -> Vec<(ListeningPort, Vec<SocketId>)> {
    // Group on the compact form first (v4 + v6 binds, SO_REUSEPORT groups),
    // so names are copied once per distinct pair.
    raw.sort_unstable_by_key(|(port, r, id)| (*port, resolved_key(*r), *id));
    let mut ports: Vec<(ListeningPort, Vec<SocketId>)> = Vec::new();
    let mut last = None;
    for (port, r, id) in raw {
        let key = (port, resolved_key(r));
        match ports.last_mut() {
            Some((_, ids)) if last == Some(key) => ids.push(id),
            _ => {
                let entry = ListeningPort {
                    port,
                    interface: interface_name(map, r),
                };
                ports.push((entry, vec![id]));
            }
        }
        last = Some(key);
    }
    // Unknown and wildcard both become `None`; sort and merge on the final
    // form.
    ports.sort_by(|a, b| a.0.cmp(&b.0));
    ports.dedup_by(|later, earlier| {
        if later.0 != earlier.0 {
            return false;
        }
        earlier.1.append(&mut later.1);
        true
    });
    ports
}

fn resolved_key(r: Resolved) -> u32 {
    match r {
        Resolved::Wildcard | Resolved::Unknown => 0,
        Resolved::Interface(id) => u32::from(id) + 1,
    }
}

/// Whether `root` is a proc file system showing this process's own network
/// namespace, so that netlink (which answers for our namespace) sees the
/// same sockets as `<root>/net`. A captured tree has no `self/ns/net`.
fn shows_our_network(root: &Path) -> bool {
    match (
        std::fs::read_link("/proc/self/ns/net"),
        std::fs::read_link(root.join("self/ns/net")),
    ) {
        (Ok(ours), Ok(theirs)) => ours == theirs,
        _ => false,
    }
}

/// Where a Greengrass Java nucleus may keep its components' work folders:
/// the directory of the IPC socket it names to its components
/// (`<root>/ipc.socket`) when we run as one, and the installer's default.
fn greengrass_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(DEFAULT_GREENGRASS_ROOT)];
    if let Some(socket) = std::env::var_os("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        && let Some(root) = Path::new(&socket).parent()
        && !roots.iter().any(|r| r == root)
    {
        roots.push(root.to_owned());
    }
    roots
}

/// A proc root of which no network file can be read: a typo (a missing
/// folder, a plain file, an empty folder) would otherwise give a clean report
/// of a device that listens on nothing.
#[derive(Debug, thiserror::Error)]
#[error(
    "proc root {root} (collect.procRoot or --proc-root) is not a proc tree: none of net/tcp, net/tcp6, net/udp, net/udp6, net/dev can be read ({first})"
)]
pub struct ProcRootError {
    pub root: String,
    /// The first file's error, e.g. `…/net/tcp: No such file or directory`.
    pub first: String,
}

/// Checks that at least one of the network files under `root` can be read;
/// a partial tree passes (what is missing is warned per sample).
pub fn check_proc_root(root: &Path) -> Result<(), ProcRootError> {
    let mut first = None;
    for file in ["net/tcp", "net/tcp6", "net/udp", "net/udp6", "net/dev"] {
        let path = root.join(file);
        match std::fs::File::open(&path) {
            Ok(_) => return Ok(()),
            Err(error) => {
                first.get_or_insert_with(|| format!("{}: {error}", path.display()));
            }
        }
    }
    Err(ProcRootError {
        root: root.display().to_string(),
        first: first.unwrap_or_default(),
    })
}

impl Collector {
    /// A collector reading the proc tree at `config.proc_root`.
    pub fn new(config: &CollectConfig) -> Collector {
        let root = &config.proc_root;
        let net = root.join("net");
        let netlink = match config.source {
            SocketSource::Proc => Netlink::Off,
            SocketSource::Auto if !shows_our_network(root) => Netlink::Off,
            SocketSource::Auto | SocketSource::Netlink => match SockDiag::open() {
                Ok(diag) => Netlink::Ready(diag),
                Err(error) => Netlink::Failed(error),
            },
        };
        let attributor = config.attribution.then(|| {
            // The passwd file of the system the proc root belongs to:
            // `/proc/../etc/passwd` is `/etc/passwd`, and a captured tree
            // `<dir>/proc` may carry `<dir>/etc/passwd`.
            let passwd = root.join("../etc/passwd");
            Attributor::new(processes::ProcessTable::new(
                root,
                passwd,
                &greengrass_roots(),
            ))
        });
        Collector {
            include_loopback_traffic: config.include_loopback_traffic,
            root: root.clone(),
            paths: Paths {
                if_inet6: net.join("if_inet6"),
                route: net.join("route"),
                fib_trie: net.join("fib_trie"),
                tcp: net.join("tcp"),
                tcp6: net.join("tcp6"),
                udp: net.join("udp"),
                udp6: net.join("udp6"),
                dev: net.join("dev"),
                igmp: net.join("igmp"),
                boot_id: root.join("sys/kernel/random/boot_id"),
            },
            state: Mutex::new(State {
                reader: LineReader::default(),
                netlink,
                attributor,
            }),
        }
    }

    /// One sample. `baseline` = counters returned by the previous sample
    /// (persisted by the caller, so deltas survive restarts); `None` => no
    /// `network_stats`. Never fails: what cannot be read is left out and
    /// named in [`Collected::warnings`].
    pub fn sample(&self, thing: &str, now_ms: u64, baseline: Option<&Counters>) -> Collected {
        // A panic elsewhere while holding the lock cannot leave the state in
        // a state that matters: the buffer is overwritten before every use,
        // and the process table is checked against /proc every sample.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let State {
            reader,
            netlink,
            attributor,
        } = &mut *state;
        let p = &self.paths;
        let mut problems = Problems::default();

        // The interface map, built once for every socket of this sample.
        let mut map = InterfaceMap::default();
        problems.read(reader, &p.if_inet6, 0, |line| {
            parse::parse_if_inet6_line(line)
                .map(|l| map.add_if_inet6(&l))
                .is_some()
        });
        problems.read(reader, &p.route, 1, |line| {
            parse::parse_route_line(line)
                .map(|l| map.add_route(&l))
                .is_some()
        });
        problems.read(reader, &p.fib_trie, 0, |line| {
            parse::parse_fib_trie_line(line)
                .map(|l| map.add_fib_trie(l))
                .is_some()
        });

        let (sockets, sockets_from) = match self.read_netlink(netlink, &mut map) {
            Ok(Some(sockets)) => (sockets, SocketsFrom::Netlink),
            Ok(None) => (
                self.read_socket_files(reader, &mut problems, &mut map),
                SocketsFrom::ProcFiles,
            ),
            Err(warning) => {
                problems.warnings.push(warning);
                (
                    self.read_socket_files(reader, &mut problems, &mut map),
                    SocketsFrom::ProcFiles,
                )
            }
        };

        let counters = self.read_counters(reader, &mut problems, &mut map);
        let network_stats = counters::delta(baseline, &counters, self.include_loopback_traffic);
        let outcome = match &network_stats {
            Ok(_) => DeltaOutcome::Computed,
            Err(why) => {
                tracing::debug!(reason = %why, "no network_stats in this sample");
                why.clone()
            }
        };

        let mut established: Vec<(EstablishedConnection, IpAddr, SocketId)> = sockets
            .established
            .into_iter()
            .map(|(remote_addr, local_port, r, local, id)| {
                let connection = EstablishedConnection {
                    remote_addr,
                    local_port,
                    local_interface: interface_name(&map, r),
                };
                (connection, local, id)
            })
            .collect();
        // One sort gives the report's order and puts a row the table
        // listed twice next to itself.
        established.sort_unstable();
        established.dedup();
        let tcp = listening_ports(&map, sockets.tcp_listening);
        let udp = listening_ports(&map, sockets.udp_listening);

        let (owners, attribution) = match attributor {
            Some(attributor) => {
                let mut rows: Vec<(EstablishedConnection, Vec<SocketId>)> = Vec::new();
                for (connection, _, id) in &established {
                    match rows.last_mut() {
                        Some((last, ids)) if last == connection => ids.push(*id),
                        _ => rows.push((connection.clone(), vec![*id])),
                    }
                }
                let owners = attributor.attribute(&Listed {
                    tcp: &tcp,
                    udp: &udp,
                    established: &rows,
                });
                (owners, attributor.counts())
            }
            None => (None, ScanCounts::default()),
        };

        let sample = Sample {
            thing: thing.to_owned(),
            timestamp_ms: now_ms,
            listening_tcp_ports: tcp.into_iter().map(|(port, _)| port).collect(),
            listening_udp_ports: udp.into_iter().map(|(port, _)| port).collect(),
            established_connections: established.into_iter().map(|(c, _, _)| c).collect(),
            network_stats: network_stats.ok(),
            ..Sample::default()
        };
        Collected {
            sample,
            counters,
            warnings: problems.warnings,
            malformed_lines: problems.malformed_lines,
            unresolved_addresses: sockets.unresolved,
            network_stats: outcome,
            sockets_from,
            owners,
            attribution,
        }
    }

    /// The four socket tables over netlink: `Ok(None)` when netlink is not
    /// used, `Err` (once) when it failed, after which it is not used again.
    fn read_netlink(
        &self,
        netlink: &mut Netlink,
        map: &mut InterfaceMap,
    ) -> Result<Option<Sockets>, CollectWarning> {
        let failed = |what: String, source| CollectWarning::Netlink {
            what,
            root: self.root.clone(),
            source,
        };
        let diag = match netlink {
            Netlink::Off => return Ok(None),
            Netlink::Ready(diag) => diag,
            Netlink::Failed(_) => {
                let Netlink::Failed(source) = std::mem::replace(netlink, Netlink::Off) else {
                    unreachable!("matched above");
                };
                return Err(failed("opening the socket".to_owned(), source));
            }
        };
        let mut sockets = Sockets::default();
        for (table, protocol) in [
            (Table::Tcp, Protocol::Tcp),
            (Table::Tcp6, Protocol::Tcp),
            (Table::Udp, Protocol::Udp),
            (Table::Udp6, Protocol::Udp),
        ] {
            if let Err(source) = diag.dump(table, |line| sockets.add(protocol, line, map)) {
                *netlink = Netlink::Off;
                return Err(failed(format!("the {} dump", table.name()), source));
            }
        }
        Ok(Some(sockets))
    }

    fn read_socket_files(
        &self,
        reader: &mut LineReader,
        problems: &mut Problems,
        map: &mut InterfaceMap,
    ) -> Sockets {
        let p = &self.paths;
        let mut sockets = Sockets::default();
        for (path, protocol) in [
            (&p.tcp, Protocol::Tcp),
            (&p.tcp6, Protocol::Tcp),
            (&p.udp, Protocol::Udp),
            (&p.udp6, Protocol::Udp),
        ] {
            problems.read(reader, path, 1, |line| {
                match parse::parse_socket_line(line) {
                    Some(l) => {
                        sockets.add(protocol, &l, map);
                        true
                    }
                    None => false,
                }
            });
        }
        sockets
    }

    fn read_counters(
        &self,
        reader: &mut LineReader,
        problems: &mut Problems,
        map: &mut InterfaceMap,
    ) -> Counters {
        let p = &self.paths;
        // Interface indexes first, so each interface's counters carry one.
        // `net/igmp` lists every interface with IPv4 (lo too); `if_inet6`,
        // already read, covers IPv6-only ones.
        problems.read(reader, &p.igmp, 0, |line| {
            match parse::parse_igmp_line(line) {
                Ok(Some((index, name))) => {
                    map.set_ifindex(name, index);
                    true
                }
                Ok(None) => true,
                Err(()) => false,
            }
        });

        let mut counters = Counters::default();
        problems.read(reader, &p.dev, 2, |line| {
            match parse::parse_dev_line(line) {
                Some(d) => {
                    let Ok(name) = std::str::from_utf8(d.name) else {
                        return false;
                    };
                    counters.interfaces.insert(
                        name.to_owned(),
                        InterfaceCounters {
                            ifindex: map.ifindex(name),
                            bytes_in: d.bytes_in,
                            packets_in: d.packets_in,
                            bytes_out: d.bytes_out,
                            packets_out: d.packets_out,
                        },
                    );
                    true
                }
                None => false,
            }
        });

        // boot_id is optional ("when present"); its absence is not a
        // partial sample, so only other errors warn.
        match reader.read_small(&p.boot_id) {
            Ok(text) => {
                let id = String::from_utf8_lossy(text).trim().to_owned();
                if id.is_empty() {
                    problems.note_malformed(&p.boot_id, 1);
                } else {
                    counters.boot_id = Some(id);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => problems.warnings.push(CollectWarning::Unreadable {
                path: p.boot_id.clone(),
                source,
            }),
        }
        counters
    }
}
