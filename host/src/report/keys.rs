//! The one table of report key names. The encoder and the decoder both read
//! it, and no other code spells a key, so the long and short key sets cannot
//! drift apart (the Python agent's `--short_tags` crash came from delta code
//! that spelled keys itself).

use std::fmt;

/// Which of the two key sets a report uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStyle {
    /// `header`, `report_id`, `listening_tcp_ports`...
    Long,
    /// `hed`, `rid`, `tp`...
    Short,
}

impl fmt::Display for KeyStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStyle::Long => "long",
            KeyStyle::Short => "short",
        })
    }
}

/// Every key of the report document that has a long and a short form. The
/// discriminant is the key's row in [`KEYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Header,
    ReportId,
    Version,
    Metrics,
    ListeningTcpPorts,
    ListeningUdpPorts,
    Ports,
    Port,
    Interface,
    Total,
    TcpConnections,
    EstablishedConnections,
    Connections,
    RemoteAddr,
    LocalPort,
    LocalInterface,
    NetworkStats,
    BytesIn,
    BytesOut,
    PacketsIn,
    PacketsOut,
    CustomMetrics,
}

/// One row of the key table.
#[derive(Debug, Clone, Copy)]
pub struct KeyName {
    pub key: Key,
    pub long: &'static str,
    pub short: &'static str,
}

const fn row(key: Key, long: &'static str, short: &'static str) -> KeyName {
    KeyName { key, long, short }
}

/// The key table of the Device Defender report (docs/REPORT.md prints it).
pub const KEYS: [KeyName; 22] = [
    row(Key::Header, "header", "hed"),
    row(Key::ReportId, "report_id", "rid"),
    row(Key::Version, "version", "v"),
    row(Key::Metrics, "metrics", "met"),
    row(Key::ListeningTcpPorts, "listening_tcp_ports", "tp"),
    row(Key::ListeningUdpPorts, "listening_udp_ports", "up"),
    row(Key::Ports, "ports", "pts"),
    row(Key::Port, "port", "pt"),
    row(Key::Interface, "interface", "if"),
    row(Key::Total, "total", "t"),
    row(Key::TcpConnections, "tcp_connections", "tc"),
    row(Key::EstablishedConnections, "established_connections", "ec"),
    row(Key::Connections, "connections", "cs"),
    row(Key::RemoteAddr, "remote_addr", "rad"),
    row(Key::LocalPort, "local_port", "lp"),
    row(Key::LocalInterface, "local_interface", "li"),
    row(Key::NetworkStats, "network_stats", "ns"),
    row(Key::BytesIn, "bytes_in", "bi"),
    row(Key::BytesOut, "bytes_out", "bo"),
    row(Key::PacketsIn, "packets_in", "pi"),
    row(Key::PacketsOut, "packets_out", "po"),
    row(Key::CustomMetrics, "custom_metrics", "cmet"),
];

// Encoding indexes the table by discriminant; this fails the build if a row
// is ever moved out of place.
const _: () = {
    let mut i = 0;
    while i < KEYS.len() {
        assert!(KEYS[i].key as usize == i);
        i += 1;
    }
};

/// The keys inside a custom metric's value object. Device Defender gives
/// them no short form, so they are the same in both key sets.
pub const CUSTOM_VALUE_KEYS: [&str; 4] = ["number", "number_list", "string_list", "ip_list"];

impl Key {
    /// The key's name in `style`.
    pub fn name(self, style: KeyStyle) -> &'static str {
        let row = &KEYS[self as usize];
        match style {
            KeyStyle::Long => row.long,
            KeyStyle::Short => row.short,
        }
    }

    /// Finds a key by either of its names, and says which set the name is
    /// from. No long name equals any short name (a test checks), so the
    /// answer is unambiguous.
    pub fn lookup(name: &str) -> Option<(Key, KeyStyle)> {
        KEYS.iter().find_map(|row| {
            if row.long == name {
                Some((row.key, KeyStyle::Long))
            } else if row.short == name {
                Some((row.key, KeyStyle::Short))
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_across_both_sets() {
        let mut all: Vec<&str> = KEYS.iter().flat_map(|r| [r.long, r.short]).collect();
        all.extend(CUSTOM_VALUE_KEYS);
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "a key name is used twice: {all:?}");
    }

    #[test]
    fn lookup_inverts_name() {
        for row in KEYS {
            assert_eq!(
                Key::lookup(row.key.name(KeyStyle::Long)),
                Some((row.key, KeyStyle::Long))
            );
            assert_eq!(
                Key::lookup(row.key.name(KeyStyle::Short)),
                Some((row.key, KeyStyle::Short))
            );
        }
        assert_eq!(Key::lookup("number"), None);
    }
}
