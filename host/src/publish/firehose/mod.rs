//! SIEM events straight to Splunk: Splunk HEC events pushed to an Amazon Data
//! Firehose delivery stream with a Splunk destination.
//!
//! - [`events`] turns a sample into HEC events shaped like Device Defender's
//!   metrics export (pure).
//! - [`records`] packs event lines into Firehose records and calls (pure).
//! - [`FirehoseSink`] stores each sample's events durably, then delivers them
//!   with `PutRecordBatch`, resending only what failed.
//! - [`SiemSink`] is what `run` holds: the sink when it is configured and
//!   started, with the choice of which alerts go.
//!
//! The sink and the AWS SDK are behind the cargo feature `firehose` (on by
//! default); the pure parts and [`SiemSink`] are always built, and without
//! the feature a configured sink says "not built in". The feature is named
//! nowhere outside this folder.
//!
//! Delivery is at least once: a response lost after Firehose accepted a call,
//! or a restart between delivery and acknowledgement, sends events again.
//! Every event carries a stable `edge.event_id` so SPL can `dedup` them.
//! docs/SPLUNK.md describes the stream, the IAM role and the searches.

pub mod events;
pub mod records;
mod siem;
#[cfg(feature = "firehose")]
mod sink;

use serde::{Deserialize, Serialize};

use crate::publish::outbox::OutboxLimits;

pub use events::{EventOptions, HecEvent};
pub use siem::SiemSink;
#[cfg(feature = "firehose")]
pub use sink::{FirehoseError, FirehoseHandle, FirehoseSink};

/// Default record size budget: four 5 KB billing units, so a full record
/// costs exactly what its bytes do.
pub const DEFAULT_RECORD_BYTES: usize = 20_000;

/// The `publish.firehose` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct FirehoseConfig {
    /// Whether to send HEC events to Firehose at all.
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub enabled: bool,
    /// The delivery stream's name.
    pub delivery_stream: String,
    /// AWS region; when absent, the SDK's chain decides (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// HEC `source` of every event.
    pub source: String,
    /// HEC `sourcetype` of every event.
    pub sourcetype: String,
    /// HEC `index`; leave unset unless the HEC token may write to it.
    pub index: Option<String>,
    /// Upper bound of one record in bytes (Firehose bills per started 5 KB).
    #[serde(deserialize_with = "crate::lenient::usize")]
    pub record_bytes: usize,
    /// Longest time an event waits before it is sent, in milliseconds.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub flush_interval_ms: u64,
    /// Waiting bytes that trigger a send before the interval is up.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub flush_bytes: u64,
    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub retry_max_ms: u64,
    /// How long `shutdown` keeps trying to deliver what is waiting, in
    /// milliseconds; the rest stays on disk for the next start.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub shutdown_timeout_ms: u64,
    /// Disk bounds of the sink's own outbox (`<stateDir>/firehose-outbox`).
    pub outbox: OutboxLimits,
}

impl Default for FirehoseConfig {
    fn default() -> Self {
        FirehoseConfig {
            enabled: false,
            delivery_stream: String::new(),
            region: None,
            source: events::DEFAULT_SOURCE.to_owned(),
            sourcetype: events::DEFAULT_SOURCETYPE.to_owned(),
            index: None,
            record_bytes: DEFAULT_RECORD_BYTES,
            flush_interval_ms: 5_000,
            flush_bytes: 1024 * 1024,
            retry_base_ms: 200,
            retry_max_ms: 30_000,
            shutdown_timeout_ms: 5_000,
            outbox: OutboxLimits::default(),
        }
    }
}

impl FirehoseConfig {
    /// Checks that go beyond the shape of the section; the message names the
    /// key.
    pub fn check(&self) -> Result<(), String> {
        if self.enabled && self.delivery_stream.trim().is_empty() {
            return Err(
                "key `publish.firehose.deliveryStream`: required when Firehose is enabled"
                    .to_owned(),
            );
        }
        if !(1024..=records::MAX_RECORD_BYTES).contains(&self.record_bytes) {
            return Err(format!(
                "key `publish.firehose.recordBytes`: {} is outside 1024..={}",
                self.record_bytes,
                records::MAX_RECORD_BYTES
            ));
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err(format!(
                "key `publish.firehose.retryMaxMs`: {} must be at least retryBaseMs ({}), which must be above 0",
                self.retry_max_ms, self.retry_base_ms
            ));
        }
        if self.flush_interval_ms == 0 {
            return Err("key `publish.firehose.flushIntervalMs`: must be above 0".to_owned());
        }
        self.outbox.check("publish.firehose.outbox")
    }

    /// The HEC envelope settings.
    pub fn event_options(&self) -> EventOptions {
        EventOptions {
            source: self.source.clone(),
            sourcetype: self.sourcetype.clone(),
            index: self.index.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_accepts_greengrass_strings_and_names_bad_keys() {
        let c: FirehoseConfig = serde_json::from_str(
            r#"{"enabled":"true","deliveryStream":"siem","recordBytes":"10000","flushIntervalMs":1000.0}"#,
        )
        .expect("valid section");
        assert!(c.enabled);
        assert_eq!(c.record_bytes, 10_000);
        assert_eq!(c.check(), Ok(()));
        let e =
            serde_json::from_str::<FirehoseConfig>(r#"{"stream":"x"}"#).expect_err("unknown key");
        assert!(e.to_string().contains("stream"), "{e}");
        let too_big = FirehoseConfig {
            record_bytes: 2_000_000,
            ..FirehoseConfig::default()
        };
        assert!(
            too_big
                .check()
                .expect_err("too big")
                .contains("recordBytes")
        );
        let no_stream = FirehoseConfig {
            enabled: true,
            ..FirehoseConfig::default()
        };
        assert!(
            no_stream
                .check()
                .expect_err("no stream")
                .contains("deliveryStream")
        );
    }
}
