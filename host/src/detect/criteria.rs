//! Criteria: what a behavior says is normal, and the test of one datapoint
//! against it.
//!
//! Device Defender's criteria describe *normal* behaviour. `less-than 50`
//! means "fewer than 50 is normal", so 50 or more is a violation;
//! `in-port-set {22}` means "every listening port is 22", so any other port
//! is a violation. A list conforms when every element does; an empty list
//! conforms.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// A numeric comparison: the datapoint is normal when `datapoint <op> threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumOp {
    LessThan,
    LessThanEquals,
    GreaterThan,
    GreaterThanEquals,
}

impl NumOp {
    /// Whether `value` is normal against `threshold`.
    pub(crate) fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            NumOp::LessThan => value < threshold,
            NumOp::LessThanEquals => value <= threshold,
            NumOp::GreaterThan => value > threshold,
            NumOp::GreaterThanEquals => value >= threshold,
        }
    }

    /// True for the operators whose normal range is "small enough". A sum
    /// over a window that is not yet full can only grow, so for these a
    /// violation is already certain; for the others, conformity is.
    pub(crate) fn bounds_from_above(self) -> bool {
        matches!(self, NumOp::LessThan | NumOp::LessThanEquals)
    }
}

/// A set comparison applied to every element of a list metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetOp {
    /// Every element must be in the set.
    In,
    /// No element may be in the set.
    NotIn,
}

impl SetOp {
    /// Whether an element with this membership is normal.
    pub(crate) fn conforms(self, member: bool) -> bool {
        match self {
            SetOp::In => member,
            SetOp::NotIn => !member,
        }
    }
}

/// The percentiles Device Defender accepts in `statisticalThreshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Statistic {
    /// As written in the profile, e.g. `p99.99`.
    pub name: &'static str,
    /// The quantile, 0..=1.
    pub quantile: f64,
}

/// Every statistic of the API's pattern
/// `p0|p0.1|p0.01|p1|p10|p50|p90|p99|p99.9|p99.99|p100`.
pub(crate) const STATISTICS: [Statistic; 11] = [
    Statistic {
        name: "p0",
        quantile: 0.0,
    },
    Statistic {
        name: "p0.01",
        quantile: 0.0001,
    },
    Statistic {
        name: "p0.1",
        quantile: 0.001,
    },
    Statistic {
        name: "p1",
        quantile: 0.01,
    },
    Statistic {
        name: "p10",
        quantile: 0.1,
    },
    Statistic {
        name: "p50",
        quantile: 0.5,
    },
    Statistic {
        name: "p90",
        quantile: 0.9,
    },
    Statistic {
        name: "p99",
        quantile: 0.99,
    },
    Statistic {
        name: "p99.9",
        quantile: 0.999,
    },
    Statistic {
        name: "p99.99",
        quantile: 0.9999,
    },
    Statistic {
        name: "p100",
        quantile: 1.0,
    },
];

/// The threshold of a numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Threshold {
    /// `value.count` or `value.number`.
    Fixed(f64),
    /// `statisticalThreshold`: a percentile of the device's own history.
    Statistical(Statistic),
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n`. A bare address is a single host.
    /// Host bits after the prefix are ignored, as Device Defender does.
    pub(crate) fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IPv4 or IPv6 CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has a prefix length outside 0..={max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `addr` is inside the network. IPv4 and IPv6 networks never
    /// contain each other's addresses; an IPv4-mapped IPv6 address is tested
    /// as the IPv4 address it carries.
    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_matches(&net.octets(), &a.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_matches(&net.octets(), &a.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: &[u8], addr: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != addr[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    net[full] & mask == addr[full] & mask
}

/// A compiled criteria test.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Check {
    /// A number (count, traffic, custom number) against a threshold.
    Compare { op: NumOp, threshold: Threshold },
    /// Listening ports against `value.ports` (sorted, deduplicated).
    Ports { op: SetOp, ports: Vec<u16> },
    /// Addresses against `value.cidrs`.
    Cidrs { op: SetOp, cidrs: Vec<Cidr> },
    /// A custom number list against `value.numbers`.
    Numbers { op: SetOp, numbers: Vec<f64> },
    /// A custom string list against `value.strings`.
    Strings {
        op: SetOp,
        strings: BTreeSet<String>,
    },
}

impl Check {
    /// Whether a port list breaks the criteria; `None` if the check is not
    /// about ports.
    pub(crate) fn port_offenders(&self, ports: &[u16]) -> Option<Vec<u16>> {
        let Check::Ports { op, ports: set } = self else {
            return None;
        };
        Some(
            ports
                .iter()
                .copied()
                .filter(|p| !op.conforms(set.binary_search(p).is_ok()))
                .collect(),
        )
    }

    /// The addresses that break a CIDR check. Text that is not an address is
    /// in no network: it breaks `in-cidr-set` and meets `not-in-cidr-set`.
    pub(crate) fn address_offenders<'a, I>(&self, addresses: I) -> Option<Vec<String>>
    where
        I: IntoIterator<Item = AddressItem<'a>>,
    {
        let Check::Cidrs { op, cidrs } = self else {
            return None;
        };
        let mut out = Vec::new();
        for item in addresses {
            let member = match item {
                AddressItem::Parsed(addr) => cidrs.iter().any(|c| c.contains(addr)),
                AddressItem::Text(text) => text
                    .trim()
                    .parse::<IpAddr>()
                    .map(|a| cidrs.iter().any(|c| c.contains(a)))
                    .unwrap_or(false),
            };
            if !op.conforms(member) {
                out.push(item.to_string());
            }
        }
        Some(out)
    }

    /// The numbers of a custom number list that break the criteria.
    pub(crate) fn number_offenders(&self, values: &[f64]) -> Option<Vec<f64>> {
        let Check::Numbers { op, numbers } = self else {
            return None;
        };
        Some(
            values
                .iter()
                .copied()
                .filter(|v| !op.conforms(numbers.contains(v)))
                .collect(),
        )
    }

    /// The strings of a custom string list that break the criteria.
    pub(crate) fn string_offenders(&self, values: &[String]) -> Option<Vec<String>> {
        let Check::Strings { op, strings } = self else {
            return None;
        };
        Some(
            values
                .iter()
                .filter(|v| !op.conforms(strings.contains(v.as_str())))
                .cloned()
                .collect(),
        )
    }
}

/// An address of a list metric: parsed by the collector, or text from a
/// plugin's `ip_list`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AddressItem<'a> {
    Parsed(IpAddr),
    Text(&'a str),
}

impl std::fmt::Display for AddressItem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressItem::Parsed(a) => write!(f, "{a}"),
            AddressItem::Text(t) => f.write_str(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_what_they_should() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.200.3.4", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.77/24", "192.168.1.1", true),
            ("192.168.1.0/25", "192.168.1.200", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("203.0.113.9", "203.0.113.9", true),
            ("203.0.113.9", "203.0.113.10", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("::/0", "10.1.2.3", false),
            ("172.16.0.0/12", "172.31.255.255", true),
            ("172.16.0.0/12", "172.32.0.0", false),
        ];
        for (cidr, addr, expected) in cases {
            let c = Cidr::parse(cidr).expect(cidr);
            let a: IpAddr = addr.parse().expect(addr);
            assert_eq!(c.contains(a), *expected, "{cidr} contains {addr}");
        }
    }

    #[test]
    fn bad_cidrs_are_named() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "example.com/8",
            "10.0.0/8",
            "1.2.3.4/x",
        ] {
            let error = Cidr::parse(bad).expect_err(bad);
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }
}
