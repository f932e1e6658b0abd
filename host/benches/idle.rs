//! The cost of `defender-edge run` sitting on a device: CPU share and
//! resident memory of the running component, with local detection at its
//! default 10 s interval, against the same process with detection off (report
//! ticks only), measured one after the other in the same run.
//!
//! Run: `cargo bench -p defender-edge --bench idle` (about two minutes;
//! `IDLE_BENCH_SECONDS` changes the measuring window, default 60).
//!
//! CPU time is read from `/proc/<pid>/stat` (utime + stime) after a warm-up,
//! so start-up and plugin compilation are not counted.

use std::path::Path;
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

struct Measured {
    cpu_share: f64,
    rss_kib: u64,
    samples: u64,
}

fn measure(label: &str, config: &serde_json::Value, window: Duration) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.json");
    let mut config = config.clone();
    config["stateDir"] = serde_json::json!(dir.path().join("state"));
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
    // Warm-up: start-up, the first report and the first detection samples.
    std::thread::sleep(Duration::from_secs(5));
    let status_file = dir.path().join("state").join("status.json");
    let samples_at = || -> u64 {
        std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["values"]["collect.samples"].as_u64())
            .unwrap_or(0)
    };
    let (cpu0, samples0, t0) = (cpu_seconds(pid), samples_at(), Instant::now());
    std::thread::sleep(window);
    let (cpu1, samples1, elapsed) = (cpu_seconds(pid), samples_at(), t0.elapsed());
    let rss = rss_kib(pid);
    // SAFETY: kill(2) on the pid of the child spawned above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let measured = Measured {
        cpu_share: (cpu1 - cpu0) / elapsed.as_secs_f64(),
        rss_kib: rss,
        samples: samples1.saturating_sub(samples0),
    };
    println!(
        "{label:<44} {:>8.3} % of one core  {:>7} KiB RSS  {:>4} samples in {:.0} s",
        measured.cpu_share * 100.0,
        measured.rss_kib,
        measured.samples,
        elapsed.as_secs_f64()
    );
    measured
}

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
    let off = measure("report ticks only (detection off)", &base, window);
    let on = measure(
        "detection every 10 s (DeviceRuleBaseline)",
        &with_detection,
        window,
    );
    println!(
        "detection adds {:.3} percentage points of one core; target: total under 0.5 %",
        (on.cpu_share - off.cpu_share) * 100.0
    );
}
