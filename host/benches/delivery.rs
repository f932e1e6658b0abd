//! Delivery benchmarks: what a durable push and an acknowledgement cost,
//! against a file-per-report spool measured in the same run; MQTT QoS 1
//! throughput to a local mosquitto against `mosquitto_pub`; and resident
//! memory with 0, 1,000 and 10,000 reports waiting in the outbox against an
//! in-memory queue.
//!
//! Run: `cargo bench -p defender-edge --bench delivery`. The memory table is
//! printed first; each figure comes from a fresh process (this binary run
//! again with `DELIVERY_BENCH_RSS` set), so one measurement cannot inherit
//! another's heap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use defender_edge::publish::Transport;
use defender_edge::publish::mqtt::{MqttConfig, MqttTransport};
use defender_edge::publish::outbox::{Outbox, OutboxLimits};
use defender_edge::status::Status;

/// A typical Device Defender report is 1 to 3 KB of JSON.
const REPORT_BYTES: usize = 2048;

fn report() -> Vec<u8> {
    (0..REPORT_BYTES).map(|i| b'a' + (i % 26) as u8).collect()
}

fn limits() -> OutboxLimits {
    OutboxLimits {
        max_bytes: 64 * 1024 * 1024,
        segment_bytes: 1024 * 1024,
    }
}

/// Outbox push (write + fdatasync) and acknowledge (ack record + fdatasync),
/// and the peer: one file per report (create, write, fsync file, fsync dir).
fn durable_writes(c: &mut Criterion) {
    let payload = report();
    let mut group = c.benchmark_group("durable write of one 2 KiB report");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(6));

    let dir = tempfile::tempdir().expect("tempdir");
    let mut outbox = Outbox::open(dir.path(), limits(), "outbox", Status::new()).expect("outbox");
    group.bench_function("outbox push", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let id = outbox.push(&payload).expect("push");
                total += start.elapsed();
                outbox.acknowledge(id).expect("ack");
            }
            total
        })
    });
    group.bench_function("outbox acknowledge", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let id = outbox.push(&payload).expect("push");
                let start = Instant::now();
                outbox.acknowledge(id).expect("ack");
                total += start.elapsed();
            }
            total
        })
    });
    drop(outbox);

    let spool = tempfile::tempdir().expect("tempdir");
    let mut n = 0u64;
    group.bench_function("peer: file per report spool", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let path = spool.path().join(format!("{n:020}.json"));
                let start = Instant::now();
                spool_write(spool.path(), &path, &payload);
                total += start.elapsed();
                std::fs::remove_file(&path).expect("remove");
            }
            total
        })
    });
    group.bench_function("peer: file per report delete", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let path = spool.path().join(format!("{n:020}.json"));
                spool_write(spool.path(), &path, &payload);
                let start = Instant::now();
                std::fs::remove_file(&path).expect("remove");
                std::fs::File::open(spool.path())
                    .and_then(|d| d.sync_all())
                    .expect("fsync dir");
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

fn spool_write(dir: &Path, path: &Path, payload: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(payload).expect("write");
    f.sync_all().expect("fsync");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
}

/// A plain-TCP mosquitto on a free loopback port, for throughput only.
struct Mosquitto {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("conf");
        let child = Command::new(find("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{program}` is not installed: apt-get install mosquitto mosquitto-clients")
        })
}

/// QoS 1 publishes of 2 KiB, each counted only once its PUBACK arrived:
/// 1,000 per iteration with up to 100 in flight (IoT Core's limit), and one
/// at a time. The peer is `mosquitto_pub -q 1 -l` sending 1,000 lines.
fn mqtt_throughput(c: &mut Criterion) {
    let broker = Mosquitto::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = MqttConfig {
        endpoint: Some("127.0.0.1".to_owned()),
        port: broker.port,
        allow_plain_tcp: true,
        ..MqttConfig::default()
    };
    let transport = runtime.block_on(async {
        let t = MqttTransport::start(&config, "bench-device", Status::new()).expect("mqtt");
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !t.is_connected() {
            assert!(
                std::time::Instant::now() < until,
                "not connected to the bench broker"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Arc::new(t)
    });
    let payload = report();

    let mut group = c.benchmark_group("MQTT QoS 1 publish, 2 KiB, acknowledged");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1000));
    group.bench_function("MqttTransport, 100 in flight", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut tasks = tokio::task::JoinSet::new();
                    for chunk in 0..100 {
                        let transport = transport.clone();
                        let payload = payload.clone();
                        tasks.spawn(async move {
                            for _ in 0..10 {
                                transport
                                    .publish(&format!("bench/ours/{chunk}"), payload.clone())
                                    .await
                                    .expect("acked");
                            }
                        });
                    }
                    while let Some(done) = tasks.join_next().await {
                        done.expect("task");
                    }
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("MqttTransport, one at a time", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..1000 {
                        transport
                            .publish("bench/ours/seq", payload.clone())
                            .await
                            .expect("acked");
                    }
                }
                start.elapsed()
            })
        })
    });
    let mosquitto_pub = find("mosquitto_pub");
    let mut lines = Vec::new();
    for _ in 0..1000 {
        lines.extend_from_slice(&payload);
        lines.push(b'\n');
    }
    group.bench_function("peer: mosquitto_pub -q 1 -l", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut child = Command::new(&mosquitto_pub)
                    .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
                    .args(["-q", "1", "-t", "bench/peer", "-l"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .expect("mosquitto_pub starts");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(&lines)
                    .expect("write lines");
                assert!(child.wait().expect("wait").success());
            }
            start.elapsed()
        })
    });
    group.finish();
    runtime.block_on(transport.shutdown());
}

const RSS_MODE: &str = "DELIVERY_BENCH_RSS";

/// Child mode: open the outbox (or fill an in-memory queue) with the given
/// backlog, touch every waiting entry's id the way a publisher would, and
/// print VmRSS in KiB.
fn rss_child(spec: &str) {
    let (kind, rest) = spec.split_once(':').expect("kind:args");
    match kind {
        "outbox" => {
            let outbox =
                Outbox::open(Path::new(rest), limits(), "outbox", Status::new()).expect("open");
            let pending = outbox.pending();
            let newest = pending.last().map(|id| outbox.read(*id).expect("read"));
            drop(pending);
            println!("{} {}", vm_rss_kib(), newest.map_or(0, |p| p.len()));
            drop(outbox);
        }
        "memory" => {
            let n: usize = rest.parse().expect("count");
            let queue: std::collections::VecDeque<Vec<u8>> = (0..n).map(|_| report()).collect();
            println!("{} {}", vm_rss_kib(), queue.len());
        }
        other => panic!("unknown rss mode {other}"),
    }
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn measure_rss(spec: &str) -> u64 {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .env(RSS_MODE, spec)
        .output()
        .expect("child runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("rss printed")
}

/// Prints resident memory with 0, 1,000 and 10,000 waiting 2 KiB reports.
fn memory_with_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut outbox = Outbox::open(dir.path(), limits(), "outbox", Status::new()).expect("outbox");
    let payload = report();
    println!("resident memory with reports waiting (2 KiB each), fresh process per row:");
    println!("| waiting | outbox VmRSS | peer: in-memory VecDeque VmRSS |");
    println!("|--:|--:|--:|");
    for target in [0usize, 1000, 10_000] {
        while outbox.depth() < target {
            outbox.push(&payload).expect("push");
        }
        // The child opens the same directory: release the lock meanwhile.
        drop(outbox);
        let ours = measure_rss(&format!("outbox:{}", dir.path().display()));
        let peer = measure_rss(&format!("memory:{target}"));
        println!("| {target} | {ours} KiB | {peer} KiB |");
        outbox = Outbox::open(dir.path(), limits(), "outbox", Status::new()).expect("reopen");
    }
}

criterion_group!(benches, durable_writes, mqtt_throughput);

fn main() {
    if let Some(spec) = std::env::var_os(RSS_MODE) {
        rss_child(&spec.to_string_lossy());
        return;
    }
    // `cargo bench -- <filter>` passes a filter; the memory table runs only
    // without one, or with the filter `memory`.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.is_none() || filter.as_deref() == Some("memory") {
        memory_with_backlog();
    }
    if filter.as_deref() != Some("memory") {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
