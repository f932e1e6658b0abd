//! Errors of the plugin runtime.

use std::path::PathBuf;

/// Why [`super::PluginHost::start`] failed. A single bad plugin never fails
/// the start: it is logged and counted, and the others run.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    #[error("plugin directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch plugin directory {path}: {message}")]
    Watch { path: PathBuf, message: String },
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Where loading a plugin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStage {
    /// Reading the file.
    Read,
    /// Not a valid component, or compilation failed.
    Compile,
    /// A precompiled artifact (`<name>.cwasm`) built for another engine,
    /// target or wasmtime release, or not an artifact at all.
    Precompiled,
    /// Built for an incompatible version of the plugin interface.
    Version,
    /// Imports something the host does not provide.
    Link,
    /// Its grants could not be set up (a granted directory is missing).
    Grants,
    /// `init` returned an error, trapped or ran out of time.
    Init,
}

impl std::fmt::Display for LoadStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadStage::Read => "read",
            LoadStage::Compile => "compile",
            LoadStage::Precompiled => "precompiled load",
            LoadStage::Version => "version check",
            LoadStage::Link => "link",
            LoadStage::Grants => "grants",
            LoadStage::Init => "init",
        })
    }
}

/// A plugin that could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}: {stage} failed: {message}")]
pub struct LoadError {
    /// The plugin's name.
    pub plugin: String,
    /// Where it failed.
    pub stage: LoadStage,
    /// What happened, naming the file, key or import involved.
    pub message: String,
}
