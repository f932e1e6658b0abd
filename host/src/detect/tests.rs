//! Table-driven tests of profile loading and evaluation. Each table row is a
//! profile fragment and a sample in, an expected verdict or error out.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};

use super::*;
use crate::sample::{EstablishedConnection, ListeningPort, NetworkStats};

const PERIOD_MS: u64 = 300_000;

/// Makes a sample whose metric under test has the given value.
type SampleOf<'a> = Box<dyn Fn(u64) -> Sample + 'a>;

fn one_behavior(behavior: Value) -> Value {
    json!({ "securityProfileName": "P", "behaviors": [behavior] })
}

fn config(profiles: Vec<Value>) -> DetectionConfig {
    DetectionConfig {
        profiles,
        statistics_min_datapoints: 3,
        // These tables test the judgement of each datapoint; the report
        // period is the subject of the conformance scenarios.
        per_sample: vec!["*".to_owned()],
        ..DetectionConfig::default()
    }
}

fn detector_in(dir: &Path, config: &DetectionConfig) -> Detector {
    Detector::new(config, dir, &Status::new(), Duration::from_secs(300)).expect("detector")
}

fn ports(numbers: &[u16]) -> Vec<ListeningPort> {
    numbers
        .iter()
        .map(|&port| ListeningPort {
            port,
            interface: Some("eth0".to_owned()),
        })
        .collect()
}

fn connections(remotes: &[&str]) -> Vec<EstablishedConnection> {
    remotes
        .iter()
        .enumerate()
        .map(|(i, r)| EstablishedConnection {
            remote_addr: SocketAddr::new(r.parse().expect(r), 443),
            local_port: 40_000 + i as u16,
            local_interface: None,
        })
        .collect()
}

fn traffic(
    bytes_in: u64,
    bytes_out: u64,
    packets_in: u64,
    packets_out: u64,
) -> Option<NetworkStats> {
    Some(NetworkStats {
        bytes_in,
        bytes_out,
        packets_in,
        packets_out,
    })
}

fn sample() -> Sample {
    Sample {
        thing: "edge-01".to_owned(),
        ..Sample::default()
    }
}

fn alarms(events: &[AlarmEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.state == AlarmState::Alarm)
        .count()
}

/// Whether one behavior alarms on `s` (with `consecutiveDatapointsToAlarm`
/// 1). The sample is judged twice, a full traffic window apart, because the
/// first traffic delta a detector sees only opens its window.
fn violates(metric: &str, criteria: Value, s: &Sample) -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let behavior = json!({ "name": "B", "metric": metric, "criteria": criteria });
    let mut d = detector_in(dir.path(), &config(vec![one_behavior(behavior)]));
    assert!(d.is_active(), "{metric} should be judged locally");
    let mut events = Vec::new();
    for now in [1_000, 1_000 + PERIOD_MS] {
        events.extend(d.evaluate_device(s, now, true));
        events.extend(d.evaluate_custom(s, now, true));
    }
    alarms(&events) > 0
}

#[test]
fn every_operator_on_every_metric_type() {
    let s = sample();
    let with_tcp = |p: &[u16]| Sample {
        listening_tcp_ports: ports(p),
        ..s.clone()
    };
    let with_udp = |p: &[u16]| Sample {
        listening_udp_ports: ports(p),
        ..s.clone()
    };
    let with_conns = |r: &[&str]| Sample {
        established_connections: connections(r),
        ..s.clone()
    };
    let with_custom = |v: CustomMetricValue| Sample {
        custom_metrics: BTreeMap::from([("m".to_owned(), v)]),
        ..s.clone()
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ports_rule = |op: &str, p: &[u16]| json!({"comparisonOperator": op, "value": {"ports": p}});
    let count_rule = |op: &str, n: u64| json!({"comparisonOperator": op, "value": {"count": n}});
    let cidr_rule = |op: &str, c: &[&str]| json!({"comparisonOperator": op, "value": {"cidrs": c}});

    let mut cases: Vec<(String, &str, Value, Sample, bool)> = vec![
        // Port lists: every port must conform; an empty list conforms.
        (
            "tcp in, allowed".into(),
            "aws:listening-tcp-ports",
            ports_rule("in-port-set", &[22, 443]),
            with_tcp(&[22, 443]),
            false,
        ),
        (
            "tcp in, extra".into(),
            "aws:listening-tcp-ports",
            ports_rule("in-port-set", &[22]),
            with_tcp(&[22, 8080]),
            true,
        ),
        (
            "tcp in, empty".into(),
            "aws:listening-tcp-ports",
            ports_rule("in-port-set", &[22]),
            with_tcp(&[]),
            false,
        ),
        (
            "tcp not-in, clean".into(),
            "aws:listening-tcp-ports",
            ports_rule("not-in-port-set", &[21, 23]),
            with_tcp(&[22]),
            false,
        ),
        (
            "tcp not-in, telnet".into(),
            "aws:listening-tcp-ports",
            ports_rule("not-in-port-set", &[21, 23]),
            with_tcp(&[22, 23]),
            true,
        ),
        (
            "udp in, allowed".into(),
            "aws:listening-udp-ports",
            ports_rule("in-port-set", &[68, 123]),
            with_udp(&[123]),
            false,
        ),
        (
            "udp in, extra".into(),
            "aws:listening-udp-ports",
            ports_rule("in-port-set", &[68, 123]),
            with_udp(&[53]),
            true,
        ),
        (
            "udp not-in, hit".into(),
            "aws:listening-udp-ports",
            ports_rule("not-in-port-set", &[53]),
            with_udp(&[53]),
            true,
        ),
        (
            "udp not-in, miss".into(),
            "aws:listening-udp-ports",
            ports_rule("not-in-port-set", &[53]),
            with_udp(&[123]),
            false,
        ),
        // Destination addresses.
        (
            "dest in, inside".into(),
            "aws:destination-ip-addresses",
            cidr_rule("in-cidr-set", &["10.0.0.0/8"]),
            with_conns(&["10.1.2.3"]),
            false,
        ),
        (
            "dest in, outside".into(),
            "aws:destination-ip-addresses",
            cidr_rule("in-cidr-set", &["10.0.0.0/8"]),
            with_conns(&["10.1.2.3", "8.8.8.8"]),
            true,
        ),
        (
            "dest in, v6".into(),
            "aws:destination-ip-addresses",
            cidr_rule("in-cidr-set", &["2001:db8::/32"]),
            with_conns(&["2001:db8::7"]),
            false,
        ),
        (
            "dest not-in, hit".into(),
            "aws:destination-ip-addresses",
            cidr_rule("not-in-cidr-set", &["192.0.2.0/24"]),
            with_conns(&["192.0.2.5"]),
            true,
        ),
        (
            "dest not-in, miss".into(),
            "aws:destination-ip-addresses",
            cidr_rule("not-in-cidr-set", &["192.0.2.0/24"]),
            with_conns(&["198.51.100.1"]),
            false,
        ),
        // Custom lists.
        (
            "numbers in".into(),
            "m",
            json!({"comparisonOperator": "in-set", "value": {"numbers": [1, 2]}}),
            with_custom(CustomMetricValue::NumberList(vec![1.0, 2.0])),
            false,
        ),
        (
            "numbers in, extra".into(),
            "m",
            json!({"comparisonOperator": "in-set", "value": {"numbers": [1, 2]}}),
            with_custom(CustomMetricValue::NumberList(vec![3.0])),
            true,
        ),
        (
            "numbers not-in, hit".into(),
            "m",
            json!({"comparisonOperator": "not-in-set", "value": {"numbers": [7]}}),
            with_custom(CustomMetricValue::NumberList(vec![7.0])),
            true,
        ),
        (
            "numbers not-in, miss".into(),
            "m",
            json!({"comparisonOperator": "not-in-set", "value": {"numbers": [7]}}),
            with_custom(CustomMetricValue::NumberList(vec![8.0])),
            false,
        ),
        (
            "strings in".into(),
            "m",
            json!({"comparisonOperator": "in-set", "value": {"strings": ["/", "/data"]}}),
            with_custom(CustomMetricValue::StringList(strings(&["/data"]))),
            false,
        ),
        (
            "strings in, extra".into(),
            "m",
            json!({"comparisonOperator": "in-set", "value": {"strings": ["/"]}}),
            with_custom(CustomMetricValue::StringList(strings(&["/", "/mnt/usb"]))),
            true,
        ),
        (
            "strings not-in, hit".into(),
            "m",
            json!({"comparisonOperator": "not-in-set", "value": {"strings": ["root"]}}),
            with_custom(CustomMetricValue::StringList(strings(&["root"]))),
            true,
        ),
        (
            "strings not-in, miss".into(),
            "m",
            json!({"comparisonOperator": "not-in-set", "value": {"strings": ["root"]}}),
            with_custom(CustomMetricValue::StringList(strings(&["ggc_user"]))),
            false,
        ),
        (
            "ip list in".into(),
            "m",
            cidr_rule("in-cidr-set", &["10.0.0.0/8"]),
            with_custom(CustomMetricValue::IpList(strings(&["10.0.0.1"]))),
            false,
        ),
        (
            "ip list in, outside".into(),
            "m",
            cidr_rule("in-cidr-set", &["10.0.0.0/8"]),
            with_custom(CustomMetricValue::IpList(strings(&["8.8.8.8"]))),
            true,
        ),
        (
            "ip list in, not an address".into(),
            "m",
            cidr_rule("in-cidr-set", &["10.0.0.0/8"]),
            with_custom(CustomMetricValue::IpList(strings(&["nonsense"]))),
            true,
        ),
        (
            "ip list not-in, not an address".into(),
            "m",
            cidr_rule("not-in-cidr-set", &["10.0.0.0/8"]),
            with_custom(CustomMetricValue::IpList(strings(&["nonsense"]))),
            false,
        ),
        (
            "ip list not-in, hit".into(),
            "m",
            cidr_rule("not-in-cidr-set", &["10.0.0.0/8"]),
            with_custom(CustomMetricValue::IpList(strings(&["10.9.9.9"]))),
            true,
        ),
        // A custom metric of another type than the criteria is not judged.
        (
            "wrong type".into(),
            "m",
            json!({"comparisonOperator": "less-than", "value": {"number": 1}}),
            with_custom(CustomMetricValue::StringList(strings(&["x"]))),
            false,
        ),
        // A custom metric the plugins did not send is not judged.
        (
            "absent custom".into(),
            "m",
            json!({"comparisonOperator": "greater-than", "value": {"number": 1}}),
            s.clone(),
            false,
        ),
    ];

    // Numbers: every comparison, at, below and above the threshold, on
    // every numeric metric. Normal is `value <op> 10`.
    let numeric_samples: Vec<(&str, SampleOf)> = vec![
        (
            "aws:num-listening-tcp-ports",
            Box::new(|n| with_tcp(&(1..=n as u16).collect::<Vec<_>>())),
        ),
        (
            "aws:num-listening-udp-ports",
            Box::new(|n| with_udp(&(1..=n as u16).collect::<Vec<_>>())),
        ),
        (
            "aws:num-established-tcp-connections",
            Box::new(|n| {
                let remotes: Vec<String> = (0..n).map(|i| format!("10.0.0.{}", i + 1)).collect();
                let refs: Vec<&str> = remotes.iter().map(String::as_str).collect();
                with_conns(&refs)
            }),
        ),
        (
            "aws:all-bytes-in",
            Box::new(|n| Sample {
                network_stats: traffic(n, 0, 0, 0),
                ..sample()
            }),
        ),
        (
            "aws:all-bytes-out",
            Box::new(|n| Sample {
                network_stats: traffic(0, n, 0, 0),
                ..sample()
            }),
        ),
        (
            "aws:all-packets-in",
            Box::new(|n| Sample {
                network_stats: traffic(0, 0, n, 0),
                ..sample()
            }),
        ),
        (
            "aws:all-packets-out",
            Box::new(|n| Sample {
                network_stats: traffic(0, 0, 0, n),
                ..sample()
            }),
        ),
        (
            "m",
            Box::new(|n| Sample {
                custom_metrics: BTreeMap::from([(
                    "m".to_owned(),
                    CustomMetricValue::Number(n as f64),
                )]),
                ..sample()
            }),
        ),
    ];
    for (metric, make) in &numeric_samples {
        for (op, below, at, above) in [
            ("less-than", false, true, true),
            ("less-than-equals", false, false, true),
            ("greater-than", true, true, false),
            ("greater-than-equals", true, false, false),
        ] {
            let key = if *metric == "m" { "number" } else { "count" };
            let rule = json!({"comparisonOperator": op, "value": {key: 10}});
            for (n, expected) in [(9, below), (10, at), (11, above)] {
                cases.push((
                    format!("{metric} {op} 10 with {n}"),
                    metric,
                    rule.clone(),
                    make(n),
                    expected,
                ));
            }
        }
    }
    // `count` may be a string (CloudFormation writes it so).
    cases.push((
        "count as text".into(),
        "aws:num-listening-tcp-ports",
        json!({"comparisonOperator": "less-than", "value": {"count": "2"}}),
        with_tcp(&[1, 2]),
        true,
    ));
    cases.push((
        "count rule".into(),
        "aws:num-listening-tcp-ports",
        count_rule("less-than", 3),
        with_tcp(&[1, 2]),
        false,
    ));

    let mut failures = Vec::new();
    for (name, metric, criteria, s, expected) in &cases {
        if violates(metric, criteria.clone(), s) != *expected {
            failures.push(format!("{name}: expected violated={expected}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_profiles_name_profile_behavior_and_field() {
    let good = json!({"name": "Ports", "metric": "aws:listening-tcp-ports",
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}});
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        patch(&mut b);
        one_behavior(b)
    };
    let crit = |key: &str, v: Value| {
        let key = key.to_owned();
        move |b: &mut Value| {
            b["criteria"][key.as_str()] = v.clone();
        }
    };
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "no profile name",
            json!({"behaviors": []}),
            &["securityProfileName"],
        ),
        (
            "bad profile name",
            json!({"securityProfileName": "has space", "behaviors": []}),
            &["securityProfileName", "has space"],
        ),
        (
            "unknown top-level key",
            json!({"securityProfileName": "P", "behaviours": []}),
            &["`P`", "behaviours"],
        ),
        ("not an object", json!([1, 2]), &["security profile"]),
        (
            "misspelt criteria key",
            with(&crit("comparisonOperater", json!("in-port-set"))),
            &["`P`", "`Ports`", "criteria", "comparisonOperater"],
        ),
        (
            "unknown operator",
            with(&crit("comparisonOperator", json!("equals"))),
            &["`Ports`", "criteria.comparisonOperator", "equals"],
        ),
        (
            "no operator",
            with(&|b| {
                b["criteria"]
                    .as_object_mut()
                    .map(|c| c.remove("comparisonOperator"));
            }),
            &["`Ports`", "criteria.comparisonOperator"],
        ),
        (
            "no metric",
            with(&|b| {
                b.as_object_mut().map(|o| o.remove("metric"));
            }),
            &["`Ports`", "`metric`"],
        ),
        (
            "unknown aws metric",
            with(&|b| b["metric"] = json!("aws:listening-tcp-port")),
            &["`Ports`", "`metric`", "aws:listening-tcp-port"],
        ),
        (
            "bad custom metric name",
            with(&|b| b["metric"] = json!("cpu temp")),
            &["`Ports`", "`metric`", "cpu temp"],
        ),
        (
            "bad behavior name",
            with(&|b| b["name"] = json!("two words")),
            &["two words", "`name`"],
        ),
        (
            "no value",
            with(&|b| {
                b["criteria"].as_object_mut().map(|c| c.remove("value"));
            }),
            &["`Ports`", "criteria.value"],
        ),
        (
            "value and statistic",
            with(&crit("statisticalThreshold", json!({"statistic": "p90"}))),
            &["`Ports`", "`criteria`", "not both"],
        ),
        (
            "statistic on a list",
            with(
                &|b| b["criteria"] = json!({"comparisonOperator": "in-port-set", "statisticalThreshold": {"statistic": "p90"}}),
            ),
            &["`Ports`", "criteria.statisticalThreshold"],
        ),
        (
            "unknown statistic",
            one_behavior(
                json!({"name": "S", "metric": "aws:all-bytes-out", "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p95"}}}),
            ),
            &["`S`", "criteria.statisticalThreshold.statistic", "p95"],
        ),
        (
            "no statistic",
            one_behavior(
                json!({"name": "S", "metric": "aws:all-bytes-out", "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {}}}),
            ),
            &["`S`", "criteria.statisticalThreshold.statistic"],
        ),
        (
            "zero to alarm",
            with(&crit("consecutiveDatapointsToAlarm", json!(0))),
            &["`Ports`", "criteria.consecutiveDatapointsToAlarm", "0"],
        ),
        (
            "eleven to clear",
            with(&crit("consecutiveDatapointsToClear", json!(11))),
            &["`Ports`", "criteria.consecutiveDatapointsToClear", "11"],
        ),
        (
            "to alarm as text",
            with(&crit("consecutiveDatapointsToAlarm", json!("two"))),
            &["`Ports`", "criteria.consecutiveDatapointsToAlarm"],
        ),
        (
            "negative duration",
            one_behavior(
                json!({"name": "T", "metric": "aws:all-bytes-out", "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}, "durationSeconds": -5}}),
            ),
            &["`T`", "criteria.durationSeconds", "-5"],
        ),
        (
            "a duration Device Defender refuses for traffic",
            one_behavior(
                json!({"name": "T", "metric": "aws:all-bytes-out", "criteria": {"comparisonOperator": "less-than", "value": {"count": 1}, "durationSeconds": 120}}),
            ),
            &[
                "`T`",
                "criteria.durationSeconds",
                "120",
                "aws:all-bytes-out",
                "300, 600, 900, 1800 or 3600",
            ],
        ),
        (
            "a duration Device Defender refuses for a count",
            one_behavior(
                json!({"name": "C", "metric": "aws:num-established-tcp-connections", "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p90"}, "durationSeconds": 3000}}),
            ),
            &["`C`", "criteria.durationSeconds", "3000"],
        ),
        (
            "Average, listed by CloudFormation, refused by the API",
            one_behavior(
                json!({"name": "A", "metric": "aws:all-packets-in", "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "Average"}, "durationSeconds": 300}}),
            ),
            &[
                "`A`",
                "criteria.statisticalThreshold.statistic",
                "`Average`",
                "IoT API refuses it",
            ],
        ),
        (
            "duration on a list",
            with(&crit("durationSeconds", json!(300))),
            &["`Ports`", "criteria.durationSeconds", "list metric"],
        ),
        (
            "port out of range",
            with(&crit("value", json!({"ports": [22, 70000]}))),
            &["`Ports`", "criteria.value.ports[1]", "70000"],
        ),
        (
            "port as text",
            with(&crit("value", json!({"ports": ["22"]}))),
            &["`Ports`", "criteria.value.ports[0]"],
        ),
        (
            "cidrs on ports",
            with(&crit(
                "value",
                json!({"ports": [22], "cidrs": ["10.0.0.0/8"]}),
            )),
            &["`Ports`", "criteria.value.cidrs"],
        ),
        (
            "count on ports",
            with(&crit("value", json!({"count": 3}))),
            &["`Ports`", "criteria.value.count"],
        ),
        (
            "unknown value key",
            with(&crit("value", json!({"port": [22]}))),
            &["`Ports`", "criteria.value", "port"],
        ),
        (
            "less-than on ports",
            with(&crit("comparisonOperator", json!("less-than"))),
            &["`Ports`", "criteria.comparisonOperator", "in-port-set"],
        ),
        (
            "in-set on ports",
            with(&crit("comparisonOperator", json!("in-set"))),
            &["`Ports`", "criteria.comparisonOperator"],
        ),
        (
            "port set on a count",
            one_behavior(
                json!({"name": "N", "metric": "aws:num-listening-tcp-ports", "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}}),
            ),
            &["`N`", "criteria.comparisonOperator", "less-than"],
        ),
        (
            "cidr set on ports",
            with(&|b| {
                b["criteria"] =
                    json!({"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}})
            }),
            &["`Ports`", "criteria.comparisonOperator"],
        ),
        (
            "bad cidr",
            one_behavior(
                json!({"name": "D", "metric": "aws:destination-ip-addresses", "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8", "10.0.0.0/40"]}}}),
            ),
            &["`D`", "criteria.value.cidrs[1]", "10.0.0.0/40"],
        ),
        (
            "count not a number",
            one_behavior(
                json!({"name": "N", "metric": "aws:num-listening-tcp-ports", "criteria": {"comparisonOperator": "less-than", "value": {"count": "abc"}}}),
            ),
            &["`N`", "criteria.value.count", "abc"],
        ),
        (
            "negative count",
            one_behavior(
                json!({"name": "N", "metric": "aws:num-listening-tcp-ports", "criteria": {"comparisonOperator": "less-than", "value": {"count": -1}}}),
            ),
            &["`N`", "criteria.value.count", "-1"],
        ),
        (
            "count and number",
            one_behavior(
                json!({"name": "N", "metric": "m", "criteria": {"comparisonOperator": "less-than", "value": {"count": 1, "number": 1}}}),
            ),
            &["`N`", "criteria.value", "not both"],
        ),
        (
            "numbers and strings",
            one_behavior(
                json!({"name": "L", "metric": "m", "criteria": {"comparisonOperator": "in-set", "value": {"numbers": [1], "strings": ["a"]}}}),
            ),
            &["`L`", "criteria.value", "not both"],
        ),
        (
            "in-set without a list",
            one_behavior(
                json!({"name": "L", "metric": "m", "criteria": {"comparisonOperator": "in-set", "value": {"ports": [1]}}}),
            ),
            &["`L`", "criteria.value"],
        ),
        (
            "ml confidence",
            one_behavior(
                json!({"name": "ML", "metric": "aws:all-bytes-out", "criteria": {"mlDetectionConfig": {"confidenceLevel": "EXTREME"}}}),
            ),
            &[
                "`ML`",
                "criteria.mlDetectionConfig.confidenceLevel",
                "EXTREME",
            ],
        ),
        (
            "dimension operator",
            with(&|b| b["metricDimension"] = json!({"dimensionName": "T", "operator": "BETWEEN"})),
            &["`Ports`", "metricDimension.operator", "BETWEEN"],
        ),
        (
            "duplicate behavior",
            json!({"securityProfileName": "P", "behaviors": [good.clone(), good.clone()]}),
            &["`P`", "`Ports`", "`name`", "same name"],
        ),
        (
            "retain typo",
            json!({"securityProfileName": "P", "additionalMetricsToRetain": ["aws:num-mesages-sent"]}),
            &[
                "`P`",
                "additionalMetricsToRetain[0]",
                "aws:num-mesages-sent",
            ],
        ),
        (
            "suppressAlerts not a bool",
            with(&|b| b["suppressAlerts"] = json!("yes")),
            &["`Ports`", "suppressAlerts"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, document, expected) in &cases {
        match profile::compile(document.clone(), "test.json") {
            Ok(_) => failures.push(format!("{name}: loaded")),
            Err(error) => {
                let message = error.to_string();
                for part in expected.iter().chain(&["test.json"]) {
                    if !message.contains(part) {
                        failures.push(format!("{name}: `{part}` missing from: {message}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let error = profile::parse_text("{\"securityProfileName\": ", "broken.json")
        .expect_err("broken JSON loaded");
    assert!(
        error.to_string().contains("broken.json") && error.to_string().contains("not valid JSON"),
        "{error}"
    );
}

#[test]
fn shared_fixture_profiles_load_unchanged() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/detect/profiles");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).expect("fixture dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read");
            profile::parse_text(&text, &path.display().to_string())
                .unwrap_or_else(|e| panic!("{e}"));
            loaded += 1;
        }
    }
    assert!(
        loaded >= 2,
        "fixture profiles missing from {}",
        dir.display()
    );

    let baseline = profile::parse_text(
        include_str!("../../../tests/fixtures/detect/profiles/device-rule-baseline.json"),
        "baseline",
    )
    .expect("baseline");
    let judged: Vec<&str> = baseline.behaviors.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        judged,
        [
            "UnexpectedListeningTcpPorts",
            "UnexpectedListeningUdpPorts",
            "TooManyConnections",
            "UnknownDestinations"
        ]
    );
    assert_eq!(
        baseline.skipped.len(),
        1,
        "authorization failures are cloud-side"
    );
    assert_eq!(baseline.skipped[0].behavior, "AuthorizationFailures");
}

#[test]
fn describe_security_profile_output_loads_as_it_is() {
    let described = json!({
        "securityProfileName": "P",
        "securityProfileArn": "arn:aws:iot:eu-west-1:123456789012:securityprofile/P",
        "securityProfileDescription": "saved with describe-security-profile",
        "behaviors": [{"name": "Ports", "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}}],
        "alertTargets": {"SNS": {"alertTargetArn": "arn:aws:sns:eu-west-1:123456789012:dd", "roleArn": "arn:aws:iam::123456789012:role/dd"}},
        "additionalMetricsToRetainV2": [{"metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "T", "operator": "IN"}, "exportMetric": true}],
        "metricsExportConfig": {"mqttTopic": "$aws/rules/export", "roleArn": "arn:aws:iam::123456789012:role/export"},
        "tags": [{"Key": "team", "Value": "ot"}],
        "version": 3,
        "creationDate": "2026-01-01T00:00:00+00:00",
        "lastModifiedDate": 1767225600.0
    });
    let loaded = profile::compile(described, "described.json").expect("loads");
    assert_eq!(loaded.behaviors.len(), 1);
}

#[test]
fn cloud_side_ml_and_dimension_behaviors_are_counted_and_skipped() {
    let profile = json!({"securityProfileName": "Mixed", "behaviors": [
        {"name": "Auth", "metric": "aws:num-authorization-failures", "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}, "durationSeconds": 300}},
        {"name": "Ml", "metric": "aws:all-bytes-out", "criteria": {"consecutiveDatapointsToAlarm": 1, "mlDetectionConfig": {"confidenceLevel": "HIGH"}}},
        {"name": "Retain", "metric": "aws:all-bytes-in"},
        {"name": "Topic", "metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "TopicFilter", "operator": "IN"}, "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
        {"name": "Ports", "metric": "aws:listening-tcp-ports", "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}}
    ]});
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Status::new();
    let d = Detector::new(
        &config(vec![profile]),
        dir.path(),
        &status,
        Duration::from_secs(300),
    )
    .expect("loads");
    assert!(d.is_active());
    assert_eq!(status.number("detect.behaviors"), 1);
    assert_eq!(status.number("detect.behaviors_skipped"), 4);
    // The coverage says what is judged and what is not, as a value and as
    // the state text `status` shows.
    let coverage = d.coverage();
    assert_eq!(
        (coverage.judged, coverage.total(), coverage.profiles),
        (1, 5, 1)
    );
    assert_eq!(
        coverage.skipped,
        BTreeMap::from([
            (SkipKind::CloudSide, 2),
            (SkipKind::MlDetect, 1),
            (SkipKind::RetainOnly, 1)
        ])
    );
    let text = "running: 1 of 5 behaviors; 2 cloud-side, 1 ML Detect, 1 retain-only skipped";
    assert_eq!(coverage.state_text(), text);
    assert_eq!(
        status.get("detect.state"),
        Some(crate::status::Value::Text(text.to_owned()))
    );

    // A profile with nothing the device can judge loads, but is idle.
    let only_cloud = json!({"securityProfileName": "Cloud", "behaviors": [
        {"name": "Auth", "metric": "aws:num-authorization-failures", "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}
    ]});
    let d = Detector::new(
        &config(vec![only_cloud]),
        dir.path(),
        &status,
        Duration::from_secs(300),
    )
    .expect("loads");
    assert!(!d.is_active());
}

#[test]
fn consecutive_datapoints_drive_alarm_and_clear_with_a_stable_id() {
    let behavior = json!({"name": "Ports", "metric": "aws:listening-tcp-ports", "criteria": {
        "comparisonOperator": "in-port-set", "value": {"ports": [22]},
        "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 3}});
    let dir = tempfile::tempdir().expect("temp dir");
    let mut d = detector_in(dir.path(), &config(vec![one_behavior(behavior)]));
    let bad = Sample {
        listening_tcp_ports: ports(&[22, 21]),
        ..sample()
    };
    let good = Sample {
        listening_tcp_ports: ports(&[22]),
        ..sample()
    };
    let sequence = [
        &bad, &good, &bad, &bad, &bad, &good, &good, &bad, &good, &good, &good,
    ];
    let mut trace = String::new();
    let mut events = Vec::new();
    for (i, s) in sequence.iter().enumerate() {
        let e = d.evaluate_device(s, 10_000 * (i as u64 + 1), true);
        trace.push(match e.first().map(|e| e.state) {
            Some(AlarmState::Alarm) => 'A',
            Some(AlarmState::Clear) => 'C',
            Some(AlarmState::Invalidated) => 'I',
            None => '.',
        });
        events.extend(e);
    }
    assert_eq!(trace, "...A......C");
    assert_eq!(events.len(), 2);
    let (alarm, clear) = (&events[0], &events[1]);
    assert_eq!(alarm.violation_id, clear.violation_id);
    assert_eq!(alarm.violation_id.len(), 32);
    assert_eq!(alarm.value, json!({"ports": [21, 22]}));
    assert_eq!(alarm.offending, Some(json!({"ports": [21]})));
    assert_eq!(clear.offending, Some(json!({"ports": []})));
    assert_eq!(clear.violation_start_ms, alarm.timestamp_ms);
    assert_eq!(
        (
            alarm.thing.as_str(),
            alarm.profile.as_str(),
            alarm.behavior.as_str()
        ),
        ("edge-01", "P", "Ports")
    );

    // The next alarm is a new violation.
    let mut again = Vec::new();
    for i in 0..2 {
        again.extend(d.evaluate_device(&bad, 200_000 + i * 10_000, true));
    }
    assert_eq!(alarms(&again), 1);
    assert_ne!(again[0].violation_id, alarm.violation_id);
}

#[test]
fn alarm_events_become_alerts_and_json() {
    let behavior = json!({"name": "Ports", "metric": "aws:listening-tcp-ports", "suppressAlerts": true,
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}});
    let dir = tempfile::tempdir().expect("temp dir");
    let mut d = detector_in(dir.path(), &config(vec![one_behavior(behavior)]));
    let events = d.evaluate_device(
        &Sample {
            listening_tcp_ports: ports(&[21, 22]),
            ..sample()
        },
        5_000,
        true,
    );
    let event = &events[0];
    let alert = event.to_alert();
    assert_eq!(alert.source, "detect/P");
    assert_eq!(alert.name, "Ports");
    // suppressAlerts: visible, not paging-grade.
    assert_eq!(alert.severity, crate::sample::Severity::Low);
    assert_eq!(alert.attributes["suppress_alerts"], "true");
    assert_eq!(alert.attributes["violation_id"], event.violation_id);
    assert_eq!(alert.attributes["offending"], r#"{"ports":[21]}"#);
    assert!(
        alert.message.contains("edge-01") && alert.message.contains("[21]"),
        "{}",
        alert.message
    );

    let json: Value = serde_json::from_slice(&event.to_json()).expect("json");
    assert_eq!(
        json,
        json!({
            "violation_id": event.violation_id,
            "state": "alarm",
            "thing": "edge-01",
            "profile": "P",
            "behavior": "Ports",
            "metric": "aws:listening-tcp-ports",
            "value": {"ports": [21, 22]},
            "offending": {"ports": [21]},
            "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}},
            "violation_start_ms": 5_000,
            "timestamp_ms": 5_000,
            "suppress_alerts": true
        })
    );
}

fn bytes_out(n: u64) -> Sample {
    Sample {
        network_stats: traffic(0, n, 0, 0),
        ..sample()
    }
}

#[test]
fn traffic_is_summed_over_duration_and_judged_early_only_when_conclusive() {
    let dir = tempfile::tempdir().expect("temp dir");
    let at_most = json!({"name": "AtMost", "metric": "aws:all-bytes-out", "criteria": {
        "comparisonOperator": "less-than", "value": {"count": 1000}, "durationSeconds": 300}});
    let at_least = json!({"name": "AtLeast", "metric": "aws:all-bytes-out", "criteria": {
        "comparisonOperator": "greater-than-equals", "value": {"count": 100}, "durationSeconds": 300}});
    let profile = json!({"securityProfileName": "T", "behaviors": [at_most, at_least]});
    let mut d = detector_in(dir.path(), &config(vec![profile]));
    let mut log: Vec<(u64, String, AlarmState)> = Vec::new();
    fn run(log: &mut Vec<(u64, String, AlarmState)>, d: &mut Detector, t: u64, n: u64) {
        for e in d.evaluate_device(&bytes_out(n), t, true) {
            log.push((t, e.behavior.clone(), e.state));
        }
    }
    // The first delta only opens the window; then 10 s deltas of 1 byte.
    run(&mut log, &mut d, 0, 50_000);
    for i in 1..=29 {
        run(&mut log, &mut d, i * 10_000, 1);
    }
    assert!(
        log.is_empty(),
        "a partial window is not conclusive for either: {log:?}"
    );
    // 300 s covered with 30 bytes: "at least 100" is now violated.
    run(&mut log, &mut d, 300_000, 1);
    assert_eq!(
        log,
        vec![(300_000, "AtLeast".to_owned(), AlarmState::Alarm)]
    );
    // A burst: "less than 1000" breaks at once, "at least 100" is met.
    run(&mut log, &mut d, 310_000, 5_000);
    assert_eq!(
        log[1..],
        [
            (310_000, "AtMost".to_owned(), AlarmState::Alarm),
            (310_000, "AtLeast".to_owned(), AlarmState::Clear),
        ]
    );
    // The burst stays in the sum for 300 s, then AtMost clears and AtLeast
    // (30 bytes per 300 s again) alarms.
    for i in 32..=60 {
        run(&mut log, &mut d, i * 10_000, 1);
    }
    assert_eq!(log.len(), 3, "{log:?}");
    run(&mut log, &mut d, 610_000, 1);
    assert_eq!(
        log[3..],
        [
            (610_000, "AtMost".to_owned(), AlarmState::Clear),
            (610_000, "AtLeast".to_owned(), AlarmState::Alarm),
        ]
    );

    // A sample without an honest delta (counter reset) restarts the window:
    // the partial window after it is inconclusive for "at least".
    let before = log.len();
    d.evaluate_device(&sample(), 620_000, true);
    run(&mut log, &mut d, 630_000, 1);
    assert_eq!(log.len(), before, "{log:?}");
}

/// The fixture's DataExfiltrationCheck and the same behavior with the
/// operator that says what the profile's description means.
fn exfiltration_profiles() -> (Value, Value) {
    let as_written: Value = serde_json::from_str(include_str!(
        "../../../tests/fixtures/detect/profiles/data-exfiltration-check.json"
    ))
    .expect("fixture");
    let mut corrected = as_written.clone();
    corrected["securityProfileName"] = json!("DataExfiltrationCheckCorrected");
    corrected["behaviors"][0]["criteria"]["comparisonOperator"] = json!("less-than-equals");
    (as_written, corrected)
}

/// Feeds ten quiet 300 s periods (packets out 100..=109, the largest among
/// the first three, so the baseline never grows), then one `last` value.
fn exfiltration_run(profile: Value, last: u64) -> Vec<AlarmEvent> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut d = detector_in(dir.path(), &config(vec![profile]));
    let packets_out = |n| Sample {
        network_stats: traffic(0, 0, 0, n),
        ..sample()
    };
    let mut events = Vec::new();
    d.evaluate_device(&packets_out(0), 0, true);
    let quiet = [109, 100, 105, 101, 108, 102, 107, 103, 106, 104];
    for (i, n) in quiet.into_iter().enumerate() {
        events.extend(d.evaluate_device(&packets_out(n), (i as u64 + 1) * PERIOD_MS, true));
    }
    events.extend(d.evaluate_device(&packets_out(last), 11 * PERIOD_MS, true));
    events
}

#[test]
fn data_exfiltration_check_as_written_and_corrected() {
    let (as_written, corrected) = exfiltration_profiles();
    // Device Defender's criteria describe normal behaviour: `greater-than
    // p99.99` calls normal only what exceeds nearly every past period, so
    // ordinary traffic violates it as soon as the baseline exists.
    let events = exfiltration_run(as_written.clone(), 105);
    assert_eq!(alarms(&events), 1, "{events:?}");
    assert_eq!(events[0].metric, "aws:all-packets-out");
    // ...and a burst conforms to it, so it clears.
    let events = exfiltration_run(as_written, 1_000_000);
    assert_eq!(
        events.last().map(|e| e.state),
        Some(AlarmState::Clear),
        "{events:?}"
    );

    // `less-than-equals p99.99`: normal is at most the baseline's p99.99.
    let quiet = exfiltration_run(corrected.clone(), 105);
    assert!(quiet.is_empty(), "{quiet:?}");
    let burst = exfiltration_run(corrected, 1_000_000);
    assert_eq!(alarms(&burst), 1);
    let threshold = burst[0].threshold.expect("threshold");
    assert!(
        threshold > 108.0 && threshold <= 109.0,
        "p99.99 of 100..=109 is {threshold}"
    );
    assert_eq!(burst[0].value, json!({"count": 1_000_000}));
}

#[test]
fn statistics_and_alarms_survive_a_new_detector() {
    let dir = tempfile::tempdir().expect("temp dir");
    let behavior = json!({"name": "Conns", "metric": "aws:num-established-tcp-connections", "criteria": {
        "comparisonOperator": "less-than-equals", "statisticalThreshold": {"statistic": "p90"},
        "durationSeconds": 300, "consecutiveDatapointsToClear": 1}});
    let cfg = config(vec![one_behavior(behavior)]);
    let conns = |n: usize| {
        let remotes: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}", i / 200, i % 200 + 1))
            .collect();
        let refs: Vec<&str> = remotes.iter().map(String::as_str).collect();
        Sample {
            established_connections: connections(&refs),
            ..sample()
        }
    };
    let mut d = detector_in(dir.path(), &cfg);
    // Ten periods of 5 connections: the baseline's p90 is 5.
    for i in 0..=10 {
        assert!(d.evaluate_device(&conns(5), i * PERIOD_MS, true).is_empty());
    }
    let raised = d.evaluate_device(&conns(50), 10 * PERIOD_MS + 10_000, true);
    assert_eq!(alarms(&raised), 1);
    assert_eq!(raised[0].threshold, Some(5.0));
    d.save(10 * PERIOD_MS + 10_000, false).expect("save");
    assert!(dir.path().join(STATE_FILE).exists());

    // A new process: the baseline and the open alarm are still there, so
    // conforming data clears the alarm under its original id.
    let mut restarted = detector_in(dir.path(), &cfg);
    let cleared = restarted.evaluate_device(&conns(5), 11 * PERIOD_MS, true);
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!(cleared[0].state, AlarmState::Clear);
    assert_eq!(cleared[0].violation_id, raised[0].violation_id);
    let again = restarted.evaluate_device(&conns(50), 11 * PERIOD_MS + 10_000, true);
    assert_eq!(alarms(&again), 1, "the restored baseline judges at once");

    // Without the file there is no baseline yet, hence no judgement.
    let empty = tempfile::tempdir().expect("temp dir");
    let mut fresh = detector_in(empty.path(), &cfg);
    assert!(fresh.evaluate_device(&conns(50), 0, true).is_empty());

    // A corrupt file costs the baseline, not the start.
    std::fs::write(dir.path().join(STATE_FILE), b"{not json").expect("write");
    let mut corrupt = detector_in(dir.path(), &cfg);
    assert!(corrupt.evaluate_device(&conns(50), 0, true).is_empty());
}

#[test]
fn save_writes_only_when_due_and_changed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let behavior = json!({"name": "Ports", "metric": "aws:listening-tcp-ports",
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}});
    let status = Status::new();
    let mut d = Detector::new(
        &config(vec![one_behavior(behavior)]),
        dir.path(),
        &status,
        Duration::from_secs(300),
    )
    .expect("detector");
    let quiet = Sample {
        listening_tcp_ports: ports(&[22]),
        ..sample()
    };
    d.evaluate_device(&quiet, 1_000, true);
    d.save(1_000, true).expect("save");
    assert_eq!(status.number("detect.state_saves"), 0, "nothing changed");
    d.evaluate_device(
        &Sample {
            listening_tcp_ports: ports(&[21]),
            ..sample()
        },
        2_000,
        true,
    );
    d.save(2_000, false).expect("save");
    assert_eq!(
        status.number("detect.state_saves"),
        1,
        "first save after a change"
    );
    d.evaluate_device(&quiet, 3_000, true);
    d.save(3_000, false).expect("save");
    assert_eq!(status.number("detect.state_saves"), 1, "not due yet");
    d.save(3_000, true).expect("save");
    assert_eq!(status.number("detect.state_saves"), 2, "forced");
}

#[test]
fn configuration_defaults_checks_and_topic() {
    let config = crate::config::Config::from_json(
        r#"{"thingName": "edge-01", "detection": {"intervalSeconds": "5", "statisticsWindow": "100",
            "statisticsMinDatapoints": 10, "sendToFirehose": "false", "enabled": "",
            "profiles": [{"securityProfileName": "P", "behaviors": []}]}}"#,
        "test",
    )
    .expect("config");
    let d = &config.detection;
    assert_eq!(
        (
            d.interval_seconds,
            d.statistics_window,
            d.statistics_min_datapoints
        ),
        (5, 100, 10)
    );
    assert!(!d.send_to_firehose);
    assert!(d.is_enabled());
    assert_eq!(alarm_topic(d, "edge-01"), "defender-edge/edge-01/alarms");
    assert_eq!(d.local_topic, "defender-edge/alarms");
    assert!(
        !DetectionConfig::default().is_enabled(),
        "no profile, nothing to do"
    );

    for (text, key) in [
        (
            r#"{"detection": {"intervalSeconds": 0}}"#,
            "detection.intervalSeconds",
        ),
        (
            r#"{"detection": {"statisticsMinDatapoints": 5000}}"#,
            "detection.statisticsMinDatapoints",
        ),
        (
            r#"{"detection": {"statisticsWindow": 0}}"#,
            "detection.statisticsWindow",
        ),
        (
            r#"{"detection": {"stateSaveSeconds": 0}}"#,
            "detection.stateSaveSeconds",
        ),
        (
            r#"{"detection": {"alarmTopic": "a/+/b"}}"#,
            "detection.alarmTopic",
        ),
        (
            r#"{"detection": {"alarmTopic": "$aws/things/x"}}"#,
            "detection.alarmTopic",
        ),
        (
            r#"{"detection": {"localTopic": ""}}"#,
            "detection.localTopic",
        ),
        (r#"{"detection": {"enabled": true}}"#, "detection.enabled"),
        (
            r#"{"detection": {"intervalSeconds": "ten"}}"#,
            "detection.intervalSeconds",
        ),
        (r#"{"detection": {"profile": []}}"#, "profile"),
        (
            r#"{"detection": {"profiles": [{"securityProfileName": "P", "behaviors": [{"name": "B", "metric": "aws:bogus"}]}]}}"#,
            "detection.profiles[0]",
        ),
    ] {
        let error = crate::config::Config::from_json(text, "test")
            .expect_err(text)
            .to_string();
        assert!(error.contains(key), "{text}: {error}");
    }
}

#[test]
fn profiles_from_files_and_inline_strings_and_their_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ports.json");
    std::fs::write(
        &file,
        one_behavior(json!({"name": "Ports", "metric": "aws:listening-tcp-ports",
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}}))
        .to_string(),
    )
    .expect("write");
    let inline_text = json!({"securityProfileName": "Q", "behaviors": [{"name": "Udp", "metric": "aws:listening-udp-ports",
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [123]}}}]}).to_string();
    let cfg = DetectionConfig {
        profile_paths: vec![file.clone()],
        profiles: vec![Value::String(inline_text)],
        ..DetectionConfig::default()
    };
    let mut d = detector_in(dir.path(), &cfg);
    let events = d.evaluate_device(
        &Sample {
            listening_tcp_ports: ports(&[8080]),
            listening_udp_ports: ports(&[53]),
            ..sample()
        },
        1,
        true,
    );
    let profiles: Vec<&str> = events.iter().map(|e| e.profile.as_str()).collect();
    assert_eq!(profiles, ["P", "Q"]);

    let missing = DetectionConfig {
        profile_paths: vec![dir.path().join("nope.json")],
        ..DetectionConfig::default()
    };
    let error = Detector::new(
        &missing,
        dir.path(),
        &Status::new(),
        Duration::from_secs(300),
    )
    .expect_err("a missing file loaded")
    .to_string();
    assert!(error.contains("nope.json"), "{error}");

    let twice = DetectionConfig {
        profile_paths: vec![file.clone(), file.clone()],
        ..DetectionConfig::default()
    };
    let error = Detector::new(&twice, dir.path(), &Status::new(), Duration::from_secs(300))
        .expect_err("a profile given twice loaded")
        .to_string();
    assert!(error.contains("`P`") && error.contains("twice"), "{error}");

    let off = DetectionConfig {
        enabled: Some(false),
        profile_paths: vec![file],
        ..DetectionConfig::default()
    };
    assert!(
        !Detector::new(&off, dir.path(), &Status::new(), Duration::from_secs(300))
            .expect("off")
            .is_active()
    );
}

#[test]
fn per_sample_names_profiles_or_behaviors_and_refuses_unknown_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = json!({"securityProfileName": "P", "behaviors": [
        {"name": "A", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}},
        {"name": "B", "metric": "aws:listening-udp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [123]}}}]});
    let with = |per_sample: &[&str]| DetectionConfig {
        profiles: vec![profile.clone()],
        per_sample: per_sample.iter().map(|s| s.to_string()).collect(),
        ..DetectionConfig::default()
    };
    let rogue = Sample {
        listening_tcp_ports: ports(&[22, 4444]),
        listening_udp_ports: ports(&[123, 5353]),
        ..sample()
    };
    // Between two report ends, only the behaviors named judge.
    for (names, judged) in [
        (&[][..], vec![]),
        (&["P/A"][..], vec!["A"]),
        (&["P"][..], vec!["A", "B"]),
        (&["*"][..], vec!["A", "B"]),
    ] {
        let mut d = Detector::new(
            &with(names),
            dir.path(),
            &Status::new(),
            Duration::from_secs(300),
        )
        .expect("loads");
        let events = d.evaluate_device(&rogue, 10_000, false);
        let behaviors: Vec<&str> = events.iter().map(|e| e.behavior.as_str()).collect();
        assert_eq!(behaviors, judged, "perSample {names:?}");
        // At the end of a report period every behavior judges.
        let mut d = Detector::new(
            &with(names),
            dir.path(),
            &Status::new(),
            Duration::from_secs(300),
        )
        .expect("loads");
        assert_eq!(d.evaluate_device(&rogue, 300_000, true).len(), 2);
    }
    let unknown = Detector::new(
        &with(&["P/C"]),
        dir.path(),
        &Status::new(),
        Duration::from_secs(300),
    )
    .expect_err("an unknown behavior was accepted")
    .to_string();
    assert!(unknown.contains("detection.perSample: `P/C`"), "{unknown}");
    for bad in ["", "P/", "/A", "P/A/x"] {
        let error = with(&[bad]).check().expect_err(bad);
        assert!(error.starts_with("detection.perSample[0]"), "{error}");
    }
}

#[test]
fn durations_load_as_device_defender_accepts_them() {
    let load = |metric: &str, duration: u64| {
        let behavior = json!({"name": "B", "metric": metric, "criteria": {
            "comparisonOperator": "less-than", "value": {"count": 1}, "durationSeconds": duration}});
        profile::compile(one_behavior(behavior), "test").map(|_| ())
    };
    for duration in profile::DEVICE_DURATIONS {
        load("aws:all-bytes-out", duration).expect("an accepted duration");
        load("aws:num-listening-tcp-ports", duration).expect("an accepted duration");
    }
    for duration in [1, 60, 299, 301, 1200, 7200] {
        load("aws:all-packets-out", duration).expect_err("a duration AWS refuses");
    }
    // Custom metrics: no duration set is documented by AWS; the device takes
    // 1..=86400 (DETECTION.md section 1).
    load("cpu_temperature", 60).expect("a custom metric's duration");
}

/// Issue 19 item 5: a configuration update that removes or changes a
/// behavior with an open alarm closes it with an invalidation carrying the
/// alarm's id; an unchanged behavior keeps its alarm.
#[test]
fn open_alarms_of_removed_or_changed_behaviors_are_invalidated_at_start() {
    let ports_behavior = |name: &str, allowed: u16| {
        json!({"name": name, "metric": "aws:listening-tcp-ports",
               "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [allowed]}}})
    };
    let profile =
        |behaviors: Vec<Value>| json!({"securityProfileName": "P", "behaviors": behaviors});
    let rogue = Sample {
        listening_tcp_ports: ports(&[22, 4444]),
        ..sample()
    };
    // Nothing listens: every version of every behavior conforms.
    let quiet = sample();
    // Raises alarms on Kept, Edited and Removed, saves, and returns their ids.
    let alarmed = |dir: &Path| -> BTreeMap<String, String> {
        let mut d = detector_in(
            dir,
            &config(vec![profile(vec![
                ports_behavior("Kept", 22),
                ports_behavior("Edited", 22),
                ports_behavior("Removed", 22),
            ])]),
        );
        let events = d.evaluate_device(&rogue, 10_000, true);
        d.save(10_000, true).expect("save");
        events
            .into_iter()
            .map(|e| (e.behavior, e.violation_id))
            .collect()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = alarmed(dir.path());
    assert_eq!(ids.len(), 3);

    let mut updated = detector_in(
        dir.path(),
        &config(vec![profile(vec![
            ports_behavior("Kept", 22),
            ports_behavior("Edited", 8883),
        ])]),
    );
    let events = updated.evaluate_device(&quiet, 20_000, true);
    let by_behavior: BTreeMap<&str, (&AlarmState, &str)> = events
        .iter()
        .map(|e| (e.behavior.as_str(), (&e.state, e.violation_id.as_str())))
        .collect();
    assert_eq!(
        by_behavior,
        BTreeMap::from([
            ("Edited", (&AlarmState::Invalidated, ids["Edited"].as_str())),
            (
                "Removed",
                (&AlarmState::Invalidated, ids["Removed"].as_str())
            ),
            // Unchanged: still open, and it clears under its own id.
            ("Kept", (&AlarmState::Clear, ids["Kept"].as_str())),
        ])
    );
    let removed = events
        .iter()
        .find(|e| e.behavior == "Removed")
        .expect("removed");
    assert_eq!(removed.thing, "edge-01");
    assert_eq!(removed.metric, "aws:listening-tcp-ports");
    assert_eq!(removed.violation_start_ms, 10_000);
    // Sent once.
    assert!(updated.evaluate_device(&quiet, 30_000, true).is_empty());
}

/// The other invalidation: the metric stopped arriving for the behavior's
/// duration (a plugin that no longer reports, traffic without an honest
/// delta).
#[test]
fn an_open_alarm_whose_metric_stops_arriving_is_invalidated() {
    let behavior = json!({"name": "FewLogins", "metric": "failed_logins",
        "criteria": {"comparisonOperator": "less-than", "value": {"number": 3}, "durationSeconds": 600}});
    let dir = tempfile::tempdir().expect("temp dir");
    let mut d = detector_in(dir.path(), &config(vec![one_behavior(behavior)]));
    let with = |n: f64| Sample {
        custom_metrics: BTreeMap::from([(
            "failed_logins".to_owned(),
            CustomMetricValue::Number(n),
        )]),
        ..sample()
    };
    let raised = d.evaluate_custom(&with(9.0), 10_000, true);
    assert_eq!(raised[0].state, AlarmState::Alarm);
    // Away for less than durationSeconds: still open.
    for t in [20_000, 300_000, 609_000] {
        assert!(d.evaluate_custom(&sample(), t, true).is_empty(), "at {t}");
    }
    let gone = d.evaluate_custom(&sample(), 610_000, true);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].state, AlarmState::Invalidated);
    assert_eq!(gone[0].violation_id, raised[0].violation_id);
    assert!(gone[0].value.is_null());
    // Closed: nothing more while it stays away, and a new alarm later has a
    // new id.
    assert!(d.evaluate_custom(&sample(), 900_000, true).is_empty());
    let again = d.evaluate_custom(&with(9.0), 910_000, true);
    assert_eq!(again[0].state, AlarmState::Alarm);
    assert_ne!(again[0].violation_id, raised[0].violation_id);
    // An alarm whose metric keeps arriving is never invalidated.
    let mut steady = detector_in(
        tempfile::tempdir().expect("temp dir").path(),
        &config(vec![one_behavior(
            json!({"name": "FewLogins", "metric": "failed_logins",
            "criteria": {"comparisonOperator": "less-than", "value": {"number": 3}}}),
        )]),
    );
    for t in 0..100 {
        for e in steady.evaluate_custom(&with(9.0), t * 10_000, true) {
            assert_eq!(e.state, AlarmState::Alarm, "at {t}");
        }
    }
}
