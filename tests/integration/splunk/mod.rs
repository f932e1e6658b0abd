//! The Splunk app in siem/splunk/defender_edge: packaged by
//! scripts/splunk-app.sh and checked by Splunk AppInspect; its field mappings
//! evaluated (by the model in `app`, `eval` and `search`, since Splunk itself
//! cannot run here) against HEC events the agent really produced; its
//! reports and dashboard checked against its macros and event types.

// A failing unwrap is a failing test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod app;
mod conf;
mod eval;
mod search;
mod syntax;

#[cfg(feature = "firehose")]
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use self::app::App;
use self::conf::Conf;
#[cfg(feature = "firehose")]
use self::eval::Fields;
use crate::support;

fn app_dir() -> PathBuf {
    support::repo().join("siem/splunk/defender_edge")
}

/// Runs scripts/splunk-app.sh --out `out` and returns the archive it made.
fn package(out: &Path) -> PathBuf {
    let run = Command::new("bash")
        .arg(support::repo().join("scripts/splunk-app.sh"))
        .arg("--out")
        .arg(out)
        .output()
        .expect("run scripts/splunk-app.sh");
    assert!(
        run.status.success(),
        "scripts/splunk-app.sh failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    PathBuf::from(String::from_utf8(run.stdout).unwrap().trim())
}

// ------------------------------------------------------------ the package --

/// AppInspect's offline checks, all of them (precert mode, Splunk Cloud
/// checks included), on the archive users install: no error, no failure.
#[test]
fn app_package_passes_appinspect() {
    let appinspect = support::python().with_file_name("splunk-appinspect");
    assert!(
        appinspect.exists(),
        "{} is missing: run scripts/test.sh (tests/requirements.txt pins splunk-appinspect), \
         or pip install it into DEFENDER_EDGE_PYTHON's environment",
        appinspect.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = package(dir.path());
    let report = dir.path().join("appinspect.json");
    let run = Command::new(&appinspect)
        .arg("inspect")
        .arg(&archive)
        .args([
            "--mode",
            "precert",
            "--data-format",
            "json",
            "--max-messages",
            "all",
        ])
        // The trusted-libraries list is fetched from Splunk's site otherwise;
        // the app ships no binaries or Python for it to judge.
        .arg("--skip-trusted-libraries-update")
        .arg("--output-file")
        .arg(&report)
        .output()
        .expect("run splunk-appinspect");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "AppInspect wrote no report ({e}); its output:\n{}\n{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    });
    let report: Value = serde_json::from_str(&text).unwrap();
    let summary = &report["summary"];
    let mut bad = Vec::new();
    for check in report["reports"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["groups"].as_array().unwrap())
        .flat_map(|g| g["checks"].as_array().unwrap())
    {
        if matches!(check["result"].as_str(), Some("error" | "failure")) {
            bad.push(format!(
                "{} {}: {}",
                check["result"], check["name"], check["messages"]
            ));
        }
    }
    assert!(
        summary["error"] == 0 && summary["failure"] == 0 && bad.is_empty(),
        "AppInspect: {summary}\n{}",
        bad.join("\n")
    );
    assert!(
        summary["success"].as_u64().unwrap() > 50,
        "checks ran: {summary}"
    );
}

/// The archive holds exactly the app's files under defender_edge/, with the
/// modes Splunk expects, and the same sources give the same bytes.
#[test]
fn package_is_complete_and_reproducible() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, second) = (package(a.path()), package(b.path()));
    assert_eq!(
        first.file_name().unwrap().to_string_lossy(),
        format!("defender_edge-{}.tgz", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );

    let listing = Command::new("tar")
        .arg("tzvf")
        .arg(&first)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let mut files = BTreeSet::new();
    for line in String::from_utf8(listing.stdout).unwrap().lines() {
        let mode = &line[..10];
        let path = line.split_whitespace().last().unwrap();
        assert!(path.starts_with("defender_edge/"), "{line}");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "{line}");
        } else {
            assert_eq!(mode, "-rw-r--r--", "{line}");
            files.insert(path.trim_start_matches("defender_edge/").to_owned());
        }
    }
    let mut sources = BTreeSet::new();
    let mut stack = vec![app_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(app_dir()).unwrap();
                sources.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    assert_eq!(files, sources);
}

/// The app maps the events of this agent version and carries its version.
#[test]
fn app_version_is_the_agent_version() {
    let conf = Conf::read(&app_dir().join("default/app.conf")).unwrap();
    for stanza in ["launcher", "id"] {
        assert_eq!(
            conf.stanza(stanza).and_then(|s| s.get("version")),
            Some(env!("CARGO_PKG_VERSION")),
            "app.conf [{stanza}] version must be the Cargo workspace version"
        );
    }
    assert_eq!(
        conf.stanza("package").and_then(|s| s.get("id")),
        Some("defender_edge")
    );
}

// ------------------------------------------------- reports and dashboard --

/// Every search of the reports and the dashboard: (where, SPL).
fn searches() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let saved = Conf::read(&app_dir().join("default/savedsearches.conf")).unwrap();
    for stanza in &saved.stanzas {
        let search = stanza
            .get("search")
            .unwrap_or_else(|| panic!("report {} has no search", stanza.name));
        out.push((format!("report {}", stanza.name), search.to_owned()));
    }
    for (id, source) in dashboard()["dataSources"].as_object().unwrap() {
        assert_eq!(source["type"], "ds.search", "dashboard data source {id}");
        let query = source["options"]["query"].as_str().unwrap();
        out.push((format!("dashboard data source {id}"), query.to_owned()));
    }
    out
}

/// The Dashboard Studio definition of the overview.
fn dashboard() -> Value {
    let path = app_dir().join("default/data/ui/views/defender_edge_overview.xml");
    let xml = std::fs::read_to_string(&path).unwrap();
    assert!(
        xml.starts_with("<dashboard version=\"2\""),
        "a Dashboard Studio dashboard"
    );
    let start = xml.find("<definition><![CDATA[").unwrap() + "<definition><![CDATA[".len();
    let end = start + xml[start..].find("]]></definition>").unwrap();
    serde_json::from_str(&xml[start..end])
        .unwrap_or_else(|e| panic!("{}: the definition is not JSON: {e}", path.display()))
}

/// Reports and panels use only macros and event types the app defines, read
/// the index through `defender_edge_index`, and the dashboard's pieces fit.
#[test]
fn searches_use_the_apps_macros_and_event_types() {
    let macros = Conf::read(&app_dir().join("default/macros.conf")).unwrap();
    let app = App::load(&app_dir()).unwrap();
    let eventtypes = app.eventtype_names();
    for (place, spl) in searches() {
        assert!(
            spl.contains("`defender_edge_events`") || spl.contains("`defender_edge_index`"),
            "{place} does not start from the app's index macro: {spl}"
        );
        assert!(!spl.contains("index="), "{place} names an index: {spl}");
        for (i, name) in spl.split('`').enumerate() {
            if i % 2 == 1 {
                assert!(macros.stanza(name).is_some(), "{place}: no macro {name}");
            }
        }
        for word in spl.split_whitespace() {
            if let Some(name) = word.strip_prefix("eventtype=") {
                assert!(eventtypes.contains(&name), "{place}: no event type {name}");
            }
        }
    }
    let definition = dashboard();
    let sources: BTreeSet<&String> = definition["dataSources"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let visualizations = definition["visualizations"].as_object().unwrap();
    let mut used = BTreeSet::new();
    for (id, viz) in visualizations {
        let primary = viz["dataSources"]["primary"].as_str().unwrap();
        assert!(
            sources.contains(&primary.to_owned()),
            "{id} reads a missing {primary}"
        );
        used.insert(primary.to_owned());
        assert!(viz["title"].is_string(), "{id} has a title");
    }
    assert_eq!(
        used,
        sources
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        "every data source has a panel"
    );
    let placed: BTreeSet<&str> = definition["layout"]["structure"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["item"].as_str().unwrap())
        .collect();
    assert_eq!(
        placed,
        visualizations
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        "every panel is placed, once"
    );
    for input in definition["layout"]["globalInputs"].as_array().unwrap() {
        assert!(definition["inputs"][input.as_str().unwrap()].is_object());
    }
    let nav = std::fs::read_to_string(app_dir().join("default/data/ui/nav/default.xml")).unwrap();
    assert!(nav.contains("<view name=\"defender_edge_overview\" default=\"true\" />"));
}

// ------------------------------------------- events the agent produced --

/// HEC events written by `defender-edge run --once` through Firehose (moto),
/// twice with one state directory: the first run with a TCP listener, a UDP
/// socket and a connection the test opens, a profile that alarms on the
/// listener, and two example plugins (alerts, custom metrics);
/// the second after they are closed, so the alarm clears and the traffic
/// counters have a previous sample to be counted from.
#[cfg(feature = "firehose")]
fn events_from_the_agent() -> (Vec<Value>, u16, u16) {
    use std::net::{TcpListener, TcpStream, UdpSocket};

    use serde_json::json;

    use crate::firehose::Moto;
    use crate::plugins;

    let moto = Moto::start();
    moto.create_stream("siem", "siem-backup");
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).unwrap();
    for name in ["port-allowlist", "system-metrics"] {
        std::fs::copy(plugins::wasm(name), plugin_dir.join(format!("{name}.wasm"))).unwrap();
    }

    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let tcp_port = listener.local_addr().unwrap().port();
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    let (server, _) = listener.accept().unwrap();

    let config = json!({
        "thingName": "edge-splunk",
        "stateDir": dir.path().join("state"),
        "plugins": {"dir": plugin_dir, "settings": {
            "port-allowlist": {"config": {"tcp": "22", "udp": "68", "severity": "critical"}},
            "system-metrics": {"config": {"procDir": "/proc"}, "grants": {"readDirs": {"/proc": "/proc"}}}
        }},
        "detection": {"intervalSeconds": "1", "profiles": [{
            "securityProfileName": "NoRogueListener",
            "behaviors": [{
                "name": "RoguePortClosed",
                "metric": "aws:listening-tcp-ports",
                "criteria": {"comparisonOperator": "not-in-port-set", "value": {"ports": [tcp_port]},
                    "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}
            }]
        }]},
        "publish": {"firehose": {"enabled": "true", "deliveryStream": "siem",
            "region": "us-east-1", "flushIntervalMs": "100"}}
    });
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let run = || {
        let out = Command::new(support::bin())
            .args(["run", "--once", "--config"])
            .arg(&path)
            .env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
            .env_remove("SVCUID")
            .env_remove("AWS_IOT_THING_NAME")
            .env("AWS_ENDPOINT_URL_FIREHOSE", moto.url())
            .env("AWS_ACCESS_KEY_ID", "AKIDSPLUNKTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "run --once failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run();
    drop((listener, udp, client, server));
    run();
    (moto.delivered("siem-backup"), tcp_port, udp_port)
}

#[cfg(feature = "firehose")]
fn values<'f>(fields: &'f Fields, name: &str) -> Vec<&'f str> {
    fields
        .get(name)
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

#[cfg(feature = "firehose")]
fn json_strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The CIM fields, event types and tags the app gives every event the agent
/// produced, checked against what each event says (not against the app).
#[cfg(feature = "firehose")]
#[test]
fn cim_fields_of_events_the_agent_produced() {
    let app = App::load(&app_dir()).unwrap_or_else(|e| panic!("{e}"));
    let (events, tcp_port, udp_port) = events_from_the_agent();
    assert!(!events.is_empty(), "Firehose delivered nothing");
    // Fields the app maps that no event carries yet: the owning process
    // (process attribution). When events carry a `process` object, check
    // these fields below like the others.
    let awaiting: BTreeSet<&str> = [
        "process",
        "process_id",
        "process_name",
        "process_path",
        "user",
    ]
    .into();
    let mapped = app.mapped_fields();
    assert!(
        awaiting.iter().all(|a| mapped.contains(*a)),
        "the app maps the process fields for Endpoint.Ports: {mapped:?}"
    );
    let mut seen_eventtypes = BTreeSet::new();
    let mut seen_mapped = BTreeSet::new();
    let mut seen = BTreeMap::<&str, usize>::new();
    let mut mark = |what: &'static str| *seen.entry(what).or_default() += 1;

    for hec in &events {
        let f = app
            .fields(hec)
            .unwrap_or_else(|e| panic!("{e}\nevent: {hec}"));
        let event = &hec["event"];
        let name = event["name"].as_str().unwrap();
        let host = hec["host"].as_str().unwrap();
        let eventtypes: BTreeSet<&str> = values(&f, "eventtype").into_iter().collect();
        let tags: BTreeSet<&str> = values(&f, "tag").into_iter().collect();
        let present: BTreeSet<&str> = mapped
            .iter()
            .map(String::as_str)
            .filter(|m| f.contains_key(*m))
            .collect();
        seen_eventtypes.extend(eventtypes.iter().map(|e| e.to_string()));
        seen_mapped.extend(present.iter().map(|m| m.to_string()));
        let context = format!("{hec}\nfields: {f:?}");
        let expect = |family: &str, fields: &[&str], want_tags: &[&str]| {
            let mut want_types = BTreeSet::from(["defender_edge"]);
            if !family.is_empty() {
                want_types.insert(family);
            }
            assert_eq!(eventtypes, want_types, "event types of {context}");
            assert_eq!(
                tags,
                want_tags.iter().copied().collect(),
                "tags of {context}"
            );
            let mut want: BTreeSet<&str> = ["dvc", "vendor_product"].into();
            want.extend(fields);
            assert_eq!(present, want, "CIM fields of {context}");
        };

        assert_eq!(values(&f, "dvc"), [host], "{context}");
        assert_eq!(values(&f, "vendor_product"), ["defender-edge"], "{context}");
        assert!(awaiting.iter().all(|a| !f.contains_key(*a)), "{context}");

        match name {
            "aws:listening-tcp-ports" | "aws:listening-udp-ports" => {
                let transport = if name.contains("tcp") { "tcp" } else { "udp" };
                let ports = json_strings(&event["value"]["ports"]);
                assert_eq!(values(&f, "dest"), [host], "{context}");
                assert_eq!(values(&f, "state"), ["listening"], "{context}");
                if ports.is_empty() {
                    expect("", &["dest", "state"], &[]);
                    continue;
                }
                expect(
                    "defender_edge_listening_ports",
                    &["dest", "dest_port", "transport", "state"],
                    &["listening", "port"],
                );
                assert_eq!(values(&f, "dest_port"), ports, "{context}");
                // Endpoint.Ports pairs transport and dest_port value by value
                // (mvzip) and makes a row of each pair: every port must get one.
                let rows: Vec<String> = values(&f, "transport")
                    .iter()
                    .zip(values(&f, "dest_port"))
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect();
                let want: Vec<String> = ports.iter().map(|p| format!("{transport}/{p}")).collect();
                assert_eq!(rows, want, "{context}");
                let ours = if transport == "tcp" {
                    tcp_port
                } else {
                    udp_port
                };
                if rows.contains(&format!("{transport}/{ours}")) {
                    mark(if transport == "tcp" {
                        "our tcp port"
                    } else {
                        "our udp port"
                    });
                }
            }
            "aws:destination-ip-addresses" => {
                let peers = json_strings(&event["value"]["cidrs"]);
                assert_eq!(values(&f, "src"), [host], "{context}");
                assert_eq!(values(&f, "transport"), ["tcp"], "{context}");
                if peers.is_empty() {
                    expect("", &["src", "transport"], &[]);
                    continue;
                }
                expect(
                    "defender_edge_destinations",
                    &["src", "dest", "dest_ip", "transport"],
                    &["communicate", "network"],
                );
                assert_eq!(values(&f, "dest"), peers, "{context}");
                assert_eq!(values(&f, "dest_ip"), peers, "{context}");
                if peers.iter().any(|p| p == "127.0.0.1") {
                    mark("our connection");
                }
            }
            "aws:all-bytes-in"
            | "aws:all-bytes-out"
            | "aws:all-packets-in"
            | "aws:all-packets-out" => {
                let field = name.trim_start_matches("aws:all-").replace('-', "_");
                expect(
                    "defender_edge_traffic",
                    &["src", &field],
                    &["communicate", "network"],
                );
                assert_eq!(values(&f, "src"), [host], "{context}");
                assert_eq!(
                    values(&f, &field),
                    [event["value"]["count"].to_string()],
                    "{context}"
                );
                mark("traffic");
            }
            "edge:alert" => {
                let alert = &event["alert"];
                let detect = alert["source"].as_str().unwrap().starts_with("detect/");
                let clear = alert["attributes"]["state"] == "clear"
                    || alert["attributes"]["state"] == "invalidated";
                let kind = match (detect, clear) {
                    (true, true) => "event",
                    (true, false) => "alarm",
                    (false, _) => "alert",
                };
                let fields = [
                    "dest",
                    "signature",
                    "description",
                    "app",
                    "id",
                    "severity",
                    "type",
                ];
                if kind == "event" {
                    expect("defender_edge_alarm_clear", &fields, &[]);
                } else {
                    expect("defender_edge_alert", &fields, &["alert"]);
                }
                let severity = match alert["severity"].as_str().unwrap() {
                    "info" => "informational",
                    other => other,
                };
                assert_eq!(values(&f, "type"), [kind], "{context}");
                assert_eq!(values(&f, "severity"), [severity], "{context}");
                assert_eq!(values(&f, "dest"), [host], "{context}");
                assert_eq!(
                    values(&f, "signature"),
                    [alert["name"].as_str().unwrap()],
                    "{context}"
                );
                assert_eq!(
                    values(&f, "description"),
                    [alert["message"].as_str().unwrap()],
                    "{context}"
                );
                assert_eq!(
                    values(&f, "app"),
                    [alert["source"].as_str().unwrap()],
                    "{context}"
                );
                assert_eq!(
                    values(&f, "id"),
                    [event["edge"]["event_id"].as_str().unwrap()],
                    "{context}"
                );
                let ours = tcp_port.to_string();
                let about_ours = alert["attributes"]["port"].as_str() == Some(ours.as_str())
                    || alert["attributes"]["offending"]
                        .as_str()
                        .is_some_and(|o| o.contains(&ours));
                match (kind, about_ours) {
                    ("alert", true) => {
                        assert_eq!(values(&f, "severity"), ["critical"], "{context}");
                        mark("plugin alert");
                    }
                    ("alarm", true) => {
                        assert_eq!(values(&f, "signature"), ["RoguePortClosed"], "{context}");
                        assert_eq!(values(&f, "app"), ["detect/NoRogueListener"], "{context}");
                        mark("alarm");
                    }
                    ("event", _) => {
                        assert_eq!(values(&f, "severity"), ["informational"], "{context}");
                        mark("clear");
                    }
                    _ => {}
                }
            }
            "edge:change" => {
                expect("defender_edge_change", &[], &[]);
                let change = &event["change"];
                let kind = change["kind"].as_str().unwrap();
                assert!(
                    [
                        "listener-opened",
                        "listener-closed",
                        "destination-first-seen"
                    ]
                    .contains(&kind),
                    "{context}"
                );
                assert_eq!(values(&f, "change.kind"), [kind], "{context}");
                // The second run finds the test's listener gone.
                if kind == "listener-closed" && change["port"] == tcp_port {
                    mark("change");
                }
            }
            "edge:health" => {
                expect("defender_edge_health", &[], &[]);
                let state = values(&f, "health.state");
                assert!(state == ["ok"] || state == ["degraded"], "{context}");
                assert_eq!(
                    values(&f, "health.version"),
                    [env!("CARGO_PKG_VERSION")],
                    "{context}"
                );
                // The status values by area: the samples `run` took.
                assert!(f.contains_key("health.status.collect.samples"), "{context}");
                mark("health");
            }
            count if count.starts_with("aws:num-") => expect("defender_edge_counts", &[], &[]),
            _custom => {
                expect("defender_edge_custom_metric", &[], &[]);
                mark("custom metric");
            }
        }
    }

    for what in [
        "our tcp port",
        "our udp port",
        "our connection",
        "traffic",
        "plugin alert",
        "alarm",
        "clear",
        "custom metric",
        "health",
        "change",
    ] {
        assert!(seen.contains_key(what), "no event showed {what}: {seen:?}");
    }
    let all_eventtypes: BTreeSet<String> = app
        .eventtype_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        seen_eventtypes, all_eventtypes,
        "every event type matched some event"
    );
    let want_mapped: BTreeSet<String> = mapped
        .iter()
        .filter(|m| !awaiting.contains(m.as_str()))
        .cloned()
        .collect();
    assert_eq!(
        seen_mapped, want_mapped,
        "every mapping gave a value on some event"
    );
}
