//! Crafted frames through the real XDP program with `BPF_PROG_TEST_RUN` (needs root).
//!
//! Every frame is checked for its exact XDP action and its exact counter deltas: a frame that
//! is not demultiplexed moves its outcome's cell of `GLOBALS` +1 and nothing else; a
//! demultiplexed one moves its (protocol, port) counter +1 packet / + its length, and only a
//! redirect moves a `GLOBALS` cell too (redirected or fallback); every other port counter
//! entry is checked unchanged
//! at the end of each test (one full read before, one after). The expectations are written
//! out from the spec; the reference model's own are its unit tests (`port-demux-common`,
//! `model/tests.rs`), which need no kernel.
//!
//! Kernel facts these tests pin down (Linux 6.18, x86-64, 4 KiB pages):
//! - `BPF_PROG_TEST_RUN` refuses XDP input shorter than an Ethernet header (14 bytes) with
//!   `EINVAL` before the program runs, so runts below 14 bytes cannot reach it this way (nor,
//!   in practice, from a NIC or veth). The program's own "shorter than 14" branch is therefore
//!   unreachable here; 14..=33-byte frames cover the IPv4-header runt branch.
//! - The program sees at most 3520 bytes linear (a page - 256 headroom - 320 shared info);
//!   longer input becomes a multi-buffer frame of which the program (not `xdp.frags`-aware)
//!   sees and counts only the first 3520 bytes. Input needing more than 17 fragments (about
//!   73 KB) fails with `ENOMEM`.

use std::collections::HashMap;

use port_demux_common::{
    Globals, PROTO_TCP, PROTO_UDP, PortCounters,
    action::{self, DROP, PASS, REDIRECT},
    model::{
        ETH_LEN, IPPROTO_DSTOPTS, IPPROTO_ESP, IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPPROTO_NONE,
        IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP,
    },
    outcome::{
        DEMUXED, EXT_HEADERS_TOO_LONG, FRAGMENT, HEADERS_PAST_FIRST_BUFFER, MALFORMED, NOT_IP,
        NOT_TCP_UDP, VLAN_TOO_DEEP,
    },
    port_index,
    taken::{self, REDIRECT_FALLBACK},
};
use port_demux_testkit::{
    frames::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV6, ExtHeader, FrameBuilder, IP_DF, IP_MF,
        IP_RESERVED, IPPROTO_ICMP, Ipv6Builder, TEST_RUN_MAX_LINEAR, TEST_RUN_MIN, nop_options,
        payload, tagged, tcp, to_hex, udp,
    },
    test_run::{
        Harness, LO_IFINDEX, TEST_RUN_LINEAR, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT,
        binding, describe_globals, globals_delta, one_frame_of, port_delta, unbound,
    },
};

const UDP_PORT: u16 = 7777;
const TCP_PORT: u16 = 8080;

/// A harness plus the expectations of one test, checked frame by frame and, for port counters
/// as a whole, at the end.
struct Checker {
    h: Harness,
    start: Vec<PortCounters>,
    ports: HashMap<u32, PortCounters>,
    frames: u64,
}

impl Checker {
    fn new(default_action: u32) -> Self {
        let h = Harness::new(default_action).expect("load the program (run the tests as root)");
        let start = h.ports();
        Self {
            h,
            start,
            ports: HashMap::new(),
            frames: 0,
        }
    }

    /// Runs `frame`, asserting its XDP action, its global cell +1 (if it has one) and no other,
    /// and for a demultiplexed frame its port counter (+1 packet, + its length). (The model is
    /// held to hand-written expectations by its own unit tests in `port-demux-common`, which need
    /// no kernel, and to the kernel by the differential test.)
    fn expect(&mut self, what: &str, frame: &[u8], xdp: u32, outcome: usize, taken: usize) {
        self.expect_counted(what, frame, xdp, outcome, taken, frame.len() as u64);
    }

    /// As [`expect`](Self::expect), for a demultiplexed frame counted at `counted` bytes (a
    /// multi-buffer frame: its first buffer, or the whole frame).
    fn expect_counted(
        &mut self,
        what: &str,
        frame: &[u8],
        xdp: u32,
        outcome: usize,
        taken: usize,
        counted: u64,
    ) {
        let ctx = || format!("{what} ({} bytes):\n{}", frame.len(), to_hex(frame));
        let linear = frame.len().min(TEST_RUN_LINEAR);
        let parsed = (outcome == DEMUXED).then(|| {
            port_demux_common::model::parse_buffers(frame, linear)
                .unwrap_or_else(|o| panic!("{}: the model does not demux it ({o})", ctx()))
        });
        let port = parsed.map(|p| port_index(p.proto, p.port));
        let (family, bytes) = parsed.map_or((0, 0), |p| (p.family, p.bytes));
        let before = self.h.globals();
        let port_before = port.map(|i| self.h.port(i));
        let ret = self.h.run(frame);
        assert_ne!(ret, XDP_ABORTED, "{}", ctx());
        assert_eq!(ret, xdp, "XDP action of {}", ctx());
        let want = one_frame_of(outcome, taken, family);
        let got = globals_delta(&self.h.globals(), &before);
        assert_eq!(
            got,
            want,
            "global counters of {}: {}, want {}",
            ctx(),
            describe_globals(&got),
            describe_globals(&want)
        );
        if let (Some(i), Some(b)) = (port, port_before) {
            let d = port_delta(&self.h.port(i), &b);
            assert_eq!(bytes, counted, "the model's byte count of {}", ctx());
            let w = PortCounters { packets: 1, bytes };
            assert_eq!(d, w, "port[{i}] of {}", ctx());
            let e = self.ports.entry(i).or_default();
            e.packets += 1;
            e.bytes += bytes;
        }
        self.frames += 1;
    }

    /// Asserts an unbound frame's outcome with the default action passing it.
    fn pass(&mut self, what: &str, frame: &[u8], outcome: usize) {
        self.expect(what, frame, XDP_PASS, outcome, taken::PASS);
    }

    /// Asserts a frame's outcome, passed, with the default action passing it, and the
    /// `DEMUXED_IPV6` cell +1 when it is demultiplexed (an IPv6 frame).
    fn pass6(&mut self, what: &str, frame: &[u8], outcome: usize) {
        let before = self.h.globals().frames[Globals::DEMUXED_IPV6];
        self.pass(what, frame, outcome);
        let after = self.h.globals().frames[Globals::DEMUXED_IPV6];
        assert_eq!(
            after - before,
            u64::from(outcome == DEMUXED),
            "{what}: DEMUXED_IPV6"
        );
    }

    /// Every port counter moved by exactly what [`expect`](Self::expect) recorded, and
    /// the per-port packets plus the frames not demultiplexed are the frames sent.
    fn finish(self) {
        let after = self.h.ports();
        let mut demuxed = 0;
        for (i, (a, b)) in (0u32..).zip(after.iter().zip(&self.start)) {
            let want = self.ports.get(&i).copied().unwrap_or_default();
            assert_eq!(port_delta(a, b), want, "port[{i}] over the test");
            demuxed += want.packets;
        }
        let g = self.h.globals();
        assert_eq!(
            demuxed + g.not_demuxed().iter().sum::<u64>(),
            self.frames,
            "per-port packets + frames not demultiplexed"
        );
    }
}

fn udp_frame() -> Vec<u8> {
    FrameBuilder::udp(UDP_PORT, 6).build()
}

fn tcp_frame() -> Vec<u8> {
    FrameBuilder::tcp(TCP_PORT, 6).build()
}

/// Cuts `frame` at every length from 0 to its full length: below 14 bytes the kernel refuses
/// the run; below the IPv4 header, or with the (unchanged) total length past the end, it is
/// malformed; whole, it is demultiplexed. Then the same cuts with the total length made to
/// match: malformed until the whole L4 header (`l4_len`) is there.
fn truncate_everywhere(c: &mut Checker, frame: &[u8], l4_len: usize) {
    let hdr = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    for len in 0..TEST_RUN_MIN {
        let before = c.h.globals();
        let err = c.h.try_run(&frame[..len]);
        assert!(err.is_err(), "a {len}-byte frame was run: {err:?}");
        assert_eq!(c.h.globals(), before, "a refused run counted");
    }
    for len in TEST_RUN_MIN..=frame.len() {
        let cut = &frame[..len];
        let outcome = if len == frame.len() {
            DEMUXED
        } else {
            MALFORMED
        };
        c.pass(&format!("cut at {len}"), cut, outcome);
        if len >= ETH_LEN + 20 {
            let mut fixed = cut.to_vec();
            let total = u16::try_from(len - ETH_LEN).unwrap();
            fixed[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
            let outcome = if len >= ETH_LEN + hdr + l4_len {
                DEMUXED
            } else {
                MALFORMED
            };
            c.pass(
                &format!("cut at {len}, total length fixed"),
                &fixed,
                outcome,
            );
        }
    }
}

#[test]
fn truncated_udp_at_every_length() {
    let mut c = Checker::new(PASS);
    truncate_everywhere(&mut c, &udp_frame(), 8);
    c.finish();
}

#[test]
fn truncated_tcp_at_every_length() {
    let mut c = Checker::new(PASS);
    truncate_everywhere(&mut c, &tcp_frame(), 20);
    // With options, every cut inside them.
    let frame = FrameBuilder::tcp(TCP_PORT, 0)
        .options(nop_options(12))
        .build();
    truncate_everywhere(&mut c, &frame, 20);
    c.finish();
}

#[test]
fn runts() {
    let mut c = Checker::new(PASS);
    let frame = udp_frame();
    for len in 0..TEST_RUN_MIN {
        assert!(c.h.try_run(&frame[..len]).is_err(), "{len} bytes accepted");
    }
    // Exactly an Ethernet header, then a partial IPv4 header.
    for len in TEST_RUN_MIN..ETH_LEN + 20 {
        c.pass(&format!("{len}-byte IPv4 runt"), &frame[..len], MALFORMED);
        let mut arp = frame[..len].to_vec();
        arp[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        c.pass(&format!("{len}-byte ARP runt"), &arp, NOT_IP);
    }
    // Zeroed frames of minimal size: ethertype 0.
    c.pass("14 zero bytes", &[0; 14], NOT_IP);
    c.pass("60 zero bytes", &[0; 60], NOT_IP);
    c.finish();
}

#[test]
fn ihl_below_5_is_malformed() {
    let mut c = Checker::new(PASS);
    for ihl in 0..5 {
        for b in [
            FrameBuilder::udp(UDP_PORT, 40),
            FrameBuilder::tcp(TCP_PORT, 40),
        ] {
            c.pass(&format!("IHL {ihl}"), &b.ihl(ihl).build(), MALFORMED);
        }
    }
    c.finish();
}

#[test]
fn ihl_past_the_end_is_malformed() {
    let mut c = Checker::new(PASS);
    for ihl in 6..=15u8 {
        // The header claims options the datagram does not have: total length < IHL * 4 for
        // the larger IHLs, the L4 header cut short for the others.
        let b = FrameBuilder::udp(UDP_PORT, 0).ihl(ihl);
        c.pass(
            &format!("IHL {ihl}, 28-byte datagram"),
            &b.build(),
            MALFORMED,
        );
        // The total length agrees with the IHL but the frame ends first.
        let b = b.total_len(u16::from(ihl) * 4 + 8);
        c.pass(
            &format!("IHL {ihl}, frame too short"),
            &b.build(),
            MALFORMED,
        );
    }
    // IHL 15 in a frame that ends inside the options.
    let frame = FrameBuilder::tcp(TCP_PORT, 0)
        .options(nop_options(40))
        .build();
    for len in ETH_LEN + 20..ETH_LEN + 60 {
        c.pass(&format!("IHL 15 cut at {len}"), &frame[..len], MALFORMED);
    }
    c.finish();
}

#[test]
fn ihl_15_with_40_bytes_of_options_is_demuxed() {
    let mut c = Checker::new(PASS);
    // Options that would read as other ports if the parser ignored the IHL.
    let decoy: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) | 1).collect();
    for (name, options) in [("NOP", nop_options(40)), ("decoy", decoy)] {
        let frame = FrameBuilder::udp(UDP_PORT, 4)
            .options(options.clone())
            .build();
        assert_eq!(frame[ETH_LEN], 0x4f);
        c.pass(&format!("UDP, IHL 15, {name} options"), &frame, DEMUXED);
        let frame = FrameBuilder::tcp(TCP_PORT, 4).options(options).build();
        c.pass(&format!("TCP, IHL 15, {name} options"), &frame, DEMUXED);
    }
    // Every IHL in between, to the right port each time.
    for words in 0..=10u16 {
        let frame = FrameBuilder::udp(1000 + words, 0)
            .options(nop_options(usize::from(words) * 4))
            .build();
        c.pass(&format!("UDP with {words} option words"), &frame, DEMUXED);
    }
    // Binding the right port proves which port was read.
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(DROP, 0));
    let frame = FrameBuilder::udp(UDP_PORT, 4)
        .options(nop_options(40))
        .build();
    c.expect("IHL 15, bound drop", &frame, XDP_DROP, DEMUXED, taken::DROP);
    c.finish();
}

#[test]
fn total_length_inconsistent_with_the_header() {
    let mut c = Checker::new(PASS);
    for (b, l4) in [
        (FrameBuilder::udp(UDP_PORT, 0), 8u16),
        (FrameBuilder::tcp(TCP_PORT, 0), 20),
        (FrameBuilder::udp(UDP_PORT, 0).options(nop_options(8)), 8),
    ] {
        let hdr = u16::from(b.ihl_nibble()) * 4;
        for total in [0, 1, 19, hdr - 1] {
            let frame = b.clone().total_len(total).build();
            c.pass(&format!("total {total} < IHL*4 {hdr}"), &frame, MALFORMED);
        }
        // No room for the L4 header inside the datagram, although the frame has it.
        for total in [hdr, hdr + 1, hdr + l4 - 1] {
            let frame = b.clone().total_len(total).build();
            c.pass(&format!("total {total}, L4 {l4}"), &frame, MALFORMED);
        }
        let frame = b.clone().total_len(hdr + l4).build();
        c.pass("total exactly the headers", &frame, DEMUXED);
        // Past the end of the frame.
        let real = u16::try_from(b.build().len() - ETH_LEN).unwrap();
        for total in [real + 1, real + 100, u16::MAX] {
            let frame = b.clone().total_len(total).build();
            c.pass(&format!("total {total} > {real}"), &frame, MALFORMED);
        }
        // Shorter than the frame: Ethernet padding is fine.
        let frame = b.clone().trailer(vec![0; 30]).build();
        c.pass("padded", &frame, DEMUXED);
    }
    c.finish();
}

#[test]
fn ip_version_other_than_4_is_malformed() {
    let mut c = Checker::new(PASS);
    for version in (0..16).filter(|&v| v != 4) {
        let frame = FrameBuilder::udp(UDP_PORT, 8).version(version).build();
        c.pass(&format!("version {version}"), &frame, MALFORMED);
    }
    c.finish();
}

#[test]
fn fragments() {
    let mut c = Checker::new(PASS);
    for (b, name) in [
        (FrameBuilder::udp(UDP_PORT, 16), "UDP"),
        (FrameBuilder::tcp(TCP_PORT, 16), "TCP"),
    ] {
        // First fragment: offset 0, the L4 header is there.
        for flags in [IP_MF, IP_MF | IP_DF, IP_DF, IP_RESERVED, 0] {
            let frame = b.clone().flags_frag(flags).build();
            c.pass(
                &format!("{name} flags {flags:#06x}, offset 0"),
                &frame,
                DEMUXED,
            );
        }
        // Non-first fragments, middle (MF) and last (no MF): no ports.
        for offset in [1u16, 2, 100, 0x0100, 0x1000, 0x1fff] {
            for flags in [IP_MF, 0, IP_DF, IP_RESERVED | IP_MF] {
                let frame = b.clone().flags_frag(flags | offset).build();
                let what = format!("{name} flags {flags:#06x}, offset {offset}");
                c.pass(&what, &frame, FRAGMENT);
            }
        }
        // A non-first fragment is a fragment even when too short to hold an L4 header.
        let frame = b.clone().flags_frag(IP_MF | 5).total_len(20).build();
        c.pass(&format!("{name} header-only fragment"), &frame, FRAGMENT);
        // A malformed header stays malformed.
        let frame = b.clone().flags_frag(7).ihl(3).build();
        c.pass(&format!("{name} fragment with IHL 3"), &frame, MALFORMED);
    }
    // A non-first fragment of another protocol is counted under its protocol.
    let frame = FrameBuilder::ip(IPPROTO_ICMP, payload(16))
        .flags_frag(IP_MF | 3)
        .build();
    c.pass("ICMP fragment", &frame, NOT_TCP_UDP);
    // Bindings do not apply to non-first fragments, even under drop.
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(DROP, 0));
    let frame = FrameBuilder::udp(UDP_PORT, 16).flags_frag(10).build();
    c.pass("bound-drop port, non-first fragment", &frame, FRAGMENT);
    let frame = FrameBuilder::udp(UDP_PORT, 16).flags_frag(IP_MF).build();
    c.expect(
        "bound-drop port, first fragment",
        &frame,
        XDP_DROP,
        DEMUXED,
        taken::DROP,
    );
    c.finish();
}

#[test]
fn non_ip_ethertypes() {
    let mut c = Checker::new(DROP);
    for ethertype in [
        ETH_P_ARP, 0x0008, // IPv4 byte-swapped
        0xdd86, // IPv6 byte-swapped
        0x0801, 0x07ff, 0x0000, 0xffff, 0x05dc, // an 802.3 length
        0x9100, // an old QinQ TPID: not walked
    ] {
        let frame = FrameBuilder::udp(UDP_PORT, 20).ethertype(ethertype).build();
        c.pass(&format!("EtherType {ethertype:#06x}"), &frame, NOT_IP);
    }
    // An IPv4 header behind the IPv6 EtherType: version 4 is malformed IPv6.
    let frame = FrameBuilder::udp(UDP_PORT, 20)
        .ethertype(ETH_P_IPV6)
        .build();
    c.pass("IPv4 behind EtherType IPv6", &frame, MALFORMED);
    // Behind a tag, an EtherType that is neither.
    let frame = tagged(
        &FrameBuilder::udp(UDP_PORT, 20).ethertype(ETH_P_ARP).build(),
        ETH_P_8021Q,
        10,
    );
    c.pass("802.1Q-tagged ARP", &frame, NOT_IP);
    c.finish();
}

#[test]
fn other_ip_protocols_are_not_tcp_udp() {
    let mut c = Checker::new(DROP);
    for proto in [IPPROTO_ICMP, 0, 2, 41, 47, 50, 58, 132, 136, 255] {
        let frame = FrameBuilder::ip(proto, payload(24)).build();
        c.pass(&format!("IP protocol {proto}"), &frame, NOT_TCP_UDP);
    }
    // Too short for a UDP header does not matter to ICMP.
    let frame = FrameBuilder::ip(IPPROTO_ICMP, Vec::new()).build();
    c.pass("ICMP, no payload", &frame, NOT_TCP_UDP);
    // A malformed IPv4 header is malformed whatever the protocol.
    let icmp = FrameBuilder::ip(IPPROTO_ICMP, payload(24));
    for (what, b) in [
        ("ICMP, IHL 4", icmp.clone().ihl(4)),
        ("ICMP, version 6", icmp.clone().version(6)),
        ("ICMP, total 19", icmp.clone().total_len(19)),
        ("ICMP, total 0", icmp.clone().total_len(0)),
        ("ICMP, total past the end", icmp.clone().total_len(45)),
        ("ICMP, IHL 15 past the total", icmp.clone().ihl(15)),
    ] {
        c.pass(what, &b.build(), MALFORMED);
    }
    let frame = icmp.clone().options(nop_options(8)).total_len(27).build();
    c.pass("ICMP, total < IHL*4 with options", &frame, MALFORMED);
    let frame = icmp.options(nop_options(8)).total_len(28).build();
    c.pass("ICMP, total = IHL*4 with options", &frame, NOT_TCP_UDP);
    c.finish();
}

#[test]
fn bindings_apply_per_protocol_and_port() {
    let mut c = Checker::new(PASS);
    let udp_i = port_index(PROTO_UDP, UDP_PORT);
    let tcp_i = port_index(PROTO_TCP, UDP_PORT);
    // Unbound under default pass.
    c.pass("unbound", &udp_frame(), DEMUXED);
    // Bound drop.
    c.h.set_binding(udp_i, binding(DROP, 0));
    c.expect("bound drop", &udp_frame(), XDP_DROP, DEMUXED, taken::DROP);
    // The same port number over TCP is another binding.
    let tcp_same_port = FrameBuilder::tcp(UDP_PORT, 0).build();
    c.pass("TCP, same port", &tcp_same_port, DEMUXED);
    c.h.set_binding(tcp_i, binding(DROP, 0));
    c.expect(
        "TCP bound drop",
        &tcp_same_port,
        XDP_DROP,
        DEMUXED,
        taken::DROP,
    );
    // Bound pass.
    c.h.set_binding(udp_i, binding(PASS, 0));
    c.pass("bound pass", &udp_frame(), DEMUXED);
    // Neighbouring ports and the edges are untouched.
    for port in [0, 1, UDP_PORT - 1, UDP_PORT + 1, 0xff00, u16::MAX] {
        let frame = FrameBuilder::udp(port, 0).build();
        c.pass(&format!("UDP port {port}"), &frame, DEMUXED);
        c.h.set_binding(port_index(PROTO_UDP, port), binding(DROP, 0));
        c.expect(
            &format!("UDP port {port} bound drop"),
            &frame,
            XDP_DROP,
            DEMUXED,
            1,
        );
    }
    // Unbinding restores the default.
    c.h.set_binding(tcp_i, unbound());
    c.pass("TCP unbound again", &tcp_same_port, DEMUXED);
    // An action value the program does not know is treated as pass.
    c.h.set_binding(udp_i, binding(99, 0));
    c.pass("unknown action", &udp_frame(), DEMUXED);
    c.finish();
}

#[test]
fn redirect_to_filled_and_empty_slots() {
    let mut c = Checker::new(PASS);
    let udp_i = port_index(PROTO_UDP, UDP_PORT);
    c.h.set_slot(5, LO_IFINDEX);
    c.h.set_binding(udp_i, binding(REDIRECT, 5));
    c.expect(
        "redirect, slot filled",
        &udp_frame(),
        XDP_REDIRECT,
        DEMUXED,
        taken::REDIRECT,
    );
    // Other lengths and TCP, same slot.
    let frame = FrameBuilder::tcp(TCP_PORT, 100).build();
    c.h.set_binding(port_index(PROTO_TCP, TCP_PORT), binding(REDIRECT, 5));
    c.expect(
        "TCP redirect",
        &frame,
        XDP_REDIRECT,
        DEMUXED,
        taken::REDIRECT,
    );
    // An empty slot: passed, counted as a fallback.
    c.h.set_binding(udp_i, binding(REDIRECT, 6));
    c.expect(
        "redirect, slot empty",
        &udp_frame(),
        XDP_PASS,
        DEMUXED,
        REDIRECT_FALLBACK,
    );
    // The target goes away.
    c.h.clear_slot(5);
    c.expect(
        "TCP, slot emptied",
        &frame,
        XDP_PASS,
        DEMUXED,
        REDIRECT_FALLBACK,
    );
    c.h.set_slot(5, LO_IFINDEX);
    c.expect(
        "TCP, slot refilled",
        &frame,
        XDP_REDIRECT,
        DEMUXED,
        taken::REDIRECT,
    );
    // Slots outside the devmap.
    for slot in [64, 65, 1000, u32::MAX] {
        c.h.set_binding(udp_i, binding(REDIRECT, slot));
        let what = format!("redirect to slot {slot}");
        c.expect(&what, &udp_frame(), XDP_PASS, DEMUXED, REDIRECT_FALLBACK);
    }
    // The last slot.
    c.h.set_slot(63, LO_IFINDEX);
    c.h.set_binding(udp_i, binding(REDIRECT, 63));
    c.expect(
        "slot 63",
        &udp_frame(),
        XDP_REDIRECT,
        DEMUXED,
        taken::REDIRECT,
    );
    c.finish();
}

#[test]
fn default_action_drop() {
    let mut c = Checker::new(DROP);
    assert_eq!(c.h.default_action(), DROP);
    // Unbound ports get the default.
    c.expect("unbound UDP", &udp_frame(), XDP_DROP, DEMUXED, taken::DROP);
    c.expect("unbound TCP", &tcp_frame(), XDP_DROP, DEMUXED, taken::DROP);
    // Bindings override it.
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(PASS, 0));
    c.pass("bound pass", &udp_frame(), DEMUXED);
    c.h.set_binding(port_index(PROTO_TCP, TCP_PORT), binding(REDIRECT, 9));
    c.expect(
        "redirect, empty",
        &tcp_frame(),
        XDP_PASS,
        DEMUXED,
        REDIRECT_FALLBACK,
    );
    c.h.set_slot(9, LO_IFINDEX);
    c.expect(
        "redirect",
        &tcp_frame(),
        XDP_REDIRECT,
        DEMUXED,
        taken::REDIRECT,
    );
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), unbound());
    c.expect(
        "unbound again",
        &udp_frame(),
        XDP_DROP,
        DEMUXED,
        taken::DROP,
    );
    // An action value the program does not know is pass, not the default.
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(99, 0));
    c.pass("unknown action", &udp_frame(), DEMUXED);
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), unbound());
    // Frames that are not demultiplexed are passed whatever the default.
    let frame = FrameBuilder::udp(UDP_PORT, 4).ethertype(ETH_P_ARP).build();
    c.pass("ARP", &frame, NOT_IP);
    let frame = FrameBuilder::udp(UDP_PORT, 4).ihl(2).build();
    c.pass("IHL 2", &frame, MALFORMED);
    let frame = FrameBuilder::udp(UDP_PORT, 4).flags_frag(IP_MF | 1).build();
    c.pass("fragment", &frame, FRAGMENT);
    let frame = FrameBuilder::ip(IPPROTO_ICMP, payload(8)).build();
    c.pass("ICMP", &frame, NOT_TCP_UDP);
    c.finish();
}

#[test]
fn default_pass_passes_unbound() {
    let mut c = Checker::new(PASS);
    for port in [0, 22, UDP_PORT, u16::MAX] {
        let frame = FrameBuilder::ip(IPPROTO_UDP, udp(1, port, &[])).build();
        c.pass(&format!("UDP {port}"), &frame, DEMUXED);
        let frame = FrameBuilder::ip(IPPROTO_TCP, tcp(1, port, &[])).build();
        c.pass(&format!("TCP {port}"), &frame, DEMUXED);
    }
    c.finish();
}

/// A UDP frame to [`UDP_PORT`] padded with zeros to `len` bytes (at least 42).
fn padded_udp(len: usize) -> Vec<u8> {
    FrameBuilder::udp(UDP_PORT, 0)
        .trailer(vec![0; len - (ETH_LEN + 20 + 8)])
        .build()
}

/// The bytes the program counts for a `len`-byte frame (on its port counter).
fn counted(h: &Harness, len: usize) -> u64 {
    let i = port_index(PROTO_UDP, UDP_PORT);
    let before = h.port(i);
    assert_eq!(h.run(&padded_udp(len)), XDP_PASS);
    port_delta(&h.port(i), &before).bytes
}

/// The largest frame the program sees whole, found by bytes counted.
fn linear_limit(h: &Harness) -> usize {
    let (mut lo, mut hi) = (ETH_LEN + 28, 65_536usize);
    while lo + 1 < hi {
        let mid = usize::midpoint(lo, hi);
        if counted(h, mid) == mid as u64 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[test]
fn test_run_frame_size_limits() {
    let limit = linear_limit(&Harness::new(PASS).expect("load"));
    println!("BPF_PROG_TEST_RUN XDP linear limit: {limit} bytes");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(limit, TEST_RUN_MAX_LINEAR);
    }
    assert!(limit <= TEST_RUN_MAX_LINEAR);
    let mut checker = Checker::new(PASS);
    // The largest whole frame, its datagram filling it.
    let mut builder = FrameBuilder::udp(UDP_PORT, 0);
    builder.l4.resize(limit - ETH_LEN - 20, 0xee);
    let frame = builder.build();
    assert_eq!(frame.len(), limit);
    checker.pass("largest linear frame", &frame, DEMUXED);
    for len in [limit + 1, 4096, 9000, 65_000] {
        // Longer: a multi-buffer frame. A datagram whose total length covers the whole frame
        // is demultiplexed and counted whole (the program asks for the length, on this path).
        let mut builder = FrameBuilder::udp(UDP_PORT, 0);
        builder.l4.resize(len - ETH_LEN - 20, 0xee);
        let frame = builder.build();
        let total = u16::try_from(len - ETH_LEN).unwrap_or(u16::MAX);
        let frame = if len - ETH_LEN > usize::from(u16::MAX) {
            // Past what an IPv4 length can say: malformed.
            checker.pass(
                &format!("{len} bytes, total length short"),
                &frame,
                MALFORMED,
            );
            continue;
        } else {
            let mut f = frame;
            f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
            f
        };
        checker.expect_counted(
            &format!("{len}-byte datagram"),
            &frame,
            XDP_PASS,
            DEMUXED,
            taken::PASS,
            len as u64,
        );
        // A short datagram with bytes after it in further buffers: counted at the first
        // buffer's length, the datagram being all in it.
        checker.expect_counted(
            &format!("{len}-byte frame, short datagram"),
            &padded_udp(len),
            XDP_PASS,
            DEMUXED,
            taken::PASS,
            limit as u64,
        );
    }
    // Far too long: refused.
    assert!(checker.h.try_run(&vec![0u8; 200_000]).is_err());
    checker.finish();
}

#[test]
fn unbound_binding_reads_back_empty() {
    // The harness writes and reads the real map.
    let mut h = Harness::new(action::PASS).expect("load");
    let i = port_index(PROTO_UDP, 53);
    assert_eq!(h.binding(i), unbound());
    h.set_binding(i, binding(DROP, 3));
    assert_eq!(h.binding(i), binding(DROP, 3));
    h.clear_bindings();
    assert_eq!(h.binding(i), unbound());
}

// ------------------------------------------------------------------------------------------
// IPv6, VLAN tags, multi-buffer frames.

fn udp6() -> Ipv6Builder {
    Ipv6Builder::udp(UDP_PORT, 6)
}

#[test]
fn ipv6_udp_and_tcp_follow_their_bindings() {
    let mut c = Checker::new(PASS);
    let udp_i = port_index(PROTO_UDP, UDP_PORT);
    let tcp_i = port_index(PROTO_TCP, TCP_PORT);
    c.pass6("IPv6 UDP, unbound", &udp6().build(), DEMUXED);
    c.pass6(
        "IPv6 TCP, unbound",
        &Ipv6Builder::tcp(TCP_PORT, 0).build(),
        DEMUXED,
    );
    c.h.set_binding(udp_i, binding(DROP, 0));
    c.expect(
        "IPv6 UDP, drop",
        &udp6().build(),
        XDP_DROP,
        DEMUXED,
        taken::DROP,
    );
    // The same binding and counter for both families.
    c.expect(
        "IPv4 UDP, drop",
        &udp_frame(),
        XDP_DROP,
        DEMUXED,
        taken::DROP,
    );
    c.h.set_slot(3, LO_IFINDEX);
    c.h.set_binding(tcp_i, binding(REDIRECT, 3));
    let tcp6 = Ipv6Builder::tcp(TCP_PORT, 40).build();
    c.expect(
        "IPv6 TCP, redirect",
        &tcp6,
        XDP_REDIRECT,
        DEMUXED,
        taken::REDIRECT,
    );
    c.h.set_binding(tcp_i, binding(REDIRECT, 4));
    c.expect(
        "IPv6 TCP, empty slot",
        &tcp6,
        XDP_PASS,
        DEMUXED,
        REDIRECT_FALLBACK,
    );
    // Link-local and multicast destinations: the address does not matter.
    for dst0 in [0xfe, 0xff, 0x20] {
        let mut b = udp6();
        b.dst[0] = dst0;
        c.expect(
            &format!("IPv6 UDP to {dst0:#x}.."),
            &b.build(),
            XDP_DROP,
            DEMUXED,
            taken::DROP,
        );
    }
    // Padding after the datagram, as a minimum-size Ethernet frame has.
    let mut b = Ipv6Builder::udp(UDP_PORT, 0);
    b.trailer = vec![0; 6];
    c.expect(
        "IPv6 UDP, padded",
        &b.build(),
        XDP_DROP,
        DEMUXED,
        taken::DROP,
    );
    c.finish();
}

#[test]
fn ipv6_every_extension_header_kind() {
    let mut c = Checker::new(PASS);
    for len in [0u8, 1, 7, 255] {
        for kind in [IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS] {
            let frame = udp6().ext(ExtHeader::options(kind, len)).build();
            c.pass6(&format!("header {kind}, length {len}"), &frame, DEMUXED);
        }
        let frame = Ipv6Builder::tcp(TCP_PORT, 0)
            .ext(ExtHeader::ah(len))
            .build();
        c.pass6(&format!("AH, length {len}"), &frame, DEMUXED);
    }
    for more in [false, true] {
        let frame = udp6().ext(ExtHeader::fragment(0, more)).build();
        c.pass6(&format!("first fragment, M {more}"), &frame, DEMUXED);
    }
    // AH's length is in 4-byte units: a bound port read at (len + 2) * 4 proves it, where
    // 8-byte units would read the decoy bytes 4 further on.
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(DROP, 0));
    let mut ah = ExtHeader::ah(1);
    ah.bytes.extend_from_slice(&[0x11, 0x11, 0x22, 0x22]);
    ah.bytes[1] = 2; // 16 bytes: the 4 decoy bytes are part of it
    let frame = udp6().ext(ah).build();
    c.expect("AH, 16 bytes", &frame, XDP_DROP, DEMUXED, taken::DROP);
    // All kinds in one chain, hop-by-hop first.
    let frame = udp6()
        .ext(ExtHeader::options(IPPROTO_HOPOPTS, 0))
        .ext(ExtHeader::options(IPPROTO_DSTOPTS, 1))
        .ext(ExtHeader::options(IPPROTO_ROUTING, 2))
        .ext(ExtHeader::fragment(0, true))
        .ext(ExtHeader::ah(4))
        .ext(ExtHeader::options(IPPROTO_DSTOPTS, 0))
        .build();
    c.expect(
        "six headers, every kind",
        &frame,
        XDP_DROP,
        DEMUXED,
        taken::DROP,
    );
    c.finish();
}

#[test]
fn ipv6_chain_at_and_past_the_bound() {
    let mut c = Checker::new(PASS);
    for n in 0..=6 {
        let mut b = udp6();
        for _ in 0..n {
            b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 0));
        }
        c.pass6(
            &format!("{n} destination options headers"),
            &b.build(),
            DEMUXED,
        );
    }
    let seven = |last: ExtHeader| {
        let mut b = udp6();
        for _ in 0..6 {
            b = b.ext(ExtHeader::options(IPPROTO_ROUTING, 0));
        }
        b.ext(last).build()
    };
    for (what, h) in [
        ("routing", ExtHeader::options(IPPROTO_ROUTING, 0)),
        (
            "destination options",
            ExtHeader::options(IPPROTO_DSTOPTS, 3),
        ),
        ("fragment", ExtHeader::fragment(0, true)),
        ("later fragment", ExtHeader::fragment(5, true)),
        ("AH", ExtHeader::ah(1)),
    ] {
        c.pass6(
            &format!("7th header {what}"),
            &seven(h),
            EXT_HEADERS_TOO_LONG,
        );
    }
    // Hop-by-hop anywhere but first is malformed, also as the 7th.
    c.pass6(
        "7th header hop-by-hop",
        &seven(ExtHeader::options(IPPROTO_HOPOPTS, 0)),
        MALFORMED,
    );
    // After six headers, what ends the walk still counts as itself.
    let mut b = Ipv6Builder::ip(IPPROTO_ESP, payload(16));
    for _ in 0..6 {
        b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 0));
    }
    c.pass6("six headers, then ESP", &b.build(), NOT_TCP_UDP);
    // A too-long chain is passed even when its port is bound to drop.
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(DROP, 0));
    c.pass6(
        "7 headers, port bound drop",
        &seven(ExtHeader::options(IPPROTO_DSTOPTS, 0)),
        EXT_HEADERS_TOO_LONG,
    );
    c.finish();
}

#[test]
fn ipv6_hop_by_hop_only_first() {
    let mut c = Checker::new(PASS);
    let frame = udp6()
        .ext(ExtHeader::options(IPPROTO_DSTOPTS, 0))
        .ext(ExtHeader::options(IPPROTO_HOPOPTS, 0))
        .build();
    c.pass6("hop-by-hop second", &frame, MALFORMED);
    let frame = udp6()
        .ext(ExtHeader::options(IPPROTO_HOPOPTS, 0))
        .ext(ExtHeader::options(IPPROTO_HOPOPTS, 0))
        .build();
    c.pass6("hop-by-hop twice", &frame, MALFORMED);
    c.finish();
}

#[test]
fn ipv6_fragments() {
    let mut c = Checker::new(PASS);
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(DROP, 0));
    for offset in [1u16, 2, 100, 0x1fff] {
        for more in [false, true] {
            let frame = udp6().ext(ExtHeader::fragment(offset, more)).build();
            c.pass6(&format!("offset {offset}, M {more}"), &frame, FRAGMENT);
            // Behind other headers, and of a protocol that is not TCP/UDP.
            let frame = Ipv6Builder::ip(IPPROTO_ICMPV6, payload(8))
                .ext(ExtHeader::options(IPPROTO_HOPOPTS, 0))
                .ext(ExtHeader::fragment(offset, more))
                .build();
            c.pass6(&format!("ICMPv6 offset {offset}"), &frame, FRAGMENT);
        }
    }
    // A later fragment too short to hold ports is still a fragment.
    let mut b = Ipv6Builder::ip(IPPROTO_UDP, Vec::new()).ext(ExtHeader::fragment(9, false));
    b.l4 = vec![1, 2];
    c.pass6("later fragment, 2 bytes", &b.build(), FRAGMENT);
    // The first fragment carries the ports: the binding applies.
    let frame = udp6().ext(ExtHeader::fragment(0, true)).build();
    c.expect(
        "first fragment, drop",
        &frame,
        XDP_DROP,
        DEMUXED,
        taken::DROP,
    );
    // A fragment header cut short inside the datagram is malformed.
    let mut b = udp6().ext(ExtHeader::fragment(0, true));
    b.l4.clear();
    b.payload_len = Some(4);
    c.pass6("fragment header of 4 bytes", &b.build(), MALFORMED);
    c.finish();
}

#[test]
fn ipv6_other_protocols_are_not_tcp_udp() {
    let mut c = Checker::new(DROP);
    for proto in [
        IPPROTO_ESP,
        IPPROTO_NONE,
        IPPROTO_ICMPV6,
        132,
        135,
        139,
        253,
        4,
        41,
    ] {
        let frame = Ipv6Builder::ip(proto, payload(24)).build();
        c.pass6(&format!("next header {proto}"), &frame, NOT_TCP_UDP);
        let frame = Ipv6Builder::ip(proto, payload(24))
            .ext(ExtHeader::options(IPPROTO_DSTOPTS, 0))
            .build();
        c.pass6(&format!("dstopts, then {proto}"), &frame, NOT_TCP_UDP);
    }
    // Neighbour discovery: ICMPv6 behind the fixed header.
    let frame = Ipv6Builder::ip(IPPROTO_ICMPV6, vec![135, 0, 0, 0, 0, 0, 0, 0]).build();
    c.pass6("neighbour solicitation", &frame, NOT_TCP_UDP);
    c.finish();
}

#[test]
fn ipv6_payload_length_and_version() {
    let mut c = Checker::new(PASS);
    let real = u16::try_from(udp6().build().len() - ETH_LEN - 40).unwrap();
    for (what, len, outcome) in [
        ("exact", real, DEMUXED),
        ("one past the frame", real + 1, MALFORMED),
        ("far past", u16::MAX, MALFORMED),
        ("UDP header only", 8, DEMUXED),
        ("7: UDP header cut", 7, MALFORMED),
        ("0 (a jumbogram's)", 0, MALFORMED),
    ] {
        let mut b = udp6();
        b.payload_len = Some(len);
        c.pass6(&format!("payload length {what}"), &b.build(), outcome);
    }
    // TCP needs its 20 bytes inside the payload length.
    let mut b = Ipv6Builder::tcp(TCP_PORT, 4);
    b.payload_len = Some(19);
    c.pass6("TCP in 19 bytes", &b.build(), MALFORMED);
    b.payload_len = Some(20);
    c.pass6("TCP in 20 bytes", &b.build(), DEMUXED);
    // Extension headers past the payload length, inside the frame.
    let mut b = udp6().ext(ExtHeader::options(IPPROTO_ROUTING, 0));
    b.payload_len = Some(1);
    c.pass6(
        "routing header past the payload length",
        &b.build(),
        MALFORMED,
    );
    for version in (0..16).filter(|&v| v != 6) {
        let mut b = udp6();
        b.version = version;
        c.pass6(&format!("version {version}"), &b.build(), MALFORMED);
    }
    c.finish();
}

/// Cuts the untagged IPv6 frame `b` builds at every length the kernel runs: with the payload
/// length unchanged, past the end until the frame is whole; with it made to match the cut,
/// malformed until the whole L4 header (`l4_len`) is there. `what` prefixes the messages.
fn truncate_ipv6_everywhere(c: &mut Checker, b: &Ipv6Builder, l4_len: usize, what: &str) {
    let full = b.build();
    let (l3, l4) = (b.l3(), b.l4_offset());
    for len in TEST_RUN_MIN..=full.len() {
        let cut = &full[..len];
        let outcome = if len == full.len() {
            DEMUXED
        } else {
            MALFORMED
        };
        c.pass6(&format!("{what}cut at {len}"), cut, outcome);
        if len >= l3 + 40 {
            let mut fixed = cut.to_vec();
            let payload = u16::try_from(len - l3 - 40).unwrap();
            fixed[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
            let outcome = if len >= l4 + l4_len {
                DEMUXED
            } else {
                MALFORMED
            };
            c.pass6(
                &format!("{what}cut at {len}, payload length fixed"),
                &fixed,
                outcome,
            );
        }
    }
}

#[test]
fn ipv6_truncated_at_every_length() {
    let mut c = Checker::new(PASS);
    let b = udp6()
        .ext(ExtHeader::options(IPPROTO_HOPOPTS, 0))
        .ext(ExtHeader::fragment(0, false))
        .ext(ExtHeader::ah(0));
    let l4 = b.l4_offset();
    // Every header boundary: 54 (IPv6), 62, 70, 78 (AH), 86 (UDP header).
    assert_eq!((ETH_LEN + 40, l4, l4 + 8), (54, 78, 86));
    truncate_ipv6_everywhere(&mut c, &b, 8, "");
    // The chains the program reads at constant offsets (one or two 8-byte headers).
    for (what, b, l4_len) in [
        (
            "hop-by-hop, destination options, ",
            udp6()
                .ext(ExtHeader::options(IPPROTO_HOPOPTS, 0))
                .ext(ExtHeader::options(IPPROTO_DSTOPTS, 0)),
            8,
        ),
        (
            "routing, first fragment, ",
            udp6()
                .ext(ExtHeader::options(IPPROTO_ROUTING, 0))
                .ext(ExtHeader::fragment(0, true)),
            8,
        ),
        (
            "first fragment, TCP, ",
            Ipv6Builder::tcp(TCP_PORT, 4).ext(ExtHeader::fragment(0, false)),
            20,
        ),
    ] {
        truncate_ipv6_everywhere(&mut c, &b, l4_len, what);
    }
    // Without extension headers (the fast parse's frames): UDP and TCP.
    truncate_ipv6_everywhere(&mut c, &udp6(), 8, "no extension header, ");
    truncate_ipv6_everywhere(
        &mut c,
        &Ipv6Builder::tcp(TCP_PORT, 4),
        20,
        "no extension header, ",
    );
    c.finish();
}

#[test]
fn vlan_tags() {
    let mut c = Checker::new(PASS);
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(DROP, 0));
    for (what, tpid, tci) in [
        ("802.1Q VLAN 10", ETH_P_8021Q, 10),
        ("802.1Q priority tag (VLAN 0, PCP 5)", ETH_P_8021Q, 5 << 13),
        ("802.1ad VLAN 4094", ETH_P_8021AD, 4094),
    ] {
        let frame = tagged(&udp_frame(), tpid, tci);
        c.expect(
            &format!("{what}, IPv4"),
            &frame,
            XDP_DROP,
            DEMUXED,
            taken::DROP,
        );
        let frame = udp6().tag(tpid, tci).build();
        c.expect(
            &format!("{what}, IPv6"),
            &frame,
            XDP_DROP,
            DEMUXED,
            taken::DROP,
        );
    }
    // QinQ: 802.1ad outside, 802.1Q inside, and two 802.1Q.
    for outer in [ETH_P_8021AD, ETH_P_8021Q] {
        let frame = tagged(&tagged(&udp_frame(), ETH_P_8021Q, 20), outer, 100);
        c.expect(
            &format!("two tags, outer {outer:#06x}, IPv4"),
            &frame,
            XDP_DROP,
            DEMUXED,
            taken::DROP,
        );
        let frame = udp6().tag(outer, 100).tag(ETH_P_8021Q, 20).build();
        c.expect(
            &format!("two tags, outer {outer:#06x}, IPv6"),
            &frame,
            XDP_DROP,
            DEMUXED,
            taken::DROP,
        );
    }
    // Three tags: too deep, passed whatever the binding.
    let frame = udp6()
        .tag(ETH_P_8021AD, 1)
        .tag(ETH_P_8021Q, 2)
        .tag(ETH_P_8021Q, 3)
        .build();
    c.pass("three tags, IPv6", &frame, VLAN_TOO_DEEP);
    let frame = tagged(
        &tagged(&tagged(&udp_frame(), ETH_P_8021Q, 1), ETH_P_8021Q, 2),
        ETH_P_8021AD,
        3,
    );
    c.pass("three tags, IPv4", &frame, VLAN_TOO_DEEP);
    // Cut inside the tags (14..22 bytes), and just after them.
    let two = udp6().tag(ETH_P_8021AD, 7).tag(ETH_P_8021Q, 8).build();
    for len in TEST_RUN_MIN..ETH_LEN + 8 {
        c.pass(&format!("two tags cut at {len}"), &two[..len], MALFORMED);
    }
    c.pass("two tags, then nothing", &two[..ETH_LEN + 8], MALFORMED);
    // Tagged, but neither IP version.
    let arp = tagged(
        &FrameBuilder::udp(UDP_PORT, 20).ethertype(ETH_P_ARP).build(),
        ETH_P_8021Q,
        10,
    );
    c.pass("802.1Q-tagged ARP", &arp, NOT_IP);
    // Tagged fragments and ICMP keep their outcome.
    let frame = tagged(
        &FrameBuilder::udp(UDP_PORT, 16)
            .flags_frag(IP_MF | 3)
            .build(),
        ETH_P_8021Q,
        1,
    );
    c.pass("tagged IPv4 later fragment", &frame, FRAGMENT);
    let frame = Ipv6Builder::ip(IPPROTO_ICMPV6, payload(8))
        .tag(ETH_P_8021AD, 1)
        .tag(ETH_P_8021Q, 2)
        .build();
    c.pass("QinQ ICMPv6", &frame, NOT_TCP_UDP);
    c.finish();
}

/// The fast parse's tagged frames (one and two tags, IPv4 with and without options, IPv6,
/// UDP and TCP) cut at every length, their lengths as sent: malformed until whole; whole and
/// padded, demultiplexed at their full length.
#[test]
fn tagged_frames_cut_at_every_length() {
    let mut c = Checker::new(PASS);
    let frames = [
        ("IPv4 UDP", udp_frame()),
        ("IPv4 TCP", tcp_frame()),
        (
            "IPv4 UDP with options",
            FrameBuilder::udp(UDP_PORT, 6)
                .options(nop_options(12))
                .build(),
        ),
        ("IPv6 UDP", udp6().build()),
        ("IPv6 TCP", Ipv6Builder::tcp(TCP_PORT, 4).build()),
    ];
    for (what, frame) in frames {
        let one = tagged(&frame, ETH_P_8021Q, 10);
        let two = tagged(&one, ETH_P_8021AD, 20);
        for (tags, tagged_frame) in [("one tag", one), ("two tags", two)] {
            for len in TEST_RUN_MIN..tagged_frame.len() {
                c.pass(
                    &format!("{what}, {tags}, cut at {len}"),
                    &tagged_frame[..len],
                    MALFORMED,
                );
            }
            c.pass(&format!("{what}, {tags}, whole"), &tagged_frame, DEMUXED);
            let mut padded = tagged_frame.clone();
            padded.extend_from_slice(&[0; 9]);
            c.pass(&format!("{what}, {tags}, padded"), &padded, DEMUXED);
        }
    }
    c.finish();
}

/// A datagram padded to `len` bytes with its lengths covering all of it.
fn jumbo_udp6(len: usize) -> Vec<u8> {
    let b = udp6();
    let mut b = Ipv6Builder::udp(UDP_PORT, len - b.l4_offset() - 8);
    b.dst[15] = 9;
    b.build()
}

#[test]
fn multi_buffer_frames() {
    let mut c = Checker::new(PASS);
    c.h.set_binding(port_index(PROTO_UDP, UDP_PORT), binding(DROP, 0));
    // Jumbo datagrams over several buffers: demultiplexed, counted whole.
    let frame = jumbo_udp6(8062);
    assert_eq!(frame.len(), 8062);
    c.expect_counted(
        "8,062-byte IPv6 UDP",
        &frame,
        XDP_DROP,
        DEMUXED,
        taken::DROP,
        8062,
    );
    let mut b = FrameBuilder::udp(UDP_PORT, 8000);
    b.l4[4..6].copy_from_slice(&8008u16.to_be_bytes());
    let frame = b.build();
    assert_eq!(frame.len(), 8042);
    c.expect_counted(
        "8,042-byte IPv4 UDP",
        &frame,
        XDP_DROP,
        DEMUXED,
        taken::DROP,
        8042,
    );
    let frame = tagged(&frame, ETH_P_8021Q, 9);
    c.expect_counted(
        "8,046-byte tagged IPv4",
        &frame,
        XDP_DROP,
        DEMUXED,
        taken::DROP,
        8046,
    );
    // Lengths past the whole frame: malformed, the helper says so.
    let mut frame = jumbo_udp6(5000);
    frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(5000u16 - 54 + 1).to_be_bytes());
    c.pass6(
        "IPv6 payload length 1 past the 5,000-byte frame",
        &frame,
        MALFORMED,
    );
    // Extension headers that push TCP past the first buffer (3,520 bytes): passed and
    // counted as such, whatever the binding.
    c.h.set_binding(port_index(PROTO_TCP, TCP_PORT), binding(DROP, 0));
    let mut b = Ipv6Builder::tcp(TCP_PORT, 2000);
    for _ in 0..2 {
        b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 255)); // 2,048 bytes each
    }
    assert!(b.l4_offset() > TEST_RUN_LINEAR);
    let frame = b.build();
    c.pass6(
        "TCP at byte 4,150 of 6,170",
        &frame,
        HEADERS_PAST_FIRST_BUFFER,
    );
    // The ports just inside the first buffer: demultiplexed, counted whole.
    let mut b = Ipv6Builder::tcp(TCP_PORT, 3000);
    b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 255));
    b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 176)); // ends at 54 + 2048 + 1416 = 3518
    assert_eq!(b.l4_offset() + 4, TEST_RUN_LINEAR + 2);
    let frame = b.build();
    c.pass6(
        "ports 2 bytes past the first buffer",
        &frame,
        HEADERS_PAST_FIRST_BUFFER,
    );
    let mut b = Ipv6Builder::tcp(TCP_PORT, 3000);
    b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 255));
    b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 175));
    assert_eq!(b.l4_offset() + 4, TEST_RUN_LINEAR - 6);
    let frame = b.build();
    let len = frame.len() as u64;
    c.expect_counted(
        "ports inside the first buffer",
        &frame,
        XDP_DROP,
        DEMUXED,
        taken::DROP,
        len,
    );
    // An extension header whose first bytes are in the second buffer.
    let mut b = Ipv6Builder::udp(UDP_PORT, 100);
    b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 255));
    b = b.ext(ExtHeader::options(IPPROTO_DSTOPTS, 180)); // ends at 3550
    b = b.ext(ExtHeader::options(IPPROTO_ROUTING, 0));
    c.pass6(
        "routing header in the second buffer",
        &b.build(),
        HEADERS_PAST_FIRST_BUFFER,
    );
    c.finish();
}

/// An address-scoped rule for the harness.
fn rule(
    index: u32,
    net: &str,
    act: u32,
    slot: u32,
    id: u32,
) -> port_demux_common::model::ScopedRule {
    let net = port_demux::prefix::parse_prefix(net).expect("a prefix");
    let (family, addr, len) = port_demux::prefix::prefix_key(&net);
    port_demux_common::model::ScopedRule {
        index,
        family,
        addr,
        len,
        action: act,
        slot,
        id,
    }
}

/// An IPv4 UDP frame to `dst:dport`, with `tags` VLAN tags (0: the fast path).
fn udp4_to(dst: [u8; 4], dport: u16, tags: usize) -> Vec<u8> {
    let mut frame = FrameBuilder::udp(dport, 16).build();
    frame[30..34].copy_from_slice(&dst);
    for _ in 0..tags {
        frame = tagged(&frame, ETH_P_8021Q, 5);
    }
    frame
}

/// An IPv6 UDP frame to `dst:dport`, with `tags` VLAN tags.
fn udp6_to(dst: std::net::Ipv6Addr, dport: u16, tags: usize) -> Vec<u8> {
    let mut b = Ipv6Builder::udp(dport, 16);
    b.dst = dst.octets();
    for _ in 0..tags {
        b = b.tag(ETH_P_8021Q, 5);
    }
    b.build()
}

#[test]
fn scoped_bindings_at_prefix_boundaries() {
    let mut h = Harness::new(PASS).expect("load");
    let port = port_index(PROTO_UDP, 53);
    h.set_slot(0, LO_IFINDEX);
    // The port's binding without a prefix drops; prefixes nest three deep in each family.
    h.set_binding(port, binding(DROP, 0));
    h.set_scoped(vec![
        rule(port, "192.0.2.0/24", PASS, 0, 0),
        rule(port, "192.0.2.128/25", DROP, 0, 1),
        rule(port, "192.0.2.200", REDIRECT, 0, 2),
        rule(port, "2001:db8::/32", PASS, 0, 3),
        rule(port, "2001:db8:1::/48", DROP, 0, 4),
        rule(port, "2001:db8:1::5", REDIRECT, 1, 5),
        // Another port's prefix covering everything: never this port's.
        rule(port_index(PROTO_TCP, 53), "0.0.0.0/0", REDIRECT, 0, 6),
    ]);
    // (destination, tags, XDP action written out from the spec, scoped id counted).
    let v4 = |a: u8, b: u8, c: u8, d: u8| [a, b, c, d];
    let cases4 = [
        (v4(192, 0, 1, 255), XDP_DROP, None),
        (v4(192, 0, 2, 0), XDP_PASS, Some(0)),
        (v4(192, 0, 2, 127), XDP_PASS, Some(0)),
        (v4(192, 0, 2, 128), XDP_DROP, Some(1)),
        (v4(192, 0, 2, 199), XDP_DROP, Some(1)),
        (v4(192, 0, 2, 200), XDP_REDIRECT, Some(2)),
        (v4(192, 0, 2, 201), XDP_DROP, Some(1)),
        (v4(192, 0, 2, 255), XDP_DROP, Some(1)),
        (v4(192, 0, 3, 0), XDP_DROP, None),
        (v4(0, 0, 0, 0), XDP_DROP, None),
        (v4(255, 255, 255, 255), XDP_DROP, None),
    ];
    for tags in 0..=2 {
        for (dst, want, id) in cases4 {
            let frame = udp4_to(dst, 53, tags);
            let verdict = h
                .check(&frame, false)
                .unwrap_or_else(|m| panic!("{dst:?} with {tags} tags: {m}"));
            assert_eq!((verdict.xdp_action, verdict.scoped), (want, id), "{dst:?}");
        }
    }
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("an address");
    let cases6 = [
        (v6("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"), XDP_DROP, None),
        (v6("2001:db8::"), XDP_PASS, Some(3)),
        (v6("2001:db8:0:ffff:ffff:ffff:ffff:ffff"), XDP_PASS, Some(3)),
        (v6("2001:db8:1::"), XDP_DROP, Some(4)),
        (v6("2001:db8:1::4"), XDP_DROP, Some(4)),
        // Slot 1 is empty: the redirect falls back to pass.
        (v6("2001:db8:1::5"), XDP_PASS, Some(5)),
        (v6("2001:db8:1::6"), XDP_DROP, Some(4)),
        (v6("2001:db8:1:ffff:ffff:ffff:ffff:ffff"), XDP_DROP, Some(4)),
        (v6("2001:db8:2::"), XDP_PASS, Some(3)),
        (
            v6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
            XDP_PASS,
            Some(3),
        ),
        (v6("2001:db9::"), XDP_DROP, None),
        (v6("::"), XDP_DROP, None),
        (
            v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            XDP_DROP,
            None,
        ),
    ];
    for tags in 0..=2 {
        for (dst, want, id) in cases6 {
            let frame = udp6_to(dst, 53, tags);
            let verdict = h
                .check(&frame, false)
                .unwrap_or_else(|m| panic!("{dst} with {tags} tags: {m}"));
            assert_eq!((verdict.xdp_action, verdict.scoped), (want, id), "{dst}");
        }
    }
    // A port with prefixes of one family only and no binding without a prefix: the other
    // family's frames take the default action, counted under the port only.
    let only4 = port_index(PROTO_UDP, 54);
    let mut rules = vec![rule(only4, "198.51.100.0/24", DROP, 0, 7)];
    rules.push(rule(port, "192.0.2.0/24", PASS, 0, 0));
    h.set_scoped(rules);
    for (frame, want, id) in [
        (udp4_to([198, 51, 100, 9], 54, 0), XDP_DROP, Some(7)),
        (udp4_to([198, 51, 101, 9], 54, 0), XDP_PASS, None),
        (udp6_to(v6("2001:db8::1"), 54, 0), XDP_PASS, None),
        // Port 53 lost its nested prefixes: the /24 passes what the /25 dropped.
        (udp4_to([192, 0, 2, 130], 53, 0), XDP_PASS, Some(0)),
        (udp6_to(v6("2001:db8:1::5"), 53, 0), XDP_DROP, None),
    ] {
        let verdict = h.check(&frame, false).unwrap_or_else(|m| panic!("{m}"));
        assert_eq!((verdict.xdp_action, verdict.scoped), (want, id));
    }
    // Unscoped again: the port's own binding only.
    h.set_scoped(Vec::new());
    assert_eq!(h.binding(port).action, DROP);
    let verdict = h
        .check(&udp4_to([192, 0, 2, 200], 53, 0), false)
        .unwrap_or_else(|m| panic!("{m}"));
    assert_eq!((verdict.xdp_action, verdict.scoped), (XDP_DROP, None));
}
