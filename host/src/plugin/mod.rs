//! The WebAssembly plugin runtime. The only module that knows wasmtime exists.

use serde::{Deserialize, Serialize};

/// The `plugins` section of the configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PluginsConfig {}
