//! A Greengrass IPC client: the component's line to the nucleus over its Unix
//! socket, for both the Java nucleus and nucleus lite.
//!
//! It knows the IPC protocol and nothing about Device Defender: publish to and
//! subscribe from AWS IoT Core, read and watch the component configuration,
//! report the component state, publish on local pub/sub. [`IpcClient`] also
//! implements [`crate::publish::Transport`].
//!
//! # Layers
//! - [`frame`]: the AWS event-stream frame codec (pure, byte-exact tests).
//! - `rpc`: the IPC RPC layer on top (message types, flags, stream ids).
//! - `connection`: one established connection: a reader task that routes
//!   frames to streams and a writer task that hands out stream ids in the
//!   order frames reach the socket (the nucleus requires previous + 1).
//! - `client`: the public handle, a supervisor task that reconnects with
//!   backoff and re-establishes subscriptions, and the typed operations.
//!
//! # Why our own frame codec rather than `aws-smithy-eventstream`
//! The format is small (a 12-byte prelude, typed headers, two CRC-32s) and
//! `crc32fast` is already a dependency. What we need from a codec differs from
//! what the SDK's codec, built for HTTP/2 event streams, offers: the frame
//! limit is per connection (nucleus lite and the C SDK stop at 10,000 bytes,
//! aws-smithy-eventstream hard-codes 16 MiB); the prelude must be checked
//! before the body is read so a hostile length never allocates; errors must
//! say which check failed (prelude CRC, message CRC, size) so logs name the
//! fault; and the size of a frame must be computable without encoding it, to
//! derive the report budget ([`max_publish_payload`]). Wrapping the SDK codec
//! would still leave all of that to us, plus a conversion layer. The risk of
//! a home-grown codec is covered by tests: the byte-exact vectors of
//! greengrass.md §5, corruption cases, and a differential test that
//! round-trips frames through aws-smithy-eventstream (a dev-dependency only);
//! the test nucleus (tests/nucleus) is itself checked against the official
//! Python client (awscrt's aws-c-event-stream).

mod client;
mod connection;
pub mod frame;
mod rpc;
mod updates;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{IpcClient, IpcEndpoint};
pub use connection::{decode_configuration_update, decode_iot_core_message};
pub use rpc::{error_of, max_publish_payload, publish_frame_len};
pub use updates::ConfigurationUpdates;

use crate::publish::IpcConfig;
use crate::status::Status;

/// Environment variable naming the nucleus IPC socket.
pub const SOCKET_ENV: &str = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT";
/// Environment variable holding the component's IPC token.
pub const SVCUID_ENV: &str = "SVCUID";

/// Nucleus lite and the C component SDK refuse frames above this size.
pub const LITE_MAX_FRAME_BYTES: usize = 10_000;
/// The default of [`IpcOptions::max_incoming_frame_bytes`] (`publish.ipc.maxIncomingFrameBytes`).
pub const DEFAULT_MAX_INCOMING_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// MQTT quality of service for PublishToIoTCore and SubscribeToIoTCore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos {
    AtMostOnce,
    #[default]
    AtLeastOnce,
}

impl Qos {
    /// The wire form: the Java nucleus accepts only the strings "0" and "1".
    pub fn as_wire(self) -> &'static str {
        match self {
            Qos::AtMostOnce => "0",
            Qos::AtLeastOnce => "1",
        }
    }
}

/// A component state for UpdateState.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentState {
    Running,
    Errored,
}

impl ComponentState {
    /// The wire form.
    pub fn as_wire(self) -> &'static str {
        match self {
            ComponentState::Running => "RUNNING",
            ComponentState::Errored => "ERRORED",
        }
    }
}

/// How the client behaves; [`IpcOptions::default`] suits both nuclei.
#[derive(Debug, Clone)]
pub struct IpcOptions {
    /// Deadline for one operation, reconnects and retries included.
    pub request_timeout: Duration,
    /// Deadline for one connect + handshake attempt.
    pub connect_timeout: Duration,
    /// How many times [`IpcClient::connect`] tries before giving up. Once
    /// connected, the client reconnects without limit.
    pub connect_attempts: u32,
    /// First reconnect delay; doubled after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Largest frame the client sends. Defaults to nucleus lite's 10,000 bytes
    /// so the same build works on both nuclei; the Java nucleus takes more.
    pub max_frame_bytes: usize,
    /// Largest frame accepted from the nucleus; a bigger one is treated as a
    /// broken peer. 2 MiB holds a GetConfiguration answer with large inline
    /// security profiles (over 1 MiB) and an IoT Core message of 128 KB in
    /// base64. Read into memory only after the prelude announced its size.
    pub max_incoming_frame_bytes: usize,
    /// Capacity of each IoT Core subscription's channel. The connection's
    /// reader never waits for a receiver (it also carries the answers the
    /// receiver may be waiting for): a message that finds the channel full
    /// is dropped, counted in `ipc.dropped_incoming` and logged.
    /// Configuration updates are coalesced instead and never dropped.
    pub subscription_capacity: usize,
    /// Where connection counters go (`ipc.*`), if anywhere.
    pub status: Option<Status>,
}

impl Default for IpcOptions {
    fn default() -> Self {
        IpcOptions {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            connect_attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            max_frame_bytes: LITE_MAX_FRAME_BYTES,
            max_incoming_frame_bytes: DEFAULT_MAX_INCOMING_FRAME_BYTES,
            subscription_capacity: 64,
            status: None,
        }
    }
}

impl From<&IpcConfig> for IpcOptions {
    /// The client options the `publish.ipc` section asks for.
    fn from(config: &IpcConfig) -> IpcOptions {
        IpcOptions {
            request_timeout: Duration::from_secs(config.request_timeout_seconds.max(1)),
            max_frame_bytes: config.max_frame_bytes,
            max_incoming_frame_bytes: config.max_incoming_frame_bytes,
            ..IpcOptions::default()
        }
    }
}

/// Why an IPC operation failed. Every message names the socket.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The socket could not be opened (nucleus not running, wrong path).
    #[error("cannot connect to Greengrass IPC socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The nucleus refused the Connect message, usually a wrong `SVCUID`.
    #[error("Greengrass nucleus at {socket} rejected the connection: {reason}")]
    ConnectRejected { socket: PathBuf, reason: String },
    /// The nucleus broke the protocol (bad CRC, oversized frame, unexpected
    /// message); the connection was dropped.
    #[error("Greengrass nucleus at {socket} broke the IPC protocol: {reason}")]
    Protocol { socket: PathBuf, reason: String },
    /// The connection broke; the request may or may not have reached the
    /// nucleus.
    #[error("connection to Greengrass IPC socket {socket} lost during {operation}: {reason}")]
    ConnectionLost {
        socket: PathBuf,
        operation: String,
        reason: String,
    },
    /// The nucleus answered with an error (UnauthorizedError, ServiceError...).
    #[error("{operation} on {socket} failed with {error_type}: {message}")]
    Service {
        socket: PathBuf,
        operation: String,
        error_type: String,
        message: String,
    },
    /// No answer within [`IpcOptions::request_timeout`].
    #[error("{operation} on {socket} got no answer within {millis} ms (last problem: {last})")]
    Timeout {
        socket: PathBuf,
        operation: String,
        millis: u128,
        last: String,
    },
    /// The request would exceed [`IpcOptions::max_frame_bytes`]; never sent.
    #[error(
        "{operation} request for {socket} needs a {frame_bytes}-byte frame, above the {max}-byte limit"
    )]
    FrameTooLarge {
        socket: PathBuf,
        operation: String,
        frame_bytes: usize,
        max: usize,
    },
    /// The answer did not have the documented shape.
    #[error("{operation} on {socket} returned an unexpected answer: {reason}")]
    BadResponse {
        socket: PathBuf,
        operation: String,
        reason: String,
    },
}

impl IpcError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            IpcError::Connect { .. }
            | IpcError::ConnectRejected { .. }
            | IpcError::Protocol { .. }
            | IpcError::ConnectionLost { .. }
            | IpcError::Timeout { .. } => true,
            // ServiceError is what the Java spooler answers when full.
            IpcError::Service { error_type, .. } => error_type.ends_with("ServiceError"),
            IpcError::FrameTooLarge { .. } | IpcError::BadResponse { .. } => false,
        }
    }
}
