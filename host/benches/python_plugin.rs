//! A Python plugin beside the Rust plugin doing the same thing, in the same
//! run and the release profile: port-allowlist (plugins/examples/) and its
//! Python twin (plugins/examples/port-allowlist-py), on the same
//! 1,000-connection sample with the same configuration.
//!
//! Figures: component size; first start (compile, instantiate, init);
//! precompiled artifact size; precompiled load + instantiate + init; per
//! call; resident memory added and the plugin's linear memory.
//!
//! `cargo bench --bench python_plugin`. Builds the Python plugin with
//! componentize-py: set DEFENDER_EDGE_COMPONENTIZE_PY to one of the pinned
//! version, or let it use the one the integration tests install into
//! target/python-plugins/venv (scripts/test.sh runs them). Figures are in
//! docs/BENCHMARKS.md.

// A failing unwrap aborts the benchmark with the value in the message.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use defender_edge::plugin::cli::COMPONENTIZE_PY_VERSION;
use defender_edge::plugin::{PluginHost, PluginsConfig, Processed};
use defender_edge::status::{Status, Value};
use serde_json::json;

#[path = "support/plugins.rs"]
mod common;

use common::{big_sample, guests, repo, rss_kib, wasm};

/// The plugins' configuration: the same keys for both languages.
fn settings() -> serde_json::Value {
    json!({ "config": { "tcp": "22,443,8883", "dropEphemeralFrom": "32768" } })
}

/// componentize-py at the pinned version, or a failure saying how to get it.
fn componentize_py() -> PathBuf {
    let bin = std::env::var_os("DEFENDER_EDGE_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/python-plugins/venv/bin/componentize-py"));
    let wanted = format!("componentize-py {COMPONENTIZE_PY_VERSION}");
    let found = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert!(
        found.as_deref().is_ok_and(|v| v == wanted),
        "{} is not {wanted} ({found:?}): run scripts/test.sh (its Python plugin tests install it \
         into target/python-plugins/venv), or `python3 -m venv v && v/bin/pip install \
         componentize-py=={COMPONENTIZE_PY_VERSION}` and set DEFENDER_EDGE_COMPONENTIZE_PY=v/bin/componentize-py",
        bin.display()
    );
    bin
}

/// Builds the Python port-allowlist into `dir`.
fn build_python(dir: &Path) -> PathBuf {
    let out = dir.join("port_allowlist_py.wasm");
    let built = Command::new(componentize_py())
        .arg("-d")
        .arg(repo().join("wit"))
        .args(["-w", "plugin", "componentize", "app", "-p"])
        .arg(repo().join("plugins/examples/port-allowlist-py"))
        .arg("-p")
        .arg(repo().join("plugins/sdk-python"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "componentize-py failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// One language's plugin in its own folders.
struct Rig {
    tmp: tempfile::TempDir,
}

impl Rig {
    fn new(wasm: &Path) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["plugins", "precompiled"] {
            std::fs::create_dir(tmp.path().join(dir)).unwrap();
        }
        std::fs::copy(wasm, tmp.path().join("plugins/p.wasm")).unwrap();
        Rig { tmp }
    }

    fn start(&self, dir: &str, trust: bool, cache: &Path, status: &Status) -> PluginHost {
        let config: PluginsConfig = serde_json::from_value(json!({
            "dir": self.tmp.path().join(dir),
            "trustPrecompiled": trust,
            "settings": { "p": settings() }
        }))
        .unwrap();
        let host = PluginHost::start(&config, cache, status.clone()).unwrap();
        assert_eq!(
            status.get("plugin.p.state"),
            Some(Value::Text("running".into())),
            "the plugin did not start: {:?}",
            status.get("plugin.p.last_error")
        );
        host
    }
}

struct Figures {
    size: u64,
    first_start: Duration,
    precompiled_size: u64,
    precompiled_start: Duration,
    rss_added_kib: u64,
    linear_peak: u64,
}

fn measure(wasm: &Path) -> (Figures, Rig) {
    let rig = Rig::new(wasm);
    let size = std::fs::metadata(wasm).unwrap().len();

    // First start: compile into an empty cache, instantiate, init.
    let mut first = Vec::new();
    for _ in 0..3 {
        let cache = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let host = rig.start("plugins", false, cache.path(), &Status::new());
        first.push(started.elapsed());
        drop(host);
        if first.len() == 3 {
            // What `plugin compile FILE` writes is the cache entry.
            let entry = std::fs::read_dir(cache.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .unwrap();
            std::fs::copy(entry, rig.tmp.path().join("precompiled/p.cwasm")).unwrap();
        }
    }
    let precompiled_size = std::fs::metadata(rig.tmp.path().join("precompiled/p.cwasm"))
        .unwrap()
        .len();

    // Precompiled and trusted: load, instantiate, init; nothing compiled.
    let mut starts = Vec::new();
    for _ in 0..10 {
        let cache = tempfile::tempdir().unwrap();
        let status = Status::new();
        let started = Instant::now();
        let host = rig.start("precompiled", true, cache.path(), &status);
        starts.push(started.elapsed());
        assert_eq!(
            status.get("plugin.p.loaded_from"),
            Some(Value::Text("precompiled".into()))
        );
        drop(host);
    }

    // Memory added by one loaded and called plugin.
    let cache = tempfile::tempdir().unwrap();
    let status = Status::new();
    let before = rss_kib();
    let host = rig.start("precompiled", true, cache.path(), &status);
    black_box(host.process(big_sample()));
    let after = rss_kib();
    drop(host);

    let figures = Figures {
        size,
        first_start: median(first),
        precompiled_size,
        precompiled_start: median(starts),
        rss_added_kib: after.saturating_sub(before),
        linear_peak: status.number("plugin.p.memory_peak_bytes"),
    };
    (figures, rig)
}

fn main() {
    let guests = guests();
    let tmp = tempfile::tempdir().unwrap();
    let plugins = [
        ("rust", wasm(&guests, "port-allowlist")),
        ("python", build_python(tmp.path())),
    ];

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("python_vs_rust/per_call_1000_connections");
    let sample = big_sample();
    let mut rows = Vec::new();
    for (lang, wasm) in &plugins {
        let (figures, rig) = measure(wasm);
        let cache = tempfile::tempdir().unwrap();
        let host = rig.start("precompiled", true, cache.path(), &Status::new());
        let Processed::Pass(out) = host.process(sample.clone()) else {
            panic!("{lang}: the sample did not pass")
        };
        assert_eq!(
            out.alerts.len(),
            2,
            "{lang}: ports 21 and 80 are not allowed"
        );
        group.bench_function(*lang, |b| {
            b.iter_batched(
                || sample.clone(),
                |s| black_box(host.process(s)),
                BatchSize::SmallInput,
            )
        });
        rows.push((lang, figures));
    }
    group.finish();
    c.final_summary();

    println!("| | {} | {} |", rows[0].0, rows[1].0);
    println!("|---|--:|--:|");
    let row = |what: &str, f: &dyn Fn(&Figures) -> String| {
        println!("| {what} | {} | {} |", f(&rows[0].1), f(&rows[1].1));
    };
    row("component size", &|f| {
        format!("{:.2} MB", f.size as f64 / 1e6)
    });
    row(
        "first start (compile, instantiate, init), median of 3",
        &|f| ms(f.first_start),
    );
    row("precompiled artifact (this machine)", &|f| {
        format!("{:.1} MB", f.precompiled_size as f64 / 1e6)
    });
    row(
        "precompiled load + instantiate + init, median of 10",
        &|f| ms(f.precompiled_start),
    );
    row("resident memory added, one plugin after one call", &|f| {
        format!("{:.1} MiB", f.rss_added_kib as f64 / 1024.0)
    });
    row("linear memory peak", &|f| {
        format!("{:.1} MiB", f.linear_peak as f64 / 1048576.0)
    });
}
