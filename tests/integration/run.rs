//! The `defender-edge run` binary end to end, with its real peers: under a
//! (test) Greengrass nucleus with live configuration, and against mosquitto
//! with a `kill -9` in the middle.

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::delivery::{Broker, Observer, Pki};
use crate::ipc::{SVCUID, TestNucleus};
use crate::support;

/// A `run` process whose standard error goes to a file the test can read
/// while it runs.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &OsStr)], log: std::path::PathBuf) -> Running {
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(support::bin());
        cmd.arg("run")
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
            .env_remove("SVCUID")
            .env_remove("AWS_IOT_THING_NAME")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (name, value) in env {
            cmd.env(name, value);
        }
        Running {
            child: cmd.spawn().expect("start defender-edge run"),
            log,
        }
    }

    /// `run` as a component of `nucleus`, with its IPC variables set.
    fn under(nucleus: &TestNucleus, args: &[&str], extra_env: &[(&str, &OsStr)]) -> Running {
        let mut env = vec![
            (
                "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
                nucleus.socket.as_os_str(),
            ),
            ("SVCUID", OsStr::new(SVCUID)),
        ];
        env.extend_from_slice(extra_env);
        Running::start(args, &env, nucleus.dir.path().join("run.log"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `check` holds; fails with the process log after `within`.
    fn wait_for(&mut self, what: &str, within: Duration, mut check: impl FnMut(&str) -> bool) {
        let until = Instant::now() + within;
        loop {
            let log = self.log();
            if check(&log) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("run exited ({status}) while waiting for {what}; log:\n{log}");
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this test spawned.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "run did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Device Defender reports the nucleus received for `edge-e2e`, in
/// order: their report ids.
fn published_reports(nucleus: &TestNucleus) -> Vec<u64> {
    published_reports_of(nucleus, "edge-e2e")
}

/// The Device Defender reports the nucleus received for `thing`, in order:
/// their report ids.
fn published_reports_of(nucleus: &TestNucleus, thing: &str) -> Vec<u64> {
    let topic = format!("$aws/things/{thing}/defender/metrics/json");
    nucleus
        .requests("PublishToIoTCore")
        .iter()
        .filter(|r| r["body"]["topicName"].as_str().is_some_and(|t| t == topic))
        .map(|r| {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(r["body"]["payload"].as_str().expect("payload"))
                .expect("base64 payload");
            let report: Value = serde_json::from_slice(&payload).expect("a JSON report");
            report["header"]["report_id"].as_u64().expect("report id")
        })
        .collect()
}

/// Test credentials and one endpoint (`endpoint_variable`, e.g.
/// `AWS_ENDPOINT_URL_FIREHOSE`) for the AWS SDK in `run`; no instance
/// metadata lookups, no SDK-level retries (the sinks retry themselves).
#[cfg(any(feature = "firehose", feature = "securityhub"))]
fn fake_aws<'a>(endpoint_variable: &'a str, url: &'a str) -> [(&'a str, &'a OsStr); 5] {
    [
        (endpoint_variable, OsStr::new(url)),
        ("AWS_ACCESS_KEY_ID", OsStr::new("AKIDTESTRUN")),
        ("AWS_SECRET_ACCESS_KEY", OsStr::new("secret")),
        ("AWS_EC2_METADATA_DISABLED", OsStr::new("true")),
        ("AWS_MAX_ATTEMPTS", OsStr::new("1")),
    ]
}

fn wait_nucleus(what: &str, run: &mut Running, check: impl Fn() -> bool) {
    run.wait_for(what, Duration::from_secs(20), |_| check());
}

#[test]
fn under_greengrass_run_takes_its_configuration_from_the_nucleus_and_follows_updates() {
    let state = tempfile::tempdir().expect("state dir");
    let component_configuration = json!({
        "thingName": "edge-e2e",
        "stateDir": state.path(),
        "output": {"ndjson": null},
        "report": {"intervalSeconds": "1"},
        "publish": {"deviceDefender": {"minIntervalSeconds": "1", "replyTimeoutSeconds": "5"}},
        // The recipe's access control arrives with the configuration and is
        // not one of our settings: it must be ignored, not refused.
        "accessControl": {"aws.greengrass.ipc.mqttproxy": {"p1": {"policyDescription": "x",
            "operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["*"]}}}
    });
    let nucleus = TestNucleus::start_with(false, component_configuration);
    nucleus.control(json!({"cmd": "auto_reply", "mode": "accepted"}));
    let mut run = Running::under(&nucleus, &[], &[]);

    // Start-up: configuration read, updates followed, RUNNING reported,
    // reports published and accepted.
    wait_nucleus("two reports over IPC", &mut run, || {
        published_reports(&nucleus).len() >= 2
    });
    assert_eq!(nucleus.requests("GetConfiguration").len(), 1);
    assert_eq!(nucleus.requests("SubscribeToConfigurationUpdate").len(), 1);
    let states: Vec<Value> = nucleus
        .requests("UpdateState")
        .iter()
        .map(|r| r["body"]["state"].clone())
        .collect();
    assert_eq!(states, vec![json!("RUNNING")]);

    // A rejection is logged with its error code.
    nucleus.control(json!({"cmd": "auto_reply", "mode": "rejected"}));
    run.wait_for("a logged rejection", Duration::from_secs(20), |log| {
        log.contains("InvalidPayload")
    });
    nucleus.control(json!({"cmd": "auto_reply", "mode": "accepted"}));

    // A dropped connection is survived: the client reconnects and reports
    // keep coming.
    let before = published_reports(&nucleus).len();
    nucleus.control(json!({"cmd": "drop"}));
    wait_nucleus("reports after the connection dropped", &mut run, || {
        published_reports(&nucleus).len() >= before + 2
    });

    // An invalid update is refused and the running configuration goes on.
    nucleus.control(json!({"cmd": "config_update", "key_path": ["report"],
        "value": {"intervalSeconds": "1", "formatt": "json"}}));
    run.wait_for("the refusal", Duration::from_secs(20), |log| {
        log.contains("refused configuration update") && log.contains("report.formatt")
    });
    let before = published_reports(&nucleus).len();
    wait_nucleus("reports after the refused update", &mut run, || {
        published_reports(&nucleus).len() > before
    });

    // A valid update is applied without a restart: CBOR reports from now on.
    nucleus.control(json!({"cmd": "config_update", "key_path": ["report"],
        "value": {"intervalSeconds": "1", "format": "cbor"}}));
    run.wait_for("the applied update", Duration::from_secs(20), |log| {
        log.contains("applied configuration update")
    });
    wait_nucleus("a CBOR report", &mut run, || {
        nucleus
            .requests("PublishToIoTCore")
            .iter()
            .any(|r| r["body"]["topicName"] == "$aws/things/edge-e2e/defender/metrics/cbor")
    });
    assert_eq!(nucleus.requests("GetConfiguration").len(), 3);

    // Report ids only grow, across the configuration change too.
    let ids = published_reports(&nucleus);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "report ids {ids:?}");

    run.signal(libc::SIGTERM);
    let status = run.wait();
    assert_eq!(status.code(), Some(0), "log:\n{}", run.log());
    nucleus.assert_no_violations();
}

#[test]
fn invalid_component_configuration_is_reported_as_errored() {
    let nucleus = TestNucleus::start_with(false, json!({"report": {"formatt": "json"}}));
    let mut run = Running::under(&nucleus, &[], &[]);
    let status = run.wait();
    let log = run.log();
    assert_eq!(status.code(), Some(2), "log:\n{log}");
    assert!(
        log.contains("the Greengrass component configuration") && log.contains("report.formatt"),
        "the error names the origin and the key: {log}"
    );
    let states: Vec<Value> = nucleus
        .requests("UpdateState")
        .iter()
        .map(|r| r["body"]["state"].clone())
        .collect();
    assert_eq!(states, vec![json!("ERRORED")]);
    nucleus.assert_no_violations();
}

/// Reports made while the broker is away wait in the outbox; a `kill -9`
/// loses none of them. After the restart the newest goes to Device Defender
/// and every older one is named as superseded (Device Defender takes current
/// data only), so each report is accounted for; the NDJSON output holds all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_reports_waiting_loses_none() {
    let pki = Pki::new();
    let mut broker = Broker::start(&pki, true);
    broker.stop();
    let dir = tempfile::tempdir().expect("temp dir");
    let ndjson = dir.path().join("reports.ndjson");
    let config = json!({
        "thingName": "edge-crash",
        "stateDir": dir.path().join("state"),
        "output": {"ndjson": ndjson},
        "report": {"intervalSeconds": 1},
        "publish": {
            "transport": "mqtt",
            "mqtt": serde_json::to_value(pki.mqtt(broker.port, "device", "ca")).expect("mqtt"),
            "deviceDefender": {"minIntervalSeconds": 1}
        }
    });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let config_arg = config_path.to_str().expect("utf-8 path");

    let mut first = Running::start(&["--config", config_arg], &[], dir.path().join("first.log"));
    let count_lines = || {
        std::fs::read_to_string(&ndjson)
            .unwrap_or_default()
            .lines()
            .count()
    };
    first.wait_for("three reports", Duration::from_secs(20), |_| {
        count_lines() >= 3
    });
    first.signal(libc::SIGKILL);
    first.wait();
    let made: Vec<u64> = std::fs::read_to_string(&ndjson)
        .expect("ndjson")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            v["header"]["report_id"].as_u64().expect("report id")
        })
        .collect();
    assert!(made.len() >= 3);

    broker.restart();
    let mut observer = Observer::start(
        &pki,
        broker.port,
        "$aws/things/edge-crash/defender/metrics/json",
    )
    .await;
    let mut second = Running::start(
        &["--config", config_arg, "--once", "--wait", "20"],
        &[],
        dir.path().join("second.log"),
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = second.wait();
        (status, second)
    });
    let (_, payload, _) = observer.expect_next("a report").await;
    let (status, second) = status.await.expect("join");
    let log = second.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    let report_id = |payload: &[u8]| -> u64 {
        let report: Value = serde_json::from_slice(payload).expect("JSON report");
        report["header"]["report_id"].as_u64().expect("id")
    };
    let mut published = vec![report_id(&payload)];
    while let Some((_, payload, _)) = observer.next(Duration::from_secs(2)).await {
        published.push(report_id(&payload));
    }
    let all: Vec<u64> = std::fs::read_to_string(&ndjson)
        .expect("ndjson")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("line")["header"]["report_id"]
                .as_u64()
                .expect("id")
        })
        .collect();
    assert!(all.len() > made.len(), "the second run made its own report");
    // --once exits 0 only when its own report was acknowledged.
    assert_eq!(
        published.last(),
        all.last(),
        "published {published:?}, made {all:?}"
    );
    // Every report is either published or named as superseded in the log
    // (Device Defender takes current data only): none vanished.
    for id in &all {
        assert!(
            published.contains(id) || log.contains(&format!("report_id={id}")),
            "report {id} is neither published nor accounted for as superseded; published {published:?}; log:\n{log}"
        );
    }
    assert!(
        published.windows(2).all(|w| w[0] < w[1]),
        "in order: {published:?}"
    );
}

/// SD wear: with a sample every second, `status.json` is written once
/// (the first tick), not every tick, until `stateWriteSeconds` pass; the
/// shutdown writes it with everything counted.
#[test]
fn the_status_file_is_written_once_a_minute_and_at_shutdown_not_every_tick() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let ndjson = dir.path().join("reports.ndjson");
    let state = dir.path().join("state");
    let config = json!({
        "thingName": "edge-wear",
        "stateDir": state,
        "stateWriteSeconds": 60,
        "output": {"ndjson": ndjson},
        "report": {"intervalSeconds": 1},
        "publish": {"transport": "none", "deviceDefender": {"minIntervalSeconds": 1}}
    });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let mut run = Running::start(
        &["--config", config_path.to_str().expect("utf-8 path")],
        &[],
        dir.path().join("run.log"),
    );
    let status_file = state.join("status.json");
    let mut inodes = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&ndjson)
        .unwrap_or_default()
        .lines()
        .count()
        < 4
    {
        assert!(Instant::now() < until, "no four ticks: {}", run.log());
        if let Ok(meta) = std::fs::metadata(&status_file) {
            inodes.insert(meta.ino());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        inodes.len(),
        1,
        "status.json written once in four ticks: {inodes:?}"
    );
    run.signal(libc::SIGTERM);
    assert!(run.wait().success(), "{}", run.log());
    let last = std::fs::metadata(&status_file).expect("status.json").ino();
    assert!(!inodes.contains(&last), "the shutdown wrote it");
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(&status_file).expect("read")).expect("JSON");
    assert!(status.to_string().contains("collect.samples"), "{status}");
}

/// Under Greengrass with the Firehose sink on: the report goes to Device
/// Defender over IPC and the same sample, as HEC events, to Firehose (moto),
/// with matching counts. A delivery stream that does not exist is a clear
/// error at start and Device Defender reports still go out.
#[test]
#[cfg(feature = "firehose")]
fn siem_events_go_to_firehose_beside_reports_and_a_bad_stream_stops_nothing() {
    use crate::firehose::Moto;

    let moto = Moto::start();
    moto.create_stream("siem", "siem-backup");
    for (stream, works) in [("siem", true), ("no-such-stream", false)] {
        let state = tempfile::tempdir().expect("state dir");
        let nucleus = TestNucleus::start_with(
            false,
            json!({
                "thingName": "edge-e2e",
                "stateDir": state.path(),
                "output": {"ndjson": null},
                "publish": {"firehose": {"enabled": "true", "deliveryStream": stream,
                    "region": "us-east-1", "flushIntervalMs": "100"}}
            }),
        );
        let url = moto.url();
        let mut run = Running::under(
            &nucleus,
            &["--once"],
            &fake_aws("AWS_ENDPOINT_URL_FIREHOSE", &url),
        );
        let status = run.wait();
        let log = run.log();
        assert_eq!(status.code(), Some(0), "log:\n{log}");
        let published: Vec<Value> = nucleus
            .requests("PublishToIoTCore")
            .into_iter()
            .filter(|r| r["body"]["topicName"] == "$aws/things/edge-e2e/defender/metrics/json")
            .collect();
        assert_eq!(
            published.len(),
            1,
            "one report to Device Defender; log:\n{log}"
        );
        let payload = base64::engine::general_purpose::STANDARD
            .decode(published[0]["body"]["payload"].as_str().expect("payload"))
            .expect("base64");
        let report: Value = serde_json::from_slice(&payload).expect("JSON report");
        nucleus.assert_no_violations();
        if !works {
            assert!(
                log.contains("no-such-stream does not exist"),
                "the error names the stream; log:\n{log}"
            );
            continue;
        }
        let lines = moto.delivered("siem-backup");
        let event = |name: &str| {
            lines
                .iter()
                .find(|l| l["event"]["name"] == name)
                .unwrap_or_else(|| panic!("no {name} event in {lines:#?}"))
                .clone()
        };
        let tcp = event("aws:num-listening-tcp-ports");
        assert_eq!(tcp["host"], "edge-e2e");
        assert_eq!(
            tcp["event"]["value"]["count"], report["metrics"]["listening_tcp_ports"]["total"],
            "the SIEM and Device Defender see the same sample"
        );
        assert_eq!(
            tcp["event"]["edge"]["report_id"],
            report["header"]["report_id"]
        );
    }
}

/// Local detection inside the running component: a listener opened on a port
/// the profile says must stay closed raises an alarm within seconds, on the
/// Greengrass local topic and on the IoT alarm topic; closing it clears it.
#[test]
fn an_unexpected_listener_raises_an_alarm_on_the_local_and_iot_topics() {
    let port = unused_port();
    let state = tempfile::tempdir().expect("state dir");
    let nucleus = TestNucleus::start_with(
        false,
        json!({
            "thingName": "edge-e2e",
            "stateDir": state.path(),
            "output": {"ndjson": null},
            "detection": {"intervalSeconds": "1", "perSample": ["NoRogueListener"],
                "profiles": [support::rogue_listener_profile(port, 2)]}
        }),
    );
    let mut run = Running::under(&nucleus, &[], &[]);
    run.wait_for("the pipeline", Duration::from_secs(20), |log| {
        log.contains("defender-edge running")
    });
    let alarms = |state: &str| local_alarms(&nucleus, state);
    assert!(alarms("alarm").is_empty(), "no alarm before the listener");

    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the rogue port");
    wait_nucleus("the alarm on the local topic", &mut run, || {
        !alarms("alarm").is_empty()
    });
    let alarm = alarms("alarm").remove(0);
    assert_eq!(alarm["behavior"], "RoguePortClosed");
    assert_eq!(alarm["profile"], "NoRogueListener");
    assert_eq!(alarm["thing"], "edge-e2e");
    assert!(
        alarm["offending"].to_string().contains(&port.to_string()),
        "the alarm names the port: {alarm}"
    );
    // ... and who holds it: this test's own process (issue 15 §3).
    let holder = format!("(pid {}) as root", std::process::id());
    assert!(
        alarm["processes"][format!("tcp/{port}")]
            .to_string()
            .contains(&holder),
        "the alarm names the process: {alarm}"
    );
    wait_nucleus("the alarm on the IoT topic", &mut run, || {
        nucleus
            .requests("PublishToIoTCore")
            .iter()
            .any(|r| r["body"]["topicName"] == "defender-edge/edge-e2e/alarms")
    });

    drop(listener);
    wait_nucleus("the clear", &mut run, || !alarms("clear").is_empty());
    let clear = alarms("clear").remove(0);
    assert_eq!(clear["violation_id"], alarm["violation_id"]);

    run.signal(libc::SIGTERM);
    assert_eq!(run.wait().code(), Some(0), "log:\n{}", run.log());
    nucleus.assert_no_violations();
}

/// A plugin with a directory grant loads and runs inside `run`'s async
/// runtime (WASI preopens drive futures of their own; loading must not
/// happen on an async worker).
#[test]
fn run_loads_a_plugin_with_a_directory_grant() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = crate::plugins::plugin_folder(dir.path(), &["system-metrics"]);
    let config = json!({
        "stateDir": dir.path().join("state"),
        "plugins": {"dir": plugins, "settings": {"system-metrics": {
            "config": {"procDir": "/proc"},
            "grants": {"readDirs": {"/proc": "/proc"}}}}}
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).expect("config");
    let out = Command::new(support::bin())
        .args(["run", "--once", "--config"])
        .arg(&path)
        .env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The report line, beside the agent's health line (`type: health`).
    let report: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON lines"))
        .find(|l| l.get("type").is_none())
        .expect("one JSON report");
    assert!(
        report["custom_metrics"]["memory_used_percent"].is_array(),
        "the plugin's metric is in the report: {report}"
    );
}

/// `detection.alarmFormat: device-defender`: the alarm and the clear of a
/// rogue listener reach the IoT alarm topic on a real mosquitto in the shape
/// of Device Defender's `ViolationEvent`, checked field by field (IoT API
/// reference, ViolationEvent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_reach_the_alarm_topic_in_device_defenders_shape() {
    let pki = Pki::new();
    let broker = Broker::start(&pki, false);
    let port = unused_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = support::rogue_listener_profile(port, 1);
    let config = json!({
        "thingName": "edge-dd",
        "stateDir": dir.path().join("state"),
        "output": {"ndjson": null},
        "detection": {"intervalSeconds": 1, "perSample": ["*"], "alarmFormat": "device-defender",
            "profiles": [profile]},
        "publish": {
            "transport": "mqtt",
            "mqtt": serde_json::to_value(pki.mqtt(broker.port, "device", "ca")).expect("mqtt")
        }
    });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let mut observer = Observer::start(&pki, broker.port, "defender-edge/edge-dd/alarms").await;
    let mut run = Running::start(
        &["--config", config_path.to_str().expect("utf-8 path")],
        &[],
        dir.path().join("run.log"),
    );
    run.wait_for("the pipeline", Duration::from_secs(20), |log| {
        log.contains("defender-edge running")
    });
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();

    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the rogue port");
    let check = |payload: &[u8], kind: &str| -> Value {
        let event: Value = serde_json::from_slice(payload).expect("JSON violation event");
        let keys: Vec<&str> = event
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "behavior",
                "metricValue",
                "securityProfileName",
                "thingName",
                "violationEventTime",
                "violationEventType",
                "violationId"
            ],
            "{event}"
        );
        assert_eq!(event["thingName"], "edge-dd");
        assert_eq!(event["securityProfileName"], "NoRogueListener");
        assert_eq!(
            event["behavior"],
            json!({"name": "RoguePortClosed", "metric": "aws:listening-tcp-ports",
                   "criteria": profile["behaviors"][0]["criteria"], "suppressAlerts": false})
        );
        assert_eq!(event["violationEventType"], kind);
        let id = event["violationId"].as_str().expect("violationId");
        assert!(
            (1..=128).contains(&id.len())
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "violationId {id} breaks the API's pattern"
        );
        // Epoch seconds, a number, as the API's JSON gives timestamps.
        let time = event["violationEventTime"]
            .as_u64()
            .expect("violationEventTime in seconds");
        assert!(time >= before && time < before + 120, "time {time}");
        let ports = event["metricValue"]["ports"].as_array().expect("ports");
        assert_eq!(
            ports.contains(&json!(port)),
            kind == "in-alarm",
            "metricValue {}",
            event["metricValue"]
        );
        event
    };
    let (topic, payload, _) = observer.expect_next("the in-alarm event").await;
    assert_eq!(topic, "defender-edge/edge-dd/alarms");
    let alarm = check(&payload, "in-alarm");

    drop(listener);
    let (_, payload, _) = observer.expect_next("the alarm-cleared event").await;
    let clear = check(&payload, "alarm-cleared");
    assert_eq!(clear["violationId"], alarm["violationId"]);

    run.signal(libc::SIGTERM);
    assert_eq!(run.wait().code(), Some(0), "log:\n{}", run.log());
}

/// Local detection inside the running component feeds Security Hub: with
/// Security Hub unreachable at start (moto not running yet), a listener the
/// profile forbids raises an alarm whose finding waits in the outbox and
/// arrives `ACTIVE` once moto is up; closing the listener archives it.
#[test]
#[cfg(feature = "securityhub")]
fn an_alarm_becomes_a_security_hub_finding_and_its_clear_archives_it() {
    use crate::securityhub::{Moto, findings, free_port};

    let port = unused_port();
    let hub = free_port();
    let state = tempfile::tempdir().expect("state dir");
    let nucleus = TestNucleus::start_with(
        false,
        json!({
            "thingName": "edge-e2e-hub",
            "stateDir": state.path(),
            "output": {"ndjson": null},
            "publish": {"securityHub": {"enabled": "true", "region": "us-east-1",
                "retryBaseMs": "50", "retryMaxMs": "300"}},
            "detection": {"intervalSeconds": "1", "perSample": ["*"],
                "profiles": [support::rogue_listener_profile(port, 2)]}
        }),
    );
    let url = format!("http://127.0.0.1:{hub}");
    let mut run = Running::under(&nucleus, &[], &fake_aws("AWS_ENDPOINT_URL", &url));
    run.wait_for("the pipeline", Duration::from_secs(20), |log| {
        log.contains("defender-edge running")
    });
    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the rogue port");
    run.wait_for("the alarm", Duration::from_secs(20), |log| {
        log.contains("RoguePortClosed")
    });
    // Security Hub comes up only now: the finding waited in the outbox.
    let _moto = Moto::start(hub, 0);
    let finding = |record_state: &str| {
        findings(hub)
            .into_values()
            .find(|f| f["RecordState"] == record_state)
    };
    wait_nucleus("the ACTIVE finding", &mut run, || {
        finding("ACTIVE").is_some()
    });
    let active = finding("ACTIVE").expect("finding");
    let title = active["Title"].as_str().expect("Title");
    assert!(
        title.contains("edge-e2e-hub") && title.contains("RoguePortClosed"),
        "{title}"
    );
    assert!(
        active["Resources"][0]["Details"]["Other"]["OffendingValues"]
            .as_str()
            .is_some_and(|v| v.contains(&port.to_string())),
        "{active}"
    );
    // The process behind the port, in the finding's details.
    assert!(
        active["Resources"][0]["Details"]["Other"]["Processes"]
            .as_str()
            .is_some_and(|v| v.contains(&format!("tcp/{port}: "))
                && v.contains(&format!("(pid {})", std::process::id()))),
        "{active}"
    );

    drop(listener);
    wait_nucleus("the finding archived", &mut run, || {
        finding("ARCHIVED").is_some_and(|f| f["Id"] == active["Id"])
    });
    assert_eq!(findings(hub).len(), 1, "the clear updated the same finding");
    run.signal(libc::SIGTERM);
    assert_eq!(run.wait().code(), Some(0), "log:\n{}", run.log());
}

/// A TCP port nothing listens on (until the test binds it as the rogue
/// listener).
fn unused_port() -> u16 {
    let probe = std::net::TcpListener::bind("0.0.0.0:0").expect("free port");
    probe.local_addr().expect("addr").port()
}

/// The alarm events in `state` (`alarm`, `clear`, `invalidated`) the nucleus
/// received on the local topic, decoded.
fn local_alarms(nucleus: &TestNucleus, state: &str) -> Vec<Value> {
    nucleus
        .requests("PublishToTopic")
        .iter()
        .filter(|r| r["body"]["topic"] == "defender-edge/alarms")
        .map(|r| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(
                    r["body"]["publishMessage"]["binaryMessage"]["message"]
                        .as_str()
                        .expect("binary message"),
                )
                .expect("base64");
            serde_json::from_slice::<Value>(&bytes).expect("alarm JSON")
        })
        .filter(|a| a["state"] == state)
        .collect()
}

/// The health events the nucleus received on `topic`, decoded.
fn health_events(nucleus: &TestNucleus, topic: &str) -> Vec<Value> {
    nucleus
        .requests("PublishToIoTCore")
        .iter()
        .filter(|r| r["body"]["topicName"] == topic)
        .map(|r| {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(r["body"]["payload"].as_str().expect("payload"))
                .expect("base64 payload");
            serde_json::from_slice(&payload).expect("a JSON health event")
        })
        .collect()
}

/// Issue 16 §1: once per report period the agent's own health goes to the
/// IoT health topic; a plugin that cannot load makes it `degraded`, naming
/// the plugin, on the topic, in the event output and in `status`. With
/// `health.topic` null nothing is published.
#[test]
fn the_agent_health_is_published_each_period_and_names_a_broken_plugin() {
    for topic in [Some("defender-edge/edge-health/health"), None] {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).expect("plugins dir");
        std::fs::write(plugins.join("broken.wasm"), b"not a component").expect("plugin");
        let events = dir.path().join("events.ndjson");
        let state = dir.path().join("state");
        let nucleus = TestNucleus::start_with(
            false,
            json!({
                "thingName": "edge-health",
                "stateDir": state,
                "output": {"ndjson": null, "events": events},
                "report": {"intervalSeconds": "1"},
                "plugins": {"dir": plugins},
                "health": {"topic": topic.map(|_| "defender-edge/{thing}/health")},
                "publish": {"deviceDefender": {"minIntervalSeconds": "1"}}
            }),
        );
        let mut run = Running::under(&nucleus, &[], &[]);
        let health_topic = "defender-edge/edge-health/health";
        match topic {
            Some(topic) => {
                wait_nucleus("three health events", &mut run, || {
                    health_events(&nucleus, topic).len() >= 3
                });
                for event in health_events(&nucleus, topic) {
                    assert_eq!(event["name"], "edge:health", "{event}");
                    assert_eq!(event["thing"], "edge-health", "{event}");
                    let health = &event["health"];
                    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"), "{event}");
                    assert_eq!(health["state"], "degraded", "{event}");
                    let problems = health["problems"].to_string();
                    assert!(problems.contains("plugin.broken.state: failed"), "{event}");
                    assert!(
                        health["status"]["collect"]["samples"].as_u64() >= Some(1),
                        "{event}"
                    );
                }
            }
            None => {
                // Reports flow, health stays off the IoT topics.
                wait_nucleus("three reports", &mut run, || {
                    nucleus
                        .requests("PublishToIoTCore")
                        .iter()
                        .filter(|r| {
                            r["body"]["topicName"]
                                == "$aws/things/edge-health/defender/metrics/json"
                        })
                        .count()
                        >= 3
                });
                assert!(health_events(&nucleus, health_topic).is_empty());
            }
        }
        run.signal(libc::SIGTERM);
        assert!(run.wait().success(), "{}", run.log());
        // The event output got the health when its problems changed, not
        // every period: the first names the load error and the failed state,
        // every later one only the failed state.
        let lines: Vec<Value> = std::fs::read_to_string(&events)
            .expect("events file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .filter(|l: &Value| l["type"] == "health")
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0]["health"]["problems"][0]
                .as_str()
                .is_some_and(|p| p.starts_with("plugin.broken.load_errors: +1")),
            "{lines:?}"
        );
        assert_eq!(
            lines[1]["health"]["problems"].as_array().map(Vec::len),
            Some(1),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| l["health"]["state"] == "degraded"));
        let status = Command::new(support::bin())
            .args(["status", "--state-dir"])
            .arg(&state)
            .output()
            .expect("run status");
        let shown = String::from_utf8_lossy(&status.stdout);
        assert!(
            shown.contains("degraded: ") && shown.contains("plugin.broken.state: failed"),
            "{shown}"
        );
    }
}

/// Issue 19 item 5, end to end: a configuration update that removes a
/// behavior with an open alarm closes that alarm with `invalidated` (its
/// violation id, on the local topic; `alarm-invalidated` in Device
/// Defender's shape), instead of leaving it open in every consumer.
#[test]
fn a_behavior_removed_by_a_configuration_update_closes_its_open_alarm() {
    let port = unused_port();
    let state = tempfile::tempdir().expect("state dir");
    let nucleus = TestNucleus::start_with(
        false,
        json!({
            "thingName": "edge-inv",
            "stateDir": state.path(),
            "output": {"ndjson": null},
            "detection": {"intervalSeconds": "1", "perSample": ["*"],
                "profiles": [support::rogue_listener_profile(port, 2)]}
        }),
    );
    let mut run = Running::under(&nucleus, &[], &[]);
    let events = |state: &str| local_alarms(&nucleus, state);
    let _listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the rogue port");
    wait_nucleus("the alarm", &mut run, || !events("alarm").is_empty());
    let alarm = events("alarm").remove(0);

    // The deployment replaces the profile: the behavior is gone while the
    // listener still violates it.
    let mut other = support::rogue_listener_profile(port, 2);
    other["behaviors"] = json!([{
        "name": "FewConnections",
        "metric": "aws:num-established-tcp-connections",
        "criteria": {"comparisonOperator": "less-than", "value": {"count": 100000},
            "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}
    }]);
    nucleus.control(json!({"cmd": "config_update", "key_path": ["detection"],
        "value": {"intervalSeconds": "1", "perSample": ["*"], "profiles": [other]}}));
    wait_nucleus("the invalidation", &mut run, || {
        !events("invalidated").is_empty()
    });
    let closed = events("invalidated").remove(0);
    assert_eq!(closed["violation_id"], alarm["violation_id"], "{closed}");
    assert_eq!(closed["behavior"], "RoguePortClosed", "{closed}");
    assert!(
        events("clear").is_empty(),
        "closed as invalidated, not cleared"
    );
    assert_eq!(events("alarm").len(), 1, "{:?}", events("alarm"));

    run.signal(libc::SIGTERM);
    assert_eq!(run.wait().code(), Some(0), "log:\n{}", run.log());
    nucleus.assert_no_violations();
}

/// Issue 15 §3: an alarm raised while the broker is down is not lost: it
/// waits in the alarm outbox and reaches the IoT alarm topic once the broker
/// is back (it used to be one QoS 1 attempt, reaching only the SIEM path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_raised_while_the_broker_is_down_reaches_the_topic_when_it_is_back() {
    let pki = Pki::new();
    let mut broker = Broker::start(&pki, true);
    let port = unused_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = json!({
        "thingName": "edge-durable",
        "stateDir": dir.path().join("state"),
        "output": {"ndjson": null},
        "detection": {"intervalSeconds": 1, "perSample": ["*"],
            "profiles": [support::rogue_listener_profile(port, 1)]},
        "publish": {
            "transport": "mqtt",
            "mqtt": serde_json::to_value(pki.mqtt(broker.port, "device", "ca")).expect("mqtt")
        }
    });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    // A persistent session: the observer gets what was published while it
    // was away with the broker.
    let mut observer =
        Observer::start(&pki, broker.port, "defender-edge/edge-durable/alarms").await;
    let mut run = Running::start(
        &["--config", config_path.to_str().expect("utf-8 path")],
        &[],
        dir.path().join("run.log"),
    );
    run.wait_for("the pipeline", Duration::from_secs(20), |log| {
        log.contains("defender-edge running")
    });
    broker.stop();
    let _listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the rogue port");
    run.wait_for("the alarm, not published", Duration::from_secs(20), |log| {
        log.contains("RoguePortClosed") && log.contains("they wait in the alarm outbox")
    });
    broker.restart();
    let (_, payload, _) = observer.expect_next("the alarm after the outage").await;
    let alarm: Value = serde_json::from_slice(&payload).expect("alarm JSON");
    assert_eq!(alarm["state"], "alarm", "{alarm}");
    assert_eq!(alarm["behavior"], "RoguePortClosed", "{alarm}");
    run.signal(libc::SIGTERM);
    assert!(run.wait().success(), "{}", run.log());
}

/// How the state directory's disk fails under a running `run`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DiskFault {
    /// `ENOSPC`: a file fills the file system.
    Full,
    /// `EROFS`: `mount -o remount,ro`, as the kernel does to a failing card.
    ReadOnly,
}

/// Issue 12 item 1: `run` with its state directory on a small tmpfs that
/// fills up or turns read-only while reports come every second. Before, the
/// first report the outbox could not store stopped `run` (exit 1, ERRORED).
/// Now it keeps sampling and building reports (the NDJSON output, kept on
/// another disk as standard output would be, keeps growing), holds the
/// reports in memory, says so once and in the health event (the status
/// registry: `report.held_in_memory`, `outbox.storage`), and once the disk
/// takes writes again stores the held reports in order and publishes the
/// newest (older ones superseded, as Device Defender takes current data
/// only): no report vanishes, and `status` shows what happened.
fn run_rides_out_a_disk_fault(fault: DiskFault) {
    let fs = support::SmallFs::tmpfs(1024 * 1024);
    let state = fs.path().join("state");
    let out = tempfile::tempdir().expect("output dir");
    let reports = out.path().join("reports.ndjson");
    // On a full disk the event output is on it too (it fails and recovers
    // with it). A file held open for appending keeps `mount -o remount,ro`
    // from succeeding (EBUSY), as for any writer, so the read-only case
    // keeps it on the other disk.
    let events = match fault {
        DiskFault::Full => fs.path().join("events.ndjson"),
        DiskFault::ReadOnly => out.path().join("events.ndjson"),
    };
    let thing = "edge-disk";
    let health_topic = "defender-edge/edge-disk/health";
    let nucleus = TestNucleus::start_with(
        false,
        json!({
            "thingName": thing,
            "stateDir": state,
            "stateWriteSeconds": 1,
            "output": {"ndjson": reports, "events": events},
            "report": {"intervalSeconds": "1"},
            "publish": {"deviceDefender": {"minIntervalSeconds": "1", "replyTimeoutSeconds": "5"}}
        }),
    );
    nucleus.control(json!({"cmd": "auto_reply", "mode": "accepted"}));
    let mut run = Running::under(&nucleus, &[], &[]);
    let made = || -> Vec<u64> {
        std::fs::read_to_string(&reports)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("a JSON line")["header"]["report_id"]
                    .as_u64()
                    .expect("report id")
            })
            .collect()
    };
    wait_nucleus("two reports published", &mut run, || {
        published_reports_of(&nucleus, thing).len() >= 2
    });

    let filler = match fault {
        DiskFault::Full => Some(fs.fill("filler")),
        DiskFault::ReadOnly => {
            fs.remount_read_only();
            None
        }
    };
    let before = made().len();
    let held = |e: &Value| e["health"]["status"]["report"]["held_in_memory"].as_u64();
    wait_nucleus("two reports held in memory", &mut run, || {
        health_events(&nucleus, health_topic)
            .iter()
            .any(|e| held(e) >= Some(2))
    });
    let during = made();
    assert!(
        during.len() >= before + 2,
        "reports kept coming: {before} then {}",
        during.len()
    );
    let event = health_events(&nucleus, health_topic)
        .into_iter()
        .find(|e| held(e) >= Some(2))
        .expect("the health event");
    let condition = match fault {
        DiskFault::Full => "disk full",
        DiskFault::ReadOnly => "read-only",
    };
    assert_eq!(event["health"]["state"], "degraded", "{event}");
    assert_eq!(
        event["health"]["status"]["outbox"]["storage"], condition,
        "{event}"
    );
    assert!(
        event["health"]["status"]["state"]["report_id.write_failures"].as_u64() >= Some(1),
        "report ids come from memory: {event}"
    );
    // Said once per change of state, not once per tick.
    let log = run.log();
    assert_eq!(log.matches("holding them in memory").count(), 1, "{log}");
    let files: &[&str] = match fault {
        DiskFault::Full => &["report-id", "status.json", "output.events"],
        DiskFault::ReadOnly => &["report-id", "status.json"],
    };
    for file in files {
        assert_eq!(
            log.lines()
                .filter(|l| l.contains("cannot write to the disk")
                    && (l.contains(&format!("file=\"{file}\""))
                        || l.contains(&format!("file={file} "))))
                .count(),
            1,
            "{file}: {log}"
        );
    }

    match (fault, filler) {
        (DiskFault::Full, Some(filler)) => std::fs::remove_file(filler).expect("free the disk"),
        _ => fs.remount_writable(),
    }
    run.wait_for("the held reports stored", Duration::from_secs(20), |log| {
        log.contains("the reports held in memory are stored")
    });
    let newest_held = *during.last().expect("a report");
    wait_nucleus("a report made during the fault published", &mut run, || {
        published_reports_of(&nucleus, thing)
            .iter()
            .any(|id| *id >= newest_held)
    });
    run.signal(libc::SIGTERM);
    assert!(run.wait().success(), "{}", run.log());

    // Every report made before the disk came back was published or
    // superseded by a newer one (logged with its id): none vanished.
    let log = run.log();
    let published = published_reports_of(&nucleus, thing);
    for id in &during {
        assert!(
            published.contains(id)
                || log
                    .lines()
                    .any(|l| l.contains("superseded") && l.contains(&id.to_string())),
            "report {id} neither published nor superseded; published {published:?}; log:\n{log}"
        );
    }
    assert!(
        published.windows(2).all(|w| w[0] < w[1]),
        "in order: {published:?}"
    );
    let status = Command::new(support::bin())
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .expect("run status");
    let shown = String::from_utf8_lossy(&status.stdout);
    for line in ["stored_late", "held_in_memory", "report_id.storage"] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    let status: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("status.json")).expect("status.json"),
    )
    .expect("JSON");
    let values = &status["values"];
    assert!(values["report.stored_late"].as_u64() >= Some(2), "{status}");
    assert_eq!(values["report.held_in_memory"], 0, "{status}");
    assert_eq!(values["report.dropped_unstored"], Value::Null, "{status}");
    assert_eq!(values["outbox.storage"], "ok", "{status}");
    assert_eq!(values["state.report_id.storage"], "ok", "{status}");
    if fault == DiskFault::Full {
        assert_eq!(values["output.events.storage"], "ok", "{status}");
    }
}

#[test]
fn run_keeps_sampling_on_a_full_state_disk_and_stores_the_held_reports_after() {
    run_rides_out_a_disk_fault(DiskFault::Full);
}

#[test]
fn run_keeps_sampling_on_a_read_only_state_disk_and_stores_the_held_reports_after() {
    run_rides_out_a_disk_fault(DiskFault::ReadOnly);
}
