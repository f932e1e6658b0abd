//! The IPC RPC layer on top of event-stream frames: message types, flags,
//! the headers every frame carries, and the sizes of request frames.

use base64::Engine;

use super::frame::{Frame, Header};

pub const MESSAGE_TYPE: &str = ":message-type";
pub const MESSAGE_FLAGS: &str = ":message-flags";
pub const STREAM_ID: &str = ":stream-id";
pub const OPERATION: &str = "operation";
pub const MODEL_TYPE: &str = "service-model-type";
pub const CONTENT_TYPE: &str = ":content-type";
pub const VERSION: &str = ":version";
pub const JSON: &str = "application/json";
pub const PROTOCOL_VERSION: &str = "0.1.0";

/// `:message-type` values.
pub mod kind {
    pub const APPLICATION_MESSAGE: i32 = 0;
    pub const APPLICATION_ERROR: i32 = 1;
    pub const PING: i32 = 2;
    pub const PING_RESPONSE: i32 = 3;
    pub const CONNECT: i32 = 4;
    pub const CONNECT_ACK: i32 = 5;
    pub const PROTOCOL_ERROR: i32 = 6;
    pub const INTERNAL_ERROR: i32 = 7;
}

/// `:message-flags` bits.
pub mod flags {
    pub const CONNECTION_ACCEPTED: i32 = 0x1;
    pub const TERMINATE_STREAM: i32 = 0x2;
}

/// An operation: its name and request model type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub name: &'static str,
    pub request_model: &'static str,
}

macro_rules! operation {
    ($const:ident, $name:literal) => {
        pub const $const: Operation = Operation {
            name: concat!("aws.greengrass#", $name),
            request_model: concat!("aws.greengrass#", $name, "Request"),
        };
    };
}

operation!(PUBLISH_TO_IOT_CORE, "PublishToIoTCore");
operation!(SUBSCRIBE_TO_IOT_CORE, "SubscribeToIoTCore");
operation!(GET_CONFIGURATION, "GetConfiguration");
operation!(
    SUBSCRIBE_TO_CONFIGURATION_UPDATE,
    "SubscribeToConfigurationUpdate"
);
operation!(UPDATE_STATE, "UpdateState");
operation!(PUBLISH_TO_TOPIC, "PublishToTopic");

/// The three headers every frame carries.
pub fn base_headers(message_type: i32, message_flags: i32, stream_id: i32) -> Vec<Header> {
    vec![
        Header::int32(MESSAGE_TYPE, message_type),
        Header::int32(MESSAGE_FLAGS, message_flags),
        Header::int32(STREAM_ID, stream_id),
    ]
}

/// The Connect message.
pub fn connect_frame(svcuid: &str) -> Frame {
    let mut headers = base_headers(kind::CONNECT, 0, 0);
    headers.push(Header::string(VERSION, PROTOCOL_VERSION));
    Frame {
        headers,
        payload: serde_json::json!({ "authToken": svcuid })
            .to_string()
            .into_bytes(),
    }
}

/// The first message of a stream: an operation request. Header order
/// matches the official clients (greengrass.md §5).
pub fn request_frame(op: Operation, stream_id: i32, body: Vec<u8>) -> Frame {
    let mut headers = base_headers(kind::APPLICATION_MESSAGE, 0, stream_id);
    headers.push(Header::string(OPERATION, op.name));
    headers.push(Header::string(MODEL_TYPE, op.request_model));
    headers.push(Header::string(CONTENT_TYPE, JSON));
    Frame {
        headers,
        payload: body,
    }
}

/// The empty frame by which the client ends a stream the server left open.
pub fn close_frame(stream_id: i32) -> Frame {
    Frame {
        headers: base_headers(
            kind::APPLICATION_MESSAGE,
            flags::TERMINATE_STREAM,
            stream_id,
        ),
        payload: Vec::new(),
    }
}

/// The answer to a Ping: same payload, stream 0.
pub fn ping_response(payload: Vec<u8>) -> Frame {
    Frame {
        headers: base_headers(kind::PING_RESPONSE, 0, 0),
        payload,
    }
}

/// Size of a request frame for `op` with a body of `body_len` bytes; the
/// stream id is an `i32`, so its value does not change the size.
pub fn request_frame_len(op: Operation, body_len: usize) -> usize {
    let empty = request_frame(op, 1, Vec::new());
    empty.encoded_len() + body_len
}

/// The JSON body of a PublishToIoTCore request.
pub fn publish_body(topic: &str, payload: &[u8], qos: &str) -> Vec<u8> {
    serde_json::json!({
        "topicName": topic,
        "qos": qos,
        "payload": base64::engine::general_purpose::STANDARD.encode(payload),
    })
    .to_string()
    .into_bytes()
}

/// Size of the PublishToIoTCore frame (QoS 1) carrying `payload_len` raw
/// bytes to `topic`.
pub fn publish_frame_len(topic: &str, payload_len: usize) -> usize {
    // The body is `{"topicName":T,"qos":"1","payload":"B"}` where T is the
    // JSON-escaped topic and B the base64 text, 4 characters per 3 bytes.
    let skeleton = publish_body(topic, &[], "1").len();
    request_frame_len(PUBLISH_TO_IOT_CORE, skeleton + payload_len.div_ceil(3) * 4)
}

/// The largest raw payload a PublishToIoTCore frame for `topic` can carry
/// within `max_frame_bytes` (0 when not even an empty payload fits). Use it to
/// derive the report budget: on nucleus lite (10,000-byte frames) and a
/// Device Defender topic it is a little over 7 KB.
pub fn max_publish_payload(topic: &str, max_frame_bytes: usize) -> usize {
    let fixed = publish_frame_len(topic, 0);
    let Some(room) = max_frame_bytes.checked_sub(fixed) else {
        return 0;
    };
    // Base64 spends 4 characters per started group of 3 bytes, so whole
    // groups of 4 free characters carry 3 bytes each.
    room / 4 * 3
}

/// The error a unary call or subscription request got, read from an
/// ApplicationError frame; Java bodies carry `message`, lite bodies only
/// `_message`.
pub fn error_of(frame: &Frame) -> (String, String) {
    let body: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap_or_default();
    let error_type = frame
        .string(MODEL_TYPE)
        .map(|t| t.trim_start_matches("aws.greengrass#").to_owned())
        .or_else(|| {
            body.get("_errorCode")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .or_else(|| {
            body.get("error")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "UnknownError".to_owned());
    let message = ["message", "_message"]
        .iter()
        .find_map(|k| body.get(*k).and_then(|v| v.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&frame.payload).into_owned());
    (error_type, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frame_len_matches_the_encoded_frame() {
        for topic in [
            "t",
            "$aws/things/edge-01/defender/metrics/json",
            "quote\"and\\slash",
        ] {
            for n in [0, 1, 2, 3, 4, 100, 7000] {
                let payload = vec![b'x'; n];
                let frame =
                    request_frame(PUBLISH_TO_IOT_CORE, 7, publish_body(topic, &payload, "1"));
                assert_eq!(
                    publish_frame_len(topic, n),
                    frame.encoded_len(),
                    "{topic} {n}"
                );
            }
        }
    }

    #[test]
    fn max_publish_payload_is_the_largest_that_fits() {
        for topic in ["t", "$aws/things/edge-01/defender/metrics/json"] {
            for limit in [10_000, 9_999, 9_998, 9_997, 300] {
                let n = max_publish_payload(topic, limit);
                assert!(publish_frame_len(topic, n) <= limit, "{topic} {limit}");
                assert!(publish_frame_len(topic, n + 1) > limit, "{topic} {limit}");
            }
        }
        assert_eq!(max_publish_payload("t", 10), 0);
        // The figure quoted in greengrass.md §2: about 7.2 KB on lite.
        let dd = max_publish_payload("$aws/things/edge-01/defender/metrics/json", 10_000);
        assert!((7_000..7_400).contains(&dd), "{dd}");
    }

    #[test]
    fn reads_errors_from_both_nuclei() {
        let mut headers = base_headers(kind::APPLICATION_ERROR, flags::TERMINATE_STREAM, 1);
        headers.push(Header::string(
            MODEL_TYPE,
            "aws.greengrass#UnauthorizedError",
        ));
        let java = Frame {
            headers,
            payload: br#"{"_service":"aws.greengrass#GreengrassCoreIPC","_message":"m1","_errorCode":"UnauthorizedError","message":"not allowed"}"#.to_vec(),
        };
        assert_eq!(
            error_of(&java),
            ("UnauthorizedError".into(), "not allowed".into())
        );
        let lite = Frame {
            headers: base_headers(kind::APPLICATION_ERROR, 0, 1),
            payload: br#"{"_message":"bad qos","_errorCode":"InvalidArgumentsError"}"#.to_vec(),
        };
        assert_eq!(
            error_of(&lite),
            ("InvalidArgumentsError".into(), "bad qos".into())
        );
    }
}
