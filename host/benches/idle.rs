//! The cost of `defender-edge run` sitting on a device: CPU time, wake-ups
//! and resident memory of the running component, with local detection at
//! its default 10 s interval, beside the same process with detection off
//! (report ticks only) and with the three example plugins loaded (hot
//! reload on, as in the recipes), measured one after the other in the same
//! run. The plugin case runs twice: first with an empty compile cache (the
//! host compiles at start), then with the cache that run filled, to compare
//! the resident memory after start.
//!
//! Run: `cargo bench -p defender-edge --bench idle` (about five minutes;
//! `IDLE_BENCH_SECONDS` changes the measuring window, default 60).
//!
//! CPU time is the process's own (utime + stime from `/proc/<pid>/stat`,
//! so other work on the machine does not count) after a warm-up, so
//! start-up and plugin compilation are not counted. Wake-ups are context
//! switches (voluntary and not) summed over the process's threads
//! (`/proc/<pid>/task/*/status`), over the whole window and over 8 s
//! between two ticks.

// A failing unwrap aborts the benchmark with the value in the message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().expect("utime");
    let stime: f64 = fields[12].parse().expect("stime");
    (utime + stime) / clock_ticks()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Context switches so far, per thread name, of every thread of `pid`.
fn switches(pid: u32) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let n = field("voluntary_ctxt_switches:")
            .parse::<u64>()
            .unwrap_or(0)
            + field("nonvoluntary_ctxt_switches:")
                .parse::<u64>()
                .unwrap_or(0);
        let name = field("Name:");
        match found.iter_mut().find(|(t, _)| *t == name) {
            Some((_, total)) => *total += n,
            None => found.push((name, n)),
        }
    }
    found.sort();
    found
}

fn total(switches: &[(String, u64)]) -> u64 {
    switches.iter().map(|(_, n)| n).sum()
}

/// Per-thread difference, threads that woke at all.
fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(name, n)| {
            let was = before
                .iter()
                .find(|(t, _)| t == name)
                .map_or(0, |(_, n)| *n);
            (name.clone(), n.saturating_sub(was))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

struct Measured {
    cpu_share: f64,
    rss_after_start_kib: u64,
    wakeups_per_s: f64,
    between_ticks_per_s: f64,
}

/// Runs `run` with `config` (its state in `state`) and measures it.
fn measure(label: &str, config: &serde_json::Value, state: &Path, window: Duration) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.json");
    let mut config = config.clone();
    config["stateDir"] = serde_json::json!(state);
    std::fs::write(&path, config.to_string()).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_defender-edge"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start run");
    let pid = child.id();
    // Warm-up: start-up (compiling plugins, when the cache is empty), the
    // first report and the first detection samples.
    std::thread::sleep(Duration::from_secs(5));
    let rss_after_start = rss_kib(pid);
    let status_file = state.join("status.json");
    let samples_at = || -> u64 {
        std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["values"]["collect.samples"].as_u64())
            .unwrap_or(0)
    };
    let (cpu0, wake0, samples0, t0) = (
        cpu_seconds(pid),
        switches(pid),
        samples_at(),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (cpu1, wake1, samples1, elapsed) =
        (cpu_seconds(pid), switches(pid), samples_at(), t0.elapsed());
    // Between ticks: from 1 s after a sample to 1 s before the next (ticks
    // are 10 s apart when detection is on; report ticks are 300 s apart).
    let seen = samples_at();
    let tick_wait = Instant::now();
    while samples_at() == seen && tick_wait.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let quiet0 = switches(pid);
    let quiet = Duration::from_secs(8);
    std::thread::sleep(quiet);
    let quiet1 = switches(pid);
    // SAFETY: kill(2) on the pid of the child spawned above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let measured = Measured {
        cpu_share: (cpu1 - cpu0) / elapsed.as_secs_f64(),
        rss_after_start_kib: rss_after_start,
        wakeups_per_s: (total(&wake1) - total(&wake0)) as f64 / elapsed.as_secs_f64(),
        between_ticks_per_s: (total(&quiet1) - total(&quiet0)) as f64 / quiet.as_secs_f64(),
    };
    println!(
        "{label:<52} {:>7.3} % of one core ({:.3} CPU-s)  {:>6.2} wakeups/s ({:.2}/s between ticks)  \
         RSS {:>6} KiB after start  {:>3} samples in {:.0} s",
        measured.cpu_share * 100.0,
        cpu1 - cpu0,
        measured.wakeups_per_s,
        measured.between_ticks_per_s,
        measured.rss_after_start_kib,
        samples1.saturating_sub(samples0),
        elapsed.as_secs_f64()
    );
    println!(
        "    wakeups by thread over the window: {:?}",
        delta(&wake0, &wake1)
    );
    println!(
        "    wakeups by thread between ticks:   {:?}",
        delta(&quiet0, &quiet1)
    );
    measured
}

#[path = "support/plugins.rs"]
mod common;

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let window = Duration::from_secs(
        std::env::var("IDLE_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let profile = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/detect/profiles/device-rule-baseline.json");
    assert!(
        profile.exists(),
        "profile fixture missing: {}",
        profile.display()
    );
    let base = serde_json::json!({
        "thingName": "idle-bench",
        "output": {"ndjson": null},
        "publish": {"transport": "none"},
    });
    let mut with_detection = base.clone();
    with_detection["detection"] = serde_json::json!({"profilePaths": [profile]});
    println!(
        "defender-edge run, idle: CPU share and RSS over {} s",
        window.as_secs()
    );
    let scratch = tempfile::tempdir().expect("temp dir");
    let state = |name: &str| -> PathBuf { scratch.path().join(name) };
    let off = measure(
        "report ticks only (detection off)",
        &base,
        &state("off"),
        window,
    );
    let on = measure(
        "detection every 10 s (DeviceRuleBaseline)",
        &with_detection,
        &state("on"),
        window,
    );

    // The three examples, configured as in docs/PLUGINS.md, hot reload on.
    let guests = common::guests();
    let plugins = scratch.path().join("plugins");
    std::fs::create_dir(&plugins).expect("plugin dir");
    for name in ["port-allowlist", "owner-enrichment", "system-metrics"] {
        std::fs::copy(
            common::wasm(&guests, name),
            plugins.join(format!("{name}.wasm")),
        )
        .expect("copy plugin");
    }
    let mut with_plugins = with_detection.clone();
    with_plugins["plugins"] = serde_json::json!({
        "dir": plugins,
        "hotReload": true,
        "settings": {
            "port-allowlist": {"config": {"tcp": "22,443,8883", "dropEphemeralFrom": "32768"}},
            "owner-enrichment": {"config": {"owner": "ops", "site": "lyon"}},
            "system-metrics": {"config": {"procDir": "/host"}, "grants": {"readDirs": {"/host": "/proc"}}}
        }
    });
    let compiled = measure(
        "detection + 3 plugins, empty cache (compiled at start)",
        &with_plugins,
        &state("with-plugins"),
        window,
    );
    let cached = measure(
        "detection + 3 plugins, loaded from the cache",
        &with_plugins,
        &state("with-plugins"),
        window,
    );
    println!(
        "detection adds {:.3} percentage points of one core, plugins {:.3} more; \
         targets: under 0.2 % and under 1 wakeup/s between ticks with the plugins",
        (on.cpu_share - off.cpu_share) * 100.0,
        (cached.cpu_share - on.cpu_share) * 100.0
    );
    println!(
        "resident memory after start with the plugins: {} KiB compiled, {} KiB cached \
         (target: under 20 MB either way)",
        compiled.rss_after_start_kib, cached.rss_after_start_kib
    );
}
