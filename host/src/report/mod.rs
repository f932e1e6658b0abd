//! The Device Defender metrics report: model, validation, trimming, JSON and
//! CBOR encoding. Pure: no I/O, not async; every function takes and returns
//! plain values, so the whole module is testable without a device.
//!
//! The path of a sample to the wire is [`prepare`]: [`build`] the typed
//! [`Report`], [`validate()`] it, [`encode`] it, and trim it to the byte
//! budget in a fixed order when it is too large. Key names live in one table
//! ([`keys::KEYS`]) read by both the encoder and the [`decode`]r, so the long
//! and short key sets cannot drift apart. docs/REPORT.md describes the
//! format, the rules and the trimming order.

mod decode;
mod encode;
pub mod keys;
mod model;
mod trim;
pub mod validate;

use serde::{Deserialize, Serialize};

pub use decode::{DecodeError, decode};
pub use encode::encode;
pub use keys::KeyStyle;
pub use model::{
    Connection, ConnectionList, Header, Metrics, Port, PortList, Report, TcpConnections, VERSION,
    build, next_report_id, to_sample,
};
pub use trim::{Prepared, Trimmed, fit};
pub use validate::ValidationError;

/// Checks every rule of `report` (docs/REPORT.md lists them) and returns the
/// first one broken. Run before anything is sent: Device Defender accepts
/// some broken reports and silently drops their data.
pub fn validate(report: &Report) -> Result<(), ValidationError> {
    validate::report(report)
}

/// Builds, validates, encodes and, if needed, trims the report for
/// `sample` so that it takes at most `max_bytes` in `format`.
pub fn prepare(
    sample: &crate::sample::Sample,
    report_id: u64,
    format: Format,
    max_bytes: usize,
) -> Result<Prepared, ValidationError> {
    let report = build(sample, report_id);
    validate(&report)?;
    fit(report, format, max_bytes)
}

/// Device Defender throttles to one report per thing per 300 s.
pub const MIN_INTERVAL_SECONDS: u64 = 300;

/// AWS IoT Core's payload limit, 128 KB.
pub const DEFAULT_MAX_BYTES: usize = 128 * 1024;

/// How a report is put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// JSON with the long key names (`header`, `report_id`...).
    Json,
    /// JSON with the short key names (`hed`, `rid`...).
    JsonShort,
    /// CBOR with the short key names; published to the `/cbor` topic.
    Cbor,
}

impl Format {
    /// The name in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::JsonShort => "json-short",
            Format::Cbor => "cbor",
        }
    }

    /// What the format is, in one line (`--help`).
    pub fn description(self) -> &'static str {
        match self {
            Format::Json => "JSON with the long key names (`header`, `report_id`...)",
            Format::JsonShort => "JSON with the short key names (`hed`, `rid`...)",
            Format::Cbor => "CBOR with the short key names; published to the `/cbor` topic",
        }
    }

    /// A name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::JsonShort => "short-key JSON",
            Format::Cbor => "CBOR",
        }
    }

    /// The last segment of the Device Defender topic for this format.
    pub fn topic_suffix(self) -> &'static str {
        match self {
            Format::Json | Format::JsonShort => "json",
            Format::Cbor => "cbor",
        }
    }
}

/// The `report` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ReportConfig {
    pub format: Format,
    /// The encoded report's size budget in bytes; over it, entries are trimmed.
    #[serde(deserialize_with = "crate::lenient::usize")]
    pub max_bytes: usize,
    /// Seconds between reports; at least 300 (or, for test and local
    /// brokers, `publish.deviceDefender.minIntervalSeconds` when that is
    /// lowered).
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub interval_seconds: u64,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            format: Format::Json,
            max_bytes: DEFAULT_MAX_BYTES,
            interval_seconds: MIN_INTERVAL_SECONDS,
        }
    }
}

impl ReportConfig {
    /// `publish_floor` is `publish.deviceDefender.minIntervalSeconds`: a
    /// report interval may go below Device Defender's 300 s only as far as
    /// the publish floor was lowered on purpose (tests, local brokers).
    pub(crate) fn check(&self, publish_floor: u64) -> Result<(), String> {
        let minimum = MIN_INTERVAL_SECONDS.min(publish_floor).max(1);
        if self.interval_seconds < minimum {
            return Err(if minimum == MIN_INTERVAL_SECONDS {
                format!(
                    "key `report.intervalSeconds`: {} is below Device Defender's minimum of {MIN_INTERVAL_SECONDS} seconds",
                    self.interval_seconds
                )
            } else {
                format!(
                    "key `report.intervalSeconds`: {} is below publish.deviceDefender.minIntervalSeconds ({minimum})",
                    self.interval_seconds
                )
            });
        }
        if self.max_bytes < 1024 {
            return Err(format!(
                "key `report.maxBytes`: {} is too small; at least 1024 bytes are needed",
                self.max_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_are_the_configuration_values() {
        for format in [Format::Json, Format::JsonShort, Format::Cbor] {
            let value = serde_json::to_value(format).expect("serializes");
            assert_eq!(value, format.name());
            let back: Format = serde_json::from_value(value).expect("deserializes");
            assert_eq!(back, format);
        }
    }
}
