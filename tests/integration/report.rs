//! The Device Defender report: golden files in every format, round trips
//! over generated reports, an independent CBOR decoder (Python `cbor2`),
//! one case per validation rule, and the trimming order and budget.
//!
//! Golden files are rewritten only when `DEFENDER_EDGE_UPDATE_GOLDEN=1` is
//! set by whoever runs the tests; no test sets it.

#![allow(
    clippy::unwrap_used,
    reason = "a test that unwraps an unexpected value fails, which is its purpose"
)]

use std::io::Write;
use std::process::{Command, Stdio};

use defender_edge::report::keys::{CUSTOM_VALUE_KEYS, KEYS};
use defender_edge::report::{
    self, Connection, ConnectionList, DEFAULT_MAX_BYTES, DecodeError, Format, Header, Metrics,
    Port, PortList, Report, TcpConnections, Trimmed, ValidationError,
};
use defender_edge::sample::{
    CustomMetricValue, EstablishedConnection, ListeningPort, NetworkStats, Sample,
};
use serde_json::Value;

use crate::support;

const FORMATS: [Format; 3] = [Format::Json, Format::JsonShort, Format::Cbor];
const UPDATE_GOLDEN: &str = "DEFENDER_EDGE_UPDATE_GOLDEN";
const GOLDEN_ID: u64 = 1_767_225_600_000;

fn golden_sample() -> Sample {
    let path = support::fixture("report/sample.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden_file(format: Format) -> &'static str {
    match format {
        Format::Json => "report/report.json",
        Format::JsonShort => "report/report-short.json",
        Format::Cbor => "report/report.cbor",
    }
}

/// Text for JSON, hex for CBOR, so a golden mismatch is readable.
fn show(bytes: &[u8], format: Format) -> String {
    match format {
        Format::Cbor => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[test]
fn golden_files_match_byte_for_byte() {
    let sample = golden_sample();
    for format in FORMATS {
        let prepared = report::prepare(&sample, GOLDEN_ID, format, DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(prepared.trimmed, Trimmed::default());
        let path = support::fixture(golden_file(format));
        if std::env::var_os(UPDATE_GOLDEN).is_some() {
            std::fs::write(&path, &prepared.bytes).unwrap();
        }
        let expected = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; create it with {UPDATE_GOLDEN}=1 cargo test --test integration report::",
                path.display()
            )
        });
        assert!(
            expected == prepared.bytes,
            "{:?} encoding differs from {}\n  expected: {}\n  actual:   {}\nIf the change is intended, rerun with {UPDATE_GOLDEN}=1 and review the diff",
            format,
            path.display(),
            show(&expected, format),
            show(&prepared.bytes, format)
        );
        assert_eq!(report::decode(&expected, format).unwrap(), prepared.report);
    }
}

/// The requirements a reader checks first, spelled out on the long-name
/// JSON rather than left to the golden file.
#[test]
fn wire_shape_follows_the_spec() {
    let sample = Sample {
        listening_tcp_ports: vec![ListeningPort {
            port: 22,
            interface: None,
        }],
        established_connections: vec![EstablishedConnection {
            remote_addr: "[2001:db8::7]:8883".parse().unwrap(),
            local_port: 40112,
            local_interface: None,
        }],
        ..Sample::default()
    };
    let json = String::from_utf8(report::encode(&report::build(&sample, 5), Format::Json)).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"header":{"report_id":5,"version":"1.0"},"metrics":{"#,
            r#""listening_tcp_ports":{"ports":[{"port":22}],"total":1},"#,
            r#""listening_udp_ports":{"ports":[],"total":0},"#,
            r#""tcp_connections":{"established_connections":{"connections":["#,
            r#"{"remote_addr":"[2001:db8::7]:8883","local_port":40112}],"total":1}}}}"#
        ),
        "wildcard binds carry no interface key, the empty UDP list is kept, IPv6 is bracketed, \
         no network_stats without a delta, no custom_metrics when there are none"
    );
    let short = String::from_utf8(report::encode(
        &report::build(&sample, 5),
        Format::JsonShort,
    ))
    .unwrap();
    assert_eq!(
        short,
        concat!(
            r#"{"hed":{"rid":5,"v":"1.0"},"met":{"tp":{"pts":[{"pt":22}],"t":1},"up":{"pts":[],"t":0},"#,
            r#""tc":{"ec":{"cs":[{"rad":"[2001:db8::7]:8883","lp":40112}],"t":1}}}}"#
        )
    );
}

/// A small deterministic generator (xorshift64*), enough for property-style
/// loops without another crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn text(&mut self, alphabet: &[u8], max_len: u64) -> String {
        let len = 1 + self.below(max_len);
        (0..len).map(|_| char::from(*self.pick(alphabet))).collect()
    }

    fn ip(&mut self) -> std::net::IpAddr {
        if self.chance(50) {
            std::net::Ipv4Addr::from(self.next() as u32).into()
        } else {
            // Mostly-zero addresses exercise the `::` compression.
            let mut segments = [0u16; 8];
            for segment in &mut segments {
                if self.chance(40) {
                    *segment = self.next() as u16;
                }
            }
            std::net::Ipv6Addr::from(segments).into()
        }
    }

    /// A number with at most 15 significant digits, the kind validation
    /// accepts, over a wide range of magnitudes.
    fn number(&mut self) -> f64 {
        let digits = 1 + self.below(15) as u32;
        let mantissa = self.below(10u64.pow(digits)) as i64;
        let sign = if self.chance(30) { -1 } else { 1 };
        let exponent = self.below(61) as i32 - 30;
        let exponent = if self.chance(10) {
            self.below(591) as i32 - 300
        } else {
            exponent
        };
        format!("{}e{exponent}", sign * mantissa).parse().unwrap()
    }

    fn interface(&mut self) -> Option<String> {
        const NAMES: [&str; 6] = ["eth0", "wlan0", "lo", "br-lan", "wwan0", "enp0s31f6"];
        self.chance(70).then(|| (*self.pick(&NAMES)).to_owned())
    }

    fn ports(&mut self, max: u64) -> PortList {
        let ports: Vec<Port> = (0..self.below(max + 1))
            .map(|_| Port {
                port: 1 + self.below(65535) as u32,
                interface: self.interface(),
            })
            .collect();
        PortList {
            total: ports.len() as u64 + if self.chance(20) { self.below(9) } else { 0 },
            ports,
        }
    }

    fn report(&mut self) -> Report {
        const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-";
        const STRING: &[u8] = b"abcXYZ0123456789:_-/.";
        let metrics = self.chance(85).then(|| {
            let connections: Vec<Connection> = (0..self.below(40))
                .map(|_| Connection {
                    remote_addr: std::net::SocketAddr::new(self.ip(), 1 + self.below(65535) as u16)
                        .to_string(),
                    local_port: 1 + self.below(65535) as u32,
                    local_interface: self.interface(),
                })
                .collect();
            Metrics {
                listening_tcp_ports: self.ports(20),
                listening_udp_ports: self.ports(20),
                tcp_connections: TcpConnections {
                    established_connections: ConnectionList {
                        total: connections.len() as u64 + self.below(3),
                        connections,
                    },
                },
                network_stats: self.chance(60).then(|| NetworkStats {
                    bytes_in: self.next(),
                    bytes_out: self.below(1 << 20),
                    packets_in: self.below(1000),
                    packets_out: u64::MAX,
                }),
            }
        });
        let min_custom = if metrics.is_none() { 1 } else { 0 };
        let custom_metrics = (0..min_custom + self.below(5))
            .map(|_| {
                let name = format!("m{}", self.text(NAME, 20));
                let len = self.below(8);
                let value = match self.below(4) {
                    0 => CustomMetricValue::Number(self.number()),
                    1 => CustomMetricValue::NumberList((0..len).map(|_| self.number()).collect()),
                    2 => CustomMetricValue::StringList(
                        (0..len).map(|_| self.text(STRING, 12)).collect(),
                    ),
                    _ => {
                        CustomMetricValue::IpList((0..len).map(|_| self.ip().to_string()).collect())
                    }
                };
                (name, value)
            })
            .collect();
        Report {
            header: Header {
                report_id: 1 + self.below(u64::MAX - 1),
                version: "1.0".to_owned(),
            },
            metrics,
            custom_metrics,
        }
    }
}

#[test]
fn every_format_round_trips_generated_reports() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..500 {
        let original = rng.report();
        assert_eq!(
            report::validate(&original),
            Ok(()),
            "generated report {i} is invalid"
        );
        for format in FORMATS {
            let bytes = report::encode(&original, format);
            let decoded = report::decode(&bytes, format).unwrap_or_else(|e| {
                panic!("report {i} in {format:?}: {e}\n{}", show(&bytes, format))
            });
            assert_eq!(decoded, original, "report {i} in {format:?}");
        }
    }
    let golden = report::build(&golden_sample(), GOLDEN_ID);
    for format in FORMATS {
        assert_eq!(
            report::decode(&report::encode(&golden, format), format).unwrap(),
            golden
        );
    }
}

/// Corrupted and random input must give an error or a report, never a
/// panic; any report it gives must survive validation and re-encoding.
#[test]
fn decoders_survive_arbitrary_bytes() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut rejected = 0;
    for i in 0..1500 {
        let format = *rng.pick(&FORMATS);
        let mut bytes = report::encode(&rng.report(), format);
        match i % 4 {
            0 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
            1 => {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            2 => {
                let at = rng.below(bytes.len() as u64 + 1) as usize;
                bytes.insert(at, rng.next() as u8);
            }
            _ => bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        }
        match report::decode(&bytes, format) {
            Ok(decoded) => {
                let _ = report::validate(&decoded);
                let _ = report::encode(&decoded, format);
            }
            Err(_) => rejected += 1,
        }
    }
    // Most corruptions must be noticed; a decoder that accepted everything
    // would pass the no-panic part trivially.
    assert!(
        rejected > 1000,
        "only {rejected} of 1500 corrupted inputs were rejected"
    );
    // CBOR headers that announce huge lengths must not allocate them.
    for bytes in [
        &[0x9b, 0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        &[0xbb, 0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x7b, 0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ] {
        assert!(report::decode(bytes, Format::Cbor).is_err());
    }
    // Deep nesting is refused by the parsers' depth limits, not the stack.
    let deep_json = "[".repeat(100_000);
    assert!(report::decode(deep_json.as_bytes(), Format::Json).is_err());
    let deep_cbor = vec![0x81u8; 100_000];
    assert!(report::decode(&deep_cbor, Format::Cbor).is_err());
}

#[test]
fn decoder_errors_name_the_key() {
    let cases: [(Format, &[u8], &str); 12] = [
        (
            Format::Json,
            br#"{"header":{"rid":1,"v":"1.0"},"metrics":{}}"#,
            "header.rid: key \"rid\" is a short name, but this report uses long names; a report must use one key set",
        ),
        (
            Format::JsonShort,
            br#"{"hed":{"rid":1,"v":"1.0"},"custom_metrics":{}}"#,
            "custom_metrics: key \"custom_metrics\" is a long name, but this report uses short names; a report must use one key set",
        ),
        (
            Format::Json,
            br#"{"header":{"report_id":1,"version":"1.0"},"cpu_usage":0.0}"#,
            "report: unknown key \"cpu_usage\"",
        ),
        (
            Format::Json,
            br#"{"header":{"report_id":1,"report_id":2,"version":"1.0"}}"#,
            "header.report_id: key \"report_id\" appears more than once",
        ),
        (
            Format::JsonShort,
            br#"{"met":{}}"#,
            "report: required key \"hed\" is missing",
        ),
        (
            Format::Json,
            br#"{"header":{"report_id":"1","version":"1.0"}}"#,
            "header.report_id: expected a non-negative integer, found string \"1\"",
        ),
        (
            Format::JsonShort,
            br#"{"hed":{"rid":1,"v":"1.0"},"cmet":{"x":{"number":1}}}"#,
            "cmet.x: expected a one-element array, found an object with 1 key",
        ),
        (
            Format::JsonShort,
            br#"{"hed":{"rid":1,"v":"1.0"},"cmet":{"x":[{"number":1},{"number":2}]}}"#,
            "custom metric cmet.x: expected a one-element array, found 2 elements",
        ),
        (
            Format::JsonShort,
            br#"{"hed":{"rid":1,"v":"1.0"},"cmet":{"x":[{"numbers":[1]}]}}"#,
            "custom metric cmet.x: expected an object with one of the keys number, number_list, string_list, ip_list, found key \"numbers\"",
        ),
        (
            Format::JsonShort,
            br#"{"hed":{"rid":1,"v":"1.0"},"met":{"tp":{"pts":[{"pt":4294967296}],"t":1},"up":{"pts":[],"t":0},"tc":{"ec":{"cs":[],"t":0}}}}"#,
            "met.tp.pts[0].pt: expected a port number, found number 4294967296",
        ),
        (
            Format::Json,
            br#"{"header":{"report_id":1,"version":"1.0"}} x"#,
            "not well-formed JSON: trailing characters at line 1 column 44",
        ),
        (
            Format::Cbor,
            // {"hed": {"rid": 1, "v": "1.0"}} followed by one stray byte.
            &[
                0xa1, 0x63, b'h', b'e', b'd', 0xa2, 0x63, b'r', b'i', b'd', 0x01, 0x61, b'v', 0x63,
                b'1', b'.', b'0', 0x00,
            ],
            "not well-formed CBOR: 1 trailing bytes after the report",
        ),
    ];
    for (format, bytes, expected) in cases {
        let error = report::decode(bytes, format).unwrap_err();
        assert_eq!(
            error.to_string(),
            expected,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    // A CBOR map keyed by an integer is no report.
    let error = report::decode(&[0xa1, 0x01, 0x01], Format::Cbor).unwrap_err();
    assert!(
        matches!(error, DecodeError::Syntax { format: "CBOR", .. }),
        "{error}"
    );
}

/// Runs Python's `cbor2` on our CBOR and compares the result key by key
/// with our long-name JSON, mapping every short key through the table.
#[test]
fn cbor_matches_an_independent_decoder() {
    let python = support::python();
    let mut reports = vec![report::build(&golden_sample(), GOLDEN_ID)];
    let mut rng = Rng(42);
    reports.extend((0..30).map(|_| rng.report()));
    for (i, original) in reports.iter().enumerate() {
        let cbor = report::encode(original, Format::Cbor);
        let mut child = Command::new(&python)
            .args([
                "-c",
                "import cbor2, json, sys; json.dump(cbor2.loads(sys.stdin.buffer.read()), sys.stdout)",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        child.stdin.take().unwrap().write_all(&cbor).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "cbor2 failed on report {i}: {}\nIs cbor2 installed? Run scripts/test.sh",
            String::from_utf8_lossy(&output.stderr)
        );
        let from_cbor2: Value = serde_json::from_slice(&output.stdout).unwrap();
        let long: Value = serde_json::from_slice(&report::encode(original, Format::Json)).unwrap();
        compare_short_to_long(&from_cbor2, &long, "", KeySet::Table);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum KeySet {
    /// Keys must be short names from the table.
    Table,
    /// Custom metric names, compared as they are.
    MetricNames,
    /// Custom metric value keys, which have no short form.
    ValueNames,
    /// Inside a value: no objects expected.
    None,
}

fn compare_short_to_long(short: &Value, long: &Value, path: &str, keys: KeySet) {
    match (short, long) {
        (Value::Object(short_map), Value::Object(long_map)) => {
            assert_eq!(short_map.len(), long_map.len(), "{path}: key counts differ");
            for (key, value) in short_map {
                let (long_key, next) = match keys {
                    KeySet::Table => {
                        let row = KEYS
                            .iter()
                            .find(|row| row.short == key)
                            .unwrap_or_else(|| panic!("{path}: {key:?} is not a short key name"));
                        let next = if row.long == "custom_metrics" {
                            KeySet::MetricNames
                        } else {
                            KeySet::Table
                        };
                        (row.long, next)
                    }
                    KeySet::MetricNames => (key.as_str(), KeySet::ValueNames),
                    KeySet::ValueNames => {
                        assert!(CUSTOM_VALUE_KEYS.contains(&key.as_str()), "{path}: {key:?}");
                        (key.as_str(), KeySet::None)
                    }
                    KeySet::None => panic!("{path}: unexpected object"),
                };
                let other = long_map
                    .get(long_key)
                    .unwrap_or_else(|| panic!("{path}: {long_key:?} missing from the JSON"));
                compare_short_to_long(value, other, &format!("{path}.{key}"), next);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: lengths differ");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare_short_to_long(x, y, &format!("{path}[{i}]"), keys);
            }
        }
        (Value::Number(x), Value::Number(y)) => match (x.as_u64(), y.as_u64()) {
            (Some(x), Some(y)) => assert_eq!(x, y, "{path}"),
            _ => assert_eq!(x.as_f64(), y.as_f64(), "{path}"),
        },
        (x, y) => assert_eq!(x, y, "{path}"),
    }
}

fn valid_report() -> Report {
    report::build(&golden_sample(), GOLDEN_ID)
}

fn metrics(report: &mut Report) -> &mut Metrics {
    report.metrics.as_mut().unwrap()
}

/// One case per rule: how to break a valid report, and the exact message.
#[test]
fn each_validation_rule_has_an_exact_message() {
    type Breaker = fn(&mut Report);
    let cases: Vec<(Breaker, &str)> = vec![
        (
            |r| r.header.report_id = 0,
            "header.report_id 0 must be positive",
        ),
        (
            |r| r.header.version = "1".into(),
            "header.version \"1\" must have the form Major.Minor, such as \"1.0\"",
        ),
        (
            |r| r.header.version = "1.0.2".into(),
            "header.version \"1.0.2\" must have the form Major.Minor, such as \"1.0\"",
        ),
        (
            |r| {
                r.metrics = None;
                r.custom_metrics.clear();
            },
            "report has neither metrics nor custom_metrics; at least one is required",
        ),
        (
            |r| metrics(r).listening_tcp_ports.ports[1].port = 0,
            "metrics.listening_tcp_ports.ports[1].port 0 is not a port number in 1..65535",
        ),
        (
            |r| metrics(r).listening_udp_ports.ports[0].port = 65536,
            "metrics.listening_udp_ports.ports[0].port 65536 is not a port number in 1..65535",
        ),
        (
            |r| metrics(r).listening_udp_ports.total = 1,
            "metrics.listening_udp_ports.total 1 is less than the 2 entries listed",
        ),
        (
            |r| metrics(r).tcp_connections.established_connections.total = 3,
            "metrics.tcp_connections.established_connections.total 3 is less than the 4 entries listed",
        ),
        (
            |r| {
                metrics(r)
                    .tcp_connections
                    .established_connections
                    .connections[2]
                    .local_port = 0
            },
            "metrics.tcp_connections.established_connections.connections[2].local_port 0 is not a local port number in 1..65535",
        ),
        (
            |r| {
                metrics(r)
                    .tcp_connections
                    .established_connections
                    .connections[0]
                    .remote_addr = "2001:db8::7:8883".into()
            },
            "metrics.tcp_connections.established_connections.connections[0].remote_addr \"2001:db8::7:8883\" must be an IPv4 address and port (203.0.113.7:443) or a bracketed IPv6 address and port ([2001:db8::7]:443), with a port in 1..65535 and no zone index",
        ),
        (
            |r| {
                metrics(r)
                    .tcp_connections
                    .established_connections
                    .connections[1]
                    .remote_addr = "[fe80::1%eth0]:22".into()
            },
            "metrics.tcp_connections.established_connections.connections[1].remote_addr \"[fe80::1%eth0]:22\" must be an IPv4 address and port (203.0.113.7:443) or a bracketed IPv6 address and port ([2001:db8::7]:443), with a port in 1..65535 and no zone index",
        ),
        (
            |r| {
                metrics(r)
                    .tcp_connections
                    .established_connections
                    .connections[3]
                    .remote_addr = "10.0.0.5:0".into()
            },
            "metrics.tcp_connections.established_connections.connections[3].remote_addr \"10.0.0.5:0\" must be an IPv4 address and port (203.0.113.7:443) or a bracketed IPv6 address and port ([2001:db8::7]:443), with a port in 1..65535 and no zone index",
        ),
        (
            |r| {
                r.custom_metrics
                    .insert("aws:cpu".into(), CustomMetricValue::Number(1.0));
            },
            "custom metric name \"aws:cpu\" must not start with the reserved prefix \"aws:\"",
        ),
        (
            |r| {
                r.custom_metrics
                    .insert("bad name".into(), CustomMetricValue::Number(1.0));
            },
            "custom metric name \"bad name\" must be 1 to 128 characters from a-z A-Z 0-9 : _ -",
        ),
        (
            |r| {
                r.custom_metrics.insert(
                    "n".into(),
                    CustomMetricValue::NumberList(vec![f64::INFINITY]),
                );
            },
            "custom metric \"n\": inf is not a finite number",
        ),
        (
            |r| {
                r.custom_metrics
                    .insert("n".into(), CustomMetricValue::Number(0.1234567890123456));
            },
            "custom metric \"n\": 0.1234567890123456 has more than 15 significant digits",
        ),
        (
            |r| {
                r.custom_metrics.insert(
                    "s".into(),
                    CustomMetricValue::StringList(vec![String::new()]),
                );
            },
            "custom metric \"s\": string \"\" must be non-empty and use only a-z A-Z 0-9 : _ - / .",
        ),
        (
            |r| {
                r.custom_metrics.insert(
                    "i".into(),
                    CustomMetricValue::IpList(vec!["10.0.0.256".into()]),
                );
            },
            "custom metric \"i\": \"10.0.0.256\" is not a valid IPv4 or IPv6 address",
        ),
    ];
    assert_eq!(report::validate(&valid_report()), Ok(()));
    for (break_rule, expected) in cases {
        let mut broken = valid_report();
        break_rule(&mut broken);
        let error = report::validate(&broken).unwrap_err();
        assert_eq!(error.to_string(), expected);
    }
    // Custom metrics alone are a valid report, and so are empty lists.
    let mut only_custom = valid_report();
    only_custom.metrics = None;
    assert_eq!(report::validate(&only_custom), Ok(()));
    let empty = report::build(&Sample::default(), 1);
    assert_eq!(report::validate(&empty), Ok(()));
}

#[test]
fn thing_names_follow_device_defender_rules() {
    let ok = ["edge-01", "a", "ünïcode-thing", &"x".repeat(128)];
    for name in ok {
        assert_eq!(report::validate::thing_name(name), Ok(()), "{name}");
    }
    let long = "é".repeat(65); // 130 bytes in 65 characters
    let cases = [
        (
            "",
            "thing name \"\" is 0 bytes; it must be 1 to 128 bytes of UTF-8".to_owned(),
        ),
        (
            long.as_str(),
            format!("thing name {long:?} is 130 bytes; it must be 1 to 128 bytes of UTF-8"),
        ),
        (
            "edge\n01",
            "thing name \"edge\\n01\" contains the control character '\\n'".to_owned(),
        ),
        (
            "site/edge",
            "thing name \"site/edge\" contains '/', which MQTT reserves in topic names".to_owned(),
        ),
        (
            "edge#1",
            "thing name \"edge#1\" contains '#', which MQTT reserves in topic names".to_owned(),
        ),
    ];
    for (name, expected) in cases {
        assert_eq!(
            report::validate::thing_name(name).unwrap_err().to_string(),
            expected
        );
    }
}

#[test]
fn prepare_refuses_an_invalid_sample() {
    let mut sample = golden_sample();
    sample.listening_tcp_ports[0].port = 0;
    let error = report::prepare(&sample, GOLDEN_ID, Format::Json, DEFAULT_MAX_BYTES).unwrap_err();
    assert_eq!(
        error.to_string(),
        "metrics.listening_tcp_ports.ports[0].port 0 is not a port number in 1..65535"
    );
    let error = report::prepare(&golden_sample(), 0, Format::Json, DEFAULT_MAX_BYTES).unwrap_err();
    assert_eq!(error, ValidationError::ReportId { value: 0 });
}

/// A report with entries in every trimmable list, small enough to sweep
/// every budget byte by byte.
fn trimming_report() -> Report {
    let mut sample = golden_sample();
    sample.established_connections = (0..12u16)
        .map(|i| EstablishedConnection {
            remote_addr: std::net::SocketAddr::new([198, 51, 100, i as u8 + 1].into(), 443 + i),
            local_port: 40000 + i,
            local_interface: (i % 3 != 0).then(|| "eth0".to_owned()),
        })
        .collect();
    sample.listening_udp_ports = (0..5u16)
        .map(|i| ListeningPort {
            port: 5000 + i,
            interface: None,
        })
        .collect();
    report::build(&sample, GOLDEN_ID)
}

/// The lists in trimming order, each as (original, kept).
fn lists_in_trim_order(original: &Report, kept: &Report) -> Vec<(String, usize, usize)> {
    let m0 = original.metrics.as_ref().unwrap();
    let m1 = kept.metrics.as_ref().unwrap();
    let mut lists = vec![
        (
            "established_connections".to_owned(),
            m0.tcp_connections.established_connections.connections.len(),
            m1.tcp_connections.established_connections.connections.len(),
        ),
        (
            "listening_udp_ports".to_owned(),
            m0.listening_udp_ports.ports.len(),
            m1.listening_udp_ports.ports.len(),
        ),
        (
            "listening_tcp_ports".to_owned(),
            m0.listening_tcp_ports.ports.len(),
            m1.listening_tcp_ports.ports.len(),
        ),
    ];
    for (name, value) in original.custom_metrics.iter().rev() {
        let len = |v: &CustomMetricValue| match v {
            CustomMetricValue::Number(_) => None,
            CustomMetricValue::NumberList(l) => Some(l.len()),
            CustomMetricValue::StringList(l) | CustomMetricValue::IpList(l) => Some(l.len()),
        };
        if let Some(n) = len(value) {
            lists.push((name.clone(), n, len(&kept.custom_metrics[name]).unwrap()));
        }
    }
    lists
}

/// The report with the entry that was dropped last put back.
fn with_last_drop_restored(original: &Report, kept: &Report) -> Report {
    let lists = lists_in_trim_order(original, kept);
    let (name, _, kept_len) = lists
        .iter()
        .rev()
        .find(|(_, total, kept)| kept < total)
        .unwrap()
        .clone();
    let mut restored = kept.clone();
    let m0 = original.metrics.as_ref().unwrap();
    let m1 = restored.metrics.as_mut().unwrap();
    match name.as_str() {
        "established_connections" => m1
            .tcp_connections
            .established_connections
            .connections
            .push(m0.tcp_connections.established_connections.connections[kept_len].clone()),
        "listening_udp_ports" => m1
            .listening_udp_ports
            .ports
            .push(m0.listening_udp_ports.ports[kept_len].clone()),
        "listening_tcp_ports" => m1
            .listening_tcp_ports
            .ports
            .push(m0.listening_tcp_ports.ports[kept_len].clone()),
        metric => match (
            &original.custom_metrics[metric],
            restored.custom_metrics.get_mut(metric).unwrap(),
        ) {
            (CustomMetricValue::NumberList(a), CustomMetricValue::NumberList(b)) => {
                b.push(a[kept_len])
            }
            (CustomMetricValue::StringList(a), CustomMetricValue::StringList(b))
            | (CustomMetricValue::IpList(a), CustomMetricValue::IpList(b)) => {
                b.push(a[kept_len].clone())
            }
            _ => unreachable!("only lists are trimmed"),
        },
    }
    restored
}

/// Every budget from "nothing fits" to "everything fits": the result never
/// exceeds the budget, drops follow the documented order from the end of
/// each list, totals stay true, counts match, and no entry is dropped that
/// could have stayed.
#[test]
fn trimming_follows_the_order_and_meets_every_budget_exactly() {
    let original = trimming_report();
    for format in FORMATS {
        let full = report::encode(&original, format).len();
        let mut minimal: Option<usize> = None;
        for budget in (0..=full + 1).rev() {
            let prepared = match report::fit(original.clone(), format, budget) {
                Ok(p) => p,
                Err(error) => {
                    let minimal =
                        minimal.expect("the largest failing budget comes after a fitting one");
                    assert_eq!(
                        budget,
                        minimal - 1,
                        "{format:?}: a budget of {budget} should fit"
                    );
                    assert_eq!(
                        error.to_string(),
                        format!(
                            "the {} report takes {minimal} bytes with every list emptied, over the budget of {budget} bytes",
                            format.label()
                        )
                    );
                    break;
                }
            };
            let (bytes, kept, trimmed) = (&prepared.bytes, &prepared.report, &prepared.trimmed);
            assert!(
                bytes.len() <= budget,
                "{format:?}: {} > {budget}",
                bytes.len()
            );
            assert_eq!(*bytes, report::encode(kept, format));
            minimal = Some(bytes.len());
            if budget >= full {
                assert_eq!(*trimmed, Trimmed::default());
                assert_eq!(kept, &original);
                continue;
            }
            // Totals keep the true counts.
            let (m0, m1) = (
                original.metrics.as_ref().unwrap(),
                kept.metrics.as_ref().unwrap(),
            );
            assert_eq!(m1.listening_tcp_ports.total, m0.listening_tcp_ports.total);
            assert_eq!(m1.listening_udp_ports.total, m0.listening_udp_ports.total);
            assert_eq!(
                m1.tcp_connections.established_connections.total,
                m0.tcp_connections.established_connections.total
            );
            // Order: a list loses entries only when every earlier list is empty.
            let lists = lists_in_trim_order(&original, kept);
            let mut earlier_all_gone = true;
            for (name, total, kept_len) in &lists {
                if kept_len < total {
                    assert!(
                        earlier_all_gone,
                        "{format:?} budget {budget}: {name} trimmed too early"
                    );
                }
                earlier_all_gone &= *kept_len == 0;
            }
            // Counts per list.
            let count = |name: &str| {
                let (_, total, kept) = lists.iter().find(|(n, ..)| n == name).unwrap();
                (total - kept) as u64
            };
            assert_eq!(
                trimmed.established_connections,
                count("established_connections")
            );
            assert_eq!(trimmed.listening_udp_ports, count("listening_udp_ports"));
            assert_eq!(trimmed.listening_tcp_ports, count("listening_tcp_ports"));
            for (name, dropped) in &trimmed.custom_metrics {
                assert_eq!(*dropped, count(name), "{name}");
            }
            let dropped: u64 = lists.iter().map(|(_, t, k)| (t - k) as u64).sum();
            assert_eq!(trimmed.total(), dropped);
            assert!(dropped > 0);
            // Kept entries are the first ones of the sorted order.
            let conns = &m1.tcp_connections.established_connections.connections;
            assert_eq!(
                conns[..],
                m0.tcp_connections.established_connections.connections[..conns.len()]
            );
            // Nothing was dropped that fits: the last dropped entry does not.
            let restored = with_last_drop_restored(&original, kept);
            assert!(
                report::encode(&restored, format).len() > budget,
                "{format:?} budget {budget}: one more entry would still fit"
            );
            assert_eq!(report::validate(kept), Ok(()));
        }
        assert!(
            minimal.is_some_and(|m| m < full / 3),
            "{format:?}: the sweep never reached the minimal report"
        );
    }
}

fn sample_with_connections(n: u32) -> Sample {
    let mut sample = golden_sample();
    sample.established_connections = (0..n)
        .map(|i| EstablishedConnection {
            remote_addr: if i % 4 == 0 {
                std::net::SocketAddr::new(
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
                        .into(),
                    8883,
                )
            } else {
                std::net::SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + i).into(), 443)
            },
            local_port: 32768 + (i % 28000) as u16,
            local_interface: Some("eth0".to_owned()),
        })
        .collect();
    sample
}

/// Greengrass nucleus lite carries about 7.2 KB of payload; a busy device
/// still gets a report that fits, with the true totals.
#[test]
fn nucleus_lite_budget_keeps_true_totals() {
    let sample = sample_with_connections(1000);
    for format in FORMATS {
        let prepared = report::prepare(&sample, GOLDEN_ID, format, 7000).unwrap();
        assert!(
            prepared.bytes.len() <= 7000,
            "{format:?}: {}",
            prepared.bytes.len()
        );
        let decoded = report::decode(&prepared.bytes, format).unwrap();
        assert_eq!(decoded, prepared.report);
        let metrics = decoded.metrics.unwrap();
        let established = &metrics.tcp_connections.established_connections;
        assert_eq!(established.total, 1000);
        assert_eq!(
            prepared.trimmed.established_connections,
            1000 - established.connections.len() as u64
        );
        assert!(
            established.connections.len() > 10,
            "{format:?} kept too few"
        );
        assert_eq!(prepared.trimmed.listening_udp_ports, 0);
        assert_eq!(metrics.listening_tcp_ports.ports.len(), 3);
        // Deterministic: the same sample always gives the same bytes.
        let again = report::prepare(&sample, GOLDEN_ID, format, 7000).unwrap();
        assert_eq!(again.bytes, prepared.bytes);
    }
    // The default budget fits 4,000 connections only after trimming.
    let big = sample_with_connections(4000);
    let prepared = report::prepare(&big, GOLDEN_ID, Format::Json, DEFAULT_MAX_BYTES).unwrap();
    assert!(prepared.bytes.len() <= DEFAULT_MAX_BYTES);
    assert!(prepared.trimmed.established_connections > 0);
    let cbor = report::prepare(&big, GOLDEN_ID, Format::Cbor, DEFAULT_MAX_BYTES).unwrap();
    assert!(cbor.trimmed.established_connections < prepared.trimmed.established_connections);
}

#[test]
fn report_ids_survive_a_restart() {
    // The lead persists `last`; a restart with the clock set back must not
    // reuse an id.
    let before = report::next_report_id(1_767_225_600_000, Some(1_767_225_599_000));
    let after_restart = report::next_report_id(1_767_225_000_000, Some(before));
    assert_eq!(before, 1_767_225_600_000);
    assert_eq!(after_restart, before + 1);
}
