//! One established connection to the nucleus: the handshake, a writer task
//! that numbers streams in the order their first frames reach the socket, and
//! a reader task that routes every incoming frame to its stream.
//!
//! Stream rules kept here (greengrass.md §3): ids are 1, 2, 3... per
//! connection, never skipped or reused; the client closes (empty type-0 frame,
//! TERMINATE_STREAM) only streams the server left open, never one the server
//! ended; Pings are answered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use super::frame::{Frame, ReadError, read_frame};
use super::rpc::{self, Operation, flags, kind};
use super::updates::UpdateSender;
use super::{IpcError, IpcOptions};
use crate::publish::Message;
use crate::status::Status;

/// Where a subscription's events go. Neither ever makes the reader wait:
/// a full IoT Core channel loses the message (counted), configuration
/// updates are coalesced.
pub(super) enum Sink {
    IoTCore(mpsc::Sender<Message>),
    Configuration(UpdateSender),
}

impl Sink {
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Sink::IoTCore(tx) => tx.is_closed(),
            Sink::Configuration(tx) => tx.is_closed(),
        }
    }
}

/// A subscription the client keeps established across reconnects.
pub(super) struct Subscription {
    pub op: Operation,
    pub body: Vec<u8>,
    pub sink: Sink,
    /// Generation of the connection it is established on; 0 when none.
    pub established_on: AtomicU64,
}

/// What the writer task is asked to do.
enum Outgoing {
    /// Start a stream: assign the next id, remember `slot`, send the request.
    Open {
        op: Operation,
        body: Vec<u8>,
        slot: Slot,
    },
    /// Send a frame on an existing stream or stream 0.
    Frame(Frame),
}

/// The state of an open stream.
enum Slot {
    /// Waiting for the first answer; a subscription then receives the rest.
    Pending {
        reply: oneshot::Sender<Frame>,
        then: Option<Arc<Subscription>>,
    },
    Subscribed(Arc<Subscription>),
}

type Streams = Arc<Mutex<HashMap<i32, Slot>>>;

/// How long to wait before subscribing again when the nucleus ended a
/// subscription stream.
const RESUBSCRIBE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// An established, accepted connection. Dropping it closes the socket.
pub(super) struct Connection {
    /// Counts connections of one client (1, 2, ...), for logs and for
    /// knowing where a subscription is established.
    pub generation: u64,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    dead: watch::Sender<Option<String>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        kill(&self.dead, "closed by the client".to_owned());
    }
}

fn kill(dead: &watch::Sender<Option<String>>, reason: String) {
    dead.send_if_modified(|r| {
        if r.is_none() {
            *r = Some(reason);
            true
        } else {
            false
        }
    });
}

fn lock(streams: &Streams) -> std::sync::MutexGuard<'_, HashMap<i32, Slot>> {
    // Every update is a single map operation, so a poisoned lock still holds
    // a consistent map.
    streams.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    /// Connects to `socket` (`connect_path` is what is handed to the kernel,
    /// `socket` what errors name), sends Connect and waits for the ack.
    pub(super) async fn establish(
        socket: &Path,
        connect_path: &Path,
        svcuid: &str,
        options: &IpcOptions,
        generation: u64,
        resubscribe: mpsc::UnboundedSender<Arc<Subscription>>,
    ) -> Result<Arc<Connection>, IpcError> {
        let handshake = async {
            let mut stream =
                UnixStream::connect(connect_path)
                    .await
                    .map_err(|source| IpcError::Connect {
                        socket: socket.to_owned(),
                        source,
                    })?;
            let protocol = |reason: String| IpcError::Protocol {
                socket: socket.to_owned(),
                reason,
            };
            let connect = rpc::connect_frame(svcuid)
                .encode()
                .map_err(|e| protocol(e.to_string()))?;
            stream
                .write_all(&connect)
                .await
                .map_err(|e| IpcError::ConnectRejected {
                    socket: socket.to_owned(),
                    reason: format!("cannot send Connect: {e}"),
                })?;
            let ack = match read_frame(&mut stream, options.max_incoming_frame_bytes).await {
                Ok(ack) => ack,
                // Nucleus lite refuses by closing the socket.
                Err(ReadError::Closed) => {
                    return Err(IpcError::ConnectRejected {
                        socket: socket.to_owned(),
                        reason: "the nucleus closed the socket instead of acknowledging Connect (wrong SVCUID?)".to_owned(),
                    });
                }
                Err(ReadError::Io(e)) => {
                    return Err(IpcError::ConnectRejected {
                        socket: socket.to_owned(),
                        reason: format!("socket failed while waiting for ConnectAck: {e}"),
                    });
                }
                Err(ReadError::Frame(e)) => {
                    return Err(protocol(format!("instead of ConnectAck: {e}")));
                }
            };
            match (ack.int32(rpc::MESSAGE_TYPE), ack.int32(rpc::MESSAGE_FLAGS)) {
                (Some(kind::CONNECT_ACK), Some(f)) if f & flags::CONNECTION_ACCEPTED != 0 => {
                    Ok(stream)
                }
                // The Java nucleus refuses with an ack that lacks the flag.
                (Some(kind::CONNECT_ACK), _) => Err(IpcError::ConnectRejected {
                    socket: socket.to_owned(),
                    reason: "ConnectAck without CONNECTION_ACCEPTED (wrong SVCUID?)".to_owned(),
                }),
                (t, f) => Err(protocol(format!(
                    "expected ConnectAck, got message type {t:?} flags {f:?}"
                ))),
            }
        };
        let stream = tokio::time::timeout(options.connect_timeout, handshake)
            .await
            .map_err(|_| IpcError::ConnectRejected {
                socket: socket.to_owned(),
                reason: format!(
                    "no ConnectAck within {} ms",
                    options.connect_timeout.as_millis()
                ),
            })??;

        let (read_half, write_half) = stream.into_split();
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let (dead, _) = watch::channel(None);
        let streams: Streams = Arc::default();
        let conn = Arc::new(Connection {
            generation,
            outgoing: outgoing.clone(),
            dead: dead.clone(),
        });
        tokio::spawn(write_loop(
            write_half,
            outgoing_rx,
            streams.clone(),
            dead.clone(),
        ));
        tokio::spawn(
            Reader {
                socket: socket.to_owned(),
                generation,
                max_frame: options.max_incoming_frame_bytes,
                streams,
                outgoing,
                dead,
                resubscribe,
                status: options.status.clone(),
            }
            .run(read_half),
        );
        Ok(conn)
    }

    /// Starts a stream with a request; the receiver gets the first answer,
    /// and a subscription (`then`) the events after it. `None` when the
    /// connection is already dead.
    pub(super) fn open(
        &self,
        op: Operation,
        body: Vec<u8>,
        then: Option<Arc<Subscription>>,
    ) -> Option<oneshot::Receiver<Frame>> {
        let (reply, rx) = oneshot::channel();
        self.outgoing
            .send(Outgoing::Open {
                op,
                body,
                slot: Slot::Pending { reply, then },
            })
            .ok()?;
        Some(rx)
    }

    /// Whether the connection has failed or been closed.
    pub(super) fn is_dead(&self) -> bool {
        self.dead.borrow().is_some()
    }

    /// Why the connection died, if it did.
    pub(super) fn death_reason(&self) -> Option<String> {
        self.dead.borrow().clone()
    }

    /// Resolves with the reason once the connection dies.
    pub(super) async fn died(&self) -> String {
        let mut rx = self.dead.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "connection state lost".to_owned(),
        }
    }
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    streams: Streams,
    dead: watch::Sender<Option<String>>,
) {
    let mut dead_rx = dead.subscribe();
    let mut next_stream: i32 = 1;
    loop {
        let job = tokio::select! {
            _ = dead_rx.wait_for(Option::is_some) => break,
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        let frame = match job {
            Outgoing::Open { op, body, slot } => {
                // Ids are assigned here, in socket order, because the nucleus
                // rejects a stream id that is not the previous one plus one.
                if next_stream == i32::MAX {
                    kill(&dead, "stream ids exhausted; reconnecting".to_owned());
                    break;
                }
                let id = next_stream;
                next_stream += 1;
                // Registered before the request leaves, so the answer always
                // finds its stream.
                lock(&streams).insert(id, slot);
                rpc::request_frame(op, id, body)
            }
            Outgoing::Frame(frame) => frame,
        };
        let bytes = match frame.encode() {
            Ok(bytes) => bytes,
            Err(e) => {
                kill(&dead, format!("cannot encode a frame: {e}"));
                break;
            }
        };
        if let Err(e) = socket.write_all(&bytes).await {
            kill(&dead, format!("write failed: {e}"));
            break;
        }
    }
    // Pending callers learn of the loss when their reply senders drop.
    lock(&streams).clear();
    let _ = socket.shutdown().await;
}

struct Reader {
    socket: PathBuf,
    generation: u64,
    max_frame: usize,
    streams: Streams,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    dead: watch::Sender<Option<String>>,
    resubscribe: mpsc::UnboundedSender<Arc<Subscription>>,
    status: Option<Status>,
}

impl Reader {
    async fn run(self, mut socket: OwnedReadHalf) {
        let mut dead_rx = self.dead.subscribe();
        loop {
            let read = tokio::select! {
                _ = dead_rx.wait_for(Option::is_some) => break,
                read = read_frame(&mut socket, self.max_frame) => read,
            };
            let result = match read {
                Ok(frame) => self.route(frame).await,
                Err(ReadError::Closed) => Err("the nucleus closed the connection".to_owned()),
                Err(ReadError::Frame(e)) => Err(format!("broken frame from the nucleus: {e}")),
                Err(ReadError::Io(e)) => Err(format!("read failed: {e}")),
            };
            if let Err(reason) = result {
                kill(&self.dead, reason);
                break;
            }
        }
        lock(&self.streams).clear();
    }

    /// Routes one frame; an `Err` is a protocol violation that ends the
    /// connection.
    async fn route(&self, frame: Frame) -> Result<(), String> {
        let (Some(message_type), Some(message_flags), Some(stream_id)) = (
            frame.int32(rpc::MESSAGE_TYPE),
            frame.int32(rpc::MESSAGE_FLAGS),
            frame.int32(rpc::STREAM_ID),
        ) else {
            return Err(
                "frame lacks one of the i32 headers :message-type, :message-flags, :stream-id"
                    .to_owned(),
            );
        };
        if stream_id == 0 {
            return match message_type {
                kind::PING => {
                    let _ = self
                        .outgoing
                        .send(Outgoing::Frame(rpc::ping_response(frame.payload)));
                    Ok(())
                }
                kind::PING_RESPONSE => Ok(()),
                kind::PROTOCOL_ERROR | kind::INTERNAL_ERROR => Err(format!(
                    "the nucleus reported a {} error: {}",
                    if message_type == kind::PROTOCOL_ERROR {
                        "protocol"
                    } else {
                        "internal"
                    },
                    String::from_utf8_lossy(&frame.payload)
                )),
                other => Err(format!("unexpected message type {other} on stream 0")),
            };
        }
        if message_type != kind::APPLICATION_MESSAGE && message_type != kind::APPLICATION_ERROR {
            return Err(format!(
                "message type {message_type} on stream {stream_id}; only 0 and 1 belong on a stream"
            ));
        }
        let ended_by_server = message_flags & flags::TERMINATE_STREAM != 0;
        let slot = lock(&self.streams).remove(&stream_id);
        match slot {
            None => {
                // A late answer to a request that timed out, or an event after
                // the client closed the stream.
                debug!(socket = %self.socket.display(), stream_id, "frame for a stream no longer open");
            }
            Some(Slot::Pending { reply, then }) => {
                let subscribed = match then {
                    Some(sub) if message_type == kind::APPLICATION_MESSAGE && !ended_by_server => {
                        sub.established_on.store(self.generation, Ordering::SeqCst);
                        lock(&self.streams).insert(stream_id, Slot::Subscribed(sub.clone()));
                        Some(sub)
                    }
                    _ => None,
                };
                let delivered = reply.send(frame).is_ok();
                if !delivered && let Some(sub) = &subscribed {
                    sub.established_on.store(0, Ordering::SeqCst);
                    lock(&self.streams).remove(&stream_id);
                }
                // A unary answer on nucleus lite leaves the stream open, as does
                // an abandoned request: close it. Never close one the server
                // ended (the Java nucleus treats that as a protocol error).
                let keep_open = delivered && subscribed.is_some();
                if !ended_by_server && !keep_open {
                    self.close(stream_id);
                }
            }
            Some(Slot::Subscribed(sub)) => {
                if !ended_by_server {
                    lock(&self.streams).insert(stream_id, Slot::Subscribed(sub.clone()));
                }
                let open = if message_type == kind::APPLICATION_ERROR {
                    let (error_type, message) = rpc::error_of(&frame);
                    warn!(socket = %self.socket.display(), operation = sub.op.name, %error_type, %message, "error on a subscription stream");
                    true
                } else if frame.payload.is_empty() {
                    true
                } else {
                    self.deliver(&sub, &frame.payload)
                };
                if !open {
                    // The receiver was dropped: the subscription ends here.
                    lock(&self.streams).remove(&stream_id);
                    sub.established_on.store(0, Ordering::SeqCst);
                    if !ended_by_server {
                        self.close(stream_id);
                    }
                } else if ended_by_server {
                    warn!(socket = %self.socket.display(), operation = sub.op.name, stream_id, "the nucleus ended a subscription; subscribing again");
                    sub.established_on.store(0, Ordering::SeqCst);
                    // A pause, so a nucleus that keeps ending the subscription
                    // is not answered with a tight loop of requests.
                    let again = self.resubscribe.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                        let _ = again.send(sub);
                    });
                }
            }
        }
        Ok(())
    }

    fn close(&self, stream_id: i32) {
        let _ = self
            .outgoing
            .send(Outgoing::Frame(rpc::close_frame(stream_id)));
    }

    /// Hands an event to its receiver without waiting (the reader also
    /// carries the answers the receiver may be waiting for); false when the
    /// receiver is gone.
    fn deliver(&self, sub: &Subscription, payload: &[u8]) -> bool {
        match &sub.sink {
            Sink::IoTCore(tx) => match decode_iot_core_message(payload) {
                Ok(message) => match tx.try_send(message) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(message)) => {
                        if let Some(status) = &self.status {
                            status.add("ipc.dropped_incoming", 1);
                        }
                        warn!(socket = %self.socket.display(), topic = %message.topic, "IPC subscriber is not keeping up: message dropped");
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                },
                Err(reason) => {
                    warn!(socket = %self.socket.display(), %reason, "dropping an undecodable IoTCoreMessage");
                    !tx.is_closed()
                }
            },
            Sink::Configuration(tx) => match decode_configuration_update(payload) {
                Ok(key_path) => tx.send(key_path),
                Err(reason) => {
                    warn!(socket = %self.socket.display(), %reason, "dropping an undecodable ConfigurationUpdateEvents");
                    !tx.is_closed()
                }
            },
        }
    }
}

/// Decodes the body of a SubscribeToIoTCore message event.
pub fn decode_iot_core_message(payload: &[u8]) -> Result<Message, String> {
    let body: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let message = body.get("message").ok_or("no `message` member")?;
    let topic = message
        .get("topicName")
        .and_then(|t| t.as_str())
        .ok_or("no `message.topicName` string")?;
    let payload = match message.get("payload").and_then(|p| p.as_str()) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("`message.payload` is not base64: {e}"))?,
        None => Vec::new(),
    };
    Ok(Message {
        topic: topic.to_owned(),
        payload,
    })
}

/// Decodes the body of a configuration update event: the key path that changed.
pub fn decode_configuration_update(payload: &[u8]) -> Result<Vec<String>, String> {
    let body: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let path = body
        .get("configurationUpdateEvent")
        .and_then(|e| e.get("keyPath"))
        .and_then(|p| p.as_array())
        .ok_or("no `configurationUpdateEvent.keyPath` array")?;
    path.iter()
        .map(|k| {
            k.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("key path element {k} is not a string"))
        })
        .collect()
}
