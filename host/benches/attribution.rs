//! Socket collection and process attribution beside iproute2's `ss`, in one
//! run, with N established loopback connections open (N = 100, 1,000,
//! 4,000: 2N sockets, both ends held by this process) and the machine
//! topped up with idle processes to a realistic count (200 by default).
//!
//! Per N, each call alternating with the others so that load from other
//! processes on a shared machine weighs on all alike:
//! - `ss -tan` and `ss -tanp` as processes (output to /dev/null): the same
//!   sockets over netlink, without and with the owning processes (a full
//!   scan of every `/proc/<pid>/fd`);
//! - ours in this process, `Collector::sample`: netlink without
//!   attribution; the proc files without attribution; netlink with
//!   attribution in the steady state (the collector kept between samples,
//!   nothing changed); and with attribution after 10% of the connections
//!   were replaced since the previous sample (the churn itself not timed);
//! - `defender-edge collect` (no attribution: report, report id and baseline
//!   files included) and `defender-edge collect --owners json` (a cold
//!   attribution: a new process scans everything, like `ss -tanp`).
//!
//! Run: `cargo bench -p defender-edge --bench attribution` (`-- 4000` runs
//! one N; `-- --processes 300` changes the process count). Without
//! `--bench` (as under `cargo test --benches`) it runs one small N once as a
//! smoke test. Fails when `ss` is missing (apt-get install iproute2).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use defender_edge::collect::{CollectConfig, Collector, ScanCounts, SocketSource, SocketsFrom};

#[path = "support/sockets.rs"]
mod sockets;
use sockets::{Connections, Listeners, raise_fd_limit};

const THING: &str = "bench-thing";

struct Budget {
    min_calls: usize,
    min_time: Duration,
}

const FULL: Budget = Budget {
    min_calls: 30,
    min_time: Duration::from_secs(4),
};

const SMOKE: Budget = Budget {
    min_calls: 1,
    min_time: Duration::ZERO,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let processes: usize = args
        .iter()
        .position(|a| a == "--processes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let chosen: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || args[i - 1] != "--processes")
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let (sizes, budget) = if bench {
        let sizes = if chosen.is_empty() {
            vec![100, 1000, 4000]
        } else {
            chosen
        };
        (sizes, FULL)
    } else {
        (vec![10], SMOKE)
    };
    let ss = which("ss").unwrap_or_else(|| {
        eprintln!("`ss` is not installed: apt-get install iproute2");
        std::process::exit(2);
    });
    let largest = sizes.iter().copied().max().unwrap_or(0);
    raise_fd_limit(2 * largest as u64 + 256);

    let sleepers = Sleepers::top_up(if bench { processes } else { 0 });
    let _listeners = Listeners::open();
    let mut connections = Connections::open();
    println!(
        "processes on the machine: {} ({} idle ones started by the bench)",
        process_count(),
        sleepers.0.len()
    );
    println!(
        "| N | ss -tan | ours: netlink, no attribution | ours: proc files, no attribution | ss -tanp | ours: attribution, steady | ours: attribution, 10% churn | steady / ss -tanp | netlink / ss -tan | `collect` process | `collect --owners json` process |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut notes = Vec::new();
    for &n in &sizes {
        connections.grow_to(n);
        let row = measure(&ss, &budget, &mut connections);
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ms(row.ss_tan),
            ms(row.netlink),
            ms(row.files),
            ms(row.ss_tanp),
            ms(row.steady),
            ms(row.churn),
            ratio(row.steady, row.ss_tanp),
            ratio(row.netlink, row.ss_tan),
            ms(row.collect_process),
            ms(row.owners_process),
        );
        notes.push(format!(
            "N = {n}: steady sample read {} descriptor links in {} processes ({} start times checked); \
             a churn sample read {} links in {} processes (full search: {})",
            row.steady_counts.links_read,
            row.steady_counts.scanned,
            row.steady_counts.verified,
            row.churn_counts.links_read,
            row.churn_counts.scanned,
            row.churn_counts.full_search,
        ));
    }
    println!();
    for note in notes {
        println!("{note}");
    }
    drop(sleepers);
}

/// Idle `sleep` processes, so that attribution and `ss -p` walk a process
/// table the size of a busy device's.
struct Sleepers(Vec<Child>);

impl Sleepers {
    fn top_up(target: usize) -> Sleepers {
        let missing = target.saturating_sub(process_count());
        Sleepers(
            (0..missing)
                .map(|_| {
                    Command::new("sleep")
                        .arg("3600")
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("start sleep")
                })
                .collect(),
        )
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn process_count() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0)
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[derive(Default)]
struct Calls(Vec<Duration>);

impl Calls {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0.push(t.elapsed());
        out
    }

    fn median(&self) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }
}

struct Row {
    ss_tan: Duration,
    ss_tanp: Duration,
    netlink: Duration,
    files: Duration,
    steady: Duration,
    churn: Duration,
    collect_process: Duration,
    owners_process: Duration,
    steady_counts: ScanCounts,
    churn_counts: ScanCounts,
}

fn run_quiet(command: &mut Command) {
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start a peer");
    assert!(status.success(), "{command:?} failed: {status}");
}

fn collector(source: SocketSource, attribution: bool) -> Collector {
    Collector::new(&CollectConfig {
        source,
        attribution,
        ..CollectConfig::default()
    })
}

fn measure(ss: &std::path::Path, budget: &Budget, connections: &mut Connections) -> Row {
    let netlink = collector(SocketSource::Auto, false);
    let files = collector(SocketSource::Proc, false);
    let steady = collector(SocketSource::Auto, true);
    let churned = collector(SocketSource::Auto, true);
    let first = steady.sample(THING, 0, None);
    assert_eq!(
        first.sockets_from,
        SocketsFrom::Netlink,
        "{:?}",
        first.warnings
    );
    let owners = first.owners.expect("owners of the live machine");
    let me = defender_edge::sample::SocketOwner::Process(std::process::id());
    let mine = owners
        .established_connections
        .iter()
        .filter(|row| row.owners.contains(&me))
        .count();
    assert!(
        mine >= 2 * connections.len(),
        "attribution found {mine} of our {} sockets",
        2 * connections.len()
    );
    churned.sample(THING, 0, None);
    let state = tempfile::tempdir().expect("state dir");
    let binary = env!("CARGO_BIN_EXE_defender-edge");
    let collect = || {
        let mut c = Command::new(binary);
        c.args(["collect", "--thing", THING, "--state-dir"])
            .arg(state.path())
            .env("RUST_LOG", "error");
        c
    };
    run_quiet(&mut collect()); // The baseline file, as a device has it.

    let mut calls: [Calls; 8] = Default::default();
    let (mut steady_counts, mut churn_counts) = Default::default();
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < budget.min_calls || start.elapsed() < budget.min_time {
        calls[0].time(|| run_quiet(Command::new(ss).arg("-tan")));
        calls[1].time(|| std::hint::black_box(netlink.sample(THING, 0, None)));
        calls[2].time(|| std::hint::black_box(files.sample(THING, 0, None)));
        calls[3].time(|| run_quiet(Command::new(ss).arg("-tanp")));
        steady_counts = calls[4].time(|| steady.sample(THING, 0, None)).attribution;
        connections.churn(connections.len() / 10);
        churn_counts = calls[5].time(|| churned.sample(THING, 0, None)).attribution;
        // Untimed: the steady collector catches up, so that its next timed
        // sample follows one of the same sockets.
        steady.sample(THING, 0, None);
        calls[6].time(|| run_quiet(&mut collect()));
        calls[7].time(|| run_quiet(collect().args(["--owners", "json"])));
        rounds += 1;
    }
    Row {
        ss_tan: calls[0].median(),
        netlink: calls[1].median(),
        files: calls[2].median(),
        ss_tanp: calls[3].median(),
        steady: calls[4].median(),
        churn: calls[5].median(),
        collect_process: calls[6].median(),
        owners_process: calls[7].median(),
        steady_counts,
        churn_counts,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "n/a".to_owned();
    }
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
}
