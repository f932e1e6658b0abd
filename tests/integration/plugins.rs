//! The plugin runtime with real WebAssembly plugins built from source: the
//! examples in plugins/examples and the misbehaving fixtures in
//! tests/fixtures/plugins, each loaded and run through `PluginHost`.

// A failing unwrap is a failing test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use defender_edge::plugin::{PluginHost, PluginsConfig, Processed};
use defender_edge::sample::{
    Alert, CustomMetricValue, EstablishedConnection, ListeningPort, NetworkStats, Sample, Severity,
};
use defender_edge::status::{Status, Value};
use serde_json::json;

use crate::support;

/// Builds the guest workspaces once per test process and returns the folder
/// holding the `.wasm` files. Fails (never skips) when the target is missing.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let sysroot = std::process::Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .expect("cannot run rustc --print sysroot");
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        assert!(
            sysroot.join("lib/rustlib/wasm32-wasip2").is_dir(),
            "the wasm32-wasip2 target is not installed (looked in {}): run `rustup target add wasm32-wasip2`",
            sysroot.display()
        );
        let target_dir = std::env::var_os("DEFENDER_EDGE_WASM_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| support::repo().join("target").join("wasm-guests"));
        for workspace in ["plugins", "tests/fixtures/plugins"] {
            let manifest = support::repo().join(workspace).join("Cargo.toml");
            let out = std::process::Command::new(&cargo)
                .args(["build", "--target", "wasm32-wasip2", "--release", "--manifest-path"])
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&target_dir)
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .expect("cannot run cargo");
            assert!(
                out.status.success(),
                "building {} for wasm32-wasip2 failed:\n{}",
                manifest.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = target_dir.join("wasm32-wasip2").join("release");
        let wat_dir = support::fixture("plugins/wat");
        for entry in std::fs::read_dir(&wat_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wat") {
                let stem = path.file_stem().unwrap().to_str().unwrap();
                let component = component_from_wat(&path);
                std::fs::write(out.join(format!("{}.wasm", stem.replace('-', "_"))), component)
                    .unwrap();
            }
        }
        out
    })
}

/// A plugin component from a core module in WAT that exports the processor
/// functions under their canonical ABI names: the way `wasm-tools component
/// embed` + `component new` build one, with the interface from wit/.
fn component_from_wat(path: &Path) -> Vec<u8> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("{what} {}: {e:#}", path.display()) };
    let mut module = wat::parse_file(path).unwrap_or_else(|e| fail("parsing", &e));
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(support::repo().join("wit"))
        .unwrap_or_else(|e| fail("reading wit/ for", &e));
    let world = resolve
        .select_world(&[package], Some("plugin"))
        .unwrap_or_else(|e| fail("finding the plugin world for", &e));
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap_or_else(|e| fail("embedding the interface in", &e));
    wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .unwrap_or_else(|e| fail("making a component of", &e))
}

/// A built guest, by crate name (`port-allowlist`, `fault-loop`...).
pub fn wasm(crate_name: &str) -> PathBuf {
    let path = guests().join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// `<dir>/plugins` holding the built example `names`, each under its plugin
/// name (`owner-enrichment.wasm`), as a host's plugin folder.
pub fn plugin_folder(dir: &Path, names: &[&str]) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    for name in names {
        std::fs::copy(wasm(name), plugins.join(format!("{name}.wasm"))).expect("copy plugin");
    }
    plugins
}

/// Log lines written while `f` ran on this thread.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Runs `f` with a DEBUG subscriber on this thread; returns its result and
/// the log text.
pub(crate) fn capture<R>(f: impl FnOnce() -> R) -> (R, String) {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    (result, text)
}

/// A compile cache shared by the tests that do not look into the cache:
/// entries are keyed by the component's digest, and compiling a plugin in a
/// debug build takes seconds.
pub(crate) fn shared_cache() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// A plugin folder, cache and status for one test.
pub(crate) struct Rig {
    pub tmp: tempfile::TempDir,
    pub status: Status,
    /// Where compiled plugins go: the rig's own, or [`shared_cache`].
    cache: PathBuf,
}

impl Rig {
    /// `plugins`: (plugin name, built crate) pairs copied into the folder.
    /// The rig has a compile cache of its own.
    pub fn new(plugins: &[(&str, &str)]) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("state").join("plugin-cache");
        Rig::with_cache(plugins, tmp, cache)
    }

    /// As [`Rig::new`], compiling into [`shared_cache`].
    pub fn shared(plugins: &[(&str, &str)]) -> Rig {
        Rig::with_cache(plugins, tempfile::tempdir().unwrap(), shared_cache().into())
    }

    fn with_cache(plugins: &[(&str, &str)], tmp: tempfile::TempDir, cache: PathBuf) -> Rig {
        std::fs::create_dir(tmp.path().join("plugins")).unwrap();
        let rig = Rig {
            tmp,
            status: Status::new(),
            cache,
        };
        for (name, krate) in plugins {
            rig.install(name, &wasm(krate));
        }
        rig
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("plugins")
    }

    pub fn cache(&self) -> PathBuf {
        self.cache.clone()
    }

    /// Copies a plugin in atomically (temp file + rename), as a deployment
    /// would.
    pub fn install(&self, name: &str, from: &Path) {
        let tmp = self.dir().join(format!(".{name}.wasm.tmp"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir().join(format!("{name}.wasm"))).unwrap();
    }

    pub fn config(&self, extra: serde_json::Value) -> PluginsConfig {
        let mut value = json!({ "dir": self.dir() });
        if let serde_json::Value::Object(extra) = extra {
            value.as_object_mut().unwrap().extend(extra);
        }
        serde_json::from_value(value).unwrap()
    }

    pub fn start(&self, extra: serde_json::Value) -> (PluginHost, String) {
        let config = self.config(extra);
        let (host, logs) =
            capture(|| PluginHost::start(&config, &self.cache(), self.status.clone()));
        (host.unwrap(), logs)
    }

    pub fn n(&self, plugin: &str, counter: &str) -> u64 {
        self.status.number(&format!("plugin.{plugin}.{counter}"))
    }

    pub fn text(&self, plugin: &str, what: &str) -> String {
        match self.status.get(&format!("plugin.{plugin}.{what}")) {
            Some(Value::Text(t)) => t,
            other => panic!("plugin.{plugin}.{what} is {other:?}"),
        }
    }
}

pub(crate) fn port(port: u16, interface: Option<&str>) -> ListeningPort {
    ListeningPort {
        port,
        interface: interface.map(str::to_owned),
    }
}

/// A device with a rogue FTP server (21), SSH (22) and an ephemeral listener;
/// the sample every plugin test feeds its plugins.
pub(crate) fn sample() -> Sample {
    let conn = |addr: &str, local_port| EstablishedConnection {
        remote_addr: addr.parse().unwrap(),
        local_port,
        local_interface: Some("eth0".into()),
    };
    Sample {
        thing: "pi-7".into(),
        timestamp_ms: 1_767_225_600_000,
        listening_tcp_ports: vec![port(21, None), port(22, Some("eth0")), port(40000, None)],
        listening_udp_ports: vec![port(68, None)],
        established_connections: vec![
            conn("10.0.0.9:443", 40112),
            conn("[2001:db8::7]:8883", 40113),
        ],
        network_stats: Some(NetworkStats {
            bytes_in: 5120,
            bytes_out: 2048,
            packets_in: 40,
            packets_out: 31,
        }),
        alerts: vec![Alert {
            source: "detect/baseline".into(),
            name: "new-port".into(),
            severity: Severity::Medium,
            message: "port 21 appeared".into(),
            attributes: Default::default(),
        }],
        ..Sample::default()
    }
}

pub(crate) fn passed(p: Processed) -> Sample {
    match p {
        Processed::Pass(s) => s,
        other => panic!("expected the sample to pass, got {other:?}"),
    }
}

#[test]
fn port_allowlist_alerts_on_rogue_ftp_and_drops_ephemeral_ports() {
    let rig = Rig::shared(&[("port-allowlist", "port-allowlist")]);
    let (host, logs) = rig.start(json!({ "settings": { "port-allowlist": {
        "config": { "tcp": "22", "udp": 68, "dropEphemeralFrom": "32768" } } } }));
    assert!(logs.contains("plugin loaded"), "{logs}");
    let out = passed(host.process(sample()));
    assert_eq!(
        out.listening_tcp_ports,
        vec![port(21, None), port(22, Some("eth0"))]
    );
    assert_eq!(out.alerts.len(), 2, "{:?}", out.alerts);
    assert_eq!(
        out.alerts[0],
        sample().alerts[0],
        "existing alerts are kept"
    );
    let alert = &out.alerts[1];
    assert_eq!(alert.source, "port-allowlist");
    assert_eq!(alert.name, "port-not-allowed");
    assert_eq!(alert.severity, Severity::High);
    assert_eq!(alert.attributes["port"], "21");
    assert_eq!(rig.n("port-allowlist", "calls"), 1);
    assert_eq!(rig.n("port-allowlist", "alerts"), 1);
    assert_eq!(rig.text("port-allowlist", "state"), "running");
}

#[test]
fn plugins_run_in_configured_order_and_enrich() {
    let rig = Rig::shared(&[
        ("port-allowlist", "port-allowlist"),
        ("owner", "owner-enrichment"),
    ]);
    let (host, _) = rig.start(json!({ "settings": {
        "owner": { "order": 1, "config": { "owner": "plant-ops", "site": "lyon-2", "criticality": "high" } },
        "port-allowlist": { "order": "2", "config": { "tcp": "21,22", "udp": "68", "dropEphemeralFrom": 32768 } } } }));
    let names: Vec<String> = host.plugins().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["owner", "port-allowlist"]);
    let out = passed(host.process(sample()));
    assert_eq!(out.annotations["owner"], "plant-ops");
    assert_eq!(out.annotations["criticality"], "high");
    assert_eq!(out.alerts.len(), 1, "everything is allowed now");
}

#[test]
fn system_metrics_reads_only_what_is_granted() {
    let rig = Rig::shared(&[("system-metrics", "system-metrics")]);
    let granted = rig.tmp.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    std::fs::write(granted.join("loadavg"), "0.10 0.20 0.30 2/187 999\n").unwrap();
    std::fs::write(
        granted.join("meminfo"),
        "MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 250 kB\n",
    )
    .unwrap();
    std::fs::write(
        granted.join("auth.log"),
        "Nov 23 sshd[1]: Failed password for root\n",
    )
    .unwrap();
    let settings = |grants: serde_json::Value| {
        json!({ "settings": { "system-metrics": {
            "config": { "procDir": "/host", "authLog": "/host/auth.log" },
            "grants": grants } } })
    };

    // Without the grant the plugin cannot see the file, so init fails and
    // says so; the host runs on.
    let (host, logs) = rig.start(settings(json!({})));
    assert!(
        logs.contains("config key authLog: cannot read /host/auth.log"),
        "{logs}"
    );
    assert!(
        rig.text("system-metrics", "state")
            .starts_with("failed: plugin system-metrics: init failed")
    );
    assert_eq!(passed(host.process(sample())), sample());
    drop(host);

    let (host, _) = rig.start(settings(json!({ "readDirs": { "/host": granted } })));
    let out = passed(host.process(sample()));
    let metric = |s: &Sample, n: &str| s.custom_metrics.get(n).cloned();
    assert_eq!(
        metric(&out, "process_count"),
        Some(CustomMetricValue::Number(187.0))
    );
    assert_eq!(
        metric(&out, "memory_used_percent"),
        Some(CustomMetricValue::Number(75.0))
    );
    assert_eq!(
        metric(&out, "ssh_failed_logins"),
        Some(CustomMetricValue::Number(0.0)),
        "lines before start are not counted"
    );
    assert_eq!(
        metric(&out, "remote_ips"),
        Some(CustomMetricValue::IpList(vec![
            "10.0.0.9".into(),
            "2001:db8::7".into()
        ]))
    );
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(granted.join("auth.log"))
        .unwrap();
    writeln!(log, "Nov 23 sshd[2]: Invalid user admin from 203.0.113.9").unwrap();
    writeln!(
        log,
        "Nov 23 sshd[2]: Failed password for invalid user admin"
    )
    .unwrap();
    let out = passed(host.process(sample()));
    assert_eq!(
        metric(&out, "ssh_failed_logins"),
        Some(CustomMetricValue::Number(2.0)),
        "state (the log offset) persists between calls"
    );
}

#[test]
fn infinite_loop_times_out_then_plugin_is_disabled_until_reloaded() {
    let rig = Rig::shared(&[("loop", "fault-loop")]);
    let (host, _) = rig.start(json!({ "settings": { "loop": { "limits": {
        "callTimeoutMs": 50, "restartBackoffMs": 0, "maxFailures": 3 } } } }));
    let started = Instant::now();
    for i in 1..=3 {
        let (out, logs) = capture(|| host.process(sample()));
        assert_eq!(
            passed(out),
            sample(),
            "fail-open passes the sample unchanged"
        );
        assert!(
            logs.contains("ran longer than callTimeoutMs (50 ms)"),
            "{logs}"
        );
        assert_eq!(rig.n("loop", "timeouts"), i);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rig.n("loop", "restarts"), 2);
    assert_eq!(rig.n("loop", "disabled"), 1);
    assert!(
        rig.text("loop", "state")
            .starts_with("disabled: 3 failures in 300 s")
    );

    // Disabled: no more calls, the sample passes, until a reload.
    assert_eq!(passed(host.process(sample())), sample());
    assert_eq!(rig.n("loop", "calls"), 3);
    assert_eq!(rig.n("loop", "skipped"), 1);
    host.reload("loop").unwrap();
    assert_eq!(rig.text("loop", "state"), "running");
    assert_eq!(passed(host.process(sample())), sample());
    assert_eq!(rig.n("loop", "calls"), 4);
    assert_eq!(rig.n("loop", "timeouts"), 4);
}

#[test]
fn memory_hog_is_stopped_by_the_memory_limit() {
    let rig = Rig::shared(&[("hog", "fault-memory-hog")]);
    // A budget no loaded machine exhausts before the 16 MiB: under a full
    // CI run the default 100 ms sometimes ran out first and the hog was
    // stopped as a timeout, which is not what this test is about.
    let (host, _) = rig.start(json!({ "settings": { "hog": { "limits": {
        "memoryMib": "16", "callTimeoutMs": 5000 } } } }));
    let (out, logs) = capture(|| host.process(sample()));
    assert_eq!(passed(out), sample());
    assert!(logs.contains("memory limit of 16 MiB exceeded"), "{logs}");
    assert_eq!(rig.n("hog", "out_of_memory"), 1);
    assert!(
        rig.text("hog", "last_error")
            .starts_with("ran out of memory")
    );
}

#[test]
fn panic_is_logged_and_fail_closed_holds_the_report() {
    let rig = Rig::shared(&[("panic", "fault-panic")]);
    let (host, _) = rig.start(json!({ "settings": { "panic": {
        "onFailure": "closed", "limits": { "restartBackoffMs": 0 } } } }));
    let (out, logs) = capture(|| host.process(sample()));
    match out {
        Processed::Held { plugin, reason } => {
            assert_eq!(plugin, "panic");
            assert!(reason.starts_with("trapped"), "{reason}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    assert!(
        logs.contains("plugin panicked: panicked at")
            && logs.contains("fixture panic with 3 listening ports"),
        "{logs}"
    );
    assert!(
        logs.contains("plugin=panic"),
        "log lines carry the plugin name: {logs}"
    );
    assert_eq!(rig.n("panic", "traps"), 1);
    assert_eq!(rig.n("panic", "held"), 1);
    // The next sample gets a fresh instance (a trapped store is never reused).
    assert!(matches!(host.process(sample()), Processed::Held { .. }));
    assert_eq!(rig.n("panic", "restarts"), 1);
}

#[test]
fn invalid_output_is_rejected_naming_plugin_and_field() {
    let rig = Rig::shared(&[
        ("bad-metric", "fault-invalid-metric"),
        ("huge", "fault-huge-output"),
    ]);
    // Building a million values takes a while on a loaded machine; the test
    // is about the output, not the deadline.
    let (host, _) =
        rig.start(json!({ "settings": { "huge": { "limits": { "callTimeoutMs": 5000 } } } }));
    let (out, logs) = capture(|| host.process(sample()));
    assert_eq!(passed(out), sample(), "both outputs are discarded");
    assert!(
        logs.contains("plugin=bad-metric field=custom-metrics[0]")
            && logs.contains(
                r#"custom metric name "aws:cpu" must not start with the reserved prefix"#
            ),
        "{logs}"
    );
    // A million f64s (8 MB) exceed hostcallBytes (4 MiB) while being lifted.
    assert!(
        logs.contains("plugin=huge")
            && logs.contains("handed the host more than hostcallBytes (4194304 bytes)"),
        "{logs}"
    );
    assert_eq!(rig.n("bad-metric", "rejected"), 1);
    assert_eq!(rig.n("huge", "output_too_large"), 1);
    drop(host);

    // Under the byte cap, the list-length limit catches it, by field.
    let (host, _) = rig.start(json!({ "settings": { "huge": { "limits": { "hostcallBytes": 16777216, "callTimeoutMs": 5000 } } } }));
    let (out, logs) = capture(|| host.process(sample()));
    assert_eq!(passed(out), sample());
    assert!(
        logs.contains("plugin=huge field=custom-metrics[0].value")
            && logs.contains("1000000 entries, more than the limit of 10000"),
        "{logs}"
    );
    assert_eq!(rig.n("huge", "rejected"), 1);
}

#[test]
fn plugins_that_cannot_load_are_reported_and_the_rest_run() {
    let rig = Rig::shared(&[
        ("slow-init", "fault-slow-init"),
        ("unknown-import", "fault-unknown-import"),
        ("future", "fault-future-world"),
        ("port-allowlist", "port-allowlist"),
    ]);
    std::fs::write(rig.dir().join("corrupt.wasm"), b"\0asm\x01\0\0\0garbage").unwrap();
    std::fs::write(rig.dir().join("not-wasm.wasm"), b"#!/bin/sh\necho hi\n").unwrap();
    let (host, logs) = rig.start(json!({ "settings": {
        "corrupt": { "onFailure": "closed" },
        "port-allowlist": { "config": { "tcp": "22" } } } }));
    for (plugin, expected) in [
        (
            "slow-init",
            "plugin slow-init: init failed: init ran longer than initTimeoutMs (1000 ms)",
        ),
        ("unknown-import", "fixture:unknown-import/secrets"),
        (
            "future",
            "was built for defender:plugin@9.0.0; this host implements defender:plugin@0.1.0",
        ),
        ("corrupt", "plugin corrupt: compile failed"),
        ("not-wasm", "not a WebAssembly file (bad magic number)"),
    ] {
        let state = rig.text(plugin, "state");
        assert!(
            state.starts_with("failed:") && state.contains(expected),
            "{plugin}: {state}"
        );
        assert!(
            logs.contains(&format!("plugin={plugin}")),
            "{plugin} not logged: {logs}"
        );
        assert_eq!(rig.n(plugin, "load_errors"), 1, "{plugin}");
    }
    // A fail-closed plugin that is not loaded holds reports back.
    match host.process(sample()) {
        Processed::Held { plugin, reason } => assert_eq!(
            (plugin.as_str(), reason.as_str()),
            ("corrupt", "not loaded")
        ),
        other => panic!("expected Held, got {other:?}"),
    }
    drop(host);
    let (host, _) =
        rig.start(json!({ "settings": { "port-allowlist": { "config": { "tcp": "22" } } } }));
    let out = passed(host.process(sample()));
    assert_eq!(
        out.alerts.len(),
        4,
        "port-allowlist still runs: {:?}",
        out.alerts
    );
}

#[test]
fn compiled_plugins_are_cached_and_a_broken_cache_entry_is_replaced() {
    let rig = Rig::new(&[("owner", "owner-enrichment")]);
    let settings = json!({ "settings": { "owner": { "config": { "owner": "x" } } } });
    let (host, _) = rig.start(settings.clone());
    drop(host);
    let entries: Vec<PathBuf> = std::fs::read_dir(rig.cache())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].extension().is_some_and(|e| e == "cwasm"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(rig.cache()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    std::fs::write(&entries[0], b"not a cwasm").unwrap();
    let (host, logs) = rig.start(settings);
    assert!(
        logs.contains("refusing compile cache entry") && logs.contains("is not what was written"),
        "{logs}"
    );
    assert_eq!(passed(host.process(sample())).annotations["owner"], "x");
    let rewritten: Vec<PathBuf> = std::fs::read_dir(rig.cache())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rewritten, entries, "the entry is written again");
    assert!(
        std::fs::metadata(&entries[0]).unwrap().len() > 1000,
        "entry rewritten"
    );
}

/// Waits until `f` returns `Some` (hot reload happens on the watcher thread).
pub(crate) fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hot_reload_replaces_keeps_old_on_failure_and_unloads() {
    let rig = Rig::shared(&[("p", "port-allowlist")]);
    let (host, _) = rig.start(json!({ "hotReload": true, "settings": { "p": {
        "config": { "tcp": "22", "owner": "ops" } } } }));
    assert_eq!(passed(host.process(sample())).alerts.len(), 4);

    // Replace: the same name now enriches instead.
    rig.install("p", &wasm("owner-enrichment"));
    eventually("the new version", || {
        let out = passed(host.process(sample()));
        (out.annotations.get("owner").map(String::as_str) == Some("ops")).then_some(())
    });
    assert_eq!(rig.n("p", "reloads"), 1);

    // Break it: the previous version keeps running.
    std::fs::write(rig.dir().join("p.wasm"), b"\0asm broken").unwrap();
    eventually("the load error", || {
        (rig.n("p", "load_errors") >= 1).then_some(())
    });
    let out = passed(host.process(sample()));
    assert_eq!(out.annotations["owner"], "ops");
    assert_eq!(rig.text("p", "state"), "running");

    // Remove it: a configured plugin stays as a slot but runs nothing.
    std::fs::remove_file(rig.dir().join("p.wasm")).unwrap();
    eventually("the unload", || {
        (rig.text("p", "state") == "missing").then_some(())
    });
    assert_eq!(passed(host.process(sample())), sample());

    // An unconfigured plugin appears, then disappears from the list.
    rig.install("extra", &wasm("port-allowlist"));
    eventually("the new plugin", || {
        host.plugins()
            .iter()
            .any(|(n, s)| n == "extra" && s == "running")
            .then_some(())
    });
    std::fs::remove_file(rig.dir().join("extra.wasm")).unwrap();
    eventually("the removal", || {
        (!host.plugins().iter().any(|(n, _)| n == "extra")).then_some(())
    });
}

#[test]
fn malformed_plugin_config_names_the_key() {
    let bad = json!({ "dir": "/x", "settings": { "p": { "limits": { "memoryMib": "lots" } } } });
    let err = serde_json::from_value::<PluginsConfig>(bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected a whole non-negative number, found \"lots\""),
        "{err}"
    );
    let bad = json!({ "settings": { "p": { "onFailure": "sometimes" } } });
    let err = serde_json::from_value::<PluginsConfig>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `sometimes`"), "{err}");
    let bad = json!({ "settings": { "p": { "grant": {} } } });
    let err = serde_json::from_value::<PluginsConfig>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `grant`"), "{err}");
}

mod cli {
    use super::*;
    use clap::Parser;
    use defender_edge::plugin::cli::{PluginCommand, run};

    /// Parses a command line the way `defender-edge plugin ...` would.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: PluginCommand,
    }

    fn plugin_cmd(
        args: &[&str],
        config: &PluginsConfig,
        cache: &Path,
    ) -> (anyhow::Result<()>, String) {
        let cli =
            Cli::try_parse_from(std::iter::once("plugin").chain(args.iter().copied())).unwrap();
        let mut out = Vec::new();
        let result = run(cli.cmd, config, cache, &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn check_reports_imports_and_version() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = PluginsConfig::default();
        let good = wasm("port-allowlist");
        let (result, out) = plugin_cmd(&["check", good.to_str().unwrap()], &cfg, tmp.path());
        result.unwrap();
        assert!(out.contains("  defender:plugin/log@0.1.0\n"), "{out}");
        assert!(out.contains("  defender:plugin/processor@0.1.0\n"), "{out}");
        assert!(
            out.contains("(WASI: nothing granted unless configured)"),
            "{out}"
        );
        assert!(
            out.contains("ok: a defender:plugin plugin this host (defender:plugin@0.1.0) can load"),
            "{out}"
        );

        let future = wasm("fault-future-world");
        let (result, _) = plugin_cmd(&["check", future.to_str().unwrap()], &cfg, tmp.path());
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains("was built for defender:plugin@9.0.0"), "{err}");

        let unknown = wasm("fault-unknown-import");
        let (result, out) = plugin_cmd(&["check", unknown.to_str().unwrap()], &cfg, tmp.path());
        let err = format!("{:#}", result.unwrap_err());
        assert!(out.contains("  fixture:unknown-import/secrets\n"), "{out}");
        assert!(
            err.contains("imports something this host does not provide"),
            "{err}"
        );
    }

    #[test]
    fn test_runs_a_plugin_once_and_compile_fills_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let sample_path = tmp.path().join("sample.json");
        std::fs::write(&sample_path, serde_json::to_vec(&sample()).unwrap()).unwrap();
        let cfg = PluginsConfig::default();
        let plugin = wasm("port-allowlist");
        let (result, out) = plugin_cmd(
            &[
                "test",
                plugin.to_str().unwrap(),
                "--sample",
                sample_path.to_str().unwrap(),
                "--config",
                "tcp=21,22",
                "--config",
                "udp=68",
                "--full",
            ],
            &cfg,
            tmp.path(),
        );
        result.unwrap();
        assert!(
            out.contains("outcome: pass\nalerts:  1\n  [high] port-not-allowed: tcp port 40000"),
            "{out}"
        );
        let json = &out[out.find("sample:\n").unwrap() + 8..];
        let back: Sample = serde_json::from_str(json).unwrap();
        assert_eq!(back.alerts.len(), 2);

        let (result, out) = plugin_cmd(
            &[
                "test",
                wasm("fault-panic").to_str().unwrap(),
                "--sample",
                sample_path.to_str().unwrap(),
            ],
            &cfg,
            tmp.path(),
        );
        result.unwrap();
        assert!(
            out.contains("outcome: failed, sample passed on unchanged (fail-open)"),
            "{out}"
        );

        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(&plugin, dir.join("port-allowlist.wasm")).unwrap();
        let cache = tmp.path().join("cache");
        let (result, out) = plugin_cmd(&["compile", "--dir", dir.to_str().unwrap()], &cfg, &cache);
        result.unwrap();
        assert!(
            out.starts_with("port-allowlist: ") && out.contains(".cwasm"),
            "{out}"
        );
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    }

    #[test]
    fn new_scaffolds_a_plugin_that_builds_and_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = PluginsConfig::default();
        let (result, out) = plugin_cmd(
            &["new", "conn-limit", "--dir", tmp.path().to_str().unwrap()],
            &cfg,
            tmp.path(),
        );
        result.unwrap();
        assert!(out.starts_with("created "), "{out}");
        let (result, _) = plugin_cmd(
            &["new", "Bad_Name", "--dir", tmp.path().to_str().unwrap()],
            &cfg,
            tmp.path(),
        );
        assert!(format!("{:#}", result.unwrap_err()).contains("must start with a-z"));

        // The project carries its SDK: nothing in it points into this
        // checkout, so it builds wherever it is copied (issue 13 item 2).
        let crate_dir = tmp.path().join("conn-limit");
        let checkout = support::repo().display().to_string();
        for entry in walk(&crate_dir) {
            let text = std::fs::read_to_string(&entry).unwrap();
            assert!(
                !text.contains(&checkout),
                "{} names {checkout}",
                entry.display()
            );
        }
        let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(r#"defender-plugin-sdk = { path = "sdk" }"#),
            "{manifest}"
        );
        assert_eq!(
            std::fs::read_to_string(crate_dir.join("sdk/wit/plugin.wit")).unwrap(),
            std::fs::read_to_string(support::repo().join("wit/plugin.wit")).unwrap(),
            "the host's own interface"
        );
        guests(); // shares the guest target dir, so the dependencies are built
        let target_dir = guests().parent().unwrap().parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let build = std::process::Command::new(cargo)
            .args([
                "build",
                "--target",
                "wasm32-wasip2",
                "--release",
                "--target-dir",
            ])
            .arg(target_dir)
            .current_dir(&crate_dir)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap();
        assert!(
            build.status.success(),
            "{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let built = guests().join("conn_limit.wasm");
        let (result, out) = plugin_cmd(&["check", built.to_str().unwrap()], &cfg, tmp.path());
        result.unwrap();
        assert!(out.contains("ok: "), "{out}");
        let (result, out) = plugin_cmd(
            &[
                "test",
                built.to_str().unwrap(),
                "--sample",
                crate_dir.join("sample.json").to_str().unwrap(),
                "--config",
                "maxConnections=1",
            ],
            &cfg,
            tmp.path(),
        );
        result.unwrap();
        assert!(
            out.contains("[medium] too-many-connections: 2 established connections"),
            "{out}"
        );
    }

    /// Every file under `dir`.
    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
