//! The plugin commands as a person types them, with the real binary: one
//! rule for plugin names (`_` reads as `-`), and `collect --format sample`.

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
