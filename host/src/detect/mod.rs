//! Local detection: Device Defender security profiles judged on the device.

use serde::{Deserialize, Serialize};

/// The `detection` section of the configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DetectionConfig {}
