//! HEC event encoding and record packing, the per-sample hot path of the
//! Firehose sink, against a peer that builds the same events as
//! `serde_json::Value` trees first (the obvious way to write it).
//!
//! Run: `cargo bench -p defender-edge --bench firehose`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use defender_edge::publish::firehose::events::{self, EventOptions};
use defender_edge::publish::firehose::records::{MAX_RECORD_BYTES, RecordPacker};
use defender_edge::sample::{
    Alert, CustomMetricValue, EstablishedConnection, ListeningPort, NetworkStats, Sample, Severity,
};
use serde_json::{Value, json};

/// A busy gateway: 12 TCP and 4 UDP listeners, 20 connections, traffic, two
/// custom metrics, annotations and one alert: 13 events.
fn sample() -> Sample {
    let port = |port| ListeningPort {
        port,
        interface: Some("eth0".to_owned()),
    };
    Sample {
        thing: "gateway-plant7-line3-0042".to_owned(),
        timestamp_ms: 1_767_225_600_123,
        listening_tcp_ports: [
            22, 80, 443, 1883, 8080, 8443, 8883, 9000, 9090, 9100, 5432, 6379,
        ]
        .into_iter()
        .map(port)
        .collect(),
        listening_udp_ports: [53, 123, 5353, 1900].into_iter().map(port).collect(),
        established_connections: (0..20)
            .map(|i| EstablishedConnection {
                remote_addr: SocketAddr::from(([203, 0, 113, (i % 7) as u8 + 1], 443)),
                local_port: 40000 + i,
                local_interface: Some("eth0".to_owned()),
            })
            .collect(),
        network_stats: Some(NetworkStats {
            bytes_in: 18_230_112,
            bytes_out: 4_200_991,
            packets_in: 31_022,
            packets_out: 12_872,
        }),
        custom_metrics: BTreeMap::from([
            ("cpu_temp_c".to_owned(), CustomMetricValue::Number(61.5)),
            (
                "mounted_fs".to_owned(),
                CustomMetricValue::StringList(vec!["/".to_owned(), "/data".to_owned()]),
            ),
        ]),
        annotations: BTreeMap::from([
            ("site".to_owned(), "plant-7".to_owned()),
            ("owner".to_owned(), "ot-team".to_owned()),
        ]),
        alerts: vec![Alert {
            source: "detect/baseline".to_owned(),
            name: "new-listening-port".to_owned(),
            severity: Severity::High,
            message: "port 9100 opened".to_owned(),
            attributes: BTreeMap::from([("port".to_owned(), "9100".to_owned())]),
        }],
    }
}

/// The peer: the same events built as `serde_json::Value`, then written.
fn value_events(s: &Sample, id: u64, o: &EventOptions, out: &mut Vec<u8>) -> usize {
    let mut n = 0;
    let mut push = |name: &str, value: Option<Value>, alert: Option<(usize, &Alert)>| {
        let mut fields = json!({"thing": s.thing, "metric": name});
        let mut event = json!({"name": name, "thing": s.thing});
        if let Some(v) = value {
            event["value"] = v;
        }
        let mut event_id = format!("{}/{}/{}", s.thing, id, name);
        if let Some((i, a)) = alert {
            fields["severity"] = json!(a.severity.as_str());
            event["alert"] = json!({"source": a.source, "name": a.name, "severity": a.severity.as_str(),
                "message": a.message, "attributes": a.attributes});
            event_id.push_str(&format!("/{i}"));
        }
        event["timestamp"] = json!(s.timestamp_ms);
        event["edge"] =
            json!({"report_id": id, "event_id": event_id, "annotations": s.annotations});
        let mut hec = json!({"time": s.timestamp_ms as f64 / 1000.0, "host": s.thing,
            "source": o.source, "sourcetype": o.sourcetype});
        if let Some(index) = &o.index {
            hec["index"] = json!(index);
        }
        hec["fields"] = fields;
        hec["event"] = event;
        serde_json::to_writer(&mut *out, &hec).expect("serializes");
        out.push(b'\n');
        n += 1;
    };
    let ports = |p: &[ListeningPort]| {
        let mut v: Vec<u16> = p.iter().map(|p| p.port).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let tcp = ports(&s.listening_tcp_ports);
    let udp = ports(&s.listening_udp_ports);
    push(
        "aws:num-listening-tcp-ports",
        Some(json!({"count": tcp.len()})),
        None,
    );
    push("aws:listening-tcp-ports", Some(json!({"ports": tcp})), None);
    push(
        "aws:num-listening-udp-ports",
        Some(json!({"count": udp.len()})),
        None,
    );
    push("aws:listening-udp-ports", Some(json!({"ports": udp})), None);
    push(
        "aws:num-established-tcp-connections",
        Some(json!({"count": s.established_connections.len()})),
        None,
    );
    let ips: std::collections::BTreeSet<_> = s
        .established_connections
        .iter()
        .map(|c| c.remote_addr.ip())
        .collect();
    let cidrs: Vec<String> = ips.iter().map(ToString::to_string).collect();
    push(
        "aws:destination-ip-addresses",
        Some(json!({"cidrs": cidrs})),
        None,
    );
    if let Some(t) = s.network_stats {
        push("aws:all-bytes-in", Some(json!({"count": t.bytes_in})), None);
        push(
            "aws:all-bytes-out",
            Some(json!({"count": t.bytes_out})),
            None,
        );
        push(
            "aws:all-packets-in",
            Some(json!({"count": t.packets_in})),
            None,
        );
        push(
            "aws:all-packets-out",
            Some(json!({"count": t.packets_out})),
            None,
        );
    }
    for (name, v) in &s.custom_metrics {
        let v = match v {
            CustomMetricValue::Number(x) => json!({"number": x}),
            CustomMetricValue::NumberList(x) => json!({"numbers": x}),
            CustomMetricValue::StringList(x) => json!({"strings": x}),
            CustomMetricValue::IpList(x) => json!({"cidrs": x}),
        };
        push(name, Some(v), None);
    }
    for (i, a) in s.alerts.iter().enumerate() {
        push(events::ALERT_EVENT_NAME, None, Some((i, a)));
    }
    n
}

fn bench(c: &mut Criterion) {
    let s = sample();
    let options = EventOptions::default();

    // Both encoders must produce the same events, or the ratio means nothing.
    let (mut typed, mut peer) = (Vec::new(), Vec::new());
    let n = events::write_sample(&s, 7, &options, MAX_RECORD_BYTES, &mut typed, |_, _| {});
    assert_eq!(value_events(&s, 7, &options, &mut peer), n);
    let parse = |b: &[u8]| -> Vec<Value> {
        b.split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("JSON"))
            .collect()
    };
    assert_eq!(parse(&typed), parse(&peer));
    eprintln!(
        "{n} events per sample, {} bytes, {:.0} bytes per event",
        typed.len(),
        typed.len() as f64 / n as f64
    );

    let mut group = c.benchmark_group("hec_events");
    group.throughput(Throughput::Elements(n as u64));
    let mut buf = Vec::with_capacity(16 * 1024);
    group.bench_function("typed_serde", |b| {
        b.iter(|| {
            buf.clear();
            black_box(events::write_sample(
                black_box(&s),
                7,
                &options,
                MAX_RECORD_BYTES,
                &mut buf,
                |_, _| {},
            ))
        })
    });
    group.bench_function("serde_json_value", |b| {
        b.iter(|| {
            buf.clear();
            black_box(value_events(black_box(&s), 7, &options, &mut buf))
        })
    });
    // The sink's whole per-sample CPU path: encode, then pack 100 samples'
    // lines into 20,000-byte records, as the worker does per batch.
    group.throughput(Throughput::Elements(100 * n as u64));
    group.bench_function("encode_and_pack_100_samples", |b| {
        b.iter(|| {
            let mut packer = RecordPacker::new(20_000);
            for id in 0..100 {
                buf.clear();
                events::write_sample(&s, id, &options, MAX_RECORD_BYTES, &mut buf, |_, _| {});
                packer.push_lines(&buf);
            }
            black_box(packer.finish())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
