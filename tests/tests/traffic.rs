//! Real traffic through port-demux on a veth in its own network namespaces: real sockets send
//! real frames, the library loads, binds and reads counters, and every count is exact.
//!
//! Needs root. Each test builds its own [`Lab`] and removes it (and its pins) when it ends.

use std::collections::BTreeSet;

use port_demux::{
    Action, BindOptions, BindingRange, Error, LoadOptions, PortDemux, PortSpec, Proto, Stats,
    common::outcome,
};
use port_demux_testkit::netns::{
    Capture, Lab, REDIRECT_IF, SERVER_IF, SILENCE, SINK_IF, UDP_OVERHEAD, count_datagrams, poll,
    recv_datagrams, tcp_to, udp_to,
};

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
            port,
            action,
            owner,
        } => {
            assert_eq!(port, "udp/7777");
            assert_eq!(action, "drop");
            assert_eq!(owner, " (owner alpha)");
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
    before.insert(
        1,
        BindingRange {
            ports: "tcp/9000-9099".parse().expect("spec"),
            action: Action::Drop,
            owner: String::new(),
        },
    );
    assert_eq!(demux.bindings().expect("bindings"), before);
    for (ports, first_conflict) in [("tcp/9050-9150", "tcp/9050"), ("tcp/8990-9000", "tcp/9000")] {
        match demux.bind(
            ports.parse().expect("spec"),
            &Action::Pass,
            &BindOptions::default(),
        ) {
            Err(Error::Conflict { port, action, .. }) => {
                assert_eq!((port.as_str(), action.as_str()), (first_conflict, "drop"));
            }
            other => panic!("bind {ports}: {other:?}"),
        }
        assert_eq!(demux.bindings().expect("bindings"), before, "after {ports}");
    }
    match demux.unbind("tcp/9090-9110".parse().expect("spec")) {
        Err(Error::NotBound { port }) => assert_eq!(port, "tcp/9100"),
        other => panic!("unbind: {other:?}"),
    }
    assert_eq!(demux.bindings().expect("bindings"), before, "after unbind");

    // Service names.
    bind(&demux, "tcp/http", "pass");
    assert!(demux.bindings().expect("bindings").contains(&BindingRange {
        ports: PortSpec::single(Proto::Tcp, 80),
        action: Action::Pass,
        owner: String::new(),
    }));

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
    assert_eq!(
        udp,
        vec![BindingRange {
            ports: "udp/7770-7779".parse().expect("spec"),
            action: Action::Pass,
            owner: "beta".into(),
        }]
    );
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
