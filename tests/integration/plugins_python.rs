//! Python plugins: componentize-py installed into the test's own virtual
//! environment, the Python SDK's example and fault fixture built with it, and
//! both run through `PluginHost` exactly like the Rust plugins.

// A failing unwrap is a failing test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use defender_edge::plugin::cli::COMPONENTIZE_PY_VERSION;
use defender_edge::plugin::{PluginHost, PluginsConfig, Processed};
use defender_edge::sample::{EstablishedConnection, Sample};
use defender_edge::status::{Status, Value};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::plugins::{capture, passed, port, sample};
use crate::support;

/// Where the virtual environment and the built Python plugins live.
fn work_dir() -> PathBuf {
    std::env::var_os("DEFENDER_EDGE_PY_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::repo().join("target").join("python-plugins"))
}

/// `componentize-py` at the pinned version, installed into its own virtual
/// environment on first use and reused afterwards. Fails (never skips) with
/// what to do when it cannot be installed.
fn componentize_py() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let venv = work_dir().join("venv");
        let bin = venv.join("bin").join("componentize-py");
        let wanted = format!("componentize-py {COMPONENTIZE_PY_VERSION}");
        let installed = || {
            Command::new(&bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == wanted)
        };
        if installed() {
            return bin;
        }
        let python = std::env::var_os("DEFENDER_EDGE_PYTHON3").unwrap_or_else(|| "python3".into());
        let hint = format!(
            "install it by hand with `python3 -m venv {venv} && {venv}/bin/pip install \
             componentize-py=={COMPONENTIZE_PY_VERSION}` (needs PyPI, or PIP_INDEX_URL for a mirror)",
            venv = venv.display()
        );
        let venv_out = Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python:?} -m venv: {e}; {hint}"));
        assert!(
            venv_out.status.success(),
            "creating {} failed: {}; {hint}",
            venv.display(),
            String::from_utf8_lossy(&venv_out.stderr)
        );
        let pip = Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run pip: {e}; {hint}"));
        assert!(
            pip.status.success() && installed(),
            "installing componentize-py {COMPONENTIZE_PY_VERSION} failed: {}; {hint}",
            String::from_utf8_lossy(&pip.stderr)
        );
        bin
    })
}

/// Builds the Python app in `app_dir` (with the SDK) into
/// `<work>/<name>.wasm`, unless the inputs are unchanged since the last
/// build: componentize-py takes seconds and writes 18 MB.
fn build_python(name: &str, app_dir: &Path) -> PathBuf {
    let sdk = support::repo().join("plugins").join("sdk-python");
    let wit = support::repo().join("wit");
    let mut digest = Sha256::new();
    digest.update(COMPONENTIZE_PY_VERSION);
    for dir in [app_dir, &sdk.join("defender_plugin"), &wit] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "py" || e == "wit"))
            .collect();
        files.sort();
        for f in files {
            digest.update(f.to_string_lossy().as_bytes());
            digest.update(std::fs::read(&f).unwrap());
        }
    }
    let stamp = format!("{:x}", digest.finalize());
    let out = work_dir().join(format!("{name}.wasm"));
    let stamp_file = work_dir().join(format!("{name}.inputs"));
    if out.is_file() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        return out;
    }
    let built = Command::new(componentize_py())
        .arg("-d")
        .arg(&wit)
        .args(["-w", "plugin", "componentize", "app", "-p"])
        .arg(app_dir)
        .arg("-p")
        .arg(&sdk)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "componentize-py failed for {}:\n{}{}",
        app_dir.display(),
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::write(&stamp_file, stamp).unwrap();
    out
}

/// One compile cache for every test and run: compiling an 18 MB Python
/// component takes seconds optimised and minutes in the test profile.
/// Entries are keyed by the component's sha256 and the engine's
/// compatibility hash, so sharing is safe.
fn shared_cache() -> PathBuf {
    work_dir().join("compile-cache")
}

/// Loads `wasm` once into the shared cache, so tests running in parallel do
/// not each compile it.
fn warm_cache(wasm: &Path) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm, dir.path().join("warm.wasm")).unwrap();
    // Generous budgets: this only fills the cache, and CPython's start in
    // the test profile on a loaded machine can pass the default 1 s init
    // budget (the budgets have tests of their own).
    let config: PluginsConfig = serde_json::from_value(json!({ "dir": dir.path(),
        "settings": { "warm": { "limits": { "initTimeoutMs": 60000, "callTimeoutMs": 60000 } } } }))
    .unwrap();
    let status = Status::new();
    drop(PluginHost::start(&config, &shared_cache(), status.clone()).unwrap());
    assert_eq!(
        status.get("plugin.warm.state"),
        Some(Value::Text("running".into())),
        "{} does not load",
        wasm.display()
    );
}

/// Builds a Python plugin and warms the shared cache with it, holding a lock
/// on the work folder: under cargo-nextest every test is a process of its
/// own, and two of them must not install componentize-py into the same venv,
/// write the same `.wasm`, or both spend minutes compiling the same component.
fn built_and_warm(name: &str, app_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(work_dir()).unwrap();
    let lock = std::fs::File::create(work_dir().join(".lock")).unwrap();
    lock.lock().unwrap();
    let wasm = build_python(name, app_dir);
    warm_cache(&wasm);
    wasm
}

/// The Python port-allowlist example, built once per test process.
pub fn port_allowlist_py() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        built_and_warm(
            "port-allowlist-py",
            &support::repo().join("plugins/examples/port-allowlist-py"),
        )
    })
}

/// The Python fault fixture (misbehaviour chosen by its `mode` config).
fn faults_py() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| built_and_warm("faults-py", &support::fixture("plugins/python/faults")))
}

/// One plugin, under the name `p`, in a folder of its own.
struct Rig {
    tmp: tempfile::TempDir,
    status: Status,
}

impl Rig {
    fn new(wasm: &Path) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("plugins")).unwrap();
        std::fs::copy(wasm, tmp.path().join("plugins").join("p.wasm")).unwrap();
        Rig {
            tmp,
            status: Status::new(),
        }
    }

    fn start(&self, settings: serde_json::Value) -> (PluginHost, String) {
        let config: PluginsConfig = serde_json::from_value(json!({
            "dir": self.tmp.path().join("plugins"),
            "settings": { "p": settings }
        }))
        .unwrap();
        let cache = shared_cache();
        let (host, logs) = capture(|| PluginHost::start(&config, &cache, self.status.clone()));
        (host.unwrap(), logs)
    }

    fn n(&self, counter: &str) -> u64 {
        self.status.number(&format!("plugin.p.{counter}"))
    }

    fn text(&self, what: &str) -> String {
        match self.status.get(&format!("plugin.p.{what}")) {
            Some(Value::Text(t)) => t,
            other => panic!("plugin.p.{what} is {other:?}"),
        }
    }
}

/// Samples that exercise every branch of port-allowlist: the plugin tests'
/// sample with a UDP listener to keep, one on an interface and one to drop.
fn samples() -> Vec<Sample> {
    let mut base = sample();
    base.listening_udp_ports
        .extend([port(5353, Some("wlan0")), port(50000, None)]);
    let mut quiet = base.clone();
    quiet.listening_tcp_ports = vec![port(22, Some("eth0"))];
    quiet.listening_udp_ports.clear();
    quiet.alerts.clear();
    let mut busy = base.clone();
    busy.listening_tcp_ports = (1..=300).map(|p| port(p * 7, None)).collect();
    vec![base, quiet, busy, Sample::default()]
}

#[test]
fn python_port_allowlist_matches_the_rust_one() {
    let rust = Rig::new(&crate::plugins::wasm("port-allowlist"));
    let python = Rig::new(port_allowlist_py());
    for config in [
        json!({ "tcp": "22", "udp": "68", "dropEphemeralFrom": "32768" }),
        json!({ "tcp": "21,22,443", "severity": "critical" }),
        json!({}),
    ] {
        let settings = json!({ "config": config });
        let (rust_host, _) = rust.start(settings.clone());
        let (python_host, logs) = python.start(settings);
        assert_eq!(python.text("state"), "running", "{logs}");
        for sample in samples() {
            let expected = rust_host.process(sample.clone());
            let got = python_host.process(sample);
            assert_eq!(got, expected, "config {config}");
        }
    }
    // The same configuration errors, word for word.
    let settings = json!({ "config": { "tcp": "22,ssh" } });
    let (_h, _) = rust.start(settings.clone());
    let (_h, _) = python.start(settings);
    assert_eq!(
        python.text("state"),
        "failed: plugin p: init failed: init returned an error: config key tcp: \"ssh\" is not a port (1..65535)"
    );
    assert_eq!(python.text("state"), rust.text("state"));
}

#[test]
fn python_plugin_keeps_state_and_reloads() {
    let rig = Rig::new(faults_py());
    let (host, _) = rig.start(json!({ "config": { "mode": "count" } }));
    for i in 1..=3 {
        let out = passed(host.process(samples()[0].clone()));
        assert_eq!(out.annotations["calls"], i.to_string(), "state persists");
    }
    host.reload("p").unwrap();
    assert_eq!(rig.n("reloads"), 1);
    let out = passed(host.process(samples()[0].clone()));
    assert_eq!(out.annotations["calls"], "1", "a reload starts afresh");
}

/// The SDK hands the socket lists over lazily: one the plugin replaced,
/// one it edited in place and one it never read all come back as the
/// plugin left them.
#[test]
fn python_plugin_changes_only_the_lists_it_touches() {
    let rig = Rig::new(faults_py());
    let (host, logs) = rig.start(json!({ "config": { "mode": "rewrite" } }));
    assert_eq!(rig.text("state"), "running", "{logs}");
    let input = samples()[0].clone();
    let out = passed(host.process(input.clone()));
    assert_eq!(
        out.established_connections,
        [EstablishedConnection {
            remote_addr: "192.0.2.1:22".parse().unwrap(),
            local_port: 2222,
            local_interface: None,
        }]
    );
    assert_eq!(out.listening_tcp_ports, [port(22, Some("eth0"))]);
    assert_eq!(out.listening_udp_ports, input.listening_udp_ports);
    assert_eq!(out.alerts, input.alerts);
}

#[test]
fn python_exception_is_logged_then_traps_and_restarts() {
    let rig = Rig::new(faults_py());
    let (host, _) = rig.start(json!({ "onFailure": "closed",
        "config": { "mode": "raise" }, "limits": { "restartBackoffMs": 0 } }));
    let (out, logs) = capture(|| host.process(samples()[0].clone()));
    match out {
        Processed::Held { plugin, reason } => {
            assert_eq!(plugin, "p");
            assert!(reason.starts_with("trapped"), "{reason}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    // The log names the fixture's line that raised.
    let app = std::fs::read_to_string(support::fixture("plugins/python/faults/app.py")).unwrap();
    let line = app
        .lines()
        .position(|l| l.contains("raise RuntimeError"))
        .unwrap()
        + 1;
    assert!(
        logs.contains(
            "plugin raised RuntimeError in process: fixture exception with 3 listening ports ("
        ) && logs.contains(&format!("app.py:{line} in process)"))
            && logs.contains("plugin=p"),
        "{logs}"
    );
    assert!(logs.contains("Traceback (most recent call last)"), "{logs}");
    assert_eq!(rig.n("traps"), 1);
    // A fresh instance for the next sample; the host carries on.
    assert!(matches!(
        host.process(samples()[0].clone()),
        Processed::Held { .. }
    ));
    assert_eq!(rig.n("restarts"), 1);
}

#[test]
fn python_plugin_error_is_an_error_not_a_trap() {
    let rig = Rig::new(faults_py());
    let (host, _) = rig.start(json!({ "config": { "mode": "error" } }));
    let (out, logs) = capture(|| host.process(samples()[0].clone()));
    assert_eq!(passed(out), samples()[0], "fail-open");
    assert!(logs.contains("fixture error"), "{logs}");
    assert_eq!(rig.n("errors"), 1);
    assert_eq!(rig.n("traps"), 0);

    let (_host, _) = rig.start(json!({ "config": { "mode": "init-error" } }));
    assert_eq!(
        rig.text("state"),
        "failed: plugin p: init failed: init returned an error: fixture refuses its configuration"
    );
}

#[test]
fn python_infinite_loop_times_out() {
    let rig = Rig::new(faults_py());
    let (host, _) = rig.start(json!({ "config": { "mode": "loop" },
        "limits": { "callTimeoutMs": 50, "restartBackoffMs": 0, "maxFailures": 2 } }));
    let started = Instant::now();
    for i in 1..=2 {
        let (out, logs) = capture(|| host.process(samples()[0].clone()));
        assert_eq!(passed(out), samples()[0]);
        assert!(
            logs.contains("ran longer than callTimeoutMs (50 ms)"),
            "{logs}"
        );
        assert_eq!(rig.n("timeouts"), i);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(rig.text("state").starts_with("disabled: 2 failures"));
}

#[test]
fn python_memory_hog_is_stopped_by_the_memory_limit() {
    let rig = Rig::new(faults_py());
    let (host, _) = rig.start(json!({ "config": { "mode": "hog" },
        "limits": { "callTimeoutMs": 5000 } }));
    let (out, logs) = capture(|| host.process(samples()[0].clone()));
    assert_eq!(passed(out), samples()[0]);
    assert!(logs.contains("memory limit of"), "{logs}");
    assert_eq!(rig.n("out_of_memory"), 1);
}

/// A Python plugin precompiled for this machine loads without compiling
/// and does what the Rust one does. (Its size, load and per-call figures
/// beside the Rust plugin's are in `cargo bench --bench python_plugin`.)
#[test]
fn python_plugin_loads_precompiled_without_compiling() {
    let wasm = port_allowlist_py();
    let settings = json!({ "config": { "tcp": "22" } });
    // What `plugin compile FILE` writes is the shared cache's entry for the
    // component (warm_cache filled it): copying it spares a compile here.
    let sha = format!("{:x}", Sha256::digest(std::fs::read(wasm).unwrap()));
    let entry = std::fs::read_dir(shared_cache())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&sha))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(entry, dir.join("p.cwasm")).unwrap();
    let config: PluginsConfig = serde_json::from_value(json!({
        "dir": dir, "trustPrecompiled": true, "settings": { "p": settings.clone() } }))
    .unwrap();
    let status = Status::new();
    let cache = tmp.path().join("cache");
    let host = PluginHost::start(&config, &cache, status.clone()).unwrap();
    assert_eq!(
        status.get("plugin.p.loaded_from"),
        Some(Value::Text("precompiled".into()))
    );
    assert_eq!(status.number("plugin.p.compiles"), 0);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);

    let rust = Rig::new(&crate::plugins::wasm("port-allowlist"));
    let (rust_host, _) = rust.start(settings);
    for sample in samples() {
        assert_eq!(host.process(sample.clone()), rust_host.process(sample));
    }
}

/// The SDK's own unit tests, in plain CPython (no WebAssembly).
#[test]
fn python_sdk_unit_tests_pass_in_plain_cpython() {
    let out = Command::new(support::python())
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(support::repo().join("plugins/sdk-python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("\nOK"),
        "the SDK's unit tests failed:\n{text}"
    );
}

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: defender_edge::plugin::cli::PluginCommand,
}

#[test]
fn new_scaffolds_a_python_plugin_whose_tests_pass_in_plain_cpython() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = <Cli as clap::Parser>::try_parse_from([
        "plugin",
        "new",
        "conn-limit",
        "--lang",
        "python",
        "--dir",
        tmp.path().to_str().unwrap(),
    ])
    .unwrap();
    let mut out = Vec::new();
    defender_edge::plugin::cli::run(cli.cmd, &PluginsConfig::default(), tmp.path(), &mut out)
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("next: cd ") && out.contains("./build.sh test && ./build.sh"),
        "{out}"
    );
    let root = tmp.path().join("conn-limit");
    let app = std::fs::read_to_string(root.join("app.py")).unwrap();
    assert!(
        app.contains("class ConnLimit(Plugin):") && app.contains("Processor = export(ConnLimit)")
    );
    let build = std::fs::read_to_string(root.join("build.sh")).unwrap();
    assert!(
        build.contains(&format!("componentize-py=={COMPONENTIZE_PY_VERSION}")),
        "{build}"
    );
    // The project carries its SDK (issue 13 item 2): build.sh finds it
    // relatively, and the tests below import it from there.
    assert!(
        build.contains("SDK=\"${DEFENDER_PLUGIN_SDK:-sdk}\""),
        "{build}"
    );
    assert!(root.join("sdk/defender_plugin/__init__.py").is_file());
    let tests = Command::new(root.join("build.sh"))
        .arg("test")
        .env_remove("DEFENDER_PLUGIN_SDK")
        .output()
        .unwrap();
    assert!(
        tests.status.success(),
        "{}",
        String::from_utf8_lossy(&tests.stderr)
    );
    assert!(String::from_utf8_lossy(&tests.stderr).contains("Ran 2 tests"));
}
