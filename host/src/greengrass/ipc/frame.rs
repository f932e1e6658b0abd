//! The AWS event-stream frame: a length-prefixed message with two CRC-32s.
//!
//! ```text
//! total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload | message_crc u32
//! ```
//!
//! All integers are big-endian; `prelude_crc` covers the first 8 bytes and
//! `message_crc` everything before it. A header is `name_len u8 | name |
//! type u8 | value`. This module is pure (no I/O) so the codec can be tested
//! byte for byte; [`read_frame`] is the one async helper and only pulls bytes.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes before the headers: total length, headers length, prelude CRC.
pub const PRELUDE_LEN: usize = 12;
/// The smallest possible frame: prelude plus message CRC.
pub const MIN_FRAME_LEN: usize = PRELUDE_LEN + 4;
/// Header names are at most 127 bytes (aws-c-event-stream's limit).
pub const MAX_HEADER_NAME_LEN: usize = 127;
/// Headers take at most 128 KiB (aws-c-event-stream's limit).
pub const MAX_HEADERS_LEN: usize = 128 * 1024;

const TYPE_TRUE: u8 = 0;
const TYPE_FALSE: u8 = 1;
const TYPE_BYTE: u8 = 2;
const TYPE_INT16: u8 = 3;
const TYPE_INT32: u8 = 4;
const TYPE_INT64: u8 = 5;
const TYPE_BYTES: u8 = 6;
const TYPE_STRING: u8 = 7;
const TYPE_TIMESTAMP: u8 = 8;
const TYPE_UUID: u8 = 9;

/// A header value. IPC uses only [`HeaderValue::Int32`] and
/// [`HeaderValue::String`]; the other types are decoded so a peer that sends
/// them is not mistaken for a broken one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// One `name: value` header; order is kept as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: HeaderValue,
}

impl Header {
    /// An `i32` header.
    pub fn int32(name: &str, value: i32) -> Header {
        Header {
            name: name.to_owned(),
            value: HeaderValue::Int32(value),
        }
    }

    /// A string header.
    pub fn string(name: &str, value: &str) -> Header {
        Header {
            name: name.to_owned(),
            value: HeaderValue::String(value.to_owned()),
        }
    }

    /// Encoded size of this header.
    pub fn encoded_len(&self) -> usize {
        1 + self.name.len()
            + 1
            + match &self.value {
                HeaderValue::Bool(_) => 0,
                HeaderValue::Byte(_) => 1,
                HeaderValue::Int16(_) => 2,
                HeaderValue::Int32(_) => 4,
                HeaderValue::Int64(_) | HeaderValue::Timestamp(_) => 8,
                HeaderValue::Bytes(b) => 2 + b.len(),
                HeaderValue::String(s) => 2 + s.len(),
                HeaderValue::Uuid(_) => 16,
            }
    }
}

/// A decoded frame: headers in wire order and the raw payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| &h.value)
    }

    /// The `i32` header `name`, if present with that type.
    pub fn int32(&self, name: &str) -> Option<i32> {
        match self.header(name) {
            Some(HeaderValue::Int32(v)) => Some(*v),
            _ => None,
        }
    }

    /// The string header `name`, if present with that type.
    pub fn string(&self, name: &str) -> Option<&str> {
        match self.header(name) {
            Some(HeaderValue::String(v)) => Some(v),
            _ => None,
        }
    }

    /// Size of the encoded frame, CRCs included.
    pub fn encoded_len(&self) -> usize {
        MIN_FRAME_LEN + headers_len(&self.headers) + self.payload.len()
    }

    /// Encodes the frame, checking the limits a peer enforces.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let hl = headers_len(&self.headers);
        if hl > MAX_HEADERS_LEN {
            return Err(FrameError::HeadersTooLong { len: hl });
        }
        let total = self.encoded_len();
        let total32 = u32::try_from(total).map_err(|_| FrameError::TooLarge {
            len: total as u64,
            max: u32::MAX as usize,
        })?;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&total32.to_be_bytes());
        out.extend_from_slice(&(hl as u32).to_be_bytes());
        let prelude_crc = crc32fast::hash(&out);
        out.extend_from_slice(&prelude_crc.to_be_bytes());
        for h in &self.headers {
            encode_header(h, &mut out)?;
        }
        out.extend_from_slice(&self.payload);
        let message_crc = crc32fast::hash(&out);
        out.extend_from_slice(&message_crc.to_be_bytes());
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }
}

fn headers_len(headers: &[Header]) -> usize {
    headers.iter().map(Header::encoded_len).sum()
}

fn encode_header(h: &Header, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if h.name.is_empty() || h.name.len() > MAX_HEADER_NAME_LEN {
        return Err(FrameError::BadHeader {
            reason: format!("header name `{}` must be 1 to 127 bytes", h.name),
        });
    }
    out.push(h.name.len() as u8);
    out.extend_from_slice(h.name.as_bytes());
    match &h.value {
        HeaderValue::Bool(true) => out.push(TYPE_TRUE),
        HeaderValue::Bool(false) => out.push(TYPE_FALSE),
        HeaderValue::Byte(v) => {
            out.push(TYPE_BYTE);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Int16(v) => {
            out.push(TYPE_INT16);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Int32(v) => {
            out.push(TYPE_INT32);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Int64(v) => {
            out.push(TYPE_INT64);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Bytes(b) => {
            out.push(TYPE_BYTES);
            out.extend_from_slice(&value_len(&h.name, b.len())?.to_be_bytes());
            out.extend_from_slice(b);
        }
        HeaderValue::String(s) => {
            out.push(TYPE_STRING);
            out.extend_from_slice(&value_len(&h.name, s.len())?.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        HeaderValue::Timestamp(v) => {
            out.push(TYPE_TIMESTAMP);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Uuid(u) => {
            out.push(TYPE_UUID);
            out.extend_from_slice(u);
        }
    }
    Ok(())
}

fn value_len(name: &str, len: usize) -> Result<u16, FrameError> {
    // aws-c-event-stream caps variable-length values at i16::MAX.
    if len > i16::MAX as usize {
        return Err(FrameError::BadHeader {
            reason: format!("value of header `{name}` is {len} bytes, more than 32767"),
        });
    }
    Ok(len as u16)
}

/// Why bytes from a peer are not a valid frame. Every variant means the
/// stream can no longer be trusted: the connection must be dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("frame length {len} is shorter than the 16-byte minimum")]
    TooShort { len: u32 },
    #[error("headers length {headers_len} does not fit a frame of {total_len} bytes")]
    BadHeadersLen { total_len: u32, headers_len: u32 },
    #[error("headers take {len} bytes, more than the 131072-byte limit")]
    HeadersTooLong { len: usize },
    #[error("prelude CRC mismatch: frame says {expected:08x}, bytes give {actual:08x}")]
    PreludeCrc { expected: u32, actual: u32 },
    #[error("message CRC mismatch: frame says {expected:08x}, bytes give {actual:08x}")]
    MessageCrc { expected: u32, actual: u32 },
    #[error("malformed header: {reason}")]
    BadHeader { reason: String },
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

/// The checked prelude of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prelude {
    pub total_len: u32,
    pub headers_len: u32,
}

/// Checks the 12-byte prelude before the rest of the frame is read, so a
/// corrupt or hostile length never makes us allocate.
pub fn decode_prelude(bytes: &[u8; PRELUDE_LEN], max_frame: usize) -> Result<Prelude, FrameError> {
    let total_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let headers_len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let expected = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let actual = crc32fast::hash(&bytes[..8]);
    // The CRC comes first: with garbage input it is the check that says what
    // actually happened, whereas a length check would report a random number.
    if expected != actual {
        return Err(FrameError::PreludeCrc { expected, actual });
    }
    if (total_len as usize) < MIN_FRAME_LEN {
        return Err(FrameError::TooShort { len: total_len });
    }
    if total_len as usize > max_frame {
        return Err(FrameError::TooLarge {
            len: total_len.into(),
            max: max_frame,
        });
    }
    if headers_len as usize > total_len as usize - MIN_FRAME_LEN {
        return Err(FrameError::BadHeadersLen {
            total_len,
            headers_len,
        });
    }
    if headers_len as usize > MAX_HEADERS_LEN {
        return Err(FrameError::HeadersTooLong {
            len: headers_len as usize,
        });
    }
    Ok(Prelude {
        total_len,
        headers_len,
    })
}

/// Decodes one whole frame held in `bytes` (exactly one frame).
pub fn decode(bytes: &[u8], max_frame: usize) -> Result<Frame, FrameError> {
    let prelude_bytes: &[u8; PRELUDE_LEN] = bytes
        .get(..PRELUDE_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let prelude = decode_prelude(prelude_bytes, max_frame)?;
    if bytes.len() != prelude.total_len as usize {
        return Err(FrameError::Truncated);
    }
    decode_body(prelude, bytes)
}

/// Decodes a frame whose prelude was already checked; `bytes` is the whole
/// frame, prelude included.
fn decode_body(prelude: Prelude, bytes: &[u8]) -> Result<Frame, FrameError> {
    let total = prelude.total_len as usize;
    let crc_at = total - 4;
    let expected = u32::from_be_bytes([
        bytes[crc_at],
        bytes[crc_at + 1],
        bytes[crc_at + 2],
        bytes[crc_at + 3],
    ]);
    let actual = crc32fast::hash(&bytes[..crc_at]);
    if expected != actual {
        return Err(FrameError::MessageCrc { expected, actual });
    }
    let headers_end = PRELUDE_LEN + prelude.headers_len as usize;
    let headers = decode_headers(&bytes[PRELUDE_LEN..headers_end])?;
    Ok(Frame {
        headers,
        payload: bytes[headers_end..crc_at].to_vec(),
    })
}

fn decode_headers(mut b: &[u8]) -> Result<Vec<Header>, FrameError> {
    fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], FrameError> {
        if b.len() < n {
            return Err(FrameError::BadHeader {
                reason: format!("{what} runs past the end of the headers"),
            });
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    let mut headers = Vec::new();
    while !b.is_empty() {
        let name_len = take(&mut b, 1, "header name length")?[0] as usize;
        if name_len == 0 {
            return Err(FrameError::BadHeader {
                reason: "empty header name".to_owned(),
            });
        }
        let name = std::str::from_utf8(take(&mut b, name_len, "header name")?)
            .map_err(|_| FrameError::BadHeader {
                reason: "header name is not UTF-8".to_owned(),
            })?
            .to_owned();
        let kind = take(&mut b, 1, "header type")?[0];
        let value = match kind {
            TYPE_TRUE => HeaderValue::Bool(true),
            TYPE_FALSE => HeaderValue::Bool(false),
            TYPE_BYTE => HeaderValue::Byte(take(&mut b, 1, &name)?[0] as i8),
            TYPE_INT16 => HeaderValue::Int16(i16::from_be_bytes(array(take(&mut b, 2, &name)?))),
            TYPE_INT32 => HeaderValue::Int32(i32::from_be_bytes(array(take(&mut b, 4, &name)?))),
            TYPE_INT64 => HeaderValue::Int64(i64::from_be_bytes(array(take(&mut b, 8, &name)?))),
            TYPE_TIMESTAMP => {
                HeaderValue::Timestamp(i64::from_be_bytes(array(take(&mut b, 8, &name)?)))
            }
            TYPE_UUID => HeaderValue::Uuid(array(take(&mut b, 16, &name)?)),
            TYPE_BYTES | TYPE_STRING => {
                let len = u16::from_be_bytes(array(take(&mut b, 2, &name)?)) as usize;
                let raw = take(&mut b, len, &name)?;
                if kind == TYPE_BYTES {
                    HeaderValue::Bytes(raw.to_vec())
                } else {
                    HeaderValue::String(String::from_utf8(raw.to_vec()).map_err(|_| {
                        FrameError::BadHeader {
                            reason: format!("value of header `{name}` is not UTF-8"),
                        }
                    })?)
                }
            }
            other => {
                return Err(FrameError::BadHeader {
                    reason: format!("header `{name}` has unknown type {other}"),
                });
            }
        };
        headers.push(Header { name, value });
    }
    Ok(headers)
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(b);
    out
}

/// What reading the next frame from a stream produced.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the stream cleanly between frames.
    Closed,
    /// The bytes are not a valid frame.
    Frame(FrameError),
    /// The socket failed.
    Io(std::io::Error),
}

/// Reads one frame, checking the prelude (and so the size limit) before
/// reading the rest.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame: usize,
) -> Result<Frame, ReadError> {
    let mut prelude_bytes = [0u8; PRELUDE_LEN];
    let mut filled = 0;
    while filled < PRELUDE_LEN {
        match reader.read(&mut prelude_bytes[filled..]).await {
            Ok(0) if filled == 0 => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::Frame(FrameError::Truncated)),
            Ok(n) => filled += n,
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let prelude = decode_prelude(&prelude_bytes, max_frame).map_err(ReadError::Frame)?;
    let mut bytes = vec![0u8; prelude.total_len as usize];
    bytes[..PRELUDE_LEN].copy_from_slice(&prelude_bytes);
    match reader.read_exact(&mut bytes[PRELUDE_LEN..]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ReadError::Frame(FrameError::Truncated));
        }
        Err(e) => return Err(ReadError::Io(e)),
    }
    decode_body(prelude, &bytes).map_err(ReadError::Frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LIMIT: usize = 16 * 1024 * 1024;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn rpc_headers(kind: i32, flags: i32, stream: i32) -> Vec<Header> {
        vec![
            Header::int32(":message-type", kind),
            Header::int32(":message-flags", flags),
            Header::int32(":stream-id", stream),
        ]
    }

    /// (name, frame, total length, headers length, prelude CRC, message CRC,
    /// full hex when greengrass.md §5 gives it).
    type Vector = (
        &'static str,
        Frame,
        usize,
        u32,
        u32,
        u32,
        Option<&'static str>,
    );

    fn vectors() -> Vec<Vector> {
        let mut connect = rpc_headers(4, 0, 0);
        connect.push(Header::string(":version", "0.1.0"));
        let mut publish = rpc_headers(0, 0, 1);
        publish.push(Header::string(
            "operation",
            "aws.greengrass#PublishToIoTCore",
        ));
        publish.push(Header::string(
            "service-model-type",
            "aws.greengrass#PublishToIoTCoreRequest",
        ));
        publish.push(Header::string(":content-type", "application/json"));
        let mut response = rpc_headers(0, 2, 1);
        response.push(Header::string(":content-type", "application/json"));
        response.push(Header::string(
            "service-model-type",
            "aws.greengrass#PublishToIoTCoreResponse",
        ));
        vec![
            (
                "connect",
                Frame {
                    headers: connect,
                    payload: br#"{"authToken":"ABCDEFGHIJKLMNOP"}"#.to_vec(),
                },
                120,
                0x48,
                0xd487bdc5,
                0x928e2af7,
                Some(
                    "0000007800000048d487bdc50d3a6d6573736167652d7479706504000000040e3a6d6573736167652d666c61677304000000000a3a73747265616d2d69640400000000083a76657273696f6e070005302e312e307b2261757468546f6b656e223a224142434445464748494a4b4c4d4e4f50227d928e2af7",
                ),
            ),
            (
                "connect_ack",
                Frame {
                    headers: rpc_headers(5, 1, 0),
                    payload: Vec::new(),
                },
                71,
                0x37,
                0x374cfe3f,
                0xe237e27d,
                Some(
                    "0000004700000037374cfe3f0d3a6d6573736167652d7479706504000000050e3a6d6573736167652d666c61677304000000010a3a73747265616d2d69640400000000e237e27d",
                ),
            ),
            (
                "publish",
                Frame {
                    headers: publish,
                    payload: br#"{"topicName":"test/topic","qos":"1","payload":"eyJoZWxsbyI6IndvcmxkIn0="}"#
                        .to_vec(),
                },
                281,
                0xc0,
                0x58ea3b8f,
                0x9932a50c,
                None,
            ),
            (
                "java_response",
                Frame {
                    headers: response,
                    payload: b"{}".to_vec(),
                },
                167,
                0x95,
                0x2740fb24,
                0x5ea5f0ec,
                None,
            ),
        ]
    }

    #[test]
    fn encodes_the_reference_vectors_byte_for_byte() {
        for (name, frame, len, hl, prelude_crc, message_crc, full) in vectors() {
            let bytes = frame.encode().expect(name);
            assert_eq!(bytes.len(), len, "{name}: length");
            assert_eq!(u32::from_be_bytes(array(&bytes[4..8])), hl, "{name}: hl");
            assert_eq!(
                u32::from_be_bytes(array(&bytes[8..12])),
                prelude_crc,
                "{name}: prelude CRC"
            );
            assert_eq!(
                u32::from_be_bytes(array(&bytes[len - 4..])),
                message_crc,
                "{name}: message CRC"
            );
            if let Some(full) = full {
                assert_eq!(hex(&bytes), full, "{name}: bytes");
            }
            assert_eq!(
                decode(&bytes, NO_LIMIT).expect(name),
                frame,
                "{name}: round trip"
            );
        }
    }

    #[test]
    fn crc_is_zlib_crc32() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf43926);
    }

    #[test]
    fn rejects_each_kind_of_corruption() {
        let (_, frame, ..) = vectors().remove(2);
        let good = frame.encode().expect("encode");
        let corrupt = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0x01;
            b
        };
        type Case = (&'static str, Vec<u8>, usize, fn(&FrameError) -> bool);
        let cases: Vec<Case> = vec![
            ("length bit", corrupt(3), NO_LIMIT, |e| {
                matches!(e, FrameError::PreludeCrc { .. })
            }),
            ("prelude crc", corrupt(9), NO_LIMIT, |e| {
                matches!(e, FrameError::PreludeCrc { .. })
            }),
            ("header byte", corrupt(20), NO_LIMIT, |e| {
                matches!(e, FrameError::MessageCrc { .. })
            }),
            ("payload byte", corrupt(250), NO_LIMIT, |e| {
                matches!(e, FrameError::MessageCrc { .. })
            }),
            ("message crc", corrupt(280), NO_LIMIT, |e| {
                matches!(e, FrameError::MessageCrc { .. })
            }),
            ("over the limit", good.clone(), 280, |e| {
                matches!(e, FrameError::TooLarge { len: 281, max: 280 })
            }),
            ("cut short", good[..200].to_vec(), NO_LIMIT, |e| {
                matches!(e, FrameError::Truncated)
            }),
            (
                "garbage",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                NO_LIMIT,
                |e| matches!(e, FrameError::PreludeCrc { .. }),
            ),
        ];
        for (name, bytes, limit, expected) in cases {
            let err = decode(&bytes, limit).expect_err(name);
            assert!(expected(&err), "{name}: got {err:?}");
        }
    }

    #[test]
    fn rejects_lengths_that_lie_even_with_a_valid_prelude_crc() {
        let prelude = |total: u32, hl: u32| {
            let mut b = [0u8; PRELUDE_LEN];
            b[..4].copy_from_slice(&total.to_be_bytes());
            b[4..8].copy_from_slice(&hl.to_be_bytes());
            let crc = crc32fast::hash(&b[..8]);
            b[8..].copy_from_slice(&crc.to_be_bytes());
            b
        };
        assert_eq!(
            decode_prelude(&prelude(15, 0), NO_LIMIT),
            Err(FrameError::TooShort { len: 15 })
        );
        assert_eq!(
            decode_prelude(&prelude(100, 85), NO_LIMIT),
            Err(FrameError::BadHeadersLen {
                total_len: 100,
                headers_len: 85
            })
        );
        assert!(decode_prelude(&prelude(100, 84), NO_LIMIT).is_ok());
        assert_eq!(
            decode_prelude(&prelude(0xffff_ffff, 0), 10_000),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 10_000
            })
        );
    }

    #[test]
    fn every_header_type_round_trips() {
        let frame = Frame {
            headers: vec![
                Header {
                    name: "t".into(),
                    value: HeaderValue::Bool(true),
                },
                Header {
                    name: "f".into(),
                    value: HeaderValue::Bool(false),
                },
                Header {
                    name: "b".into(),
                    value: HeaderValue::Byte(-3),
                },
                Header {
                    name: "s".into(),
                    value: HeaderValue::Int16(-300),
                },
                Header::int32("i", -70000),
                Header {
                    name: "l".into(),
                    value: HeaderValue::Int64(-5_000_000_000),
                },
                Header {
                    name: "by".into(),
                    value: HeaderValue::Bytes(vec![0, 1, 255]),
                },
                Header::string("str", "héllo"),
                Header {
                    name: "ts".into(),
                    value: HeaderValue::Timestamp(1_767_225_600_000),
                },
                Header {
                    name: "u".into(),
                    value: HeaderValue::Uuid([7; 16]),
                },
            ],
            payload: b"x".to_vec(),
        };
        let bytes = frame.encode().expect("encode");
        assert_eq!(bytes.len(), frame.encoded_len());
        assert_eq!(decode(&bytes, NO_LIMIT).expect("decode"), frame);
    }

    /// Differential check against the AWS-maintained codec: every frame we
    /// write, aws-smithy-eventstream reads back identically, and every frame
    /// it writes, we read identically.
    #[test]
    fn agrees_with_aws_smithy_eventstream() {
        use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
        use aws_smithy_types::event_stream::{
            Header as SHeader, HeaderValue as SValue, Message as SMessage,
        };
        for (name, frame, ..) in vectors() {
            let ours = frame.encode().expect(name);
            let theirs = read_message_from(&ours[..]).expect(name);
            assert_eq!(theirs.payload().as_ref(), &frame.payload[..], "{name}");
            let mut theirs_bytes = Vec::new();
            let mut message = SMessage::new(theirs.payload().clone());
            for h in &frame.headers {
                let value = match &h.value {
                    HeaderValue::Int32(v) => SValue::Int32(*v),
                    HeaderValue::String(s) => SValue::String(s.clone().into()),
                    other => panic!("vectors use only i32 and string headers, not {other:?}"),
                };
                message = message.add_header(SHeader::new(h.name.clone(), value));
            }
            write_message_to(&message, &mut theirs_bytes).expect(name);
            assert_eq!(theirs_bytes, ours, "{name}: same bytes");
            let names: Vec<&str> = theirs.headers().iter().map(|h| h.name().as_str()).collect();
            let expected: Vec<&str> = frame.headers.iter().map(|h| h.name.as_str()).collect();
            assert_eq!(names, expected, "{name}: header order");
        }
    }

    #[tokio::test]
    async fn reads_frames_split_across_many_small_reads() {
        let frames: Vec<Frame> = vectors().into_iter().map(|v| v.1).collect();
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend(f.encode().expect("encode"));
        }
        // A reader that hands out at most 3 bytes per read, like a slow socket.
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&stream).await.expect("write");
        });
        for f in &frames {
            let got = read_frame(&mut rx, NO_LIMIT).await.expect("frame");
            assert_eq!(&got, f);
        }
        writer.await.expect("writer");
        assert!(matches!(
            read_frame(&mut rx, NO_LIMIT).await,
            Err(ReadError::Closed)
        ));
    }
}
