//! The collector against the real /proc with real sockets, and against the
//! committed fixture trees with snapshot files.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};

use defender_edge::collect::{
    CollectConfig, Collected, Collector, Counters, SocketSource, SocketsFrom,
};
use defender_edge::sample::{EstablishedConnection, ListeningPort, Owners, Sample};

use crate::support;

const LO4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LO6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The real proc tree as the collector sees it by default.
fn real(include_loopback_traffic: bool) -> Collector {
    Collector::new(&CollectConfig {
        include_loopback_traffic,
        ..CollectConfig::default()
    })
}

/// A real sample must be complete: every file there, every line parsed.
fn sample_real(collector: &Collector, baseline: Option<&Counters>) -> Collected {
    let c = collector.sample("collect-test", 1, baseline);
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.is_empty(),
        "real /proc gave warnings: {warnings:?}"
    );
    assert_eq!(c.malformed_lines, 0, "real /proc had malformed lines");
    c
}

fn port(port: u16, interface: Option<&str>) -> ListeningPort {
    ListeningPort {
        port,
        interface: interface.map(str::to_owned),
    }
}

fn conn(remote: SocketAddr, local_port: u16, interface: Option<&str>) -> EstablishedConnection {
    EstablishedConnection {
        remote_addr: remote,
        local_port,
        local_interface: interface.map(str::to_owned),
    }
}

/// Ports in `list` with this number, whatever their interface.
fn entries(list: &[ListeningPort], number: u16) -> Vec<ListeningPort> {
    list.iter().filter(|p| p.port == number).cloned().collect()
}

fn connections_with_local_port(sample: &Sample, local_port: u16) -> Vec<EstablishedConnection> {
    sample
        .established_connections
        .iter()
        .filter(|c| c.local_port == local_port)
        .cloned()
        .collect()
}

/// Binds a TCP listener on `ip` and the same port on `other`, retrying with a
/// fresh port when the second bind collides with someone else's socket.
fn tcp_pair(ip: IpAddr, other: IpAddr) -> (TcpListener, TcpListener) {
    for _ in 0..50 {
        let a = TcpListener::bind((ip, 0)).expect("bind TCP listener");
        let p = a.local_addr().expect("local addr").port();
        if let Ok(b) = TcpListener::bind((other, p)) {
            return (a, b);
        }
    }
    panic!("could not bind the same TCP port on {ip} and {other}");
}

fn udp_pair(ip: IpAddr, other: IpAddr) -> (UdpSocket, UdpSocket) {
    for _ in 0..50 {
        let a = UdpSocket::bind((ip, 0)).expect("bind UDP socket");
        let p = a.local_addr().expect("local addr").port();
        if let Ok(b) = UdpSocket::bind((other, p)) {
            return (a, b);
        }
    }
    panic!("could not bind the same UDP port on {ip} and {other}");
}

fn local_port<T>(addr: std::io::Result<SocketAddr>, what: T) -> u16
where
    T: std::fmt::Display,
{
    addr.unwrap_or_else(|e| panic!("local address of {what}: {e}"))
        .port()
}

/// Every kind of socket the collector must classify, opened for real.
struct RealSockets {
    /// 127.0.0.1:P and [::1]:P: one `(P, lo)` entry.
    tcp_lo_dual: (TcpListener, TcpListener),
    tcp_any4: TcpListener,
    /// `[::]`, dual-stack: also accepts the IPv4 client below.
    tcp_any6: TcpListener,
    udp_lo_dual: (UdpSocket, UdpSocket),
    udp_any4: UdpSocket,
    udp_any6: UdpSocket,
    /// Connected UDP sockets: not listeners.
    udp_connected4: UdpSocket,
    udp_connected6: UdpSocket,
    /// (client, server side) of 127.0.0.1 → 127.0.0.1:P, [::1] → [::1]:P,
    /// and 127.0.0.1 → [::]:Q (IPv4-mapped on the server side).
    conn4: (TcpStream, TcpStream),
    conn6: (TcpStream, TcpStream),
    conn_mapped: (TcpStream, TcpStream),
}

fn connect(to: SocketAddr, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(to).unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    let (server, _) = listener
        .accept()
        .unwrap_or_else(|e| panic!("accept on {to}: {e}"));
    (client, server)
}

impl RealSockets {
    fn open() -> RealSockets {
        let tcp_lo_dual = tcp_pair(LO4, LO6);
        let tcp_any4 = TcpListener::bind((ANY4, 0)).expect("bind 0.0.0.0");
        let tcp_any6 = TcpListener::bind((ANY6, 0)).expect("bind [::]");
        let udp_lo_dual = udp_pair(LO4, LO6);
        let udp_any4 = UdpSocket::bind((ANY4, 0)).expect("bind udp 0.0.0.0");
        let udp_any6 = UdpSocket::bind((ANY6, 0)).expect("bind udp [::]");
        let udp_connected4 = UdpSocket::bind((LO4, 0)).expect("bind udp 127.0.0.1");
        udp_connected4
            .connect(udp_lo_dual.0.local_addr().expect("addr"))
            .expect("connect udp v4");
        let udp_connected6 = UdpSocket::bind((LO6, 0)).expect("bind udp [::1]");
        udp_connected6
            .connect(udp_lo_dual.1.local_addr().expect("addr"))
            .expect("connect udp v6");
        let p = tcp_lo_dual.0.local_addr().expect("addr").port();
        let conn4 = connect(SocketAddr::new(LO4, p), &tcp_lo_dual.0);
        let conn6 = connect(SocketAddr::new(LO6, p), &tcp_lo_dual.1);
        let q = tcp_any6.local_addr().expect("addr").port();
        let conn_mapped = connect(SocketAddr::new(LO4, q), &tcp_any6);
        RealSockets {
            tcp_lo_dual,
            tcp_any4,
            tcp_any6,
            udp_lo_dual,
            udp_any4,
            udp_any6,
            udp_connected4,
            udp_connected6,
            conn4,
            conn6,
            conn_mapped,
        }
    }
}

#[test]
fn real_listeners_are_found_with_their_interfaces() {
    let s = RealSockets::open();
    let c = sample_real(&real(false), None);
    let tcp = &c.sample.listening_tcp_ports;
    let udp = &c.sample.listening_udp_ports;

    let lo_dual = local_port(s.tcp_lo_dual.0.local_addr(), "tcp 127.0.0.1");
    assert_eq!(
        entries(tcp, lo_dual),
        vec![port(lo_dual, Some("lo"))],
        "127.0.0.1 + [::1] listed once as lo"
    );
    let any4 = local_port(s.tcp_any4.local_addr(), "tcp 0.0.0.0");
    assert_eq!(
        entries(tcp, any4),
        vec![port(any4, None)],
        "0.0.0.0 has no interface"
    );
    let any6 = local_port(s.tcp_any6.local_addr(), "tcp [::]");
    assert_eq!(
        entries(tcp, any6),
        vec![port(any6, None)],
        "[::] has no interface"
    );

    let udp_lo = local_port(s.udp_lo_dual.0.local_addr(), "udp 127.0.0.1");
    assert_eq!(entries(udp, udp_lo), vec![port(udp_lo, Some("lo"))]);
    let udp_any4 = local_port(s.udp_any4.local_addr(), "udp 0.0.0.0");
    assert_eq!(entries(udp, udp_any4), vec![port(udp_any4, None)]);
    let udp_any6 = local_port(s.udp_any6.local_addr(), "udp [::]");
    assert_eq!(entries(udp, udp_any6), vec![port(udp_any6, None)]);

    // Connected UDP sockets are not listeners, and TCP ports are not UDP ports.
    for (sock, what) in [
        (&s.udp_connected4, "connected udp v4"),
        (&s.udp_connected6, "connected udp v6"),
    ] {
        let p = local_port(sock.local_addr(), what);
        assert_eq!(entries(udp, p), vec![], "{what} must not be listed");
    }
    for p in [lo_dual, any4, any6] {
        assert_eq!(entries(udp, p).len(), 0, "TCP port {p} in the UDP list");
    }
    // Client ends of established connections are not listeners.
    let client = local_port(s.conn4.0.local_addr(), "client");
    assert_eq!(entries(tcp, client), vec![]);

    // Lists are sorted and hold each pair once.
    for list in [tcp, udp] {
        let mut sorted = list.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(&sorted, list, "listening list not sorted/deduplicated");
    }
}

#[test]
fn real_established_connections_have_remote_and_interface() {
    let s = RealSockets::open();
    let c = sample_real(&real(false), None);
    let sample = &c.sample;
    let server4 = local_port(s.tcp_lo_dual.0.local_addr(), "server");
    let client4 = local_port(s.conn4.0.local_addr(), "client v4");
    let client6 = local_port(s.conn6.0.local_addr(), "client v6");
    let mapped_server = local_port(s.tcp_any6.local_addr(), "[::] server");
    let mapped_client = local_port(s.conn_mapped.0.local_addr(), "mapped client");

    // The client ends: remote is the listener, local interface lo.
    assert_eq!(
        connections_with_local_port(sample, client4),
        vec![conn(SocketAddr::new(LO4, server4), client4, Some("lo"))]
    );
    assert_eq!(
        connections_with_local_port(sample, client6),
        vec![conn(SocketAddr::new(LO6, server4), client6, Some("lo"))]
    );
    // The server ends of the v4 and v6 connections share the local port.
    let mut expected = vec![
        conn(SocketAddr::new(LO4, client4), server4, Some("lo")),
        conn(SocketAddr::new(LO6, client6), server4, Some("lo")),
    ];
    expected.sort();
    assert_eq!(connections_with_local_port(sample, server4), expected);
    // The [::] listener accepted an IPv4 client: the kernel shows
    // ::ffff:127.0.0.1 in tcp6, the sample shows plain IPv4.
    assert_eq!(
        connections_with_local_port(sample, mapped_server),
        vec![conn(
            SocketAddr::new(LO4, mapped_client),
            mapped_server,
            Some("lo")
        )]
    );
    assert_eq!(
        connections_with_local_port(sample, mapped_client),
        vec![conn(
            SocketAddr::new(LO4, mapped_server),
            mapped_client,
            Some("lo")
        )]
    );
    let mut sorted = sample.established_connections.clone();
    sorted.sort();
    assert_eq!(sorted, sample.established_connections, "not sorted");

    // Once closed, they are gone.
    drop(s);
    let after = sample_real(&real(false), None).sample;
    for p in [client4, client6, mapped_client] {
        assert_eq!(
            connections_with_local_port(&after, p),
            vec![],
            "closed connection {p} still listed"
        );
    }
    assert_eq!(
        entries(&after.listening_tcp_ports, server4),
        vec![],
        "closed listener still listed"
    );
}

/// Netlink and the proc files give the same sample, and the same owners,
/// for the same real sockets (only ours are compared: other processes open
/// and close sockets between the two reads).
#[test]
fn netlink_and_proc_files_give_the_same_sample() {
    let s = RealSockets::open();
    let with = |source| {
        Collector::new(&CollectConfig {
            source,
            ..CollectConfig::default()
        })
    };
    let netlink = sample_real(&with(SocketSource::Netlink), None);
    let files = sample_real(&with(SocketSource::Proc), None);
    let auto = sample_real(&with(SocketSource::Auto), None);
    assert_eq!(netlink.sockets_from, SocketsFrom::Netlink);
    assert_eq!(files.sockets_from, SocketsFrom::ProcFiles);
    assert_eq!(
        auto.sockets_from,
        SocketsFrom::Netlink,
        "auto on the live /proc"
    );

    let tcp_ports = [
        local_port(s.tcp_lo_dual.0.local_addr(), "tcp lo"),
        local_port(s.tcp_any4.local_addr(), "tcp 0.0.0.0"),
        local_port(s.tcp_any6.local_addr(), "tcp [::]"),
    ];
    let udp_ports = [
        local_port(s.udp_lo_dual.0.local_addr(), "udp lo"),
        local_port(s.udp_any4.local_addr(), "udp 0.0.0.0"),
        local_port(s.udp_any6.local_addr(), "udp [::]"),
        local_port(s.udp_connected4.local_addr(), "connected udp v4"),
        local_port(s.udp_connected6.local_addr(), "connected udp v6"),
    ];
    let ends = [
        &s.conn4.0,
        &s.conn4.1,
        &s.conn6.0,
        &s.conn6.1,
        &s.conn_mapped.0,
        &s.conn_mapped.1,
    ];
    let ours = |c: &Collected| {
        let sample = &c.sample;
        let owners = c.owners.as_ref().expect("owners of the live machine");
        let tcp: Vec<_> = tcp_ports
            .iter()
            .flat_map(|p| entries(&sample.listening_tcp_ports, *p))
            .map(|e| (owners.tcp_port(&e).map(<[_]>::to_vec), e))
            .collect();
        let udp: Vec<_> = udp_ports
            .iter()
            .flat_map(|p| entries(&sample.listening_udp_ports, *p))
            .map(|e| (owners.udp_port(&e).map(<[_]>::to_vec), e))
            .collect();
        let ports: std::collections::BTreeSet<u16> = ends
            .iter()
            .map(|end| local_port(end.local_addr(), "connection end"))
            .collect();
        let established: Vec<_> = ports
            .iter()
            .flat_map(|port| connections_with_local_port(sample, *port))
            .map(|e| (owners.connection(&e).map(<[_]>::to_vec), e))
            .collect();
        (tcp, udp, established)
    };
    let (tcp, udp, established) = ours(&netlink);
    assert_eq!(tcp.len(), 3, "{tcp:?}");
    assert_eq!(
        udp.len(),
        3,
        "connected UDP sockets are not listeners: {udp:?}"
    );
    assert_eq!(established.len(), 6, "{established:?}");
    let me = defender_edge::sample::SocketOwner::Process(std::process::id());
    for (owners, entry) in tcp
        .iter()
        .chain(&udp)
        .map(|(o, e)| (o, format!("{e:?}")))
        .chain(established.iter().map(|(o, e)| (o, format!("{e:?}"))))
    {
        assert_eq!(owners.as_deref(), Some(&[me.clone()][..]), "{entry}");
    }
    assert_eq!(ours(&files), (tcp, udp, established));
}

/// A captured tree has no `self/ns/net`, so `auto` reads its files.
#[test]
fn auto_reads_the_files_of_a_captured_tree() {
    let c = collect_fixture("captured", None);
    assert_eq!(c.sockets_from, SocketsFrom::ProcFiles);
    assert_eq!(c.owners, None, "a tree without processes has no owners");
}

#[test]
fn real_loopback_traffic_is_a_delta_only_when_asked_for() {
    let with_lo = real(true);
    let first = sample_real(&with_lo, None);
    assert_eq!(
        first.sample.network_stats, None,
        "the first sample is a baseline only"
    );
    assert!(
        first.counters.interfaces.contains_key("lo"),
        "lo counters missing"
    );
    assert!(
        first.counters.boot_id.is_some(),
        "boot_id missing on a real kernel"
    );

    // Push 1 MiB through loopback TCP.
    const BYTES: usize = 1 << 20;
    let listener = TcpListener::bind((LO4, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut server, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        server.read_to_end(&mut got).expect("read");
        got.len()
    });
    let mut client = TcpStream::connect(addr).expect("connect");
    client.write_all(&vec![7u8; BYTES]).expect("write");
    drop(client);
    assert_eq!(reader.join().expect("reader thread"), BYTES);

    let second = sample_real(&with_lo, Some(&first.counters));
    let stats = second
        .sample
        .network_stats
        .unwrap_or_else(|| panic!("no delta: {}", second.network_stats));
    assert!(
        stats.bytes_in >= BYTES as u64,
        "bytes_in {} < {BYTES}",
        stats.bytes_in
    );
    assert!(
        stats.bytes_out >= BYTES as u64,
        "bytes_out {} < {BYTES}",
        stats.bytes_out
    );
    assert!(stats.packets_in > 0 && stats.packets_out > 0);

    // Without loopback, the same baseline gives a delta that excludes it.
    let without = sample_real(&real(false), Some(&first.counters));
    if let Some(s) = without.sample.network_stats {
        assert!(
            s.bytes_in < stats.bytes_in,
            "lo traffic counted although excluded"
        );
    }
}

// ---------------------------------------------------------------------------
// Fixture trees and snapshots.

/// What a snapshot file holds: the sample and everything about how it was made.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Snapshot {
    sample: Sample,
    counters: Counters,
    /// Warning messages with the fixture root replaced by `<proc>`.
    warnings: Vec<String>,
    malformed_lines: u64,
    unresolved_addresses: u64,
    network_stats: String,
    /// Only trees with processes have owners; the others' snapshots predate
    /// attribution and stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owners: Option<Owners>,
}

fn fixture_root(name: &str) -> PathBuf {
    support::fixture("proc").join(name)
}

fn collect_fixture(name: &str, baseline: Option<&Counters>) -> Collected {
    let root = fixture_root(name);
    assert!(root.is_dir(), "fixture tree {} is missing", root.display());
    Collector::new(&CollectConfig {
        proc_root: root,
        include_loopback_traffic: false,
        ..CollectConfig::default()
    })
    .sample("fixture-thing", 1_767_225_600_000, baseline)
}

fn snapshot_of(name: &str, c: &Collected) -> Snapshot {
    let root = fixture_root(name).display().to_string();
    Snapshot {
        sample: c.sample.clone(),
        counters: c.counters.clone(),
        warnings: c
            .warnings
            .iter()
            .map(|w| w.to_string().replace(&root, "<proc>"))
            .collect(),
        malformed_lines: c.malformed_lines,
        unresolved_addresses: c.unresolved_addresses,
        network_stats: c.network_stats.to_string(),
        owners: c.owners.clone(),
    }
}

/// Compares with `tests/fixtures/proc/<name>.expected.json`; rewrites it only
/// when UPDATE_SNAPSHOTS=1 is set by the person running the tests.
fn check_snapshot(name: &str, c: &Collected) {
    let got = snapshot_of(name, c);
    let path = support::fixture("proc").join(format!("{name}.expected.json"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        let mut text = serde_json::to_string_pretty(&got).expect("serialize snapshot");
        text.push('\n');
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("snapshot dir");
        }
        std::fs::write(&path, text).expect("write snapshot");
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "snapshot {} unreadable ({e}); create it with UPDATE_SNAPSHOTS=1 and review it",
            path.display()
        )
    });
    let want: Snapshot = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("snapshot {} invalid: {e}", path.display()));
    assert!(
        want == got,
        "{name} differs from {}; run with UPDATE_SNAPSHOTS=1 and review the diff if the change is intended\n got: {}",
        path.display(),
        serde_json::to_string_pretty(&got).unwrap_or_default()
    );
}

pub(crate) fn check_fixture(name: &str) -> Collected {
    let c = collect_fixture(name, None);
    check_snapshot(name, &c);
    c
}

#[test]
fn fixture_captured_from_this_machine() {
    let c = check_fixture("captured");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(!c.sample.established_connections.is_empty());
}

#[test]
fn fixture_ipv6_only() {
    let c = check_fixture("ipv6-only");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(
        c.sample
            .established_connections
            .iter()
            .all(|e| e.remote_addr.is_ipv6())
    );
}

#[test]
fn fixture_without_ipv6_is_partial_with_named_warnings() {
    let c = check_fixture("no-ipv6");
    let mut missing: Vec<PathBuf> = c
        .warnings
        .iter()
        .map(|w| w.path().expect("a proc file warning").to_owned())
        .collect();
    missing.sort();
    let net = fixture_root("no-ipv6").join("net");
    assert_eq!(
        missing,
        vec![net.join("if_inet6"), net.join("tcp6"), net.join("udp6")]
    );
    assert!(!c.sample.listening_tcp_ports.is_empty(), "IPv4 part lost");
}

/// A socket table read while sockets come and go can list a row twice;
/// the sample still has each established connection once.
#[test]
fn a_socket_listed_twice_counts_once() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("proc");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(fixture_root("captured"))
        .arg(&root)
        .status()
        .expect("run cp");
    assert!(status.success());
    let mut duplicated = 0;
    for table in ["net/tcp", "net/tcp6"] {
        let path = root.join(table);
        let text = std::fs::read_to_string(&path).expect("read the socket table");
        let established: Vec<&str> = text
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(3) == Some("01"))
            .collect();
        duplicated += established.len();
        std::fs::write(&path, format!("{text}{}\n", established.join("\n")))
            .expect("write the socket table");
    }
    assert!(
        duplicated > 0,
        "the captured fixture has no established rows"
    );
    let twice = Collector::new(&CollectConfig {
        proc_root: root,
        include_loopback_traffic: false,
        ..CollectConfig::default()
    })
    .sample("fixture-thing", 1_767_225_600_000, None);
    let once = collect_fixture("captured", None);
    assert_eq!(
        twice.sample.established_connections,
        once.sample.established_connections
    );
    assert_eq!(twice.malformed_lines, 0);
}

#[test]
fn fixture_with_thousands_of_sockets() {
    let c = check_fixture("thousands");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(c.sample.established_connections.len() >= 4000);
}

#[test]
fn fixture_with_malformed_lines_skips_and_counts_them() {
    let c = check_fixture("malformed");
    assert!(c.malformed_lines > 0);
    let per_file: u64 = c
        .warnings
        .iter()
        .map(|w| match w {
            defender_edge::collect::CollectWarning::Malformed { lines, .. } => *lines,
            defender_edge::collect::CollectWarning::Unreadable { .. }
            | defender_edge::collect::CollectWarning::Netlink { .. } => 0,
        })
        .sum();
    assert_eq!(
        per_file, c.malformed_lines,
        "every malformed line is named by file"
    );
}

/// `counters/<step>` trees sampled in order, each with the previous step's
/// counters as baseline: growth, a 32-bit wrap, recovery, re-creation,
/// reboot.
#[test]
fn fixture_counter_sequence() {
    let steps = [
        ("counters/1-baseline", "no baseline"),
        ("counters/2-grown", "computed"),
        ("counters/3-wrapped", "a counter of eth0 went down"),
        ("counters/4-grown-again", "computed"),
        ("counters/5-recreated", "interface wlan0 was re-created"),
        ("counters/6-interface-appeared", "computed"),
        ("counters/7-rebooted", "baseline is from another boot"),
    ];
    let mut baseline: Option<Counters> = None;
    for (name, outcome) in steps {
        let c = collect_fixture(name, baseline.as_ref());
        assert_eq!(c.network_stats.to_string(), outcome, "step {name}");
        assert_eq!(
            c.sample.network_stats.is_some(),
            outcome == "computed",
            "step {name}"
        );
        check_snapshot(name, &c);
        // The new counters become the next baseline, whatever happened.
        baseline = Some(c.counters);
    }
}

#[test]
fn a_missing_proc_root_gives_an_empty_sample_and_warnings_not_a_panic() {
    let c = Collector::new(&CollectConfig {
        proc_root: Path::new("/nonexistent/proc").to_owned(),
        include_loopback_traffic: false,
        ..CollectConfig::default()
    })
    .sample("t", 0, None);
    assert_eq!(c.warnings.len(), 9, "{:?}", c.warnings);
    assert!(
        c.warnings
            .iter()
            .all(|w| w.to_string().contains("/nonexistent/proc/"))
    );
    assert_eq!(c.sample.listening_tcp_ports, vec![]);
    assert_eq!(c.sample.network_stats, None);
}
