//! Report encoding and trimming against straightforward peers, same run:
//!
//! - encode a typical report (a handful of ports, 20 connections, network
//!   stats, two custom metrics) and a large one (4,000 connections, as the
//!   collect bench sees at N = 2,000) in JSON, short-key JSON and CBOR, beside a
//!   peer that builds the same document as a `serde_json::Value` tree and
//!   serializes that (serde_json for JSON, ciborium from the `Value` for
//!   CBOR), the way a dict-then-dump agent does;
//! - trim the large report to the default 128 KB budget with
//!   `report::fit`, beside a naive peer that drops one entry at a time in the
//!   same order and re-encodes after each removal. Both must give the same
//!   bytes; the bench says so before timing.
//!
//! Run: `cargo bench -p defender-edge --bench report`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use defender_edge::report::keys::Key;
use defender_edge::report::{self, DEFAULT_MAX_BYTES, Format, KeyStyle, Report};
use defender_edge::sample::{
    CustomMetricValue, EstablishedConnection, ListeningPort, NetworkStats, Sample,
};
use serde_json::{Map, Value, json};

const REPORT_ID: u64 = 1_767_225_600_000;

fn port(port: u16, interface: Option<&str>) -> ListeningPort {
    ListeningPort {
        port,
        interface: interface.map(str::to_owned),
    }
}

/// A gateway's ordinary day: a few services, a few dozen peers.
fn typical() -> Sample {
    let established_connections = (0..20u16)
        .map(|i| EstablishedConnection {
            remote_addr: if i % 4 == 3 {
                SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i + 1), 8883))
            } else {
                SocketAddr::from((Ipv4Addr::new(203, 0, 113, i as u8 + 1), 443))
            },
            local_port: 40_000 + i,
            local_interface: Some("eth0".to_owned()),
        })
        .collect();
    let mut custom_metrics = BTreeMap::new();
    custom_metrics.insert(
        "edge_plugin_drops".to_owned(),
        CustomMetricValue::Number(3.0),
    );
    custom_metrics.insert(
        "open_admin_ips".to_owned(),
        CustomMetricValue::IpList(vec!["192.0.2.10".to_owned(), "2001:db8::5".to_owned()]),
    );
    Sample {
        thing: "edge-01".to_owned(),
        timestamp_ms: REPORT_ID,
        listening_tcp_ports: vec![
            port(22, Some("eth0")),
            port(80, None),
            port(443, None),
            port(1883, Some("lo")),
            port(8883, None),
        ],
        listening_udp_ports: vec![port(53, Some("lo")), port(68, None), port(123, None)],
        established_connections,
        network_stats: Some(NetworkStats {
            bytes_in: 5_120_000,
            bytes_out: 2_048_000,
            packets_in: 40_000,
            packets_out: 31_000,
        }),
        custom_metrics,
        ..Sample::default()
    }
}

/// A busy device: 4,000 established connections, over the 128 KB budget in
/// every format.
fn large() -> Sample {
    let mut sample = typical();
    sample.established_connections = (0..4000u32)
        .map(|i| EstablishedConnection {
            remote_addr: if i % 4 == 3 {
                SocketAddr::from((
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16),
                    8883,
                ))
            } else {
                SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 443))
            },
            local_port: 20_000 + (i % 40_000) as u16,
            local_interface: Some("eth0".to_owned()),
        })
        .collect();
    sample.listening_tcp_ports = (0..50).map(|i| port(8000 + i, Some("eth0"))).collect();
    sample.listening_udp_ports = (0..50).map(|i| port(5000 + i, None)).collect();
    sample
}

/// The peer: the same document as a `serde_json::Value` tree, keys from the
/// same table, absent options left out.
fn value_tree(report: &Report, style: KeyStyle) -> Value {
    let k = |key: Key| key.name(style).to_owned();
    let ports = |list: &report::PortList| {
        let ports: Vec<Value> = list
            .ports
            .iter()
            .map(|p| {
                let mut m = Map::new();
                m.insert(k(Key::Port), json!(p.port));
                if let Some(interface) = &p.interface {
                    m.insert(k(Key::Interface), json!(interface));
                }
                Value::Object(m)
            })
            .collect();
        let mut m = Map::new();
        m.insert(k(Key::Ports), Value::Array(ports));
        m.insert(k(Key::Total), json!(list.total));
        Value::Object(m)
    };
    let mut doc = Map::new();
    let mut header = Map::new();
    header.insert(k(Key::ReportId), json!(report.header.report_id));
    header.insert(k(Key::Version), json!(report.header.version));
    doc.insert(k(Key::Header), Value::Object(header));
    if let Some(metrics) = &report.metrics {
        let list = &metrics.tcp_connections.established_connections;
        let connections: Vec<Value> = list
            .connections
            .iter()
            .map(|c| {
                let mut m = Map::new();
                m.insert(k(Key::RemoteAddr), json!(c.remote_addr));
                m.insert(k(Key::LocalPort), json!(c.local_port));
                if let Some(interface) = &c.local_interface {
                    m.insert(k(Key::LocalInterface), json!(interface));
                }
                Value::Object(m)
            })
            .collect();
        let mut established = Map::new();
        established.insert(k(Key::Connections), Value::Array(connections));
        established.insert(k(Key::Total), json!(list.total));
        let mut tcp = Map::new();
        tcp.insert(k(Key::EstablishedConnections), Value::Object(established));
        let mut m = Map::new();
        m.insert(
            k(Key::ListeningTcpPorts),
            ports(&metrics.listening_tcp_ports),
        );
        m.insert(
            k(Key::ListeningUdpPorts),
            ports(&metrics.listening_udp_ports),
        );
        m.insert(k(Key::TcpConnections), Value::Object(tcp));
        if let Some(stats) = &metrics.network_stats {
            let mut s = Map::new();
            s.insert(k(Key::BytesIn), json!(stats.bytes_in));
            s.insert(k(Key::BytesOut), json!(stats.bytes_out));
            s.insert(k(Key::PacketsIn), json!(stats.packets_in));
            s.insert(k(Key::PacketsOut), json!(stats.packets_out));
            m.insert(k(Key::NetworkStats), Value::Object(s));
        }
        doc.insert(k(Key::Metrics), Value::Object(m));
    }
    if !report.custom_metrics.is_empty() {
        let custom: Map<String, Value> = report
            .custom_metrics
            .iter()
            .map(|(name, value)| {
                let inner = match value {
                    CustomMetricValue::Number(n) => json!({ "number": whole_or_float(*n) }),
                    CustomMetricValue::NumberList(l) => json!({ "number_list": l }),
                    CustomMetricValue::StringList(l) => json!({ "string_list": l }),
                    CustomMetricValue::IpList(l) => json!({ "ip_list": l }),
                };
                (name.clone(), json!([inner]))
            })
            .collect();
        doc.insert(k(Key::CustomMetrics), Value::Object(custom));
    }
    Value::Object(doc)
}

/// Whole numbers as integers, as our encoder writes them (`3`, not `3.0`).
fn whole_or_float(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

fn peer_encode(report: &Report, format: Format) -> Vec<u8> {
    let tree = value_tree(report, format.key_style());
    let mut out = Vec::with_capacity(256);
    match format {
        Format::Json | Format::JsonShort => {
            serde_json::to_writer(&mut out, &tree).expect("JSON into memory")
        }
        Format::Cbor => ciborium::into_writer(&tree, &mut out).expect("CBOR into memory"),
    }
    out
}

/// Drops one entry at a time, established connections first, then UDP,
/// then TCP ports, each from the end, re-encoding after every removal.
fn naive_fit(mut report: Report, format: Format, max_bytes: usize) -> Vec<u8> {
    loop {
        let bytes = report::encode(&report, format);
        if bytes.len() <= max_bytes {
            return bytes;
        }
        let metrics = report.metrics.as_mut().expect("metrics");
        let removed = metrics
            .tcp_connections
            .established_connections
            .connections
            .pop()
            .is_some()
            || metrics.listening_udp_ports.ports.pop().is_some()
            || metrics.listening_tcp_ports.ports.pop().is_some();
        assert!(
            removed,
            "the report does not fit even with every list empty"
        );
    }
}

const FORMATS: [(Format, &str); 3] = [
    (Format::Json, "json"),
    (Format::JsonShort, "json-short"),
    (Format::Cbor, "cbor"),
];

fn encode(c: &mut Criterion) {
    for (label, sample) in [("typical", typical()), ("large", large())] {
        let report = report::build(&sample, REPORT_ID);
        report::validate(&report).expect("the bench reports are valid");
        let mut group = c.benchmark_group(format!("encode {label} report"));
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        for (format, name) in FORMATS {
            let ours = report::encode(&report, format);
            let peer = peer_encode(&report, format);
            // Same document: the peer's maps are key-sorted, ours follow the
            // table's order, so only the lengths can be compared.
            println!(
                "{label} report, {name}: ours {} bytes, peer {} bytes",
                ours.len(),
                peer.len()
            );
            group.throughput(Throughput::Bytes(ours.len() as u64));
            group.bench_function(format!("{name}/ours"), |b| {
                b.iter(|| report::encode(black_box(&report), format))
            });
            group.bench_function(format!("{name}/serde_json::Value peer"), |b| {
                b.iter(|| peer_encode(black_box(&report), format))
            });
        }
        group.finish();
    }
}

fn trim(c: &mut Criterion) {
    let report = report::build(&large(), REPORT_ID);
    let format = Format::Json;
    let budget = DEFAULT_MAX_BYTES;
    let ours = report::fit(report.clone(), format, budget).expect("fits once trimmed");
    let naive = naive_fit(report.clone(), format, budget);
    assert_eq!(ours.bytes, naive, "report::fit and the naive peer disagree");
    println!(
        "trim large report, JSON, {} -> {} bytes (budget {budget}), {} entries dropped",
        report::encode(&report, format).len(),
        ours.bytes.len(),
        ours.trimmed.total()
    );
    let mut group = c.benchmark_group("trim large report to 128 KB, JSON");
    // The naive peer takes about a second per call; flat sampling keeps the
    // run to ten calls.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("ours (report::fit)", |b| {
        b.iter_batched(
            || report.clone(),
            |r| report::fit(r, format, budget),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("naive peer (re-encode per removal)", |b| {
        b.iter_batched(
            || report.clone(),
            |r| naive_fit(r, format, budget),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, encode, trim);
criterion_main!(benches);
