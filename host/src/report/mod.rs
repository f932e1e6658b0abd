//! The Device Defender metrics report: model, validation, trimming, JSON and
//! CBOR encoding. Pure: no I/O, not async.

pub mod validate;

use serde::{Deserialize, Serialize};

/// Device Defender throttles to one report per thing per 300 s.
pub const MIN_INTERVAL_SECONDS: u64 = 300;

/// AWS IoT Core's payload limit, 128 KB.
pub const DEFAULT_MAX_BYTES: usize = 128 * 1024;

/// How a report is put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
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
    #[serde(deserialize_with = "crate::config::lenient::usize")]
    pub max_bytes: usize,
    /// Seconds between reports; at least 300.
    #[serde(deserialize_with = "crate::config::lenient::u64")]
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
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.interval_seconds < MIN_INTERVAL_SECONDS {
            return Err(format!(
                "key `report.intervalSeconds`: {} is below Device Defender's minimum of {MIN_INTERVAL_SECONDS} seconds",
                self.interval_seconds
            ));
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
