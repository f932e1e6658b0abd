//! The plugin commands as a person types them, with the real binary: one
//! rule for plugin names (`_` reads as `-`), `plugin test` on what
//! `collect` prints, and what `plugin test` shows.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::plugins::wasm;
use crate::support;

fn defender_edge() -> Command {
    let mut cmd = Command::new(support::bin());
    cmd.env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .env_remove("SVCUID")
        .env_remove("DEFENDER_EDGE_CONFIG")
        .env_remove("RUST_LOG");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn proc_root() -> PathBuf {
    support::fixture("proc").join("captured")
}

/// `collect` of the captured proc tree with the plugins in `plugins` and
/// the `plugins.settings` given.
fn collect_with(dir: &Path, plugins: &Path, settings: serde_json::Value) -> Output {
    let config = dir.join("config.json");
    let doc = serde_json::json!({
        "stateDir": dir.join("state"),
        "plugins": { "settings": settings },
    });
    std::fs::write(&config, doc.to_string()).unwrap();
    defender_edge()
        .args(["collect", "--thing", "t", "--proc-root"])
        .arg(proc_root())
        .arg("--plugins")
        .arg(plugins)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap()
}

fn tcp_ports(out: &Output) -> Vec<u32> {
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report =
        defender_edge::report::decode(&out.stdout, defender_edge::report::Format::Json).unwrap();
    let metrics = report.metrics.expect("metrics");
    metrics
        .listening_tcp_ports
        .ports
        .iter()
        .map(|p| p.port)
        .collect()
}

/// A plugin folder holding port-allowlist as cargo names it.
fn underscore_folder(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(wasm("port-allowlist"), plugins.join("port_allowlist.wasm")).unwrap();
    plugins
}

fn drop_ephemeral() -> serde_json::Value {
    serde_json::json!({"config": {"tcp": "2024", "dropEphemeralFrom": "30000"}})
}

#[test]
fn plugin_names_settings_under_the_dashed_name_apply_to_the_underscore_file() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = underscore_folder(tmp.path());
    // Without settings the captured tree reports five TCP ports.
    let plain = collect_with(tmp.path(), &plugins, serde_json::json!({}));
    assert_eq!(tcp_ports(&plain).len(), 5);
    let out = collect_with(
        tmp.path(),
        &plugins,
        serde_json::json!({ "port-allowlist": drop_ephemeral() }),
    );
    assert_eq!(
        tcp_ports(&out),
        [2024],
        "the settings of port-allowlist apply to port_allowlist.wasm: {}",
        text(&out.stderr)
    );
    // The key may be spelled as cargo spells the file, too.
    let out = collect_with(
        tmp.path(),
        &plugins,
        serde_json::json!({ "port_allowlist": drop_ephemeral() }),
    );
    assert_eq!(tcp_ports(&out), [2024], "{}", text(&out.stderr));
}

#[test]
fn plugin_names_two_keys_for_one_plugin_are_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = underscore_folder(tmp.path());
    let out = collect_with(
        tmp.path(),
        &plugins,
        serde_json::json!({ "port-allowlist": drop_ephemeral(), "port_allowlist": {} }),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`port-allowlist` and `port_allowlist` name the same plugin"),
        "{stderr}"
    );
}

#[test]
fn plugin_names_settings_for_no_plugin_are_warned_naming_the_plugins_present() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = underscore_folder(tmp.path());
    let out = collect_with(
        tmp.path(),
        &plugins,
        serde_json::json!({ "port-alowlist": drop_ephemeral() }),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("port-alowlist")
            && stderr.contains("its settings apply to nothing")
            && stderr.contains("present=port-allowlist"),
        "{stderr}"
    );
}

fn plugin_test(plugin: &Path, sample: &Path, extra: &[&str]) -> Output {
    defender_edge()
        .args(["plugin", "test"])
        .arg(plugin)
        .arg("--sample")
        .arg(sample)
        .args(extra)
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn template_sample() -> PathBuf {
    support::repo().join("plugins/template/sample.json.tmpl")
}

/// `collect` of the captured tree into `dir/<file>`, as docs/DEPLOY.md
/// section 3 does it (`collect ... > /tmp/sample.json`).
fn collect_into(dir: &Path, file: &str, args: &[&str]) -> PathBuf {
    let out = defender_edge()
        .args(["collect", "--thing", "pi-lab-01", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--proc-root")
        .arg(proc_root())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = dir.join(file);
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

#[test]
fn plugin_test_takes_what_collect_prints_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let plugin = wasm("port-allowlist");
    for (format, file, input) in [
        (None, "sample.json", "input:   a json report"),
        (
            Some("json-short"),
            "short.json",
            "input:   a json-short report",
        ),
        (Some("cbor"), "report.cbor", "input:   a cbor report"),
        (Some("sample"), "s.json", ""),
    ] {
        let args: Vec<&str> = format.map_or(vec![], |f| vec!["--format", f]);
        let sample = collect_into(tmp.path(), file, &args);
        let out = plugin_test(
            &plugin,
            &sample,
            &[
                "--config",
                "tcp=2024",
                "--config",
                "dropEphemeralFrom=30000",
            ],
        );
        let out = stdout_ok(&out);
        assert!(out.contains("outcome: pass"), "{format:?}: {out}");
        // The captured tree listens on five TCP ports; four are ephemeral.
        assert!(
            out.contains("listening_tcp_ports: 4 of 5 dropped"),
            "{format:?}: {out}"
        );
        match format {
            Some("sample") => assert!(!out.contains("input:"), "{out}"),
            _ => assert!(out.contains(input), "{format:?}: {out}"),
        }
    }
    let garbage = tmp.path().join("garbage.json");
    std::fs::write(&garbage, r#"{"hello": 1}"#).unwrap();
    let out = plugin_test(&plugin, &garbage, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("neither a sample") && stderr.contains("nor a Device Defender report"),
        "{stderr}"
    );
}

#[test]
fn plugin_collect_format_sample_prints_the_pipeline_sample_with_annotations_and_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins =
        crate::plugins::plugin_folder(tmp.path(), &["owner-enrichment", "port-allowlist"]);
    let config = tmp.path().join("config.json");
    let doc = serde_json::json!({
        "stateDir": tmp.path().join("state"),
        "plugins": {"settings": {
            "owner-enrichment": {"config": {"owner": "soc-team"}},
            "port-allowlist": {"config": {"tcp": "2024"}},
        }},
    });
    std::fs::write(&config, doc.to_string()).unwrap();
    let out = defender_edge()
        .args([
            "collect",
            "--format",
            "sample",
            "--thing",
            "pi-lab-01",
            "--proc-root",
        ])
        .arg(proc_root())
        .arg("--plugins")
        .arg(&plugins)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let out = stdout_ok(&out);
    let sample: defender_edge::sample::Sample = serde_json::from_str(&out).unwrap();
    assert_eq!(sample.thing, "pi-lab-01");
    assert_eq!(sample.listening_tcp_ports.len(), 5);
    assert_eq!(
        sample.annotations.get("owner").map(String::as_str),
        Some("soc-team")
    );
    // Four of the five TCP ports are not on the allowlist.
    let tcp_alerts = sample
        .alerts
        .iter()
        .filter(|a| a.source == "port-allowlist" && a.message.starts_with("tcp port"))
        .count();
    assert_eq!(tcp_alerts, 4, "{out}");
}

#[test]
fn plugin_test_prints_a_summary_first_and_the_sample_only_with_full() {
    let tmp = tempfile::tempdir().unwrap();
    let out = plugin_test(
        &wasm("port-allowlist"),
        &template_sample(),
        &["--config", "tcp=443"],
    );
    let out = stdout_ok(&out);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("plugin:  port-allowlist (compiled, loaded in "),
        "{out}"
    );
    assert!(
        lines[0].contains(" ms, ran in ") && lines[0].ends_with(" µs)"),
        "{out}"
    );
    assert_eq!(lines[1], "outcome: pass", "{out}");
    assert!(
        out.contains("alerts:  1\n  [high] port-not-allowed: tcp port 22"),
        "{out}"
    );
    assert!(
        out.contains("\nlists:\n  established_connections: "),
        "{out}"
    );
    assert!(
        out.contains("  listening_tcp_ports: 0 of 1 dropped\n"),
        "{out}"
    );
    assert!(
        out.contains("  established_connections: 0 of 2 dropped\n"),
        "{out}"
    );
    assert!(out.contains("metrics: none added\n"), "{out}");
    assert!(out.contains("annotations: none set\n"), "{out}");
    assert!(
        !out.contains("\"remote_addr\""),
        "no sample without --full: {out}"
    );

    // What changed: a metric added, an annotation set.
    let out = stdout_ok(&plugin_test(
        &wasm("system-metrics"),
        &template_sample(),
        &[],
    ));
    assert!(out.contains("metrics: 1 added (remote_ips)\n"), "{out}");
    let out = stdout_ok(&plugin_test(
        &wasm("owner-enrichment"),
        &template_sample(),
        &["--config", "owner=soc-team"],
    ));
    assert!(out.contains("annotations: owner=soc-team"), "{out}");

    let out = stdout_ok(&plugin_test(
        &wasm("port-allowlist"),
        &template_sample(),
        &["--config", "tcp=443", "--full"],
    ));
    let json = &out[out.find("sample:\n").unwrap() + 8..];
    let back: defender_edge::sample::Sample = serde_json::from_str(json).unwrap();
    assert_eq!(back.alerts.len(), 1);
    drop(tmp);
}

#[test]
fn plugin_test_json_is_one_object_for_tools() {
    let out = stdout_ok(&plugin_test(
        &wasm("port-allowlist"),
        &template_sample(),
        &["--config", "tcp=443", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plugin"], "port-allowlist");
    assert_eq!(v["loaded_from"], "compiled");
    assert_eq!(v["input"], "sample");
    assert_eq!(v["outcome"], "pass");
    assert!(v["error"].is_null());
    assert!(v["load_ms"].is_u64() && v["run_us"].is_u64());
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(v["alerts"][0]["name"], "port-not-allowed");
    let tcp = &v["changes"]["lists"]["listening_tcp_ports"];
    assert_eq!(
        (tcp["before"].as_u64(), tcp["dropped"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(v["changes"]["metrics_added"], serde_json::json!([]));
    assert_eq!(v["changes"]["annotations_set"], serde_json::json!({}));
    let sample: defender_edge::sample::Sample =
        serde_json::from_value(v["sample"].clone()).unwrap();
    assert_eq!(sample.alerts.len(), 1);

    let out = stdout_ok(&plugin_test(
        &wasm("fault-panic"),
        &template_sample(),
        &["--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"], "failed");
    assert!(v["error"].is_string(), "{v}");
}
