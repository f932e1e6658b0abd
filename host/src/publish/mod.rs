//! Everything that leaves the process. The only module that opens network
//! connections.
//!
//! Transports (Greengrass IPC, MQTT) implement [`Transport`]: publish with an
//! acknowledgement, and subscribe. The Device Defender protocol and the durable
//! outbox sit above them and know nothing of sockets.

pub mod alarms;
#[cfg(any(feature = "firehose", feature = "securityhub"))]
mod aws;
pub mod defender;
pub mod firehose;
pub mod mqtt;
pub mod outbox;
pub mod securityhub;

use std::future::Future;

use serde::{Deserialize, Serialize};

/// A message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Why a publish or subscribe did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached or the connection broke; worth retrying.
    #[error("{peer} is unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    /// The peer answered and refused; retrying the same request will not help.
    #[error("{peer} refused the request: {reason}")]
    Refused { peer: String, reason: String },
    /// No acknowledgement within the deadline; the message may or may not have
    /// been delivered.
    #[error("{peer} did not acknowledge within {seconds} s")]
    Timeout { peer: String, seconds: u64 },
}

/// A way to reach AWS IoT Core: Greengrass IPC or direct MQTT.
pub trait Transport: Send + Sync {
    /// Publishes at QoS 1; resolves once the peer acknowledged the message
    /// (PUBACK, or the PublishToIoTCore response).
    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Subscribes at QoS 1 to a topic filter; messages arrive on the receiver.
    /// The transport restores the subscription after a reconnect.
    fn subscribe(
        &self,
        filter: &str,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<Message>, TransportError>> + Send;
}

/// The `publish` section of the configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PublishConfig {
    /// SIEM events to Splunk through Amazon Data Firehose.
    pub firehose: firehose::FirehoseConfig,
    /// Greengrass IPC client settings.
    pub ipc: IpcConfig,
    /// Which transport carries Device Defender reports.
    pub transport: TransportKind,
    /// Direct MQTT settings (`transport: mqtt`, or `auto` outside Greengrass).
    pub mqtt: mqtt::MqttConfig,
    /// Size limits of the durable outbox.
    pub outbox: outbox::OutboxLimits,
    /// The Device Defender protocol: publish floor, reply timeout.
    pub device_defender: defender::DefenderConfig,
    /// Local detection's alarms as AWS Security Hub findings.
    pub security_hub: securityhub::SecurityHubConfig,
}

impl PublishConfig {
    /// Checks that go beyond the shape of the section; messages name the key.
    pub fn check(&self) -> Result<(), String> {
        self.mqtt.check()?;
        if self.ipc.max_incoming_frame_bytes < 64 * 1024 {
            return Err(format!(
                "key `publish.ipc.maxIncomingFrameBytes`: {} is below 65536 (the nucleus's answers would not fit)",
                self.ipc.max_incoming_frame_bytes
            ));
        }
        self.outbox.check("publish.outbox")?;
        self.firehose.check()?;
        self.security_hub.check()?;
        if self.transport == TransportKind::Mqtt && self.mqtt.endpoint.is_none() {
            return Err(
                "key `publish.mqtt.endpoint`: required when `publish.transport` is `mqtt`"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// The `publish.ipc` section: settings of the Greengrass IPC client
/// ([`crate::greengrass::ipc::IpcOptions`] is made from it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct IpcConfig {
    /// Deadline for one IPC operation in seconds, retries included.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub request_timeout_seconds: u64,
    /// Largest frame sent to the nucleus; 10000 works on both nuclei.
    #[serde(deserialize_with = "crate::lenient::usize")]
    pub max_frame_bytes: usize,
    /// Largest frame accepted from the nucleus (a GetConfiguration answer
    /// with large inline profiles); at least 64 KiB.
    #[serde(deserialize_with = "crate::lenient::usize")]
    pub max_incoming_frame_bytes: usize,
}

impl Default for IpcConfig {
    /// The client's own defaults (a test in `greengrass::ipc` holds them
    /// together): 10 s, and nucleus lite's frame limit.
    fn default() -> Self {
        IpcConfig {
            request_timeout_seconds: 10,
            max_frame_bytes: 10_000,
            max_incoming_frame_bytes: 2 * 1024 * 1024,
        }
    }
}

/// The `publish.transport` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Greengrass IPC when running under a nucleus, else MQTT when
    /// `publish.mqtt.endpoint` is set, else none.
    #[default]
    Auto,
    Ipc,
    Mqtt,
    /// Reports are written locally only (`output.ndjson`).
    None,
}

impl TransportKind {
    /// Resolves `auto`: `under_greengrass` is whether the nucleus gave this
    /// process an IPC socket (`AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`).
    pub fn resolve(self, under_greengrass: bool, config: &PublishConfig) -> TransportKind {
        match self {
            TransportKind::Auto if under_greengrass => TransportKind::Ipc,
            TransportKind::Auto if config.mqtt.endpoint.is_some() => TransportKind::Mqtt,
            TransportKind::Auto => TransportKind::None,
            other => other,
        }
    }
}
