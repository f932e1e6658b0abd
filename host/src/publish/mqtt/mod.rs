//! Direct MQTT to AWS IoT Core (or a local broker), for devices without
//! Greengrass: rumqttc over rustls with mutual TLS.
//!
//! # Why the connection is driven this way
//!
//! rumqttc's `publish()` returns when the request is queued, not when it was
//! acknowledged, and gives no packet id. [`MqttTransport::publish`] resolves
//! only on the PUBACK: every request is queued under one lock together with a
//! waiter, and the connection task pairs each `Outgoing::Publish(pkid)` event
//! (emitted in queue order) with the oldest waiter, then the `PubAck(pkid)` with
//! that waiter.
//!
//! rumqttc keeps its session state in memory only and, on a fresh session
//! (CONNACK `session_present = 0`), silently drops what was in flight. So after
//! any connection error this module fails every outstanding publish with
//! [`TransportError::Unreachable`] and clears rumqttc's retransmission queue:
//! the durable outbox above owns retries, and no message is in two queues at
//! once. The persistent session (clean session off, stable client id) still
//! matters: the broker keeps our subscriptions and queues replies to us while
//! we are away. After a fresh session every subscription is made again.
//!
//! Reconnects back off exponentially from 1 s to 60 s with ±25 % jitter (IoT
//! Core allows one CONNECT per second per client id), and every failed attempt
//! is logged with the broker's address and the reason. The backoff starts over
//! only after a session stayed up a minute ([`crate::backoff`]): a broker that
//! accepts and drops us at once (a cloned image with our client id) sees ever
//! rarer attempts, not one per second.
//!
//! # Protocol state apart from I/O
//!
//! As in rumqttc itself, the state lives apart from the event loop: `state`
//! holds who waits for which acknowledgement, which subscriptions hold, and
//! the backoff, as transitions that do no I/O and are tested without a
//! broker. The connection task (`drive`) polls rumqttc, applies the
//! transition under the lock callers queue with, and does what it returns.

mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS,
    SubscribeReasonCode, TlsConfiguration,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Message, Transport, TransportError};
use crate::status::Status;
use state::{ClientState, Subscribed};

/// AWS IoT Core's payload limit; also the packet size rumqttc accepts in and
/// out (its default, 10 KiB, would refuse ordinary reports).
pub const MAX_PACKET_BYTES: usize = 128 * 1024;
/// The largest payload one QoS 1 PUBLISH to `topic` can carry within
/// [`MAX_PACKET_BYTES`] (fixed header, topic length and packet id included).
pub fn max_publish_payload(topic: &str) -> usize {
    MAX_PACKET_BYTES.saturating_sub(topic.len() + 8)
}

/// IoT Core allows at most 100 unacknowledged publishes per connection.
pub const MAX_INFLIGHT: u16 = 100;
/// ALPN protocol that lets IoT Core accept MQTT with mutual TLS on port 443.
pub const AWS_IOT_ALPN: &[u8] = b"x-amzn-mqtt-ca";

/// The `publish.mqtt` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MqttConfig {
    /// Broker host name, e.g. `abc123-ats.iot.eu-west-1.amazonaws.com`.
    pub endpoint: Option<String>,
    /// 8883 (MQTT over TLS) or 443 (with ALPN `x-amzn-mqtt-ca`).
    #[serde(deserialize_with = "crate::lenient::u16")]
    pub port: u16,
    /// MQTT client id; defaults to the thing name. Must stay stable: IoT Core
    /// ties the persistent session to it.
    pub client_id: Option<String>,
    /// PEM file with the device certificate (and chain).
    pub certificate_file: Option<PathBuf>,
    /// PEM file with the device's private key.
    pub private_key_file: Option<PathBuf>,
    /// PEM file with the root CA(s) that signed the broker's certificate.
    pub root_ca_file: Option<PathBuf>,
    /// Sends ALPN `x-amzn-mqtt-ca`; defaults to on for port 443 only.
    #[serde(deserialize_with = "crate::lenient::opt_bool")]
    pub alpn: Option<bool>,
    /// MQTT keep-alive, 30 to 1200 seconds.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub keep_alive_seconds: u64,
    /// How long a publish or subscribe waits for the broker's acknowledgement.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub ack_timeout_seconds: u64,
    /// TCP and TLS connect timeout.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub connect_timeout_seconds: u64,
    /// Connects without TLS when no certificate is configured. For local
    /// development brokers only; logged at warn.
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub allow_plain_tcp: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            endpoint: None,
            port: 8883,
            client_id: None,
            certificate_file: None,
            private_key_file: None,
            root_ca_file: None,
            alpn: None,
            keep_alive_seconds: 45,
            ack_timeout_seconds: 30,
            connect_timeout_seconds: 10,
            allow_plain_tcp: false,
        }
    }
}

impl MqttConfig {
    /// Checks the section; messages name the key.
    pub fn check(&self) -> Result<(), String> {
        if !(30..=1200).contains(&self.keep_alive_seconds) {
            return Err(format!(
                "key `publish.mqtt.keepAliveSeconds`: {} is outside 30..=1200 (AWS IoT Core's range)",
                self.keep_alive_seconds
            ));
        }
        if self.ack_timeout_seconds == 0 || self.connect_timeout_seconds == 0 {
            return Err(
                "keys `publish.mqtt.ackTimeoutSeconds` and `connectTimeoutSeconds` must be at least 1"
                    .to_owned(),
            );
        }
        let files = [
            &self.certificate_file,
            &self.private_key_file,
            &self.root_ca_file,
        ];
        let given = files.iter().filter(|f| f.is_some()).count();
        if given != 0 && given != 3 {
            return Err("keys `publish.mqtt.certificateFile`, `privateKeyFile` and `rootCaFile` go together: give all three or none".to_owned());
        }
        if given == 0 && !self.allow_plain_tcp && self.endpoint.is_some() {
            return Err("key `publish.mqtt`: mutual TLS needs `certificateFile`, `privateKeyFile` and `rootCaFile`; set `allowPlainTcp: true` only for a local development broker".to_owned());
        }
        Ok(())
    }
}

/// Why the MQTT transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("key `publish.mqtt.endpoint` is not set")]
    NoEndpoint,
    #[error("MQTT client id is empty: set `publish.mqtt.clientId` or the thing name")]
    NoClientId,
    #[error("invalid `publish.mqtt` configuration: {0}")]
    Config(String),
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} file {path} holds no usable {expected}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("TLS setup with certificate {path}: {source}")]
    Tls {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The MQTT implementation of [`Transport`]. Cheap to share behind an `Arc`;
/// dropping it (or calling [`MqttTransport::shutdown`]) stops the connection.
pub struct MqttTransport {
    client: AsyncClient,
    state: Arc<Mutex<ClientState>>,
    peer: String,
    ack_timeout: Duration,
    task: Mutex<Option<JoinHandle<()>>>,
    status: Status,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTransport")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl MqttTransport {
    /// Starts connecting to the broker in the background and returns at once;
    /// publishes fail with [`TransportError::Unreachable`] until connected.
    /// `default_client_id` is used when the configuration names none (the
    /// thing name). Must be called inside a tokio runtime.
    pub fn start(
        config: &MqttConfig,
        default_client_id: &str,
        status: Status,
    ) -> Result<MqttTransport, MqttError> {
        config.check().map_err(MqttError::Config)?;
        let host = config.endpoint.clone().ok_or(MqttError::NoEndpoint)?;
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id.to_owned());
        if client_id.is_empty() {
            return Err(MqttError::NoClientId);
        }
        let peer = format!("MQTT broker {host}:{}", config.port);

        let mut options = MqttOptions::new(client_id.clone(), host, config.port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(config.keep_alive_seconds))
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_inflight(MAX_INFLIGHT);
        match tls_configuration(config)? {
            Some(tls) => {
                options.set_transport(rumqttc::Transport::tls_with_config(tls));
            }
            None => {
                warn!(peer = %peer, "MQTT without TLS: allowPlainTcp is set; use only with a local development broker");
            }
        }

        // Room for a full window of publishes plus subscribes; callers queue
        // only while connected, and back off when this fills.
        let (client, mut eventloop) = AsyncClient::new(options, 2 * MAX_INFLIGHT as usize);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(config.connect_timeout_seconds);
        eventloop.set_network_options(network);

        let state = Arc::new(Mutex::new(ClientState::new()));
        status.set_text("mqtt.state", "connecting");
        info!(peer = %peer, client_id = %client_id, "MQTT connecting");
        let task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            state.clone(),
            peer.clone(),
            status.clone(),
        ));
        Ok(MqttTransport {
            client,
            state,
            peer,
            ack_timeout: Duration::from_secs(config.ack_timeout_seconds),
            task: Mutex::new(Some(task)),
            status,
        })
    }

    /// Whether a session with the broker is up right now.
    pub fn is_connected(&self) -> bool {
        lock(&self.state).connected
    }

    /// The last connection error, naming the broker, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.state).last_error.clone()
    }

    /// Disconnects and stops the connection task. Outstanding publishes fail
    /// with `Unreachable`; their entries stay in the outbox.
    pub async fn shutdown(&self) {
        let _ = self.client.try_disconnect();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            // Give the DISCONNECT a moment to go out, then stop the task.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while !task.is_finished() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            task.abort();
        }
        lock(&self.state).stopped();
        self.status.set("mqtt.connected", 0);
    }

    fn unreachable(&self, reason: impl Into<String>) -> TransportError {
        TransportError::Unreachable {
            peer: self.peer.clone(),
            reason: reason.into(),
        }
    }

    fn timeout(&self) -> TransportError {
        TransportError::Timeout {
            peer: self.peer.clone(),
            seconds: self.ack_timeout.as_secs(),
        }
    }
}

impl Drop for MqttTransport {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Transport for MqttTransport {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), TransportError> {
        if payload.len() > max_publish_payload(topic) {
            return Err(TransportError::Refused {
                peer: self.peer.clone(),
                reason: format!(
                    "a {} byte payload on {topic} exceeds the {MAX_PACKET_BYTES} byte packet limit",
                    payload.len()
                ),
            });
        }
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let mut payload = Some(payload);
        let receiver = loop {
            {
                let mut state = lock(&self.state);
                if !state.connected {
                    let reason = state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "not connected yet".to_owned());
                    return Err(self.unreachable(reason));
                }
                let body = payload.take().unwrap_or_default();
                match self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, body)
                {
                    Ok(()) => {
                        let (tx, rx) = oneshot::channel();
                        state.publish_queued(tx);
                        break rx;
                    }
                    Err(rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p)))
                        if rumqttc::valid_topic(topic) =>
                    {
                        // The request queue is full: wait for room below.
                        payload = Some(p.payload.to_vec());
                    }
                    Err(error) => {
                        return Err(TransportError::Refused {
                            peer: self.peer.clone(),
                            reason: format!("cannot publish to {topic}: {error}"),
                        });
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.timeout());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(self.unreachable(reason)),
            Ok(Err(_)) => Err(self.unreachable("connection task stopped")),
            Err(_) => Err(self.timeout()),
        }
    }

    async fn subscribe(&self, filter: &str) -> Result<mpsc::Receiver<Message>, TransportError> {
        if !rumqttc::valid_filter(filter) {
            return Err(TransportError::Refused {
                peer: self.peer.clone(),
                reason: format!("invalid topic filter {filter}"),
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let waiter = {
            let mut state = lock(&self.state);
            match state.subscribe(filter, tx) {
                Subscribed::Confirmed => None,
                Subscribed::Pending { waiter, request } => {
                    if request {
                        request_subscribe(&self.client, &mut state, filter);
                    }
                    Some(waiter)
                }
            }
        };
        let Some(waiter) = waiter else { return Ok(rx) };
        match tokio::time::timeout(self.ack_timeout, waiter).await {
            Ok(Ok(Ok(()))) => Ok(rx),
            Ok(Ok(Err(reason))) => Err(TransportError::Refused {
                peer: self.peer.clone(),
                reason,
            }),
            Ok(Err(_)) => Err(self.unreachable("connection task stopped")),
            Err(_) => match self.last_error() {
                Some(reason) if !self.is_connected() => Err(self.unreachable(reason)),
                _ => Err(self.timeout()),
            },
        }
    }
}

fn lock(state: &Mutex<ClientState>) -> MutexGuard<'_, ClientState> {
    // Every transition leaves the state consistent before it can panic, so
    // a poisoned lock is still usable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Queues a SUBSCRIBE to rumqttc, under the lock its packet id is paired
/// with the filter under.
fn request_subscribe(client: &AsyncClient, state: &mut ClientState, filter: &str) {
    match client.try_subscribe(filter, QoS::AtLeastOnce) {
        Ok(()) => state.subscribe_queued(filter),
        // Only a full queue can fail here (the filter was validated); the next
        // reconnect or subscribe call asks again.
        Err(error) => warn!(filter, %error, "MQTT subscribe could not be queued"),
    }
}

/// The connection task: polls rumqttc, hands each event to the state
/// machine ([`ClientState`]) under the lock callers queue with, and does
/// what the transition asks: subscribe again, count, log, wait before
/// reconnecting.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    state: Arc<Mutex<ClientState>>,
    peer: String,
    status: Status,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                let mut state = lock(&state);
                let connected = state.connected(connack.session_present, std::time::Instant::now());
                status.set("mqtt.connected", 1);
                status.add("mqtt.connects", 1);
                status.set_text("mqtt.state", "connected");
                info!(
                    peer = %peer,
                    session_present = connack.session_present,
                    "MQTT connected"
                );
                for filter in &connected.subscribe {
                    request_subscribe(&client, &mut state, filter);
                    if connected.fresh_session {
                        status.add("mqtt.resubscribed", 1);
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&state).publish_sent(pkid),
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if lock(&state).publish_acknowledged(ack.pkid) {
                    status.add("mqtt.acknowledged", 1);
                }
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => lock(&state).subscribe_sent(pkid),
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                match lock(&state).subscribe_acknowledged(ack.pkid, refused) {
                    Some(filter) if refused => {
                        warn!(peer = %peer, filter = %filter, "MQTT subscription refused")
                    }
                    Some(filter) => debug!(peer = %peer, filter = %filter, "MQTT subscribed"),
                    None => {}
                }
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let message = Message {
                    topic: publish.topic.clone(),
                    payload: publish.payload.to_vec(),
                };
                let dropped = lock(&state).received(&message);
                for _ in 0..dropped {
                    status.add("mqtt.dropped_incoming", 1);
                    warn!(topic = %message.topic, "MQTT subscriber is not keeping up: message dropped");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Our own shutdown: do not reconnect.
                lock(&state).stopped();
                status.set("mqtt.connected", 0);
                status.set_text("mqtt.state", "stopped");
                info!(peer = %peer, "MQTT disconnected");
                break;
            }
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => {
                // Every client handle is gone (shutdown): nothing left to do.
                break;
            }
            Err(error) => {
                let reason = describe(&error);
                let (was_connected, delay) = {
                    let mut state = lock(&state);
                    // rumqttc moved what was in flight or queued into its own
                    // retransmission queue; the outbox owns retries, so drop
                    // it here, under the lock callers queue with.
                    eventloop.clean();
                    eventloop.pending.clear();
                    state.connection_lost(&peer, &reason, std::time::Instant::now())
                };
                if was_connected {
                    status.set("mqtt.connected", 0);
                }
                status.add("mqtt.connect_failures", 1);
                status.set_text("mqtt.state", format!("disconnected: {reason}"));
                warn!(
                    peer = %peer,
                    error = %reason,
                    retry_in_ms = delay.as_millis() as u64,
                    "MQTT connection failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Names a connection error so that an operator sees which side refused.
/// rustls errors reach us wrapped in several layers (TLS, I/O, MQTT state),
/// so the text is inspected rather than the variant.
fn describe(error: &ConnectionError) -> String {
    let text = error.to_string();
    if text.contains("received fatal alert") {
        format!(
            "TLS handshake refused by the broker (is our client certificate signed by a CA it trusts?): {text}"
        )
    } else if text.contains("invalid peer certificate") {
        format!(
            "TLS: the broker's certificate failed verification against publish.mqtt.rootCaFile: {text}"
        )
    } else if let ConnectionError::ConnectionRefused(code) = error {
        format!("broker refused the connection: {code:?}")
    } else if let ConnectionError::NetworkTimeout = error {
        "connect timed out".to_owned()
    } else {
        text
    }
}

/// Builds the rustls configuration: the root CA, the device certificate and
/// key, ALPN for port 443. `None` for plain TCP (explicitly allowed only).
fn tls_configuration(config: &MqttConfig) -> Result<Option<TlsConfiguration>, MqttError> {
    let (Some(cert), Some(key), Some(ca)) = (
        &config.certificate_file,
        &config.private_key_file,
        &config.root_ca_file,
    ) else {
        return Ok(None);
    };
    // Both rumqttc and aws-sdk may link rustls; without one default provider
    // `ClientConfig::builder()` panics. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut roots = rustls::RootCertStore::empty();
    let ca_certs = read_certs("root CA", ca)?;
    for c in ca_certs {
        roots.add(c).map_err(|source| MqttError::Tls {
            path: ca.clone(),
            source,
        })?;
    }
    let chain = read_certs("certificate", cert)?;
    let key_pem = read("private key", key)?;
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| MqttError::Pem {
            what: "private key",
            path: key.clone(),
            expected: "PEM private key",
        })?;
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private_key)
        .map_err(|source| MqttError::Tls {
            path: cert.clone(),
            source,
        })?;
    if config.alpn.unwrap_or(config.port == 443) {
        tls.alpn_protocols = vec![AWS_IOT_ALPN.to_vec()];
    }
    Ok(Some(TlsConfiguration::Rustls(Arc::new(tls))))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|source| MqttError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, MqttError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(MqttError::Pem {
            what,
            path: path.to_owned(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_name_the_key() {
        let cases: [(MqttConfig, Option<&str>); 4] = [
            (MqttConfig::default(), None),
            (
                MqttConfig {
                    keep_alive_seconds: 10,
                    ..MqttConfig::default()
                },
                Some("keepAliveSeconds"),
            ),
            (
                MqttConfig {
                    certificate_file: Some("a.pem".into()),
                    ..MqttConfig::default()
                },
                Some("rootCaFile"),
            ),
            (
                MqttConfig {
                    endpoint: Some("broker".into()),
                    ..MqttConfig::default()
                },
                Some("allowPlainTcp"),
            ),
        ];
        for (config, expected) in cases {
            match (config.check(), expected) {
                (Ok(()), None) => {}
                (Err(message), Some(key)) => assert!(message.contains(key), "{message}"),
                (result, expected) => panic!("{result:?} but expected {expected:?}"),
            }
        }
    }
}
