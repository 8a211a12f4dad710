//! The reference model held to hand-written expectations, one per frame class of the spec
//! (the README's field table): no kernel, so plain `cargo test` runs them. The kernel program
//! is held to the same expectations by the kit's `test_run` tests, and to this model frame for
//! frame by its differential test.

extern crate std;

use std::{vec, vec::Vec};

use super::*;
use crate::{OWNER_LEN, PROTO_TCP, PROTO_UDP, action, family, outcome, port_index, taken};

const UDP_PORT: u16 = 7777;
const TCP_PORT: u16 = 8080;

/// A UDP (8 bytes + `payload` zeros) or TCP (20 bytes) header to `port`.
fn l4(proto: u8, port: u16, payload: usize) -> Vec<u8> {
    let mut h = vec![
        0u8;
        if proto == IPPROTO_TCP {
            TCP_MIN_LEN
        } else {
            UDP_LEN
        }
    ];
    h[..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&port.to_be_bytes());
    if proto == IPPROTO_TCP {
        h[12] = 5 << 4;
    }
    h.resize(h.len() + payload, 0);
    h
}

/// Ethernet header with `ether_type` behind `tags` (TPID, VLAN ID), then `l3`.
fn eth(ether_type: u16, tags: &[(u16, u16)], l3: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    for &(tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An IPv4 header (IHL from `options`, total length from `body`) and `body`.
fn ipv4_packet(proto: u8, options: &[u8], frag: u16, body: &[u8]) -> Vec<u8> {
    let ihl = u8::try_from(5 + options.len() / 4).unwrap();
    let total = u16::try_from(usize::from(ihl) * 4 + body.len()).unwrap();
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
    h.extend_from_slice(options);
    h.extend_from_slice(body);
    h
}

fn ipv4(proto: u8, port: u16) -> Vec<u8> {
    eth(
        ETH_P_IP,
        &[],
        &ipv4_packet(proto, &[], 0, &l4(proto, port, 18)),
    )
}

/// An IPv6 header whose payload is the extension headers `ext` (next header, bytes), then
/// `body` (protocol `last`).
fn ipv6_packet(ext: &[(u8, Vec<u8>)], last: u8, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut bytes = bytes.clone();
        bytes[0] = ext.get(i + 1).map_or(last, |e| e.0);
        payload.extend_from_slice(&bytes);
    }
    payload.extend_from_slice(body);
    let first = ext.first().map_or(last, |e| e.0);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(&[0xfd; 32]);
    h.extend_from_slice(&payload);
    h
}

fn ipv6(ext: &[(u8, Vec<u8>)], proto: u8, port: u16) -> Vec<u8> {
    eth(
        ETH_P_IPV6,
        &[],
        &ipv6_packet(ext, proto, &l4(proto, port, 10)),
    )
}

/// An extension header of kind `next` and `len` bytes with its length byte right (AH counts in
/// 4-byte words less 2, the others in 8-byte words less 1); a fragment header at `offset`.
fn ext(next: u8, len: usize) -> (u8, Vec<u8>) {
    let mut h = vec![0u8; len];
    h[1] = match next {
        IPPROTO_AH => u8::try_from(len / 4 - 2).unwrap(),
        _ => u8::try_from(len / 8 - 1).unwrap(),
    };
    (next, h)
}

fn fragment(offset: u16, more: bool) -> (u8, Vec<u8>) {
    let mut h = vec![0u8; FRAG_HDR_LEN];
    h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    (IPPROTO_FRAGMENT, h)
}

fn demuxed(frame: &[u8], proto: u32, port: u16, fam: u8) {
    let got = parse_buffers(frame, frame.len());
    assert_eq!(
        got.map(|p| (p.proto, p.port, p.family, p.bytes)),
        Ok((proto, port, fam, frame.len() as u64)),
        "{frame:02x?}"
    );
}

fn outcome_of(frame: &[u8]) -> usize {
    match parse(frame) {
        Ok(_) => outcome::DEMUXED,
        Err(o) => o,
    }
}

#[test]
fn ipv4_tcp_and_udp_are_demultiplexed_whole() {
    demuxed(
        &ipv4(IPPROTO_UDP, UDP_PORT),
        PROTO_UDP,
        UDP_PORT,
        family::IPV4,
    );
    demuxed(
        &ipv4(IPPROTO_TCP, TCP_PORT),
        PROTO_TCP,
        TCP_PORT,
        family::IPV4,
    );
    // Ethernet padding after the datagram is counted too.
    let mut padded = ipv4(IPPROTO_UDP, UDP_PORT);
    padded.extend_from_slice(&[0; 30]);
    demuxed(&padded, PROTO_UDP, UDP_PORT, family::IPV4);
}

#[test]
fn ipv4_cut_anywhere_is_malformed() {
    for proto in [IPPROTO_UDP, IPPROTO_TCP] {
        let frame = ipv4(proto, 1);
        for len in 0..frame.len() {
            assert_eq!(
                outcome_of(&frame[..len]),
                outcome::MALFORMED,
                "{proto} cut at {len}"
            );
        }
    }
}

#[test]
fn ipv4_header_fields() {
    let body = l4(IPPROTO_UDP, UDP_PORT, 0);
    // The IHL decides where the ports are: decoy options that would read as another port.
    let decoy: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) | 1).collect();
    for words in 0..=10 {
        let frame = eth(
            ETH_P_IP,
            &[],
            &ipv4_packet(IPPROTO_UDP, &decoy[..words * 4], 0, &body),
        );
        demuxed(&frame, PROTO_UDP, UDP_PORT, family::IPV4);
    }
    let good = eth(ETH_P_IP, &[], &ipv4_packet(IPPROTO_UDP, &[], 0, &body));
    let with = |at: usize, value: u8| {
        let mut f = good.clone();
        f[ETH_LEN + at] = value;
        f
    };
    for ihl in 0..5 {
        assert_eq!(
            outcome_of(&with(0, 0x40 | ihl)),
            outcome::MALFORMED,
            "IHL {ihl}"
        );
    }
    for ihl in 6..=15 {
        assert_eq!(
            outcome_of(&with(0, 0x40 | ihl)),
            outcome::MALFORMED,
            "IHL {ihl}"
        );
    }
    for version in (0..16).filter(|&v| v != 4) {
        assert_eq!(outcome_of(&with(0, (version << 4) | 5)), outcome::MALFORMED);
    }
    // Total length (low byte; the datagram is 28 bytes): below the headers, past the frame.
    for total in [0, 19, 20, 27, 29] {
        assert_eq!(
            outcome_of(&with(3, total)),
            outcome::MALFORMED,
            "total {total}"
        );
    }
    assert_eq!(outcome_of(&with(3, 28)), outcome::DEMUXED);
}

#[test]
fn ipv4_fragments_and_other_protocols() {
    let body = l4(IPPROTO_UDP, UDP_PORT, 8);
    for (flags_offset, want) in [
        (0x2000, outcome::DEMUXED), // MF, offset 0: the first fragment has the ports
        (0x4000, outcome::DEMUXED), // DF
        (0x2001, outcome::FRAGMENT), // MF, offset 1
        (0x1fff, outcome::FRAGMENT), // the last fragment
    ] {
        let frame = eth(
            ETH_P_IP,
            &[],
            &ipv4_packet(IPPROTO_UDP, &[], flags_offset, &body),
        );
        assert_eq!(outcome_of(&frame), want, "{flags_offset:#06x}");
    }
    // A non-first fragment too short for a UDP header is still a fragment.
    let frame = eth(ETH_P_IP, &[], &ipv4_packet(IPPROTO_UDP, &[], 0x2005, &[]));
    assert_eq!(outcome_of(&frame), outcome::FRAGMENT);
    for proto in [1, 0, 2, 41, 47, 50, 58, 132, 255] {
        let frame = eth(ETH_P_IP, &[], &ipv4_packet(proto, &[], 0x2003, &[0; 24]));
        assert_eq!(outcome_of(&frame), outcome::NOT_TCP_UDP, "protocol {proto}");
    }
}

#[test]
fn non_ip_and_runts() {
    for ether_type in [0x0806, 0x0008, 0xdd86, 0x0000, 0xffff, 0x05dc, 0x9100] {
        let frame = eth(ether_type, &[], &[0; 46]);
        assert_eq!(outcome_of(&frame), outcome::NOT_IP, "{ether_type:#06x}");
    }
    for len in 0..ETH_LEN {
        assert_eq!(
            outcome_of(&[0; 60][..len]),
            outcome::MALFORMED,
            "{len}-byte runt"
        );
    }
    // An IPv4 header behind the IPv6 EtherType.
    let mut frame = ipv4(IPPROTO_UDP, UDP_PORT);
    frame[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    assert_eq!(outcome_of(&frame), outcome::MALFORMED);
}

#[test]
fn ipv6_tcp_udp_and_every_extension_header_kind() {
    demuxed(
        &ipv6(&[], IPPROTO_UDP, UDP_PORT),
        PROTO_UDP,
        UDP_PORT,
        family::IPV6,
    );
    demuxed(
        &ipv6(&[], IPPROTO_TCP, TCP_PORT),
        PROTO_TCP,
        TCP_PORT,
        family::IPV6,
    );
    for header in [
        ext(IPPROTO_HOPOPTS, 8),
        ext(IPPROTO_HOPOPTS, 16),
        ext(IPPROTO_ROUTING, 24),
        ext(IPPROTO_DSTOPTS, 8),
        ext(IPPROTO_AH, 12),
        ext(IPPROTO_AH, 24),
        fragment(0, true),
    ] {
        let frame = ipv6(core::slice::from_ref(&header), IPPROTO_UDP, UDP_PORT);
        demuxed(&frame, PROTO_UDP, UDP_PORT, family::IPV6);
    }
}

#[test]
fn ipv6_chains_fragments_and_ends() {
    let chain = |n: usize| -> Vec<(u8, Vec<u8>)> {
        let mut c = vec![ext(IPPROTO_HOPOPTS, 8)];
        c.extend((1..n).map(|i| {
            if i % 2 == 0 {
                ext(IPPROTO_AH, 12)
            } else {
                ext(IPPROTO_DSTOPTS, 8)
            }
        }));
        c
    };
    let at_bound = ipv6(&chain(MAX_EXT_HEADERS), IPPROTO_TCP, TCP_PORT);
    demuxed(&at_bound, PROTO_TCP, TCP_PORT, family::IPV6);
    let past = ipv6(&chain(MAX_EXT_HEADERS + 1), IPPROTO_TCP, TCP_PORT);
    assert_eq!(outcome_of(&past), outcome::EXT_HEADERS_TOO_LONG);
    // Hop-by-hop anywhere but first.
    let late = ipv6(
        &[ext(IPPROTO_DSTOPTS, 8), ext(IPPROTO_HOPOPTS, 8)],
        IPPROTO_UDP,
        1,
    );
    assert_eq!(outcome_of(&late), outcome::MALFORMED);
    // A later fragment of anything: no ports.
    for more in [true, false] {
        let frame = ipv6(&[fragment(185, more)], IPPROTO_UDP, UDP_PORT);
        assert_eq!(outcome_of(&frame), outcome::FRAGMENT);
    }
    for last in [IPPROTO_ESP, IPPROTO_NONE, IPPROTO_ICMPV6, 1, 132] {
        let frame = eth(
            ETH_P_IPV6,
            &[],
            &ipv6_packet(&[ext(IPPROTO_DSTOPTS, 8)], last, &[0; 24]),
        );
        assert_eq!(
            outcome_of(&frame),
            outcome::NOT_TCP_UDP,
            "next header {last}"
        );
    }
}

#[test]
fn ipv6_lengths_version_and_every_cut() {
    let frame = ipv6(
        &[ext(IPPROTO_HOPOPTS, 8), fragment(0, true)],
        IPPROTO_UDP,
        1,
    );
    // Cut anywhere: malformed (the payload length then reaches past the frame).
    for len in 0..frame.len() {
        assert_eq!(
            outcome_of(&frame[..len]),
            outcome::MALFORMED,
            "cut at {len}"
        );
    }
    let with_payload_len = |len: u16| {
        let mut f = frame.clone();
        f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&len.to_be_bytes());
        f
    };
    let real = u16::try_from(frame.len() - ETH_LEN - IPV6_LEN).unwrap();
    assert_eq!(outcome_of(&with_payload_len(real + 1)), outcome::MALFORMED);
    // The payload length ends inside an extension header or the UDP header: malformed.
    for len in [0, 7, 8, 15, 16, 19, 23] {
        assert_eq!(
            outcome_of(&with_payload_len(len)),
            outcome::MALFORMED,
            "payload {len}"
        );
    }
    assert_eq!(outcome_of(&with_payload_len(24)), outcome::DEMUXED);
    let mut v4 = frame.clone();
    v4[ETH_LEN] = 0x40;
    assert_eq!(outcome_of(&v4), outcome::MALFORMED);
}

#[test]
fn vlan_tags() {
    let inner = ipv4_packet(IPPROTO_UDP, &[], 0, &l4(IPPROTO_UDP, UDP_PORT, 18));
    for tags in [
        &[(ETH_P_8021Q, 10)][..],
        &[(ETH_P_8021AD, 0)],
        &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 10)],
        &[(ETH_P_8021Q, 1), (ETH_P_8021Q, 2)],
    ] {
        demuxed(
            &eth(ETH_P_IP, tags, &inner),
            PROTO_UDP,
            UDP_PORT,
            family::IPV4,
        );
    }
    let v6 = ipv6_packet(&[], IPPROTO_TCP, &l4(IPPROTO_TCP, TCP_PORT, 0));
    let qinq = eth(ETH_P_IPV6, &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 10)], &v6);
    demuxed(&qinq, PROTO_TCP, TCP_PORT, family::IPV6);
    let three = [(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)];
    assert_eq!(
        outcome_of(&eth(ETH_P_IP, &three, &inner)),
        outcome::VLAN_TOO_DEEP
    );
    assert_eq!(
        outcome_of(&eth(0x0806, &[(ETH_P_8021Q, 5)], &[0; 28])),
        outcome::NOT_IP
    );
    // A tag cut short.
    let tagged = eth(ETH_P_IP, &[(ETH_P_8021Q, 10)], &inner);
    for len in ETH_LEN..ETH_LEN + VLAN_LEN {
        assert_eq!(
            outcome_of(&tagged[..len]),
            outcome::MALFORMED,
            "cut at {len}"
        );
    }
}

#[test]
fn multi_buffer_frames() {
    // A jumbo datagram: counted whole when the IP length reaches past the first buffer.
    let big = eth(
        ETH_P_IP,
        &[],
        &ipv4_packet(IPPROTO_UDP, &[], 0, &l4(IPPROTO_UDP, 9, 8000)),
    );
    let parsed = parse_buffers(&big, 3520).unwrap();
    assert_eq!((parsed.port, parsed.bytes), (9, 8042));
    // A datagram inside the first buffer with more bytes after it: the first buffer's length.
    let mut padded = ipv4(IPPROTO_UDP, 9);
    let linear = padded.len() + 10;
    padded.resize(linear + 1000, 0);
    assert_eq!(parse_buffers(&padded, linear).unwrap().bytes, linear as u64);
    // Extension headers pushing UDP past the first buffer.
    let long = ipv6(
        &[ext(IPPROTO_DSTOPTS, 2048), ext(IPPROTO_DSTOPTS, 2048)],
        IPPROTO_UDP,
        9,
    );
    assert_eq!(
        parse_buffers(&long, 3520),
        Err(outcome::HEADERS_PAST_FIRST_BUFFER)
    );
    assert!(parse_buffers(&long, long.len()).is_ok());
}

#[test]
fn bindings_and_default_actions() {
    let bound = |act: u32, slot: u32| Binding {
        action: act,
        slot,
        owner: [0; OWNER_LEN],
    };
    let udp = port_index(PROTO_UDP, UDP_PORT);
    let frame = ipv4(IPPROTO_UDP, UDP_PORT);
    let verdict = |b: Binding, default: u32, filled: bool| {
        let v = classify(
            &frame,
            |i| {
                if i == udp {
                    b
                } else {
                    bound(action::UNBOUND, 0)
                }
            },
            default,
            |_| filled,
        );
        assert_eq!(v.port_index, Some(udp));
        (v.xdp_action, v.taken)
    };
    let unbound = bound(action::UNBOUND, 0);
    let (drop, pass, redirect) = (
        bound(action::DROP, 0),
        bound(action::PASS, 0),
        bound(action::REDIRECT, 3),
    );
    let fallback = (XDP_PASS, taken::REDIRECT_FALLBACK);
    // (binding, default action, devmap slot filled) -> (XDP action, taken)
    for (b, default, filled, want) in [
        (unbound, action::PASS, false, (XDP_PASS, taken::PASS)),
        (unbound, action::DROP, false, (XDP_DROP, taken::DROP)),
        (drop, action::PASS, false, (XDP_DROP, taken::DROP)),
        (pass, action::DROP, false, (XDP_PASS, taken::PASS)),
        (
            redirect,
            action::PASS,
            true,
            (XDP_REDIRECT, taken::REDIRECT),
        ),
        (redirect, action::PASS, false, fallback),
    ] {
        assert_eq!(
            verdict(b, default, filled),
            want,
            "{b:?}, default {default}"
        );
    }
    // A binding applies to the port in both IP versions; a frame not demultiplexed is passed
    // whatever the default.
    let v6 = ipv6(&[], IPPROTO_UDP, UDP_PORT);
    let v = classify(&v6, |_| bound(action::DROP, 0), action::PASS, |_| true);
    assert_eq!(
        (v.xdp_action, v.port_index, v.family),
        (XDP_DROP, Some(udp), family::IPV6)
    );
    let arp = eth(0x0806, &[], &[0; 46]);
    let v = classify(&arp, |_| bound(action::DROP, 0), action::DROP, |_| true);
    assert_eq!(
        (v.xdp_action, v.outcome, v.port_index),
        (XDP_PASS, outcome::NOT_IP, None)
    );
}
