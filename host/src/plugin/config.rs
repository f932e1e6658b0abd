//! The `plugins` configuration section. See docs/CONFIGURATION.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::lenient;

/// The `plugins` section of the configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PluginsConfig {
    /// The folder holding `<name>.wasm` files; `None` runs no plugins.
    pub dir: Option<PathBuf>,
    /// Watch `dir` and load added, replaced or removed plugins while running.
    #[serde(deserialize_with = "lenient::bool")]
    pub hot_reload: bool,
    /// Load `<name>.cwasm` artifacts from `dir` (precompiled by `defender-edge
    /// plugin compile --target`) instead of compiling `<name>.wasm`. wasmtime
    /// cannot validate precompiled code, so only set this when the folder's
    /// contents are verified by the deployment (Greengrass checks artifact
    /// digests) and writable by no one else.
    #[serde(deserialize_with = "lenient::bool")]
    pub trust_precompiled: bool,
    /// Settings per plugin, keyed by plugin name (the file stem, `_` read as
    /// `-`: `conn_limit` and `conn-limit` are one plugin, and naming it both
    /// ways is an error). A plugin in `dir` without an entry runs with the
    /// defaults.
    #[serde(deserialize_with = "settings_by_name")]
    pub settings: BTreeMap<String, PluginSettings>,
}

/// How one plugin runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PluginSettings {
    /// `false` keeps the plugin from loading although its file is present.
    #[serde(deserialize_with = "lenient::bool")]
    pub enabled: bool,
    /// Plugins run in ascending order; ties are broken by name.
    #[serde(deserialize_with = "lenient::u64")]
    pub order: u64,
    /// What happens to the report when the plugin fails.
    pub on_failure: FailurePolicy,
    /// Handed to the plugin's `init`; numbers and booleans are passed as text.
    #[serde(deserialize_with = "string_map")]
    pub config: BTreeMap<String, String>,
    pub limits: Limits,
    pub grants: Grants,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            enabled: true,
            order: 100,
            on_failure: FailurePolicy::Open,
            config: BTreeMap::new(),
            limits: Limits::default(),
            grants: Grants::default(),
        }
    }
}

/// What happens to the report when a plugin traps, times out, runs out of
/// memory, returns an error or invalid output, or is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailurePolicy {
    /// The sample passes on as it was before the plugin (enrichment, metrics).
    #[default]
    Open,
    /// The report is held back and counted (redaction or privacy filters).
    Closed,
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Limits {
    /// Linear memory cap in MiB.
    #[serde(deserialize_with = "lenient::u64")]
    pub memory_mib: u64,
    /// CPU budget of one `process` call.
    #[serde(deserialize_with = "lenient::u64")]
    pub call_timeout_ms: u64,
    /// CPU budget of `init`.
    #[serde(deserialize_with = "lenient::u64")]
    pub init_timeout_ms: u64,
    /// Bytes a plugin may hand to the host in one call: a log line, or the
    /// output of `process` (wasmtime counts lifted results too).
    #[serde(deserialize_with = "lenient::usize")]
    pub hostcall_bytes: usize,
    /// Longest list in the output: ports, connections, metric values,
    /// annotations, alert attributes.
    #[serde(deserialize_with = "lenient::usize")]
    pub max_list_entries: usize,
    /// Most custom metrics in the output sample.
    #[serde(deserialize_with = "lenient::usize")]
    pub max_custom_metrics: usize,
    /// Most alerts raised in one call.
    #[serde(deserialize_with = "lenient::usize")]
    pub max_alerts: usize,
    /// Longest string in the output (annotation values, alert messages).
    #[serde(deserialize_with = "lenient::usize")]
    pub max_string_bytes: usize,
    /// Failures within `failure_window_secs` that disable the plugin.
    #[serde(deserialize_with = "lenient::u64")]
    pub max_failures: u64,
    #[serde(deserialize_with = "lenient::u64")]
    pub failure_window_secs: u64,
    /// First wait before re-instantiating after a trap; doubles per failure.
    #[serde(deserialize_with = "lenient::u64")]
    pub restart_backoff_ms: u64,
    #[serde(deserialize_with = "lenient::u64")]
    pub max_restart_backoff_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 32,
            call_timeout_ms: 100,
            init_timeout_ms: 1000,
            hostcall_bytes: 4 << 20,
            max_list_entries: 10_000,
            max_custom_metrics: 100,
            max_alerts: 100,
            max_string_bytes: 4096,
            max_failures: 5,
            failure_window_secs: 300,
            restart_backoff_ms: 1000,
            max_restart_backoff_ms: 30_000,
        }
    }
}

impl Limits {
    pub(crate) fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
    pub(crate) fn failure_window(&self) -> Duration {
        Duration::from_secs(self.failure_window_secs)
    }
}

/// Capabilities granted to a plugin; nothing is granted by default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Grants {
    /// Read-only directories: guest path (e.g. `/logs`) → host directory.
    pub read_dirs: BTreeMap<String, PathBuf>,
    /// Let the plugin read the real wall and monotonic clocks; otherwise both
    /// read zero (the sample carries its own timestamp).
    #[serde(deserialize_with = "lenient::bool")]
    pub clock: bool,
}

/// `plugins.settings` with each key read as a plugin name
/// ([`super::plugin_name_of`]); two keys naming one plugin are refused,
/// naming both, rather than one silently winning.
fn settings_by_name<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, PluginSettings>, D::Error> {
    let raw = BTreeMap::<String, PluginSettings>::deserialize(d)?;
    let mut by_name: BTreeMap<String, (String, PluginSettings)> = BTreeMap::new();
    for (key, settings) in raw {
        let name = super::plugin_name_of(&key);
        if let Some((other, _)) = by_name.get(&name) {
            return Err(serde::de::Error::custom(format!(
                "`{other}` and `{key}` name the same plugin `{name}` (`_` reads as `-`): keep one"
            )));
        }
        by_name.insert(name, (key, settings));
    }
    Ok(by_name
        .into_iter()
        .map(|(name, (_, settings))| (name, settings))
        .collect())
}

/// A string map whose values may also be written as numbers or booleans,
/// as Greengrass renders them.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Int(n) => n.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}
