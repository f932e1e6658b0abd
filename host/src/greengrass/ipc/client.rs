//! The public client: a cheap handle over shared state, a supervisor task that
//! keeps one connection alive, and the typed operations.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::connection::{Connection, Sink, Subscription};
use super::frame::Frame;
use super::rpc::{self, Operation, kind};
use super::updates::ConfigurationUpdates;
use super::{ComponentState, IpcError, IpcOptions, Qos, SOCKET_ENV, SVCUID_ENV};
use crate::backoff::{Backoff, jitter};
use crate::publish::{Message, Transport, TransportError};

/// Where the nucleus is and how to authenticate: the socket path and the
/// component's `SVCUID`.
#[derive(Clone)]
pub struct IpcEndpoint {
    pub socket_path: PathBuf,
    pub svcuid: String,
}

impl std::fmt::Debug for IpcEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token authenticates the component: keep it out of logs.
        f.debug_struct("IpcEndpoint")
            .field("socket_path", &self.socket_path)
            .field("svcuid", &"<redacted>")
            .finish()
    }
}

impl IpcEndpoint {
    /// Reads `AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT` and
    /// `SVCUID`; `None` unless both are set (the process is not a Greengrass
    /// component). The path is kept exactly as given: the Java nucleus hands
    /// out a relative path when the absolute one is too long for a socket
    /// address.
    pub fn from_env() -> Option<IpcEndpoint> {
        IpcEndpoint::from_lookup(|name| std::env::var_os(name))
    }

    /// [`IpcEndpoint::from_env`] over any variable lookup, so it can be
    /// tested without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Option<IpcEndpoint> {
        let socket_path = lookup(SOCKET_ENV).filter(|p| !p.is_empty())?;
        let svcuid = lookup(SVCUID_ENV)?
            .into_string()
            .ok()
            .filter(|s| !s.is_empty())?;
        Some(IpcEndpoint {
            socket_path: PathBuf::from(socket_path),
            svcuid,
        })
    }
}

/// A Greengrass IPC client. Cheap to clone; all clones share one connection,
/// which a background task re-establishes (with its subscriptions) when it
/// breaks. Dropping the last clone closes the connection.
#[derive(Clone)]
pub struct IpcClient {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for IpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcClient")
            .field("socket", &self.handle.shared.socket)
            .finish()
    }
}

struct Handle {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

struct Shared {
    socket: PathBuf,
    /// What is handed to connect(2): the path as given, or for a relative
    /// path a `/proc/self/fd/N/<name>` alias through a directory opened at
    /// the first connect, so that reconnects survive a later chdir.
    connect_path: PathBuf,
    /// Keeps the directory behind `connect_path` open.
    _socket_dir: Option<std::fs::File>,
    svcuid: String,
    options: IpcOptions,
    current: watch::Sender<Option<Arc<Connection>>>,
    subscriptions: Mutex<Vec<Arc<Subscription>>>,
    resubscribe: mpsc::UnboundedSender<Arc<Subscription>>,
    generation: AtomicU64,
    /// Why the connection was last lost or could not be re-established.
    last_problem: Mutex<Option<String>>,
}

impl Shared {
    fn set_problem(&self, problem: String) {
        *self.last_problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
    }

    fn count(&self, name: &str) {
        if let Some(status) = &self.options.status {
            status.add(name, 1);
        }
    }

    fn set_connected(&self, connected: bool) {
        if let Some(status) = &self.options.status {
            status.set("ipc.connected", connected.into());
        }
    }

    async fn establish(&self) -> Result<Arc<Connection>, IpcError> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let result = Connection::establish(
            &self.socket,
            &self.connect_path,
            &self.svcuid,
            &self.options,
            generation,
            self.resubscribe.clone(),
        )
        .await;
        if result.is_ok() {
            self.count("ipc.connects");
        }
        result
    }
}

impl IpcClient {
    /// Connects to the nucleus at `socket_path` and authenticates with
    /// `svcuid`, trying [`IpcOptions::connect_attempts`] times with backoff.
    /// The path is used exactly as given, so call this before any chdir.
    pub async fn connect(
        socket_path: &Path,
        svcuid: &str,
        options: IpcOptions,
    ) -> Result<IpcClient, IpcError> {
        let (connect_path, socket_dir) = stable_path(socket_path);
        let (resubscribe, resubscribe_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            socket: socket_path.to_owned(),
            connect_path,
            _socket_dir: socket_dir,
            svcuid: svcuid.to_owned(),
            current: watch::channel(None).0,
            subscriptions: Mutex::default(),
            resubscribe,
            generation: AtomicU64::new(0),
            last_problem: Mutex::default(),
            options,
        });
        let mut backoff = Backoff::new(shared.options.backoff_initial, shared.options.backoff_max);
        let attempts = shared.options.connect_attempts.max(1);
        let mut attempt = 1;
        let conn = loop {
            match shared.establish().await {
                Ok(conn) => break conn,
                Err(error) if attempt < attempts => {
                    let delay = backoff.next_delay();
                    warn!(socket = %socket_path.display(), %error, attempt, retry_in_ms = delay.as_millis() as u64, "cannot connect to the Greengrass nucleus; retrying");
                    shared.count("ipc.connect_failures");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => {
                    shared.count("ipc.connect_failures");
                    return Err(error);
                }
            }
        };
        info!(socket = %socket_path.display(), "connected to the Greengrass nucleus");
        shared.current.send_replace(Some(conn.clone()));
        shared.set_connected(true);
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(supervise(shared.clone(), conn, shutdown_rx, resubscribe_rx));
        Ok(IpcClient {
            handle: Arc::new(Handle { shared, shutdown }),
        })
    }

    /// Connects with [`IpcEndpoint::from_env`]; `None` when the process does
    /// not run as a Greengrass component.
    pub async fn from_env(options: IpcOptions) -> Option<Result<IpcClient, IpcError>> {
        let endpoint = IpcEndpoint::from_env()?;
        Some(IpcClient::connect(&endpoint.socket_path, &endpoint.svcuid, options).await)
    }

    /// The socket path as given.
    pub fn socket_path(&self) -> &Path {
        &self.handle.shared.socket
    }

    /// The largest raw payload a PublishToIoTCore to `topic` can carry within
    /// this client's [`IpcOptions::max_frame_bytes`].
    pub fn max_publish_payload(&self, topic: &str) -> usize {
        super::max_publish_payload(topic, self.handle.shared.options.max_frame_bytes)
    }

    /// Publishes to AWS IoT Core and waits for the nucleus to accept it. At
    /// QoS 1 the Java nucleus spools it while offline. If the connection
    /// breaks before the answer, the request is sent again on the next
    /// connection (QoS 1 allows duplicates) until the request timeout.
    pub async fn publish_to_iot_core(
        &self,
        topic: &str,
        payload: &[u8],
        qos: Qos,
    ) -> Result<(), IpcError> {
        let body = rpc::publish_body(topic, payload, qos.as_wire());
        let frame = self.call(rpc::PUBLISH_TO_IOT_CORE, body, None).await?.0;
        self.expect_ok(rpc::PUBLISH_TO_IOT_CORE, &frame).map(drop)
    }

    /// Subscribes to an AWS IoT Core topic filter at QoS 1. The subscription
    /// is restored after reconnects; dropping the receiver ends it.
    pub async fn subscribe_to_iot_core(
        &self,
        filter: &str,
    ) -> Result<mpsc::Receiver<Message>, IpcError> {
        let (tx, rx) = mpsc::channel(self.handle.shared.options.subscription_capacity.max(1));
        let body = serde_json::json!({ "topicName": filter, "qos": Qos::AtLeastOnce.as_wire() });
        self.subscribe(rpc::SUBSCRIBE_TO_IOT_CORE, body, Sink::IoTCore(tx))
            .await?;
        Ok(rx)
    }

    /// Reads the component's configuration at `key_path` (`[]` for all of
    /// it). The nucleus wraps a leaf as `{"<key>": leaf}`; the value is
    /// returned as the nucleus sent it.
    pub async fn get_configuration(
        &self,
        key_path: &[&str],
    ) -> Result<serde_json::Value, IpcError> {
        let op = rpc::GET_CONFIGURATION;
        let body = serde_json::json!({ "keyPath": key_path })
            .to_string()
            .into_bytes();
        let frame = self.call(op, body, None).await?.0;
        let mut response = self.expect_ok(op, &frame)?;
        match response.get_mut("value") {
            Some(value) => Ok(value.take()),
            None => Err(self.bad_response(op, "no `value` member".to_owned())),
        }
    }

    /// Watches the component's configuration under `key_path`; each
    /// receive gives the key paths changed since the last one, coalesced
    /// (read the values with [`IpcClient::get_configuration`]).
    pub async fn subscribe_to_configuration_update(
        &self,
        key_path: &[&str],
    ) -> Result<ConfigurationUpdates, IpcError> {
        let (tx, rx) = super::updates::channel();
        let body = serde_json::json!({ "keyPath": key_path });
        self.subscribe(
            rpc::SUBSCRIBE_TO_CONFIGURATION_UPDATE,
            body,
            Sink::Configuration(tx),
        )
        .await?;
        Ok(rx)
    }

    /// Reports the component state to the nucleus.
    pub async fn update_state(&self, state: ComponentState) -> Result<(), IpcError> {
        let op = rpc::UPDATE_STATE;
        let body = serde_json::json!({ "state": state.as_wire() })
            .to_string()
            .into_bytes();
        let frame = self.call(op, body, None).await?.0;
        self.expect_ok(op, &frame).map(drop)
    }

    /// Publishes bytes on Greengrass local publish/subscribe (a binary
    /// message), e.g. for local alarms other components listen to.
    pub async fn publish_to_topic(&self, topic: &str, payload: &[u8]) -> Result<(), IpcError> {
        let op = rpc::PUBLISH_TO_TOPIC;
        let body = serde_json::json!({
            "topic": topic,
            "publishMessage": { "binaryMessage": {
                "message": base64::engine::general_purpose::STANDARD.encode(payload)
            } }
        })
        .to_string()
        .into_bytes();
        let frame = self.call(op, body, None).await?.0;
        self.expect_ok(op, &frame).map(drop)
    }

    async fn subscribe(
        &self,
        op: Operation,
        body: serde_json::Value,
        sink: Sink,
    ) -> Result<(), IpcError> {
        let shared = &self.handle.shared;
        let sub = Arc::new(Subscription {
            op,
            body: body.to_string().into_bytes(),
            sink,
            established_on: AtomicU64::new(0),
        });
        let (frame, generation) = self.call(op, sub.body.clone(), Some(sub.clone())).await?;
        self.expect_ok(op, &frame)?;
        shared
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sub.clone());
        // If the connection changed while we registered, the supervisor's
        // resubscription round may have missed this one; ask it to check.
        let current = shared.current.borrow().as_ref().map(|c| c.generation);
        if current != Some(generation) {
            let _ = shared.resubscribe.send(sub);
        }
        Ok(())
    }

    /// Sends one request and waits for its first answer, across reconnects,
    /// until the request timeout. Returns the answer and the generation of
    /// the connection it came on.
    async fn call(
        &self,
        op: Operation,
        body: Vec<u8>,
        then: Option<Arc<Subscription>>,
    ) -> Result<(Frame, u64), IpcError> {
        let shared = &self.handle.shared;
        let frame_bytes = rpc::request_frame_len(op, body.len());
        if frame_bytes > shared.options.max_frame_bytes {
            return Err(IpcError::FrameTooLarge {
                socket: shared.socket.clone(),
                operation: op.name.to_owned(),
                frame_bytes,
                max: shared.options.max_frame_bytes,
            });
        }
        let started = Instant::now();
        let deadline = started + shared.options.request_timeout;
        let mut last = "no connection to the nucleus".to_owned();
        let mut current = shared.current.subscribe();
        loop {
            let conn = match tokio::time::timeout_at(deadline, live_connection(&mut current)).await
            {
                Ok(Some(conn)) => conn,
                Ok(None) => {
                    return Err(IpcError::ConnectionLost {
                        socket: shared.socket.clone(),
                        operation: op.name.to_owned(),
                        reason: "the client is shutting down".to_owned(),
                    });
                }
                Err(_) => {
                    // Say why there is no connection: the supervisor's last
                    // failure names the broken frame or refused connect.
                    let why = shared
                        .last_problem
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    return Err(self.timeout(op, started, why.unwrap_or(last)));
                }
            };
            let answer = match conn.open(op, body.clone(), then.clone()) {
                Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(answer) => answer.ok(),
                    Err(_) => {
                        return Err(self.timeout(
                            op,
                            started,
                            "no answer from the nucleus".to_owned(),
                        ));
                    }
                },
                None => None,
            };
            match answer {
                Some(frame) => return Ok((frame, conn.generation)),
                None => {
                    last = format!(
                        "connection lost: {}",
                        conn.death_reason().unwrap_or_else(|| "unknown".to_owned())
                    );
                    shared.count("ipc.retries");
                    warn!(socket = %shared.socket.display(), operation = op.name, reason = %last, "IPC request interrupted; sending it again on the next connection");
                }
            }
        }
    }

    fn timeout(&self, op: Operation, started: Instant, last: String) -> IpcError {
        IpcError::Timeout {
            socket: self.handle.shared.socket.clone(),
            operation: op.name.to_owned(),
            millis: started.elapsed().as_millis(),
            last,
        }
    }

    fn bad_response(&self, op: Operation, reason: String) -> IpcError {
        IpcError::BadResponse {
            socket: self.handle.shared.socket.clone(),
            operation: op.name.to_owned(),
            reason,
        }
    }

    /// The JSON body of a successful answer, or the error it carries.
    fn expect_ok(&self, op: Operation, frame: &Frame) -> Result<serde_json::Value, IpcError> {
        match frame.int32(rpc::MESSAGE_TYPE) {
            Some(kind::APPLICATION_MESSAGE) => {
                if frame.payload.is_empty() {
                    return Ok(serde_json::Value::Object(Default::default()));
                }
                serde_json::from_slice(&frame.payload)
                    .map_err(|e| self.bad_response(op, format!("body is not JSON: {e}")))
            }
            _ => {
                let (error_type, message) = rpc::error_of(frame);
                Err(IpcError::Service {
                    socket: self.handle.shared.socket.clone(),
                    operation: op.name.to_owned(),
                    error_type,
                    message,
                })
            }
        }
    }
}

/// Waits for a connection that is up; `None` once the client shuts down.
async fn live_connection(
    current: &mut watch::Receiver<Option<Arc<Connection>>>,
) -> Option<Arc<Connection>> {
    loop {
        if let Some(conn) = current.borrow_and_update().as_ref()
            && !conn.is_dead()
        {
            return Some(conn.clone());
        }
        current.changed().await.ok()?;
    }
}

/// For a relative socket path, opens its directory and returns a
/// `/proc/self/fd/N/<name>` alias, which resolves the same way after a chdir
/// and stays short (socket addresses are limited to 108 bytes, the very
/// reason the Java nucleus hands out relative paths). Falls back to the path
/// as given when that is not possible.
fn stable_path(socket: &Path) -> (PathBuf, Option<std::fs::File>) {
    use std::os::fd::AsRawFd;
    if socket.is_absolute() {
        return (socket.to_owned(), None);
    }
    let (Some(name), Some(parent)) = (socket.file_name(), socket.parent()) else {
        return (socket.to_owned(), None);
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    match std::fs::File::open(parent) {
        Ok(dir) => {
            let alias = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
            if alias.exists() {
                (alias, Some(dir))
            } else {
                (socket.to_owned(), None)
            }
        }
        Err(_) => (socket.to_owned(), None),
    }
}

/// Keeps one connection alive: on loss, reconnects with backoff and
/// re-establishes every subscription before requests use the new connection,
/// so replies to a retried publish are not missed.
async fn supervise(
    shared: Arc<Shared>,
    mut conn: Arc<Connection>,
    mut shutdown: watch::Receiver<bool>,
    mut resubscribe: mpsc::UnboundedReceiver<Arc<Subscription>>,
) {
    let socket = shared.socket.display().to_string();
    // Kept across losses: it starts over only when a connection stayed up
    // (a nucleus that accepts and drops us at once is not retried at the
    // first delay forever).
    let mut backoff = Backoff::new(shared.options.backoff_initial, shared.options.backoff_max);
    loop {
        let up_since = std::time::Instant::now();
        // Connected.
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    shared.current.send_replace(None);
                    shared.set_connected(false);
                    return;
                }
                reason = conn.died() => {
                    warn!(%socket, generation = conn.generation, %reason, "lost the connection to the Greengrass nucleus; reconnecting");
                    shared.set_problem(format!("connection lost: {reason}"));
                    break;
                }
                Some(sub) = resubscribe.recv() => {
                    if sub.established_on.load(Ordering::SeqCst) != conn.generation && !sub.sink.is_closed() {
                        resubscribe_all(&shared, &conn, vec![sub]).await;
                    }
                }
            }
        }
        shared.current.send_replace(None);
        shared.set_connected(false);
        shared.count("ipc.connection_losses");
        backoff.connection_lost_after(up_since.elapsed());
        let mut delay = backoff.next_delay();
        conn = loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match shared.establish().await {
                Ok(new) => {
                    let subs = {
                        let mut all = shared
                            .subscriptions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        all.retain(|s| !s.sink.is_closed());
                        all.clone()
                    };
                    resubscribe_all(&shared, &new, subs).await;
                    if !new.is_dead() {
                        break new;
                    }
                }
                Err(error) => {
                    shared.count("ipc.connect_failures");
                    shared.set_problem(error.to_string());
                    warn!(%socket, %error, retry_in_ms = delay.as_millis() as u64, "cannot reconnect to the Greengrass nucleus");
                }
            }
            delay = backoff.next_delay();
        };
        info!(%socket, generation = conn.generation, "reconnected to the Greengrass nucleus");
        shared.current.send_replace(Some(conn.clone()));
        shared.set_connected(true);
    }
}

/// Opens every subscription on `conn` at once and waits for the answers.
/// One that fails is retried later rather than given up.
async fn resubscribe_all(
    shared: &Arc<Shared>,
    conn: &Arc<Connection>,
    subs: Vec<Arc<Subscription>>,
) {
    let pending: Vec<_> = subs
        .into_iter()
        .filter_map(|sub| {
            let rx = conn.open(sub.op, sub.body.clone(), Some(sub.clone()))?;
            Some((sub, rx))
        })
        .collect();
    for (sub, rx) in pending {
        let problem = match tokio::time::timeout(shared.options.request_timeout, rx).await {
            Ok(Ok(frame)) if frame.int32(rpc::MESSAGE_TYPE) == Some(kind::APPLICATION_MESSAGE) => {
                shared.count("ipc.resubscribes");
                continue;
            }
            Ok(Ok(frame)) => {
                let (error_type, message) = rpc::error_of(&frame);
                format!("{error_type}: {message}")
            }
            // The connection died; the next one resubscribes everything.
            Ok(Err(_)) => return,
            Err(_) => "no answer".to_owned(),
        };
        shared.count("ipc.resubscribe_failures");
        let retry_in = jitter(shared.options.backoff_max.min(Duration::from_secs(5)));
        warn!(socket = %shared.socket.display(), operation = sub.op.name, %problem, retry_in_ms = retry_in.as_millis() as u64, "cannot restore a subscription; will try again");
        let again = shared.resubscribe.clone();
        tokio::spawn(async move {
            tokio::time::sleep(retry_in).await;
            let _ = again.send(sub);
        });
    }
}

impl IpcError {
    fn into_transport(self) -> TransportError {
        let peer = match &self {
            IpcError::Connect { socket, .. }
            | IpcError::ConnectRejected { socket, .. }
            | IpcError::Protocol { socket, .. }
            | IpcError::ConnectionLost { socket, .. }
            | IpcError::Service { socket, .. }
            | IpcError::Timeout { socket, .. }
            | IpcError::FrameTooLarge { socket, .. }
            | IpcError::BadResponse { socket, .. } => {
                format!("Greengrass IPC socket {}", socket.display())
            }
        };
        match self {
            IpcError::Timeout { millis, .. } => TransportError::Timeout {
                peer,
                seconds: (millis / 1000) as u64,
            },
            ref e if e.is_transient() => TransportError::Unreachable {
                peer,
                reason: e.to_string(),
            },
            e => TransportError::Refused {
                peer,
                reason: e.to_string(),
            },
        }
    }
}

impl Transport for IpcClient {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), TransportError> {
        self.publish_to_iot_core(topic, &payload, Qos::AtLeastOnce)
            .await
            .map_err(IpcError::into_transport)
    }

    async fn subscribe(&self, filter: &str) -> Result<mpsc::Receiver<Message>, TransportError> {
        self.subscribe_to_iot_core(filter)
            .await
            .map_err(IpcError::into_transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_needs_both_variables() {
        fn vars(
            socket: Option<&'static str>,
            token: Option<&'static str>,
        ) -> impl Fn(&str) -> Option<OsString> {
            move |name: &str| match name {
                SOCKET_ENV => socket.map(OsString::from),
                SVCUID_ENV => token.map(OsString::from),
                _ => None,
            }
        }
        let endpoint = IpcEndpoint::from_lookup(vars(Some("../../ipc.socket"), Some("TOKEN")))
            .expect("both set");
        // Kept exactly as given: relative paths are legitimate.
        assert_eq!(endpoint.socket_path, PathBuf::from("../../ipc.socket"));
        assert_eq!(endpoint.svcuid, "TOKEN");
        assert!(
            !format!("{endpoint:?}").contains("TOKEN"),
            "token kept out of logs"
        );
        assert!(IpcEndpoint::from_lookup(vars(Some("/s"), None)).is_none());
        assert!(IpcEndpoint::from_lookup(vars(None, Some("T"))).is_none());
        assert!(IpcEndpoint::from_lookup(vars(Some(""), Some("T"))).is_none());
        assert!(IpcEndpoint::from_lookup(vars(Some("/s"), Some(""))).is_none());
    }
}
