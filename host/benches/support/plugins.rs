//! What the plugin benchmarks share: the example plugins built for
//! wasm32-wasip2, the 1,000-connection sample, and the process's RSS.

// Each benchmark uses its own part of this file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use defender_edge::sample::{EstablishedConnection, ListeningPort, Sample};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds plugins/ for wasm32-wasip2 and returns the output folder.
pub fn guests() -> PathBuf {
    let target_dir = std::env::var_os("DEFENDER_EDGE_WASM_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target").join("wasm-guests"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--release",
            "--manifest-path",
        ])
        .arg(repo().join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building the example plugins failed (is the target installed? rustup target add wasm32-wasip2)"
    );
    target_dir.join("wasm32-wasip2/release")
}

pub fn wasm(guests: &Path, name: &str) -> PathBuf {
    guests.join(format!("{}.wasm", name.replace('-', "_")))
}

/// 1,000 established connections to 250 peers, 10 listening ports.
pub fn big_sample() -> Sample {
    Sample {
        thing: "bench".into(),
        timestamp_ms: 1_767_225_600_000,
        listening_tcp_ports: [21, 22, 80, 443, 8883, 40000, 40001, 50000, 60000, 61000]
            .into_iter()
            .map(|port| ListeningPort {
                port,
                interface: Some("eth0".into()),
            })
            .collect(),
        established_connections: (0..1000u32)
            .map(|i| EstablishedConnection {
                remote_addr: format!("10.0.{}.{}:443", i % 250 / 50, i % 50 + 1)
                    .parse()
                    .unwrap(),
                local_port: 30000 + i as u16,
                local_interface: Some("eth0".into()),
            })
            .collect(),
        ..Sample::default()
    }
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}
