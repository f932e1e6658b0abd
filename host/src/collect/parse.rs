//! Parsers for single lines of the proc files the collector reads. Each takes
//! one line as bytes and returns a value, or `None` when the line is malformed;
//! none allocates except where a name must outlive the line.
//!
//! Addresses in `net/tcp*`, `net/udp*` and `net/route` are 32-bit words printed
//! in the kernel's (host) byte order, so they are decoded with the byte order
//! of the machine we run on; the committed fixtures come from little-endian
//! machines (x86_64, and the Raspberry Pi's ARM). `net/if_inet6` prints
//! addresses in network order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP `ESTABLISHED` (also what a connected UDP socket shows).
pub(crate) const STATE_ESTABLISHED: u8 = 0x01;
/// TCP `CLOSE`: what a bound, unconnected UDP socket shows.
pub(crate) const STATE_CLOSE: u8 = 0x07;
/// TCP `LISTEN`.
pub(crate) const STATE_LISTEN: u8 = 0x0A;

/// The parts of a `net/tcp`, `tcp6`, `udp` or `udp6` line the collector uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketLine {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: u8,
    /// The user the kernel records as the socket's owner; `None` when the
    /// line stops before it (older captures, hand-made fixtures).
    pub uid: Option<u32>,
    /// The socket inode, which links it to the descriptors of the processes
    /// holding it; 0 for a socket the kernel holds itself. `None` when the
    /// line stops before it.
    pub inode: Option<u64>,
}

/// Splits on ASCII blanks (proc files use spaces and tabs), skipping runs.
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| *b == b' ' || *b == b'\t')
        .filter(|f| !f.is_empty())
}

fn hex_digit(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'f' => Some(u32::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Up to 8 hex digits as a `u32`; empty or longer input is malformed.
pub(crate) fn hex_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 8 {
        return None;
    }
    s.iter()
        .try_fold(0u32, |acc, &b| Some((acc << 4) | hex_digit(b)?))
}

/// A decimal `u64`; overflow is malformed, never wrapped.
pub(crate) fn dec_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// A 32-bit word printed by the kernel in host byte order, back to the four
/// bytes it held in memory (network order for addresses).
fn host_word_bytes(word: &[u8]) -> Option<[u8; 4]> {
    if word.len() != 8 {
        return None;
    }
    Some(hex_u32(word)?.to_ne_bytes())
}

/// `0100007F:1F90` or `<32 hex digits>:0016`.
pub(crate) fn parse_address_port(s: &[u8]) -> Option<(IpAddr, u16)> {
    let colon = s.iter().position(|b| *b == b':')?;
    let (addr, port) = (&s[..colon], &s[colon + 1..]);
    if port.len() != 4 {
        return None;
    }
    let port = u16::try_from(hex_u32(port)?).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(host_word_bytes(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in addr.chunks_exact(8).enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&host_word_bytes(chunk)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// One socket line (not the header). The slot number must end in `:`, the
/// addresses must have the width of their family, the state two hex digits.
pub(crate) fn parse_socket_line(line: &[u8]) -> Option<SocketLine> {
    let mut it = fields(line);
    let slot = it.next()?;
    if slot.last() != Some(&b':') || dec_u64(&slot[..slot.len() - 1]).is_none() {
        return None;
    }
    let (local, local_port) = parse_address_port(it.next()?)?;
    let (remote, remote_port) = parse_address_port(it.next()?)?;
    let state = it.next()?;
    if state.len() != 2 || local.is_ipv4() != remote.is_ipv4() {
        return None;
    }
    let state = u8::try_from(hex_u32(state)?).ok()?;
    // tx:rx queues, timer, retransmits, then uid, timeout and inode. Only the
    // four fields above are required: the sample needs nothing else, and
    // attribution treats a missing uid or inode as unknown.
    let mut rest = it.skip(3);
    let uid = rest
        .next()
        .and_then(dec_u64)
        .and_then(|u| u32::try_from(u).ok());
    let inode = rest.nth(1).and_then(dec_u64);
    Some(SocketLine {
        local,
        local_port,
        remote,
        remote_port,
        state,
        uid,
        inode,
    })
}

/// A `net/if_inet6` line: address (network order), ifindex, prefix length,
/// scope, flags, name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IfInet6Line<'a> {
    pub address: Ipv6Addr,
    pub ifindex: u32,
    pub name: &'a [u8],
}

pub(crate) fn parse_if_inet6_line(line: &[u8]) -> Option<IfInet6Line<'_>> {
    let mut it = fields(line);
    let addr = it.next()?;
    if addr.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in addr.chunks_exact(2).enumerate() {
        bytes[i] = u8::try_from(hex_u32(pair)?).ok()?;
    }
    let ifindex = hex_u32(it.next()?)?;
    // Prefix length, scope and flags are not needed but must be there.
    for _ in 0..3 {
        hex_u32(it.next()?)?;
    }
    let name = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some(IfInet6Line {
        address: Ipv6Addr::from(bytes),
        ifindex,
        name,
    })
}

/// Route flag: the route is usable.
const RTF_UP: u32 = 0x0001;
/// Route flag: the destination is reached through a gateway, so the route
/// says nothing about which interface owns a local address.
const RTF_GATEWAY: u32 = 0x0002;

/// A `net/route` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteLine<'a> {
    pub interface: &'a [u8],
    pub destination: Ipv4Addr,
    pub mask: Ipv4Addr,
    /// Up and not through a gateway: a route to a network the interface is on.
    pub on_link: bool,
}

pub(crate) fn parse_route_line(line: &[u8]) -> Option<RouteLine<'_>> {
    let mut it = fields(line);
    let interface = it.next()?;
    let destination = Ipv4Addr::from(host_word_bytes(it.next()?)?);
    host_word_bytes(it.next()?)?; // gateway
    let flags = hex_u32(it.next()?)?;
    for _ in 0..3 {
        dec_u64(it.next()?)?; // refcnt, use, metric
    }
    let mask = Ipv4Addr::from(host_word_bytes(it.next()?)?);
    Some(RouteLine {
        interface,
        destination,
        mask,
        on_link: flags & RTF_UP != 0 && flags & RTF_GATEWAY == 0,
    })
}

/// What one `net/fib_trie` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FibTrieLine {
    /// `|-- 192.0.2.2`: a leaf; the lines after it describe its prefixes.
    Leaf(Ipv4Addr),
    /// `/32 host LOCAL` under a leaf: the leaf address with this prefix
    /// length is an address of this host.
    Local { prefix_len: u8 },
    /// Another prefix of the current leaf (`/24 link UNICAST`).
    Prefix,
    /// Anything else: table names, inner nodes.
    Other,
}

pub(crate) fn parse_fib_trie_line(line: &[u8]) -> Option<FibTrieLine> {
    let trimmed = line.trim_ascii_start();
    if let Some(rest) = trimmed.strip_prefix(b"|-- ") {
        let text = std::str::from_utf8(rest.trim_ascii()).ok()?;
        return text.parse().ok().map(FibTrieLine::Leaf);
    }
    if let Some(rest) = trimmed.strip_prefix(b"/") {
        let mut it = fields(rest);
        let len = dec_u64(it.next()?)?;
        if len > 32 {
            return None;
        }
        it.next()?; // scope
        let kind = it.next()?;
        return Some(if kind == b"LOCAL" {
            FibTrieLine::Local {
                prefix_len: len as u8,
            }
        } else {
            FibTrieLine::Prefix
        });
    }
    Some(FibTrieLine::Other)
}

/// The `net/dev` counters the collector keeps for one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DevLine<'a> {
    pub name: &'a [u8],
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
}

/// `  eth0: 123 4 0 0 0 0 0 0 567 8 0 0 0 0 0 0`. The name ends at the first
/// `:` (Linux forbids `:` in interface names), and large counters may touch
/// it, so the line is not split on blanks first. All 16 counters must be
/// unsigned 64-bit decimals.
pub(crate) fn parse_dev_line(line: &[u8]) -> Option<DevLine<'_>> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = line[..colon].trim_ascii();
    if name.is_empty() {
        return None;
    }
    let mut values = [0u64; 16];
    let mut count = 0;
    for f in fields(&line[colon + 1..]) {
        if count == values.len() {
            return None;
        }
        values[count] = dec_u64(f)?;
        count += 1;
    }
    if count != values.len() {
        return None;
    }
    Some(DevLine {
        name,
        bytes_in: values[0],
        packets_in: values[1],
        bytes_out: values[8],
        packets_out: values[9],
    })
}

/// An interface line of `net/igmp` (`1\tlo        :     1      V3`); group
/// lines (starting with a tab) and the header give `Ok(None)`.
pub(crate) fn parse_igmp_line(line: &[u8]) -> Result<Option<(u32, &[u8])>, ()> {
    if line.first().is_none_or(|b| *b == b'\t' || *b == b' ') || line.starts_with(b"Idx") {
        return Ok(None);
    }
    let mut it = fields(line);
    let index = it.next().and_then(dec_u64).ok_or(())?;
    let index = u32::try_from(index).map_err(|_| ())?;
    let name = it.next().ok_or(())?;
    let name = name.strip_suffix(b":").unwrap_or(name);
    if name.is_empty() {
        return Err(());
    }
    Ok(Some((index, name)))
}

#[cfg(test)]
#[allow(
    clippy::type_complexity,
    reason = "test tables spell out each case's expected tuple inline"
)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().expect("test address"))
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().expect("test address"))
    }

    #[test]
    fn socket_lines() {
        // (line, expected (local, local port, remote, remote port, state)).
        // The IPv6 words are little-endian like the fixtures.
        let cases: &[(&str, Option<(IpAddr, u16, IpAddr, u16, u8)>)] = &[
            (
                "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1069 1 000000003d41d82a 100 0 0 10 0",
                Some((v4("0.0.0.0"), 22, v4("0.0.0.0"), 0, 0x0A)),
            ),
            (
                "  12: 0100007F:1F90 0200007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1",
                Some((v4("127.0.0.1"), 8080, v4("127.0.0.2"), 50000, 0x01)),
            ),
            (
                "   1: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2",
                Some((v6("::1"), 53, v6("::"), 0, 0x07)),
            ),
            (
                "   2: 0000000000000000FFFF00000100007F:0050 0000000000000000FFFF00000200007F:D431 01 0:0 0:0 0 0 0 1 1",
                Some((
                    v6("::ffff:127.0.0.1"),
                    80,
                    v6("::ffff:127.0.0.2"),
                    54321,
                    0x01,
                )),
            ),
            (
                "   3: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 0:0",
                Some((v6("2001:db8::1"), 443, v6("::"), 0, 0x0A)),
            ),
            // Only the four fields the collector uses are required.
            (
                "0: 0100007F:0035 00000000:0000 07",
                Some((v4("127.0.0.1"), 53, v4("0.0.0.0"), 0, 0x07)),
            ),
            // Malformed: short address, bad hex, missing fields, mixed families,
            // slot without colon, 3-digit state, 5-digit port, garbage, empty.
            ("   0: 0100007:0016 00000000:0000 0A", None),
            ("   0: 0100007G:0016 00000000:0000 0A", None),
            ("   0: 0100007F:0016 00000000:0000", None),
            (
                "   0: 0100007F:0016 00000000000000000000000000000000:0000 0A",
                None,
            ),
            ("   0 0100007F:0016 00000000:0000 0A", None),
            ("   0: 0100007F:0016 00000000:0000 0AA", None),
            ("   0: 0100007F:10016 00000000:0000 0A", None),
            ("   0: 0100007F0016 00000000:0000 0A", None),
            ("garbage", None),
            ("", None),
        ];
        for (line, expected) in cases {
            let got = parse_socket_line(line.as_bytes())
                .map(|s| (s.local, s.local_port, s.remote, s.remote_port, s.state));
            assert_eq!(got, *expected, "line {line:?}");
        }
    }

    #[test]
    fn socket_lines_give_owner_uid_and_inode() {
        let cases: &[(&str, Option<u32>, Option<u64>)] = &[
            (
                "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1069 1 000000003d41d82a 100 0 0 10 0",
                Some(0),
                Some(1069),
            ),
            (
                "  12: 0100007F:1F90 0200007F:C350 01 00000000:00000000 00:00000000 00000000 65534        0 4242 1",
                Some(65534),
                Some(4242),
            ),
            // A UDP line: the same columns, then ref, pointer and drops.
            (
                "  123: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000   105        0 18520 2 0000000000000000 0",
                Some(105),
                Some(18520),
            ),
            // A kernel socket has inode 0.
            (
                "   4: 00000000:CA6C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0",
                Some(0),
                Some(0),
            ),
            // Cut short, or garbage where the numbers are: unknown, and the
            // line still counts.
            ("0: 0100007F:0035 00000000:0000 07", None, None),
            (
                "0: 0100007F:0035 00000000:0000 07 0:0 0:0 0 1000",
                Some(1000),
                None,
            ),
            (
                "0: 0100007F:0035 00000000:0000 07 0:0 0:0 0 x 0 y",
                None,
                None,
            ),
        ];
        for (line, uid, inode) in cases {
            let got = parse_socket_line(line.as_bytes()).expect("a socket line");
            assert_eq!((got.uid, got.inode), (*uid, *inode), "line {line:?}");
        }
    }

    #[test]
    fn if_inet6_lines() {
        let cases: &[(&str, Option<(&str, u32, &str)>)] = &[
            (
                "00000000000000000000000000000001 01 80 10 80       lo",
                Some(("::1", 1, "lo")),
            ),
            (
                "fe8000000000000000fc00fffe000001 04 40 20 80     eth0",
                Some(("fe80::fc:ff:fe00:1", 4, "eth0")),
            ),
            (
                "fd000000000000000000000000000002 1a 40 00 82 wlan0",
                Some(("fd00::2", 26, "wlan0")),
            ),
            ("fd00000000000000000000000000002 04 40 00 82 eth0", None),
            ("fd000000000000000000000000000002 04 40 00 82", None),
            ("fd000000000000000000000000000002 zz 40 00 82 eth0", None),
            (
                "fd000000000000000000000000000002 04 40 00 82 eth0 extra",
                None,
            ),
        ];
        for (line, expected) in cases {
            let got = parse_if_inet6_line(line.as_bytes()).map(|l| {
                (
                    l.address,
                    l.ifindex,
                    String::from_utf8_lossy(l.name).into_owned(),
                )
            });
            let expected = expected.map(|(a, i, n)| {
                (
                    a.parse::<Ipv6Addr>().expect("test address"),
                    i,
                    n.to_owned(),
                )
            });
            assert_eq!(got, expected, "line {line:?}");
        }
    }

    #[test]
    fn route_lines() {
        let cases: &[(&str, Option<(&str, &str, &str, bool)>)] = &[
            (
                "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
                Some(("eth0", "192.0.2.0", "255.255.255.0", true)),
            ),
            (
                "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
                Some(("eth0", "0.0.0.0", "0.0.0.0", false)),
            ),
            // Not up: not on-link.
            (
                "wlan0\t0000A8C0\t00000000\t0000\t0\t0\t600\t0000FFFF\t0\t0\t0",
                Some(("wlan0", "192.168.0.0", "255.255.0.0", false)),
            ),
            ("eth0\t000200C0\t00000000\t0001\t0\t0\t0", None),
            (
                "eth0\t000200C\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
                None,
            ),
            (
                "eth0\t000200C0\t00000000\t0001\tx\t0\t0\t00FFFFFF\t0\t0\t0",
                None,
            ),
        ];
        for (line, expected) in cases {
            let got = parse_route_line(line.as_bytes()).map(|r| {
                (
                    String::from_utf8_lossy(r.interface).into_owned(),
                    r.destination,
                    r.mask,
                    r.on_link,
                )
            });
            let expected = expected.map(|(i, d, m, l)| {
                (
                    i.to_owned(),
                    d.parse::<Ipv4Addr>().expect("test address"),
                    m.parse::<Ipv4Addr>().expect("test mask"),
                    l,
                )
            });
            assert_eq!(got, expected, "line {line:?}");
        }
    }

    #[test]
    fn fib_trie_lines() {
        let cases: &[(&str, Option<FibTrieLine>)] = &[
            ("Main:", Some(FibTrieLine::Other)),
            ("  +-- 0.0.0.0/0 3 0 5", Some(FibTrieLine::Other)),
            (
                "           |-- 127.0.0.1",
                Some(FibTrieLine::Leaf(Ipv4Addr::new(127, 0, 0, 1))),
            ),
            (
                "              /32 host LOCAL",
                Some(FibTrieLine::Local { prefix_len: 32 }),
            ),
            (
                "              /8 host LOCAL",
                Some(FibTrieLine::Local { prefix_len: 8 }),
            ),
            ("           /32 link BROADCAST", Some(FibTrieLine::Prefix)),
            ("        /0 universe UNICAST", Some(FibTrieLine::Prefix)),
            ("     |-- 300.0.0.1", None),
            ("     /33 host LOCAL", None),
            ("     /x host LOCAL", None),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_fib_trie_line(line.as_bytes()),
                *expected,
                "line {line:?}"
            );
        }
    }

    #[test]
    fn dev_lines() {
        let cases: &[(&str, Option<(&str, u64, u64, u64, u64)>)] = &[
            (
                "    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0",
                Some(("lo", 3193, 29, 3193, 29)),
            ),
            // Counters beyond 32 bits, and a counter touching the colon.
            (
                "  eth0:18446744073709551615 5000000000 0 0 0 0 0 0 4294967296 7 0 0 0 0 0 0",
                Some(("eth0", u64::MAX, 5_000_000_000, 4_294_967_296, 7)),
            ),
            // One past u64::MAX is malformed, not wrapped.
            (
                "  eth0:18446744073709551616 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0",
                None,
            ),
            ("  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15", None),
            ("  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17", None),
            ("  eth0: 1 2 3 -4 5 6 7 8 9 10 11 12 13 14 15 16", None),
            ("   : 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16", None),
            (" face |bytes    packets errs drop", None),
        ];
        for (line, expected) in cases {
            let got = parse_dev_line(line.as_bytes()).map(|d| {
                (
                    String::from_utf8_lossy(d.name).into_owned(),
                    d.bytes_in,
                    d.packets_in,
                    d.bytes_out,
                    d.packets_out,
                )
            });
            let expected = expected.map(|(n, a, b, c, d)| (n.to_owned(), a, b, c, d));
            assert_eq!(got, expected, "line {line:?}");
        }
    }

    #[test]
    fn igmp_lines() {
        let cases: &[(&str, Result<Option<(u32, &str)>, ()>)] = &[
            (
                "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter",
                Ok(None),
            ),
            ("1\tlo        :     1      V3", Ok(Some((1, "lo")))),
            ("4\teth0      :     1      V3", Ok(Some((4, "eth0")))),
            ("\t\t\t\t010000E0     1 0:00000000\t\t0", Ok(None)),
            ("x\teth0      :     1      V3", Err(())),
            ("7", Err(())),
        ];
        for (line, expected) in cases {
            let got = parse_igmp_line(line.as_bytes())
                .map(|o| o.map(|(i, n)| (i, std::str::from_utf8(n).expect("utf8"))));
            assert_eq!(got, *expected, "line {line:?}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(hex_u32(b"FFFFFFFF"), Some(u32::MAX));
        assert_eq!(hex_u32(b"1FFFFFFFF"), None);
        assert_eq!(hex_u32(b""), None);
        assert_eq!(dec_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(dec_u64(b"18446744073709551616"), None);
        assert_eq!(dec_u64(b"+1"), None);
    }
}
