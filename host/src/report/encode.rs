//! Encoding: one `Serialize` implementation per report type, parameterised by
//! the key style, drives both serde_json and ciborium. Keys come from
//! [`super::keys::KEYS`] only.
//!
//! The types are serialised as maps of exactly the present keys, so the
//! definite-length CBOR map headers ciborium writes are always right, and
//! `None` fields (wildcard interfaces, missing network stats) leave no key.

use std::io;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

use super::Format;
use super::keys::{Key, KeyStyle};
use super::model::{Connection, ConnectionList, Header, Metrics, Port, PortList, Report};
use crate::sample::{CustomMetricValue, NetworkStats};

impl Format {
    /// The key set this format uses.
    pub fn key_style(self) -> KeyStyle {
        match self {
            Format::Json => KeyStyle::Long,
            Format::JsonShort | Format::Cbor => KeyStyle::Short,
        }
    }
}

/// Encodes `report` in `format`. It does not validate: call
/// [`super::validate()`] first (or use [`super::prepare`]), since a report
/// with a non-finite custom metric number, say, has no faithful JSON form.
pub fn encode(report: &Report, format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(&Styled(report, format.key_style()), format, &mut out);
    out
}

/// Writes any styled report part in `format`.
pub(super) fn write<T: Serialize, W: io::Write>(value: &T, format: Format, out: W) {
    // Both writers fail only when the sink fails (ours never do: a Vec or a
    // byte counter) or when a map key is not a string (ours always are).
    let result = match format {
        Format::Json | Format::JsonShort => {
            serde_json::to_writer(out, value).map_err(|e| e.to_string())
        }
        Format::Cbor => ciborium::into_writer(value, out).map_err(|e| e.to_string()),
    };
    if let Err(error) = result {
        unreachable!("encoding a report into memory failed: {error}");
    }
}

/// The number of bytes `value` takes in `format`, without keeping them.
pub(super) fn encoded_len<T: Serialize>(value: &T, format: Format) -> usize {
    let mut counter = ByteCounter(0);
    write(value, format, &mut counter);
    counter.0
}

struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A report part together with the key set to write it with.
pub(super) struct Styled<'a, T>(pub &'a T, pub KeyStyle);

impl<T> Styled<'_, T> {
    fn key(&self, key: Key) -> &'static str {
        key.name(self.1)
    }
}

impl Serialize for Styled<'_, Report> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let report = self.0;
        let len = 1
            + usize::from(report.metrics.is_some())
            + usize::from(!report.custom_metrics.is_empty());
        let mut map = s.serialize_map(Some(len))?;
        map.serialize_entry(self.key(Key::Header), &Styled(&report.header, self.1))?;
        if let Some(metrics) = &report.metrics {
            map.serialize_entry(self.key(Key::Metrics), &Styled(metrics, self.1))?;
        }
        if !report.custom_metrics.is_empty() {
            map.serialize_entry(self.key(Key::CustomMetrics), &CustomMetrics(report))?;
        }
        map.end()
    }
}

impl Serialize for Styled<'_, Header> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry(self.key(Key::ReportId), &self.0.report_id)?;
        map.serialize_entry(self.key(Key::Version), &self.0.version)?;
        map.end()
    }
}

impl Serialize for Styled<'_, Metrics> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let metrics = self.0;
        let mut map = s.serialize_map(Some(3 + usize::from(metrics.network_stats.is_some())))?;
        map.serialize_entry(
            self.key(Key::ListeningTcpPorts),
            &Styled(&metrics.listening_tcp_ports, self.1),
        )?;
        map.serialize_entry(
            self.key(Key::ListeningUdpPorts),
            &Styled(&metrics.listening_udp_ports, self.1),
        )?;
        map.serialize_entry(
            self.key(Key::TcpConnections),
            &TcpConnectionsStyled(&metrics.tcp_connections.established_connections, self.1),
        )?;
        if let Some(stats) = &metrics.network_stats {
            map.serialize_entry(self.key(Key::NetworkStats), &Styled(stats, self.1))?;
        }
        map.end()
    }
}

impl Serialize for Styled<'_, PortList> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry(self.key(Key::Ports), &StyledSeq(&self.0.ports, self.1))?;
        map.serialize_entry(self.key(Key::Total), &self.0.total)?;
        map.end()
    }
}

impl Serialize for Styled<'_, Port> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let port = self.0;
        let mut map = s.serialize_map(Some(1 + usize::from(port.interface.is_some())))?;
        map.serialize_entry(self.key(Key::Port), &port.port)?;
        if let Some(interface) = &port.interface {
            map.serialize_entry(self.key(Key::Interface), interface)?;
        }
        map.end()
    }
}

struct TcpConnectionsStyled<'a>(&'a ConnectionList, KeyStyle);

impl Serialize for TcpConnectionsStyled<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(
            Key::EstablishedConnections.name(self.1),
            &Styled(self.0, self.1),
        )?;
        map.end()
    }
}

impl Serialize for Styled<'_, ConnectionList> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry(
            self.key(Key::Connections),
            &StyledSeq(&self.0.connections, self.1),
        )?;
        map.serialize_entry(self.key(Key::Total), &self.0.total)?;
        map.end()
    }
}

impl Serialize for Styled<'_, Connection> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let conn = self.0;
        let mut map = s.serialize_map(Some(2 + usize::from(conn.local_interface.is_some())))?;
        map.serialize_entry(self.key(Key::RemoteAddr), &conn.remote_addr)?;
        map.serialize_entry(self.key(Key::LocalPort), &conn.local_port)?;
        if let Some(interface) = &conn.local_interface {
            map.serialize_entry(self.key(Key::LocalInterface), interface)?;
        }
        map.end()
    }
}

impl Serialize for Styled<'_, NetworkStats> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let stats = self.0;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry(self.key(Key::BytesIn), &stats.bytes_in)?;
        map.serialize_entry(self.key(Key::BytesOut), &stats.bytes_out)?;
        map.serialize_entry(self.key(Key::PacketsIn), &stats.packets_in)?;
        map.serialize_entry(self.key(Key::PacketsOut), &stats.packets_out)?;
        map.end()
    }
}

/// A slice of report parts, each written with the same key set.
pub(super) struct StyledSeq<'a, T>(pub &'a [T], pub KeyStyle);

impl<'a, T> Serialize for StyledSeq<'a, T>
where
    Styled<'a, T>: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&Styled(item, self.1))?;
        }
        seq.end()
    }
}

/// `custom_metrics`: each value is a one-element array holding an object
/// with one key, which has no short form.
struct CustomMetrics<'a>(&'a Report);

impl Serialize for CustomMetrics<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let metrics = &self.0.custom_metrics;
        let mut map = s.serialize_map(Some(metrics.len()))?;
        for (name, value) in metrics {
            map.serialize_entry(name, &[CustomValue(value)])?;
        }
        map.end()
    }
}

pub(super) struct CustomValue<'a>(pub &'a CustomMetricValue);

impl Serialize for CustomValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match self.0 {
            CustomMetricValue::Number(n) => map.serialize_entry("number", &Number(*n))?,
            CustomMetricValue::NumberList(list) => {
                map.serialize_entry("number_list", &NumberSeq(list))?
            }
            CustomMetricValue::StringList(list) => map.serialize_entry("string_list", list)?,
            CustomMetricValue::IpList(list) => map.serialize_entry("ip_list", list)?,
        }
        map.end()
    }
}

/// Largest magnitude below which every integer is exactly an `f64`.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

/// A custom metric number. Whole numbers are written as integers (`3`, not
/// `3.0`): shorter, what the service's own examples show, and still decoded
/// to the same `f64`.
pub(super) struct Number(pub f64);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        // -0.0 stays a float so that it survives a round trip bit for bit.
        let whole = n.fract() == 0.0
            && n.abs() < EXACT_INTEGER_LIMIT
            && !(n == 0.0 && n.is_sign_negative());
        if whole {
            s.serialize_i64(n as i64)
        } else {
            s.serialize_f64(n)
        }
    }
}

struct NumberSeq<'a>(&'a [f64]);

impl Serialize for NumberSeq<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for n in self.0 {
            seq.serialize_element(&Number(*n))?;
        }
        seq.end()
    }
}
