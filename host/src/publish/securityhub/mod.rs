//! Alarms as AWS Security Hub findings, straight from the device: what the
//! Device Defender Detect integration did for fleets that had Detect.
//!
//! - [`asff`] maps an alarm, its clear or its invalidation onto one AWS
//!   Security Finding Format finding (pure): the alarm makes it `ACTIVE`,
//!   the end of the violation updates the same `Id` to `ARCHIVED`.
//! - [`SecurityHubSink`] stores each finding durably in its own outbox, then
//!   imports them with `BatchImportFindings`, at most 100 per call, retrying
//!   what failed for a passing reason and dropping (logged, counted) what
//!   Security Hub refuses for good.
//! - [`FindingsSink`] is what `run` holds: the sink when it is enabled,
//!   built in and started; else nowhere.
//!
//! The sink and its SDK crates are behind the cargo feature `securityhub`
//! (on by default); the mapping and [`FindingsSink`] are always built, and
//! without the feature an enabled section says "not built in". The feature
//! is named nowhere outside this folder. docs/SECURITYHUB.md has the IAM
//! policy, the Greengrass set-up and what the console shows.

pub mod asff;
mod findings;
#[cfg(feature = "securityhub")]
mod sink;

use serde::{Deserialize, Serialize};

use crate::publish::outbox::OutboxLimits;

pub use findings::FindingsSink;
#[cfg(feature = "securityhub")]
pub use sink::{SecurityHubError, SecurityHubHandle, SecurityHubSink};

/// Findings per `BatchImportFindings` call: Security Hub's limit.
pub const MAX_CALL_FINDINGS: usize = 100;

/// The `publish.securityHub` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SecurityHubConfig {
    /// Whether alarms become Security Hub findings.
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub enabled: bool,
    /// AWS region of the hub; when absent, the SDK's chain decides
    /// (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// The product the findings are imported into; when absent, the
    /// account's default product
    /// `arn:<partition>:securityhub:<region>:<account>:product/<account>/default`.
    pub product_arn: Option<String>,
    /// First retry delay in milliseconds; doubles per attempt, with jitter.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub retry_max_ms: u64,
    /// How long `shutdown` keeps trying to import what is waiting, in
    /// milliseconds; the rest stays on disk for the next start.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub shutdown_timeout_ms: u64,
    /// Disk bounds of the sink's own outbox (`<stateDir>/securityhub-outbox`).
    pub outbox: OutboxLimits,
}

impl Default for SecurityHubConfig {
    fn default() -> Self {
        SecurityHubConfig {
            enabled: false,
            region: None,
            product_arn: None,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            shutdown_timeout_ms: 5_000,
            outbox: OutboxLimits {
                max_bytes: 4 * 1024 * 1024,
                segment_bytes: 512 * 1024,
            },
        }
    }
}

impl SecurityHubConfig {
    /// Checks that go beyond the shape of the section; the message names the
    /// key.
    pub fn check(&self) -> Result<(), String> {
        if let Some(arn) = &self.product_arn {
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            let valid = parts.len() == 6
                && parts[0] == "arn"
                && parts[2] == "securityhub"
                && parts[5].starts_with("product/");
            if !valid {
                return Err(format!(
                    "key `publish.securityHub.productArn`: {arn:?} is not a Security Hub product ARN (arn:aws:securityhub:<region>:<account>:product/<company>/<product>)"
                ));
            }
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err(format!(
                "key `publish.securityHub.retryMaxMs`: {} must be at least retryBaseMs ({}), which must be above 0",
                self.retry_max_ms, self.retry_base_ms
            ));
        }
        if self.outbox.max_payload() < asff::MAX_FINDING_BYTES as u64 {
            return Err(format!(
                "key `publish.securityHub.outbox.segmentBytes`: {} cannot hold one finding ({} bytes)",
                self.outbox.segment_bytes,
                asff::MAX_FINDING_BYTES
            ));
        }
        self.outbox.check("publish.securityHub.outbox")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_accepts_greengrass_strings_and_names_bad_keys() {
        let c: SecurityHubConfig = serde_json::from_str(
            r#"{"enabled":"true","region":"eu-west-1","retryBaseMs":"100","retryMaxMs":1000.0}"#,
        )
        .expect("valid section");
        assert!(c.enabled);
        assert_eq!(c.retry_base_ms, 100);
        assert_eq!(c.check(), Ok(()));
        let e = serde_json::from_str::<SecurityHubConfig>(r#"{"productArm":"x"}"#)
            .expect_err("unknown key");
        assert!(e.to_string().contains("productArm"), "{e}");
        let bad_arn = SecurityHubConfig {
            product_arn: Some("arn:aws:iot:eu-west-1:123456789012:thing/x".to_owned()),
            ..SecurityHubConfig::default()
        };
        assert!(bad_arn.check().expect_err("bad").contains("productArn"));
        let good_arn = SecurityHubConfig {
            product_arn: Some(
                "arn:aws:securityhub:eu-west-1:123456789012:product/123456789012/default"
                    .to_owned(),
            ),
            ..SecurityHubConfig::default()
        };
        assert_eq!(good_arn.check(), Ok(()));
        let bad_retry = SecurityHubConfig {
            retry_base_ms: 0,
            ..SecurityHubConfig::default()
        };
        assert!(bad_retry.check().expect_err("bad").contains("retryMaxMs"));
    }
}
