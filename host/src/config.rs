//! The one configuration schema, shared by the local JSON file and the
//! Greengrass component configuration (which arrives as JSON over IPC).
//!
//! Every section is a plain struct with `deny_unknown_fields`, so a typo is an
//! error naming the key rather than a silently ignored setting. Numbers and
//! booleans are also accepted as strings (`"300"`, `300.0`, `"true"`), because
//! Greengrass recipes and `{configuration:/...}` interpolation render them so
//! ([`crate::lenient`]). Each area owns the type of its own section; this
//! module only assembles them and adds the keys that belong to no single
//! area. No area imports this module.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::collect::CollectConfig;
use crate::detect::DetectionConfig;
use crate::health::HealthConfig;
use crate::plugin::PluginsConfig;
use crate::publish::PublishConfig;
use crate::report::ReportConfig;

/// The whole configuration. See docs/CONFIGURATION.md for every key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Thing name; defaults to `AWS_IOT_THING_NAME`, then the host name.
    pub thing_name: Option<String>,
    /// Where state that must survive restarts is kept.
    pub state_dir: PathBuf,
    /// `run` rewrites `status.json` and `net-run.json` at most this often
    /// (and at every report and at shutdown): each rewrite costs fsyncs,
    /// which wear an SD card.
    #[serde(deserialize_with = "crate::lenient::u64")]
    pub state_write_seconds: u64,
    /// Log filter (`info`, `debug`, `defender_edge=trace`...); `RUST_LOG` wins.
    pub log_level: String,
    pub collect: CollectConfig,
    pub report: ReportConfig,
    pub output: OutputConfig,
    pub plugins: PluginsConfig,
    pub detection: DetectionConfig,
    pub publish: PublishConfig,
    /// The agent's own health event, once per report period.
    pub health: HealthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            thing_name: None,
            state_dir: PathBuf::from("defender-edge-state"),
            state_write_seconds: 60,
            log_level: "info".to_owned(),
            collect: CollectConfig::default(),
            report: ReportConfig::default(),
            output: OutputConfig::default(),
            plugins: PluginsConfig::default(),
            detection: DetectionConfig::default(),
            publish: PublishConfig::default(),
            health: HealthConfig::default(),
        }
    }
}

/// Where `run` writes each report as one NDJSON line, besides publishing it,
/// and the alarms, plugin alerts and annotations it finds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OutputConfig {
    /// `"-"` for standard output, a file path to append to, or `null` for none.
    pub ndjson: Option<String>,
    /// The same for the event lines (`{"type": "alarm" | "alert" |
    /// "annotations", ...}`).
    pub events: Option<String>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            ndjson: Some("-".to_owned()),
            events: Some("-".to_owned()),
        }
    }
}

/// A configuration that could not be loaded; the message names the file and
/// the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration in {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Loads a configuration file (JSON).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_json(&text, &path.display().to_string())
    }

    /// Parses configuration JSON; `origin` names where it came from in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Config =
            serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError::Invalid {
                origin: origin.to_owned(),
                message: describe(&e),
            })?;
        config.check().map_err(|message| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Parses a configuration given as a JSON value (Greengrass IPC).
    pub fn from_value(value: serde_json::Value, origin: &str) -> Result<Config, ConfigError> {
        let config: Config =
            serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Invalid {
                origin: origin.to_owned(),
                message: describe(&e),
            })?;
        config.check().map_err(|message| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Checks that go beyond the shape of the document.
    fn check(&self) -> Result<(), String> {
        self.report
            .check(self.publish.device_defender.min_interval_seconds)?;
        self.detection.check()?;
        self.publish.check()?;
        self.health.check()?;
        if self.state_write_seconds == 0 {
            return Err("key `stateWriteSeconds`: must be at least 1".to_owned());
        }
        if let Some(name) = &self.thing_name {
            crate::report::validate::thing_name(name)
                .map_err(|reason| format!("key `thingName`: {reason}"))?;
        }
        Ok(())
    }
}

fn describe<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>) -> String {
    // A syntax error has no key: the path ends in `?` where the parser
    // stopped. The inner error gives the line and column.
    let path = e.path().to_string();
    let path = path.trim_end_matches('?').trim_end_matches('.');
    if path == "." || path.is_empty() {
        e.inner().to_string()
    } else {
        format!("key `{}`: {}", path, e.inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greengrass_rendered_values_are_accepted() {
        let config = Config::from_json(
            r#"{"publish": {"mqtt": {"port": "443", "alpn": ""}}}"#,
            "test",
        )
        .expect("valid");
        assert_eq!(config.publish.mqtt.port, 443);
        assert_eq!(config.publish.mqtt.alpn, None);
        let config =
            Config::from_json(r#"{"publish": {"mqtt": {"alpn": null}}}"#, "test").expect("valid");
        assert_eq!(config.publish.mqtt.alpn, None);
        let config =
            Config::from_json(r#"{"publish": {"mqtt": {"alpn": "true"}}}"#, "test").expect("valid");
        assert_eq!(config.publish.mqtt.alpn, Some(true));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            (
                r#"{"publish": {"mqtt": {"port": "70000"}}}"#,
                "publish.mqtt.port",
            ),
            (
                r#"{"publish": {"mqtt": {"alpn": "maybe"}}}"#,
                "publish.mqtt.alpn",
            ),
            (
                r#"{"publish": {"firehose": {"enabled": true}}}"#,
                "publish.firehose.deliveryStream",
            ),
        ] {
            let error = Config::from_json(text, "test")
                .expect_err("invalid")
                .to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }
}
