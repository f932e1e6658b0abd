//! The Firehose sink against moto's Firehose emulator (started per test),
//! with a fault-injecting HTTP proxy between the two: moto never reports
//! partial failures or throttles, so the proxy does, by failing chosen
//! records (and not forwarding them), answering 400/503 itself, dropping
//! connections, or answering with the wrong number of entries. Delivered
//! events are read back from moto's S3 bucket.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_firehose::config::{BehaviorVersion, Credentials};
use base64::Engine;
use defender_edge::publish::firehose::{FirehoseConfig, FirehoseError, FirehoseSink, events};
use defender_edge::sample::{
    Alert, CustomMetricValue, EstablishedConnection, ListeningPort, NetworkStats, Sample, Severity,
};
use defender_edge::status::{Status, Value as StatusValue};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support;

const HELPER: &str = "firehose/moto_firehose.py";
const REGION: &str = "us-east-1";

// ---------------------------------------------------------------- moto --

/// A moto server on a free loopback port; stopped on drop.
pub(crate) struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    pub(crate) fn start() -> Moto {
        let mut child = Command::new(support::python())
            .arg(support::fixture(HELPER))
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let stdout = child.stdout.take().expect("moto stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("moto prints its port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("moto did not start: {line:?}"));
        Moto { child, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn helper(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(support::python())
            .arg(support::fixture(HELPER))
            .args(args)
            .output()
            .expect("run moto helper");
        assert!(
            out.status.success(),
            "moto helper {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub(crate) fn create_stream(&self, stream: &str, bucket: &str) {
        self.helper(&["create-stream", &self.url(), stream, bucket]);
    }

    fn delete_stream(&self, stream: &str) {
        self.helper(&["delete-stream", &self.url(), stream]);
    }

    /// Every line delivered to the bucket, parsed.
    pub(crate) fn delivered(&self, bucket: &str) -> Vec<Value> {
        let bytes = self.helper(&["read", &self.url(), bucket]);
        let text = String::from_utf8(bytes).expect("delivered data is UTF-8");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "delivered data ends mid-line"
        );
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a complete JSON line ({e}): {l}"))
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --------------------------------------------------------------- proxy --

/// What the proxy does to the next PutRecordBatch calls, in order.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Fails every n-th record (positions 0, n, 2n...) with
    /// ServiceUnavailableException and forwards only the others.
    FailEvery(usize),
    /// 400 ThrottlingException; nothing forwarded.
    Throttle,
    /// 503 ServiceUnavailableException; nothing forwarded.
    Unavailable,
    /// Closes the connection without answering; nothing forwarded.
    DropBeforeForward,
    /// Forwards, then closes without answering: Firehose has the records,
    /// the sink does not know, so they are sent twice.
    DropAfterForward,
    /// Forwards, then answers with one entry too few.
    ShortResponse,
}

impl Fault {
    /// Whether records forwarded under this fault are legitimately sent again.
    fn duplicates(self) -> bool {
        matches!(self, Fault::DropAfterForward | Fault::ShortResponse)
    }
}

#[derive(Debug, Default)]
struct ProxyLog {
    /// Every record moto received, in order.
    forwarded: Vec<Vec<u8>>,
    /// Records moto received under a fault that makes the sink resend them.
    resent_by_design: Vec<Vec<u8>>,
    /// PutRecordBatch calls seen, faults applied.
    calls: usize,
    faults_applied: usize,
    /// Access key ids of the requests' signatures.
    access_keys: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct ProxyState {
    faults: VecDeque<Fault>,
    log: ProxyLog,
}

/// A loopback HTTP/1.1 proxy in front of moto that injects [`Fault`]s and can
/// be taken down (connections refused) and brought back on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: u16,
    state: Arc<Mutex<ProxyState>>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let mut proxy = Proxy {
            addr,
            upstream,
            state: Arc::default(),
            accept: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn inject(&self, faults: &[Fault]) {
        self.lock().faults.extend(faults.iter().copied());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().expect("proxy state")
    }

    /// Stops listening: connections are refused, as when the network is down.
    fn down(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    async fn up(&mut self) {
        // The aborted accept task drops its listener asynchronously; retry
        // the bind briefly until the port is free.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            match socket.bind(self.addr).and_then(|()| socket.listen(64)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let state = self.state.clone();
        let upstream = self.upstream;
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(handle(conn, upstream, state.clone()));
            }
        }));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// An HTTP request or response: head (start line and headers) and body.
struct Http {
    head: String,
    body: Vec<u8>,
}

impl Http {
    /// A response's status, e.g. `200 OK`.
    fn status(&self) -> String {
        let line = self.head.lines().next().unwrap_or("");
        line.split_once(' ').map_or("500", |(_, s)| s).to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one request: the SDK always sends a Content-Length.
async fn read_request(conn: &mut TcpStream) -> Option<Http> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut request = Http {
        head,
        body: Vec::new(),
    };
    let length: usize = request
        .header("content-length")
        .map(|v| v.parse().expect("numeric content-length"))
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    request.body = body;
    Some(request)
}

/// Sends `request` with `body` to moto and returns its response.
async fn forward(upstream: u16, request: &Http, body: &[u8]) -> Http {
    let mut conn = TcpStream::connect(("127.0.0.1", upstream))
        .await
        .expect("connect to moto");
    let mut head = String::new();
    for (i, line) in request.head.trim_end().lines().enumerate() {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if i > 0 && matches!(name.as_str(), "content-length" | "connection" | "host") {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "host: 127.0.0.1:{upstream}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    conn.write_all(head.as_bytes()).await.expect("forward head");
    conn.write_all(body).await.expect("forward body");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.expect("moto response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("moto response head")
        + 4;
    Http {
        head: String::from_utf8_lossy(&raw[..split]).into_owned(),
        body: raw[split..].to_vec(),
    }
}

async fn respond(conn: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let _ = conn.write_all(body).await;
    let _ = conn.shutdown().await;
}

async fn handle(mut conn: TcpStream, upstream: u16, state: Arc<Mutex<ProxyState>>) {
    let Some(request) = read_request(&mut conn).await else {
        return;
    };
    let is_put = request
        .header("x-amz-target")
        .is_some_and(|t| t.ends_with("PutRecordBatch"));
    if let Some(key) = request.header("authorization").and_then(|a| {
        let rest = a.split("Credential=").nth(1)?;
        Some(rest.split('/').next()?.to_owned())
    }) {
        state.lock().expect("state").log.access_keys.insert(key);
    }
    if !is_put {
        let response = forward(upstream, &request, &request.body).await;
        let status = response.status();
        respond(&mut conn, &status, &response.body).await;
        return;
    }

    let mut call: Value = serde_json::from_slice(&request.body).expect("PutRecordBatch JSON");
    let b64 = base64::engine::general_purpose::STANDARD;
    let records: Vec<Vec<u8>> = call["Records"]
        .as_array()
        .expect("Records")
        .iter()
        .map(|r| {
            b64.decode(r["Data"].as_str().expect("Data"))
                .expect("base64")
        })
        .collect();
    let fault = {
        let mut s = state.lock().expect("state");
        s.log.calls += 1;
        let fault = s.faults.pop_front();
        s.log.faults_applied += usize::from(fault.is_some());
        fault
    };
    match fault {
        Some(Fault::Throttle) => {
            let body = br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
            respond(&mut conn, "400 Bad Request", body).await;
        }
        Some(Fault::Unavailable) => {
            let body = br#"{"__type":"ServiceUnavailableException","message":"Slow down."}"#;
            respond(&mut conn, "503 Service Unavailable", body).await;
        }
        Some(Fault::DropBeforeForward) => drop(conn),
        Some(Fault::FailEvery(n)) => {
            let keep: Vec<usize> = (0..records.len()).filter(|i| i % n != 0).collect();
            let mut answers = VecDeque::new();
            if !keep.is_empty() {
                let all = call["Records"].as_array().expect("Records").clone();
                call["Records"] = Value::Array(keep.iter().map(|&i| all[i].clone()).collect());
                let body = serde_json::to_vec(&call).expect("JSON");
                let response = forward(upstream, &request, &body).await;
                let parsed: Value = serde_json::from_slice(&response.body).expect("moto JSON");
                answers.extend(
                    parsed["RequestResponses"]
                        .as_array()
                        .expect("entries")
                        .clone(),
                );
                let mut s = state.lock().expect("state");
                s.log
                    .forwarded
                    .extend(keep.iter().map(|&i| records[i].clone()));
            }
            let entries: Vec<Value> = (0..records.len())
                .map(|i| {
                    if i % n == 0 {
                        json!({"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down."})
                    } else {
                        answers.pop_front().expect("one answer per forwarded record")
                    }
                })
                .collect();
            let failed = records.len().div_ceil(n);
            let body =
                json!({"FailedPutCount": failed, "Encrypted": false, "RequestResponses": entries});
            respond(
                &mut conn,
                "200 OK",
                &serde_json::to_vec(&body).expect("JSON"),
            )
            .await;
        }
        other => {
            let response = forward(upstream, &request, &request.body).await;
            let ok = response.head.starts_with("HTTP/1.1 200")
                || response.head.starts_with("HTTP/1.0 200");
            {
                let mut s = state.lock().expect("state");
                if ok {
                    s.log.forwarded.extend(records.iter().cloned());
                    if other.is_some_and(Fault::duplicates) {
                        s.log.resent_by_design.extend(records.iter().cloned());
                    }
                }
            }
            match other {
                Some(Fault::DropAfterForward) => drop(conn),
                Some(Fault::ShortResponse) => {
                    let mut parsed: Value =
                        serde_json::from_slice(&response.body).expect("moto JSON");
                    parsed["RequestResponses"]
                        .as_array_mut()
                        .expect("entries")
                        .pop();
                    respond(
                        &mut conn,
                        "200 OK",
                        &serde_json::to_vec(&parsed).expect("JSON"),
                    )
                    .await;
                }
                _ => {
                    let status = response.status();
                    respond(&mut conn, &status, &response.body).await;
                }
            }
        }
    }
}

// ------------------------------------------------------------- samples --

fn sample(thing: &str, n: u64) -> Sample {
    let port = |port: u16| ListeningPort {
        port,
        interface: None,
    };
    let extra = (n % 5) as u16;
    Sample {
        thing: thing.to_owned(),
        timestamp_ms: 1_767_225_600_000 + n * 60_000,
        listening_tcp_ports: (0..3 + extra).map(|i| port(8000 + i)).collect(),
        listening_udp_ports: vec![port(53), port(123)],
        established_connections: (0..n % 4)
            .map(|i| EstablishedConnection {
                remote_addr: SocketAddr::from(([203, 0, 113, i as u8 + 1], 443)),
                local_port: 40000 + i as u16,
                local_interface: None,
            })
            .collect(),
        network_stats: (n > 0).then_some(NetworkStats {
            bytes_in: 1000 * n,
            bytes_out: 2000 * n,
            packets_in: 10 * n,
            packets_out: 20 * n,
        }),
        custom_metrics: BTreeMap::from([(
            "cpu_temp".to_owned(),
            CustomMetricValue::Number(40.0 + n as f64),
        )]),
        annotations: BTreeMap::from([("site".to_owned(), "plant-7".to_owned())]),
        alerts: if n.is_multiple_of(3) {
            vec![Alert {
                source: "detect/baseline".to_owned(),
                name: "new-listening-port".to_owned(),
                severity: Severity::High,
                message: format!("port {} opened", 8000 + extra),
                attributes: BTreeMap::new(),
            }]
        } else {
            Vec::new()
        },
    }
}

/// The event ids the samples must produce, from the same pure function the
/// sink uses, with the number of metric events per sample.
fn expected_ids(samples: &[(Sample, u64)], config: &FirehoseConfig) -> BTreeSet<String> {
    let options = config.event_options();
    let mut ids = BTreeSet::new();
    for (s, id) in samples {
        let mut buf = Vec::new();
        events::write_sample(s, *id, &options, usize::MAX, &mut buf, |_, _| {});
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).expect("JSON");
            ids.insert(
                v["event"]["edge"]["event_id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            );
        }
    }
    ids
}

/// Checks a delivered line is a complete HEC event of the expected shape and
/// returns its event id.
fn check_hec(line: &Value, config: &FirehoseConfig) -> String {
    let event = &line["event"];
    let name = event["name"].as_str().expect("event.name");
    let thing = event["thing"].as_str().expect("event.thing");
    assert_eq!(line["host"], thing, "{line}");
    assert_eq!(line["source"], config.source.as_str());
    assert_eq!(line["sourcetype"], config.sourcetype.as_str());
    assert_eq!(line["fields"]["thing"], thing);
    assert_eq!(line["fields"]["metric"], name);
    let ts = event["timestamp"].as_u64().expect("event.timestamp in ms");
    let time = line["time"].as_f64().expect("time in seconds");
    assert!((time * 1000.0 - ts as f64).abs() < 1.0, "{line}");
    if name == events::ALERT_EVENT_NAME {
        assert!(event["alert"]["severity"].is_string() && event["alert"]["message"].is_string());
    } else {
        let value = event["value"].as_object().expect("event.value");
        assert_eq!(value.len(), 1, "one value key: {line}");
        let key = value.keys().next().expect("key");
        assert!(
            ["count", "ports", "cidrs", "number", "numbers", "strings"].contains(&key.as_str()),
            "{line}"
        );
    }
    assert_eq!(event["edge"]["annotations"]["site"], "plant-7");
    event["edge"]["event_id"]
        .as_str()
        .expect("edge.event_id")
        .to_owned()
}

fn config(stream: &str) -> FirehoseConfig {
    FirehoseConfig {
        enabled: true,
        delivery_stream: stream.to_owned(),
        region: Some(REGION.to_owned()),
        // Small records and a short interval so a handful of samples spans
        // several records and calls.
        record_bytes: 5_000,
        flush_interval_ms: 100,
        retry_base_ms: 20,
        retry_max_ms: 400,
        shutdown_timeout_ms: 20_000,
        ..FirehoseConfig::default()
    }
}

/// An AWS configuration loader pointing at `endpoint` with static test
/// credentials: no process environment involved, so tests run in parallel.
fn loader(endpoint: &str) -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(
            "AKIDTESTFIREHOSE",
            "secret",
            None,
            None,
            "test",
        ))
        .endpoint_url(endpoint)
}

/// Waits until `check` holds, or fails after `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count_ids(lines: &[Value], config: &FirehoseConfig) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for l in lines {
        *counts.entry(check_hec(l, config)).or_insert(0) += 1;
    }
    counts
}

/// How many times each event id occurs in `records`.
fn ids_in(records: &[Vec<u8>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in records
        .iter()
        .flat_map(|r| r.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty())
    {
        let v: Value = serde_json::from_slice(line).expect("JSON");
        let id = v["event"]["edge"]["event_id"].as_str().expect("id");
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

// --------------------------------------------------------------- tests --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_event_once_as_complete_hec_lines() {
    let moto = Moto::start();
    moto.create_stream("siem", "siem-backup");
    let proxy = Proxy::start(moto.port).await;
    let state = tempfile::tempdir().expect("tempdir");
    let config = config("siem");
    let status = Status::new();
    let (handle, task) = FirehoseSink::start_with_loader(
        &config,
        state.path(),
        status.clone(),
        loader(&proxy.url()),
    )
    .await
    .expect("sink starts");
    let samples: Vec<(Sample, u64)> = (0..30).map(|n| (sample("edge-01", n), 1000 + n)).collect();
    for (s, id) in &samples {
        handle.submit(s, *id).await.expect("submit");
    }
    handle.shutdown().await;
    task.await.expect("worker ends");

    let lines = moto.delivered("siem-backup");
    let counts = count_ids(&lines, &config);
    let expected = expected_ids(&samples, &config);
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        counts.values().all(|&c| c == 1),
        "no duplicates without faults"
    );
    assert_eq!(
        status.number("firehose.events_submitted"),
        expected.len() as u64
    );
    assert_eq!(status.number("firehose.outbox.depth"), 0);

    // Records: whole lines only, within the budget, several events each.
    let log = &proxy.lock().log;
    assert!(
        log.forwarded
            .iter()
            .all(|r| r.ends_with(b"\n") && r.len() <= config.record_bytes)
    );
    assert!(
        log.forwarded.len() * 5 < lines.len(),
        "records pack many events"
    );
    for record in &log.forwarded {
        for line in record.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            serde_json::from_slice::<Value>(line).expect("each record holds whole events");
        }
    }

    // The walkthrough's searches: max(value.count) of
    // aws:num-listening-tcp-ports by thing, and spath value.ports{}.
    let by = |name: &str, id: u64| {
        lines
            .iter()
            .find(|l| l["event"]["name"] == name && l["event"]["edge"]["report_id"] == id)
            .unwrap_or_else(|| panic!("{name} of report {id}"))
            .clone()
    };
    let max_count = (0..30)
        .map(|n| {
            by("aws:num-listening-tcp-ports", 1000 + n)["event"]["value"]["count"]
                .as_u64()
                .expect("count")
        })
        .max();
    assert_eq!(max_count, Some(7));
    assert_eq!(
        by("aws:listening-tcp-ports", 1004)["event"]["value"]["ports"],
        json!([8000, 8001, 8002, 8003, 8004, 8005, 8006])
    );
    assert_eq!(
        by("aws:all-bytes-out", 1003)["event"]["value"]["count"],
        6000
    );
    assert_eq!(by("edge:alert", 1003)["event"]["alert"]["severity"], "high");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_throttling_and_dropped_connections_lose_nothing() {
    let moto = Moto::start();
    moto.create_stream("siem", "siem-backup");
    let proxy = Proxy::start(moto.port).await;
    proxy.inject(&[
        Fault::FailEvery(2),
        Fault::Throttle,
        Fault::FailEvery(3),
        Fault::Unavailable,
        Fault::DropBeforeForward,
        Fault::FailEvery(1),
        Fault::ShortResponse,
        Fault::DropAfterForward,
        Fault::FailEvery(2),
    ]);
    let state = tempfile::tempdir().expect("tempdir");
    let config = config("siem");
    let status = Status::new();
    let (handle, task) = FirehoseSink::start_with_loader(
        &config,
        state.path(),
        status.clone(),
        loader(&proxy.url()),
    )
    .await
    .expect("sink starts");
    let samples: Vec<(Sample, u64)> = (0..40).map(|n| (sample("edge-02", n), 2000 + n)).collect();
    for (i, (s, id)) in samples.iter().enumerate() {
        handle.submit(s, *id).await.expect("submit");
        if i % 8 == 7 {
            // Spread the samples over several flushes, so the faults hit
            // several calls.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    handle.shutdown().await;
    task.await.expect("worker ends");

    let (faults_applied, resent_by_design) = {
        let s = proxy.lock();
        (s.log.faults_applied, ids_in(&s.log.resent_by_design))
    };
    assert_eq!(faults_applied, 9, "every fault was exercised");
    let counts = count_ids(&moto.delivered("siem-backup"), &config);
    let expected = expected_ids(&samples, &config);
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every event arrived"
    );
    // An event arrives once, plus once per lost answer to a call that
    // carried it (the sink cannot know Firehose had it).
    for (id, count) in &counts {
        let explained = resent_by_design.get(id).copied().unwrap_or(0);
        assert!(
            *count <= 1 + explained,
            "{id} arrived {count} times, only {explained} lost answers explain duplicates"
        );
    }
    assert!(
        counts.values().any(|&c| c > 1),
        "the lost answers did cause documented duplicates"
    );
    assert!(status.number("firehose.records_failed") > 0);
    assert!(status.number("firehose.length_mismatches") == 1);
    assert!(status.number("firehose.retries") > 0);
    assert_eq!(status.number("firehose.outbox.depth"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_a_restart_in_the_middle_loses_nothing() {
    let moto = Moto::start();
    moto.create_stream("siem", "siem-backup");
    let mut proxy = Proxy::start(moto.port).await;
    let state = tempfile::tempdir().expect("tempdir");
    let config = config("siem");
    let samples: Vec<(Sample, u64)> = (0..12).map(|n| (sample("edge-03", n), 3000 + n)).collect();

    let (handle, task) =
        FirehoseSink::start_with_loader(&config, state.path(), Status::new(), loader(&proxy.url()))
            .await
            .expect("sink starts");
    proxy.down();
    for (s, id) in &samples[..6] {
        handle
            .submit(s, *id)
            .await
            .expect("submit while the network is down");
    }
    // Let the worker fail a few rounds, then kill it mid-retry: nothing but
    // the outbox on disk survives.
    tokio::time::sleep(Duration::from_millis(800)).await;
    task.abort();
    let _ = task.await;
    drop(handle);

    // Restart while still offline: the stream cannot be checked, start goes on.
    let status = Status::new();
    let (handle, task) = FirehoseSink::start_with_loader(
        &config,
        state.path(),
        status.clone(),
        loader(&proxy.url()),
    )
    .await
    .expect("sink starts while the endpoint is unreachable");
    assert_eq!(
        status.number("firehose.outbox.depth"),
        6,
        "the first run's samples wait on disk"
    );
    for (s, id) in &samples[6..] {
        handle.submit(s, *id).await.expect("submit");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        moto.delivered("siem-backup").is_empty(),
        "nothing got through the outage"
    );
    proxy.up().await;

    let expected = expected_ids(&samples, &config);
    eventually(Duration::from_secs(60), "delivery after the outage", || {
        status.number("firehose.outbox.depth") == 0
    })
    .await;
    handle.shutdown().await;
    task.await.expect("worker ends");
    let counts = count_ids(&moto.delivered("siem-backup"), &config);
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(counts.values().all(|&c| c == 1), "nothing was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deleted_while_running_is_surfaced_and_nothing_is_dropped() {
    let moto = Moto::start();
    moto.create_stream("siem", "siem-backup");
    let state = tempfile::tempdir().expect("tempdir");
    let config = config("siem");
    let status = Status::new();
    let (handle, task) =
        FirehoseSink::start_with_loader(&config, state.path(), status.clone(), loader(&moto.url()))
            .await
            .expect("sink starts");
    moto.delete_stream("siem");
    let samples: Vec<(Sample, u64)> = (0..4).map(|n| (sample("edge-04", n), 5000 + n)).collect();
    for (s, id) in &samples {
        handle.submit(s, *id).await.expect("submit");
    }
    let failing = || match status.get("firehose.state") {
        Some(defender_edge::status::Value::Text(t)) => {
            t.starts_with("failing: delivery stream siem in us-east-1: ")
        }
        _ => false,
    };
    eventually(
        Duration::from_secs(30),
        "firehose.state to say failing",
        failing,
    )
    .await;
    assert_eq!(
        status.number("firehose.outbox.depth"),
        4,
        "the events wait, none dropped"
    );

    // Fixing the stream without a restart lets the waiting events through.
    moto.create_stream("siem", "siem-backup-2");
    eventually(Duration::from_secs(30), "delivery after the fix", || {
        status.number("firehose.outbox.depth") == 0
    })
    .await;
    handle.shutdown().await;
    task.await.expect("worker ends");
    let counts = count_ids(&moto.delivered("siem-backup-2"), &config);
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        expected_ids(&samples, &config)
    );
}

/// The state the sink shows in `status` (`firehose.state`).
fn state_of(status: &Status) -> String {
    match status.get("firehose.state") {
        Some(StatusValue::Text(text)) => text,
        other => format!("{other:?}"),
    }
}

/// Every event of `samples` reached the bucket (read back from moto).
fn all_delivered(
    moto: &Moto,
    bucket: &str,
    samples: &[(Sample, u64)],
    config: &FirehoseConfig,
) -> bool {
    let delivered: BTreeSet<String> = count_ids(&moto.delivered(bucket), config)
        .into_keys()
        .collect();
    delivered == expected_ids(samples, config)
}

/// A device that boots before its delivery stream exists (a fleet deployed
/// before the SOC made the stream): the sink starts, stores every event from
/// the start, says why it waits, and sends once the stream appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_late_gets_every_event_stored_from_the_start() {
    let moto = Moto::start();
    let state = tempfile::tempdir().expect("tempdir");
    let config = config("late-stream");
    let status = Status::new();
    let (handle, task) =
        FirehoseSink::start_with_loader(&config, state.path(), status.clone(), loader(&moto.url()))
            .await
            .expect("starts before its stream exists");
    let samples: Vec<(Sample, u64)> = (0..3).map(|n| (sample("edge-late", n), 5000 + n)).collect();
    for (s, id) in &samples {
        handle.submit(s, *id).await.expect("stored while waiting");
    }
    eventually(Duration::from_secs(10), "the waiting state", || {
        state_of(&status)
            == "waiting: Firehose delivery stream late-stream does not exist in us-east-1"
    })
    .await;
    moto.create_stream("late-stream", "late-backup");
    eventually(Duration::from_secs(20), "every event delivered", || {
        all_delivered(&moto, "late-backup", &samples, &config)
    })
    .await;
    assert_eq!(state_of(&status), "running");
    assert!(status.number("firehose.start_check_failures") >= 1);
    handle.shutdown().await;
    task.await.expect("worker ends");
}

// ------------------------------------------- the environment, the AWS way --
//
// These tests need a process environment of their own (AWS_* variables), so
// each re-runs itself in a child process with exactly that environment; the
// child runs the sink with `FirehoseSink::start`, as the component does.

const CHILD: &str = "DEFENDER_EDGE_FIREHOSE_CHILD";

/// Runs the named test in a child process with only `env` set.
fn run_child(test: &str, env: &[(&str, String)]) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", home.path().join("config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("credentials"),
        )
        // Outside EC2 the instance metadata service only adds timeouts.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(CHILD, home.path().join("state"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {test} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal Token Exchange Service: answers container-credential requests
/// carrying the right token, and counts them.
struct TokenExchange {
    addr: SocketAddr,
    served: Arc<Mutex<usize>>,
}

const TES_TOKEN: &str = "svcuid-test-token";
const TES_KEY_ID: &str = "ASIATESTFROMTES";

impl TokenExchange {
    fn start() -> TokenExchange {
        TokenExchange::start_on(0)
    }

    /// Listens on `port` (0: any free one).
    fn start_on(port: u16) -> TokenExchange {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind TES");
        let addr = listener.local_addr().expect("TES address");
        let served = Arc::new(Mutex::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let authorized = head.iter().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:") && l.contains(TES_TOKEN)
                });
                let path_ok = head
                    .first()
                    .is_some_and(|l| l.contains("/2016-11-01/credentialprovider/"));
                let (status, body) = if authorized && path_ok {
                    *count.lock().expect("count") += 1;
                    let expiration = "2099-01-01T00:00:00Z";
                    (
                        "200 OK",
                        format!(
                            r#"{{"AccessKeyId":"{TES_KEY_ID}","SecretAccessKey":"tes-secret","Token":"tes-session","Expiration":"{expiration}"}}"#
                        ),
                    )
                } else {
                    ("401 Unauthorized", r#"{"message":"bad token"}"#.to_owned())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenExchange { addr, served }
    }
}

/// In a child: the sink started from the process environment (as the
/// component does on Greengrass: region and endpoint from AWS_* variables),
/// with three samples of `thing` submitted, ids from `first_id`.
async fn start_from_environment(
    state: &str,
    thing: &str,
    first_id: u64,
) -> (
    defender_edge::publish::firehose::FirehoseHandle,
    tokio::task::JoinHandle<()>,
    Status,
) {
    let config = FirehoseConfig {
        region: None,
        ..config("siem")
    };
    let status = Status::new();
    let (handle, task) = FirehoseSink::start(&config, Path::new(state), status.clone())
        .await
        .expect("starts with AWS_REGION and AWS_ENDPOINT_URL_FIREHOSE");
    for n in 0..3 {
        handle
            .submit(&sample(thing, n), first_id + n)
            .await
            .expect("submit");
    }
    (handle, task, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_credentials_from_the_token_exchange_service_are_used() {
    if let Ok(state) = std::env::var(CHILD) {
        // Child: exactly what the component does on Greengrass.
        let (handle, task, status) = start_from_environment(&state, "edge-tes", 4000).await;
        handle.shutdown().await;
        task.await.expect("worker ends");
        assert_eq!(status.number("firehose.outbox.depth"), 0);
        return;
    }
    let moto = Moto::start();
    moto.create_stream("siem", "siem-backup");
    let proxy = Proxy::start(moto.port).await;
    let tes = TokenExchange::start();
    let proxy_url = proxy.url();
    let child = tokio::task::spawn_blocking(move || {
        run_child(
            "firehose::container_credentials_from_the_token_exchange_service_are_used",
            &[
                ("AWS_REGION", REGION.to_owned()),
                ("AWS_ENDPOINT_URL_FIREHOSE", proxy_url),
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    format!(
                        "http://localhost:{}/2016-11-01/credentialprovider/",
                        tes.addr.port()
                    ),
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", TES_TOKEN.to_owned()),
            ],
        );
        tes
    });
    let tes = child.await.expect("child test");
    assert!(
        *tes.served.lock().expect("count") >= 1,
        "credentials came from TES"
    );
    assert_eq!(
        proxy.lock().log.access_keys,
        BTreeSet::from([TES_KEY_ID.to_owned()]),
        "every request was signed with TES's key"
    );
    let samples: Vec<(Sample, u64)> = (0..3).map(|n| (sample("edge-tes", n), 4000 + n)).collect();
    let config = config("siem");
    let counts = count_ids(&moto.delivered("siem-backup"), &config);
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        expected_ids(&samples, &config)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_region_is_an_error_and_missing_credentials_are_waited_for() {
    if let Ok(state) = std::env::var(CHILD) {
        let state = Path::new(&state);
        let no_region = FirehoseConfig {
            region: None,
            ..config("siem")
        };
        let err = FirehoseSink::start(&no_region, state, Status::new())
            .await
            .expect_err("no region anywhere");
        assert!(matches!(err, FirehoseError::NoRegion { .. }), "{err:?}");
        assert!(
            err.to_string().contains("siem") && err.to_string().contains("AWS_REGION"),
            "{err}"
        );

        let eu = FirehoseConfig {
            region: Some("eu-west-1".to_owned()),
            ..config("siem")
        };
        let status = Status::new();
        let (handle, task) = FirehoseSink::start(&eu, state, status.clone())
            .await
            .expect("starts without credentials, waiting for them");
        eventually(Duration::from_secs(10), "the waiting state", || {
            state_of(&status).starts_with(
                "waiting: no AWS credentials for Firehose delivery stream siem in eu-west-1: ",
            )
        })
        .await;
        handle.shutdown().await;
        task.await.expect("worker ends");
        assert_eq!(state_of(&status), "stopped");
        return;
    }
    // No AWS_* variable but the endpoint: nothing to find credentials in.
    let moto = Moto::start();
    let url = moto.url();
    tokio::task::spawn_blocking(move || {
        run_child(
            "firehose::missing_region_is_an_error_and_missing_credentials_are_waited_for",
            &[("AWS_ENDPOINT_URL_FIREHOSE", url)],
        )
    })
    .await
    .expect("child test");
}

/// Credentials that appear late (the Greengrass Token Exchange Service
/// starts after the component, here once the sink said it waits for
/// credentials): events are stored from the start, and delivered signed
/// with TES's key once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_that_appear_late_are_waited_for() {
    if let Ok(state) = std::env::var(CHILD) {
        let (handle, task, status) = start_from_environment(&state, "edge-tes-late", 6000).await;
        eventually(Duration::from_secs(10), "the waiting state", || {
            state_of(&status).starts_with("waiting: no AWS credentials")
        })
        .await;
        // Only now does the Token Exchange Service start, on the port the
        // environment names.
        let uri = std::env::var("AWS_CONTAINER_CREDENTIALS_FULL_URI").expect("TES URI");
        let port = uri
            .trim_start_matches("http://localhost:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("TES port");
        let tes = TokenExchange::start_on(port);
        eventually(Duration::from_secs(30), "delivery", || {
            status.number("firehose.outbox.depth") == 0 && state_of(&status) == "running"
        })
        .await;
        assert!(status.number("firehose.start_check_failures") >= 1);
        assert!(*tes.served.lock().expect("count") >= 1);
        handle.shutdown().await;
        task.await.expect("worker ends");
        return;
    }
    let moto = Moto::start();
    moto.create_stream("siem", "siem-backup");
    let proxy = Proxy::start(moto.port).await;
    // TES's port: free until the child, waiting for credentials, starts TES.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let proxy_url = proxy.url();
    let child = tokio::task::spawn_blocking(move || {
        run_child(
            "firehose::credentials_that_appear_late_are_waited_for",
            &[
                ("AWS_REGION", REGION.to_owned()),
                ("AWS_ENDPOINT_URL_FIREHOSE", proxy_url),
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    format!("http://localhost:{port}/2016-11-01/credentialprovider/"),
                ),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", TES_TOKEN.to_owned()),
            ],
        );
    });
    child.await.expect("child test");
    assert_eq!(
        proxy.lock().log.access_keys,
        BTreeSet::from([TES_KEY_ID.to_owned()])
    );
    let samples: Vec<(Sample, u64)> = (0..3)
        .map(|n| (sample("edge-tes-late", n), 6000 + n))
        .collect();
    let config = config("siem");
    assert!(all_delivered(&moto, "siem-backup", &samples, &config));
}
