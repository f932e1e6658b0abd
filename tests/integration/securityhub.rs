//! The Security Hub sink against moto's Security Hub and STS (started per
//! test, on a port the test chooses so it can be started late, stopped and
//! started again). Findings are read back with GetFindings.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_sdk_securityhub::config::BehaviorVersion;
use defender_edge::collect::{CollectConfig, Collector};
use defender_edge::detect::{AlarmEvent, AlarmState, DetectionConfig, Detector};
use defender_edge::publish::securityhub::asff::Finding;
use defender_edge::publish::securityhub::{SecurityHubConfig, SecurityHubHandle, SecurityHubSink};
use defender_edge::state::now_ms;
use defender_edge::status::{Status, Value as StatusValue};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::support;

const HELPER: &str = "securityhub/moto_securityhub.py";
const REGION: &str = "us-east-1";
/// The account moto's STS names for any credentials.
const ACCOUNT: &str = "123456789012";

/// A moto server on a fixed loopback port; stopped on drop.
pub(crate) struct Moto {
    child: Child,
}

impl Moto {
    /// Starts moto on `port`; the first `fail_calls` BatchImportFindings
    /// calls fail every finding with InternalException.
    pub(crate) fn start(port: u16, fail_calls: u32) -> Moto {
        let mut child = Command::new(support::python())
            .arg(support::fixture(HELPER))
            .args(["serve", &port.to_string(), &fail_calls.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("moto stdout"))
            .read_line(&mut line)
            .expect("moto prints its port");
        assert_eq!(
            line.trim(),
            port.to_string(),
            "moto did not start on {port}"
        );
        Moto { child }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (until moto is started on it).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("addr").port()
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Every finding moto holds, by `Id`.
pub(crate) fn findings(port: u16) -> std::collections::BTreeMap<String, Value> {
    let out = Command::new(support::python())
        .arg(support::fixture(HELPER))
        .args(["findings", &url(port)])
        .output()
        .expect("run moto helper");
    assert!(
        out.status.success(),
        "GetFindings failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).expect("findings JSON");
    list.into_iter()
        .map(|f| (f["Id"].as_str().expect("Id").to_owned(), f))
        .collect()
}

fn config() -> SecurityHubConfig {
    SecurityHubConfig {
        enabled: true,
        region: Some(REGION.to_owned()),
        retry_base_ms: 20,
        retry_max_ms: 300,
        shutdown_timeout_ms: 10_000,
        ..SecurityHubConfig::default()
    }
}

/// An AWS configuration loader pointing at moto with static test
/// credentials: no process environment involved, so tests run in parallel.
/// One attempt per call: the sink's own retries are what is tested, and the
/// SDK's backoff between attempts would only slow the outage tests down.
fn loader(port: u16) -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .credentials_provider(Credentials::new(
            "AKIDTESTSECURITYHUB",
            "secret",
            None,
            None,
            "test",
        ))
        .endpoint_url(url(port))
}

/// Starts the sink on the outbox in `state`, against moto at `port`
/// (whether moto runs or not: the sink starts either way).
async fn start(state: &Path, port: u16, status: &Status) -> (SecurityHubHandle, JoinHandle<()>) {
    SecurityHubSink::start_with_loader(&config(), state, status.clone(), loader(port))
        .await
        .expect("the sink starts, with or without Security Hub")
}

/// Waits until `check` holds, or fails after `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An alarm event as local detection makes it, for `thing`'s violation `n`.
fn alarm(thing: &str, n: u64, start_ms: u64) -> AlarmEvent {
    AlarmEvent {
        violation_id: format!("violation-{n}"),
        state: AlarmState::Alarm,
        thing: thing.to_owned(),
        profile: "PortAllowlist".to_owned(),
        behavior: "OnlySsh".to_owned(),
        metric: "aws:listening-tcp-ports".to_owned(),
        value: json!({"ports": [22, 4000 + n]}),
        offending: Some(json!({"ports": [4000 + n]})),
        threshold: None,
        criteria: json!({"comparisonOperator": "in-port-set", "value": {"ports": [22]}}),
        violation_start_ms: start_ms,
        timestamp_ms: start_ms,
        suppress_alerts: false,
        processes: Default::default(),
    }
}

fn ended(alarm: &AlarmEvent, state: AlarmState, at_ms: u64) -> AlarmEvent {
    AlarmEvent {
        state,
        offending: None,
        value: json!({"ports": [22]}),
        timestamp_ms: at_ms,
        ..alarm.clone()
    }
}

fn id(event: &AlarmEvent) -> String {
    Finding::from_alarm(event).id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_listener_alarm_is_an_active_finding_and_its_clear_archives_it() {
    let port = free_port();
    let _moto = Moto::start(port, 0);
    let state = tempfile::tempdir().expect("tempdir");
    let status = Status::new();
    let (handle, task) = start(state.path(), port, &status).await;

    // Local detection on the real /proc: a listener the profile does not allow.
    let profile = json!({"securityProfileName": "PortAllowlist", "behaviors": [{
        "name": "OnlySsh", "metric": "aws:listening-tcp-ports",
        "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]},
                     "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}}]});
    let detect_dir = tempfile::tempdir().expect("tempdir");
    let detection = DetectionConfig {
        profiles: vec![profile],
        ..DetectionConfig::default()
    };
    let mut detector = Detector::new(
        &detection,
        detect_dir.path(),
        &Status::new(),
        std::time::Duration::from_secs(300),
    )
    .expect("profile loads");
    let collector = Collector::new(&CollectConfig::default());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let listening = listener.local_addr().expect("addr").port();
    // Other tests open and close listeners meanwhile: keep only ours and 22.
    let sample = |collector: &Collector| {
        let mut s = collector.sample("edge-hub-01", now_ms(), None).sample;
        s.listening_tcp_ports
            .retain(|p| p.port == 22 || p.port == listening);
        s
    };
    let raised = detector.evaluate_device(&sample(&collector), now_ms(), true);
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].state, AlarmState::Alarm);
    handle.submit(&raised[0]).await.expect("alarm stored");

    let finding_id = id(&raised[0]);
    eventually(Duration::from_secs(20), "the ACTIVE finding", || {
        findings(port).contains_key(&finding_id)
    })
    .await;
    let active = findings(port).remove(&finding_id).expect("finding");
    assert_eq!(active["RecordState"], "ACTIVE");
    assert_eq!(active["SchemaVersion"], "2018-10-08");
    assert_eq!(active["AwsAccountId"], ACCOUNT);
    assert_eq!(
        active["ProductArn"],
        format!("arn:aws:securityhub:{REGION}:{ACCOUNT}:product/{ACCOUNT}/default")
    );
    let title = active["Title"].as_str().expect("Title");
    assert!(
        title.contains("edge-hub-01") && title.contains("OnlySsh"),
        "{title}"
    );
    assert_eq!(active["Severity"]["Label"], "HIGH");
    assert_eq!(active["Types"], json!(["Unusual Behaviors/Network Flow"]));
    assert_eq!(active["GeneratorId"], "defender-edge/PortAllowlist/OnlySsh");
    let resource = &active["Resources"][0];
    assert_eq!(resource["Type"], "Other");
    assert_eq!(
        resource["Id"],
        format!("arn:aws:iot:{REGION}:{ACCOUNT}:thing/edge-hub-01")
    );
    assert_eq!(
        resource["Details"]["Other"]["OffendingValues"],
        json!({"ports": [listening]}).to_string()
    );
    assert_eq!(
        active["ProductFields"]["defender-edge/ViolationId"],
        raised[0].violation_id
    );

    drop(listener);
    let cleared = detector.evaluate_device(&sample(&collector), now_ms() + 1, true);
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!(cleared[0].state, AlarmState::Clear);
    handle.submit(&cleared[0]).await.expect("clear stored");
    eventually(Duration::from_secs(20), "the finding archived", || {
        findings(port)[&finding_id]["RecordState"] == "ARCHIVED"
    })
    .await;
    let all = findings(port);
    assert_eq!(
        all.len(),
        1,
        "the clear updated the alarm's finding: {all:?}"
    );
    let archived = &all[&finding_id];
    assert_eq!(archived["CreatedAt"], active["CreatedAt"], "CreatedAt kept");
    assert!(archived["UpdatedAt"].as_str() > active["UpdatedAt"].as_str());
    assert_eq!(archived["ProductFields"]["defender-edge/State"], "clear");

    handle.shutdown().await;
    task.await.expect("worker ends");
    assert_eq!(status.number("securityhub.findings_imported"), 2);
    assert_eq!(status.number("securityhub.outbox.depth"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_and_a_restart_lose_no_finding() {
    // No network at boot: nothing listens on the port yet.
    let port = free_port();
    let state = tempfile::tempdir().expect("tempdir");
    let t0 = now_ms();
    let first = alarm("edge-hub-02", 1, t0);
    let second = alarm("edge-hub-02", 2, t0 + 10);

    let (handle, task) = start(state.path(), port, &Status::new()).await;
    handle.submit(&first).await.expect("stored offline");
    handle.submit(&second).await.expect("stored offline");
    // Let the worker fail a few rounds, then kill it mid-retry: nothing but
    // the outbox on disk survives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let _ = task.await;
    drop(handle);

    let status = Status::new();
    let (handle, task) = start(state.path(), port, &status).await;
    assert_eq!(
        status.number("securityhub.outbox.depth"),
        2,
        "both wait on disk"
    );
    handle
        .submit(&ended(&first, AlarmState::Clear, t0 + 1_000))
        .await
        .expect("clear stored offline");
    eventually(Duration::from_secs(15), "STS failing while offline", || {
        status.number("securityhub.sts_errors") > 0
    })
    .await;
    assert!(
        matches!(status.get("securityhub.state"), Some(StatusValue::Text(s)) if s.starts_with("retrying: STS")),
        "{:?}",
        status.get("securityhub.state")
    );

    // Security Hub comes up late: everything arrives, in order.
    let moto = Moto::start(port, 0);
    eventually(Duration::from_secs(30), "import after the outage", || {
        status.number("securityhub.outbox.depth") == 0
    })
    .await;
    let all = findings(port);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[&id(&first)]["RecordState"], "ARCHIVED");
    assert_eq!(
        all[&id(&first)]["CreatedAt"],
        Value::from(defender_edge::publish::securityhub::asff::timestamp(t0))
    );
    assert_eq!(all[&id(&second)]["RecordState"], "ACTIVE");

    // Down again (moto forgets everything when stopped): the second's
    // invalidation and a new alarm wait, then arrive when it is back.
    drop(moto);
    let third = alarm("edge-hub-02", 3, t0 + 2_000);
    handle
        .submit(&ended(&second, AlarmState::Invalidated, t0 + 2_000))
        .await
        .expect("stored");
    handle.submit(&third).await.expect("stored");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status.number("securityhub.outbox.depth"), 2);
    let _moto = Moto::start(port, 0);
    eventually(
        Duration::from_secs(30),
        "import after the second outage",
        || status.number("securityhub.outbox.depth") == 0,
    )
    .await;
    let all = findings(port);
    assert_eq!(all[&id(&second)]["RecordState"], "ARCHIVED");
    assert_eq!(
        all[&id(&second)]["ProductFields"]["defender-edge/State"],
        "invalidated"
    );
    assert_eq!(all[&id(&third)]["RecordState"], "ACTIVE");
    handle.shutdown().await;
    task.await.expect("worker ends");
    assert_eq!(status.number("securityhub.findings_imported"), 5);
    assert_eq!(status.number("securityhub.findings_refused"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_go_in_calls_of_at_most_one_hundred() {
    let port = free_port();
    let state = tempfile::tempdir().expect("tempdir");
    let t0 = now_ms();
    let alarms: Vec<AlarmEvent> = (0..150).map(|n| alarm("edge-hub-03", n, t0 + n)).collect();
    {
        // Stored while Security Hub is unreachable.
        let (handle, task) = start(state.path(), port, &Status::new()).await;
        for a in &alarms {
            handle.submit(a).await.expect("stored");
        }
        task.abort();
        let _ = task.await;
    }
    let _moto = Moto::start(port, 0);
    let status = Status::new();
    let (handle, task) = start(state.path(), port, &status).await;
    eventually(Duration::from_secs(30), "150 findings imported", || {
        status.number("securityhub.outbox.depth") == 0
    })
    .await;
    handle.shutdown().await;
    task.await.expect("worker ends");
    assert_eq!(findings(port).len(), 150);
    assert_eq!(status.number("securityhub.calls"), 2, "100 + 50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_findings_are_retried_and_refused_ones_counted_and_dropped() {
    let port = free_port();
    // The first two calls fail every finding with InternalException.
    let _moto = Moto::start(port, 2);
    let state = tempfile::tempdir().expect("tempdir");
    let status = Status::new();
    let (handle, task) = start(state.path(), port, &status).await;
    let t0 = now_ms();
    let good = alarm("edge-hub-04", 1, t0);
    // No thing name, so no resource: Security Hub refuses it for good.
    let nameless = alarm("", 2, t0 + 1);
    let later = alarm("edge-hub-04", 3, t0 + 2);
    for a in [&good, &nameless, &later] {
        handle.submit(a).await.expect("stored");
    }
    eventually(Duration::from_secs(30), "the outbox drained", || {
        status.number("securityhub.outbox.depth") == 0
    })
    .await;
    let all = findings(port);
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        [id(&good), id(&later)],
        "the refused finding is not there"
    );
    assert_eq!(status.number("securityhub.findings_refused"), 1);
    assert!(
        status.number("securityhub.findings_failed") >= 2,
        "failed for now, then retried"
    );
    assert!(status.number("securityhub.retries") >= 2);
    // Dropped, not retried forever: no further call once the outbox is empty.
    let calls = status.number("securityhub.calls");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status.number("securityhub.calls"), calls);
    handle.shutdown().await;
    task.await.expect("worker ends");
}
