//! Sockets for the collect benches: a few listeners, and N established
//! loopback connections with both ends held open.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};

/// 2N sockets need 2N descriptors; the default soft limit is often 1,024.
pub fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill and then read.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur >= wanted {
            return;
        }
        assert!(
            limit.rlim_max >= wanted,
            "RLIMIT_NOFILE hard limit {} is below the {wanted} descriptors needed",
            limit.rlim_max
        );
        limit.rlim_cur = wanted;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
            0,
            "setrlimit(RLIMIT_NOFILE, {wanted}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A few listeners of each kind, so the listening-port lists are not empty.
pub struct Listeners {
    _tcp: Vec<TcpListener>,
    _udp: Vec<UdpSocket>,
}

impl Listeners {
    pub fn open() -> Listeners {
        let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let lo4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let lo6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
        let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        Listeners {
            _tcp: [any4, lo4, lo6, any6]
                .into_iter()
                .map(|a| TcpListener::bind(a).expect("bind a TCP listener"))
                .collect(),
            _udp: [any4, lo4, lo6]
                .into_iter()
                .map(|a| UdpSocket::bind(a).expect("bind a UDP socket"))
                .collect(),
        }
    }
}

/// Established loopback connections, both ends held open.
pub struct Connections {
    v4: TcpListener,
    v6: TcpListener,
    open: Vec<(TcpStream, TcpStream)>,
}

impl Connections {
    pub fn open() -> Connections {
        Connections {
            v4: TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the IPv4 server"),
            v6: TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind the IPv6 server"),
            open: Vec::new(),
        }
    }

    pub fn grow_to(&mut self, n: usize) {
        while self.open.len() < n {
            // Connect and accept one at a time so the backlog never overflows.
            let server = if self.open.len() % 4 == 3 {
                &self.v6
            } else {
                &self.v4
            };
            let addr = server.local_addr().expect("server address");
            let client = TcpStream::connect(addr).expect("connect over loopback");
            let (accepted, _) = server.accept().expect("accept");
            self.open.push((client, accepted));
        }
    }
}

impl Connections {
    /// Closes the `k` oldest connections and opens `k` new ones: the churn
    /// of a server whose clients come and go between two samples.
    pub fn churn(&mut self, k: usize) {
        let n = self.open.len();
        self.open.drain(..k.min(n));
        self.grow_to(n);
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }
}
