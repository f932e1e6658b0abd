//! The Greengrass IPC client against the strict test nucleus
//! (tests/nucleus/nucleus.py), which is itself checked against the official
//! Python client here. Every test ends by asserting that the nucleus recorded
//! no protocol violation.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use defender_edge::greengrass::ipc::frame::{self, Frame, Header};
use defender_edge::greengrass::ipc::{
    ComponentState, ConfigurationUpdates, IpcClient, IpcError, IpcOptions, Qos, max_publish_payload,
};
use defender_edge::publish::{Transport, TransportError};
use defender_edge::status::Status;
use serde_json::{Value, json};

use crate::support;

pub(crate) const SVCUID: &str = "ABCDEFGHIJKLMNOP";

/// A running test nucleus in its own temporary directory. Shared with the
/// `run` tests.
pub(crate) struct TestNucleus {
    child: Child,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
}

impl TestNucleus {
    fn start(lite: bool) -> TestNucleus {
        TestNucleus::start_with(
            lite,
            json!({"publish": {"ipc": {"requestTimeoutSeconds": "10"}}, "sampleIntervalSeconds": 300}),
        )
    }

    /// Starts a nucleus whose GetConfiguration serves `config`.
    pub(crate) fn start_with(lite: bool, config_document: Value) -> TestNucleus {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("ipc.socket");
        let config = dir.path().join("config.json");
        std::fs::write(&config, config_document.to_string()).expect("config");
        let mut cmd = Command::new(support::python());
        cmd.arg(support::repo().join("tests/nucleus/nucleus.py"))
            .arg("--socket")
            .arg(&socket)
            .args(["--svcuid", SVCUID])
            .arg("--config")
            .arg(&config)
            .arg("--record")
            .arg(dir.path().join("record.jsonl"))
            .arg("--control")
            .arg(dir.path().join("control.socket"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if lite {
            cmd.arg("--lite");
        }
        let mut child = cmd.spawn().expect("start the test nucleus");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("nucleus output");
        assert!(
            line.starts_with("READY"),
            "the test nucleus did not start: {line:?}"
        );
        TestNucleus { child, dir, socket }
    }

    pub(crate) fn control(&self, cmd: Value) -> Value {
        let mut s = UnixStream::connect(self.dir.path().join("control.socket")).expect("control");
        s.write_all(format!("{cmd}\n").as_bytes()).expect("send");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("reply");
        let reply: Value = serde_json::from_str(&line).expect("JSON reply");
        assert_eq!(reply["ok"], true, "control {cmd} failed: {reply}");
        reply
    }

    pub(crate) fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("record.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("record line"))
            .collect()
    }

    pub(crate) fn events(&self, name: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["event"] == name)
            .collect()
    }

    pub(crate) fn requests(&self, operation: &str) -> Vec<Value> {
        self.events("request")
            .into_iter()
            .filter(|r| r["operation"] == operation)
            .collect()
    }

    /// Polls the record until `check` holds; fails after 10 s.
    async fn wait_for(&self, what: &str, check: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if check(&self.records()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn assert_no_violations(&self) {
        let violations = self.events("violation");
        assert!(
            violations.is_empty(),
            "the test nucleus recorded protocol violations: {violations:#?}"
        );
    }

    async fn client(&self, options: IpcOptions) -> IpcClient {
        IpcClient::connect(&self.socket, SVCUID, options)
            .await
            .expect("connect to the test nucleus")
    }
}

impl Drop for TestNucleus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fast_options() -> IpcOptions {
    IpcOptions {
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..IpcOptions::default()
    }
}

async fn recv<T>(rx: &mut tokio::sync::mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("the subscription is still open")
}

/// The next set of changed key paths, within 5 s.
async fn changes(updates: &mut ConfigurationUpdates) -> Vec<Vec<String>> {
    tokio::time::timeout(Duration::from_secs(5), updates.recv())
        .await
        .expect("changes within 5 s")
        .expect("the subscription is still open")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------- the nucleus itself

/// The official client (awsiotsdk over awscrt) succeeds with every
/// operation we use and the nucleus flags nothing.
fn conformance(lite: bool) {
    let nucleus = TestNucleus::start(lite);
    let mut cmd = Command::new(support::python());
    cmd.arg(support::repo().join("tests/nucleus/conformance.py"))
        .arg(&nucleus.socket)
        .arg(SVCUID)
        .arg(nucleus.dir.path().join("control.socket"));
    if lite {
        cmd.arg("lite");
    }
    let out = cmd.output().expect("run conformance.py");
    assert!(
        out.status.success(),
        "the official Python client failed against the test nucleus (lite: {lite}):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for op in [
        "PublishToIoTCore",
        "SubscribeToIoTCore",
        "GetConfiguration",
        "SubscribeToConfigurationUpdate",
        "UpdateState",
        "PublishToTopic",
    ] {
        assert!(!nucleus.requests(op).is_empty(), "{op} was not exercised");
    }
    nucleus.assert_no_violations();
}

#[test]
fn official_python_client_conforms_java() {
    conformance(false);
}

#[test]
fn official_python_client_conforms_lite() {
    conformance(true);
}

/// Raw frames that break one rule each: the nucleus must flag every one, or
/// its silence about our client would prove nothing.
#[test]
fn nucleus_flags_each_protocol_violation() {
    fn rpc(kind: i32, flags: i32, stream: i32) -> Vec<Header> {
        vec![
            Header::int32(":message-type", kind),
            Header::int32(":message-flags", flags),
            Header::int32(":stream-id", stream),
        ]
    }
    fn connect(token: &str) -> Frame {
        let mut headers = rpc(4, 0, 0);
        headers.push(Header::string(":version", "0.1.0"));
        Frame {
            headers,
            payload: json!({ "authToken": token }).to_string().into_bytes(),
        }
    }
    fn request(stream: i32, op: &str, body: Value) -> Frame {
        let mut headers = rpc(0, 0, stream);
        headers.push(Header::string("operation", &format!("aws.greengrass#{op}")));
        headers.push(Header::string(
            "service-model-type",
            &format!("aws.greengrass#{op}Request"),
        ));
        headers.push(Header::string(":content-type", "application/json"));
        Frame {
            headers,
            payload: body.to_string().into_bytes(),
        }
    }
    let publish = |stream, qos: Value| {
        request(
            stream,
            "PublishToIoTCore",
            json!({"topicName": "t", "qos": qos, "payload": ""}),
        )
    };
    let close = |stream| Frame {
        headers: rpc(0, 2, stream),
        payload: Vec::new(),
    };
    let mut bad_crc = connect(SVCUID).encode().expect("encode");
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let no_stream_id = Frame {
        headers: vec![
            Header::int32(":message-type", 4),
            Header::int32(":message-flags", 0),
        ],
        payload: Vec::new(),
    };
    let mut wrong_version = connect(SVCUID);
    wrong_version.headers[3] = Header::string(":version", "0.2.0");
    let enc = |frames: Vec<Frame>| -> Vec<u8> {
        frames
            .into_iter()
            .flat_map(|f| f.encode().expect("encode"))
            .collect()
    };
    let ok_connect = || connect(SVCUID);
    // (case, lite mode, bytes, expected words in the violation)
    let cases: Vec<(&str, bool, Vec<u8>, &str)> = vec![
        ("message CRC", false, bad_crc, "message CRC"),
        ("missing :stream-id", false, enc(vec![no_stream_id]), "i32"),
        (
            "wrong :version",
            false,
            enc(vec![wrong_version]),
            ":version",
        ),
        (
            "request before Connect",
            false,
            enc(vec![publish(1, json!("1"))]),
            "not Connect",
        ),
        (
            "second Connect",
            false,
            enc(vec![ok_connect(), ok_connect()]),
            "second Connect",
        ),
        (
            "skipped stream id",
            false,
            enc(vec![ok_connect(), publish(2, json!("1"))]),
            "expected 1",
        ),
        (
            "reused stream id",
            true,
            enc(vec![
                ok_connect(),
                publish(1, json!("1")),
                close(1),
                publish(1, json!("1")),
            ]),
            "expected 2",
        ),
        (
            "qos as a number on Java",
            false,
            enc(vec![ok_connect(), publish(1, json!(1))]),
            "qos",
        ),
        (
            "payload not base64",
            false,
            enc(vec![
                ok_connect(),
                request(
                    1,
                    "PublishToIoTCore",
                    json!({"topicName": "t", "qos": "1", "payload": "%%%"}),
                ),
            ]),
            "base64",
        ),
        (
            "unknown field",
            false,
            enc(vec![
                ok_connect(),
                request(1, "UpdateState", json!({"state": "RUNNING", "extra": 1})),
            ]),
            "unknown fields",
        ),
        (
            "TERMINATE on a stream the Java nucleus ended",
            false,
            enc(vec![ok_connect(), publish(1, json!("1")), close(1)]),
            "already ended",
        ),
        (
            "frame over lite's 10,000 bytes",
            true,
            enc(vec![
                ok_connect(),
                request(
                    1,
                    "PublishToIoTCore",
                    json!({"topicName": "t", "qos": "1", "payload": b64(&[0; 8000])}),
                ),
            ]),
            "limit",
        ),
    ];
    for (case, lite, bytes, expected) in cases {
        let nucleus = TestNucleus::start(lite);
        let mut s = UnixStream::connect(&nucleus.socket).expect("connect");
        s.write_all(&bytes).expect("send");
        // The nucleus closes the connection after a protocol violation, and
        // after our half-close once it answered an invalid request.
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        let violations = nucleus.events("violation");
        assert_eq!(violations.len(), 1, "{case}: {violations:#?}");
        let reason = violations[0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(expected), "{case}: {reason}");
        if !lite {
            // Java answers a broken frame with a ProtocolError before closing,
            // and an invalid request with InvalidArgumentsError.
            let frames = decode_all(&sink);
            let last = frames.last().expect("a frame");
            let expected_type = if expected_invalid_arguments(case) {
                1
            } else {
                6
            };
            assert_eq!(last.int32(":message-type"), Some(expected_type), "{case}");
            if expected_type == 1 {
                assert_eq!(
                    last.string("service-model-type"),
                    Some("aws.greengrass#InvalidArgumentsError"),
                    "{case}"
                );
            }
        }
    }
}

/// The cases the real nucleus answers as a bad request, not a broken frame.
fn expected_invalid_arguments(case: &str) -> bool {
    [
        "qos as a number on Java",
        "payload not base64",
        "unknown field",
    ]
    .contains(&case)
}

fn decode_all(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        frames.push(frame::decode(&bytes[..len], usize::MAX).expect("valid frame"));
        bytes = &bytes[len..];
    }
    frames
}

// ---------------------------------------------------------------- every operation

async fn every_operation(lite: bool) {
    let nucleus = TestNucleus::start(lite);
    let client = nucleus.client(fast_options()).await;

    let report = br#"{"header":{"report_id":1,"version":"1.0"}}"#;
    client
        .publish_to_iot_core(
            "$aws/things/edge-01/defender/metrics/json",
            report,
            Qos::AtLeastOnce,
        )
        .await
        .expect("publish");
    client
        .publish_to_iot_core("telemetry/empty", b"", Qos::AtMostOnce)
        .await
        .expect("publish an empty payload at QoS 0");
    let publishes = nucleus.requests("PublishToIoTCore");
    assert_eq!(
        publishes[0]["body"],
        json!({"topicName": "$aws/things/edge-01/defender/metrics/json", "qos": "1", "payload": b64(report)})
    );
    assert_eq!(
        publishes[1]["body"],
        json!({"topicName": "telemetry/empty", "qos": "0", "payload": ""})
    );

    let mut accepted = client
        .subscribe_to_iot_core("$aws/things/edge-01/defender/metrics/json/+")
        .await
        .expect("subscribe");
    let reply = nucleus.control(json!({"cmd": "deliver", "topic": "$aws/things/edge-01/defender/metrics/json/accepted", "payload": "{\"reportId\":1}"}));
    assert_eq!(reply["subscribers"], 1);
    let message = recv(&mut accepted).await;
    assert_eq!(
        message.topic,
        "$aws/things/edge-01/defender/metrics/json/accepted"
    );
    assert_eq!(message.payload, br#"{"reportId":1}"#);

    assert_eq!(
        client.get_configuration(&[]).await.expect("whole config"),
        json!({"publish": {"ipc": {"requestTimeoutSeconds": "10"}}, "sampleIntervalSeconds": 300})
    );
    assert_eq!(
        client
            .get_configuration(&["sampleIntervalSeconds"])
            .await
            .expect("leaf"),
        json!({"sampleIntervalSeconds": 300})
    );
    match client.get_configuration(&["absent"]).await {
        Err(IpcError::Service {
            error_type,
            message,
            socket,
            ..
        }) => {
            assert_eq!(error_type, "ResourceNotFoundError");
            assert!(message.contains("absent"), "{message}");
            assert_eq!(socket, nucleus.socket);
        }
        other => panic!("a missing key must be ResourceNotFoundError, got {other:?}"),
    }

    let mut updates = client
        .subscribe_to_configuration_update(&["publish"])
        .await
        .expect("watch config");
    nucleus.control(json!({"cmd": "config_update", "key_path": ["publish", "ipc"], "value": {"requestTimeoutSeconds": "20"}}));
    assert_eq!(changes(&mut updates).await, vec![vec!["publish", "ipc"]]);
    assert_eq!(
        client
            .get_configuration(&["publish"])
            .await
            .expect("read back"),
        json!({"ipc": {"requestTimeoutSeconds": "20"}})
    );

    client
        .update_state(ComponentState::Running)
        .await
        .expect("update state");
    client
        .publish_to_topic("defender/alarms", b"\x00alarm\xff")
        .await
        .expect("local publish");
    assert_eq!(
        nucleus.requests("PublishToTopic")[0]["body"],
        json!({"topic": "defender/alarms", "publishMessage": {"binaryMessage": {"message": b64(b"\x00alarm\xff")}}})
    );
    assert_eq!(
        nucleus.requests("UpdateState")[0]["body"],
        json!({"state": "RUNNING"})
    );

    // Stream ids are 1, 2, 3... on the one connection (the nucleus would also
    // have flagged a gap).
    let streams: Vec<i64> = nucleus
        .events("request")
        .iter()
        .map(|r| r["stream"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(streams, (1..=streams.len() as i64).collect::<Vec<_>>());

    // Lite leaves unary streams open and the client must close them; on Java
    // the client must never close them (the nucleus ended them).
    nucleus
        .wait_for("client closes", |records| {
            let closes = records
                .iter()
                .filter(|r| r["event"] == "client_close")
                .count();
            // 2 publishes, 3 GetConfiguration (one failed), 1 more, UpdateState, PublishToTopic.
            if lite { closes == 8 } else { closes == 0 }
        })
        .await;

    // Dropping a receiver ends its subscription with a close.
    drop(accepted);
    nucleus.control(json!({"cmd": "deliver", "topic": "$aws/things/edge-01/defender/metrics/json/accepted", "payload": "late"}));
    nucleus
        .wait_for("the dropped subscription closed", |records| {
            records
                .iter()
                .any(|r| r["event"] == "client_close" && r["operation"] == "SubscribeToIoTCore")
        })
        .await;
    nucleus.assert_no_violations();
}

#[tokio::test]
async fn every_operation_java() {
    every_operation(false).await;
}

#[tokio::test]
async fn every_operation_lite() {
    every_operation(true).await;
}

#[tokio::test]
async fn transport_trait_publishes_and_subscribes() {
    async fn via_trait(t: &impl Transport) -> Result<(), TransportError> {
        let mut rx = t.subscribe("a/b").await?;
        t.publish("a/b", b"hello".to_vec()).await?;
        rx.recv().await.map(drop).ok_or(TransportError::Timeout {
            peer: "test".into(),
            seconds: 0,
        })
    }
    let nucleus = TestNucleus::start(false);
    let client = nucleus.client(fast_options()).await;
    let sub = {
        let client = client.clone();
        tokio::spawn(async move { via_trait(&client).await })
    };
    nucleus
        .wait_for("the publish", |r| {
            r.iter()
                .any(|e| e["event"] == "request" && e["operation"] == "PublishToIoTCore")
        })
        .await;
    nucleus.control(json!({"cmd": "deliver", "topic": "a/b", "payload": "x"}));
    sub.await.expect("task").expect("trait round trip");
    assert_eq!(
        nucleus.requests("SubscribeToIoTCore")[0]["body"],
        json!({"topicName": "a/b", "qos": "1"})
    );
    nucleus.assert_no_violations();
}

#[tokio::test]
async fn service_errors_carry_type_and_message_on_both_nuclei() {
    for lite in [false, true] {
        let nucleus = TestNucleus::start(lite);
        let client = nucleus.client(fast_options()).await;
        nucleus.control(json!({"cmd": "fail", "operation": "PublishToIoTCore", "error": "ServiceError", "message": "spool full"}));
        let err = client
            .publish_to_iot_core("t", b"x", Qos::AtLeastOnce)
            .await
            .expect_err("injected failure");
        match &err {
            IpcError::Service {
                error_type,
                message,
                operation,
                ..
            } => {
                assert_eq!(error_type, "ServiceError");
                assert_eq!(message, "spool full", "lite: {lite}");
                assert_eq!(operation, "aws.greengrass#PublishToIoTCore");
            }
            other => panic!("expected a service error, got {other:?}"),
        }
        assert!(err.is_transient(), "a full spool is worth retrying");
        assert!(
            err.to_string()
                .contains(&nucleus.socket.display().to_string())
        );
        // The connection is still fine.
        client
            .publish_to_iot_core("t", b"x", Qos::AtLeastOnce)
            .await
            .expect("next publish");
        nucleus.assert_no_violations();
    }
}

#[tokio::test]
async fn lite_frame_limit_is_respected_exactly() {
    let nucleus = TestNucleus::start(true);
    let client = nucleus.client(fast_options()).await;
    let topic = "$aws/things/edge-01/defender/metrics/json";
    let largest = client.max_publish_payload(topic);
    assert_eq!(largest, max_publish_payload(topic, 10_000));
    client
        .publish_to_iot_core(topic, &vec![b'r'; largest], Qos::AtLeastOnce)
        .await
        .expect("the largest payload fits lite's 10,000-byte frames");
    let frames = nucleus.events("frame");
    assert!(frames.iter().any(|f| f["bytes"].as_u64() > Some(9_990)));
    match client
        .publish_to_iot_core(topic, &vec![b'r'; largest + 1], Qos::AtLeastOnce)
        .await
    {
        Err(IpcError::FrameTooLarge {
            frame_bytes, max, ..
        }) => {
            assert_eq!(max, 10_000);
            assert!(frame_bytes > 10_000);
        }
        other => panic!("one byte more must not be sent, got {other:?}"),
    }
    assert_eq!(nucleus.requests("PublishToIoTCore").len(), 1);
    nucleus.assert_no_violations();
}

// ---------------------------------------------------------------- failures

/// A connection dropped while a publish is in flight: the publish is sent
/// again on the new connection and succeeds; the subscription comes back on
/// the new connection and keeps feeding the same receiver.
#[tokio::test]
async fn dropped_connection_is_survived() {
    for lite in [false, true] {
        let nucleus = TestNucleus::start(lite);
        let status = Status::new();
        let client = nucleus
            .client(IpcOptions {
                status: Some(status.clone()),
                ..fast_options()
            })
            .await;
        let mut rx = client
            .subscribe_to_iot_core("replies/#")
            .await
            .expect("sub");
        nucleus.control(json!({"cmd": "drop_on", "operation": "PublishToIoTCore"}));
        client
            .publish_to_iot_core("reports", b"r1", Qos::AtLeastOnce)
            .await
            .expect("the interrupted publish is retried on the new connection");
        let publishes = nucleus.requests("PublishToIoTCore");
        assert_eq!(publishes.len(), 2, "lite: {lite}");
        assert_eq!(publishes[0]["conn"], 1);
        assert_eq!(publishes[1]["conn"], 2);
        assert_eq!(publishes[1]["body"]["payload"], b64(b"r1"));
        // Resubscribed before the retried publish went out.
        let subs = nucleus.requests("SubscribeToIoTCore");
        assert_eq!(subs.len(), 2);
        assert!(subs[1]["t"].as_f64() < publishes[1]["t"].as_f64());
        nucleus.control(json!({"cmd": "deliver", "topic": "replies/x", "payload": "after"}));
        assert_eq!(recv(&mut rx).await.payload, b"after");
        assert_eq!(status.number("ipc.connection_losses"), 1);
        assert_eq!(status.number("ipc.connects"), 2);
        assert_eq!(status.number("ipc.resubscribes"), 1);

        // A drop with no request in flight: the same.
        nucleus.control(json!({"cmd": "drop"}));
        nucleus
            .wait_for("a third connection", |r| {
                r.iter().filter(|e| e["event"] == "connect").count() == 3
            })
            .await;
        nucleus
            .wait_for("resubscription", |r| {
                r.iter()
                    .filter(|e| e["event"] == "response" && e["operation"] == "SubscribeToIoTCore")
                    .count()
                    == 3
            })
            .await;
        nucleus.control(json!({"cmd": "deliver", "topic": "replies/y", "payload": "again"}));
        assert_eq!(recv(&mut rx).await.payload, b"again");
        nucleus.assert_no_violations();
    }
}

/// Garbage, a wrong CRC and an oversized frame from the nucleus: each drops
/// the connection with an error naming the socket, and the client reconnects
/// and carries on, subscriptions included.
#[tokio::test]
async fn broken_peer_bytes_cause_a_reconnect() {
    let nucleus = TestNucleus::start(false);
    let status = Status::new();
    let client = nucleus
        .client(IpcOptions {
            status: Some(status.clone()),
            max_incoming_frame_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(2),
            ..fast_options()
        })
        .await;
    let mut rx = client.subscribe_to_iot_core("x").await.expect("sub");
    for (n, kind) in ["garbage", "bad_crc", "oversized"].into_iter().enumerate() {
        nucleus.control(json!({"cmd": "inject", "kind": kind, "bytes": 100_000}));
        nucleus
            .wait_for(kind, |r| {
                r.iter().filter(|e| e["event"] == "disconnect").count() == n + 1
            })
            .await;
        client
            .publish_to_iot_core("t", kind.as_bytes(), Qos::AtLeastOnce)
            .await
            .unwrap_or_else(|e| panic!("publish after {kind}: {e}"));
        nucleus
            .wait_for("resubscription", |r| {
                r.iter()
                    .filter(|e| e["event"] == "response" && e["operation"] == "SubscribeToIoTCore")
                    .count()
                    == n + 2
            })
            .await;
        nucleus.control(json!({"cmd": "deliver", "topic": "x", "payload": kind}));
        assert_eq!(recv(&mut rx).await.payload, kind.as_bytes());
    }
    assert_eq!(status.number("ipc.connection_losses"), 3);

    // While the nucleus keeps refusing, callers get an error that says why
    // and names the socket.
    nucleus.control(json!({"cmd": "reject_connects", "count": 1000}));
    nucleus.control(json!({"cmd": "inject", "kind": "bad_crc"}));
    let err = client
        .publish_to_iot_core("t", b"x", Qos::AtLeastOnce)
        .await
        .expect_err("no connection can be made");
    let text = err.to_string();
    assert!(matches!(err, IpcError::Timeout { .. }), "{err:?}");
    assert!(
        text.contains(&nucleus.socket.display().to_string()),
        "{text}"
    );
    assert!(
        text.contains("CRC mismatch") || text.contains("rejected the connection"),
        "{text}"
    );
    nucleus.assert_no_violations();
}

#[tokio::test]
async fn rejected_connect_is_retried_then_reported() {
    for lite in [false, true] {
        let nucleus = TestNucleus::start(lite);
        // Two rejections, then acceptance: connect retries and succeeds.
        nucleus.control(json!({"cmd": "reject_connects", "count": 2}));
        let client = nucleus.client(fast_options()).await;
        client
            .update_state(ComponentState::Running)
            .await
            .expect("works after retries");
        assert_eq!(nucleus.events("connect_rejected").len(), 2);

        // A wrong token never succeeds: a clear error after the attempts.
        let err = IpcClient::connect(
            &nucleus.socket,
            "WRONGWRONGWRONG0",
            IpcOptions {
                connect_attempts: 3,
                ..fast_options()
            },
        )
        .await
        .expect_err("a wrong token must fail");
        assert!(
            matches!(err, IpcError::ConnectRejected { .. }),
            "lite {lite}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&nucleus.socket.display().to_string()),
            "{text}"
        );
        assert!(text.contains("rejected"), "{text}");
        assert_eq!(nucleus.events("connect_rejected").len(), 5);
        nucleus.assert_no_violations();
    }
}

#[tokio::test]
async fn missing_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("no.socket");
    let err = IpcClient::connect(
        &path,
        SVCUID,
        IpcOptions {
            connect_attempts: 2,
            ..fast_options()
        },
    )
    .await
    .expect_err("nothing listens");
    assert!(matches!(err, IpcError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn slow_answers_time_out_without_upsetting_the_connection() {
    for lite in [false, true] {
        let nucleus = TestNucleus::start(lite);
        let client = nucleus
            .client(IpcOptions {
                request_timeout: Duration::from_millis(300),
                ..fast_options()
            })
            .await;
        nucleus.control(json!({"cmd": "delay", "operation": "UpdateState", "seconds": 1.0}));
        let err = client
            .update_state(ComponentState::Running)
            .await
            .expect_err("too slow");
        assert!(matches!(err, IpcError::Timeout { .. }), "{err:?}");
        assert!(err.is_transient());
        // The late answer arrives on an abandoned stream; the client closes
        // it on lite and ignores it on Java, and keeps working.
        nucleus
            .wait_for("the late answer", |r| {
                r.iter()
                    .any(|e| e["event"] == "response" && e["operation"] == "UpdateState")
            })
            .await;
        client
            .update_state(ComponentState::Errored)
            .await
            .expect("next call");
        if lite {
            nucleus
                .wait_for("both streams closed", |r| {
                    r.iter().filter(|e| e["event"] == "client_close").count() == 2
                })
                .await;
        }
        assert_eq!(nucleus.events("connect").len(), 1);
        nucleus.assert_no_violations();
    }
}

/// A subscription the nucleus ends is requested again on the same
/// connection and keeps feeding the same receiver.
#[tokio::test]
async fn subscription_ended_by_the_nucleus_is_restored() {
    for lite in [false, true] {
        let nucleus = TestNucleus::start(lite);
        let client = nucleus.client(fast_options()).await;
        let mut config = client
            .subscribe_to_configuration_update(&[])
            .await
            .expect("watch");
        assert_eq!(
            nucleus.control(json!({"cmd": "end_subscriptions"}))["ended"],
            1
        );
        nucleus
            .wait_for("a second subscription answered", |r| {
                r.iter()
                    .filter(|e| {
                        e["event"] == "response"
                            && e["operation"] == "SubscribeToConfigurationUpdate"
                    })
                    .count()
                    == 2
            })
            .await;
        nucleus.control(json!({"cmd": "config_update", "key_path": ["a"], "value": 1}));
        assert_eq!(changes(&mut config).await, vec![vec!["a"]]);
        assert_eq!(nucleus.events("connect").len(), 1);
        nucleus.assert_no_violations();
    }
}

/// A deployment that changes 500 keys: the nucleus sends 500 update events
/// at once and nobody reads them yet (the component is busy reading the new
/// configuration). The answer to GetConfiguration comes through the same
/// reader behind them, and it is over 1 MiB (large inline profiles): it
/// arrives at once, and the 500 events wait coalesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_configuration_updates_never_holds_back_a_large_answer() {
    let profile = "p".repeat(1_200_000);
    let nucleus = TestNucleus::start_with(
        false,
        json!({"detection": {"profile": profile}, "sampleIntervalSeconds": 300}),
    );
    let client = nucleus.client(fast_options()).await;
    let mut updates = client
        .subscribe_to_configuration_update(&[])
        .await
        .expect("watch config");
    let burst =
        nucleus.control(json!({"cmd": "config_burst", "key_path": ["detection"], "count": 500}));
    assert_eq!(burst["events"], 500);

    let started = Instant::now();
    let document = client
        .get_configuration(&[])
        .await
        .expect("the answer behind 500 unread events");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        document["detection"]["profile"].as_str().map(str::len),
        Some(1_200_000)
    );

    // 500 distinct keys are more than the client lists: the whole
    // configuration counts as changed, once.
    let changed = changes(&mut updates).await;
    assert_eq!(changed, vec![Vec::<String>::new()]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), updates.recv())
            .await
            .is_err(),
        "nothing is left after the coalesced set"
    );
    nucleus.control(json!({"cmd": "config_burst", "key_path": ["detection"], "count": 3}));
    let mut changed = Vec::new();
    while changed.len() < 3 {
        changed.extend(changes(&mut updates).await);
    }
    assert_eq!(
        changed,
        (0..3)
            .map(|n| vec!["detection".to_owned(), format!("k{n}")])
            .collect::<Vec<_>>(),
        "a few keys are listed one by one"
    );
    nucleus.assert_no_violations();
}

#[tokio::test]
async fn pings_are_answered() {
    let nucleus = TestNucleus::start(false);
    let client = nucleus.client(fast_options()).await;
    nucleus.control(json!({"cmd": "ping", "payload": "are you there"}));
    nucleus
        .wait_for("a PingResponse", |r| {
            r.iter()
                .any(|e| e["event"] == "ping_response" && e["payload"] == "are you there")
        })
        .await;
    client
        .update_state(ComponentState::Running)
        .await
        .expect("still connected");
    nucleus.assert_no_violations();
}

/// The Java nucleus hands out a relative socket path when the absolute one is
/// too long; the client connects with it as given and reconnects through it.
#[tokio::test]
async fn relative_socket_path_works_across_reconnects() {
    let nucleus = TestNucleus::start(false);
    let cwd = std::env::current_dir().expect("cwd");
    let relative = relative_to(&nucleus.socket, &cwd);
    assert!(relative.is_relative());
    let client = IpcClient::connect(&relative, SVCUID, fast_options())
        .await
        .expect("relative path");
    assert_eq!(client.socket_path(), relative);
    nucleus.control(json!({"cmd": "drop"}));
    nucleus
        .wait_for("a second connection", |r| {
            r.iter().filter(|e| e["event"] == "connect").count() == 2
        })
        .await;
    client
        .update_state(ComponentState::Running)
        .await
        .expect("after reconnect");
    nucleus.assert_no_violations();
}

fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let ups = base.components().count() - 1;
    let mut out = PathBuf::new();
    for _ in 0..ups {
        out.push("..");
    }
    out.join(target.strip_prefix("/").expect("absolute"))
}
