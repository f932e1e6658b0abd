//! The command line as a user meets it: `run --once`, stopping on SIGTERM,
//! `status`, configuration errors, report ids across invocations.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

fn defender_edge() -> Command {
    let mut cmd = Command::new(support::bin());
    cmd.env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .env_remove("SVCUID")
        .env("AWS_IOT_THING_NAME", "cli-test-thing");
    cmd
}

fn write_config(dir: &std::path::Path, json: &str) -> std::path::PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, json).expect("write config");
    path
}

#[test]
fn run_once_prints_one_valid_report_and_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = defender_edge()
        .args(["run", "--once", "--state-dir"])
        .arg(dir.path())
        .output()
        .expect("run defender-edge");
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one NDJSON line expected, got {stdout:?}");
    let report =
        defender_edge::report::decode(lines[0].as_bytes(), defender_edge::report::Format::Json)
            .expect("the line decodes as a long-name report");
    defender_edge::report::validate(&report).expect("the report is valid");
    let status = defender_edge::status::read(dir.path()).expect("status file written");
    assert_eq!(
        status.values.get("report.built"),
        Some(&defender_edge::status::Value::Number(1))
    );
}

#[test]
fn report_ids_increase_across_invocations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut last = 0u64;
    for _ in 0..3 {
        let out = defender_edge()
            .args(["collect", "--format", "json-short", "--state-dir"])
            .arg(dir.path())
            .output()
            .expect("collect");
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report =
            defender_edge::report::decode(&out.stdout, defender_edge::report::Format::JsonShort)
                .expect("decode");
        assert!(
            report.header.report_id > last,
            "{} after {last}",
            report.header.report_id
        );
        last = report.header.report_id;
    }
}

#[test]
fn sigterm_stops_run_cleanly_and_leaves_a_status_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = defender_edge()
        .args(["run", "--state-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start run");
    // The first report is written at start; wait for its line.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("first report line");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "run did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(status.success(), "exit {status:?}; stderr: {stderr}");
    assert!(
        stderr.contains("SIGTERM"),
        "the log says why it stopped: {stderr}"
    );
    let table = defender_edge()
        .args(["status", "--state-dir"])
        .arg(dir.path())
        .output()
        .expect("status");
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("report\n") && table.contains("built"),
        "status table: {table}"
    );
}

#[test]
fn configuration_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            r#"{"report": {"formatt": "json"}}"#,
            "key `report.formatt`: unknown field `formatt`, expected one of `format`",
        ),
        (
            r#"{"report": {"intervalSeconds": 60}}"#,
            "key `report.intervalSeconds`: 60 is below Device Defender's minimum of 300 seconds",
        ),
        (
            r#"{"report": {"format": "xml"}}"#,
            "key `report.format`: unknown variant `xml`",
        ),
        (
            r#"{"report": {"maxBytes": "lots"}}"#,
            "key `report.maxBytes`: expected a whole non-negative number, found \"lots\"",
        ),
        ("{not json", "invalid configuration in"),
    ];
    for (json, expected) in cases {
        let config = write_config(dir.path(), json);
        let out = defender_edge()
            .args(["run", "--once", "--config"])
            .arg(&config)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{json}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{json}: expected {expected:?} in {stderr:?}"
        );
        assert!(
            stderr.contains(&config.display().to_string()),
            "the error names the file: {stderr}"
        );
    }
}

#[test]
fn greengrass_style_strings_are_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            r#"{{"stateDir": {:?}, "report": {{"intervalSeconds": "300.0", "maxBytes": "20000"}},
                "collect": {{"includeLoopbackTraffic": "true"}}}}"#,
            dir.path().join("state")
        ),
    );
    let out = defender_edge()
        .args(["run", "--once", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dir.path().join("state").join("status.json").exists(),
        "stateDir from the file is used"
    );
}

#[test]
fn status_without_a_run_says_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = defender_edge()
        .args(["status", "--state-dir"])
        .arg(dir.path())
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("status.json") && stderr.contains("has `defender-edge run` been started"),
        "{stderr}"
    );
}
