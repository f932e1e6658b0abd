//! Greengrass IPC: PublishToIoTCore round trip of our client against the test
//! nucleus, with the official Python client measured against the same nucleus
//! in the same run; frame codec cost; bytes on the wire per report.
//!
//! Run: `DEFENDER_EDGE_PYTHON=/path/to/venv/bin/python cargo bench -p defender-edge --bench ipc`
//!
//! The test nucleus is Python, so a round trip includes its own cost; both
//! clients pay it alike, so the difference between them is client overhead.

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use defender_edge::greengrass::ipc::frame::{self, Frame, Header};
use defender_edge::greengrass::ipc::{IpcClient, IpcOptions, Qos, publish_frame_len};

const SVCUID: &str = "ABCDEFGHIJKLMNOP";
const TOPIC: &str = "$aws/things/edge-01/defender/metrics/json";
/// A typical report: the long-name example of device-defender.md §2.
const REPORT: &str = r#"{"header":{"report_id":1767225600000,"version":"1.0"},"metrics":{"listening_tcp_ports":{"ports":[{"interface":"eth0","port":22}],"total":1},"listening_udp_ports":{"ports":[],"total":0},"tcp_connections":{"established_connections":{"connections":[{"local_interface":"eth0","local_port":40112,"remote_addr":"[2001:db8::7]:8883"}],"total":1}},"network_stats":{"bytes_in":5120,"bytes_out":2048,"packets_in":40,"packets_out":31}},"custom_metrics":{"edge_plugin_drops":[{"number":3}]}}"#;

fn python() -> PathBuf {
    let path = std::env::var_os("DEFENDER_EDGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "Python with awsiotsdk missing at {}: set DEFENDER_EDGE_PYTHON",
        path.display()
    );
    path
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Nucleus {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Nucleus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the test nucleus without a record file, so recording does not
/// weigh on the figures.
fn start_nucleus() -> Nucleus {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("ipc.socket");
    let mut child = Command::new(python())
        .arg(repo().join("tests/nucleus/nucleus.py"))
        .arg("--socket")
        .arg(&socket)
        .args(["--svcuid", SVCUID])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the test nucleus");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("nucleus output");
    assert!(line.starts_with("READY"), "nucleus did not start: {line:?}");
    Nucleus {
        child,
        socket,
        _dir: dir,
    }
}

fn python_round_trip_us(nucleus: &Nucleus, count: usize) -> serde_json::Value {
    let payload = nucleus._dir.path().join("report.json");
    std::fs::write(&payload, REPORT).expect("payload");
    let out = Command::new(python())
        .arg(repo().join("tests/nucleus/bench_client.py"))
        .arg(&nucleus.socket)
        .arg(SVCUID)
        .arg(TOPIC)
        .arg(&payload)
        .arg(count.to_string())
        .output()
        .expect("run bench_client.py");
    assert!(
        out.status.success(),
        "official client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON figures")
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let nucleus = start_nucleus();
    let client = rt
        .block_on(IpcClient::connect(
            &nucleus.socket,
            SVCUID,
            IpcOptions::default(),
        ))
        .expect("connect");
    let publish = || {
        rt.block_on(client.publish_to_iot_core(TOPIC, REPORT.as_bytes(), Qos::AtLeastOnce))
            .expect("publish")
    };

    // Same-run comparison with identical counting on both sides.
    const COUNT: usize = 2000;
    for _ in 0..50 {
        publish();
    }
    let mut samples: Vec<f64> = (0..COUNT)
        .map(|_| {
            let start = Instant::now();
            publish();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let rust_mean = samples.iter().sum::<f64>() / COUNT as f64;
    let rust_median = samples[COUNT / 2];
    let py = python_round_trip_us(&nucleus, COUNT);
    let py_mean = py["mean_us"].as_f64().unwrap_or(f64::NAN);
    let py_median = py["median_us"].as_f64().unwrap_or(f64::NAN);
    println!(
        "ipc publish round trip, {COUNT} publishes of a {}-byte report, same test nucleus:\n  \
         defender-edge client: mean {rust_mean:.1} us, median {rust_median:.1} us\n  \
         official Python client: mean {py_mean:.1} us, median {py_median:.1} us\n  \
         ratio Python/Rust: mean {:.2}x, median {:.2}x",
        REPORT.len(),
        py_mean / rust_mean,
        py_median / rust_median
    );
    println!(
        "publish frame for that report: {} bytes on the wire ({} bytes of payload)",
        publish_frame_len(TOPIC, REPORT.len()),
        REPORT.len()
    );

    c.bench_function("ipc/publish_round_trip_rust", |b| b.iter(publish));
}

fn codec(c: &mut Criterion) {
    let mut headers = vec![
        Header::int32(":message-type", 0),
        Header::int32(":message-flags", 0),
        Header::int32(":stream-id", 7),
        Header::string("operation", "aws.greengrass#PublishToIoTCore"),
        Header::string(
            "service-model-type",
            "aws.greengrass#PublishToIoTCoreRequest",
        ),
    ];
    headers.push(Header::string(":content-type", "application/json"));
    let frame = Frame {
        headers,
        payload: REPORT.as_bytes().to_vec(),
    };
    let bytes = frame.encode().expect("encode");
    c.bench_function("ipc/frame_encode", |b| {
        b.iter(|| black_box(&frame).encode())
    });
    c.bench_function("ipc/frame_decode", |b| {
        b.iter(|| frame::decode(black_box(&bytes), 1 << 20))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(50);
    targets = round_trip, codec
}
criterion_main!(benches);
