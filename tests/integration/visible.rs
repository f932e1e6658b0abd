//! What a person at the device's terminal sees (issue 13): `run` printing
//! alarms, alerts and annotations, `status` telling a live agent from a dead
//! one, `config check`, and invalid input refused with one message and exit
//! status 2. Every test runs the command a person types and reads what it
//! prints.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support;

fn defender_edge() -> Command {
    let mut cmd = Command::new(support::bin());
    cmd.env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .env_remove("SVCUID")
        .env_remove("RUST_LOG")
        .env_remove("DEFENDER_EDGE_CONFIG")
        .env("AWS_IOT_THING_NAME", "visible-thing");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).expect("write JSON");
    path
}

/// `HH:MM:SS ` at the start of a human line.
fn starts_with_clock(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 9
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b' '
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
}

/// The captured proc tree (TCP ports 2024, 32987, 39229, 58369, 60853; UDP
/// 55231, 57588), a profile that allows every TCP port but 60853, the
/// port-allowlist plugin that allows every port but UDP 57588, and the
/// owner-enrichment plugin.
fn finding_config(dir: &Path) -> PathBuf {
    let plugins = crate::plugins::plugin_folder(dir, &["port-allowlist", "owner-enrichment"]);
    write_json(
        dir,
        "config.json",
        &json!({
            "stateDir": dir.join("state"),
            "collect": {"procRoot": support::fixture("proc/captured")},
            "detection": {"profiles": [{
                "securityProfileName": "DeviceRuleBaseline",
                "behaviors": [{
                    "name": "UnexpectedListeningTcpPorts",
                    "metric": "aws:listening-tcp-ports",
                    "criteria": {"comparisonOperator": "in-port-set",
                        "value": {"ports": [2024, 32987, 39229, 58369]},
                        "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}
                }]
            }]},
            "plugins": {"dir": plugins, "settings": {
                "port-allowlist": {"config": {"tcp": "2024,32987,39229,58369,60853", "udp": "55231"}},
                "owner-enrichment": {"config": {"owner": "plant-ops", "site": "lyon-2"}}
            }}
        }),
    )
}

/// Item 3: by default `run` writes the alarm, the plugin's alert and the
/// annotations as NDJSON lines with a `type`, beside a report line that is
/// the report and nothing else.
#[test]
fn run_prints_alarms_alerts_and_annotations_as_typed_ndjson_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = finding_config(dir.path());
    let out = defender_edge()
        .args(["run", "--once", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let of = |kind: &str| -> Vec<&Value> { lines.iter().filter(|l| l["type"] == kind).collect() };
    let reports: Vec<&str> = stdout
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v.get("type").is_none()))
        .collect();
    assert_eq!(reports.len(), 1, "one report line: {stdout}");
    // The report line is the report, as consumers have always read it.
    let report =
        defender_edge::report::decode(reports[0].as_bytes(), defender_edge::report::Format::Json)
            .expect("the report line decodes as a report");
    assert_eq!(
        defender_edge::report::encode(&report, defender_edge::report::Format::Json),
        reports[0].as_bytes(),
        "the report line is exactly the encoded report"
    );

    let alarms = of("alarm");
    assert_eq!(alarms.len(), 1, "one alarm: {stdout}");
    assert_eq!(alarms[0]["state"], "alarm");
    assert_eq!(alarms[0]["profile"], "DeviceRuleBaseline");
    assert_eq!(alarms[0]["behavior"], "UnexpectedListeningTcpPorts");
    assert_eq!(alarms[0]["offending"], json!({"ports": [60853]}));

    let alerts = of("alert");
    assert_eq!(
        alerts.len(),
        1,
        "one plugin alert (detection's are alarms): {stdout}"
    );
    assert_eq!(alerts[0]["source"], "port-allowlist");
    assert_eq!(alerts[0]["name"], "port-not-allowed");
    assert_eq!(alerts[0]["severity"], "high");
    assert_eq!(alerts[0]["attributes"]["port"], "57588");

    let annotations = of("annotations");
    assert_eq!(annotations.len(), 1, "{stdout}");
    assert_eq!(
        annotations[0]["annotations"],
        json!({"owner": "plant-ops", "site": "lyon-2"})
    );

    // A healthy agent writes no health line (it does when it goes wrong:
    // run::the_agent_health_is_published_each_period_and_names_a_broken_plugin).
    assert!(of("health").is_empty(), "{stdout}");

    // `output.events: null` leaves only the report.
    let mut quiet: Value =
        serde_json::from_slice(&std::fs::read(&config).expect("config")).expect("JSON");
    quiet["output"] = json!({"events": null});
    let quiet = write_json(dir.path(), "quiet.json", &quiet);
    let out = defender_edge()
        .args(["run", "--once", "--config"])
        .arg(&quiet)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(!stdout.contains("\"type\""), "{stdout}");
}

/// Item 3: with `--human` (the default on a terminal) one readable line each.
#[test]
fn run_human_prints_one_readable_line_per_finding() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = finding_config(dir.path());
    let out = defender_edge()
        .args(["run", "--once", "--human", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.iter().all(|l| starts_with_clock(l)), "{stdout}");
    let shown: Vec<&str> = lines.iter().map(|l| &l[9..]).collect();
    assert!(
        shown.contains(
            &"ALARM DeviceRuleBaseline/UnexpectedListeningTcpPorts port 60853 (not in 2024, 32987, 39229, 58369)"
        ),
        "{stdout}"
    );
    assert!(
        shown.contains(
            &"ALERT high port-allowlist/port-not-allowed: udp port 57588 listens on * but is not on the allowlist"
        ),
        "{stdout}"
    );
    assert!(
        shown.contains(&"NOTE annotations: owner=plant-ops, site=lyon-2"),
        "{stdout}"
    );
    assert!(
        shown.iter().any(|l| l.starts_with("REPORT ")
            && l.contains(": 5 TCP ports (2024, 32987, 39229, 58369, 60853), 2 UDP ports")),
        "{stdout}"
    );
    // A healthy agent prints no HEALTH line.
    assert_eq!(lines.len(), 4, "nothing else: {stdout}");
}

/// A `run` whose standard output goes to a file read while it runs.
struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    fn start(cmd: &mut Command, dir: &Path) -> Running {
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        let child = cmd
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start run");
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn wait_for(&mut self, what: &str, check: impl Fn(&str) -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        while !check(&self.stdout()) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "run exited ({status}) while waiting for {what}; stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; stdout:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the pid of a child this test spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("0.0.0.0:0").expect("free port");
    probe.local_addr().expect("addr").port()
}

/// A profile on the real /proc that alarms while `port` listens.
fn rogue_port_config(dir: &Path, port: u16) -> PathBuf {
    write_json(
        dir,
        "config.json",
        &json!({
            "stateDir": dir.join("state"),
            // Judged every second: these tests are about what a person
            // sees, not about how many samples make a datapoint.
            "detection": {"intervalSeconds": 1, "perSample": ["*"],
                "profiles": [support::rogue_listener_profile(port, 1)]}
        }),
    )
}

/// Item 3: a listener that opens and closes gives an ALARM line, then a
/// CLEAR line of its own.
#[test]
fn run_human_prints_the_clear_as_its_own_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = rogue_port_config(dir.path(), port);
    let mut run = Running::start(
        defender_edge()
            .args(["run", "--human", "--config"])
            .arg(&config),
        dir.path(),
    );
    run.wait_for("the first report", |out| out.contains(" REPORT "));
    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the rogue port");
    let alarm = format!("ALARM NoRogueListener/RoguePortClosed port {port} (in {port})");
    run.wait_for("the alarm line", |out| out.contains(&alarm));
    drop(listener);
    run.wait_for("the clear line", |out| {
        out.contains("CLEAR NoRogueListener/RoguePortClosed (alarm since ")
    });
    assert!(run.stop().success());
    let out = run.stdout();
    let alarm_lines = out.lines().filter(|l| l.contains(" ALARM ")).count();
    let clear_lines = out.lines().filter(|l| l.contains(" CLEAR ")).count();
    assert_eq!((alarm_lines, clear_lines), (1, 1), "{out}");
    assert!(out.lines().all(starts_with_clock), "{out}");
}

fn status_of(state: &Path) -> String {
    let out = defender_edge()
        .args(["status", "--state-dir"])
        .arg(state)
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Item 5: `status` says whether `run` still runs, lists the open alarm with
/// what broke it, refreshes with `--watch`, and tells a stopped run from a
/// live one.
#[test]
fn status_shows_liveness_open_alarms_and_watches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = rogue_port_config(dir.path(), port);
    let state = dir.path().join("state");
    let mut run = Running::start(
        defender_edge()
            .args(["run", "--human", "--config"])
            .arg(&config),
        dir.path(),
    );
    let pid = run.child.id();
    run.wait_for("the first report", |out| out.contains(" REPORT "));
    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the rogue port");
    run.wait_for("the alarm line", |out| out.contains(" ALARM "));
    // The status file is written after the tick that printed the alarm.
    let until = Instant::now() + Duration::from_secs(10);
    let table = loop {
        let table = status_of(&state);
        if table.contains("RoguePortClosed") || Instant::now() > until {
            break table;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        table.starts_with(&format!("defender-edge running (pid {pid}, up ")),
        "{table}"
    );
    assert!(table.contains(" ago\n"), "the snapshot's age: {table}");
    let since = table
        .lines()
        .find(|l| l.starts_with("  NoRogueListener/RoguePortClosed  since "))
        .unwrap_or_else(|| panic!("the open alarm is listed: {table}"));
    assert!(
        since.ends_with(&format!(" UTC: port {port} (in {port})")),
        "{since}"
    );
    assert!(table.contains("\nopen alarms\n"), "{table}");

    // --watch shows the view again and again until interrupted.
    let mut watch = defender_edge()
        .args(["status", "--watch", "200ms", "--state-dir"])
        .arg(&state)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("status --watch");
    std::thread::sleep(Duration::from_millis(900));
    let _ = watch.kill();
    let watched = watch.wait_with_output().expect("watch output");
    let views = text(&watched.stdout)
        .matches("defender-edge running")
        .count();
    assert!(
        views >= 3,
        "{views} views in 900 ms:\n{}",
        text(&watched.stdout)
    );

    drop(listener);
    run.wait_for("the clear line", |out| out.contains(" CLEAR "));
    assert!(run.stop().success());
    let table = status_of(&state);
    assert!(
        table.starts_with(&format!(
            "defender-edge NOT RUNNING (pid {pid} has exited)\n"
        )),
        "{table}"
    );
    assert!(
        table.contains("\nalarms open when it stopped: none\n"),
        "the clear closed the alarm: {table}"
    );
}

/// Items 11 and 12: every invalid input exits 2 with one line that names
/// what is wrong and says each cause once.
#[test]
fn invalid_input_exits_2_with_one_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let config = |name: &str, json: &str| {
        let path = d.join(name);
        std::fs::write(&path, json).expect("config");
        path.display().to_string()
    };
    let missing_profile = config(
        "missing-profile.json",
        r#"{"detection": {"profilePaths": ["/nonexistent/profile.json"]}}"#,
    );
    let bad_profile = config(
        "bad-profile.json",
        r#"{"detection": {"profiles": [{"securityProfileName": "P", "behaviors": [
            {"name": "b", "metric": "aws:no-such-metric", "criteria": {}}]}]}}"#,
    );
    let bad_json = config("bad-json.json", "{\"stateDir\": \"s\",\n");
    let missing_plugins = config(
        "missing-plugins.json",
        r#"{"plugins": {"dir": "/nonexistent/plugins"}}"#,
    );
    let bad_proc = config(
        "bad-proc.json",
        r#"{"collect": {"procRoot": "/nonexistent/proc"}}"#,
    );
    let plain_file = d.join("plain-file");
    std::fs::write(&plain_file, "not a proc tree").expect("file");
    let empty = d.join("empty");
    std::fs::create_dir(&empty).expect("empty dir");
    let state = d.join("state").display().to_string();
    let bad_json_message = format!(
        "invalid configuration in {bad_json}: EOF while parsing a value at line 2 column 0"
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "collect".into(),
                "--config".into(),
                "/nonexistent/config.json".into(),
            ],
            "cannot read configuration file /nonexistent/config.json: No such file or directory (os error 2)",
        ),
        (
            vec![
                "run".into(),
                "--once".into(),
                "--config".into(),
                missing_profile,
            ],
            "cannot read security profile /nonexistent/profile.json: No such file or directory (os error 2)",
        ),
        (
            vec!["collect".into(), "--config".into(), bad_profile],
            "unknown Device Defender metric `aws:no-such-metric`",
        ),
        (
            vec!["collect".into(), "--config".into(), bad_json.clone()],
            &bad_json_message,
        ),
        (
            vec!["collect".into(), "--config".into(), missing_plugins],
            "plugin directory /nonexistent/plugins: No such file or directory (os error 2)",
        ),
        (
            vec![
                "collect".into(),
                "--proc-root".into(),
                "/nonexistent/proc".into(),
            ],
            "proc root /nonexistent/proc (collect.procRoot or --proc-root) is not a proc tree",
        ),
        (
            vec![
                "collect".into(),
                "--proc-root".into(),
                plain_file.display().to_string(),
            ],
            "is not a proc tree: none of net/tcp, net/tcp6, net/udp, net/udp6, net/dev can be read",
        ),
        (
            vec![
                "collect".into(),
                "--proc-root".into(),
                empty.display().to_string(),
            ],
            "is not a proc tree",
        ),
        (
            vec!["run".into(), "--once".into(), "--config".into(), bad_proc],
            "proc root /nonexistent/proc (collect.procRoot or --proc-root) is not a proc tree",
        ),
    ];
    for (args, expected) in cases {
        let out = defender_edge()
            .args(&args)
            .args(["--state-dir", &state])
            .output()
            .expect("run the command");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("defender-edge: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("(os error").count().min(1),
            stderr.matches("(os error").count(),
            "{args:?}: a cause said twice: {stderr}"
        );
        assert!(!stderr.contains("key `?`"), "{args:?}: {stderr}");
    }

    // A partial tree (only net/dev) is not a typo: it warns and reports.
    let partial = d.join("partial");
    std::fs::create_dir_all(partial.join("net")).expect("net dir");
    std::fs::copy("/proc/net/dev", partial.join("net/dev")).expect("copy net/dev");
    let out = defender_edge()
        .args(["collect", "--state-dir", &state, "--proc-root"])
        .arg(&partial)
        .output()
        .expect("collect");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("net/tcp"),
        "the missing files are warned"
    );
}

/// Item 10: `config check` checks the document, the profiles and every
/// plugin without running, and exits 2 on an invalid one.
#[test]
fn config_check_validates_without_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = finding_config(dir.path());
    let out = defender_edge()
        .args(["config", "check", "--config"])
        .arg(&good)
        .output()
        .expect("config check");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for line in [
        format!("ok  configuration: {}", good.display()),
        "ok  thing name: visible-thing".to_owned(),
        format!(
            "ok  proc root: {}",
            support::fixture("proc/captured").display()
        ),
        "ok  security profiles: 1 (1 behaviors judged on the device, 0 skipped)".to_owned(),
        "ok  plugin owner-enrichment".to_owned(),
        "ok  plugin port-allowlist".to_owned(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in:\n{stdout}");
    }
    assert!(
        !dir.path().join("state").exists(),
        "nothing written to the state directory"
    );

    // A plugin that does not load makes the configuration invalid.
    std::fs::write(dir.path().join("plugins/broken.wasm"), "not wasm").expect("broken plugin");
    let out = defender_edge()
        .args(["config", "check"])
        .env("DEFENDER_EDGE_CONFIG", &good)
        .output()
        .expect("config check");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(
            "BAD plugin broken: failed: plugin broken: compile failed: not a WebAssembly file"
        ),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).is_empty(),
        "said once, on stdout: {}",
        text(&out.stderr)
    );

    // An invalid document: one line on stderr, exit 2.
    let bad = write_json(
        dir.path(),
        "bad.json",
        &json!({"report": {"intervalSeconds": 5}}),
    );
    let out = defender_edge()
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .expect("config check");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("report.intervalSeconds"),
        "{}",
        text(&out.stderr)
    );
}

/// Item 10 under Greengrass: without --config the component configuration
/// is read from the nucleus, and no state is reported to it.
#[test]
fn config_check_reads_the_component_configuration_under_greengrass() {
    let state = tempfile::tempdir().expect("state dir");
    for (document, code, expected) in [
        (
            json!({"thingName": "gg-thing", "stateDir": state.path()}),
            0,
            "ok  thing name: gg-thing",
        ),
        (
            json!({"thingName": "gg-thing", "collect": {"procRoot": "/nonexistent"}}),
            2,
            "is not a proc tree",
        ),
    ] {
        let nucleus = crate::ipc::TestNucleus::start_with(false, document);
        let out = defender_edge()
            .args(["config", "check"])
            .env(
                "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
                &nucleus.socket,
            )
            .env("SVCUID", crate::ipc::SVCUID)
            .output()
            .expect("config check");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "{all}");
        assert!(
            all.contains("ok  configuration: the Greengrass component configuration"),
            "{all}"
        );
        assert!(all.contains(expected), "{all}");
        assert!(
            nucleus.requests("UpdateState").is_empty(),
            "no state reported"
        );
        nucleus.assert_no_violations();
    }
}

/// Item 13: `plugin compile` takes `--config` (its plugins.dir and
/// stateDir), and the plugin commands' help names DEFENDER_EDGE_CONFIG.
#[test]
fn plugin_compile_takes_a_configuration_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = crate::plugins::plugin_folder(dir.path(), &["owner-enrichment"]);
    let state = dir.path().join("state");
    let config = write_json(
        dir.path(),
        "config.json",
        &json!({"stateDir": state, "plugins": {"dir": plugins}}),
    );
    let out = defender_edge()
        .current_dir(dir.path())
        .args(["plugin", "compile", "--config"])
        .arg(&config)
        .output()
        .expect("plugin compile");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cached = std::fs::read_dir(state.join("plugin-cache"))
        .expect("the configuration's stateDir holds the cache")
        .count();
    assert!(cached > 0, "the plugin was compiled into the cache");
    assert!(
        !dir.path().join("defender-edge-state").exists(),
        "the default state directory is not used"
    );

    let out = defender_edge()
        .current_dir(dir.path())
        .args(["plugin", "compile"])
        .output()
        .expect("plugin compile");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("plugins.dir"),
        "{}",
        text(&out.stderr)
    );

    for command in ["compile", "check", "test"] {
        let out = defender_edge()
            .args(["plugin", command, "--help"])
            .output()
            .expect("help");
        assert!(
            text(&out.stdout).contains("DEFENDER_EDGE_CONFIG"),
            "plugin {command} --help names DEFENDER_EDGE_CONFIG"
        );
    }
}
