//! Plugin costs, each beside the same logic in native Rust in the same run:
//! per-call overhead on a sample of 1,000 connections, cold compile and
//! cached load per example, resident memory per loaded plugin, and reload
//! latency (file written → new version live).
//!
//! `cargo bench --bench plugin` (builds the example plugins for
//! wasm32-wasip2 first; set DEFENDER_EDGE_WASM_TARGET_DIR to reuse a build).
//! Figures are in docs/BENCHMARKS.md.

// A failing unwrap aborts the benchmark with the value in the message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group};
use defender_edge::plugin::{PluginHost, PluginsConfig, Processed};
use defender_edge::sample::{Alert, CustomMetricValue, ListeningPort, Sample, Severity};
use defender_edge::status::Status;
use serde_json::json;

#[path = "support/plugins.rs"]
mod common;

#[path = "support/call_path.rs"]
mod call_path;

use common::{big_sample, guests, rss_kib, wasm};

const EXAMPLES: [&str; 3] = ["port-allowlist", "owner-enrichment", "system-metrics"];

/// port-allowlist's logic on the host's own types.
fn native_port_allowlist(mut s: Sample, tcp: &[u16], drop_from: u16) -> Sample {
    s.listening_tcp_ports.retain(|p| p.port < drop_from);
    let rogue: Vec<ListeningPort> = s
        .listening_tcp_ports
        .iter()
        .filter(|p| !tcp.contains(&p.port))
        .cloned()
        .collect();
    for p in rogue {
        let interface = p.interface.unwrap_or_else(|| "*".into());
        s.alerts.push(Alert {
            source: "port-allowlist".into(),
            name: "port-not-allowed".into(),
            severity: Severity::High,
            message: format!(
                "tcp port {} listens on {interface} but is not on the allowlist",
                p.port
            ),
            attributes: BTreeMap::from([
                ("protocol".into(), "tcp".into()),
                ("port".into(), p.port.to_string()),
                ("interface".into(), interface),
            ]),
        });
    }
    s
}

/// system-metrics' remote_ips logic on the host's own types.
fn native_remote_ips(mut s: Sample) -> Sample {
    let ips: BTreeSet<String> = s
        .established_connections
        .iter()
        .map(|c| c.remote_addr.ip().to_string())
        .collect();
    s.custom_metrics.insert(
        "remote_ips".into(),
        CustomMetricValue::IpList(ips.into_iter().collect()),
    );
    s
}

struct Rig {
    tmp: tempfile::TempDir,
}

impl Rig {
    fn new(plugins: &[(&str, PathBuf)]) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("plugins")).unwrap();
        for (name, from) in plugins {
            std::fs::copy(from, tmp.path().join(format!("plugins/{name}.wasm"))).unwrap();
        }
        Rig { tmp }
    }
    fn config(&self, hot_reload: bool) -> PluginsConfig {
        serde_json::from_value(json!({
            "dir": self.tmp.path().join("plugins"),
            "hotReload": hot_reload,
            "settings": {
                "port-allowlist": { "config": { "tcp": "22,443,8883", "dropEphemeralFrom": "32768" } },
                "owner-enrichment": { "config": { "owner": "ops", "site": "lyon" } }
            }
        }))
        .unwrap()
    }
    fn start(&self, cache: &Path) -> PluginHost {
        PluginHost::start(&self.config(false), cache, Status::new()).unwrap()
    }
}

fn per_call(c: &mut Criterion) {
    let guests = guests();
    let sample = big_sample();
    let mut group = c.benchmark_group("per_call_1000_connections");
    for name in ["port-allowlist", "system-metrics"] {
        let rig = Rig::new(&[(name, wasm(&guests, name))]);
        let host = rig.start(&rig.tmp.path().join("cache"));
        assert!(matches!(host.process(sample.clone()), Processed::Pass(_)));
        group.bench_function(format!("wasm/{name}"), |b| {
            b.iter_batched(
                || sample.clone(),
                |s| black_box(host.process(s)),
                BatchSize::SmallInput,
            )
        });
    }
    group.bench_function("native/port-allowlist", |b| {
        b.iter_batched(
            || sample.clone(),
            |s| black_box(native_port_allowlist(s, &[22, 443, 8883], 32768)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("native/system-metrics", |b| {
        b.iter_batched(
            || sample.clone(),
            |s| black_box(native_remote_ips(s)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn load(c: &mut Criterion) {
    let guests = guests();
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    for name in EXAMPLES {
        let rig = Rig::new(&[(name, wasm(&guests, name))]);
        group.bench_function(format!("cold_compile/{name}"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |cache| black_box(rig.start(cache.path())),
                BatchSize::PerIteration,
            )
        });
        let cache = rig.tmp.path().join("cache");
        drop(rig.start(&cache));
        group.bench_function(format!("cached/{name}"), |b| {
            b.iter(|| black_box(rig.start(&cache)))
        });
    }
    group.finish();
}

/// The call path before and after issue 11 (see support/call_path.rs), on
/// port-allowlist with an empty sample (the fixed cost of a call) and with
/// the 1,000-connection sample.
fn call_overhead(c: &mut Criterion) {
    let guests = guests();
    let wasm = std::fs::read(wasm(&guests, "port-allowlist")).unwrap();
    let config = [("tcp".to_owned(), "22,443,8883".to_owned())];
    let mut paths = call_path::Paths::new(&wasm, &config);
    let mut group = c.benchmark_group("call_path");
    for (label, sample) in [
        ("empty", Sample::default()),
        ("1000_connections", big_sample()),
    ] {
        let input = call_path::to_wit(&sample);
        assert!(paths.old(&input) && paths.new_path(&input));
        group.bench_function(format!("old/{label}"), |b| {
            b.iter(|| black_box(paths.old(&input)))
        });
        group.bench_function(format!("new/{label}"), |b| {
            b.iter(|| black_box(paths.new_path(&input)))
        });
    }
    group.finish();
}

criterion_group!(benches, per_call, call_overhead, load);

/// Resident memory added per loaded and called plugin: 20 copies of each
/// example, each with its own store, after one call each.
fn memory_per_plugin() {
    let guests = guests();
    let sample = big_sample();
    for name in EXAMPLES {
        let copies: Vec<(String, PathBuf)> = (0..20)
            .map(|i| (format!("{name}-{i:02}"), wasm(&guests, name)))
            .collect();
        let refs: Vec<(&str, PathBuf)> = copies
            .iter()
            .map(|(n, p)| (n.as_str(), p.clone()))
            .collect();
        let rig = Rig::new(&refs);
        let mut config = rig.config(false);
        for (n, _) in &copies {
            let base = config.settings.get(name).cloned().unwrap_or_default();
            config.settings.insert(n.clone(), base);
        }
        let cache = rig.tmp.path().join("cache");
        // Warm the cache (and the allocator) with the same files first.
        drop(PluginHost::start(&config, &cache, Status::new()).unwrap());
        let before = rss_kib();
        let host = PluginHost::start(&config, &cache, Status::new()).unwrap();
        black_box(host.process(sample.clone()));
        let after = rss_kib();
        println!(
            "memory/{name}: {:.0} KiB resident per loaded plugin (20 loaded: {} KiB → {} KiB)",
            (after.saturating_sub(before)) as f64 / 20.0,
            before,
            after
        );
        drop(host);
    }
}

/// File written → next `process` shows the new version, with hot reload on.
fn reload_latency() {
    let guests = guests();
    let rig = Rig::new(&[("port-allowlist", wasm(&guests, "port-allowlist"))]);
    let cache = rig.tmp.path().join("cache");
    let mut config = rig.config(true);
    // The same name, alternately holding either example.
    let owner = config.settings["owner-enrichment"].clone();
    config
        .settings
        .get_mut("port-allowlist")
        .unwrap()
        .config
        .extend(owner.config);
    let host = PluginHost::start(&config, &cache, Status::new()).unwrap();
    let is_owner = |host: &PluginHost| match host.process(big_sample()) {
        Processed::Pass(s) => s.annotations.contains_key("owner"),
        _ => false,
    };
    let mut times = Vec::new();
    for round in 0..6 {
        let (file, want_owner) = if round % 2 == 0 {
            ("owner-enrichment", true)
        } else {
            ("port-allowlist", false)
        };
        let dest = rig.tmp.path().join("plugins/port-allowlist.wasm");
        let tmp = rig.tmp.path().join("plugins/.incoming");
        std::fs::copy(wasm(&guests, file), &tmp).unwrap();
        let started = Instant::now();
        std::fs::rename(&tmp, &dest).unwrap();
        while is_owner(&host) != want_owner {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "reload never happened"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(started.elapsed());
    }
    println!(
        "reload: first (cold compile) {} ms, then cached {:?} ms (debounce 250 ms included)",
        times[0].as_millis(),
        times[2..].iter().map(|t| t.as_millis()).collect::<Vec<_>>()
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    memory_per_plugin();
    reload_latency();
}
