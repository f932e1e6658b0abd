//! The socket tables over netlink `NETLINK_SOCK_DIAG` (inet_diag), the way
//! `ss` reads them.
//!
//! Why: reading `/proc/net/tcp` makes the kernel walk its whole socket table
//! and print every socket as text, whatever its state, under the reader's
//! time slice; a `sock_diag` dump is filtered by state in the kernel (only
//! LISTEN and ESTABLISHED for TCP, only unconnected UDP) and arrives as fixed
//! binary records, so nothing is printed or parsed as text. Each record gives
//! what a proc line gives (addresses, ports, state, owner uid, inode), so the
//! sample is the same whichever source was read.
//!
//! Written against libc directly rather than a netlink crate: the whole
//! protocol used here is one request layout and one reply layout, read with
//! explicit offsets (no `unsafe` casts of kernel memory), while the crates
//! that cover it (netlink-packet-sock-diag and friends) bring a general
//! message framework and several dependencies for those two structs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::parse::{STATE_CLOSE, STATE_ESTABLISHED, STATE_LISTEN, SocketLine};

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `sizeof(struct nlmsghdr)`.
const HEADER_BYTES: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQUEST_BYTES: usize = 56;
/// `sizeof(struct inet_diag_msg)`.
const MESSAGE_BYTES: usize = 72;
/// The kernel sizes dump batches by the reader's buffer, up to 32 KiB; twice
/// that leaves room for any one message.
const BUFFER_BYTES: usize = 64 * 1024;
/// A dump that does not answer within this long is treated as refused.
const RECEIVE_TIMEOUT_SECONDS: libc::time_t = 2;

/// One of the four socket tables, as the proc files name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
}

impl Table {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Tcp => "tcp",
            Table::Tcp6 => "tcp6",
            Table::Udp => "udp",
            Table::Udp6 => "udp6",
        }
    }

    fn family(self) -> u8 {
        match self {
            Table::Tcp | Table::Udp => libc::AF_INET as u8,
            Table::Tcp6 | Table::Udp6 => libc::AF_INET6 as u8,
        }
    }

    fn protocol(self) -> u8 {
        match self {
            Table::Tcp | Table::Tcp6 => libc::IPPROTO_TCP as u8,
            Table::Udp | Table::Udp6 => libc::IPPROTO_UDP as u8,
        }
    }

    /// The states the collector uses, as the kernel's filter bit mask:
    /// listening and established TCP; unconnected UDP (a connected UDP socket
    /// is `ESTABLISHED` and never a listener).
    fn states(self) -> u32 {
        match self {
            Table::Tcp | Table::Tcp6 => (1 << STATE_LISTEN) | (1 << STATE_ESTABLISHED),
            Table::Udp | Table::Udp6 => 1 << STATE_CLOSE,
        }
    }
}

/// A `NETLINK_SOCK_DIAG` socket and its receive buffer, kept for the life of
/// the collector.
#[derive(Debug)]
pub(crate) struct SockDiag {
    fd: OwnedFd,
    buf: Box<[u8]>,
    seq: u32,
}

impl SockDiag {
    pub(crate) fn open() -> io::Result<SockDiag> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: RECEIVE_TIMEOUT_SECONDS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SockDiag {
            fd,
            buf: vec![0; BUFFER_BYTES].into_boxed_slice(),
            seq: 0,
        })
    }

    /// Calls `on_socket` for every socket of `table` in the states the
    /// collector uses. An error means the dump is incomplete: the caller
    /// must not use what it was given.
    pub(crate) fn dump(
        &mut self,
        table: Table,
        mut on_socket: impl FnMut(&SocketLine),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.send(table)?;
        loop {
            let n = self.receive()?;
            let mut offset = 0;
            while offset + HEADER_BYTES <= n {
                let b = &self.buf[offset..n];
                let len = u32_at(b, 0) as usize;
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                let seq = u32_at(b, 8);
                if len < HEADER_BYTES || len > b.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink message of {len} bytes in a {}-byte read", b.len()),
                    ));
                }
                let payload = &b[HEADER_BYTES..len];
                offset += len.next_multiple_of(4);
                if seq != self.seq {
                    // A late part of an earlier dump that failed midway.
                    continue;
                }
                match kind {
                    k if k == libc::NLMSG_DONE as u16 => {
                        // The kernel may end a failed dump with an error here.
                        return match payload.get(..4).map(|e| i32_at(e, 0)) {
                            Some(error) if error < 0 => Err(io::Error::from_raw_os_error(-error)),
                            _ => Ok(()),
                        };
                    }
                    k if k == libc::NLMSG_ERROR as u16 => {
                        let error = payload.get(..4).map_or(-libc::EBADMSG, |e| i32_at(e, 0));
                        return Err(io::Error::from_raw_os_error(-error.min(-1)));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        let socket = decode(payload).ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("short inet_diag message ({} bytes)", payload.len()),
                            )
                        })?;
                        on_socket(&socket);
                    }
                    // NLMSG_NOOP, NLMSG_OVERRUN and anything newer: nothing to use.
                    _ => {}
                }
            }
        }
    }

    fn send(&mut self, table: Table) -> io::Result<()> {
        let mut request = [0u8; HEADER_BYTES + REQUEST_BYTES];
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        request[0..4].copy_from_slice(&((HEADER_BYTES + REQUEST_BYTES) as u32).to_ne_bytes());
        request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        request[6..8].copy_from_slice(&flags.to_ne_bytes());
        request[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // nlmsg_pid 0: the kernel fills in our port.
        let body = &mut request[HEADER_BYTES..];
        body[0] = table.family();
        body[1] = table.protocol();
        // idiag_ext 0 (no extensions), pad 0, then the state filter; the
        // socket id stays zero, which a dump ignores.
        body[4..8].copy_from_slice(&table.states().to_ne_bytes());

        // SAFETY: an all-zero sockaddr_nl is valid; the family is set next.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: the buffer and address are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                    (&raw const kernel).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if sent >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    fn receive(&mut self) -> io::Result<usize> {
        loop {
            // SAFETY: the buffer is valid for writes of its whole length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One `struct inet_diag_msg` (attributes after it are ignored). Ports and
/// addresses are in network order, the other fields in host order.
fn decode(m: &[u8]) -> Option<SocketLine> {
    if m.len() < MESSAGE_BYTES {
        return None;
    }
    let family = i32::from(m[0]);
    let state = m[1];
    let local_port = u16::from_be_bytes([m[4], m[5]]);
    let remote_port = u16::from_be_bytes([m[6], m[7]]);
    let address = |at: usize| -> Option<IpAddr> {
        match family {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                m[at],
                m[at + 1],
                m[at + 2],
                m[at + 3],
            ))),
            libc::AF_INET6 => {
                let bytes: [u8; 16] = m[at..at + 16].try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(bytes)))
            }
            _ => None,
        }
    };
    Some(SocketLine {
        local: address(8)?,
        local_port,
        remote: address(24)?,
        remote_port,
        state,
        uid: Some(u32_at(m, 64)),
        inode: Some(u64::from(u32_at(m, 68))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message laid out as `struct inet_diag_msg` by hand, so that the
    /// offsets are checked against the kernel header rather than against
    /// themselves.
    fn message(family: u8, state: u8, src: &[u8], dst: &[u8], uid: u32, inode: u32) -> Vec<u8> {
        let mut m = vec![0u8; MESSAGE_BYTES + 8];
        m[0] = family; // idiag_family
        m[1] = state; // idiag_state
        m[4..6].copy_from_slice(&8080u16.to_be_bytes()); // id.idiag_sport
        m[6..8].copy_from_slice(&54321u16.to_be_bytes()); // id.idiag_dport
        m[8..8 + src.len()].copy_from_slice(src); // id.idiag_src
        m[24..24 + dst.len()].copy_from_slice(dst); // id.idiag_dst
        m[40..44].copy_from_slice(&3u32.to_ne_bytes()); // id.idiag_if
        m[64..68].copy_from_slice(&uid.to_ne_bytes()); // idiag_uid
        m[68..72].copy_from_slice(&inode.to_ne_bytes()); // idiag_inode
        m
    }

    #[test]
    fn decodes_ipv4_and_ipv6_messages() {
        let v4 = decode(&message(
            libc::AF_INET as u8,
            STATE_ESTABLISHED,
            &[127, 0, 0, 1],
            &[192, 0, 2, 7],
            65534,
            4242,
        ))
        .expect("an IPv4 message");
        assert_eq!(v4.local, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(v4.remote, IpAddr::from([192, 0, 2, 7]));
        assert_eq!((v4.local_port, v4.remote_port), (8080, 54321));
        assert_eq!(v4.state, STATE_ESTABLISHED);
        assert_eq!((v4.uid, v4.inode), (Some(65534), Some(4242)));

        let local: Ipv6Addr = "2001:db8::1".parse().expect("address");
        let v6 = decode(&message(
            libc::AF_INET6 as u8,
            STATE_LISTEN,
            &local.octets(),
            &Ipv6Addr::UNSPECIFIED.octets(),
            0,
            7,
        ))
        .expect("an IPv6 message");
        assert_eq!(v6.local, IpAddr::V6(local));
        assert_eq!(v6.remote, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(v6.state, STATE_LISTEN);
    }

    #[test]
    fn rejects_short_or_foreign_messages() {
        let full = message(libc::AF_INET as u8, STATE_LISTEN, &[0; 4], &[0; 4], 0, 1);
        assert!(decode(&full[..MESSAGE_BYTES - 1]).is_none());
        let unix = message(libc::AF_UNIX as u8, STATE_LISTEN, &[0; 4], &[0; 4], 0, 1);
        assert!(decode(&unix).is_none());
    }

    /// The kernel answers a real dump; our own listener is in it with our
    /// uid and a non-zero inode.
    #[test]
    fn dumps_a_real_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let mut diag = SockDiag::open().expect("NETLINK_SOCK_DIAG socket");
        let mut found = Vec::new();
        diag.dump(Table::Tcp, |s| {
            if s.local_port == port {
                found.push(*s);
            }
        })
        .expect("TCP dump");
        assert_eq!(found.len(), 1, "{found:?}");
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(found[0].uid, Some(uid));
        assert!(found[0].inode.is_some_and(|i| i > 0));
        assert_eq!(found[0].state, STATE_LISTEN);
        // A second dump on the same socket works too (sequence numbers).
        let mut again = 0;
        diag.dump(Table::Tcp, |s| again += usize::from(s.local_port == port))
            .expect("second dump");
        assert_eq!(again, 1);
    }
}
