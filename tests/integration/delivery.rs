//! Delivery end to end: the durable outbox, the MQTT transport and the Device
//! Defender protocol against a real mosquitto broker with mutual TLS, started
//! on a free loopback port with certificates made here by openssl.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use defender_edge::publish::defender::{
    DefenderConfig, DefenderHandle, DefenderOptions, DefenderPublisher, FlushOutcome,
};
use defender_edge::publish::mqtt::{MqttConfig, MqttTransport};
use defender_edge::publish::outbox::{EntryId, Outbox, OutboxError, OutboxLimits, StorageFault};
use defender_edge::publish::{Transport, TransportError};
use defender_edge::report::Format;
use defender_edge::status::Status;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration};
use tokio::sync::mpsc;

use crate::support::{SmallFs, require_program};

// ---------------------------------------------------------------- log capture

/// Everything the library logs during this test binary, for assertions on
/// warn lines. Tests tell their lines apart by their unique thing names.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

#[derive(Clone, Copy)]
struct LogSink;

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogSink)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

fn all_logs() -> String {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs).into_owned()
}

/// Log lines that contain every one of `needles`.
fn log_lines(needles: &[&str]) -> Vec<String> {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

// ------------------------------------------------------------ certificates

/// A throwaway PKI: a CA that signs the broker and the clients, and a rogue
/// CA that signs a client the broker must refuse.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let openssl = require_program("openssl", "openssl");
        let dir = tempfile::tempdir().expect("tempdir");
        // mosquitto started as root drops to the `mosquitto` user, which must
        // still read the key files of this throwaway PKI.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let pki = Pki { dir };
        for ca in ["ca", "rogue-ca"] {
            pki.openssl(
                &openssl,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        std::fs::write(
            pki.path("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write ext");
        std::fs::write(pki.path("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write ext");
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("device", "ca", "client.ext"),
            ("observer", "ca", "client.ext"),
            ("impostor", "rogue-ca", "client.ext"),
        ] {
            pki.openssl(
                &openssl,
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            pki.openssl(
                &openssl,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}.crt"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{name}.crt"),
                    "-extfile",
                    ext,
                ],
            );
        }
        for entry in std::fs::read_dir(pki.dir.path()).expect("list") {
            let path = entry.expect("entry").path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        pki
    }

    fn openssl(&self, openssl: &Path, args: &[&str]) {
        let out = Command::new(openssl)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The device's MQTT settings: `client` names its certificate, `ca` the
    /// root CA it trusts for the broker.
    pub(crate) fn mqtt(&self, port: u16, client: &str, ca: &str) -> MqttConfig {
        MqttConfig {
            endpoint: Some("localhost".to_owned()),
            port,
            client_id: None,
            certificate_file: Some(self.path(&format!("{client}.crt"))),
            private_key_file: Some(self.path(&format!("{client}.key"))),
            root_ca_file: Some(self.path(&format!("{ca}.crt"))),
            alpn: None,
            keep_alive_seconds: 30,
            ack_timeout_seconds: 3,
            connect_timeout_seconds: 3,
            allow_plain_tcp: false,
        }
    }
}

// ------------------------------------------------------------------ broker

/// A mosquitto with mutual TLS on a free loopback port.
pub(crate) struct Broker {
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// `persistent`: the broker keeps sessions across its own restarts.
    pub(crate) fn start(pki: &Pki, persistent: bool) -> Broker {
        let program = require_program("mosquitto", "mosquitto");
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let conf = format!(
            "listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\n\
             persistence {persistent}\npersistence_location {db}/\nlog_type all\n",
            ca = pki.path("ca.crt").display(),
            cert = pki.path("server.crt").display(),
            key = pki.path("server.key").display(),
            db = dir.path().display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write conf");
        let mut broker = Broker {
            port,
            dir,
            child: None,
        };
        broker.spawn(&program);
        broker
    }

    fn spawn(&mut self, program: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log file");
        let child = Command::new(program)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("mosquitto exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < until,
                "mosquitto did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker with SIGTERM (it saves its sessions when persistent).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn(&require_program("mosquitto", "mosquitto"));
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// ---------------------------------------------------------------- observer

/// A test client standing in for AWS IoT Core's side: it sees what the device
/// publishes and sends fake `accepted` / `rejected` replies.
pub(crate) struct Observer {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<(String, Vec<u8>, Instant)>,
    subscribed: Arc<Mutex<u32>>,
}

impl Observer {
    /// Connects as `observer` with a persistent session and subscribes to
    /// `filter` after every connect.
    pub(crate) async fn start(pki: &Pki, port: u16, filter: &str) -> Observer {
        capture_logs();
        let read = |name: &str| std::fs::read(pki.path(name)).expect("read pki file");
        let mut options = MqttOptions::new("observer", "localhost", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_transport(rumqttc::Transport::tls_with_config(
                TlsConfiguration::Simple {
                    ca: read("ca.crt"),
                    alpn: None,
                    client_auth: Some((read("observer.crt"), read("observer.key"))),
                },
            ));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, messages) = mpsc::unbounded_channel();
        let subscribed = Arc::new(Mutex::new(0u32));
        let counter = subscribed.clone();
        let sub_client = client.clone();
        let filter = filter.to_owned();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = sub_client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        *counter.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), Instant::now()));
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let observer = Observer {
            client,
            messages,
            subscribed,
        };
        observer.wait_subscribed(1).await;
        observer
    }

    pub(crate) async fn wait_subscribed(&self, times: u32) {
        wait_for(&format!("observer subscribed {times} times"), || {
            *self.subscribed.lock().unwrap_or_else(|p| p.into_inner()) >= times
        })
        .await;
    }

    pub(crate) async fn next(&mut self, within: Duration) -> Option<(String, Vec<u8>, Instant)> {
        tokio::time::timeout(within, self.messages.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message, or a failure that shows the library's log.
    pub(crate) async fn expect_next(&mut self, what: &str) -> (String, Vec<u8>, Instant) {
        match self.next(Duration::from_secs(15)).await {
            Some(m) => m,
            None => panic!("no {what} arrived at the broker; log:\n{}", all_logs()),
        }
    }

    async fn reply(&self, topic: String, body: serde_json::Value) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body.to_string())
            .await
            .expect("observer publishes");
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !condition() {
        if Instant::now() >= until {
            panic!("timed out waiting for {what}; log:\n{}", all_logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----------------------------------------------------------------- device

/// What every delivery test starts from: a throwaway PKI, a mosquitto that
/// trusts it, an observer on the thing's report topic, and a state
/// directory. Each test numbers its reports from its own `first_id`, so the
/// log lines of the tests running beside it are never taken for its own.
struct Rig {
    pki: Pki,
    broker: Broker,
    observer: Observer,
    state: tempfile::TempDir,
    thing: &'static str,
    first_id: u64,
}

impl Rig {
    /// `persistent`: the broker keeps sessions across its own restarts.
    async fn start(thing: &'static str, first_id: u64, persistent: bool) -> Rig {
        capture_logs();
        let pki = Pki::new();
        let broker = Broker::start(&pki, persistent);
        let observer = Observer::start(&pki, broker.port, &topic(thing)).await;
        Rig {
            pki,
            broker,
            observer,
            state: tempfile::tempdir().expect("tempdir"),
            thing,
            first_id,
        }
    }

    /// The id of this test's `n`-th report.
    fn id(&self, n: u64) -> u64 {
        self.first_id + n
    }

    /// This test's `n`-th report.
    fn report(&self, n: u64) -> Vec<u8> {
        report(self.thing, self.id(n))
    }

    /// A device with a certificate the broker trusts, trusting the broker.
    async fn device(&self, floor: Floor) -> Device {
        self.device_as("device", "ca", floor).await
    }

    /// A device presenting `client`'s certificate and trusting `ca`.
    async fn device_as(&self, client: &str, ca: &str, floor: Floor) -> Device {
        self.device_with(client, ca, self.state.path(), floor).await
    }

    /// A device whose state directory (outbox, publish floor) is `state_dir`,
    /// e.g. on a file system a test makes fail.
    async fn device_in(&self, state_dir: &Path, floor: Floor) -> Device {
        self.device_with("device", "ca", state_dir, floor).await
    }

    async fn device_with(&self, client: &str, ca: &str, state_dir: &Path, floor: Floor) -> Device {
        let status = Status::new();
        let transport = Arc::new(
            MqttTransport::start(
                &self.pki.mqtt(self.broker.port, client, ca),
                self.thing,
                status.clone(),
            )
            .expect("mqtt starts"),
        );
        let outbox = Outbox::open(
            &state_dir.join("outbox"),
            OutboxLimits::default(),
            "outbox",
            status.clone(),
        )
        .expect("outbox opens");
        let options = DefenderOptions {
            thing_name: self.thing.to_owned(),
            format: Format::Json,
            state_dir: state_dir.to_owned(),
            config: DefenderConfig {
                enabled: true,
                min_interval_seconds: floor.min_interval_seconds,
                reply_timeout_seconds: floor.reply_timeout_seconds,
            },
        };
        let (handle, task) =
            DefenderPublisher::start(transport.clone(), outbox, options, status.clone())
                .await
                .expect("publisher starts");
        Device {
            transport,
            handle,
            task,
            status,
            ids: self.first_id..self.first_id + 100,
        }
    }
}

/// `publish.deviceDefender`'s timing for a test device.
#[derive(Clone, Copy)]
struct Floor {
    min_interval_seconds: u64,
    reply_timeout_seconds: u64,
}

/// No floor between publishes; replies awaited for a minute.
const NO_FLOOR: Floor = Floor {
    min_interval_seconds: 0,
    reply_timeout_seconds: 60,
};

/// A Device Defender publisher over MQTT, as `run` wires it.
struct Device {
    transport: Arc<MqttTransport>,
    handle: DefenderHandle,
    task: tokio::task::JoinHandle<()>,
    status: Status,
    /// The report ids of its test.
    ids: std::ops::Range<u64>,
}

impl Device {
    /// The reports its test submitted that left the outbox without going to
    /// Device Defender, as the log names them (superseded by a newer one,
    /// or refused by the transport).
    fn superseded(&self) -> Vec<u64> {
        all_logs()
            .lines()
            .filter(|l| {
                l.contains("report superseded by a newer one")
                    || l.contains("report refused by the transport")
            })
            .filter_map(|l| l.split_once("report_id=").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .filter_map(|id| id.parse::<u64>().ok())
            .filter(|id| self.ids.contains(id))
            .collect()
    }

    async fn submit(&self, id: u64, report: Vec<u8>) {
        self.handle.submit(id, report).await.expect("submit");
    }

    async fn stop(self) {
        self.handle.shutdown().await;
        let _ = self.task.await;
        self.transport.shutdown().await;
    }

    /// A crash: the task is torn down without a clean shutdown.
    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
        self.transport.shutdown().await;
    }

    async fn wait_counter(&self, name: &str, at_least: u64) {
        wait_for(&format!("{name} >= {at_least}"), || {
            self.status.number(name) >= at_least
        })
        .await;
    }
}

fn report(thing: &str, id: u64) -> Vec<u8> {
    serde_json::json!({
        "header": {"report_id": id, "version": "1.0"},
        "metrics": {"listening_tcp_ports": {"ports": [{"port": 22, "interface": "eth0"}], "total": 1}},
        "custom_metrics": {"thing_tag": [{"string_list": [thing]}]},
    })
    .to_string()
    .into_bytes()
}

fn report_id_of(payload: &[u8]) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(payload).expect("report is JSON");
    value["header"]["report_id"].as_u64().expect("report_id")
}

fn topic(thing: &str) -> String {
    format!("$aws/things/{thing}/defender/metrics/json")
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_arrive_and_replies_are_counted() {
    let mut rig = Rig::start("dd-replies", 100, false).await;
    let thing = rig.thing;
    let device = rig
        .device(Floor {
            min_interval_seconds: 0,
            reply_timeout_seconds: 2,
        })
        .await;
    assert!(
        !log_lines(&["WARN", "minIntervalSeconds is below"]).is_empty(),
        "lowering the floor is warned about"
    );

    let replies = [
        serde_json::json!({"thingName": thing, "reportId": rig.id(1), "status": "ACCEPTED", "timestamp": 1}),
        serde_json::json!({"thingName": thing, "reportId": rig.id(2), "status": "REJECTED", "timestamp": 1,
            "statusDetails": {"ErrorCode": "InvalidPayload", "ErrorMessage": "Malformed metrics report"}}),
    ];
    for n in 1..=3u64 {
        device.submit(rig.id(n), rig.report(n)).await;
        let (t, payload, _) = rig
            .observer
            .expect_next("report arrives at the broker")
            .await;
        assert_eq!(t, topic(thing));
        assert_eq!(payload, rig.report(n), "the report decodes unchanged");
        assert_eq!(report_id_of(&payload), rig.id(n));
        match n {
            1 => {
                rig.observer
                    .reply(format!("{t}/accepted"), replies[0].clone())
                    .await
            }
            2 => {
                rig.observer
                    .reply(format!("{t}/rejected"), replies[1].clone())
                    .await
            }
            _ => {} // Report 3 stays unanswered.
        }
        device.wait_counter("defender.sent", n).await;
    }
    device.wait_counter("defender.accepted", 1).await;
    device.wait_counter("defender.rejected", 1).await;
    device.wait_counter("defender.timed_out", 1).await;
    assert_eq!(device.status.number("defender.sent"), 3);
    assert_eq!(device.status.number("defender.accepted"), 1);
    assert_eq!(device.status.number("defender.rejected"), 1);
    assert_eq!(device.status.number("defender.timed_out"), 1);
    assert_eq!(device.status.number("outbox.depth"), 0);
    let warned = log_lines(&["WARN", "Device Defender rejected report", thing]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("InvalidPayload") && warned[0].contains("Malformed metrics report"),
        "{}",
        warned[0]
    );
    assert_eq!(
        device.handle.flush(Duration::from_secs(1)).await,
        FlushOutcome::Acknowledged
    );
    device.stop().await;
}

/// The floor holds between publishes and across a restart; older waiting
/// reports are superseded, and the log names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_floor_holds_across_restarts_and_backlog_is_superseded() {
    let mut rig = Rig::start("dd-floor", 200, false).await;
    let floor = Floor {
        min_interval_seconds: 3,
        reply_timeout_seconds: 60,
    };
    let device = rig.device(floor).await;
    device.submit(rig.id(1), rig.report(1)).await;
    let (_, first, first_at) = rig.observer.expect_next("first").await;
    assert_eq!(report_id_of(&first), rig.id(1));
    device.wait_counter("defender.sent", 1).await;
    for n in 2..=3 {
        device.submit(rig.id(n), rig.report(n)).await;
    }
    let (_, second, second_at) = rig.observer.expect_next("second").await;
    assert_eq!(
        report_id_of(&second),
        rig.id(3),
        "the newest report goes next"
    );
    assert!(
        second_at - first_at >= Duration::from_millis(2900),
        "publishes {:?} apart",
        second_at - first_at
    );
    assert_eq!(
        device.superseded(),
        vec![rig.id(2)],
        "the older report is named as superseded"
    );
    assert_eq!(device.status.number("defender.superseded"), 1);
    device.stop().await;
    let stopped_at = Instant::now();

    // A restart (say, after a configuration change) must not publish early.
    let device = rig.device(floor).await;
    device.submit(rig.id(4), rig.report(4)).await;
    assert_eq!(
        device.handle.flush(Duration::from_millis(200)).await,
        FlushOutcome::QueuedInOutbox,
        "the floor keeps the report queued"
    );
    let (_, fourth, fourth_at) = rig.observer.expect_next("fourth").await;
    assert_eq!(report_id_of(&fourth), rig.id(4));
    assert!(
        fourth_at - second_at >= Duration::from_millis(2900),
        "restart published {:?} after the previous report (stopped {:?} after it)",
        fourth_at - second_at,
        stopped_at - second_at
    );
    device.stop().await;
}

/// The broker goes away mid-stream and comes back with the sessions it saved:
/// every report reaches it or is named as superseded, in order, none more
/// than twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let mut rig = Rig::start("dd-restart", 300, true).await;
    let device = rig.device(NO_FLOOR).await;
    wait_for("the MQTT connection", || device.transport.is_connected()).await;

    let total = 30u64;
    for n in 1..=total {
        if n == 10 {
            rig.broker.stop();
        }
        if n == 20 {
            rig.broker.restart();
        }
        device.submit(rig.id(n), rig.report(n)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        device.handle.flush(Duration::from_secs(30)).await,
        FlushOutcome::Acknowledged,
        "the outbox drains once the broker is back"
    );
    // Give the observer a moment for the last delivery.
    let mut received = Vec::new();
    while let Some((_, payload, _)) = rig.observer.next(Duration::from_secs(2)).await {
        received.push(report_id_of(&payload));
    }
    assert!(
        received.windows(2).all(|w| w[0] <= w[1]),
        "reports arrive in order: {received:?}"
    );
    for id in &received {
        assert!(
            received.iter().filter(|r| *r == id).count() <= 2,
            "report {id} arrived more than twice: {received:?}"
        );
    }
    let superseded = device.superseded();
    eprintln!("received {received:?}, superseded {superseded:?}");
    let mut all: Vec<u64> = received.iter().chain(superseded.iter()).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all,
        (1..=total).map(|n| rig.id(n)).collect::<Vec<_>>(),
        "received {received:?}, superseded {superseded:?}"
    );
    assert!(
        device.status.number("defender.publish_failures") >= 1,
        "the outage was noticed"
    );
    assert!(
        device.status.number("mqtt.connects") >= 2,
        "the transport reconnected"
    );
    assert_eq!(
        received.last(),
        Some(&rig.id(total)),
        "the newest report reached the broker"
    );
    device.stop().await;
}

/// After the broker lost our session (no persistence), the transport
/// subscribes again, so replies still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_session_resubscribes_to_replies() {
    let mut rig = Rig::start("dd-resubscribe", 400, false).await;
    let device = rig.device(NO_FLOOR).await;
    device.wait_counter("mqtt.connects", 1).await;
    rig.broker.restart();
    device.wait_counter("mqtt.connects", 2).await;
    device.wait_counter("mqtt.resubscribed", 2).await;
    rig.observer.wait_subscribed(2).await;
    // Wait for the SUBACKs of the new session before a reply is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;

    device.submit(rig.id(7), rig.report(7)).await;
    let (t, payload, _) = rig.observer.expect_next("report").await;
    assert_eq!(report_id_of(&payload), rig.id(7));
    rig.observer
        .reply(
            format!("{t}/accepted"),
            serde_json::json!({"thingName": rig.thing, "reportId": rig.id(7), "status": "ACCEPTED", "timestamp": 1}),
        )
        .await;
    device.wait_counter("defender.accepted", 1).await;
    device.stop().await;
}

/// Two devices with one client id (a cloned SD image): the broker accepts
/// each and drops the other at once. The reconnect delay keeps growing
/// instead of starting over at every CONNACK, so the pair does not storm
/// the broker with a CONNECT per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_sharing_a_client_id_back_off_instead_of_storming() {
    let rig = Rig::start("dd-twins", 1100, false).await;
    let config = rig.pki.mqtt(rig.broker.port, "device", "ca");
    let peer = format!("MQTT broker localhost:{}", rig.broker.port);
    let twins: Vec<(MqttTransport, Status)> = (0..2)
        .map(|_| {
            let status = Status::new();
            let transport =
                MqttTransport::start(&config, "dd-twins", status.clone()).expect("mqtt starts");
            (transport, status)
        })
        .collect();
    let retries = || -> Vec<u64> {
        log_lines(&[&peer, "MQTT connection failed"])
            .iter()
            .filter_map(|l| l.split_once("retry_in_ms=").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .filter_map(|ms| ms.parse().ok())
            .collect()
    };
    // Each kicked twin waits 1, 2, 4 s (±25 %): a 3 s wait comes within
    // ~8 s. Starting over at every CONNACK never waits more than 1.25 s.
    let until = Instant::now() + Duration::from_secs(15);
    while !retries().iter().any(|&ms| ms >= 2_500) {
        assert!(
            Instant::now() < until,
            "the delay never grew past 1.25 s: {:?}",
            retries()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connects: u64 = twins.iter().map(|(_, s)| s.number("mqtt.connects")).sum();
    assert!(
        (2..=8).contains(&connects),
        "{connects} connects, retries {:?}",
        retries()
    );
    for (transport, _) in &twins {
        transport.shutdown().await;
    }
}

/// Reports stored while the broker is unreachable survive a crash of the
/// publisher and go out after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_publisher_keeps_unsent_reports() {
    let mut rig = Rig::start("dd-crash", 500, false).await;
    rig.broker.stop();
    let device = rig.device(NO_FLOOR).await;
    for n in 1..=3 {
        device.submit(rig.id(n), rig.report(n)).await;
    }
    assert_eq!(device.status.number("outbox.depth"), 3);
    device.crash().await;

    rig.broker.restart();
    rig.observer.wait_subscribed(2).await;
    let device = rig.device(NO_FLOOR).await;
    assert_eq!(
        device.status.number("outbox.depth"),
        3,
        "all three survived"
    );
    let (_, payload, _) = rig.observer.expect_next("report").await;
    assert_eq!(
        report_id_of(&payload),
        rig.id(3),
        "the newest goes to Device Defender"
    );
    device.wait_counter("defender.sent", 1).await;
    assert_eq!(
        device.superseded(),
        vec![rig.id(1), rig.id(2)],
        "the older ones are named as superseded"
    );
    assert_eq!(device.status.number("defender.superseded"), 2);
    assert_eq!(
        device.handle.flush(Duration::from_secs(5)).await,
        FlushOutcome::Acknowledged
    );
    device.stop().await;
}

/// A broker that refuses our certificate, and a broker we do not trust: a
/// clear error naming the broker, retries with backoff, the report kept; with
/// the right settings the same outbox delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_fail_clearly_and_lose_nothing() {
    let mut rig = Rig::start("dd-bad-peers", 600, false).await;
    let peer = format!("MQTT broker localhost:{}", rig.broker.port);

    // (client certificate, CA we trust, what the error must say)
    let cases = [
        ("impostor", "ca", "TLS"),
        ("device", "rogue-ca", "certificate"),
    ];
    for (client, ca, says) in cases {
        let device = rig.device_as(client, ca, NO_FLOOR).await;
        device.wait_counter("mqtt.connect_failures", 2).await;
        let error = device.transport.last_error().expect("a connection error");
        assert!(error.contains(&peer), "{error}");
        assert!(error.contains(says), "{client}/{ca}: {error}");
        let published = device
            .transport
            .publish(&topic(rig.thing), b"{}".to_vec())
            .await;
        match published {
            Err(TransportError::Unreachable { peer: p, reason }) => {
                assert_eq!(p, peer);
                assert!(reason.contains(says), "{reason}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        assert_eq!(device.status.number("mqtt.connected"), 0);
        assert!(!log_lines(&["WARN", "MQTT connection failed; retrying", &peer]).is_empty());
        if client == "impostor" {
            device.submit(rig.id(1), rig.report(1)).await;
        }
        assert_eq!(
            device.status.number("outbox.depth"),
            1,
            "the report is kept"
        );
        device.stop().await;
    }

    let device = rig.device(NO_FLOOR).await;
    let (_, payload, _) = rig.observer.expect_next("report").await;
    assert_eq!(report_id_of(&payload), rig.id(1));
    device.wait_counter("defender.sent", 1).await;
    assert_eq!(device.status.number("outbox.depth"), 0);
    device.stop().await;
}

/// A payload over rumqttc's default 10 KiB limit passes; a publish resolves
/// only on the PUBACK (a frozen broker makes it time out, not succeed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_pass_and_publish_waits_for_puback() {
    let mut rig = Rig::start("dd-large", 800, false).await;
    let transport = MqttTransport::start(
        &rig.pki.mqtt(rig.broker.port, "device", "ca"),
        rig.thing,
        Status::new(),
    )
    .expect("mqtt starts");
    wait_for("the MQTT connection", || transport.is_connected()).await;
    let big: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    transport
        .publish(&topic(rig.thing), big.clone())
        .await
        .expect("a 100 KiB payload is acknowledged");
    let (_, received, _) = rig.observer.expect_next("arrives").await;
    assert_eq!(received, big);

    rig.broker.signal(libc::SIGSTOP);
    let frozen = transport.publish(&topic(rig.thing), b"x".to_vec()).await;
    rig.broker.signal(libc::SIGCONT);
    assert!(
        matches!(frozen, Err(TransportError::Timeout { .. })),
        "no PUBACK, no success: {frozen:?}"
    );
    transport.shutdown().await;
}

/// A report the transport refuses for good (over the 128 KB packet limit) is
/// removed, counted and named in the log, not retried in front of newer
/// reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_report_is_handed_on_not_retried() {
    let mut rig = Rig::start("dd-refused", 700, false).await;
    let device = rig.device(NO_FLOOR).await;
    device.submit(rig.id(1), vec![b' '; 200 * 1024]).await;
    device.wait_counter("defender.refused", 1).await;
    assert_eq!(device.superseded(), vec![rig.id(1)]);
    device.submit(rig.id(2), rig.report(2)).await;
    let (_, payload, _) = rig.observer.expect_next("report").await;
    assert_eq!(report_id_of(&payload), rig.id(2));
    device.stop().await;
}

// ------------------------------------------------------- crash of a process

/// Environment variable that turns [`outbox_writer_child`] into the child
/// process of [`kill_9_keeps_every_pushed_entry`].
const CHILD_DIR: &str = "DEFENDER_EDGE_OUTBOX_CHILD_DIR";

/// The child half of `kill_9_keeps_every_pushed_entry`: pushes entries as fast
/// as it can and prints each id once `push` returned. Run alone (without the
/// variable) it checks that the writer loop works for a few entries.
#[test]
fn outbox_writer_child() {
    let child = std::env::var_os(CHILD_DIR);
    let scratch = tempfile::tempdir().expect("tempdir");
    let (dir, count) = match &child {
        Some(dir) => (PathBuf::from(dir), u64::MAX),
        None => (scratch.path().to_owned(), 5),
    };
    let mut outbox =
        Outbox::open(&dir, OutboxLimits::default(), "outbox", Status::new()).expect("open");
    let stdout = std::io::stdout();
    for i in 0..count {
        let id = outbox
            .push(format!("entry {i} {}", "x".repeat((i % 200) as usize)).as_bytes())
            .expect("push");
        if child.is_some() {
            writeln!(stdout.lock(), "durable {}", id.0).expect("stdout");
        }
    }
    assert_eq!(outbox.depth(), 5);
}

/// `kill -9` a process in the middle of pushing: every entry it was told is
/// durable is there after reopening, in order, and the log stays usable.
#[test]
fn kill_9_keeps_every_pushed_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "delivery::outbox_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut durable = Vec::new();
    while durable.len() < 300 {
        let line = lines.next().expect("child is writing").expect("line");
        if let Some(id) = line.strip_prefix("durable ") {
            durable.push(id.parse::<u64>().expect("id"));
        }
    }
    // SAFETY: kill(2) on the pid of a child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    // Ids the child printed after we stopped reading are durable too.
    for line in lines.map_while(Result::ok) {
        if let Some(id) = line.strip_prefix("durable ") {
            durable.push(id.parse::<u64>().expect("id"));
        }
    }

    let status = Status::new();
    let mut outbox =
        Outbox::open(dir.path(), OutboxLimits::default(), "outbox", status).expect("reopen");
    let pending: Vec<u64> = outbox.pending().iter().map(|e| e.0).collect();
    assert!(pending.windows(2).all(|w| w[0] < w[1]), "in order");
    for id in &durable {
        assert!(
            pending.contains(id),
            "entry {id} was reported durable but is gone"
        );
    }
    for id in &pending {
        let payload = outbox.read(EntryId(*id)).expect("reads");
        assert!(payload.starts_with(b"entry "));
    }
    let next = outbox.push(b"after the crash").expect("push");
    assert!(next.0 > *pending.last().expect("entries"));
}

// ------------------------------------------------------- disk faults (issue 12)

/// `outbox/` entries as the Device Defender publisher stores them.
fn defender_entry(thing: &str, id: u64) -> Vec<u8> {
    let mut entry = id.to_le_bytes().to_vec();
    entry.extend_from_slice(&report(thing, id));
    entry
}

fn small_limits() -> OutboxLimits {
    OutboxLimits {
        max_bytes: 128 * 1024,
        segment_bytes: 16 * 1024,
    }
}

/// A full disk: a push first gives up the oldest segment to make room; when
/// nothing is left to give up it fails with a typed `DiskFull`, while reading
/// and acknowledging go on; the outbox reopens on the full disk and writes
/// again once there is room.
#[test]
fn full_disk_evicts_the_oldest_segment_then_fails_typed_and_recovers() {
    let fs = SmallFs::tmpfs(256 * 1024);
    let dir = fs.path().join("outbox");
    let status = Status::new();
    let mut outbox = Outbox::open(&dir, small_limits(), "outbox", status.clone()).expect("open");
    // 2016-byte records: 8 per 16 KiB segment, so 3 segments (8, 8, 4).
    let ids: Vec<EntryId> = (0..20u8)
        .map(|i| outbox.push(&[i; 2000]).expect("push"))
        .collect();
    let filler = fs.fill("filler");

    let id = outbox
        .push(&[100; 2000])
        .expect("room is made by evicting a segment");
    assert_eq!(
        status.number("outbox.evicted"),
        8,
        "the oldest segment's entries"
    );
    assert_eq!(outbox.pending()[..12], ids[8..]);
    assert_eq!(outbox.newest(), Some(id));
    assert_eq!(outbox.storage_fault(), None);

    // A full disk where the outbox has nothing older to give up: its
    // entries all sit in the active segment, and a record needs new pages.
    drop(outbox);
    std::fs::remove_dir_all(&dir).expect("start afresh");
    std::fs::remove_file(&filler).expect("free the disk");
    let status = Status::new();
    let mut outbox = Outbox::open(&dir, small_limits(), "outbox", status.clone()).expect("open");
    for i in 0..2u8 {
        outbox.push(&[i; 100]).expect("push");
    }
    let filler = fs.fill("filler");
    let error = outbox
        .push(&[101; 8000])
        .expect_err("nothing left to give up");
    assert!(
        matches!(error, OutboxError::DiskFull { .. }),
        "a typed disk-full error: {error}"
    );
    assert_eq!(error.storage_fault(), Some(StorageFault::DiskFull));
    assert_eq!(outbox.storage_fault(), Some(StorageFault::DiskFull));
    assert_eq!(
        status.get("outbox.storage"),
        Some(defender_edge::status::Value::Text("disk full".to_owned()))
    );
    assert!(status.number("outbox.write_failures") >= 1);
    let held = outbox.pending();
    assert!(!held.is_empty());
    for id in &held {
        outbox.read(*id).expect("entries read on a full disk");
    }
    outbox
        .acknowledge(held[0])
        .expect("acknowledging works on a full disk");
    assert!(matches!(
        outbox.recover_storage(),
        Err(OutboxError::DiskFull { .. })
    ));
    drop(outbox);

    // A restart on the full disk: the outbox opens and holds the same entries.
    let status = Status::new();
    let mut outbox = Outbox::open(&dir, small_limits(), "outbox", status.clone())
        .expect("the outbox opens on a full disk");
    let after_restart = outbox.pending();
    assert!(
        after_restart.ends_with(&held[1..]),
        "{after_restart:?} vs {held:?}"
    );

    std::fs::remove_file(filler).expect("the disk frees up");
    outbox.recover_storage().expect("writable again");
    let last = outbox.push(b"after the disk recovered").expect("push");
    drop(outbox);
    let outbox = Outbox::open(&dir, small_limits(), "outbox", Status::new()).expect("reopen");
    assert_eq!(outbox.newest(), Some(last));
    for id in outbox.pending() {
        outbox.read(id).expect("every entry reads after recovery");
    }
    assert!(outbox.disk_bytes() <= small_limits().max_bytes);
}

/// The kernel remounts the card read-only under a running outbox: pushes
/// fail typed, reading and acknowledging go on, a restart opens the outbox
/// read-only (no writable lock file needed) with a torn tail it cannot cut
/// yet, and once the card is writable the postponed work is done.
#[test]
fn read_only_file_system_keeps_the_outbox_serving_and_it_recovers() {
    let fs = SmallFs::tmpfs(1024 * 1024);
    let dir = fs.path().join("outbox");
    let mut outbox = Outbox::open(&dir, small_limits(), "outbox", Status::new()).expect("open");
    let ids: Vec<EntryId> = (1..=3u8)
        .map(|i| outbox.push(&[i; 100]).expect("push"))
        .collect();
    // A torn write the outbox does not know about yet.
    let segment = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .and_then(|mut f| f.write_all(b"torn..."))
        .expect("tear");

    // Succeeds only because the outbox holds no file open for writing.
    fs.remount_read_only();
    let error = outbox.push(b"refused").expect_err("read-only");
    assert!(matches!(error, OutboxError::ReadOnly { .. }), "{error}");
    assert_eq!(outbox.storage_fault(), Some(StorageFault::ReadOnly));
    assert_eq!(outbox.read(ids[0]).expect("reads"), vec![1u8; 100]);
    outbox.acknowledge(ids[0]).expect("acknowledged in memory");
    assert_eq!(outbox.pending(), ids[1..]);
    drop(outbox);

    let status = Status::new();
    let mut outbox = Outbox::open(&dir, small_limits(), "outbox", status.clone())
        .expect("the outbox opens on a read-only file system");
    // The ack was never written: the entry is sent again (at least once).
    assert_eq!(outbox.pending(), ids);
    assert_eq!(status.number("outbox.recovered_torn"), 1);
    assert_eq!(outbox.storage_fault(), Some(StorageFault::ReadOnly));
    outbox.acknowledge(ids[0]).expect("acknowledged in memory");
    assert_eq!(status.number("outbox.acks_unwritten"), 1);
    assert!(matches!(
        outbox.recover_storage(),
        Err(OutboxError::ReadOnly { .. })
    ));

    fs.remount_writable();
    outbox.recover_storage().expect("writable again");
    assert_eq!(status.number("outbox.acks_unwritten"), 0);
    assert_eq!(outbox.storage_fault(), None);
    let new = outbox.push(b"after").expect("push");
    drop(outbox);
    let status = Status::new();
    let outbox = Outbox::open(&dir, small_limits(), "outbox", status.clone()).expect("reopen");
    assert_eq!(outbox.pending(), vec![ids[1], ids[2], new]);
    assert_eq!(
        status.number("outbox.recovered_torn"),
        0,
        "the torn tail was cut when the card came back"
    );
}

/// Device Defender on a read-only state directory publishes what the outbox
/// holds (the floor file cannot be written: the floor holds in memory), a
/// submit fails with a storage fault the caller can act on, and once the
/// card is writable `recover_storage` lets submits through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_state_still_publishes_what_the_outbox_holds() {
    let mut rig = Rig::start("dd-read-only", 900, false).await;
    let fs = SmallFs::tmpfs(1024 * 1024);
    {
        let mut outbox = Outbox::open(
            &fs.path().join("outbox"),
            OutboxLimits::default(),
            "outbox",
            Status::new(),
        )
        .expect("open");
        for n in 1..=2 {
            outbox
                .push(&defender_entry(rig.thing, rig.id(n)))
                .expect("push");
        }
    }
    fs.remount_read_only();
    let device = rig.device_in(fs.path(), NO_FLOOR).await;
    let (_, payload, _) = rig.observer.expect_next("the held report").await;
    assert_eq!(report_id_of(&payload), rig.id(2), "the newest report goes");
    assert_eq!(device.superseded(), vec![rig.id(1)]);
    device.wait_counter("defender.floor_unsaved", 1).await;

    let error = device
        .handle
        .submit(rig.id(3), rig.report(3))
        .await
        .expect_err("nothing can be stored");
    assert_eq!(
        error.storage_fault(),
        Some(StorageFault::ReadOnly),
        "{error}"
    );
    assert!(device.handle.recover_storage().await.is_err());

    fs.remount_writable();
    device
        .handle
        .recover_storage()
        .await
        .expect("writable again");
    device
        .handle
        .submit(rig.id(3), rig.report(3))
        .await
        .expect("stored again");
    let (_, payload, _) = rig.observer.expect_next("the report after recovery").await;
    assert_eq!(report_id_of(&payload), rig.id(3));
    device.stop().await;
}

/// A corrupt or truncated `defender-last-publish.json` does not stop the
/// publisher: it is read as "a report was just published", so the floor
/// holds from start-up, and it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_publish_floor_reads_as_just_published() {
    let mut rig = Rig::start("dd-corrupt-floor", 1000, false).await;
    std::fs::write(
        rig.state.path().join("defender-last-publish.json"),
        format!("{{\"{}\": 17", rig.thing),
    )
    .expect("a truncated state file");
    let started = Instant::now();
    let device = rig
        .device(Floor {
            min_interval_seconds: 3,
            reply_timeout_seconds: 60,
        })
        .await;
    assert_eq!(device.status.number("state.corrupt_files"), 1);
    assert!(!log_lines(&["WARN", "defender-last-publish.json", "corrupt"]).is_empty());
    device.submit(rig.id(1), rig.report(1)).await;
    assert_eq!(
        device.handle.flush(Duration::from_millis(200)).await,
        FlushOutcome::QueuedInOutbox,
        "the floor counts from start-up"
    );
    let (_, payload, at) = rig.observer.expect_next("the report after the floor").await;
    assert_eq!(report_id_of(&payload), rig.id(1));
    assert!(
        at - started >= Duration::from_millis(2900),
        "{:?}",
        at - started
    );
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(rig.state.path().join("defender-last-publish.json")).expect("read"),
    )
    .expect("the corrupt file was replaced");
    assert!(saved[rig.thing].as_u64().is_some());
    device.stop().await;
}
