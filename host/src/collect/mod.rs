//! `/proc` → [`crate::sample::Sample`]. Reads proc files, nothing else.
//!
//! One [`Collector::sample`] reads, in this order: the interface map
//! (`net/if_inet6`, `net/route`, `net/fib_trie`), the socket tables
//! (`net/tcp`, `net/tcp6`, `net/udp`, `net/udp6`) and the counters
//! (`net/dev`, `net/igmp`, `sys/kernel/random/boot_id`).
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
mod parse;
mod read;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::sample::{EstablishedConnection, ListeningPort, Sample};

pub use counters::{Counters, DeltaOutcome, InterfaceCounters};
use interfaces::{InterfaceMap, Resolved};
use read::LineReader;

/// The `collect` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CollectConfig {
    /// Root of the proc file system to read.
    pub proc_root: std::path::PathBuf,
    /// Count loopback (`lo`) traffic in network_stats.
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub include_loopback_traffic: bool,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            proc_root: "/proc".into(),
            include_loopback_traffic: false,
        }
    }
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
}

impl CollectWarning {
    /// The proc file the warning is about.
    pub fn path(&self) -> &Path {
        match self {
            CollectWarning::Unreadable { path, .. } | CollectWarning::Malformed { path, .. } => {
                path
            }
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

/// Reads samples from a proc tree. Cheap to keep for the life of the process;
/// `sample` may be called from any thread (calls are serialized).
#[derive(Debug)]
pub struct Collector {
    include_loopback_traffic: bool,
    paths: Paths,
    /// The read buffer, reused across samples so the hot path does not
    /// allocate it again.
    reader: Mutex<LineReader>,
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
    tcp_listening: Vec<(u16, Resolved)>,
    udp_listening: Vec<(u16, Resolved)>,
    /// (remote, local port, local interface, local address).
    established: Vec<(SocketAddr, u16, Resolved, IpAddr)>,
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
            ));
        } else if protocol == Protocol::Tcp {
            self.tcp_listening.push((line.local_port, resolved));
        } else {
            self.udp_listening.push((line.local_port, resolved));
        }
    }
}

fn interface_name(map: &InterfaceMap, resolved: Resolved) -> Option<String> {
    match resolved {
        Resolved::Interface(id) => Some(map.name(id).to_owned()),
        Resolved::Wildcard | Resolved::Unknown => None,
    }
}

fn listening_ports(map: &InterfaceMap, mut raw: Vec<(u16, Resolved)>) -> Vec<ListeningPort> {
    // Deduplicate on the compact form first (v4 + v6 binds, SO_REUSEPORT
    // groups), so names are copied once per distinct pair.
    raw.sort_unstable_by_key(|(port, r)| (*port, resolved_key(*r)));
    raw.dedup_by_key(|(port, r)| (*port, resolved_key(*r)));
    let mut ports: Vec<ListeningPort> = raw
        .into_iter()
        .map(|(port, r)| ListeningPort {
            port,
            interface: interface_name(map, r),
        })
        .collect();
    // Unknown and wildcard both become `None`; sort and dedup on the final form.
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn resolved_key(r: Resolved) -> u32 {
    match r {
        Resolved::Wildcard | Resolved::Unknown => 0,
        Resolved::Interface(id) => u32::from(id) + 1,
    }
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
        Collector {
            include_loopback_traffic: config.include_loopback_traffic,
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
            reader: Mutex::new(LineReader::default()),
        }
    }

    /// One sample. `baseline` = counters returned by the previous sample
    /// (persisted by the caller, so deltas survive restarts); `None` => no
    /// `network_stats`. Never fails: what cannot be read is left out and
    /// named in [`Collected::warnings`].
    pub fn sample(&self, thing: &str, now_ms: u64, baseline: Option<&Counters>) -> Collected {
        // A panic elsewhere while holding the lock cannot leave the buffer in
        // a state that matters: it is overwritten before every use.
        let mut reader = self
            .reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let reader = &mut *reader;
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
                        sockets.add(protocol, &l, &mut map);
                        true
                    }
                    None => false,
                }
            });
        }

        let counters = self.read_counters(reader, &mut problems, &mut map);
        let network_stats = counters::delta(baseline, &counters, self.include_loopback_traffic);
        let outcome = match &network_stats {
            Ok(_) => DeltaOutcome::Computed,
            Err(why) => {
                tracing::debug!(reason = %why, "no network_stats in this sample");
                why.clone()
            }
        };

        let mut established: Vec<(EstablishedConnection, IpAddr)> = sockets
            .established
            .into_iter()
            .map(|(remote_addr, local_port, r, local)| {
                let connection = EstablishedConnection {
                    remote_addr,
                    local_port,
                    local_interface: interface_name(&map, r),
                };
                (connection, local)
            })
            .collect();
        // One sort gives the report's order and puts a row the table
        // listed twice next to itself.
        established.sort_unstable();
        established.dedup();
        let established = established.into_iter().map(|(c, _)| c).collect();

        let sample = Sample {
            thing: thing.to_owned(),
            timestamp_ms: now_ms,
            listening_tcp_ports: listening_ports(&map, sockets.tcp_listening),
            listening_udp_ports: listening_ports(&map, sockets.udp_listening),
            established_connections: established,
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
        }
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
