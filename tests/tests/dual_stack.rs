//! IPv6 and VLAN-tagged traffic through port-demux on real veth pairs in their own namespaces.
//!
//! IPv6: real UDP and TCP sockets over ULA and link-local addresses, with drop, pass and
//! redirect; exact per-port packets and bytes, and the stack's own IPv6 frames (MLD reports,
//! `ICMPv6`) accounted for under `not_tcp_udp` by an `AF_PACKET` capture opened before the load.
//! VLAN: this kernel has no 802.1Q module, so tagged frames are injected raw with `AF_PACKET`
//! and captured on the receiving side (passed frames seen, dropped ones not, redirected ones at
//! the target); priority-tagged frames (VLAN ID 0), which the stack accepts without a VLAN
//! device, go end to end to real sockets.
//!
//! Needs root. Each test builds its own [`Lab`] and removes it when it ends.

use std::{
    io::{Read as _, Write as _},
    mem,
    net::{Ipv6Addr, Shutdown, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    thread,
};

use port_demux::{BindOptions, LoadOptions, Mode, PortDemux, Proto, Stats, common::outcome};
use port_demux_tests::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, FrameBuilder, Ipv6Builder, ip_checksum, tagged},
    netns::{
        CLIENT_IF, Capture, Lab, SERVER_IF, SILENCE, SINK_IF, TIMEOUT, count_datagrams,
        packet_socket, poll, recv_datagrams,
    },
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Ethernet + IPv6 + UDP headers.
const UDP6_OVERHEAD: u64 = 14 + 40 + 8;

fn load(lab: &Lab) -> PortDemux {
    let (demux, _) = PortDemux::load(&lab.server.scope(), SERVER_IF, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("load: {e}"));
    demux
}

fn bind(demux: &PortDemux, ports: &str, action: &str) {
    demux
        .bind(
            ports.parse().expect("a port spec"),
            &action.parse().expect("an action"),
            &BindOptions::default(),
        )
        .unwrap_or_else(|e| panic!("bind {ports} {action}: {e}"));
}

fn stats(demux: &PortDemux) -> Stats {
    demux.stats().unwrap_or_else(|e| panic!("stats: {e}"))
}

fn port(stats: &Stats, proto: Proto, port: u16) -> (u64, u64) {
    stats
        .ports
        .iter()
        .find(|p| p.proto == proto && p.port == port)
        .map_or((0, 0), |p| (p.packets, p.bytes))
}

/// The `EtherType` and the L3 offset after up to two VLAN tags.
fn l3(frame: &[u8]) -> Option<(u16, usize)> {
    let mut off = 12;
    for _ in 0..3 {
        let et = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
        if et != ETH_P_8021Q && et != ETH_P_8021AD {
            return Some((et, off + 2));
        }
        off += 4;
    }
    None
}

/// The (transport protocol, destination port) of an IPv4 or IPv6 TCP/UDP frame, tagged or
/// not (IPv6 without extension headers: the stack's sockets send none).
fn dst(frame: &[u8]) -> Option<(u8, u16)> {
    let (et, l3) = l3(frame)?;
    let (proto, l4) = match et {
        0x0800 => (
            *frame.get(l3 + 9)?,
            l3 + usize::from(frame.get(l3)? & 0x0f) * 4,
        ),
        0x86dd => (*frame.get(l3 + 6)?, l3 + 40),
        _ => return None,
    };
    let port = frame.get(l4 + 2..l4 + 4)?;
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP)
        .then(|| (proto, u16::from_be_bytes([port[0], port[1]])))
}

/// Frames (and bytes) to (proto, port).
fn to(frames: &[Vec<u8>], proto: u8, port: u16) -> (u64, u64) {
    frames
        .iter()
        .filter(|f| dst(f) == Some((proto, port)))
        .fold((0, 0), |(n, b), f| (n + 1, b + f.len() as u64))
}

/// IPv6 frames the stack sent by itself: `ICMPv6`, directly or behind a hop-by-hop header (MLD).
fn icmpv6(frames: &[Vec<u8>]) -> u64 {
    frames
        .iter()
        .filter(|f| {
            l3(f).is_some_and(|(et, l3)| et == 0x86dd && matches!(f.get(l3 + 6), Some(58 | 0)))
        })
        .count() as u64
}

/// A UDP socket bound to `[::]:port` in the server's namespace: it receives over ULA and
/// link-local addresses.
fn udp6_server(lab: &Lab, port: u16) -> UdpSocket {
    lab.server
        .run(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)))
        .expect("binding the IPv6 UDP server")
}

/// One TCP exchange over IPv6 from the client to `to`: request, half-close, reply, close.
fn tcp6_exchange(lab: &Lab, to: SocketAddrV6, request: &[u8], reply: &[u8]) {
    let listener = lab
        .server
        .run(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, to.port())))
        .expect("listening");
    thread::scope(|s| {
        let server = s.spawn(move || {
            let (mut conn, _) = listener.accept().expect("accepting");
            conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            let mut got = Vec::new();
            conn.read_to_end(&mut got).expect("reading the request");
            assert_eq!(got, request);
            conn.write_all(reply).expect("writing the reply");
        });
        let mut conn = lab
            .client
            .run(|| TcpStream::connect(to))
            .expect("connecting");
        conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        conn.write_all(request).expect("writing the request");
        conn.shutdown(Shutdown::Write).expect("half-close");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).expect("reading the reply");
        assert_eq!(got, reply);
        server.join().expect("server");
    });
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: UDP and TCP over both address kinds, then every count"
)]
fn ipv6_udp_and_tcp_drop_pass_redirect_over_ula_and_link_local() {
    let lab = Lab::with_redirect();
    lab.enable_ipv6();
    // Opened before the load: every frame port-demux sees, the capture sees too (if passed).
    let mut capture = Capture::open(&lab.server, SERVER_IF);
    let mut sink = Capture::open(lab.sink(), SINK_IF);
    let demux = load(&lab);
    bind(&demux, "udp/7101", "drop");
    bind(&demux, "udp/7102", "pass");
    bind(&demux, "udp/7103", "redirect:c0");
    bind(&demux, "tcp/8101", "pass");
    let servers = [7101, 7102, 7103].map(|p| udp6_server(&lab, p));
    let a0_index = lab.client.ifindex(CLIENT_IF);
    let ula = |port| SocketAddrV6::new(lab.server_addr6(), port, 0, 0);
    let link_local =
        |port| SocketAddrV6::new("fe80::1".parse().expect("address"), port, 0, a0_index);
    let client = lab
        .client
        .run(|| UdpSocket::bind((lab.client_addr6(), 0)))
        .expect("client");
    let client_ll = lab
        .client
        .run(|| {
            UdpSocket::bind(SocketAddrV6::new(
                "fe80::2".parse().expect("address"),
                0,
                0,
                a0_index,
            ))
        })
        .expect("link-local client");
    let payload = [0x5a; 100];
    for (sock, to, n) in [
        (&client, ula(7101), 20),
        (&client, ula(7102), 30),
        (&client_ll, link_local(7102), 10),
        (&client_ll, link_local(7101), 5),
        (&client, ula(7103), 15),
    ] {
        for _ in 0..n {
            assert_eq!(sock.send_to(&payload, to).expect("send"), payload.len());
        }
    }
    assert_eq!(recv_datagrams(&servers[1], 40), vec![100; 40]);
    let frame = UDP6_OVERHEAD + 100;
    sink.wait("15 redirected datagrams", |f| {
        to(f, IPPROTO_UDP, 7103).0 == 15
    });
    let s = poll(
        "45 frames counted",
        || stats(&demux),
        |s| port(s, Proto::Udp, 7101).0 + port(s, Proto::Udp, 7103).0 >= 40,
    );
    assert_eq!(
        count_datagrams(&servers[0], SILENCE),
        0,
        "dropped reached the socket"
    );
    assert_eq!(
        count_datagrams(&servers[2], SILENCE),
        0,
        "redirected reached the socket"
    );
    assert_eq!(port(&s, Proto::Udp, 7101), (25, 25 * frame));
    assert_eq!(port(&s, Proto::Udp, 7102), (40, 40 * frame));
    assert_eq!(port(&s, Proto::Udp, 7103), (15, 15 * frame));

    // TCP over both address kinds.
    tcp6_exchange(&lab, ula(8101), &[b'q'; 1000], &[b'r'; 3000]);
    tcp6_exchange(&lab, link_local(8101), &[b'q'; 10], &[b'r'; 10]);
    // Every frame passed to the stack is in the capture: they must agree exactly.
    let s = poll(
        "TCP counted as captured",
        || (stats(&demux), capture.frames().to_vec()),
        |(s, f)| port(s, Proto::Tcp, 8101) == to(f, IPPROTO_TCP, 8101),
    )
    .0;
    let frames = capture.frames().to_vec();
    let tcp = port(&s, Proto::Tcp, 8101);
    assert!(tcp.0 >= 6, "tcp/8101: {tcp:?}");
    assert_eq!(tcp, to(&frames, IPPROTO_TCP, 8101));
    assert_eq!(
        to(&frames, IPPROTO_UDP, 7102),
        (40, 40 * frame),
        "captured pass"
    );
    assert_eq!(to(&frames, IPPROTO_UDP, 7101), (0, 0), "captured drop");
    assert_eq!(to(&frames, IPPROTO_UDP, 7103), (0, 0), "captured redirect");
    assert_eq!(
        sink.frames().len(),
        15,
        "the sink got only the redirected frames"
    );

    let t = &s.totals;
    let demuxed = 25 + 40 + 15 + tcp.0;
    assert_eq!(t.outcomes[outcome::DEMUXED], demuxed, "{t:?}");
    assert_eq!(
        t.demuxed_ipv6, demuxed,
        "every demultiplexed frame was IPv6: {t:?}"
    );
    // Besides, only the stack's own IPv6 frames (MLD reports, sent for a while after the
    // addresses were added: the capture, opened before the load, may hold a few the program
    // did not see yet), passed and counted under not_tcp_udp.
    let icmp = icmpv6(&frames);
    assert!(
        t.outcomes[outcome::NOT_TCP_UDP] <= icmp,
        "{t:?}, {icmp} ICMPv6 captured"
    );
    assert_eq!(
        t.packets - t.outcomes[outcome::NOT_TCP_UDP],
        frames.len() as u64 - icmp + 25 + 15,
        "{t:?}"
    );
    for o in [outcome::NOT_IP, outcome::MALFORMED, outcome::FRAGMENT] {
        assert_eq!(t.outcomes[o], 0, "{t:?}");
    }
    assert_eq!((t.redirected, t.redirect_fallback), (15, 0), "{t:?}");
    drop(demux);
    PortDemux::unload(&lab.server.scope(), SERVER_IF).expect("unload");
}

/// Sends `frames` out of `iface` in `ns` raw, with `AF_PACKET`.
fn inject(lab: &Lab, frames: &[Vec<u8>]) {
    let ifindex = lab.client.ifindex(CLIENT_IF);
    lab.client.run(|| {
        let fd = packet_socket();
        for frame in frames {
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
            addr.sll_family = u16::try_from(libc::AF_PACKET).expect("fits");
            addr.sll_ifindex = i32::try_from(ifindex).expect("fits");
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: sending a buffer we own to a sockaddr_ll of the size given.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    u32::try_from(mem::size_of::<libc::sockaddr_ll>()).expect("fits"),
                )
            };
            assert_eq!(
                usize::try_from(n).ok(),
                Some(frame.len()),
                "AF_PACKET send: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// An IPv4 UDP frame from a0 to b0's `port` with the lab's addresses, `tags` outermost first.
fn udp4(lab: &Lab, port: u16, tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = FrameBuilder::udp(port, 60).build();
    f[..6].copy_from_slice(&lab.mac_bytes(1));
    f[6..12].copy_from_slice(&lab.mac_bytes(2));
    f[26..30].copy_from_slice(&lab.client_addr().octets());
    f[30..34].copy_from_slice(&lab.server_addr().octets());
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = ip_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    for (tpid, tci) in tags.iter().rev() {
        f = tagged(&f, *tpid, *tci);
    }
    f
}

#[test]
fn vlan_tagged_frames_injected_raw() {
    let lab = Lab::with_redirect();
    let mut capture = Capture::open(&lab.server, SERVER_IF);
    let mut sink = Capture::open(lab.sink(), SINK_IF);
    let demux = load(&lab);
    bind(&demux, "udp/7201", "drop");
    bind(&demux, "udp/7202", "pass");
    bind(&demux, "udp/7203", "redirect:c0");
    let (s7201, s7202) = (lab.udp_server(7201), lab.udp_server(7202));
    let qinq = [(ETH_P_8021AD, 100), (ETH_P_8021Q, 10)];
    let mut frames = Vec::new();
    let mut sent = [(0u64, 0u64); 3];
    for (i, port) in [7201u16, 7202, 7203].into_iter().enumerate() {
        let mut add = |f: Vec<u8>, n: u64| {
            sent[i].0 += n;
            sent[i].1 += n * f.len() as u64;
            frames.extend(std::iter::repeat_n(f, usize::try_from(n).expect("small")));
        };
        // 802.1Q VLAN 10, IPv4.
        add(udp4(&lab, port, &[(ETH_P_8021Q, 10)]), 10);
        // QinQ, IPv6.
        let mut b = Ipv6Builder::udp(port, 40);
        b.tags = qinq.to_vec();
        let mut f = b.build();
        f[..6].copy_from_slice(&lab.mac_bytes(1));
        add(f, 5);
        // Priority-tagged (VLAN 0, PCP 3), IPv4: the stack delivers these to sockets.
        if port != 7203 {
            add(udp4(&lab, port, &[(ETH_P_8021Q, 3 << 13)]), 7);
        }
    }
    inject(&lab, &frames);
    let total: u64 = sent.iter().map(|s| s.0).sum();
    sink.wait("15 redirected frames", |f| to(f, IPPROTO_UDP, 7203).0 == 15);
    let s = poll(
        "every injected frame counted",
        || stats(&demux),
        |s| s.totals.outcomes[outcome::DEMUXED] >= total,
    );
    for (i, port_no) in [7201u16, 7202, 7203].into_iter().enumerate() {
        assert_eq!(port(&s, Proto::Udp, port_no), sent[i], "udp/{port_no}");
    }
    // Priority-tagged datagrams to the passed port reach its socket; none to the dropped one.
    assert_eq!(recv_datagrams(&s7202, 7), vec![60; 7]);
    assert_eq!(
        count_datagrams(&s7202, SILENCE),
        0,
        "VLAN 10 frames have no VLAN device"
    );
    assert_eq!(
        count_datagrams(&s7201, SILENCE),
        0,
        "dropped reached the socket"
    );
    // Passed frames are seen after XDP, dropped and redirected ones are not.
    let seen = capture.frames().to_vec();
    assert_eq!(to(&seen, IPPROTO_UDP, 7202).0, sent[1].0, "passed");
    assert_eq!(to(&seen, IPPROTO_UDP, 7201).0, 0, "dropped");
    assert_eq!(to(&seen, IPPROTO_UDP, 7203).0, 0, "redirected");
    assert_eq!(
        to(sink.frames(), IPPROTO_UDP, 7203).0,
        15,
        "at the redirect target"
    );
    let t = &s.totals;
    assert_eq!(t.outcomes[outcome::DEMUXED], total, "{t:?}");
    assert_eq!(t.demuxed_ipv6, 15, "{t:?}");
    assert_eq!((t.redirected, t.redirect_fallback), (15, 0), "{t:?}");
    drop(demux);
    PortDemux::unload(&lab.server.scope(), SERVER_IF).expect("unload");
}

/// Receives `count` datagrams of up to 65,535 bytes on `sock`; returns their lengths.
fn recv_large(sock: &UdpSocket, count: usize) -> Vec<usize> {
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = vec![0u8; 65_535];
    (0..count)
        .map(|i| {
            sock.recv(&mut buf)
                .unwrap_or_else(|e| panic!("datagram {} of {count}: {e}", i + 1))
        })
        .collect()
}

#[test]
fn mtu_9000_in_native_mode_counts_jumbo_datagrams_whole() {
    const PAYLOAD: usize = 8000;
    let lab = Lab::new();
    lab.enable_ipv6();
    for (ns, iface) in [(&lab.client, CLIENT_IF), (&lab.server, SERVER_IF)] {
        ns.ip(&["link", "set", iface, "mtu", "9000"]);
    }
    let opts = LoadOptions {
        mode: Mode::Native,
        ..LoadOptions::default()
    };
    let (demux, report) = PortDemux::load(&lab.server.scope(), SERVER_IF, &opts)
        .unwrap_or_else(|e| panic!("native load on MTU 9000: {e}"));
    assert_eq!(report.mode, Mode::Native);
    bind(&demux, "udp/7301", "drop");
    bind(&demux, "udp/7302", "pass");
    bind(&demux, "udp/7303", "drop");
    bind(&demux, "udp/7304", "pass");
    let (v4_drop, v4_pass) = (lab.udp_server(7301), lab.udp_server(7302));
    let (v6_drop, v6_pass) = (udp6_server(&lab, 7303), udp6_server(&lab, 7304));
    let client4 = lab.udp_client();
    let client6 = lab
        .client
        .run(|| UdpSocket::bind((lab.client_addr6(), 0)))
        .expect("client");
    let data = vec![0x6a; PAYLOAD];
    for _ in 0..10 {
        for port in [7301, 7302] {
            let to = std::net::SocketAddrV4::new(lab.server_addr(), port);
            assert_eq!(client4.send_to(&data, to).expect("send"), PAYLOAD);
        }
        for port in [7303, 7304] {
            let to = SocketAddrV6::new(lab.server_addr6(), port, 0, 0);
            assert_eq!(client6.send_to(&data, to).expect("send"), PAYLOAD);
        }
    }
    assert_eq!(recv_large(&v4_pass, 10), vec![PAYLOAD; 10]);
    assert_eq!(recv_large(&v6_pass, 10), vec![PAYLOAD; 10]);
    let s = poll(
        "40 jumbo frames counted",
        || stats(&demux),
        |s| {
            [7301, 7302, 7303, 7304]
                .iter()
                .map(|&p| port(s, Proto::Udp, p).0)
                .sum::<u64>()
                >= 40
        },
    );
    assert_eq!(count_datagrams(&v4_drop, SILENCE), 0);
    assert_eq!(count_datagrams(&v6_drop, SILENCE), 0);
    // The whole frame: 14 + 20 + 8 + 8,000 and 14 + 40 + 8 + 8,000 bytes.
    assert_eq!(port(&s, Proto::Udp, 7301), (10, 10 * 8042));
    assert_eq!(port(&s, Proto::Udp, 7302), (10, 10 * 8042));
    assert_eq!(port(&s, Proto::Udp, 7303), (10, 10 * 8062));
    assert_eq!(port(&s, Proto::Udp, 7304), (10, 10 * 8062));
    assert_eq!(s.totals.demuxed_ipv6, 20, "{:?}", s.totals);
    assert_eq!(s.totals.outcomes[outcome::MALFORMED], 0, "{:?}", s.totals);
    drop(demux);
    PortDemux::unload(&lab.server.scope(), SERVER_IF).expect("unload");
}
