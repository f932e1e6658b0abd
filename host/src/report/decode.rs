//! Decoding: bytes are first parsed into a small generic tree (one parser per
//! format, both from serde), then one walker turns the tree into a
//! [`Report`], looking every key up in [`super::keys::KEYS`]. The tree keeps
//! duplicate keys, so they can be rejected instead of silently overwritten.
//!
//! Decoders take arbitrary bytes: every failure is a [`DecodeError`] naming
//! the key path as it appeared in the input, never a panic. Nesting depth is
//! bounded by the parsers (serde_json: 128, ciborium: 256) and by the schema
//! the walker follows.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Format;
use super::keys::{Key, KeyStyle};
use super::model::{
    Connection, ConnectionList, Header, Metrics, Port, PortList, Report, TcpConnections,
};
use crate::sample::{CustomMetricValue, NetworkStats};

/// Why bytes are not a report we can read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("not well-formed {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("{path}: unknown key {key:?}")]
    UnknownKey { path: String, key: String },
    #[error("{path}: key {key:?} appears more than once")]
    DuplicateKey { path: String, key: String },
    #[error("{path}: required key {key:?} is missing")]
    MissingKey { path: String, key: &'static str },
    #[error(
        "{path}: key {key:?} is a {found} name, but this report uses {expected} names; a report must use one key set"
    )]
    MixedKeys {
        path: String,
        key: String,
        found: KeyStyle,
        expected: KeyStyle,
    },
    #[error("{path}: expected {expected}, found {found}")]
    WrongType {
        path: String,
        expected: &'static str,
        found: String,
    },
    #[error("custom metric {path}: expected a one-element array, found {len} elements")]
    CustomMetricArity { path: String, len: usize },
    #[error(
        "custom metric {path}: expected an object with one of the keys number, number_list, string_list, ip_list, found {found}"
    )]
    CustomMetricShape { path: String, found: String },
}

/// Decodes a report. Both JSON formats accept either key set (Device
/// Defender does too) but reject a report that mixes them; CBOR likewise.
/// Trailing bytes after the report are an error.
pub fn decode(bytes: &[u8], format: Format) -> Result<Report, DecodeError> {
    let root = parse(bytes, format)?;
    Walker { style: None }.report(&root)
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json | Format::JsonShort => "JSON",
        Format::Cbor => "CBOR",
    }
}

fn parse(bytes: &[u8], format: Format) -> Result<Node, DecodeError> {
    let syntax = |message: String| DecodeError::Syntax {
        format: format_name(format),
        message,
    };
    match format {
        Format::Json | Format::JsonShort => {
            serde_json::from_slice(bytes).map_err(|e| syntax(e.to_string()))
        }
        Format::Cbor => {
            let mut rest = bytes;
            let node: Node = ciborium::from_reader(&mut rest).map_err(|e| syntax(e.to_string()))?;
            if !rest.is_empty() {
                return Err(syntax(format!(
                    "{} trailing bytes after the report",
                    rest.len()
                )));
            }
            Ok(node)
        }
    }
}

/// The generic tree both parsers produce.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Unsigned(u64),
    Negative(i64),
    Float(f64),
    Text(String),
    Bytes(usize),
    Array(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn describe(&self) -> String {
        match self {
            Node::Null => "null".to_owned(),
            Node::Bool(b) => format!("boolean {b}"),
            Node::Unsigned(n) => format!("number {n}"),
            Node::Negative(n) => format!("number {n}"),
            Node::Float(f) => format!("number {f}"),
            Node::Text(s) => format!("string {:?}", truncated(s)),
            Node::Bytes(len) => format!("a byte string of {len} bytes"),
            Node::Array(items) if items.len() == 1 => "an array of 1 element".to_owned(),
            Node::Array(items) => format!("an array of {} elements", items.len()),
            Node::Map(entries) if entries.len() == 1 => "an object with 1 key".to_owned(),
            Node::Map(entries) => format!("an object with {} keys", entries.len()),
        }
    }
}

/// Keeps error messages short when the input holds a huge string.
fn truncated(s: &str) -> String {
    const LIMIT: usize = 64;
    match s.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Upper bound on capacity reserved from a length the input claims, so a
/// CBOR header announcing 2^60 elements cannot make us allocate.
const MAX_PREALLOCATED: usize = 1024;

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a report value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Unsigned(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(if v >= 0 {
            Node::Unsigned(v as u64)
        } else {
            Node::Negative(v)
        })
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        u64::try_from(v)
            .map(Node::Unsigned)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::custom(format!("integer {v} is out of range"))),
        }
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Text(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Text(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Bytes(v.len()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Map(entries))
    }
}

/// Turns the tree into a report, remembering the key set of the first key
/// so that a second set is rejected.
struct Walker {
    style: Option<KeyStyle>,
}

/// The known keys of one object, in input order.
struct Object<'a> {
    path: String,
    entries: Vec<(Key, &'a Node)>,
}

impl<'a> Object<'a> {
    fn get(&self, key: Key) -> Option<&'a Node> {
        self.entries
            .iter()
            .find_map(|(k, node)| (*k == key).then_some(*node))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Walker {
    fn name(&self, key: Key) -> &'static str {
        key.name(self.style.unwrap_or(KeyStyle::Long))
    }

    fn path(&self, object: &Object<'_>, key: Key) -> String {
        join(&object.path, self.name(key))
    }

    /// Reads an object whose keys must all be among `allowed`.
    fn object<'a>(
        &mut self,
        node: &'a Node,
        path: String,
        allowed: &[Key],
    ) -> Result<Object<'a>, DecodeError> {
        let Node::Map(raw) = node else {
            return Err(DecodeError::WrongType {
                path: if path.is_empty() {
                    "report".to_owned()
                } else {
                    path
                },
                expected: "an object",
                found: node.describe(),
            });
        };
        let mut entries = Vec::with_capacity(raw.len().min(allowed.len()));
        for (name, value) in raw {
            let (key, style) = match Key::lookup(name) {
                Some(found) if allowed.contains(&found.0) => found,
                _ => {
                    return Err(DecodeError::UnknownKey {
                        path: if path.is_empty() {
                            "report".to_owned()
                        } else {
                            path
                        },
                        key: truncated(name),
                    });
                }
            };
            match self.style {
                None => self.style = Some(style),
                Some(expected) if expected != style => {
                    return Err(DecodeError::MixedKeys {
                        path: join(&path, name),
                        key: name.clone(),
                        found: style,
                        expected,
                    });
                }
                Some(_) => {}
            }
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(DecodeError::DuplicateKey {
                    path: join(&path, name),
                    key: name.clone(),
                });
            }
            entries.push((key, value));
        }
        Ok(Object { path, entries })
    }

    fn require<'a>(&self, object: &Object<'a>, key: Key) -> Result<&'a Node, DecodeError> {
        object.get(key).ok_or_else(|| DecodeError::MissingKey {
            path: if object.path.is_empty() {
                "report".to_owned()
            } else {
                object.path.clone()
            },
            key: self.name(key),
        })
    }

    fn unsigned(&self, object: &Object<'_>, key: Key) -> Result<u64, DecodeError> {
        match self.require(object, key)? {
            Node::Unsigned(n) => Ok(*n),
            other => Err(DecodeError::WrongType {
                path: self.path(object, key),
                expected: "a non-negative integer",
                found: other.describe(),
            }),
        }
    }

    fn port(&self, object: &Object<'_>, key: Key) -> Result<u32, DecodeError> {
        let n = self.unsigned(object, key)?;
        // Anything above u32 cannot be a port; 65536..u32::MAX is kept so
        // validation can name it.
        u32::try_from(n).map_err(|_| DecodeError::WrongType {
            path: self.path(object, key),
            expected: "a port number",
            found: format!("number {n}"),
        })
    }

    fn text(&self, node: &Node, path: String) -> Result<String, DecodeError> {
        match node {
            Node::Text(s) => Ok(s.clone()),
            other => Err(DecodeError::WrongType {
                path,
                expected: "a string",
                found: other.describe(),
            }),
        }
    }

    fn optional_text(&self, object: &Object<'_>, key: Key) -> Result<Option<String>, DecodeError> {
        object
            .get(key)
            .map(|node| self.text(node, self.path(object, key)))
            .transpose()
    }

    fn array<'a>(&self, object: &Object<'a>, key: Key) -> Result<&'a [Node], DecodeError> {
        match self.require(object, key)? {
            Node::Array(items) => Ok(items),
            other => Err(DecodeError::WrongType {
                path: self.path(object, key),
                expected: "an array",
                found: other.describe(),
            }),
        }
    }

    fn report(&mut self, root: &Node) -> Result<Report, DecodeError> {
        let top = self.object(
            root,
            String::new(),
            &[Key::Header, Key::Metrics, Key::CustomMetrics],
        )?;
        let header_node = self.require(&top, Key::Header)?;
        let header = self.header(header_node, self.path(&top, Key::Header))?;
        let metrics = top
            .get(Key::Metrics)
            .map(|node| self.metrics(node, self.path(&top, Key::Metrics)))
            .transpose()?;
        let custom_metrics = match top.get(Key::CustomMetrics) {
            Some(node) => self.custom_metrics(node, self.path(&top, Key::CustomMetrics))?,
            None => BTreeMap::new(),
        };
        Ok(Report {
            header,
            metrics,
            custom_metrics,
        })
    }

    fn header(&mut self, node: &Node, path: String) -> Result<Header, DecodeError> {
        let object = self.object(node, path, &[Key::ReportId, Key::Version])?;
        Ok(Header {
            report_id: self.unsigned(&object, Key::ReportId)?,
            version: self.text(
                self.require(&object, Key::Version)?,
                self.path(&object, Key::Version),
            )?,
        })
    }

    fn metrics(&mut self, node: &Node, path: String) -> Result<Metrics, DecodeError> {
        let object = self.object(
            node,
            path,
            &[
                Key::ListeningTcpPorts,
                Key::ListeningUdpPorts,
                Key::TcpConnections,
                Key::NetworkStats,
            ],
        )?;
        let tcp = self.port_list(&object, Key::ListeningTcpPorts)?;
        let udp = self.port_list(&object, Key::ListeningUdpPorts)?;
        let tc_node = self.require(&object, Key::TcpConnections)?;
        let tc = self.object(
            tc_node,
            self.path(&object, Key::TcpConnections),
            &[Key::EstablishedConnections],
        )?;
        let established = self.connection_list(&tc)?;
        let network_stats = object
            .get(Key::NetworkStats)
            .map(|node| self.network_stats(node, self.path(&object, Key::NetworkStats)))
            .transpose()?;
        Ok(Metrics {
            listening_tcp_ports: tcp,
            listening_udp_ports: udp,
            tcp_connections: TcpConnections {
                established_connections: established,
            },
            network_stats,
        })
    }

    fn port_list(&mut self, parent: &Object<'_>, key: Key) -> Result<PortList, DecodeError> {
        let node = self.require(parent, key)?;
        let object = self.object(node, self.path(parent, key), &[Key::Ports, Key::Total])?;
        let items = self.array(&object, Key::Ports)?;
        let list_path = self.path(&object, Key::Ports);
        let mut ports = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let entry = self.object(
                item,
                format!("{list_path}[{i}]"),
                &[Key::Port, Key::Interface],
            )?;
            ports.push(Port {
                port: self.port(&entry, Key::Port)?,
                interface: self.optional_text(&entry, Key::Interface)?,
            });
        }
        Ok(PortList {
            ports,
            total: self.unsigned(&object, Key::Total)?,
        })
    }

    fn connection_list(&mut self, tc: &Object<'_>) -> Result<ConnectionList, DecodeError> {
        let node = self.require(tc, Key::EstablishedConnections)?;
        let object = self.object(
            node,
            self.path(tc, Key::EstablishedConnections),
            &[Key::Connections, Key::Total],
        )?;
        let items = self.array(&object, Key::Connections)?;
        let list_path = self.path(&object, Key::Connections);
        let mut connections = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let entry = self.object(
                item,
                format!("{list_path}[{i}]"),
                &[Key::RemoteAddr, Key::LocalPort, Key::LocalInterface],
            )?;
            connections.push(Connection {
                remote_addr: self.text(
                    self.require(&entry, Key::RemoteAddr)?,
                    self.path(&entry, Key::RemoteAddr),
                )?,
                local_port: self.port(&entry, Key::LocalPort)?,
                local_interface: self.optional_text(&entry, Key::LocalInterface)?,
            });
        }
        Ok(ConnectionList {
            connections,
            total: self.unsigned(&object, Key::Total)?,
        })
    }

    fn network_stats(&mut self, node: &Node, path: String) -> Result<NetworkStats, DecodeError> {
        let object = self.object(
            node,
            path,
            &[Key::BytesIn, Key::BytesOut, Key::PacketsIn, Key::PacketsOut],
        )?;
        Ok(NetworkStats {
            bytes_in: self.unsigned(&object, Key::BytesIn)?,
            bytes_out: self.unsigned(&object, Key::BytesOut)?,
            packets_in: self.unsigned(&object, Key::PacketsIn)?,
            packets_out: self.unsigned(&object, Key::PacketsOut)?,
        })
    }

    fn custom_metrics(
        &mut self,
        node: &Node,
        path: String,
    ) -> Result<BTreeMap<String, CustomMetricValue>, DecodeError> {
        let Node::Map(entries) = node else {
            return Err(DecodeError::WrongType {
                path,
                expected: "an object",
                found: node.describe(),
            });
        };
        let mut metrics = BTreeMap::new();
        for (name, value) in entries {
            // Metric names are the author's, not keys of the table, so they
            // take no part in the key-set check.
            let metric_path = join(&path, name);
            if metrics.contains_key(name) {
                return Err(DecodeError::DuplicateKey {
                    path: metric_path,
                    key: name.clone(),
                });
            }
            let value = custom_value(value, &metric_path)?;
            metrics.insert(name.clone(), value);
        }
        Ok(metrics)
    }
}

fn custom_value(node: &Node, path: &str) -> Result<CustomMetricValue, DecodeError> {
    let shape_error = |found: String| DecodeError::CustomMetricShape {
        path: path.to_owned(),
        found,
    };
    let inner = match node {
        Node::Array(items) if items.len() == 1 => &items[0],
        Node::Array(items) => {
            return Err(DecodeError::CustomMetricArity {
                path: path.to_owned(),
                len: items.len(),
            });
        }
        // A bare object is the mistake Device Defender rejects as
        // "Malformed metrics report", so it gets its own wording.
        other => {
            return Err(DecodeError::WrongType {
                path: path.to_owned(),
                expected: "a one-element array",
                found: other.describe(),
            });
        }
    };
    let (kind, value) = match inner {
        Node::Map(entries) if entries.len() == 1 => (&entries[0].0, &entries[0].1),
        other => return Err(shape_error(other.describe())),
    };
    let value_path = format!("{path}[0].{kind}");
    match kind.as_str() {
        "number" => Ok(CustomMetricValue::Number(number(value, &value_path)?)),
        "number_list" => list(value, &value_path, number).map(CustomMetricValue::NumberList),
        "string_list" => list(value, &value_path, string).map(CustomMetricValue::StringList),
        "ip_list" => list(value, &value_path, string).map(CustomMetricValue::IpList),
        _ => Err(shape_error(format!("key {:?}", truncated(kind)))),
    }
}

fn list<T>(
    node: &Node,
    path: &str,
    item: fn(&Node, &str) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    match node {
        Node::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, node)| item(node, &format!("{path}[{i}]")))
            .collect(),
        other => Err(DecodeError::WrongType {
            path: path.to_owned(),
            expected: "an array",
            found: other.describe(),
        }),
    }
}

fn number(node: &Node, path: &str) -> Result<f64, DecodeError> {
    match node {
        Node::Unsigned(n) => Ok(*n as f64),
        Node::Negative(n) => Ok(*n as f64),
        Node::Float(f) => Ok(*f),
        other => Err(DecodeError::WrongType {
            path: path.to_owned(),
            expected: "a number",
            found: other.describe(),
        }),
    }
}

fn string(node: &Node, path: &str) -> Result<String, DecodeError> {
    match node {
        Node::Text(s) => Ok(s.clone()),
        other => Err(DecodeError::WrongType {
            path: path.to_owned(),
            expected: "a string",
            found: other.describe(),
        }),
    }
}
