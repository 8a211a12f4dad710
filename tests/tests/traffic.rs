//! Real traffic through port-demux on a veth in its own network namespaces: real sockets send
//! real frames, the library loads, binds and reads counters, and every count is exact.
//!
//! IPv6 (`Lab::enable_ipv6`): real UDP and TCP sockets over ULA and link-local addresses, with
//! drop, pass and redirect; the stack's own IPv6 frames (MLD reports, `ICMPv6`) are accounted
//! for under `not_tcp_udp` by an `AF_PACKET` capture opened before the load. VLAN: this kernel
//! has no 802.1Q module, so tagged frames are injected raw with `AF_PACKET` and captured on the
//! receiving side (passed frames seen, dropped ones not, redirected ones at the target);
//! priority-tagged frames (VLAN ID 0), which the stack accepts without a VLAN device, go end to
//! end to real sockets. Jumbo frames: an MTU 9000 pair in native mode.
//!
//! Needs root. Each test builds its own [`Lab`] and removes it (and its pins) when it ends.

use std::{
    collections::BTreeSet,
    mem,
    net::{Ipv6Addr, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd as _,
};

use port_demux::{
    Action, BindOptions, BindingRange, Error, LoadOptions, Mode, PortDemux, PortSpec, Proto, Stats,
    common::outcome,
};
use port_demux_testkit::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, FrameBuilder, Ipv6Builder, ip_checksum, tagged},
    netns::{
        CLIENT_IF, Capture, Lab, REDIRECT_IF, SERVER_IF, SILENCE, SINK_IF, TIMEOUT, UDP_OVERHEAD,
        count_datagrams, packet_socket, poll, recv_datagrams, tcp_to, udp_to,
    },
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Ethernet + IPv6 + UDP headers.
const UDP6_OVERHEAD: u64 = 14 + 40 + 8;

fn load(lab: &Lab) -> PortDemux {
    let (demux, _report) = PortDemux::load(&lab.server.scope(), SERVER_IF, &LoadOptions::default())
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

/// (packets, bytes) of one port; (0, 0) when it is not listed.
fn port(stats: &Stats, proto: Proto, port: u16) -> (u64, u64) {
    stats
        .ports
        .iter()
        .find(|p| p.proto == proto && p.port == port)
        .map_or((0, 0), |p| (p.packets, p.bytes))
}

/// Waits until port-demux has counted `packets` frames to a port.
fn wait_counted(demux: &PortDemux, proto: Proto, p: u16, packets: u64) -> Stats {
    poll(
        &format!("{packets} frames counted on {proto}/{p}"),
        || stats(demux),
        |s| port(s, proto, p).0 >= packets,
    )
}

/// The invariants of the totals: every frame has one outcome, the demultiplexed ones are
/// exactly the per-port ones, and only those are redirected.
fn assert_consistent(stats: &Stats) {
    let t = &stats.totals;
    assert_eq!(t.outcomes.iter().sum::<u64>(), t.packets, "outcomes: {t:?}");
    let per_port: u64 = stats.ports.iter().map(|p| p.packets).sum();
    assert_eq!(t.outcomes[outcome::DEMUXED], per_port, "demuxed: {t:?}");
    let per_port_bytes: u64 = stats.ports.iter().map(|p| p.bytes).sum();
    assert_eq!(t.demuxed_bytes, per_port_bytes, "demuxed bytes: {t:?}");
    assert!(t.redirected + t.redirect_fallback <= per_port, "{t:?}");
}

/// The binding range of `ports` without a prefix.
fn range(ports: &str, action: Action, owner: &str) -> BindingRange {
    BindingRange {
        ports: ports.parse().expect("a port spec"),
        action,
        owner: owner.into(),
        dst: None,
    }
}

fn unload(lab: &Lab, demux: PortDemux) {
    let dir = demux.pin_dir().to_owned();
    drop(demux);
    PortDemux::unload(&lab.server.scope(), SERVER_IF).unwrap_or_else(|e| panic!("unload: {e}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
    let ns_dir = lab.server.pin_dir();
    assert!(
        !ns_dir.exists(),
        "{} left behind, holding {:?}",
        ns_dir.display(),
        std::fs::read_dir(ns_dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

#[test]
fn counts_udp_and_tcp_per_port_exactly() {
    let lab = Lab::new();
    let demux = load(&lab);
    let mut capture = Capture::open(&lab.server, SERVER_IF);
    let client = lab.udp_client();
    let (s7001, s7002) = (lab.udp_server(7001), lab.udp_server(7002));

    let bytes_7001 = lab.send_udp(&client, 7001, 50, 100);
    let bytes_7002 = lab.send_udp(&client, 7002, 30, 300);
    assert_eq!(recv_datagrams(&s7001, 50), vec![100; 50]);
    assert_eq!(recv_datagrams(&s7002, 30), vec![300; 30]);

    let tcp_ports = [8001, 8002, 8003];
    for (i, p) in tcp_ports.into_iter().enumerate() {
        let request = vec![b'q'; 10 + 1000 * i];
        let reply = vec![b'r'; 4000 + 10 * i];
        assert_eq!(lab.tcp_exchange(p, &request, &reply), reply, "reply on {p}");
    }

    // Every frame b0 received has been through XDP and the capture by now: the UDP ones were
    // delivered, and the TCP exchanges end only when the server saw the client's last segment.
    let frames = capture.frames().to_vec();
    let stats = stats(&demux);
    assert_eq!(port(&stats, Proto::Udp, 7001), (50, bytes_7001));
    assert_eq!(port(&stats, Proto::Udp, 7002), (30, bytes_7002));
    assert_eq!(udp_to(&frames, 7001), (50, bytes_7001), "captured");
    assert_eq!(udp_to(&frames, 7002), (30, bytes_7002), "captured");
    assert_eq!(bytes_7001, 50 * (UDP_OVERHEAD + 100));
    for p in tcp_ports {
        let counted = port(&stats, Proto::Tcp, p);
        // SYN, request, FIN, ACKs: how many depends on delayed ACKs, so the capture decides.
        assert!(counted.0 >= 3, "tcp/{p}: {counted:?}");
        assert_eq!(
            counted,
            tcp_to(&frames, p),
            "tcp/{p}: port-demux vs capture"
        );
    }
    let listed: BTreeSet<(Proto, u16)> = stats.ports.iter().map(|p| (p.proto, p.port)).collect();
    let expected: BTreeSet<(Proto, u16)> = [(Proto::Udp, 7001), (Proto::Udp, 7002)]
        .into_iter()
        .chain(tcp_ports.map(|p| (Proto::Tcp, p)))
        .collect();
    assert_eq!(listed, expected, "ports with counters");

    assert_consistent(&stats);
    let t = &stats.totals;
    // IPv6 is off and neighbours are permanent: b0 received nothing but this test's traffic.
    assert_eq!(t.packets, frames.len() as u64, "{t:?}");
    assert_eq!(
        stats.ports.iter().map(|p| p.bytes).sum::<u64>(),
        frames.iter().map(|f| f.len() as u64).sum::<u64>(),
        "bytes of all ports vs captured"
    );
    assert_eq!(t.outcomes[outcome::DEMUXED], t.packets, "{t:?}");
    assert_eq!((t.redirected, t.redirect_fallback), (0, 0), "{t:?}");
    unload(&lab, demux);
}

#[test]
fn drop_pass_redirect_and_unbind() {
    let lab = Lab::with_redirect();
    let demux = load(&lab);
    bind(&demux, "udp/7101", "drop");
    bind(&demux, "udp/7102", "pass");
    bind(&demux, "udp/7103", &format!("redirect:{REDIRECT_IF}"));
    let mut sink = Capture::open(lab.sink(), SINK_IF);
    let client = lab.udp_client();
    let (dropped, passed, redirected) = (
        lab.udp_server(7101),
        lab.udp_server(7102),
        lab.udp_server(7103),
    );

    let drop_bytes = lab.send_udp(&client, 7101, 20, 64);
    wait_counted(&demux, Proto::Udp, 7101, 20);
    assert_eq!(
        count_datagrams(&dropped, SILENCE),
        0,
        "dropped port got data"
    );

    let pass_bytes = lab.send_udp(&client, 7102, 15, 200);
    assert_eq!(recv_datagrams(&passed, 15), vec![200; 15]);

    let redirect_bytes = lab.send_udp(&client, 7103, 12, 500);
    let frames = sink.wait("12 redirected frames on c1", |f| udp_to(f, 7103).0 >= 12);
    assert_eq!(udp_to(frames, 7103), (12, redirect_bytes), "arrived on c1");
    assert_eq!(frames.len(), 12, "c1 received other frames too");
    assert_eq!(
        count_datagrams(&redirected, SILENCE),
        0,
        "redirected port got data on b0"
    );

    let s = stats(&demux);
    assert_eq!(port(&s, Proto::Udp, 7101), (20, drop_bytes));
    assert_eq!(port(&s, Proto::Udp, 7102), (15, pass_bytes));
    assert_eq!(port(&s, Proto::Udp, 7103), (12, redirect_bytes));
    assert_consistent(&s);
    assert_eq!(s.totals.packets, 47, "{:?}", s.totals);
    assert_eq!(
        (s.totals.redirected, s.totals.redirect_fallback),
        (12, 0),
        "redirected, fallback"
    );
    let action_of = |p: u16| {
        s.ports
            .iter()
            .find(|x| x.proto == Proto::Udp && x.port == p)
            .and_then(|x| x.action.clone())
    };
    assert_eq!(action_of(7101), Some(Action::Drop));
    assert_eq!(action_of(7102), Some(Action::Pass));
    assert_eq!(action_of(7103), Some(Action::Redirect(REDIRECT_IF.into())));

    // Unbinding restores delivery by the default action (pass).
    demux
        .unbind("udp/7101".parse().expect("spec"))
        .expect("unbind");
    demux
        .unbind("udp/7103".parse().expect("spec"))
        .expect("unbind");
    assert_eq!(
        demux.bindings().expect("bindings"),
        vec![BindingRange {
            ports: "udp/7102".parse().expect("spec"),
            action: Action::Pass,
            owner: String::new(),
            dst: None,
        }]
    );
    let more_drop = lab.send_udp(&client, 7101, 5, 64);
    let more_redirect = lab.send_udp(&client, 7103, 5, 500);
    assert_eq!(recv_datagrams(&dropped, 5), vec![64; 5]);
    assert_eq!(recv_datagrams(&redirected, 5), vec![500; 5]);
    assert_eq!(udp_to(sink.frames(), 7103).0, 12, "redirected after unbind");
    let s = stats(&demux);
    assert_eq!(port(&s, Proto::Udp, 7101), (25, drop_bytes + more_drop));
    assert_eq!(
        port(&s, Proto::Udp, 7103),
        (17, redirect_bytes + more_redirect)
    );
    assert_eq!(
        (s.totals.redirected, s.totals.redirect_fallback),
        (12, 0),
        "redirected, fallback"
    );
    assert_consistent(&s);
    unload(&lab, demux);
}

#[test]
fn redirect_to_a_vanished_interface_falls_back_to_pass() {
    let lab = Lab::with_redirect();
    let demux = load(&lab);
    bind(&demux, "udp/7201", &format!("redirect:{REDIRECT_IF}"));
    // Deleting c0 (and so c1) empties its devmap slot: the binding stays, its frames pass.
    lab.server.ip(&["link", "del", REDIRECT_IF]);
    let client = lab.udp_client();
    let server = lab.udp_server(7201);
    let bytes = lab.send_udp(&client, 7201, 9, 32);
    assert_eq!(recv_datagrams(&server, 9), vec![32; 9]);
    let s = stats(&demux);
    assert_eq!(port(&s, Proto::Udp, 7201), (9, bytes));
    assert_eq!(
        (s.totals.redirected, s.totals.redirect_fallback),
        (0, 9),
        "redirected, fallback"
    );
    assert_consistent(&s);
    assert_eq!(
        demux.bindings().expect("bindings")[0].action,
        Action::Redirect("(gone)".into())
    );
    unload(&lab, demux);
}

#[test]
fn conflicts_are_refused_and_change_nothing() {
    let lab = Lab::new();
    let demux = load(&lab);
    demux
        .bind(
            "udp/7777".parse().expect("spec"),
            &Action::Drop,
            &BindOptions {
                replace: false,
                owner: "alpha".into(),
            },
        )
        .expect("bind");
    let before = demux.bindings().expect("bindings");
    let err = demux
        .bind(
            "udp/7777".parse().expect("spec"),
            &Action::Pass,
            &BindOptions::default(),
        )
        .expect_err("a conflict");
    match &err {
        Error::Conflict {
            ports,
            dst,
            action,
            owner,
        } => {
            assert_eq!(ports.to_string(), "udp/7777");
            assert_eq!(*dst, None);
            assert_eq!(*action, Action::Drop);
            assert_eq!(owner.as_deref(), Some("alpha"));
        }
        other => panic!("not a conflict: {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("udp/7777") && message.contains("drop") && !message.contains('\n'),
        "{message}"
    );
    assert_eq!(demux.bindings().expect("bindings"), before, "state changed");

    // tcp/7777 is another port than udp/7777.
    bind(&demux, "tcp/7777", "pass");
    let mut before = demux.bindings().expect("bindings");
    assert_eq!(before.len(), 2);

    // Ranges are all or nothing.
    bind(&demux, "tcp/9000-9099", "drop");
    // Listed by (protocol, port): after tcp/7777, before udp/7777.
    before.insert(1, range("tcp/9000-9099", Action::Drop, ""));
    assert_eq!(demux.bindings().expect("bindings"), before);
    // The conflict names the first run of bound ports in the range.
    for (ports, conflict) in [
        ("tcp/9050-9150", "tcp/9050-9099"),
        ("tcp/8990-9000", "tcp/9000"),
    ] {
        match demux.bind(
            ports.parse().expect("spec"),
            &Action::Pass,
            &BindOptions::default(),
        ) {
            Err(Error::Conflict { ports, action, .. }) => {
                assert_eq!(
                    (ports.to_string(), action),
                    (conflict.to_owned(), Action::Drop)
                );
            }
            other => panic!("bind {ports}: {other:?}"),
        }
        assert_eq!(demux.bindings().expect("bindings"), before, "after {ports}");
    }
    match demux.unbind("tcp/9090-9110".parse().expect("spec")) {
        Err(Error::NotBound { ports, dst: None }) => {
            assert_eq!(ports.to_string(), "tcp/9100-9110");
        }
        other => panic!("unbind: {other:?}"),
    }
    assert_eq!(demux.bindings().expect("bindings"), before, "after unbind");

    // Service names.
    bind(&demux, "tcp/http", "pass");
    assert!(
        demux
            .bindings()
            .expect("bindings")
            .contains(&range("tcp/80", Action::Pass, ""))
    );

    // --replace changes the action, also over a range that covers the old binding.
    demux
        .bind(
            "udp/7770-7779".parse().expect("spec"),
            &Action::Pass,
            &BindOptions {
                replace: true,
                owner: "beta".into(),
            },
        )
        .expect("replace");
    let udp: Vec<_> = demux
        .bindings()
        .expect("bindings")
        .into_iter()
        .filter(|b| b.ports.proto == Proto::Udp)
        .collect();
    assert_eq!(udp, vec![range("udp/7770-7779", Action::Pass, "beta")]);
    unload(&lab, demux);
}

#[test]
fn range_edges_apply_to_traffic() {
    let lab = Lab::new();
    let demux = load(&lab);
    bind(&demux, "udp/9000-9099", "drop");
    let client = lab.udp_client();
    let sockets: Vec<_> = [8999, 9000, 9099, 9100]
        .into_iter()
        .map(|p| lab.udp_server(p))
        .collect();
    let bytes = lab.send_udp(&client, 8999, 3, 8);
    for p in [9000, 9099, 9100] {
        assert_eq!(lab.send_udp(&client, p, 3, 8), bytes);
    }
    assert_eq!(recv_datagrams(&sockets[0], 3).len(), 3, "8999 is outside");
    assert_eq!(recv_datagrams(&sockets[3], 3).len(), 3, "9100 is outside");
    let s = wait_counted(&demux, Proto::Udp, 9099, 3);
    assert_eq!(bytes, 3 * (UDP_OVERHEAD + 8));
    assert_eq!(count_datagrams(&sockets[1], SILENCE), 0, "9000 is inside");
    assert_eq!(count_datagrams(&sockets[2], SILENCE), 0, "9099 is inside");
    for p in [8999, 9000, 9099, 9100] {
        assert_eq!(port(&s, Proto::Udp, p), (3, bytes), "udp/{p}");
    }
    assert_eq!(
        (s.totals.redirected, s.totals.redirect_fallback),
        (0, 0),
        "redirected, fallback"
    );
    assert_consistent(&s);
    unload(&lab, demux);
}

// ------------------------------------------------------------------------------------------
// IPv6, VLAN tags, jumbo frames.

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
    let reply = lab.tcp_exchange_to(ula(8101).into(), &[b'q'; 1000], &[b'r'; 3000]);
    assert_eq!(reply, [b'r'; 3000]);
    let reply = lab.tcp_exchange_to(link_local(8101).into(), &[b'q'; 10], &[b'r'; 10]);
    assert_eq!(reply, [b'r'; 10]);
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

/// Address-scoped bindings on real traffic: b0 has two IPv4 and two IPv6 addresses with a UDP
/// socket on each, all on one port. The subnet (/24, /64) drops, the second address of each
/// family (/32, /128, more specific) passes: each socket receives exactly what its binding
/// passes, the port counts every frame, and each scoped binding exactly the frames it decided.
#[test]
fn scoped_bindings_drop_one_address_and_pass_another() {
    use std::net::SocketAddr;

    use port_demux::IpNet;
    use port_demux_testkit::{Sent, send_udp};

    let lab = Lab::new();
    lab.enable_ipv6();
    let [a, b, c, _] = lab.server_addr().octets();
    let (v4_pass, v6_pass) = lab.add_second_server_addrs();
    let demux = load(&lab);
    let net = |s: &str| -> IpNet { s.parse().expect("a prefix") };
    let v4_subnet = net(&format!("{a}.{b}.{c}.0/24"));
    let v6_subnet = IpNet::new(lab.server_addr6().into(), 64)
        .expect("a prefix")
        .trunc();
    let v4_one = net(&format!("{v4_pass}/32"));
    let v6_one = net(&format!("{v6_pass}/128"));
    let spec: PortSpec = "udp/5353".parse().expect("a port spec");
    let opts = BindOptions {
        owner: "scoped".into(),
        ..BindOptions::default()
    };
    demux
        .bind_dst(spec, &[v4_subnet, v6_subnet], &Action::Drop, &opts)
        .unwrap_or_else(|e| panic!("bind --dst: {e}"));
    demux
        .bind_dst(spec, &[v4_one, v6_one], &Action::Pass, &opts)
        .unwrap_or_else(|e| panic!("bind --dst: {e}"));
    // The same (protocol, prefix, port) again: a conflict naming the owner, nothing changed.
    let again = demux.bind_dst(spec, &[v6_one], &Action::Drop, &BindOptions::default());
    assert!(
        matches!(&again, Err(Error::Conflict { ports, dst: Some(dst), owner: Some(owner), .. })
            if ports.to_string() == "udp/5353" && *dst == v6_one && owner.contains("scoped")),
        "{again:?}"
    );

    let to = |ip: std::net::IpAddr| SocketAddr::new(ip, 5353);
    let targets = [
        (to(lab.server_addr().into()), false, v4_subnet, 7),
        (to(v4_pass.into()), true, v4_one, 5),
        (to(lab.server_addr6().into()), false, v6_subnet, 4),
        (to(v6_pass.into()), true, v6_one, 3),
    ];
    let sockets: Vec<UdpSocket> = targets
        .iter()
        .map(|(addr, ..)| lab.server.udp_socket(*addr))
        .collect();
    let client4 = lab.udp_client();
    let client6 = lab
        .client
        .udp_socket(SocketAddr::from((lab.client_addr6(), 0)));
    let mut all = Sent::default();
    let mut per_binding = Vec::new();
    for (addr, _, dst, count) in &targets {
        let client = if addr.is_ipv4() { &client4 } else { &client6 };
        let sent = send_udp(client, *addr, *count, 100);
        all = all + sent;
        per_binding.push((*dst, sent));
    }
    let counted = poll(
        "every scoped binding to count what was sent to it",
        || stats(&demux),
        |s| {
            per_binding.iter().all(|(dst, sent)| {
                s.scoped(Proto::Udp, 5353, *dst)
                    .is_some_and(|p| (p.packets, p.bytes) == (sent.packets, sent.bytes))
            })
        },
    );
    assert_eq!(port(&counted, Proto::Udp, 5353), (all.packets, all.bytes));
    assert_eq!(counted.scoped.len(), 4, "{:?}", counted.scoped);
    for ((_, passes, dst, count), sock) in targets.iter().zip(&sockets) {
        let want = if *passes {
            usize::try_from(*count).expect("small")
        } else {
            0
        };
        let got = if *passes {
            recv_datagrams(sock, want).len()
        } else {
            count_datagrams(sock, SILENCE)
        };
        assert_eq!(got, want, "socket on {dst}");
    }
    assert_consistent(&counted);

    unbind_hands_addresses_to_the_subnet(
        &demux,
        &client4,
        to(v4_pass.into()),
        [v4_one, v6_one],
        [v4_subnet, v6_subnet],
        &sockets[1],
        all,
    );
    unload(&lab, demux);
}

/// After [`scoped_bindings_drop_one_address_and_pass_another`] sent `all`: unbinding the /32
/// and /128 (`one`) hands their addresses to the subnets' drop (`subnets`); the port keeps
/// counting every frame, and the bindings list what is left.
fn unbind_hands_addresses_to_the_subnet(
    demux: &PortDemux,
    client4: &UdpSocket,
    to_v4_pass: std::net::SocketAddr,
    one: [port_demux::IpNet; 2],
    subnets: [port_demux::IpNet; 2],
    v4_pass_socket: &UdpSocket,
    all: port_demux_testkit::Sent,
) {
    let spec: PortSpec = "udp/5353".parse().expect("a port spec");
    demux
        .unbind_dst(spec, &one)
        .unwrap_or_else(|e| panic!("unbind --dst: {e}"));
    let listed: Vec<_> = demux
        .bindings()
        .expect("bindings")
        .iter()
        .map(|r| r.dst)
        .collect();
    assert_eq!(listed, vec![Some(subnets[0]), Some(subnets[1])]);
    let before = demux
        .stats()
        .expect("stats")
        .scoped(Proto::Udp, 5353, subnets[0])
        .expect("bound")
        .packets;
    let sent = port_demux_testkit::send_udp(client4, to_v4_pass, 2, 100);
    let counted = poll(
        "the /24 to count the frames of the address it now decides",
        || stats(demux),
        |s| {
            s.scoped(Proto::Udp, 5353, subnets[0])
                .is_some_and(|p| p.packets == before + sent.packets)
        },
    );
    assert_eq!(count_datagrams(v4_pass_socket, SILENCE), 0);
    assert_eq!(
        port(&counted, Proto::Udp, 5353),
        (all.packets + sent.packets, all.bytes + sent.bytes)
    );
}

/// A lab with the caller's namespace and interface names and IPv4/IPv6 addresses (documentation
/// prefixes): real UDP and TCP over both families through port-demux on the chosen server end,
/// counted exactly; everything gone after the drop.
#[test]
fn a_lab_with_chosen_names_and_addresses() {
    use std::{
        net::{Ipv4Addr, SocketAddr},
        path::Path,
    };

    use port_demux_testkit::{send_udp, wait_counted as counted};

    let pid = std::process::id();
    let (client_ns, server_ns) = (format!("shop{pid}-cl"), format!("shop{pid}-srv"));
    let (v4_client, v4_server) = (Ipv4Addr::new(192, 0, 2, 20), Ipv4Addr::new(192, 0, 2, 10));
    let v6_client: Ipv6Addr = "2001:db8:77::20".parse().unwrap();
    let v6_server: Ipv6Addr = "2001:db8:77::10".parse().unwrap();
    let lab = Lab::builder()
        .netns(&client_ns, &server_ns)
        .interfaces("shop-out", "shop-in")
        .ipv4(v4_client, v4_server, 27)
        .ipv6(v6_client, v6_server, 64)
        .build();
    assert_eq!(
        (lab.client.name(), lab.server.name()),
        (client_ns.as_str(), server_ns.as_str())
    );
    assert_eq!(
        (lab.client_addr(), lab.server_addr()),
        (v4_client, v4_server)
    );
    assert_eq!(
        (lab.client_addr6(), lab.server_addr6()),
        (v6_client, v6_server)
    );
    let (demux, _) = PortDemux::load(&lab.server.scope(), "shop-in", &LoadOptions::default())
        .unwrap_or_else(|e| panic!("load: {e}"));
    bind(&demux, "udp/5353", "drop");
    bind(&demux, "udp/5000", "pass");
    let dropped = lab.server.udp_socket(SocketAddr::from((v4_server, 5353)));
    let passed6 = lab.server.udp_socket(SocketAddr::from((v6_server, 5000)));
    let client = lab.udp_client();
    assert_eq!(client.local_addr().unwrap().ip(), v4_client);
    let client6 = lab.client.udp_socket(SocketAddr::from((v6_client, 0)));
    let to_drop = send_udp(&client, SocketAddr::from((v4_server, 5353)), 6, 50);
    let to_pass = send_udp(&client6, SocketAddr::from((v6_server, 5000)), 4, 70);
    let (reply, tcp) = lab.tcp_exchange_counted(8080, b"ping", b"pong");
    assert_eq!(reply, b"pong");
    let stats = counted(
        &demux,
        &[
            (Proto::Udp, 5353, to_drop),
            (Proto::Udp, 5000, to_pass),
            (Proto::Tcp, 8080, tcp),
        ],
    );
    assert_eq!(recv_datagrams(&passed6, 4), [70; 4]);
    assert_eq!(count_datagrams(&dropped, SILENCE), 0);
    assert_eq!(stats.totals.demuxed_ipv6, to_pass.packets);
    drop(demux);
    drop(lab);
    for ns in [client_ns, server_ns] {
        assert!(!Path::new("/run/netns").join(&ns).exists(), "{ns} left");
    }
}
