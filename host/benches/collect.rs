//! The collector against its peers, in one run, with N established loopback
//! TCP connections open (N = 100, 1,000, 4,000) plus a few listeners:
//!
//! - ours: `Collector::sample` + `report::prepare` (collect, build, validate,
//!   encode, trim to the default 128 KB budget), which is what
//!   `pipeline::collect_once` does besides the state files; and
//!   `collect_once` itself, state files (two fsync'd writes) included;
//! - the AWS IoT Device Defender Python agent's `Collector.collect_metrics()`
//!   (and with `to_json_string()`), timed inside a Python subprocess so that
//!   interpreter start-up is left out (benches/support/python_collector.py);
//! - the bare cost of reading `/proc/net/{tcp,tcp6,udp,udp6,dev}` into
//!   memory, and of the ten proc files our collector actually reads.
//!
//! Then the `defender-edge collect` process: wall time, peak RSS (ru_maxrss
//! from wait4), RSS split into file-backed and anonymous pages, and its
//! syscalls counted by `strace -c -f` when strace is installed.
//!
//! Run: `DEFENDER_EDGE_PYTHON=/path/to/venv/bin/python cargo bench -p defender-edge --bench collect`
//! (`-- 4000` runs one N only). Ours and the bare reads alternate call by
//! call, and the Python agent runs between two halves of them, so load from
//! other processes on a shared machine weighs on all sides alike; compare the
//! ratios, not the absolute times.
//!
//! N connections are 2N established sockets, since both ends of a loopback
//! connection are local; one in four goes over IPv6 so `tcp6` is exercised.
//! Without `--bench` (as under `cargo test --benches`) it runs one small N
//! once, without the Python agent, as a smoke test.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use defender_edge::collect::{CollectConfig, Collector, Counters};
use defender_edge::config::Config;
use defender_edge::pipeline;
use defender_edge::report::{self, DEFAULT_MAX_BYTES, Format};

#[path = "support/sockets.rs"]
#[allow(dead_code)] // Churn is for the attribution bench.
mod sockets;
use sockets::{Connections, Listeners, raise_fd_limit};

/// The files the specification's bare read covers.
const BARE_FILES: [&str; 5] = [
    "/proc/net/tcp",
    "/proc/net/tcp6",
    "/proc/net/udp",
    "/proc/net/udp6",
    "/proc/net/dev",
];

/// Every file one `Collector::sample` reads (see collect/mod.rs).
const COLLECTOR_FILES: [&str; 10] = [
    "/proc/net/if_inet6",
    "/proc/net/route",
    "/proc/net/fib_trie",
    "/proc/net/tcp",
    "/proc/net/tcp6",
    "/proc/net/udp",
    "/proc/net/udp6",
    "/proc/net/dev",
    "/proc/net/igmp",
    "/proc/sys/kernel/random/boot_id",
];

const THING: &str = "bench-thing";

/// How long each side is measured per N, split in two halves around the
/// Python agent.
struct Budget {
    min_calls: usize,
    min_time: Duration,
    python_calls: usize,
    python_seconds: f64,
    process_runs: usize,
}

const FULL: Budget = Budget {
    min_calls: 100,
    min_time: Duration::from_secs(3),
    python_calls: 5,
    python_seconds: 6.0,
    process_runs: 15,
};

const SMOKE: Budget = Budget {
    min_calls: 1,
    min_time: Duration::ZERO,
    python_calls: 0,
    python_seconds: 0.0,
    process_runs: 1,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let chosen: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (sizes, budget, python) = if bench {
        let sizes = if chosen.is_empty() {
            vec![100, 1000, 4000]
        } else {
            chosen
        };
        (sizes, FULL, Some(python()))
    } else {
        (vec![10], SMOKE, None)
    };
    let largest = sizes.iter().copied().max().unwrap_or(0);
    raise_fd_limit(2 * largest as u64 + 256);

    let _listeners = Listeners::open();
    let mut connections = Connections::open();
    let mut rows = Vec::new();
    for &n in &sizes {
        connections.grow_to(n);
        rows.push(measure(n, &budget, python.as_deref()));
    }
    print_tables(&rows);

    let sizes_for_process: Vec<usize> = [sizes.first(), sizes.last()]
        .into_iter()
        .flatten()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    println!(
        "\n`defender-edge collect` as a process ({})",
        binary().display()
    );
    println!(
        "| N | wall time (median of {}) | peak RSS (max ru_maxrss) | RSS file-backed / anonymous, mid-run | syscalls (strace -c -f) |",
        budget.process_runs
    );
    println!("|--:|--:|--:|--:|--|");
    for n in sizes_for_process {
        connections.grow_to(n);
        let process = measure_process(&budget);
        println!(
            "| {n} | {} | {} KiB | {} | {} |",
            fmt_duration(process.wall),
            process.max_rss_kib,
            process.rss_split,
            process.syscalls
        );
    }
    let size = std::fs::metadata(binary()).map(|m| m.len()).unwrap_or(0);
    println!("binary size: {:.1} MiB", size as f64 / (1024.0 * 1024.0));
}

/// The interpreter with AWSIoTDeviceDefenderAgentSDK and psutil installed.
fn python() -> PathBuf {
    let Some(path) = std::env::var_os("DEFENDER_EDGE_PYTHON").map(PathBuf::from) else {
        eprintln!(
            "DEFENDER_EDGE_PYTHON is not set: point it at a Python with AWSIoTDeviceDefenderAgentSDK \
             and psutil (scripts/test.sh creates one in .venv and exports it)"
        );
        std::process::exit(2);
    };
    if !path.exists() {
        eprintln!(
            "DEFENDER_EDGE_PYTHON={} does not exist; run scripts/test.sh to create the Python environment",
            path.display()
        );
        std::process::exit(2);
    }
    path
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_defender-edge"))
}

fn support_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/support/python_collector.py")
}

/// Per-call durations of one side.
#[derive(Default)]
struct Calls(Vec<Duration>);

impl Calls {
    fn median(&self) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }
}

struct Row {
    n: usize,
    ours: Duration,
    ours_collect_once: Duration,
    bare: Duration,
    bare_all: Duration,
    python_collect: Option<Duration>,
    python_collect_encode: Option<Duration>,
    ours_seen: usize,
    python_seen: Option<usize>,
    report_bytes: usize,
    trimmed: u64,
}

/// What `collect` does per report, minus the state files: one sample
/// against a baseline (so network_stats is computed), then build, validate,
/// encode and trim.
fn ours_once(collector: &Collector, baseline: &mut Counters, id: &mut u64) -> report::Prepared {
    let collected = collector.sample(THING, 1_767_225_600_000, Some(baseline));
    *id += 1;
    let prepared = report::prepare(&collected.sample, *id, Format::Json, DEFAULT_MAX_BYTES)
        .expect("our report of this machine is valid");
    *baseline = collected.counters;
    prepared
}

fn bare_read(files: &[&str], buf: &mut Vec<u8>) -> usize {
    let mut total = 0;
    for path in files {
        buf.clear();
        // A file missing on this kernel (no IPv6) costs what it costs.
        if let Ok(mut file) = File::open(path) {
            total += file.read_to_end(buf).unwrap_or(0);
        }
    }
    total
}

fn measure(n: usize, budget: &Budget, python: Option<&Path>) -> Row {
    // As `collect` does: the report does not use attribution.
    let collector = Collector::new(&CollectConfig {
        attribution: false,
        ..CollectConfig::default()
    });
    let mut baseline = collector.sample(THING, 0, None).counters;
    let mut id = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let state = tempfile::tempdir().expect("state dir");
    let config = Config {
        thing_name: Some(THING.to_owned()),
        state_dir: state.path().to_owned(),
        ..Config::default()
    };

    let first = ours_once(&collector, &mut baseline, &mut id);
    let metrics = first.report.metrics.as_ref().expect("metrics");
    let ours_seen = metrics.tcp_connections.established_connections.total as usize;
    assert!(
        ours_seen >= 2 * n,
        "our collector saw {ours_seen} established sockets, expected at least {}",
        2 * n
    );
    for _ in 0..3 {
        std::hint::black_box(bare_read(&BARE_FILES, &mut buf));
        std::hint::black_box(pipeline::collect_once(&config, Format::Json, None).expect("collect"));
    }

    let (mut ours, mut once, mut bare, mut bare_all) = Default::default();
    let mut half = |ours: &mut Calls, once: &mut Calls, bare: &mut Calls, bare_all: &mut Calls| {
        let start = Instant::now();
        let mut calls = 0;
        while calls < budget.min_calls.div_ceil(2) || start.elapsed() < budget.min_time / 2 {
            let t = Instant::now();
            std::hint::black_box(bare_read(&BARE_FILES, &mut buf));
            bare.0.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(ours_once(&collector, &mut baseline, &mut id));
            ours.0.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(bare_read(&COLLECTOR_FILES, &mut buf));
            bare_all.0.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(
                pipeline::collect_once(&config, Format::Json, None).expect("collect"),
            );
            once.0.push(t.elapsed());
            calls += 1;
        }
    };
    half(&mut ours, &mut once, &mut bare, &mut bare_all);
    let python_figures = python.map(|p| python_agent(p, budget));
    half(&mut ours, &mut once, &mut bare, &mut bare_all);

    Row {
        n,
        ours: ours.median(),
        ours_collect_once: once.median(),
        bare: bare.median(),
        bare_all: bare_all.median(),
        python_collect: python_figures.as_ref().map(|f| f.collect.median()),
        python_collect_encode: python_figures.as_ref().map(|f| f.collect_encode.median()),
        ours_seen,
        python_seen: python_figures.as_ref().map(|f| f.established),
        report_bytes: first.bytes.len(),
        trimmed: first.trimmed.total(),
    }
}

struct PythonFigures {
    collect: Calls,
    collect_encode: Calls,
    established: usize,
}

fn python_agent(python: &Path, budget: &Budget) -> PythonFigures {
    let out = Command::new(python)
        .arg(support_script())
        .arg(budget.python_calls.to_string())
        .arg(budget.python_seconds.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run python_collector.py");
    assert!(
        out.status.success(),
        "python_collector.py failed ({}); is AWSIoTDeviceDefenderAgentSDK installed for {}?",
        out.status,
        python.display()
    );
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON figures");
    let calls = |key: &str| {
        Calls(
            figures[key]
                .as_array()
                .expect("a list of timings")
                .iter()
                .map(|us| Duration::from_secs_f64(us.as_f64().expect("microseconds") / 1e6))
                .collect(),
        )
    };
    PythonFigures {
        collect: calls("collect_us"),
        collect_encode: calls("collect_encode_us"),
        established: figures["established"].as_u64().unwrap_or(0) as usize,
    }
}

struct ProcessFigures {
    wall: Duration,
    max_rss_kib: i64,
    rss_split: String,
    syscalls: String,
}

fn collect_command(state: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("collect")
        .arg("--state-dir")
        .arg(state)
        .args(["--thing", THING])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn measure_process(budget: &Budget) -> ProcessFigures {
    let state = tempfile::tempdir().expect("state dir");
    // The first run writes the baseline; every measured run has one, as a
    // `collect` on a device normally does.
    run_with_rusage(&mut collect_command(state.path()));
    let mut walls = Calls::default();
    let mut max_rss_kib = 0;
    for _ in 0..budget.process_runs {
        let t = Instant::now();
        let rss = run_with_rusage(&mut collect_command(state.path()));
        walls.0.push(t.elapsed());
        max_rss_kib = max_rss_kib.max(rss);
    }
    ProcessFigures {
        wall: walls.median(),
        max_rss_kib,
        rss_split: rss_split(state.path()),
        syscalls: syscalls(state.path()),
    }
}

/// Runs the command to completion and returns its ru_maxrss in KiB, for
/// this child alone (getrusage(RUSAGE_CHILDREN) would fold in the Python
/// agent's runs).
// wait4 reaps the child itself, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_with_rusage(command: &mut Command) -> i64 {
    let child = command.spawn().expect("start defender-edge collect");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child; both out-pointers are valid.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "defender-edge collect failed with status {status}"
    );
    usage.ru_maxrss
}

/// RSS while `collect --delta-window` sleeps between its two samples: file
/// pages (the mapped binary) against anonymous ones (heap, stacks).
fn rss_split(state: &Path) -> String {
    let mut child = collect_command(state)
        .args(["--delta-window", "1500ms"])
        .spawn()
        .expect("start defender-edge collect --delta-window");
    std::thread::sleep(Duration::from_millis(750));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.wait();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    };
    format!("{} / {}", field("RssFile:"), field("RssAnon:"))
}

/// `strace -c -f` summary: total calls and the five most frequent.
fn syscalls(state: &Path) -> String {
    let out_file = state.join("strace.txt");
    let plain = collect_command(state);
    let mut args: Vec<OsString> = vec![
        "-c".into(),
        "-f".into(),
        "-o".into(),
        out_file.clone().into(),
    ];
    args.push(plain.get_program().to_owned());
    args.extend(plain.get_args().map(|a| a.to_owned()));
    let ran = Command::new("strace")
        .args(&args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(ran, Ok(s) if s.success()) {
        return "not counted: strace missing or failed (apt-get install -y strace)".to_owned();
    }
    let text = std::fs::read_to_string(&out_file).unwrap_or_default();
    let mut rows: Vec<(u64, String)> = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors,] name
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue;
        }
        let (Ok(calls), Some(name)) = (fields[3].parse::<u64>(), fields.last()) else {
            continue;
        };
        if *name == "total" {
            total = Some(calls);
        } else {
            rows.push((calls, (*name).to_owned()));
        }
    }
    rows.sort_unstable_by(|a, b| b.cmp(a));
    let top: Vec<String> = rows
        .iter()
        .take(5)
        .map(|(calls, name)| format!("{name} {calls}"))
        .collect();
    match total {
        Some(total) => format!("{total} total; {}", top.join(", ")),
        None => "strace printed no summary".to_owned(),
    }
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "n/a".to_owned();
    }
    let r = a.as_secs_f64() / b.as_secs_f64();
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

fn print_tables(rows: &[Row]) {
    let opt = |d: Option<Duration>| d.map_or_else(|| "skipped".to_owned(), fmt_duration);
    println!("per-call medians, same run (N connections = 2N established sockets)");
    println!(
        "| N | ours: sample+prepare | ours: collect_once (+state files) | bare read 5 files | bare read 10 files (all ours reads) | Python collect_metrics() | Python + to_json_string() |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.n,
            fmt_duration(r.ours),
            fmt_duration(r.ours_collect_once),
            fmt_duration(r.bare),
            fmt_duration(r.bare_all),
            opt(r.python_collect),
            opt(r.python_collect_encode),
        );
    }
    println!("\nratios (target at 4,000: Python/ours >= 100×, ours/bare read <= 2×)");
    println!(
        "| N | Python collect_metrics / ours | Python+JSON / ours | ours / bare read 5 files | ours / bare read 10 files | Python / collect_once |"
    );
    println!("|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let py = |d: Option<Duration>, ours: Duration| {
            d.map_or_else(|| "n/a".into(), |d| ratio(d, ours))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.n,
            py(r.python_collect, r.ours),
            py(r.python_collect_encode, r.ours),
            ratio(r.ours, r.bare),
            ratio(r.ours, r.bare_all),
            py(r.python_collect, r.ours_collect_once),
        );
    }
    println!("\nwhat each side saw");
    println!(
        "| N | established sockets, ours | established, Python agent | our JSON report | entries trimmed to fit 128 KB |"
    );
    println!("|--:|--:|--:|--:|--:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} B | {} |",
            r.n,
            r.ours_seen,
            r.python_seen
                .map_or_else(|| "n/a".into(), |s| s.to_string()),
            r.report_bytes,
            r.trimmed
        );
    }
}
