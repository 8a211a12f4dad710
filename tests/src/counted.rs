//! What port-demux must count for what a test sent, and waiting until it has: senders return a
//! [`Sent`] (frames and bytes as XDP sees them), [`wait_counted`] polls the counters until every
//! port shows exactly what was sent to it. Sockets and listeners inside a namespace, and veth
//! pairs with names and addresses (IPv4 or IPv6) the caller chooses.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    ops::Add,
};

use port_demux::{PortDemux, Proto, Stats};

use crate::netns::{Capture, Lab, Netns, poll, tcp_to};

/// Frames and bytes (from the Ethernet header to the end of the frame) port-demux counts for
/// what was sent to one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Frames.
    pub packets: u64,
    /// Their bytes as XDP sees them.
    pub bytes: u64,
}

impl Add for Sent {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// Ethernet, IP (IPv4 without options, or IPv6 without extension headers) and UDP headers:
/// the bytes XDP counts besides a datagram's payload.
#[must_use]
pub const fn udp_overhead(to: &SocketAddr) -> u64 {
    14 + if to.is_ipv4() { 20 } else { 40 } + 8
}

/// Sends `count` datagrams of `payload` bytes from `sock` to `to`; returns what port-demux
/// counts for them on the receiving interface.
///
/// # Panics
/// When sending fails.
#[must_use = "what port-demux counts for the datagrams"]
pub fn send_udp(sock: &UdpSocket, to: SocketAddr, count: u64, payload: usize) -> Sent {
    let data = vec![0x5a; payload];
    for _ in 0..count {
        let sent = sock.send_to(&data, to).expect("sending a datagram");
        assert_eq!(sent, payload);
    }
    Sent {
        packets: count,
        bytes: count * (udp_overhead(&to) + payload as u64),
    }
}

/// Polls `demux`'s counters until each (protocol, port) shows exactly its [`Sent`] (within
/// [`crate::TIMEOUT`]); returns the counters.
///
/// # Panics
/// On timeout, showing the last counters of the expected ports; when the counters cannot be
/// read.
#[must_use = "the counters, for further assertions"]
pub fn wait_counted(demux: &PortDemux, expected: &[(Proto, u16, Sent)]) -> Stats {
    let counted = |stats: &Stats| -> Vec<(Proto, u16, Sent)> {
        expected
            .iter()
            .map(|&(proto, port, _)| {
                let p = stats.port(proto, port);
                let sent = Sent {
                    packets: p.packets,
                    bytes: p.bytes,
                };
                (proto, port, sent)
            })
            .collect()
    };
    let (stats, _) = poll(
        "port-demux to count what was sent",
        || {
            let stats = demux.stats().unwrap_or_else(|e| panic!("{e}"));
            let now = counted(&stats);
            (stats, now)
        },
        |(_, now)| now.as_slice() == expected,
    );
    stats
}

impl Netns {
    /// A UDP socket in the namespace bound to `addr` (port 0: any).
    ///
    /// # Panics
    /// When it cannot be bound.
    #[must_use]
    pub fn udp_socket(&self, addr: SocketAddr) -> UdpSocket {
        self.run(|| UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("binding UDP {addr} in {}: {e}", self.name()))
    }

    /// A TCP listener in the namespace on `addr`.
    ///
    /// # Panics
    /// When it cannot listen.
    #[must_use]
    pub fn tcp_listener(&self, addr: SocketAddr) -> TcpListener {
        self.run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("listening on TCP {addr} in {}: {e}", self.name()))
    }

    /// A veth pair `iface` (here) <-> `peer_iface` (in `peer`), both up: the caller's names.
    /// Deleting either namespace deletes the pair.
    ///
    /// # Panics
    /// When it cannot be created.
    pub fn veth(&self, iface: &str, peer: &Self, peer_iface: &str) {
        self.ip(&[
            "link",
            "add",
            iface,
            "type",
            "veth",
            "peer",
            "name",
            peer_iface,
            "netns",
            peer.name(),
        ]);
        self.ip(&["link", "set", iface, "up"]);
        peer.ip(&["link", "set", peer_iface, "up"]);
    }

    /// Adds `cidr` (`10.1.2.3/24` or `fd00::1/64`) to `iface`. An IPv6 address turns IPv6 on
    /// for `iface` first (the kit creates namespaces with it off) and skips duplicate address
    /// detection, so the address is usable at once.
    ///
    /// # Panics
    /// When it fails.
    pub fn add_addr(&self, iface: &str, cidr: &str) {
        if cidr.contains(':') {
            let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
            self.run(|| std::fs::write(&path, "0"))
                .unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
            self.ip(&["addr", "add", cidr, "dev", iface, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", iface]);
        }
    }
}

impl Lab {
    /// [`Lab::tcp_exchange`], counted: returns the reply and the frames and bytes the client
    /// sent to b0's `port` (captured as a0 sent them), which is what port-demux on b0 counts.
    ///
    /// # Panics
    /// When any step fails, or the capture dropped frames.
    #[must_use]
    pub fn tcp_exchange_counted(&self, port: u16, request: &[u8], reply: &[u8]) -> (Vec<u8>, Sent) {
        let mut sent = Capture::open_sent(&self.client, self.client_if());
        let got = self.tcp_exchange(port, request, reply);
        let (packets, bytes) = tcp_to(sent.read_for(std::time::Duration::ZERO), port);
        assert_eq!(sent.take_drops(), 0, "the capture dropped frames");
        (got, Sent { packets, bytes })
    }
}
