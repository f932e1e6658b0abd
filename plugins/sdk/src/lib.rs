//! Write defender-edge WebAssembly plugins in plain Rust.
//!
//! Implement [`Plugin`] on your type and call [`export_plugin!`] once:
//!
//! ```
//! use defender_plugin_sdk::{Config, Plugin, Sample, Severity, Verdict};
//!
//! struct NoTelnet;
//!
//! impl Plugin for NoTelnet {
//!     fn init(_config: &Config) -> Result<Self, String> {
//!         Ok(NoTelnet)
//!     }
//!     fn process(&mut self, sample: &mut Sample) -> Result<Verdict, String> {
//!         if sample.listening_tcp_ports.iter().any(|p| p.port == 23) {
//!             sample.raise("telnet-listening", Severity::High, "telnet listens on port 23");
//!         }
//!         Ok(Verdict::Keep)
//!     }
//! }
//!
//! defender_plugin_sdk::export_plugin!(NoTelnet);
//! ```
//!
//! The types are plain Rust values, so the logic is unit-tested natively
//! with `cargo test`; the WebAssembly plumbing (wit-bindgen) only exists in
//! the `wasm32` build. A panic is logged through the host before the plugin
//! traps, and the host then restarts the plugin.

use std::collections::BTreeMap;

pub mod log;
mod types;

pub use types::*;

/// A plugin: created by `init` from its configuration, then called once
/// per sample. The value lives between calls (until a failure or reload), so
/// it may keep state such as previous readings.
pub trait Plugin: Sized {
    /// Builds the plugin from its configuration map; an error keeps it from
    /// loading, and the host logs the message.
    fn init(config: &Config) -> Result<Self, String>;

    /// Looks at, and may change, the sample: drop ports or connections, add
    /// annotations and custom metrics, raise alerts with [`Sample::raise`].
    /// An error makes the host apply the plugin's failure policy.
    fn process(&mut self, sample: &mut Sample) -> Result<Verdict, String>;
}

/// What happens to the report after [`Plugin::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Continue with the (possibly changed) sample.
    Keep,
    /// Send no report for this sample.
    DropReport,
}

/// The plugin's configuration: a string map, as given in the host's
/// `plugins.settings.<name>.config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub(crate) values: BTreeMap<String, String>,
}

impl Config {
    /// A configuration from pairs, for tests.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Config {
        Config {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key` parsed as `T`; `Ok(None)` when unset, and an error
    /// naming the key when it does not parse.
    pub fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| format!("config key {key}: {v:?}: {e}")),
        }
    }

    /// The comma-separated items of `key`, trimmed, empty ones skipped.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every key and value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Used by [`export_plugin!`]; not part of the stable API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::guest::*;
}

#[cfg(target_arch = "wasm32")]
mod guest;

/// Exports a [`Plugin`] implementation as the plugin's entry points. Call it
/// once, at the crate root of a `cdylib` crate. On native targets it expands
/// to nothing, so unit tests build without WebAssembly.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<::std::option::Option<$plugin>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct Export;
            impl $crate::__private::Guest for Export {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$plugin>(&STATE, config)
                }
                fn process(
                    sample: $crate::__private::WitSample,
                ) -> ::std::result::Result<$crate::__private::WitOutput, ::std::string::String>
                {
                    $crate::__private::process::<$plugin>(&STATE, sample)
                }
            }
    $crate::__private::__export_bindings!(Export with_types_in $crate::__private::bindings);
        };
    };
}
