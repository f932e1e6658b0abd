//! The WebAssembly side: generated bindings and the conversions between them
//! and the plain types. Only compiled for wasm32.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{
    Alert, Config, Connection, ListeningPort, MetricValue, NetworkStats, NewAlert, Plugin, Sample,
    Severity, Verdict,
};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_bindings",
        default_bindings_module: "defender_plugin_sdk::__private::bindings",
    });
}

pub use bindings::__export_bindings;
use bindings::defender::plugin::log as wit_log;
use bindings::defender::plugin::types as wit;
pub use bindings::exports::defender::plugin::processor::Guest;
pub use wit::{Output as WitOutput, Sample as WitSample};

pub(crate) fn log(level: crate::log::Level, message: &str) {
    use crate::log::Level;
    let level = match level {
        Level::Trace => wit_log::Level::Trace,
        Level::Debug => wit_log::Level::Debug,
        Level::Info => wit_log::Level::Info,
        Level::Warn => wit_log::Level::Warn,
        Level::Error => wit_log::Level::Error,
    };
    wit_log::log(level, message);
}

/// Called by `export_plugin!`: installs the panic hook and builds the plugin.
pub fn init<P: Plugin>(
    state: &'static LocalKey<RefCell<Option<P>>>,
    config: Vec<(String, String)>,
) -> Result<(), String> {
    // A Rust panic becomes a bare `unreachable` trap in the host; log the
    // message first so the author learns what happened and where.
    std::panic::set_hook(Box::new(|info| {
        wit_log::log(wit_log::Level::Error, &format!("plugin panicked: {info}"));
    }));
    let config = Config {
        values: config.into_iter().collect(),
    };
    let plugin = P::init(&config)?;
    state.with(|s| *s.borrow_mut() = Some(plugin));
    Ok(())
}

/// Called by `export_plugin!` for every sample.
pub fn process<P: Plugin>(
    state: &'static LocalKey<RefCell<Option<P>>>,
    sample: wit::Sample,
) -> Result<wit::Output, String> {
    state.with(|s| {
        let mut guard = s.borrow_mut();
        let plugin = guard
            .as_mut()
            .ok_or_else(|| "process called before init".to_owned())?;
        let mut sample = from_wit(sample);
        let verdict = plugin.process(&mut sample)?;
        let alerts = std::mem::take(&mut sample.raised)
            .into_iter()
            .map(new_alert_to_wit)
            .collect();
        let verdict = match verdict {
            Verdict::Keep => wit::Verdict::Keep(to_wit(sample)),
            Verdict::DropReport => wit::Verdict::DropReport,
        };
        Ok(wit::Output { verdict, alerts })
    })
}

fn severity_from(s: wit::Severity) -> Severity {
    match s {
        wit::Severity::Info => Severity::Info,
        wit::Severity::Low => Severity::Low,
        wit::Severity::Medium => Severity::Medium,
        wit::Severity::High => Severity::High,
        wit::Severity::Critical => Severity::Critical,
    }
}

fn severity_to(s: Severity) -> wit::Severity {
    match s {
        Severity::Info => wit::Severity::Info,
        Severity::Low => wit::Severity::Low,
        Severity::Medium => wit::Severity::Medium,
        Severity::High => wit::Severity::High,
        Severity::Critical => wit::Severity::Critical,
    }
}

fn from_wit(s: wit::Sample) -> Sample {
    let port = |p: wit::ListeningPort| ListeningPort {
        port: p.port,
        interface: p.interface,
    };
    Sample {
        thing: s.thing,
        timestamp_ms: s.timestamp_ms,
        listening_tcp_ports: s.listening_tcp_ports.into_iter().map(port).collect(),
        listening_udp_ports: s.listening_udp_ports.into_iter().map(port).collect(),
        established_connections: s
            .established_connections
            .into_iter()
            .map(|c| Connection {
                remote_addr: c.remote_addr,
                local_port: c.local_port,
                local_interface: c.local_interface,
            })
            .collect(),
        network_stats: s.network_stats.map(|n| NetworkStats {
            bytes_in: n.bytes_in,
            bytes_out: n.bytes_out,
            packets_in: n.packets_in,
            packets_out: n.packets_out,
        }),
        custom_metrics: s
            .custom_metrics
            .into_iter()
            .map(|m| {
                let value = match m.value {
                    wit::MetricValue::Number(n) => MetricValue::Number(n),
                    wit::MetricValue::NumberList(l) => MetricValue::NumberList(l),
                    wit::MetricValue::StringList(l) => MetricValue::StringList(l),
                    wit::MetricValue::IpList(l) => MetricValue::IpList(l),
                };
                (m.name, value)
            })
            .collect(),
        annotations: s.annotations.into_iter().collect(),
        alerts: s
            .alerts
            .into_iter()
            .map(|a| Alert {
                source: a.source,
                name: a.name,
                severity: severity_from(a.severity),
                message: a.message,
                attributes: a.attributes.into_iter().collect(),
            })
            .collect(),
        raised: Vec::new(),
    }
}

fn to_wit(s: Sample) -> wit::Sample {
    let port = |p: ListeningPort| wit::ListeningPort {
        port: p.port,
        interface: p.interface,
    };
    wit::Sample {
        thing: s.thing,
        timestamp_ms: s.timestamp_ms,
        listening_tcp_ports: s.listening_tcp_ports.into_iter().map(port).collect(),
        listening_udp_ports: s.listening_udp_ports.into_iter().map(port).collect(),
        established_connections: s
            .established_connections
            .into_iter()
            .map(|c| wit::Connection {
                remote_addr: c.remote_addr,
                local_port: c.local_port,
                local_interface: c.local_interface,
            })
            .collect(),
        network_stats: s.network_stats.map(|n| wit::NetworkStats {
            bytes_in: n.bytes_in,
            bytes_out: n.bytes_out,
            packets_in: n.packets_in,
            packets_out: n.packets_out,
        }),
        custom_metrics: s
            .custom_metrics
            .into_iter()
            .map(|(name, v)| wit::CustomMetric {
                name,
                value: match v {
                    MetricValue::Number(n) => wit::MetricValue::Number(n),
                    MetricValue::NumberList(l) => wit::MetricValue::NumberList(l),
                    MetricValue::StringList(l) => wit::MetricValue::StringList(l),
                    MetricValue::IpList(l) => wit::MetricValue::IpList(l),
                },
            })
            .collect(),
        annotations: s.annotations.into_iter().collect(),
        alerts: s
            .alerts
            .into_iter()
            .map(|a| wit::Alert {
                source: a.source,
                name: a.name,
                severity: severity_to(a.severity),
                message: a.message,
                attributes: a.attributes.into_iter().collect(),
            })
            .collect(),
    }
}

fn new_alert_to_wit(a: NewAlert) -> wit::NewAlert {
    wit::NewAlert {
        name: a.name,
        severity: severity_to(a.severity),
        message: a.message,
        attributes: a.attributes.into_iter().collect(),
    }
}
