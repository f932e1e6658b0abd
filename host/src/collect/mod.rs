//! `/proc` → [`crate::sample::Sample`]. Reads proc files, nothing else.

use serde::{Deserialize, Serialize};

/// The `collect` section of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CollectConfig {
    /// Root of the proc file system to read.
    pub proc_root: std::path::PathBuf,
    /// Count loopback (`lo`) traffic in network_stats.
    #[serde(deserialize_with = "crate::config::lenient::bool")]
    pub include_loopback_traffic: bool,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            proc_root: "/proc".into(),
            include_loopback_traffic: false,
        }
    }
}
