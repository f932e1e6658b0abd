//! Plugins that try to hurt the host (issue 11), each against the real
//! runtime: fixtures from tests/fixtures/plugins (README there), and `run`
//! as a process where the harm would be to the process itself (a crash, a
//! frozen tick, wake-ups between ticks).

// A failing unwrap is a failing test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use defender_edge::collect::{CollectConfig, Collector};
use defender_edge::plugin::{PluginHost, Processed};
use defender_edge::status::Status;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::plugins::{Rig, capture, eventually, passed, sample, shared_cache, wasm};
use crate::support;

/// Quiet time after which the watcher has surely acted on earlier events
/// (four times its debounce).
const SETTLE: Duration = Duration::from_millis(1000);

/// Runs `f` on a thread of its own and returns its result and how long it
/// took; fails the test instead of hanging when it takes longer than
/// `limit` (the thread is then left behind).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => (value, started.elapsed()),
        Err(_) => panic!("{what} did not return within {limit:?}"),
    }
}

// Item 1: hot reload acts on finished writes, renames and removals, and only
// when the content changed.
#[test]
fn reading_a_plugin_never_reloads_it_and_each_change_reloads_once() {
    let rig = Rig::shared(&[("p", "port-allowlist")]);
    let (host, _) = rig.start(json!({ "hotReload": true, "settings": { "p": {
        "config": { "tcp": "22", "owner": "ops" } } } }));
    let file = rig.dir().join("p.wasm");
    assert_eq!(passed(host.process(sample())).alerts.len(), 4);

    // Reads (a `cat`, the host's own load), a rewrite of the same bytes and
    // a touch change nothing.
    let same = std::fs::read(&file).unwrap();
    for _ in 0..20 {
        std::fs::read(&file).unwrap();
    }
    std::fs::write(&file, &same).unwrap();
    std::fs::File::open(&file)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(rig.n("p", "reloads"), 0);
    assert_eq!(rig.n("p", "load_errors"), 0);
    assert_eq!(rig.n("p", "restarts"), 0, "the instance was kept");

    // A replace reloads exactly once, however often the new file is read.
    rig.install("p", &wasm("owner-enrichment"));
    eventually("the new version", || {
        let out = passed(host.process(sample()));
        (out.annotations.get("owner").map(String::as_str) == Some("ops")).then_some(())
    });
    for _ in 0..20 {
        std::fs::read(&file).unwrap();
    }
    std::thread::sleep(SETTLE);
    assert_eq!(rig.n("p", "reloads"), 1);

    // A bad file is one error, not a stream, and the good version runs on.
    std::fs::write(&file, b"\0asm broken").unwrap();
    eventually("the load error", || {
        (rig.n("p", "load_errors") >= 1).then_some(())
    });
    for _ in 0..20 {
        std::fs::read(&file).unwrap();
    }
    std::fs::write(&file, b"\0asm broken").unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(rig.n("p", "load_errors"), 1);
    assert_eq!(rig.n("p", "reloads"), 1);
    assert_eq!(
        passed(host.process(sample())).annotations["owner"],
        "ops",
        "the previous version still runs"
    );
}

// Item 2: a call waiting in a host function ends at its budget plus the
// margin, like a loop does.
#[test]
fn plugins_waiting_in_host_calls_time_out_at_their_budget() {
    let rig = Rig::shared(&[("sleep", "fault-sleep"), ("poll", "fault-poll-forever")]);
    let limits = json!({ "callTimeoutMs": 100, "restartBackoffMs": 0 });
    let (host, _) = rig.start(json!({ "settings": {
        "sleep": { "order": 1, "limits": limits },
        "poll": { "order": 2, "limits": limits } } }));
    for round in 1..=2 {
        let h = host.clone();
        let ((out, logs), took) = within(Duration::from_secs(10), "process", move || {
            capture(|| h.process(sample()))
        });
        assert_eq!(passed(out), sample(), "fail-open passes the sample on");
        // Each plugin: 100 ms of budget plus 100 ms of margin; the rest is
        // slack for a loaded machine.
        assert!(took < Duration::from_secs(2), "took {took:?}");
        for plugin in ["sleep", "poll"] {
            assert_eq!(rig.n(plugin, "timeouts"), round, "{plugin}");
            assert_eq!(
                rig.text(plugin, "last_error"),
                "waited in a host call (a sleep or poll) longer than callTimeoutMs (100 ms)",
                "{plugin}"
            );
            assert!(logs.contains(&format!("plugin={plugin}")), "{logs}");
        }
    }
    // The abandoned store was dropped; the second round ran on a new one.
    assert_eq!(rig.n("sleep", "restarts"), 1);
    assert_eq!(rig.n("poll", "restarts"), 1);
}

#[test]
fn a_plugin_sleeping_in_init_does_not_hold_up_the_start() {
    let rig = Rig::shared(&[("sleepy", "fault-sleep")]);
    // Compiled first (into the shared cache), so the timed start below
    // measures init, not the compiler.
    drop(rig.start(json!({})));
    let config = rig.config(json!({ "settings": { "sleepy": {
        "config": { "in": "init" }, "limits": { "initTimeoutMs": 200 } } } }));
    let (cache, status) = (rig.cache(), rig.status.clone());
    let (host, took) = within(Duration::from_secs(10), "start", move || {
        PluginHost::start(&config, &cache, status).unwrap()
    });
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        rig.text("sleepy", "state"),
        "failed: plugin sleepy: init failed: init waited in a host call (a sleep or poll) \
         longer than initTimeoutMs (200 ms)"
    );
    assert_eq!(passed(host.process(sample())), sample());
}

#[test]
fn atomic_waits_are_refused_when_the_plugin_is_compiled() {
    let rig = Rig::shared(&[("atomic", "fault-atomic-wait")]);
    let (host, logs) = rig.start(json!({}));
    let state = rig.text("atomic", "state");
    assert!(
        state.starts_with("failed: plugin atomic: compile failed:") && state.contains("threads"),
        "{state}\n{logs}"
    );
    let (out, _) = within(Duration::from_secs(10), "process", move || {
        host.process(sample())
    });
    assert_eq!(passed(out), sample());
}

// Item 3: `memoryMib` is the plugin's, not each memory's.
#[test]
fn memories_each_under_the_cap_together_over_it_fail_to_grow() {
    let rig = Rig::shared(&[("multi", "fault-multi-memory")]);
    let (host, _) = rig.start(json!({}));
    assert_eq!(rig.text("multi", "state"), "running");
    let (out, logs) = capture(|| host.process(sample()));
    assert_eq!(passed(out), sample());
    assert_eq!(rig.n("multi", "out_of_memory"), 1, "{logs}");
    let error = rig.text("multi", "last_error");
    assert!(
        error.starts_with("ran out of memory: ")
            && error.contains(
                "memory limit of 32 MiB exceeded: growing a memory would take the plugin's \
                 memories and tables to 37 MiB"
            ),
        "{error}"
    );
    assert!(rig.n("multi", "memory_peak_bytes") <= 32 << 20);
}

// Item 4: an error message is input like any other.
#[test]
fn huge_error_messages_are_cut_and_count_toward_disabling() {
    let rig = Rig::shared(&[("huge", "fault-huge-output")]);
    let (host, _) = rig.start(json!({ "settings": { "huge": {
        "onFailure": "closed", "config": { "as": "error" }, "limits": { "maxFailures": 3 } } } }));
    for i in 1..=3 {
        let (out, logs) = capture(|| host.process(sample()));
        let Processed::Held { reason, .. } = out else {
            panic!("expected the report held, got {out:?}")
        };
        assert!(
            reason.starts_with("returned an error: huge error xxx"),
            "{reason}"
        );
        assert!(reason.len() < 1100, "reason of {} bytes", reason.len());
        assert!(
            logs.len() < 8192,
            "{} bytes of log for one call",
            logs.len()
        );
        assert!(rig.text("huge", "last_error").len() < 1100);
        assert_eq!(rig.n("huge", "errors"), i);
        assert_eq!(rig.n("huge", "failures"), i);
    }
    assert_eq!(rig.n("huge", "disabled"), 1);
    assert!(
        rig.text("huge", "state")
            .starts_with("disabled: 3 failures in 300 s, last: returned an error: huge error")
    );
    assert!(matches!(host.process(sample()), Processed::Held { .. }));
    assert_eq!(rig.n("huge", "calls"), 3, "a disabled plugin is not called");
}

/// The compile cache entries of `krate`'s component, compiled into the
/// shared cache first if needed. A test copies them into a `run`'s state
/// directory so that the process does not compile (seconds in a debug build).
fn cached(krate: &str) -> Vec<PathBuf> {
    let digest = format!("{:x}", Sha256::digest(std::fs::read(wasm(krate)).unwrap()));
    let entries = || -> Vec<PathBuf> {
        std::fs::read_dir(shared_cache())
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&digest) && n.ends_with(".cwasm"))
            })
            .collect()
    };
    if entries().is_empty() {
        let rig = Rig::shared(&[(krate, krate)]);
        drop(rig.start(json!({})));
    }
    let found = entries();
    assert!(
        !found.is_empty(),
        "{krate} was not compiled into the shared cache"
    );
    found
}

/// A `defender-edge run` with a configuration file and plugins folder in a
/// temp dir; stderr goes to a log file.
struct Run {
    tmp: tempfile::TempDir,
    child: Child,
}

/// The folder a [`Run`] starts in, before it starts.
struct RunDir {
    tmp: tempfile::TempDir,
}

impl RunDir {
    /// `plugins`: (plugin name, built crate); their compiled entries are
    /// copied into the state directory's compile cache. `extra` is merged
    /// into the configuration's `plugins` section. Detection (one profile)
    /// samples every `detection_secs`.
    fn new(plugins: &[(&str, &str)], extra: Value, detection_secs: u32) -> RunDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        let cache = tmp.path().join("state").join("plugin-cache");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        for (name, krate) in plugins {
            std::fs::copy(wasm(krate), dir.join(format!("{name}.wasm"))).unwrap();
            for entry in cached(krate) {
                std::fs::copy(&entry, cache.join(entry.file_name().unwrap())).unwrap();
            }
        }
        let mut section = json!({ "dir": dir });
        section
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let config = json!({
            "thingName": "plugin-faults",
            "stateDir": tmp.path().join("state"),
            // The tests read the counters from status.json as they go.
            "stateWriteSeconds": 1,
            "output": { "ndjson": null },
            "publish": { "transport": "none" },
            "detection": {
                "intervalSeconds": detection_secs.to_string(),
                "profilePaths": [support::fixture("detect/profiles/device-rule-baseline.json")]
            },
            "plugins": section,
        });
        std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
        RunDir { tmp }
    }

    fn plugins(&self) -> PathBuf {
        self.tmp.path().join("plugins")
    }

    fn spawn(self) -> Run {
        let child = self.start();
        Run {
            tmp: self.tmp,
            child,
        }
    }

    /// `run` in this folder, logging into `run.log` (truncated).
    fn start(&self) -> Child {
        let log = std::fs::File::create(self.tmp.path().join("run.log")).unwrap();
        Command::new(support::bin())
            .arg("run")
            .arg("--config")
            .arg(self.tmp.path().join("config.json"))
            .env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
            .env_remove("SVCUID")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

impl Run {
    fn start(plugins: &[(&str, &str)], extra: Value, detection_secs: u32) -> Run {
        RunDir::new(plugins, extra, detection_secs).spawn()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("run.log")).unwrap_or_default()
    }

    /// A number from `status.json` (0 when absent).
    fn n(&self, name: &str) -> u64 {
        std::fs::read(self.tmp.path().join("state/status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["values"][name].as_u64())
            .unwrap_or(0)
    }

    /// Waits until `name` reaches `at_least`, failing with the log if the
    /// process exits or `within` passes first.
    fn wait_for(&mut self, name: &str, at_least: u64, within: Duration) {
        let until = Instant::now() + within;
        while self.n(name) < at_least {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "run exited ({status}) waiting for {name}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < until,
                "{name} is {} after {within:?}, wanted {at_least}; log:\n{}",
                self.n(name),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM; returns the exit status and how long it took.
    fn stop(&mut self) -> (std::process::ExitStatus, Duration) {
        // SAFETY: kill(2) on the pid of the child spawned above.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "run did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Item 2, end to end: the tick goes on at its interval and SIGTERM is
// served while a plugin sleeps on every sample.
#[test]
fn run_keeps_sampling_and_stops_on_sigterm_while_a_plugin_sleeps() {
    let mut run = Run::start(
        &[("sleepy", "fault-sleep")],
        json!({ "settings": { "sleepy": { "limits": {
            "callTimeoutMs": 100, "restartBackoffMs": 0, "maxFailures": 1000 } } } }),
        1,
    );
    run.wait_for("collect.samples", 4, Duration::from_secs(20));
    assert!(run.n("plugin.sleepy.timeouts") >= 3, "{}", run.log());
    let (status, took) = run.stop();
    assert!(status.success(), "{status}; log:\n{}", run.log());
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
}

// Item 5: the host never maps a file someone else may rewrite.
#[test]
fn rewriting_a_loaded_cwasm_in_place_cannot_change_what_runs() {
    let dir = RunDir::new(&[], json!({ "trustPrecompiled": true }), 1);
    // The artifact this host's engine produced for port-allowlist, alone in
    // the folder: nothing to fall back to.
    let artifact = dir.plugins().join("p.cwasm");
    std::fs::copy(&cached("port-allowlist")[0], &artifact).unwrap();
    let mut run = dir.spawn();
    run.wait_for("plugin.p.calls", 2, Duration::from_secs(20));
    assert!(
        run.log()
            .contains(r#"plugin loaded plugin=p from="precompiled""#),
        "{}",
        run.log()
    );
    // int3 over every byte, one at a time, while samples go through it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&artifact)
        .unwrap();
    let len = file.metadata().unwrap().len();
    for offset in 0..len {
        file.write_at(&[0xCC], offset).unwrap();
        if offset % 65536 == 0 {
            assert!(
                run.alive(),
                "run died at byte {offset}; log:\n{}",
                run.log()
            );
        }
    }
    let calls = run.n("plugin.p.calls");
    run.wait_for("plugin.p.calls", calls + 2, Duration::from_secs(20));
    assert_eq!(run.n("plugin.p.traps"), 0, "{}", run.log());
    let (status, _) = run.stop();
    assert!(status.success(), "{status}; log:\n{}", run.log());
}

// Item 6, end to end: a planted artifact is refused and compiled over.
#[test]
fn a_cache_entry_that_is_not_what_the_host_wrote_is_compiled_again() {
    let rig = Rig::new(&[("p", "port-allowlist")]);
    let settings = json!({ "settings": { "p": { "config": { "tcp": "22" } } } });
    drop(rig.start(settings.clone()));
    let entries: Vec<PathBuf> = std::fs::read_dir(rig.cache())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    let is_port_allowlist = |host: &PluginHost| {
        passed(host.process(sample()))
            .alerts
            .iter()
            .any(|a| a.source == "p" && a.name == "port-not-allowed")
    };

    // Native code of another plugin, built by this very engine, under the
    // entry's name: a well-formed artifact that is not what was written.
    std::fs::copy(&cached("owner-enrichment")[0], entry).unwrap();
    let (host, logs) = rig.start(settings.clone());
    assert!(
        logs.contains("refusing compile cache entry") && logs.contains("is not what was written"),
        "{logs}"
    );
    assert_eq!(rig.text("p", "loaded_from"), "compiled");
    assert!(is_port_allowlist(&host));
    drop(host);

    // Writable by the group: refused as well, then written again privately.
    std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o664)).unwrap();
    let (host, logs) = rig.start(settings);
    assert!(
        logs.contains("is writable by its group or by others (mode 664)"),
        "{logs}"
    );
    assert!(is_port_allowlist(&host));
    assert_eq!(
        std::fs::metadata(entry).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(rig.n("p", "compiles"), 3);
}

/// `tests/fixtures/proc/thousands` with `extra` more established IPv4
/// connections to the MQTT port, as under a connection flood.
fn flooded_proc_tree(extra: u32) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let from = support::fixture("proc/thousands");
    for rel in ["net", "sys/kernel/random"] {
        std::fs::create_dir_all(tmp.path().join(rel)).unwrap();
    }
    for rel in [
        "net/dev",
        "net/fib_trie",
        "net/if_inet6",
        "net/igmp",
        "net/route",
        "net/tcp6",
        "net/udp",
        "net/udp6",
        "sys/kernel/random/boot_id",
    ] {
        std::fs::copy(from.join(rel), tmp.path().join(rel)).unwrap();
    }
    let mut tcp = std::fs::read_to_string(from.join("net/tcp")).unwrap();
    let first_sl = tcp.lines().count();
    // The kernel prints each address as a host-order (little-endian) word.
    let le = |ip: [u8; 4]| format!("{:08X}", u32::from_le_bytes(ip));
    for i in 0..extra {
        let remote = [10, 200 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        tcp.push_str(&format!(
            "{:4}: {}:{:04X} {}:{:04X} 01 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 20 4 30 10 -1\n",
            first_sl + i as usize,
            le([192, 168, 1, 23]),
            1883,
            le(remote),
            40000 + (i % 20000),
            900_000 + i
        ));
    }
    std::fs::write(tmp.path().join("net/tcp"), tcp).unwrap();
    tmp
}

// Item 7: a plugin is judged on what it adds, not on the sample's size.
#[test]
fn a_sample_with_more_connections_than_the_list_limit_goes_through_plugins() {
    let tree = flooded_proc_tree(8_000);
    let collector = Collector::new(&CollectConfig {
        proc_root: tree.path().to_owned(),
        ..CollectConfig::default()
    });
    let flood = collector.sample("pi-7", 1_767_225_600_000, None).sample;
    assert!(
        flood.established_connections.len() > 10_000,
        "{} connections",
        flood.established_connections.len()
    );
    let rig = Rig::shared(&[("p", "port-allowlist"), ("m", "system-metrics")]);
    // Copying 12,000 connections in and out takes a while in a debug build
    // on a loaded machine; this test is about the lists, not the deadline.
    let limits = json!({ "callTimeoutMs": 10000 });
    let (host, _) = rig.start(json!({ "settings": {
        "p": { "onFailure": "closed", "config": { "tcp": "22,443,1883" }, "limits": limits },
        "m": { "onFailure": "closed", "limits": limits } } }));
    let out = match host.process(flood.clone()) {
        Processed::Pass(out) => out,
        other => panic!("{other:?}"),
    };
    assert_eq!(out.established_connections, flood.established_connections);
    assert!(
        out.alerts.iter().any(|a| a.source == "p"),
        "{:?}",
        out.alerts
    );
    assert!(out.custom_metrics.contains_key("remote_ips"));
    assert_eq!(rig.n("p", "rejected") + rig.n("m", "rejected"), 0);
}

// Item 8: turning trustPrecompiled on by an update is worth a warning.
#[test]
fn an_update_turning_trust_precompiled_on_is_logged_as_a_warning() {
    let rig = Rig::shared(&[]);
    let (_, logs) = rig.start(json!({}));
    assert!(!logs.contains("trustPrecompiled"), "{logs}");
    let (_, logs) = rig.start(json!({ "trustPrecompiled": true }));
    assert!(
        logs.contains("WARN")
            && logs.contains("a configuration update turned plugins.trustPrecompiled on"),
        "{logs}"
    );
    // On from the first start: said, not warned about.
    let fresh = Status::new();
    let config = rig.config(json!({ "trustPrecompiled": true }));
    let (_, logs) = capture(|| PluginHost::start(&config, &rig.cache(), fresh).unwrap());
    assert!(
        logs.contains("INFO") && logs.contains("plugins.trustPrecompiled is on"),
        "{logs}"
    );
    assert!(!logs.contains("WARN"), "{logs}");
}

// Item 10: the host is as small after compiling its plugins as after
// finding them in the cache, because it compiles in a child process. The
// smallest component the tests build (a WAT module) keeps this fast; it
// still takes the compiler's code and heap, 12 MB in a debug build.
#[test]
fn resident_memory_after_start_does_not_depend_on_having_compiled() {
    let dir = RunDir::new(&[], json!({}), 60);
    std::fs::copy(wasm("fault-multi-memory"), dir.plugins().join("m.wasm")).unwrap();
    let log = dir.tmp.path().join("run.log");
    let mut rss_kib = Vec::new();
    for origin in ["compiled", "cache"] {
        let mut child = dir.start();
        let loaded = format!(r#"plugin loaded plugin=m from="{origin}""#);
        let until = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log).unwrap().contains(&loaded) {
            assert!(
                Instant::now() < until && matches!(child.try_wait(), Ok(None)),
                "no `{loaded}`; log:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let rss: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        rss_kib.push(rss);
        // SAFETY: kill(2) on the pid of the child spawned above.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
    }
    let (compiled, cached) = (rss_kib[0], rss_kib[1]);
    assert!(
        compiled <= cached + 4 * 1024,
        "resident after compiling {compiled} KiB, after loading from the cache {cached} KiB"
    );
}

/// Context switches so far of `pid`'s threads whose name starts with one of
/// `prefixes`, by thread name.
fn wakeups(pid: u32, prefixes: &[&str]) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let name = field("Name:");
        if prefixes.iter().any(|p| name.starts_with(p)) {
            let n: u64 = field("voluntary_ctxt_switches:").parse().unwrap_or(0)
                + field("nonvoluntary_ctxt_switches:").parse().unwrap_or(0);
            found.push((name, n));
        }
    }
    found.sort();
    found
}

// Item 9: loaded plugins cost nothing between calls.
#[test]
fn loaded_plugins_and_hot_reload_cost_no_wakeups_between_ticks() {
    let mut run = Run::start(
        &[
            ("port-allowlist", "port-allowlist"),
            ("owner-enrichment", "owner-enrichment"),
            ("system-metrics", "system-metrics"),
        ],
        json!({ "hotReload": true, "settings": {
            "owner-enrichment": { "config": { "owner": "ops" } },
            "system-metrics": { "config": { "procDir": "/host" }, "grants": { "readDirs": { "/host": "/proc" } } } } }),
        10,
    );
    run.wait_for("plugin.system-metrics.calls", 1, Duration::from_secs(20));
    // Past the first tick's calls and their deadlines; the next tick is
    // ten seconds after the first.
    std::thread::sleep(Duration::from_millis(500));
    let threads = ["plugin-", "notify-rs"];
    let before = wakeups(run.child.id(), &threads);
    std::thread::sleep(Duration::from_secs(3));
    let after = wakeups(run.child.id(), &threads);
    assert_eq!(run.n("collect.samples"), 1, "a tick came in the window");
    let total = |w: &[(String, u64)]| w.iter().map(|(_, n)| n).sum::<u64>();
    assert!(
        total(&after) - total(&before) <= 1,
        "plugin threads woke up between ticks: before {before:?}, after {after:?}"
    );
    assert!(run.alive());
}

#[test]
fn the_fixture_readme_lists_every_fault_fixture() {
    let root = support::fixture("plugins");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut fixtures: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fault-"))
        .collect();
    fixtures.extend(
        std::fs::read_dir(root.join("wat"))
            .unwrap()
            .map(|e| format!("wat/{}", e.unwrap().file_name().to_string_lossy())),
    );
    for fixture in fixtures {
        assert!(
            readme.contains(&format!("| `{fixture}` |")),
            "tests/fixtures/plugins/README.md does not list {fixture}"
        );
    }
}
