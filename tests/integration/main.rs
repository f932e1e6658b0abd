//! Integration tests: real sockets, real /proc, real peers started by the tests.

mod attribution;
mod cli;
mod collect;
mod delivery;
mod detect;
mod docs;
#[cfg(feature = "firehose")]
mod firehose;
mod golden;
mod ipc;
mod packaging;
mod plugin_cli;
mod plugins;
mod plugins_faults;
mod plugins_precompiled;
mod plugins_python;
mod report;
mod run;
#[cfg(feature = "securityhub")]
mod securityhub;
mod splunk;
#[allow(dead_code)] // Each helper is used by some test modules, not all.
mod support;
mod visible;
