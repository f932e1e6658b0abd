//! Which interface owns a local address, decided once per sample.
//!
//! Linux has no proc file that lists IPv4 addresses per interface (tools use
//! ioctl or netlink for that), so the map is assembled from what proc does
//! show, which also works on a fixture tree:
//! - IPv6: `net/if_inet6` lists every address with its interface.
//! - IPv4: `net/fib_trie` lists the host's own addresses (`/32 host LOCAL`),
//!   and each is given the interface of the longest on-link (no gateway) route
//!   in `net/route` that contains it: the prefix route the kernel adds with
//!   the address. `127.0.0.0/8` and `::1` always belong to `lo`.
//!
//! An address found on several interfaces (a link-local address copied by
//! hand), or on none, resolves to no interface rather than a guess.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::parse::{FibTrieLine, IfInet6Line, RouteLine};

/// Index into [`InterfaceMap::names`].
pub(crate) type InterfaceId = u16;

/// The name of the loopback interface on Linux.
pub(crate) const LOOPBACK: &str = "lo";

/// Local address → interface, for one sample.
#[derive(Debug, Default)]
pub(crate) struct InterfaceMap {
    names: Vec<String>,
    /// Kernel index of each name, when a proc file told it.
    ifindex: Vec<Option<u32>>,
    v4: Vec<(Ipv4Addr, Option<InterfaceId>)>,
    v6: Vec<(Ipv6Addr, Option<InterfaceId>)>,
    /// On-link IPv4 routes: (destination, mask, interface).
    routes: Vec<(u32, u32, InterfaceId)>,
    /// The `net/fib_trie` leaf whose prefix lines are being read.
    fib_leaf: Option<Ipv4Addr>,
    loopback: Option<InterfaceId>,
}

/// How a socket's local address resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// `0.0.0.0` or `::`: every interface.
    Wildcard,
    Interface(InterfaceId),
    /// A specific address whose interface is not known.
    Unknown,
}

impl InterfaceMap {
    pub(crate) fn name(&self, id: InterfaceId) -> &str {
        &self.names[usize::from(id)]
    }

    fn intern(&mut self, name: &[u8]) -> Option<InterfaceId> {
        let name = std::str::from_utf8(name).ok()?;
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return InterfaceId::try_from(i).ok();
        }
        let id = InterfaceId::try_from(self.names.len()).ok()?;
        self.names.push(name.to_owned());
        self.ifindex.push(None);
        Some(id)
    }

    /// Records the kernel index of an interface (from `net/igmp`).
    pub(crate) fn set_ifindex(&mut self, name: &[u8], index: u32) {
        if let Some(id) = self.intern(name) {
            self.ifindex[usize::from(id)] = Some(index);
        }
    }

    /// The kernel index of `name`, if a proc file told it.
    pub(crate) fn ifindex(&self, name: &str) -> Option<u32> {
        let i = self.names.iter().position(|n| n == name)?;
        self.ifindex[i]
    }

    fn loopback_id(&mut self) -> Option<InterfaceId> {
        if self.loopback.is_none() {
            self.loopback = self.intern(LOOPBACK.as_bytes());
        }
        self.loopback
    }

    /// Adds one `net/if_inet6` entry.
    pub(crate) fn add_if_inet6(&mut self, line: &IfInet6Line<'_>) {
        let id = self.intern(line.name);
        if let Some(i) = id {
            self.ifindex[usize::from(i)] = Some(line.ifindex);
        }
        match self.v6.iter_mut().find(|(a, _)| *a == line.address) {
            // Same address on two interfaces: ambiguous, so unresolved.
            Some((_, existing)) if *existing != id => *existing = None,
            Some(_) => {}
            None => self.v6.push((line.address, id)),
        }
    }

    /// Adds one `net/route` entry; only on-link routes help find the owner of
    /// an address.
    pub(crate) fn add_route(&mut self, line: &RouteLine<'_>) {
        if !line.on_link {
            return;
        }
        if let Some(id) = self.intern(line.interface) {
            self.routes
                .push((u32::from(line.destination), u32::from(line.mask), id));
        }
    }

    /// Feeds one parsed `net/fib_trie` line. Call after all routes are in.
    pub(crate) fn add_fib_trie(&mut self, line: FibTrieLine) {
        match line {
            FibTrieLine::Leaf(addr) => self.fib_leaf = Some(addr),
            FibTrieLine::Local { prefix_len: 32 } => {
                if let Some(addr) = self.fib_leaf
                    && !self.v4.iter().any(|(a, _)| *a == addr)
                {
                    let id = self.route_owner(addr);
                    self.v4.push((addr, id));
                }
            }
            // Wider LOCAL prefixes (127.0.0.0/8) carry no single host
            // address; loopback is handled by rule.
            FibTrieLine::Local { .. } | FibTrieLine::Prefix => {}
            // A table name or inner node ends the leaf, so a prefix line is
            // never attached to a stale leaf.
            FibTrieLine::Other => self.fib_leaf = None,
        }
    }

    fn route_owner(&mut self, addr: Ipv4Addr) -> Option<InterfaceId> {
        if addr.is_loopback() {
            return self.loopback_id();
        }
        let a = u32::from(addr);
        let mut best: Option<(u32, InterfaceId)> = None;
        let mut tie = false;
        for &(dest, mask, id) in &self.routes {
            if a & mask != dest {
                continue;
            }
            let len = mask.count_ones();
            match best {
                Some((l, b)) if l == len && b != id => tie = true,
                Some((l, _)) if l >= len => {}
                _ => {
                    best = Some((len, id));
                    tie = false;
                }
            }
        }
        if tie { None } else { best.map(|(_, id)| id) }
    }

    /// The interface of a socket's local address. IPv4-mapped IPv6
    /// addresses are looked up as IPv4.
    pub(crate) fn resolve(&mut self, addr: IpAddr) -> Resolved {
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        if addr.is_unspecified() {
            return Resolved::Wildcard;
        }
        let found = match addr {
            IpAddr::V4(a) => match self.v4.iter().find(|(x, _)| *x == a) {
                Some((_, id)) => *id,
                None if a.is_loopback() => self.loopback_id(),
                None => None,
            },
            IpAddr::V6(a) => match self.v6.iter().find(|(x, _)| *x == a) {
                Some((_, id)) => *id,
                None if a.is_loopback() => self.loopback_id(),
                None => None,
            },
        };
        found.map_or(Resolved::Unknown, Resolved::Interface)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::parse::{parse_fib_trie_line, parse_if_inet6_line, parse_route_line};

    fn map(if_inet6: &str, route: &str, fib_trie: &str) -> InterfaceMap {
        let mut m = InterfaceMap::default();
        for l in if_inet6.lines() {
            m.add_if_inet6(&parse_if_inet6_line(l.as_bytes()).expect("if_inet6 line"));
        }
        for l in route.lines().skip(1) {
            m.add_route(&parse_route_line(l.as_bytes()).expect("route line"));
        }
        for l in fib_trie.lines() {
            m.add_fib_trie(parse_fib_trie_line(l.as_bytes()).expect("fib_trie line"));
        }
        m
    }

    fn name(m: &mut InterfaceMap, addr: &str) -> Option<String> {
        match m.resolve(addr.parse().expect("test address")) {
            Resolved::Interface(id) => Some(m.name(id).to_owned()),
            Resolved::Wildcard => Some("*".to_owned()),
            Resolved::Unknown => None,
        }
    }

    const ROUTE: &str = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        wlan0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n\
        wg0\t0000010A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
    const FIB: &str = "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.0\n        /8 host LOCAL\n\
        |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 192.0.2.2\n        /32 host LOCAL\n\
        |-- 192.0.2.255\n        /32 link BROADCAST\n     |-- 10.1.0.7\n        /32 host LOCAL\n\
        |-- 172.16.0.1\n        /32 host LOCAL\n";
    const IF_INET6: &str = "00000000000000000000000000000001 01 80 10 80       lo\n\
        fd000000000000000000000000000002 04 40 00 82     eth0\n\
        fe800000000000000000000000000001 04 40 20 80     eth0\n\
        fe800000000000000000000000000001 05 40 20 80     wlan0\n";

    #[test]
    fn resolves_addresses() {
        let mut m = map(IF_INET6, ROUTE, FIB);
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("lo")),
            ("127.0.0.53", Some("lo")),
            ("::1", Some("lo")),
            ("::ffff:127.0.0.1", Some("lo")),
            ("192.0.2.2", Some("eth0")),
            ("::ffff:192.0.2.2", Some("eth0")),
            // Longest on-link prefix wins: 10.1.0.0/16 (wg0) over 10.0.0.0/8.
            ("10.1.0.7", Some("wg0")),
            ("fd00::2", Some("eth0")),
            ("0.0.0.0", Some("*")),
            ("::", Some("*")),
            ("::ffff:0.0.0.0", Some("*")),
            // Local but only the default route (via a gateway) covers it.
            ("172.16.0.1", None),
            // Not a local address at all.
            ("192.0.2.9", None),
            // Same link-local address on two interfaces.
            ("fe80::1", None),
        ];
        for (addr, expected) in cases {
            assert_eq!(name(&mut m, addr).as_deref(), *expected, "address {addr}");
        }
    }
}
