//! Local detection: CPU time of one detection cycle (device and custom
//! metrics) with 20 behaviors on a device with 1,000 established
//! connections, beside the cost of collecting that same sample from a proc
//! tree of the same size (the peer: what every detection interval pays
//! anyway).
//!
//! Run: `cargo bench -p defender-edge --bench detect`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use defender_edge::collect::{CollectConfig, Collector};
use defender_edge::detect::{DetectionConfig, Detector};
use defender_edge::sample::{CustomMetricValue, NetworkStats, Sample};
use defender_edge::status::Status;
use serde_json::json;

const CONNECTIONS: usize = 1000;
const INTERVAL_MS: u64 = 10_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The captured fixture proc tree with `connections` established TCP
/// connections from 192.0.2.15 (eth0) to up to 250 distinct remote
/// addresses added.
fn proc_tree(connections: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let from = repo().join("tests/fixtures/proc/captured");
    copy_tree(&from, dir.path());
    let tcp = dir.path().join("net/tcp");
    let mut text = std::fs::read_to_string(&tcp).expect("tcp");
    let base = text.lines().count();
    for i in 0..connections {
        // Addresses are printed as host-order (little-endian) words.
        let remote = [203u8, 0, 113 + (i % 2) as u8, (i % 125) as u8 + 1];
        let remote_hex = format!(
            "{:02X}{:02X}{:02X}{:02X}",
            remote[3], remote[2], remote[1], remote[0]
        );
        text.push_str(&format!(
            "{:4}: 0F0200C0:{:04X} {}:22B3 01 00000000:00000000 00:00000000 00000000  1000        0 {} 1 0000000000000000 20 4 30 10 -1\n",
            base + i,
            40_000 + i,
            remote_hex,
            100_000 + i
        ));
    }
    std::fs::write(&tcp, text).expect("write tcp");
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Twenty behaviors over every metric kind, five of them statistical.
fn profile() -> serde_json::Value {
    let b = |name: &str, metric: &str, criteria: serde_json::Value| json!({"name": name, "metric": metric, "criteria": criteria});
    let fixed =
        |op: &str, value: serde_json::Value| json!({"comparisonOperator": op, "value": value});
    let stat = |op: &str, p: &str| json!({"comparisonOperator": op, "statisticalThreshold": {"statistic": p}, "durationSeconds": 300});
    json!({"securityProfileName": "Bench", "behaviors": [
        b("TcpAllow", "aws:listening-tcp-ports", fixed("in-port-set", json!({"ports": [22, 443, 2024, 8883, 32987, 39229, 58369, 60853]}))),
        b("TcpDeny", "aws:listening-tcp-ports", fixed("not-in-port-set", json!({"ports": [21, 23]}))),
        b("UdpAllow", "aws:listening-udp-ports", fixed("in-port-set", json!({"ports": [68, 123, 5353, 57588]}))),
        b("UdpDeny", "aws:listening-udp-ports", fixed("not-in-port-set", json!({"ports": [53]}))),
        b("TcpCount", "aws:num-listening-tcp-ports", fixed("less-than", json!({"count": 50}))),
        b("UdpCount", "aws:num-listening-udp-ports", fixed("less-than", json!({"count": 50}))),
        b("Conns", "aws:num-established-tcp-connections", fixed("less-than", json!({"count": 5000}))),
        b("ConnsBaseline", "aws:num-established-tcp-connections", stat("less-than-equals", "p99")),
        b("Destinations", "aws:destination-ip-addresses", fixed("in-cidr-set", json!({"cidrs": ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32", "127.0.0.0/8", "::1/128", "192.0.2.0/24", "203.0.112.0/22"]}))),
        b("BadDestinations", "aws:destination-ip-addresses", fixed("not-in-cidr-set", json!({"cidrs": ["198.51.100.0/24", "100.64.0.0/10"]}))),
        b("BytesOut", "aws:all-bytes-out", fixed("less-than", json!({"count": 100_000_000}))),
        b("BytesIn", "aws:all-bytes-in", fixed("less-than", json!({"count": 100_000_000}))),
        b("PacketsOutBaseline", "aws:all-packets-out", stat("less-than-equals", "p99.99")),
        b("PacketsIn", "aws:all-packets-in", fixed("less-than", json!({"count": 1_000_000}))),
        b("BytesOutBaseline", "aws:all-bytes-out", stat("less-than-equals", "p90")),
        b("CpuTemp", "cpu_temp_c", fixed("less-than", json!({"number": 80}))),
        b("CpuTempBaseline", "cpu_temp_c", stat("less-than-equals", "p99")),
        b("Mounts", "mounted_fs", fixed("in-set", json!({"strings": ["/", "/data", "/boot"]}))),
        b("Codes", "exit_codes", fixed("not-in-set", json!({"numbers": [137, 139]}))),
        b("Peers", "mesh_peers", fixed("in-cidr-set", json!({"cidrs": ["10.0.0.0/8"]})))
    ]})
}

fn bench(c: &mut Criterion) {
    // The captured tree has a few connections of its own; add the rest.
    let captured = Collector::new(&CollectConfig {
        proc_root: repo().join("tests/fixtures/proc/captured"),
        include_loopback_traffic: false,
        ..CollectConfig::default()
    })
    .sample("bench-thing", 0, None)
    .sample
    .established_connections
    .len();
    let tree = proc_tree(CONNECTIONS - captured);
    let collector = Collector::new(&CollectConfig {
        proc_root: tree.path().to_owned(),
        include_loopback_traffic: false,
        ..CollectConfig::default()
    });
    let first = collector.sample("bench-thing", 0, None);
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let collected = collector.sample("bench-thing", INTERVAL_MS, Some(&first.counters));
    assert_eq!(
        collected.sample.established_connections.len(),
        CONNECTIONS,
        "proc tree"
    );
    let mut sample: Sample = collected.sample;
    sample.network_stats = Some(NetworkStats {
        bytes_in: 180_000,
        bytes_out: 42_000,
        packets_in: 310,
        packets_out: 128,
    });
    sample.custom_metrics = BTreeMap::from([
        ("cpu_temp_c".to_owned(), CustomMetricValue::Number(61.5)),
        (
            "mounted_fs".to_owned(),
            CustomMetricValue::StringList(vec!["/".to_owned(), "/data".to_owned()]),
        ),
        (
            "exit_codes".to_owned(),
            CustomMetricValue::NumberList(vec![0.0, 1.0]),
        ),
        (
            "mesh_peers".to_owned(),
            CustomMetricValue::IpList(vec!["10.0.0.7".to_owned(), "10.0.3.9".to_owned()]),
        ),
    ]);

    let state = tempfile::tempdir().expect("temp dir");
    let config = DetectionConfig {
        profiles: vec![profile()],
        statistics_min_datapoints: 5,
        // Every cycle judges every behavior, as it did before report-period
        // datapoints became the default.
        per_sample: vec!["*".to_owned()],
        ..DetectionConfig::default()
    };
    let status = Status::new();
    let mut detector = Detector::new(
        &config,
        state.path(),
        &status,
        std::time::Duration::from_secs(300),
    )
    .expect("profile");
    assert_eq!(status.number("detect.behaviors"), 20);
    // Learn a baseline first (two hours of 10 s cycles), so the statistical
    // behaviors judge during the measurement instead of waiting.
    let mut now = 0;
    for _ in 0..720 {
        now += INTERVAL_MS;
        detector.evaluate_device(&sample, now, true);
        detector.evaluate_custom(&sample, now, true);
    }
    let mut events = 0;

    let mut group = c.benchmark_group("detect");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("cycle_20_behaviors_1000_connections", |b| {
        b.iter(|| {
            now += INTERVAL_MS;
            events += detector
                .evaluate_device(black_box(&sample), now, true)
                .len();
            events += detector
                .evaluate_custom(black_box(&sample), now, true)
                .len();
        })
    });
    group.bench_function("peer_collect_1000_connections", |b| {
        b.iter(|| collector.sample("bench-thing", black_box(INTERVAL_MS), Some(&first.counters)))
    });
    group.finish();
    // The sample conforms to every behavior: a steady cycle raises nothing.
    assert_eq!(events, 0, "the bench sample should conform");
}

criterion_group!(benches, bench);
criterion_main!(benches);
