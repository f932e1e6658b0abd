//! Golden outputs of the whole commands: the bytes `collect` prints and the
//! bytes `run` hands to its outbox, its NDJSON output, Firehose and the alarm
//! topics, from a captured proc tree, a fixed security profile and fixed
//! report ids. They pin what leaves the process, so a change of structure
//! inside it is shown to change none of it.
//!
//! Report ids are fixed by seeding the state directory's `report-id` far
//! above the clock: ids are `max(now, last + 1)`, so they continue from the
//! seed. The clock itself cannot be fixed from outside the process, so the
//! fields that carry it (HEC `time` and `timestamp`, an alarm's times) and
//! the random violation ids are blanked before comparing; every other byte
//! must match. CBOR reports are compared byte for byte.
//!
//! Golden files are rewritten only when `DEFENDER_EDGE_UPDATE_GOLDEN=1` is set
//! by whoever runs the tests; no test sets it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use defender_edge::publish::outbox::{Outbox, OutboxLimits};
use defender_edge::status::Status;
use serde_json::{Value, json};

use crate::support;

const UPDATE_GOLDEN: &str = "DEFENDER_EDGE_UPDATE_GOLDEN";
/// The last report id, seeded: year 2096 by the clock, so no test run ever
/// reaches it and ids are `SEED + 1`, `SEED + 2`...
const SEED: u64 = 4_000_000_000_000;
const THING: &str = "golden-thing";
/// The three report formats with the extension of their golden files.
const FORMATS: [(&str, &str); 3] = [
    ("json", "json"),
    ("json-short", "short.json"),
    ("cbor", "cbor"),
];

fn golden_path(name: &str) -> PathBuf {
    support::fixture("golden").join(name)
}

/// Compares `actual` with `tests/fixtures/golden/<name>`.
fn check(name: &str, actual: &[u8]) {
    let path = golden_path(name);
    if std::env::var_os(UPDATE_GOLDEN).is_some() {
        std::fs::write(&path, actual).expect("write golden file");
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with {UPDATE_GOLDEN}=1 cargo test --test integration golden::",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "output differs from {}\n  expected: {}\n  actual:   {}\nIf the change is intended, rerun with {UPDATE_GOLDEN}=1 and review the diff",
        path.display(),
        show(&expected),
        show(actual)
    );
}

/// Text when it is UTF-8, hex otherwise (CBOR), so a mismatch is readable.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn proc_tree(name: &str) -> PathBuf {
    support::fixture("proc").join(name)
}

fn command() -> Command {
    let mut cmd = Command::new(support::bin());
    cmd.env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .env_remove("SVCUID")
        .env_remove("AWS_IOT_THING_NAME")
        .env_remove("RUST_LOG");
    cmd
}

/// A state directory whose report ids continue from [`SEED`].
fn seeded_state(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("report-id"), SEED.to_string()).expect("seed report-id");
    state
}

fn collect(state: &Path, tree: &str, format: &str) -> Vec<u8> {
    collect_with(state, tree, format, None).0
}

/// `collect` of `tree` into `state`, with a configuration file or none:
/// its standard output and error.
fn collect_with(
    state: &Path,
    tree: &str,
    format: &str,
    config: Option<&Path>,
) -> (Vec<u8>, String) {
    let mut cmd = command();
    cmd.args([
        "collect",
        "--thing",
        THING,
        "--format",
        format,
        "--proc-root",
    ])
    .arg(proc_tree(tree))
    .arg("--state-dir")
    .arg(state);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd.output().expect("run collect");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "collect exited {:?}: {stderr}",
        out.status
    );
    (out.stdout, stderr)
}

/// `collect` twice, as a person would: the first has no network baseline,
/// the second reports the traffic between the two trees.
#[test]
fn collect_prints_the_pinned_reports() {
    for (format, extension) in FORMATS {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = seeded_state(dir.path());
        check("collect-first.json", &collect(&state, "captured", "json"));
        check(
            &format!("collect-later.{extension}"),
            &collect(&state, "captured-later", format),
        );
    }
}

/// With security profiles configured, `collect` judges its sample too: the
/// alarms are logged as `run` logs them, the report is the same, and
/// nothing of detection is written back to the state directory `run` uses.
#[test]
fn collect_judges_its_sample_and_keeps_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = seeded_state(dir.path());
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        json!({"detection": {"profilePaths": [golden_path("profile.json")]}}).to_string(),
    )
    .expect("write config");
    let (stdout, stderr) = collect_with(&state, "captured", "json", Some(&config));
    check("collect-first.json", &stdout);
    let expected = std::fs::read_to_string(golden_path("run-once-alarms.ndjson")).expect("golden");
    assert_eq!(
        alarms_logged(&stderr),
        expected,
        "the first tick's alarms; stderr:\n{stderr}"
    );
    assert!(
        !state.join("detect-state.json").exists(),
        "collect keeps no detection state"
    );
}

/// What one `run` left behind: its outboxes, NDJSON file and log.
struct RunOutputs {
    /// `(report id, report bytes)` waiting for Device Defender.
    reports: Vec<(u64, Vec<u8>)>,
    ndjson: String,
    /// One entry per sample sent to the SIEM path, HEC lines each.
    hec: Vec<String>,
    /// The health events sent to the SIEM path, one per report.
    health: Vec<String>,
    /// The alarm events logged, as published, one per line.
    alarms: String,
    log: String,
}

/// A `run` whose peers cannot be reached: reports stay in the Device Defender
/// outbox and HEC events in the Firehose outbox, where the test reads them.
struct Rig {
    dir: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
    ndjson: PathBuf,
}

impl Rig {
    fn new(format: &str, extra: Value) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = seeded_state(dir.path());
        let ndjson = dir.path().join("reports.ndjson");
        let mut config = json!({
            "thingName": THING,
            "stateDir": state,
            "collect": {"procRoot": proc_tree("captured-later")},
            "output": {"ndjson": ndjson},
            "report": {"format": format},
            "detection": {"profilePaths": [golden_path("profile.json")]},
            "publish": {
                "transport": "mqtt",
                "mqtt": {"endpoint": "127.0.0.1", "port": closed_port(), "allowPlainTcp": true},
                "firehose": {"enabled": cfg!(feature = "firehose"), "deliveryStream": "golden",
                    "region": "us-east-1", "shutdownTimeoutMs": 100, "retryBaseMs": 50}
            }
        });
        merge(&mut config, extra);
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).expect("write config");
        Rig {
            dir,
            state,
            config: path,
            ndjson,
        }
    }

    fn run(&self, args: &[&str]) -> Command {
        let mut cmd = command();
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env(
                "AWS_ENDPOINT_URL_FIREHOSE",
                format!("http://127.0.0.1:{}", closed_port()),
            )
            .env("AWS_ACCESS_KEY_ID", "AKIDGOLDEN")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .stdout(Stdio::null());
        cmd
    }

    fn outputs(&self, log: String) -> RunOutputs {
        let reports = entries(&self.state.join("outbox"))
            .into_iter()
            .map(|entry| {
                let (id, report) = entry.split_at(8);
                let id = u64::from_le_bytes(id.try_into().expect("8-byte id"));
                (id, report.to_vec())
            })
            .collect();
        // The agent's health events (one per report) hold uptime and
        // counters, which no fixture pins: counted apart, not compared.
        let (health, hec): (Vec<String>, Vec<String>) = if cfg!(feature = "firehose") {
            entries(&self.state.join("firehose-outbox"))
                .into_iter()
                .map(|entry| blank_clock(&String::from_utf8(entry).expect("HEC lines are UTF-8")))
                .partition(|entry| entry.contains(r#""metric":"edge:health""#))
        } else {
            Default::default()
        };
        RunOutputs {
            alarms: alarms_logged(&log),
            reports,
            ndjson: std::fs::read_to_string(&self.ndjson).unwrap_or_default(),
            hec,
            health,
            log,
        }
    }
}

/// The alarm events a log shows (`run` and `collect` log each as the JSON
/// they publish), clock blanked, one per line.
fn alarms_logged(log: &str) -> String {
    log.lines()
        .filter_map(|line| line.split_once(" detection alarm=").map(|(_, json)| json))
        .map(|json| format!("{}\n", blank_clock(json)))
        .collect()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}

/// The payloads waiting in an outbox, oldest first.
fn entries(dir: &Path) -> Vec<Vec<u8>> {
    let outbox =
        Outbox::open(dir, OutboxLimits::default(), "golden", Status::new()).expect("open outbox");
    outbox
        .pending()
        .into_iter()
        .map(|id| outbox.read(id).expect("read outbox entry"))
        .collect()
}

/// Replaces the values of the fields that carry the wall clock or a random
/// violation id, keeping every other byte.
fn blank_clock(text: &str) -> String {
    let mut out = text.to_owned();
    for key in [
        "time",
        "timestamp",
        "timestamp_ms",
        "violation_start_ms",
        "violation_id",
    ] {
        out = blank(&out, key);
    }
    out
}

/// Replaces the value of every `"key":` (a number or a string without
/// commas or braces) with `"<key>"`.
fn blank(text: &str, key: &str) -> String {
    let needle = format!("\"{key}\":");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        let value_start = at + needle.len();
        out.push_str(&rest[..value_start]);
        let value_len = rest[value_start..]
            .find([',', '}'])
            .unwrap_or(rest.len() - value_start);
        out.push_str(&format!("\"<{key}>\""));
        rest = &rest[value_start + value_len..];
    }
    out.push_str(rest);
    out
}

/// `run --once` in each format, with the network window of the previous run
/// seeded: the report (as queued for Device Defender and as written to the
/// NDJSON output), the sample's HEC events and the alarms of the first tick.
#[test]
fn run_once_hands_on_the_pinned_outputs() {
    for (format, extension) in FORMATS {
        let rig = Rig::new(format, json!({}));
        // The previous run's counters (those of the earlier tree) and the
        // traffic it owed the next report.
        collect(&rig.state, "captured", "json");
        let counters: Value = serde_json::from_slice(
            &std::fs::read(rig.state.join("net-collect.json")).expect("collect's baseline"),
        )
        .expect("baseline JSON");
        let owed =
            json!({"bytes_in": 1000, "bytes_out": 2000, "packets_in": 10, "packets_out": 20});
        std::fs::write(
            rig.state.join("net-run.json"),
            json!({"counters": counters, "since_report": owed, "window_valid": true}).to_string(),
        )
        .expect("seed net-run.json");

        let out: Output = rig
            .run(&["--once", "--wait", "0"])
            .stderr(Stdio::piped())
            .output()
            .expect("run --once");
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(3),
            "the report waits in the outbox; log:\n{log}"
        );
        let outputs = rig.outputs(log);
        assert_eq!(outputs.reports.len(), 1, "log:\n{}", outputs.log);
        let (id, report) = &outputs.reports[0];
        assert_eq!(*id, SEED + 2, "collect took SEED + 1");
        check(&format!("run-once.{extension}"), report);
        check(
            &format!("run-once.{format}.ndjson"),
            outputs.ndjson.as_bytes(),
        );
        check("run-once-alarms.ndjson", outputs.alarms.as_bytes());
        if cfg!(feature = "firehose") {
            assert_eq!(outputs.hec.len(), 1, "one sample; log:\n{}", outputs.log);
            assert_eq!(outputs.health.len(), 1, "one health event per report");
            check("run-once-hec.ndjson", outputs.hec[0].as_bytes());
        }
    }
}

/// `run` over several ticks: detection every second, a report every three.
/// The first report has no traffic (no honest window yet), the second the
/// window's sum; an alarm raised between reports goes to the SIEM path at
/// once with its own sample id.
#[test]
fn run_ticks_hand_on_the_pinned_outputs() {
    let rig = Rig::new(
        "json",
        json!({
            "report": {"intervalSeconds": 3},
            "detection": {"intervalSeconds": 1, "perSample": ["*"]},
            "publish": {"deviceDefender": {"minIntervalSeconds": 1}}
        }),
    );
    let log_path = rig.dir.path().join("run.log");
    let mut child = rig
        .run(&[])
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("start run");
    let until = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&rig.ndjson)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "run exited ({status}); log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < until,
            "no second report; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of a child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait for run");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    let outputs = rig.outputs(log);

    let ids: Vec<u64> = outputs.reports.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        &ids[..2],
        &[SEED + 1, SEED + 3],
        "the alarm tick between the reports took SEED + 2; log:\n{}",
        outputs.log
    );
    let mut reports = Vec::new();
    for (_, report) in &outputs.reports[..2] {
        reports.extend_from_slice(report);
        reports.push(b'\n');
    }
    check("run-ticks.json", &reports);
    let ndjson: Vec<&str> = outputs.ndjson.lines().take(2).collect();
    check(
        "run-ticks.ndjson",
        format!("{}\n", ndjson.join("\n")).as_bytes(),
    );
    check("run-ticks-alarms.ndjson", outputs.alarms.as_bytes());
    if cfg!(feature = "firehose") {
        assert!(outputs.hec.len() >= 3, "log:\n{}", outputs.log);
        check("run-ticks-hec.ndjson", outputs.hec[..3].concat().as_bytes());
    }
}

#[test]
fn blanking_keeps_every_other_byte() {
    assert_eq!(
        blank_clock(
            r#"{"time":1767225600.123,"host":"h","event":{"timestamp":1767225600123,"edge":{"violation_id":"ab12"}}}"#
        ),
        r#"{"time":"<time>","host":"h","event":{"timestamp":"<timestamp>","edge":{"violation_id":"<violation_id>"}}}"#
    );
}
