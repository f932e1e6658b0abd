//! Raises an alert for every listening port that is not on the allowlist
//! (the rogue FTP server on port 21), and optionally keeps ephemeral ports
//! out of the report so short-lived listeners do not flap Device Defender's
//! listening-port behaviors.

use defender_plugin_sdk::{Config, Plugin, Sample, Severity, Verdict};

pub struct PortAllowlist {
    tcp: Vec<u16>,
    udp: Vec<u16>,
    /// Ports from here up are dropped from the report, when set.
    drop_from: Option<u16>,
    severity: Severity,
}

fn ports(config: &Config, key: &str) -> Result<Vec<u16>, String> {
    config
        .list(key)
        .iter()
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("config key {key}: {p:?} is not a port (1..65535)"))
        })
        .collect()
}

impl Plugin for PortAllowlist {
    fn init(config: &Config) -> Result<Self, String> {
        let severity = match config.get("severity").unwrap_or("high") {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            other => return Err(format!("config key severity: unknown severity {other:?}")),
        };
        Ok(PortAllowlist {
            tcp: ports(config, "tcp")?,
            udp: ports(config, "udp")?,
            drop_from: config.parse("dropEphemeralFrom")?,
            severity,
        })
    }

    fn process(&mut self, sample: &mut Sample) -> Result<Verdict, String> {
        if let Some(from) = self.drop_from {
            sample.listening_tcp_ports.retain(|p| p.port < from);
            sample.listening_udp_ports.retain(|p| p.port < from);
        }
        let rogue: Vec<_> = sample
            .listening_tcp_ports
            .iter()
            .filter(|p| !self.tcp.contains(&p.port))
            .map(|p| ("tcp", p.clone()))
            .chain(
                sample
                    .listening_udp_ports
                    .iter()
                    .filter(|p| !self.udp.contains(&p.port))
                    .map(|p| ("udp", p.clone())),
            )
            .collect();
        for (protocol, port) in rogue {
            let interface = port.interface.unwrap_or_else(|| "*".to_owned());
            sample
                .raise(
                    "port-not-allowed",
                    self.severity,
                    format!(
                        "{protocol} port {} listens on {interface} but is not on the allowlist",
                        port.port
                    ),
                )
                .with("protocol", protocol)
                .with("port", port.port.to_string())
                .with("interface", interface);
        }
        Ok(Verdict::Keep)
    }
}

defender_plugin_sdk::export_plugin!(PortAllowlist);

#[cfg(test)]
mod tests {
    use super::*;
    use defender_plugin_sdk::ListeningPort;

    fn port(port: u16) -> ListeningPort {
        ListeningPort {
            port,
            interface: None,
        }
    }

    #[test]
    fn rogue_ftp_raises_an_alert() -> Result<(), String> {
        let mut plugin = PortAllowlist::init(&Config::from_pairs([("tcp", "22, 443")]))?;
        let mut sample = Sample {
            listening_tcp_ports: vec![port(21), port(22)],
            ..Sample::default()
        };
        assert_eq!(plugin.process(&mut sample)?, Verdict::Keep);
        assert_eq!(sample.raised.len(), 1);
        let alert = sample.raised.first().ok_or("no alert")?;
        assert_eq!(alert.name, "port-not-allowed");
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(alert.attributes.get("port").map(String::as_str), Some("21"));
        Ok(())
    }

    #[test]
    fn ephemeral_ports_are_dropped_before_checking() -> Result<(), String> {
        let config = Config::from_pairs([("tcp", "22"), ("dropEphemeralFrom", "32768")]);
        let mut plugin = PortAllowlist::init(&config)?;
        let mut sample = Sample {
            listening_tcp_ports: vec![port(22), port(40000)],
            listening_udp_ports: vec![port(50000)],
            ..Sample::default()
        };
        plugin.process(&mut sample)?;
        assert_eq!(sample.listening_tcp_ports, vec![port(22)]);
        assert!(sample.listening_udp_ports.is_empty());
        assert!(sample.raised.is_empty());
        Ok(())
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = PortAllowlist::init(&Config::from_pairs([("tcp", "22,ssh")])).err();
        assert_eq!(
            err.as_deref(),
            Some("config key tcp: \"ssh\" is not a port (1..65535)")
        );
    }
}
