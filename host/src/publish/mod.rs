//! Everything that leaves the process. The only module that opens network
//! connections.
//!
//! Transports (Greengrass IPC, MQTT) implement [`Transport`]: publish with an
//! acknowledgement, and subscribe. The Device Defender protocol and the durable
//! outbox sit above them and know nothing of sockets.

pub mod ipc;
pub mod outbox;

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
    /// Greengrass IPC client settings.
    pub ipc: ipc::IpcConfig,
}
