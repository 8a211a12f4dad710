//! Header parsing: every read is bounds-checked against `data_end` before it, in the form the
//! verifier tracks (`data + constant or bounded offset > data_end`).
//!
//! A length read from the packet (the IPv4 total length) is never added to a packet pointer:
//! it is byte-swapped, and verifiers before Linux 6.18 forget a register's range after a byte
//! swap (`BPF_END`), so `data + total_len` is "math between pkt pointer and register with
//! unbounded min value" there, and the program does not load on 6.1 or 6.12. A mask or a
//! comparison after the swap does not help: the compiler knows the value fits in 16 bits and
//! removes it. Such lengths are compared as scalars with the frame length (`data_end - data`,
//! which the program computes anyway for the byte counters); only offsets bounded by a mask
//! the verifier follows (IHL * 4) are added to pointers.
//!
//! Reads are whole aligned words (`u8`; `u16` at even offsets; `u32` at 12 and 20): the
//! Ethernet header is 14 bytes and IPv4 headers are multiples of 4, so every read here is
//! aligned to its size relative to `data`, and one load replaces the byte loads and shifts
//! `read_unaligned` costs on BPF.

use aya_ebpf::programs::XdpContext;
use port_demux_common::{
    PROTO_TCP, PROTO_UDP,
    model::{ETH_LEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_LEN, TCP_MIN_LEN, UDP_LEN},
    outcome, port_index,
};

/// Bytes 12..16 of an IPv4 frame, little-endian, masked to the Ethernet type and the IP
/// version.
const W12_IPV4: u32 = ETH_P_IP.to_be() as u32 | 0x0040_0000;
/// Bytes 20..24 of an unfragmented IPv4 header carrying UDP, little-endian, masked to the
/// fragment offset and the protocol.
const W20_UDP: u32 = (IPPROTO_UDP as u32) << 24;
/// As [`W20_UDP`], for TCP.
const W20_TCP: u32 = (IPPROTO_TCP as u32) << 24;

/// Reads a `T` at `addr`, which the caller has bounds-checked.
#[inline(always)]
unsafe fn load<T: Copy>(addr: usize) -> T {
    // SAFETY: the caller checked `addr + size_of::<T>() <= data_end`.
    unsafe { (addr as *const T).read() }
}

/// The `PORT_STATS`/`BINDINGS` index of the common frame: IPv4 (options or not) carrying TCP
/// or UDP, not a fragment, lengths consistent. Four loads; Ethernet type and IP version are
/// one test, fragment offset and protocol another. `None` sends the frame to [`full`], which
/// classifies everything (short, malformed, non-IPv4, other protocols, fragments).
#[inline(always)]
pub fn fast(ctx: &XdpContext) -> Option<u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    // Ethernet + IPv4 without options + UDP header: the shortest frame the fast path takes.
    if start + ETH_LEN + IPV4_MIN_LEN + UDP_LEN > end {
        return None;
    }
    // SAFETY: 42 bytes are there. Little-endian words: bytes 12..16 are EtherType,
    // version/IHL and TOS; bytes 20..24 are flags/fragment offset, TTL and protocol.
    let w12 = unsafe { load::<u32>(start + 12) };
    // EtherType IPv4 and IP version 4, in one test.
    if w12 & 0x00f0_ffff != W12_IPV4 {
        return None;
    }
    // SAFETY: as above.
    let (w20, total_len) = unsafe { (load::<u32>(start + 20), load::<u16>(start + 16)) };
    // Fragment offset 0 and the protocol, in one test.
    let (proto, l4_len) = match w20 & 0xff00_ff1f {
        W20_UDP => (PROTO_UDP, UDP_LEN),
        W20_TCP => (PROTO_TCP, TCP_MIN_LEN),
        _ => return None,
    };
    let header_len = ((w12 >> 14) & 0x3c) as usize;
    let total_len = usize::from(u16::from_be(total_len));
    // Scalars only: see the module's doc.
    if header_len < IPV4_MIN_LEN
        || total_len < header_len + l4_len
        || ETH_LEN + total_len > end - start
    {
        return None;
    }
    let l4 = start + ETH_LEN + header_len;
    // Implied by the lengths above; this is the form the verifier follows.
    if l4 + 4 > end {
        return None;
    }
    // SAFETY: checked just above.
    let dest_port = u16::from_be(unsafe { load::<u16>(l4 + 2) });
    Some(port_index(proto, dest_port))
}

/// Classifies any frame, step by step, as `port_demux_common::model::parse` states it.
#[inline(always)]
pub fn full(ctx: &XdpContext) -> Result<u32, usize> {
    let start = ctx.data();
    let end = ctx.data_end();
    let ip = start + ETH_LEN;
    if ip + IPV4_MIN_LEN > end {
        // Too short for Ethernet and a minimal IPv4 header: a runt, or not IPv4 at all.
        if ip > end {
            return Err(outcome::MALFORMED);
        }
        // SAFETY: 14 bytes are there.
        let ether_type: u16 = unsafe { load(start + 12) };
        return Err(if ether_type == ETH_P_IP.to_be() {
            outcome::MALFORMED
        } else {
            outcome::NOT_IPV4
        });
    }
    // SAFETY: Ethernet and the fixed IPv4 header are there.
    let (ether_type, version_ihl, total_len, frag, proto) = unsafe {
        (
            load::<u16>(start + 12),
            load::<u8>(ip),
            load::<u16>(ip + 2),
            load::<u16>(ip + 6),
            load::<u8>(ip + 9),
        )
    };
    if ether_type != ETH_P_IP.to_be() {
        return Err(outcome::NOT_IPV4);
    }
    let header_len = usize::from(version_ihl & 0x0f) << 2;
    let total_len = usize::from(u16::from_be(total_len));
    // Scalars only: see the module's doc.
    if version_ihl & 0xf0 != 0x40
        || header_len < IPV4_MIN_LEN
        || total_len < header_len
        || ETH_LEN + total_len > end - start
    {
        return Err(outcome::MALFORMED);
    }
    let (proto, l4_len) = match proto {
        IPPROTO_TCP => (PROTO_TCP, TCP_MIN_LEN),
        IPPROTO_UDP => (PROTO_UDP, UDP_LEN),
        _ => return Err(outcome::NOT_TCP_UDP),
    };
    // Fragment offset: the low 13 bits of the big-endian flags/offset word.
    if frag & 0x1fffu16.to_be() != 0 {
        return Err(outcome::FRAGMENT);
    }
    if header_len + l4_len > total_len {
        return Err(outcome::MALFORMED);
    }
    // `total_len` already bounds the ports; this check is the one the verifier can follow.
    let l4 = ip + header_len;
    if l4 + 4 > end {
        return Err(outcome::MALFORMED);
    }
    // SAFETY: checked just above.
    let dest_port = u16::from_be(unsafe { load::<u16>(l4 + 2) });
    Ok(port_index(proto, dest_port))
}
