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
