//! Precompiled plugins: `plugin compile FILE --target` on the build machine,
//! and the host loading `<name>.cwasm` from the plugin directory only when
//! `plugins.trustPrecompiled` is on, refusing artifacts for another target.

// A failing unwrap is a failing test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use clap::Parser;
use defender_edge::plugin::cli::{PluginCommand, run};
use defender_edge::plugin::{PluginHost, PluginsConfig, Processed};
use defender_edge::status::{Status, Value};
use serde_json::json;

use crate::plugins::{sample, wasm};

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: PluginCommand,
}

/// Runs `defender-edge plugin <args>`; the cache is never used by `compile
/// FILE`, so any folder will do.
fn plugin_cmd(args: &[&str]) -> (anyhow::Result<()>, String) {
    let cli = Cli::try_parse_from(std::iter::once("plugin").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    let cache = tempfile::tempdir().unwrap();
    let result = run(cli.cmd, &PluginsConfig::default(), cache.path(), &mut out);
    (result, String::from_utf8(out).unwrap())
}

/// Precompiles a built guest for `target` (`None`: this machine) into `out`.
fn precompile(krate: &str, target: Option<&str>, out: &Path) -> String {
    let wasm = wasm(krate);
    let mut args = vec![
        "compile",
        wasm.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    if let Some(t) = target {
        args.extend(["--target", t]);
    }
    let (result, text) = plugin_cmd(&args);
    result.unwrap();
    text
}

/// A plugin folder, a cache and the status of one host start.
struct Device {
    tmp: tempfile::TempDir,
    status: Status,
}

impl Device {
    fn new() -> Device {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("plugins")).unwrap();
        Device {
            tmp,
            status: Status::new(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("plugins")
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    fn cache_entries(&self) -> usize {
        std::fs::read_dir(self.cache())
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn start(&self, trust: bool) -> PluginHost {
        let config: PluginsConfig = serde_json::from_value(json!({
            "dir": self.dir(),
            "trustPrecompiled": trust,
            "settings": { "p": { "config": { "tcp": "22", "udp": "68", "dropEphemeralFrom": "32768" } } }
        }))
        .unwrap();
        PluginHost::start(&config, &self.cache(), self.status.clone()).unwrap()
    }

    fn text(&self, what: &str) -> String {
        match self.status.get(&format!("plugin.p.{what}")) {
            Some(Value::Text(t)) => t,
            other => panic!("plugin.p.{what} is {other:?}"),
        }
    }

    fn n(&self, what: &str) -> u64 {
        self.status.number(&format!("plugin.p.{what}"))
    }
}

/// What port-allowlist (tcp 22, udp 68, ephemeral from 32768) makes of the
/// sample: the ephemeral listener dropped, one alert of its own for 21.
fn assert_port_allowlist_ran(out: Processed) {
    let Processed::Pass(out) = out else {
        panic!("expected the sample to pass, got {out:?}")
    };
    let ports: Vec<u16> = out.listening_tcp_ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [21, 22]);
    let raised: Vec<_> = out
        .alerts
        .iter()
        .filter(|a| !a.origin().is_detection())
        .collect();
    assert_eq!(raised.len(), 1, "{:?}", out.alerts);
    assert_eq!(raised[0].attributes["port"], "21");
}

#[test]
fn trusted_artifact_loads_without_compiling() {
    let device = Device::new();
    let text = precompile("port-allowlist", None, &device.dir().join("p.cwasm"));
    assert!(
        text.contains(" bytes for this machine (wasmtime 48.")
            && text.contains("ok: loads on this host"),
        "{text}"
    );
    let host = device.start(true);
    assert_eq!(device.text("state"), "running");
    assert_eq!(device.text("loaded_from"), "precompiled");
    assert_eq!(device.n("compiles"), 0);
    assert_eq!(device.cache_entries(), 0, "nothing compiled into the cache");
    assert_port_allowlist_ran(host.process(sample()));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn artifact_for_the_x86_64_target_loads_on_an_x86_64_host() {
    let device = Device::new();
    let text = precompile(
        "port-allowlist",
        Some("x86_64"),
        &device.dir().join("p.cwasm"),
    );
    assert!(text.contains("for x86_64-unknown-linux-gnu"), "{text}");
    let host = device.start(true);
    assert_eq!(device.text("loaded_from"), "precompiled");
    assert_port_allowlist_ran(host.process(sample()));
}

#[test]
fn untrusted_artifact_is_ignored_and_the_wasm_compiled() {
    let device = Device::new();
    precompile("port-allowlist", None, &device.dir().join("p.cwasm"));
    std::fs::copy(wasm("port-allowlist"), device.dir().join("p.wasm")).unwrap();
    let host = device.start(false);
    assert_eq!(device.text("loaded_from"), "compiled");
    assert_eq!(device.n("compiles"), 1);
    assert_eq!(device.cache_entries(), 1);
    assert_port_allowlist_ran(host.process(sample()));

    // Without a .wasm an untrusted artifact is nothing to load at all.
    std::fs::remove_file(device.dir().join("p.wasm")).unwrap();
    let device2 = Device::new();
    std::fs::rename(device.dir().join("p.cwasm"), device2.dir().join("p.cwasm")).unwrap();
    let host = device2.start(false);
    assert_eq!(device2.text("state"), "missing");
    assert_eq!(host.process(sample()), Processed::Pass(sample()));
}

#[test]
fn artifact_for_another_target_is_refused_naming_file_and_mismatch() {
    let (target, arch) = if cfg!(target_arch = "aarch64") {
        ("x86_64", "x86_64")
    } else {
        ("aarch64", "aarch64")
    };
    for (target, arch) in [(target, arch), ("armv7", "pulley32")] {
        let device = Device::new();
        let artifact = device.dir().join("p.cwasm");
        let text = precompile("port-allowlist", Some(target), &artifact);
        assert!(
            text.starts_with(&format!("{}: ", artifact.display())),
            "{text}"
        );

        // Only the artifact: the plugin fails to load, and says why.
        let host = device.start(true);
        let state = device.text("state");
        assert!(
            state.starts_with("failed: plugin p: precompiled load failed: ")
                && state.contains(&format!(
                    "{} cannot be used by this host",
                    artifact.display()
                ))
                && state.contains(&format!("Module was compiled for architecture '{arch}'")),
            "{state}"
        );
        assert_eq!(device.n("load_errors"), 1);
        assert_eq!(host.process(sample()), Processed::Pass(sample()));
        drop(host);

        // With the .wasm beside it, the host compiles that instead.
        std::fs::copy(wasm("port-allowlist"), device.dir().join("p.wasm")).unwrap();
        let host = device.start(true);
        assert_eq!(device.text("state"), "running");
        assert_eq!(device.text("loaded_from"), "compiled");
        assert_eq!(device.n("precompiled_refused"), 1);
        assert!(
            device
                .text("last_error")
                .contains("Module was compiled for architecture"),
            "{}",
            device.text("last_error")
        );
        assert_port_allowlist_ran(host.process(sample()));
    }
}

#[test]
fn compile_checks_its_arguments() {
    let wasm = wasm("port-allowlist");
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("p.bin");
    let (result, _) = plugin_cmd(&[
        "compile",
        wasm.to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
    ]);
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("must end in .cwasm"), "{err}");

    let not_wasm = tmp.path().join("x.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let (result, _) = plugin_cmd(&["compile", not_wasm.to_str().unwrap(), "--target", "aarch64"]);
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("not a WebAssembly file"), "{err}");

    let parsed = Cli::try_parse_from(["plugin", "compile", "x.wasm", "--target", "mips"]);
    let err = parsed.err().unwrap().to_string();
    assert!(
        err.contains("[possible values: x86_64, aarch64, armv7]"),
        "{err}"
    );
}
