//! Local detection against the real /proc: a listener the profile does not
//! allow, and real loopback traffic judged against absolute and statistical
//! thresholds.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;

use defender_edge::collect::{CollectConfig, Collector, Counters};
use defender_edge::detect::{AlarmEvent, AlarmState, DetectionConfig, Detector};
use defender_edge::sample::Sample;
use defender_edge::state::now_ms;
use defender_edge::status::Status;
use serde_json::{Value, json};

use crate::support;

/// A report interval: the traffic tests advance the detector's clock by one
/// per collect, so each real delta stands for a whole `durationSeconds`
/// window. The traffic is real; only the clock is compressed.
const PERIOD_MS: u64 = 300_000;

const MIB: u64 = 1024 * 1024;

/// Held by the tests that push bulk loopback traffic, so one's burst never
/// lands in the other's quiet window. Other modules' loopback traffic is
/// small (about a MiB) next to these thresholds.
static BULK_LOOPBACK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bulk_loopback() -> std::sync::MutexGuard<'static, ()> {
    BULK_LOOPBACK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn detector(dir: &Path, profile: Value, min_datapoints: usize) -> Detector {
    let config = DetectionConfig {
        profiles: vec![profile],
        statistics_min_datapoints: min_datapoints,
        ..DetectionConfig::default()
    };
    let detector = Detector::new(
        &config,
        dir,
        &Status::new(),
        std::time::Duration::from_secs(300),
    )
    .expect("profile loads");
    assert!(detector.is_active());
    detector
}

fn of<'a>(events: &'a [AlarmEvent], behavior: &str) -> Vec<&'a AlarmEvent> {
    events.iter().filter(|e| e.behavior == behavior).collect()
}

#[test]
fn fixture_profiles_load_through_the_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let profiles = support::fixture("detect/profiles");
    let config = DetectionConfig {
        profile_paths: vec![
            profiles.join("data-exfiltration-check.json"),
            profiles.join("device-rule-baseline.json"),
        ],
        ..DetectionConfig::default()
    };
    let status = Status::new();
    let detector = Detector::new(
        &config,
        dir.path(),
        &status,
        std::time::Duration::from_secs(300),
    )
    .expect("fixtures load unchanged");
    assert!(detector.is_active());
    assert_eq!(status.number("detect.profiles"), 2);
    assert_eq!(status.number("detect.behaviors"), 5);
    assert_eq!(status.number("detect.behaviors_skipped"), 1);
}

#[test]
fn an_unexpected_listener_alarms_and_clears() {
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = json!({"securityProfileName": "PortAllowlist", "behaviors": [{
        "name": "OnlySsh", "metric": "aws:listening-tcp-ports",
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]},
                     "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 2}}]});
    let mut detector = detector(dir.path(), profile, 1);
    let collector = Collector::new(&CollectConfig::default());

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Other tests open and close listeners while this one runs, so the
    // sample keeps only the ports this test controls (22 and its own); the
    // entries themselves are what the collector read from /proc.
    let sample = |collector: &Collector| -> Sample {
        let mut s = collector.sample("detect-test", now_ms(), None).sample;
        s.listening_tcp_ports
            .retain(|p| p.port == 22 || p.port == port);
        s
    };

    let mut raised = None;
    for _ in 0..2 {
        let s = sample(&collector);
        assert!(
            s.listening_tcp_ports.iter().any(|p| p.port == port),
            "the collector did not see the listener on {port}"
        );
        let events = detector.evaluate_device(&s, now_ms(), true);
        if let Some(event) = events.into_iter().next() {
            raised = Some(event);
            break;
        }
    }
    let raised = raised.expect("an alarm within two evaluations");
    assert_eq!(raised.state, AlarmState::Alarm);
    assert_eq!(raised.offending, Some(json!({"ports": [port]})));
    assert_eq!(raised.thing, "detect-test");
    assert_eq!(raised.to_alert().source, "detect/PortAllowlist");

    drop(listener);
    let s = sample(&collector);
    assert!(s.listening_tcp_ports.iter().all(|p| p.port != port));
    assert!(
        detector.evaluate_device(&s, now_ms(), true).is_empty(),
        "one conforming datapoint is not enough to clear"
    );
    let cleared = detector.evaluate_device(&sample(&collector), now_ms(), true);
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!(cleared[0].state, AlarmState::Clear);
    assert_eq!(cleared[0].violation_id, raised.violation_id);
}

/// Sends `bytes` through a loopback TCP connection and waits until the
/// reader has them all.
fn push_loopback(bytes: u64) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => panic!("read: {e}"),
            }
        }
        total
    });
    let mut client = TcpStream::connect(addr).expect("connect");
    let chunk = vec![0x5au8; 1 << 20];
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        client.write_all(&chunk[..n]).expect("write");
        sent += n as u64;
    }
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert_eq!(reader.join().expect("reader"), bytes);
}

/// Collects from the real /proc with loopback traffic counted, each sample's
/// delta against the previous one.
struct Traffic {
    collector: Collector,
    counters: Option<Counters>,
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            collector: Collector::new(&CollectConfig {
                include_loopback_traffic: true,
                ..CollectConfig::default()
            }),
            counters: None,
        }
    }

    fn sample(&mut self) -> Sample {
        let collected = self
            .collector
            .sample("detect-test", now_ms(), self.counters.as_ref());
        self.counters = Some(collected.counters);
        collected.sample
    }
}

#[test]
fn loopback_traffic_past_a_threshold_alarms() {
    let _bulk = bulk_loopback();
    let dir = tempfile::tempdir().expect("temp dir");
    // Normal is below 32 MiB per 300 s for one, above it for the other (the
    // criteria describe normal behaviour, as in Device Defender).
    let profile = json!({"securityProfileName": "Traffic", "behaviors": [
        {"name": "AtMost32MiB", "metric": "aws:all-bytes-out", "criteria": {
            "comparisonOperator": "less-than", "value": {"count": 32 * MIB}, "durationSeconds": 300}},
        {"name": "Above32MiB", "metric": "aws:all-bytes-out", "criteria": {
            "comparisonOperator": "greater-than", "value": {"count": 32 * MIB}, "durationSeconds": 300}}
    ]});
    let mut detector = detector(dir.path(), profile, 1);
    let mut traffic = Traffic::new();
    traffic.sample();
    let mut t = 0;
    let mut step = |detector: &mut Detector, traffic: &mut Traffic| {
        t += PERIOD_MS;
        let s = traffic.sample();
        assert!(s.network_stats.is_some(), "no traffic delta from /proc");
        detector.evaluate_device(&s, t, true)
    };

    // The first delta only opens the window.
    assert!(step(&mut detector, &mut traffic).is_empty());
    // Quiet: less than 32 MiB, so only the "above" behavior is violated.
    let quiet = step(&mut detector, &mut traffic);
    assert!(of(&quiet, "AtMost32MiB").is_empty(), "{quiet:?}");
    assert_eq!(of(&quiet, "Above32MiB")[0].state, AlarmState::Alarm);

    push_loopback(64 * MIB);
    let burst = step(&mut detector, &mut traffic);
    let at_most = of(&burst, "AtMost32MiB");
    assert_eq!(at_most.len(), 1, "{burst:?}");
    assert_eq!(at_most[0].state, AlarmState::Alarm);
    let sent = at_most[0].value["count"].as_u64().expect("count");
    assert!(sent >= 64 * MIB, "bytes out {sent}");
    assert_eq!(of(&burst, "Above32MiB")[0].state, AlarmState::Clear);

    // The next window is quiet again.
    let after = step(&mut detector, &mut traffic);
    assert_eq!(of(&after, "AtMost32MiB")[0].state, AlarmState::Clear);
    assert_eq!(of(&after, "Above32MiB")[0].state, AlarmState::Alarm);
}

#[test]
fn a_statistical_threshold_learned_from_quiet_traffic_catches_a_burst() {
    let _bulk = bulk_loopback();
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = json!({"securityProfileName": "Exfiltration", "behaviors": [
        {"name": "BytesOutAboveBaseline", "metric": "aws:all-bytes-out", "criteria": {
            "comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p99.99"},
            "durationSeconds": 300, "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}}
    ]});
    let min_datapoints = 5;
    let mut detector = detector(dir.path(), profile.clone(), min_datapoints);
    let mut traffic = Traffic::new();
    traffic.sample();
    // One sample opens the window, then each quiet one closes a period of
    // the baseline. Nothing is judged before the baseline is complete.
    for i in 0..=min_datapoints as u64 {
        let events = detector.evaluate_device(&traffic.sample(), i * PERIOD_MS, true);
        assert!(events.is_empty(), "judged while learning: {events:?}");
    }
    push_loopback(256 * MIB);
    let burst = detector.evaluate_device(
        &traffic.sample(),
        (min_datapoints as u64 + 1) * PERIOD_MS,
        true,
    );
    assert_eq!(burst.len(), 1, "{burst:?}");
    let event = &burst[0];
    assert_eq!(event.state, AlarmState::Alarm);
    let value = event.value["count"].as_u64().expect("count");
    let threshold = event.threshold.expect("threshold");
    assert!(value >= 256 * MIB, "bytes out {value}");
    assert!(
        threshold < value as f64 / 2.0,
        "baseline p99.99 {threshold}"
    );

    // The baseline survives a restart.
    detector.save(0, true).expect("save");
    // The same profile: a changed one would invalidate the open alarm
    // (DETECTION.md section 8).
    let mut restarted = self::detector(dir.path(), profile, min_datapoints);
    // Its first sample only opens the traffic window; the second is quiet,
    // judged at once against the restored baseline, and clears the alarm
    // raised before the restart under its original id.
    let t = (min_datapoints as u64 + 2) * PERIOD_MS;
    assert!(
        restarted
            .evaluate_device(&traffic.sample(), t, true)
            .is_empty()
    );
    let quiet = restarted.evaluate_device(&traffic.sample(), t + PERIOD_MS, true);
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_eq!(quiet[0].state, AlarmState::Clear);
    assert_eq!(quiet[0].violation_id, event.violation_id);
}

// ------------------------------------------------- defender-edge baseline --

/// The binary, away from any Greengrass nucleus.
fn defender_edge() -> std::process::Command {
    let mut cmd = std::process::Command::new(support::bin());
    cmd.env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .env_remove("SVCUID")
        .env_remove("AWS_IOT_THING_NAME");
    cmd
}

/// A proc tree like the captured fixture, whose device holds `connections`
/// established TCP connections (and one listener).
fn proc_with_connections(dir: &Path, name: &str, connections: usize) -> std::path::PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("create proc dir");
        for entry in std::fs::read_dir(from).expect("read fixture") {
            let path = entry.expect("entry").path();
            let target = to.join(path.file_name().expect("name"));
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).expect("copy fixture file");
            }
        }
    }
    let root = dir.join(name);
    copy(&support::fixture("proc/captured"), &root);
    let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    let mut tcp = String::from(header);
    tcp.push_str("   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1000 1 0000000000000000 100 0 0 10 0\n");
    for i in 0..connections {
        tcp.push_str(&format!(
            "  {:3}: 020200C0:{:04X} 507100CB:01BB 01 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 20 4 1 58 -1\n",
            i + 1,
            40_000 + i,
            2_000 + i
        ));
    }
    std::fs::write(root.join("net/tcp"), tcp).expect("write net/tcp");
    std::fs::write(root.join("net/tcp6"), header).expect("write net/tcp6");
    root
}

fn succeeded(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `collect` of a device with `connections` connections, judged against the
/// profiles of `config` (if any); returns its stderr, where alarms are logged.
fn collect_device(
    dir: &Path,
    thing: &str,
    connections: usize,
    config: Option<&Path>,
) -> (String, String) {
    let proc = proc_with_connections(&dir.join("proc"), thing, connections);
    let mut cmd = defender_edge();
    cmd.arg("collect")
        .arg("--proc-root")
        .arg(&proc)
        .args(["--thing", thing, "--state-dir"])
        .arg(dir.join("state").join(thing));
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd.output().expect("run collect");
    let stderr = succeeded(&out, "collect");
    (
        String::from_utf8(out.stdout).expect("report is UTF-8"),
        stderr,
    )
}

const FLEET_PROFILE: &str = r#"{"securityProfileName": "FleetConnections", "behaviors": [
    {"name": "ConnectionsLikeTheFleet", "metric": "aws:num-established-tcp-connections",
     "criteria": {"comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"},
                  "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}},
    {"name": "NoTelnet", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "not-in-port-set", "value": {"ports": [23]}}}]}"#;

/// The whole path on the real binary: ten devices' reports as `collect`
/// prints them (1 to 10 connections, two reports each), `baseline` over
/// their files, and the written profile deployed inline as Greengrass would
/// (`detection.profiles`): a device above the fleet's p90 alarms at its
/// first report, one at p90 does not, where the statistical profile would
/// still be learning each device's own history.
#[test]
fn baseline_from_collect_reports_alarms_a_device_above_the_fleet_p90() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(fleet.join("2026/12/03")).expect("fleet dir");
    for n in 1..=10 {
        let thing = format!("edge-{n:02}");
        let mut reports = String::new();
        for _ in 0..2 {
            reports.push_str(&collect_device(dir.path(), &thing, n, None).0);
        }
        // A nested folder, as an S3 prefix synced to disk.
        let folder = if n % 2 == 0 {
            fleet.join("2026/12/03")
        } else {
            fleet.clone()
        };
        std::fs::write(folder.join(format!("{thing}.ndjson")), reports).expect("write reports");
    }
    let profile = dir.path().join("profile.json");
    std::fs::write(&profile, FLEET_PROFILE).expect("write profile");
    let written = dir.path().join("fleet-profile.json");
    let out = defender_edge()
        .args(["baseline", "--profile"])
        .arg(&profile)
        .arg("--events")
        .arg(&fleet)
        .arg("-o")
        .arg(&written)
        .output()
        .expect("run baseline");
    let stderr = succeeded(&out, "baseline");
    // 1,1,2,2,...,10,10: p90 lies a tenth of the way from 9 to 10.
    assert!(
        stderr.contains("ConnectionsLikeTheFleet (aws:num-established-tcp-connections): p90 of 20 datapoints from 10 devices = 9.1; written as less-than-equals {\"count\":9}"),
        "{stderr}"
    );
    let document: Value =
        serde_json::from_slice(&std::fs::read(&written).expect("profile written")).expect("JSON");
    assert_eq!(
        document["behaviors"][0]["criteria"],
        json!({"comparisonOperator": "less-than-equals", "value": {"count": 9},
               "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1})
    );
    let original: Value = serde_json::from_str(FLEET_PROFILE).expect("JSON");
    assert_eq!(document["behaviors"][1], original["behaviors"][1]);

    // Deployed as Greengrass would: inline, under detection.profiles.
    let deploy = |profile: &Value, name: &str| {
        let path = dir.path().join(name);
        let config = json!({"detection": {"profiles": [profile]}});
        std::fs::write(&path, config.to_string()).expect("write config");
        path
    };
    let fleet_config = deploy(&document, "fleet-config.json");
    let check = defender_edge()
        .args(["config", "check", "--config"])
        .arg(&fleet_config)
        .output()
        .expect("config check");
    succeeded(&check, "config check");
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .contains("ok  security profiles: 1 (2 behaviors judged on the device, 0 skipped)"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let alarmed = |stderr: &str| {
        stderr.lines().any(|l| {
            l.contains("detection")
                && l.contains("\"state\":\"alarm\"")
                && l.contains("ConnectionsLikeTheFleet")
        })
    };
    let (_, outlier) = collect_device(dir.path(), "edge-outlier", 10, Some(fleet_config.as_path()));
    assert!(
        alarmed(&outlier),
        "10 connections are above the fleet's p90:\n{outlier}"
    );
    let (_, usual) = collect_device(dir.path(), "edge-usual", 9, Some(fleet_config.as_path()));
    assert!(
        !alarmed(&usual),
        "9 connections are at the fleet's p90:\n{usual}"
    );
    let statistical_config = deploy(&original, "statistical-config.json");
    let (_, learning) = collect_device(
        dir.path(),
        "edge-new",
        10,
        Some(statistical_config.as_path()),
    );
    assert!(
        !alarmed(&learning),
        "the device's own baseline is still learning:\n{learning}"
    );
}

/// HEC events as the Firehose sink writes them (the library's own encoder),
/// piped to `baseline` on standard input; the written profile in the
/// library detector alarms on a device whose traffic is above the fleet's
/// p90 at its first report period.
#[test]
fn baseline_from_hec_events_alarms_traffic_above_the_fleet_p90() {
    use defender_edge::publish::firehose::events::{EventOptions, write_sample};
    use defender_edge::sample::{CustomMetricValue, NetworkStats};

    let traffic = |bytes_out| {
        Some(NetworkStats {
            bytes_in: 0,
            bytes_out,
            packets_in: 0,
            packets_out: 0,
        })
    };
    let mut events = Vec::new();
    for d in 0..20u64 {
        for s in 0..3u64 {
            let id = 1_767_225_600_000 + s * 300_000 + d;
            let sample = Sample {
                thing: format!("hec-{d:02}"),
                timestamp_ms: id,
                network_stats: traffic((d * 3 + s + 1) * 1000),
                custom_metrics: [(
                    "queue_depth".to_owned(),
                    CustomMetricValue::Number(d as f64),
                )]
                .into(),
                ..Sample::default()
            };
            write_sample(
                &sample,
                id,
                &EventOptions::default(),
                usize::MAX,
                &mut events,
                |_, _| {},
            );
        }
    }
    let profile_json = json!({"securityProfileName": "FleetTraffic", "behaviors": [
        {"name": "BytesOutLikeTheFleet", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less-than-equals", "durationSeconds": 300,
                      "statisticalThreshold": {"statistic": "p90"}}},
        {"name": "QueueLikeTheFleet", "metric": "queue_depth",
         "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p50"}}}]});
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = dir.path().join("profile.json");
    std::fs::write(&profile, profile_json.to_string()).expect("write profile");
    let mut child = defender_edge()
        .args(["baseline", "--profile"])
        .arg(&profile)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start baseline");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&events)
        .expect("write events");
    let out = child.wait_with_output().expect("baseline");
    let stderr = succeeded(&out, "baseline");
    // 1000, 2000, ..., 60000 bytes: p90 is 54100.
    assert!(
        stderr.contains("BytesOutLikeTheFleet (aws:all-bytes-out): p90 of 60 datapoints from 20 devices = 54100;"),
        "{stderr}"
    );
    let written: Value = serde_json::from_slice(&out.stdout).expect("profile on stdout");
    assert_eq!(
        written["behaviors"][0]["criteria"]["value"],
        json!({"count": 54100})
    );
    assert_eq!(
        written["behaviors"][1]["criteria"]["value"],
        json!({"number": 9.5})
    );

    let judge = |profile: &Value, bytes_out| {
        let state = tempfile::tempdir().expect("temp dir");
        let mut detector = detector(state.path(), profile.clone(), 36);
        let sample = |bytes_out| Sample {
            thing: "hec-new".to_owned(),
            network_stats: traffic(bytes_out),
            ..Sample::default()
        };
        // The first delta after a start is not judged (its span is unknown).
        assert!(detector.evaluate_device(&sample(0), 0, true).is_empty());
        detector.evaluate_device(&sample(bytes_out), PERIOD_MS, true)
    };
    let above = judge(&written, 60_000);
    assert_eq!(above.len(), 1, "{above:?}");
    assert_eq!(above[0].state, AlarmState::Alarm);
    assert_eq!(above[0].behavior, "BytesOutLikeTheFleet");
    assert!(judge(&written, 54_100).is_empty(), "at p90 is normal");
    assert!(
        judge(&profile_json, 60_000).is_empty(),
        "the device's own baseline is still learning"
    );
}

/// Bad input: one message naming the file, the line and what is wrong, and
/// exit status 2.
#[test]
fn baseline_refuses_bad_input_with_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = dir.path().join("profile.json");
    std::fs::write(&profile, FLEET_PROFILE).expect("write profile");
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write events");
        path
    };
    let event = |name: &str| {
        json!({"host": "edge-01", "time": 1.0, "event": {"name": name, "thing": "edge-01",
               "value": {"count": 3}, "timestamp": 1000, "edge": {"report_id": 1000}}})
        .to_string()
    };
    let unknown = file(
        "unknown.ndjson",
        format!(
            "{}\n{}\n",
            event("aws:num-established-tcp-connections"),
            event("aws:num-established-udp-connections")
        )
        .as_bytes(),
    );
    let empty = file("empty.ndjson", b"\n");
    let gzip = file("events.ndjson.gz", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    let other = file("other.ndjson", event("aws:listening-tcp-ports").as_bytes());
    let missing = dir.path().join("missing.ndjson");
    let unknown_text = unknown.display().to_string();
    let cases: Vec<(Vec<std::path::PathBuf>, String)> = vec![
        (
            vec![unknown.clone()],
            format!(
                "defender-edge: {unknown_text}:2: unknown Device Defender metric `aws:num-established-udp-connections`"
            ),
        ),
        (
            vec![empty.clone()],
            format!(
                "defender-edge: no metric event or Device Defender report in {}: the input is empty",
                empty.display()
            ),
        ),
        (
            vec![gzip.clone()],
            format!(
                "defender-edge: {}: the file is gzip-compressed; decompress it first",
                gzip.display()
            ),
        ),
        (
            vec![missing.clone()],
            format!(
                "defender-edge: cannot read {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            vec![other.clone()],
            "defender-edge: security profile `FleetConnections` (".to_owned(),
        ),
    ];
    for (events, expected) in cases {
        let out = defender_edge()
            .args(["baseline", "--profile"])
            .arg(&profile)
            .arg("--events")
            .args(&events)
            .output()
            .expect("run baseline");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{events:?}: {stderr}");
        assert!(
            stderr.starts_with(&expected),
            "{stderr}\n  expected: {expected}"
        );
        assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
        assert!(out.stdout.is_empty(), "nothing written");
    }
}
