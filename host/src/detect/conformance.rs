//! The conformance suite: data-driven scenarios in
//! `tests/fixtures/detect/conformance/scenarios.json`, each a series of
//! samples and the alarms and clears Device Defender's documented semantics
//! give for them, citing the documentation it follows.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{AlarmState, DetectionConfig, Detector};
use crate::sample::{
    CustomMetricValue, EstablishedConnection, ListeningPort, NetworkStats, Sample,
};
use crate::status::Status;

const SCENARIOS: &str = include_str!("../../../tests/fixtures/detect/conformance/scenarios.json");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    #[allow(dead_code)]
    about: String,
    docs: BTreeMap<String, String>,
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Scenario {
    name: String,
    cites: Vec<String>,
    profile: Value,
    #[serde(default)]
    per_sample: Vec<String>,
    #[serde(default = "ten")]
    interval_seconds: u64,
    #[serde(default = "three_hundred")]
    report_seconds: u64,
    samples: Vec<Step>,
    expect: Vec<(usize, String, String)>,
}

fn ten() -> u64 {
    10
}

fn three_hundred() -> u64 {
    300
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Step {
    #[serde(default)]
    tcp_ports: Vec<u16>,
    #[serde(default)]
    udp_ports: Vec<u16>,
    /// Established connections to distinct addresses.
    #[serde(default)]
    connections: usize,
    /// Established connections to these addresses.
    #[serde(default)]
    destinations: Vec<IpAddr>,
    #[serde(default)]
    bytes_in: u64,
    #[serde(default)]
    bytes_out: u64,
    #[serde(default)]
    packets_in: u64,
    #[serde(default)]
    packets_out: u64,
    #[serde(default)]
    custom: BTreeMap<String, CustomMetricValue>,
    #[serde(default = "one")]
    repeat: usize,
}

fn one() -> usize {
    1
}

fn ports(numbers: &[u16]) -> Vec<ListeningPort> {
    numbers
        .iter()
        .map(|&port| ListeningPort {
            port,
            interface: None,
        })
        .collect()
}

impl Step {
    fn sample(&self, now_ms: u64) -> Sample {
        let spread = (0..self.connections)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 9, (i / 250) as u8, (i % 250) as u8 + 1)));
        let established_connections = self
            .destinations
            .iter()
            .copied()
            .chain(spread)
            .enumerate()
            .map(|(i, ip)| EstablishedConnection {
                remote_addr: SocketAddr::new(ip, 443),
                local_port: 40_000 + i as u16,
                local_interface: None,
            })
            .collect();
        Sample {
            thing: "edge-01".to_owned(),
            timestamp_ms: now_ms,
            listening_tcp_ports: ports(&self.tcp_ports),
            listening_udp_ports: ports(&self.udp_ports),
            established_connections,
            network_stats: Some(NetworkStats {
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                packets_in: self.packets_in,
                packets_out: self.packets_out,
            }),
            custom_metrics: self.custom.clone(),
            ..Sample::default()
        }
    }
}

/// Runs one scenario; returns the events as (sample index, behavior, state).
fn run(scenario: &Scenario) -> Vec<(usize, String, String)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = DetectionConfig {
        profiles: vec![scenario.profile.clone()],
        interval_seconds: scenario.interval_seconds,
        per_sample: scenario.per_sample.clone(),
        ..DetectionConfig::default()
    };
    config
        .check()
        .expect("the scenario's configuration is valid");
    let mut detector = Detector::new(
        &config,
        dir.path(),
        &Status::new(),
        Duration::from_secs(scenario.report_seconds),
    )
    .expect("the scenario's profile loads");
    let steps = scenario
        .samples
        .iter()
        .flat_map(|step| std::iter::repeat_n(step, step.repeat));
    let mut events = Vec::new();
    for (index, step) in steps.enumerate() {
        let now_s = index as u64 * scenario.interval_seconds;
        let now_ms = now_s * 1000;
        let closed = now_s.is_multiple_of(scenario.report_seconds);
        let sample = step.sample(now_ms);
        let mut out = detector.evaluate_device(&sample, now_ms, closed);
        out.extend(detector.evaluate_custom(&sample, now_ms, closed));
        events.extend(
            out.into_iter()
                .map(|e| (index, e.behavior, e.state.as_str().to_owned())),
        );
    }
    events.sort();
    events
}

#[test]
fn device_defender_detect_conformance() {
    let suite: Suite = serde_json::from_str(SCENARIOS).expect("scenarios.json parses");
    assert!(suite.scenarios.len() >= 10);
    let mut failures = Vec::new();
    for scenario in &suite.scenarios {
        assert!(
            !scenario.cites.is_empty(),
            "{}: cites nothing",
            scenario.name
        );
        for cite in &scenario.cites {
            assert!(
                suite.docs.contains_key(cite),
                "{}: cites unknown `{cite}`",
                scenario.name
            );
        }
        for (_, _, state) in &scenario.expect {
            assert!(
                [
                    AlarmState::Alarm,
                    AlarmState::Clear,
                    AlarmState::Invalidated
                ]
                .iter()
                .any(|s| s.as_str() == state),
                "{}: unknown state {state}",
                scenario.name
            );
        }
        let mut expected = scenario.expect.clone();
        expected.sort();
        let got = run(scenario);
        if got != expected {
            failures.push(format!(
                "{}\n  expected {expected:?}\n  got      {got:?}",
                scenario.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
