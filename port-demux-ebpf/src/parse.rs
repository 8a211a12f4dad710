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
//! Reads are whole words (`u8`; `u16` at even offsets; `u32` and one `u64`), so that one load
//! replaces the byte loads and shifts `read_unaligned` costs on BPF. Most are aligned to their
//! size relative to `data` (the Ethernet header is 14 bytes, IPv4 headers are multiples of 4);
//! those that are not need not be: BPF loads need no alignment on packet data (the verifier
//! checks it only with strict alignment, which x86-64 and arm64 do not ask for).

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use port_demux_common::{
    PROTO_TCP, PROTO_UDP,
    model::{
        ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, FRAG_HDR_LEN, IPPROTO_AH,
        IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP,
        IPPROTO_UDP, IPV4_MIN_LEN, IPV6_LEN, MAX_EXT_HEADERS, TCP_MIN_LEN, UDP_LEN, VLAN_LEN,
    },
    outcome, port_index,
};

/// Bytes 12..16 of an IPv4 frame, little-endian, masked to the Ethernet type and the IP
/// version.
const W12_IPV4: u32 = ETH_P_IP.to_be() as u32 | 0x0040_0000;
/// Bytes 12..16 of an IPv6 frame, little-endian, masked to the Ethernet type and the IP
/// version.
const W12_IPV6: u32 = ETH_P_IPV6.to_be() as u32 | 0x0060_0000;
/// Bytes 6..10 of an unfragmented IPv4 header carrying UDP (20..24 of an untagged frame),
/// little-endian, masked to the fragment offset and the protocol.
const FRAG_PROTO_UDP: u32 = (IPPROTO_UDP as u32) << 24;
/// As [`FRAG_PROTO_UDP`], for TCP.
const FRAG_PROTO_TCP: u32 = (IPPROTO_TCP as u32) << 24;

/// Reads a `T` at `addr`, which the caller has bounds-checked.
#[inline(always)]
unsafe fn load<T: Copy>(addr: usize) -> T {
    // SAFETY: the caller checked `addr + size_of::<T>() <= data_end`.
    unsafe { (addr as *const T).read() }
}

/// What [`fast`] made of a frame.
pub enum Fast {
    /// IPv4 TCP/UDP, untagged or behind one or two VLAN tags: its `PORT_STATS3`/`BINDINGS`
    /// index. The frame is in the first buffer: its bytes are `data_end - data`.
    Ipv4(u32),
    /// IPv6 whose fixed header is followed by TCP/UDP (or, untagged, by one or two 8-byte
    /// extension headers and TCP/UDP): its index.
    Ipv6(u32),
    /// Other untagged IPv6 with extension headers (walked from where the fast parse
    /// stopped): classified.
    Parsed(Result<Demuxed, usize>),
    /// Not demultiplexed, and certainly so: the outcome (frames neither IP nor tagged;
    /// untagged IPv4 of another protocol, or a later fragment), as [`full`] would find it.
    Counted(usize),
    /// Anything else, for [`full`].
    Other,
}

/// The common frames, parsed with constant offsets: IPv4 (options or not) carrying TCP or
/// UDP, not a fragment, lengths consistent, or IPv6 whose next header is TCP or UDP (no
/// extension header), lengths consistent; untagged or behind one or two VLAN tags. Four
/// loads for untagged IPv4: Ethernet type and IP version are one test, fragment offset and
/// protocol another; untagged IPv4 of other protocols and later fragments are counted from
/// the same loads. `Other` sends the frame to [`full`], which classifies everything (short,
/// malformed, extension headers, other protocols, fragments, deeper tag stacks); where both
/// take a frame they agree, as the differential test checks.
#[inline(always)]
pub fn fast(ctx: &XdpContext) -> Fast {
    let start = ctx.data();
    let end = ctx.data_end();
    // Ethernet + IPv4 without options + UDP header: the shortest frame the fast path takes.
    if start + ETH_LEN + IPV4_MIN_LEN + UDP_LEN > end {
        return Fast::Other;
    }
    // SAFETY: 42 bytes are there. A little-endian word: bytes 12..16 are EtherType,
    // version/IHL and TOS.
    let w12 = unsafe { load::<u32>(start + 12) };
    // EtherType IPv4 and IP version 4, in one test.
    if w12 & 0x00f0_ffff != W12_IPV4 {
        return not_ipv4(ctx, start, end, w12);
    }
    v4::<ETH_LEN>(start, end, w12)
}

/// [`fast`] for frames that are not untagged IPv4 (`w12`: bytes 12..16, little-endian).
#[inline(always)]
fn not_ipv4(ctx: &XdpContext, start: usize, end: usize, w12: u32) -> Fast {
    if w12 & 0x00f0_ffff == W12_IPV6 {
        return match v6::<ETH_LEN>(start, end) {
            V6::Port(index) => Fast::Ipv6(index),
            V6::Next(next, ip_end) => match ext8(start, end, next, ip_end) {
                Some(index) => Fast::Ipv6(index),
                None => Fast::Parsed(ipv6_walk(ctx, start, end, ETH_LEN)),
            },
            V6::Other => Fast::Other,
        };
    }
    // The tag tests come first, for every other frame: a test of the first `EtherType` byte in
    // front of them, which kept ARP off them, cost tagged frames more than it saved ARP frames
    // (README).
    // SAFETY: 42 bytes are there: bytes 12..20, a tag and the 4 bytes after it.
    let q = unsafe { load::<u64>(start + 12) };
    if q & DOT1Q_IPV4_MASK != DOT1Q_IPV4 {
        return tags(start, end, w12, q);
    }
    // The word behind the tag, hidden from the compiler: else it tests the IHL in `q`, with
    // two 64-bit constants more.
    v4::<{ ETH_LEN + VLAN_LEN }>(start, end, opaque_u32((q >> 32) as u32))
}

/// Bytes 12..20 of an 802.1Q-tagged IPv4 frame, little-endian, masked with
/// [`DOT1Q_IPV4_MASK`]: the TPID, then the Ethernet type and the IP version.
const DOT1Q_IPV4: u64 = ((W12_IPV4 as u64) << 32) | ETH_P_8021Q.to_be() as u64;
/// The bits of bytes 12..20 [`DOT1Q_IPV4`] tests (not the TCI, IHL or TOS).
const DOT1Q_IPV4_MASK: u64 = 0x00f0_ffff_0000_ffff;
/// Bytes 12..20 of a double-tagged frame (an 802.1ad tag, then an 802.1Q one), little-endian,
/// masked with [`QINQ_MASK`]: the two TPIDs.
const QINQ: u64 = ((ETH_P_8021Q.to_be() as u64) << 32) | ETH_P_8021AD.to_be() as u64;
/// The bits of bytes 12..20 [`QINQ`] tests (not the TCIs).
const QINQ_MASK: u64 = 0x0000_ffff_0000_ffff;

/// [`fast`] for frames neither untagged IP nor 802.1Q-tagged IPv4 (`q`: bytes 12..20,
/// little-endian; `w12` its low half). A double-tagged frame (802.1ad, then 802.1Q) is one
/// test; other tag stacks are found tag by tag. Each case is a test that the common frames
/// fall through, not a tree of compares of one `EtherType`.
#[inline(always)]
fn tags(start: usize, end: usize, w12: u32, q: u64) -> Fast {
    if q & QINQ_MASK != QINQ {
        return other_tags(start, end, w12);
    }
    // SAFETY: 42 bytes are there: the word after the second tag's TCI.
    let w20 = unsafe { load::<u32>(start + ETH_LEN + VLAN_LEN + 2) };
    tagged::<{ ETH_LEN + 2 * VLAN_LEN }>(start, end, w20)
}

/// [`tags`] for the other frames: an 802.1Q tag before other than IPv4, one 802.1ad tag, or
/// two tags other than 802.1ad then 802.1Q; else not tagged at all.
#[inline(always)]
fn other_tags(start: usize, end: usize, w12: u32) -> Fast {
    if !is_vlan(ether_type(w12)) {
        return not_ip(w12);
    }
    // SAFETY: 42 bytes are there: the word after the tag's TCI.
    let w16 = unsafe { load::<u32>(start + ETH_LEN + 2) };
    if !is_vlan(ether_type(w16)) {
        return tagged::<{ ETH_LEN + VLAN_LEN }>(start, end, w16);
    }
    // SAFETY: as above.
    let w20 = unsafe { load::<u32>(start + ETH_LEN + VLAN_LEN + 2) };
    tagged::<{ ETH_LEN + 2 * VLAN_LEN }>(start, end, w20)
}

/// [`fast`] for untagged frames that are not IP of the right version (`w12`: bytes 12..16):
/// counted when neither IP nor tagged, as the full parse would count them; IPv4 or IPv6 whose
/// version does not match is the full parse's, which calls it malformed.
#[inline(always)]
fn not_ip(w12: u32) -> Fast {
    // Compared as a copy the compiler cannot see is `w12`'s: compares of one value with
    // several constants become one tree of jumps, which some frames took two jumps through.
    let ether = opaque(ether_type(w12));
    if ether != ETH_P_IP.to_be() && ether != ETH_P_IPV6.to_be() {
        return Fast::Counted(outcome::NOT_IP);
    }
    Fast::Other
}

/// Defines a function that gives back its argument hidden from the compiler's reasoning (the
/// kernel's `barrier_var`): an empty assembly block takes it in a register and gives it back,
/// so that the compiler knows nothing of the result.
macro_rules! opaque {
    ($name:ident, $t:ty) => {
        #[inline(always)]
        fn $name(mut value: $t) -> $t {
            // SAFETY: the assembly is a comment naming the register: it changes nothing,
            // reads and writes no memory, and leaves the flags and the stack alone.
            unsafe {
                core::arch::asm!(
                    "/* {0} */",
                    inout(reg) value,
                    options(pure, nomem, nostack, preserves_flags)
                );
            }
            value
        }
    };
}
opaque!(opaque, u16);
opaque!(opaque_u32, u32);

/// [`fast`] behind tags: the IP header at `L3`, `w` the word at `L3 - 2` (`EtherType`,
/// version/IHL, TOS). Tagged frames share the untagged frames' apply site, pointers in
/// registers; a scoped port's search finds the IP header again ([`l3_of`]).
#[inline(always)]
fn tagged<const L3: usize>(start: usize, end: usize, w: u32) -> Fast {
    if w & 0x00f0_ffff == W12_IPV4 {
        return v4::<L3>(start, end, w);
    }
    if w & 0x00f0_ffff == W12_IPV6 {
        return match v6::<L3>(start, end) {
            V6::Port(index) => Fast::Ipv6(index),
            // Extension headers behind tags: the full parse walks them.
            V6::Next(..) | V6::Other => Fast::Other,
        };
    }
    Fast::Other
}

/// The offset of the IP header of a frame [`fast`] demultiplexed: after no, one or two tags.
#[inline(always)]
pub fn l3_of(start: usize, end: usize) -> usize {
    if start + ETH_LEN + VLAN_LEN > end {
        return ETH_LEN;
    }
    // SAFETY: checked just above: the `EtherType`, and the one after a first tag.
    let (outer, inner) = unsafe { (load::<u16>(start + 12), load::<u16>(start + ETH_LEN + 2)) };
    if !is_vlan(outer) {
        ETH_LEN
    } else if is_vlan(inner) {
        ETH_LEN + 2 * VLAN_LEN
    } else {
        ETH_LEN + VLAN_LEN
    }
}

/// The index of an IPv4 TCP/UDP datagram at `L3` (`w`: the word at `L3 - 2`, whose version
/// the caller checked), when it is not a fragment and its lengths are consistent.
#[inline(always)]
fn v4<const L3: usize>(start: usize, end: usize, w: u32) -> Fast {
    // The fixed header and a UDP header.
    if start + L3 + IPV4_MIN_LEN + UDP_LEN > end {
        return Fast::Other;
    }
    // SAFETY: checked just above. Bytes L3+6..L3+10 are flags/fragment offset, TTL and
    // protocol.
    let (w6, total_len) = unsafe { (load::<u32>(start + L3 + 6), load::<u16>(start + L3 + 2)) };
    let header_len = ((w >> 14) & 0x3c) as usize;
    let total_len = usize::from(u16::from_be(total_len));
    // Fragment offset 0 and the protocol, in one test.
    let (proto, l4_len) = match w6 & 0xff00_ff1f {
        FRAG_PROTO_UDP => (PROTO_UDP, UDP_LEN),
        FRAG_PROTO_TCP => (PROTO_TCP, TCP_MIN_LEN),
        // Untagged only: behind tags, the copy of this code moved the tagged frames' path
        // behind taken jumps (802.1Q IPv4 +0.5 to +0.7 ns, measured).
        _ if L3 == ETH_LEN => {
            return v4_not_demuxed::<L3>(start, end, w6, header_len, total_len);
        }
        _ => return Fast::Other,
    };
    // Scalars only: see the module's doc.
    if header_len < IPV4_MIN_LEN || total_len < header_len + l4_len || L3 + total_len > end - start
    {
        return Fast::Other;
    }
    let l4 = start + L3 + header_len;
    // Implied by the lengths above; this is the form the verifier follows.
    if l4 + 4 > end {
        return Fast::Other;
    }
    // SAFETY: checked just above.
    let dest_port = u16::from_be(unsafe { load::<u16>(l4 + 2) });
    Fast::Ipv4(port_index(proto, dest_port))
}

/// [`v4`]'s IPv4 datagram at `L3` that is not an unfragmented TCP/UDP one (`w6`: its bytes
/// 6..10, little-endian): counted here when its lengths are consistent and in the first
/// buffer, as [`full`] would count it (another protocol, ICMP for one, or a later fragment of
/// TCP/UDP), so that such frames do not take the full parse; else [`full`]'s.
#[inline(always)]
fn v4_not_demuxed<const L3: usize>(
    start: usize,
    end: usize,
    w6: u32,
    header_len: usize,
    total_len: usize,
) -> Fast {
    // As `full`'s checks before the protocol's; scalars only (the module's doc).
    if header_len < IPV4_MIN_LEN || total_len < header_len || L3 + total_len > end - start {
        return Fast::Other;
    }
    let proto = (w6 >> 24) as u8;
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        // TCP or UDP, not at fragment offset 0 (the caller's test).
        Fast::Counted(outcome::FRAGMENT)
    } else {
        Fast::Counted(outcome::NOT_TCP_UDP)
    }
}

/// What [`v6`] found.
enum V6 {
    /// TCP or UDP right after the fixed header: the index.
    Port(u32),
    /// Another next header (`.0`), the datagram ending at offset `.1`: for the walk.
    Next(u8, usize),
    /// Lengths inconsistent, or the ports past the first buffer: for [`full`].
    Other,
}

/// An IPv6 datagram at `L3` (whose `EtherType` and version the caller checked): the index
/// when TCP or UDP follows the fixed header and the payload length is consistent (as
/// `ipv6_rcv` checks it, as a scalar); else the next header for the extension header walk.
/// Three loads.
#[inline(always)]
fn v6<const L3: usize>(start: usize, end: usize) -> V6 {
    if start + L3 + IPV6_LEN + 4 > end {
        return V6::Other;
    }
    // SAFETY: checked just above: payload length, next header, destination port.
    let (payload_len, next, dest_port) = unsafe {
        (
            load::<u16>(start + L3 + 4),
            load::<u8>(start + L3 + 6),
            load::<u16>(start + L3 + IPV6_LEN + 2),
        )
    };
    let ip_end = L3 + IPV6_LEN + usize::from(u16::from_be(payload_len));
    let (proto, l4_len) = match next {
        IPPROTO_UDP => (PROTO_UDP, UDP_LEN),
        IPPROTO_TCP => (PROTO_TCP, TCP_MIN_LEN),
        _ => return V6::Next(next, ip_end),
    };
    if L3 + IPV6_LEN + l4_len > ip_end || ip_end > end - start {
        return V6::Other;
    }
    V6::Port(port_index(proto, u16::from_be(dest_port)))
}

/// Offset of the first extension header of an untagged IPv6 frame.
const EXT1: usize = ETH_LEN + IPV6_LEN;

/// [`fast`] for untagged IPv6 whose fixed header is followed by one or two 8-byte extension
/// headers, then TCP or UDP: hop-by-hop (first only), routing or destination options of
/// length 0, or a fragment header at offset 0, as most chains are. Every header is read at a
/// constant offset, so no load waits for the length of the header before it (the walk's
/// chain of dependent loads, about 2 ns a header), and each is judged by one table lookup
/// and one test ([`EXT8_FIRST`]), so that the path through here takes no jump. `None` for
/// anything else, for the walk, which classifies it from the fixed header on; where this
/// takes a frame, the walk demultiplexes it the same, as the differential test checks.
#[inline(always)]
fn ext8(start: usize, end: usize, next: u8, ip_end: usize) -> Option<u32> {
    // One header and the ports after it.
    if start + EXT1 + 8 + 4 > end || ip_end > end - start {
        return None;
    }
    // SAFETY: checked just above: the first header's first word.
    let w1 = unsafe { load::<u32>(start + EXT1) };
    let must_be_zero = EXT8_FIRST[usize::from(next)];
    if must_be_zero == 0 || w1 & must_be_zero != 0 {
        return None;
    }
    let next1 = low_byte(w1);
    if next1 == IPPROTO_UDP || next1 == IPPROTO_TCP {
        return l4_at::<{ EXT1 + 8 }>(start, next1, ip_end);
    }
    if start + EXT1 + 16 + 4 > end {
        return None;
    }
    // SAFETY: checked just above: the second header's first word.
    let w2 = unsafe { load::<u32>(start + EXT1 + 8) };
    let must_be_zero = EXT8_LATER[usize::from(next1)];
    if must_be_zero == 0 || w2 & must_be_zero != 0 {
        return None;
    }
    l4_at::<{ EXT1 + 16 }>(start, low_byte(w2), ip_end)
}

/// Per next header value, the bits of the first word of the extension header it names
/// (little-endian: next header, length, and what a fragment header holds there, its offset)
/// that are zero when the header is 8 bytes long and the chain goes on after it: the length
/// of hop-by-hop, routing and destination options, a fragment header's offset. 0 for the
/// values [`ext8`] leaves to the walk. For the header after the fixed one: hop-by-hop is
/// allowed only there.
static EXT8_FIRST: [u32; 256] = ext8_masks(true);
/// As [`EXT8_FIRST`], for the header after an extension header.
static EXT8_LATER: [u32; 256] = ext8_masks(false);

/// [`EXT8_FIRST`] (`first`) or [`EXT8_LATER`].
const fn ext8_masks(first: bool) -> [u32; 256] {
    /// The length byte (the second).
    const LENGTH: u32 = 0xff00;
    /// The fragment offset: the high 13 bits of the big-endian third and fourth bytes.
    const OFFSET: u32 = (0xfff8u16.to_be() as u32) << 16;
    let mut masks = [0; 256];
    if first {
        masks[IPPROTO_HOPOPTS as usize] = LENGTH;
    }
    masks[IPPROTO_ROUTING as usize] = LENGTH;
    masks[IPPROTO_DSTOPTS as usize] = LENGTH;
    masks[IPPROTO_FRAGMENT as usize] = OFFSET;
    masks
}

/// The index of the TCP/UDP header (`next`) at the constant offset `OFF`, whose ports the
/// caller bounds-checked, when the datagram (ending at `ip_end`, in the first buffer) holds it.
#[inline(always)]
fn l4_at<const OFF: usize>(start: usize, next: u8, ip_end: usize) -> Option<u32> {
    let (proto, l4_len) = match next {
        IPPROTO_UDP => (PROTO_UDP, UDP_LEN),
        IPPROTO_TCP => (PROTO_TCP, TCP_MIN_LEN),
        _ => return None,
    };
    if OFF + l4_len > ip_end {
        return None;
    }
    // SAFETY: the caller checked `start + OFF + 4 <= end`.
    let dest_port = u16::from_be(unsafe { load::<u16>(start + OFF + 2) });
    Some(port_index(proto, dest_port))
}

/// The low byte of a little-endian word: the first byte in the frame.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the low byte is the one wanted"
)]
const fn low_byte(word: u32) -> u8 {
    word as u8
}

/// The destination address of the IPv4 header at offset `l3` (14, 18 or 22) of the frame
/// `start..end`, as a number; 0
/// when it is not in the first buffer (it always is: the parse read past it).
#[inline(always)]
pub fn dst_v4(start: usize, end: usize, l3: usize) -> u32 {
    let addr = start + l3 + 16;
    if addr + 4 > end {
        return 0;
    }
    // SAFETY: checked just above. Two bytes off a 4-byte boundary (the Ethernet header is 14
    // bytes): BPF loads need no alignment on packet data (the verifier checks it only with
    // strict alignment, which x86-64 and arm64 do not ask for).
    u32::from_be(unsafe { load::<u32>(addr) })
}

/// The destination address of the IPv6 header at offset `l3`, as two numbers (bytes 0..8,
/// bytes 8..16); zeros when it is not in the first buffer (it always is).
#[inline(always)]
pub fn dst_v6(start: usize, end: usize, l3: usize) -> (u64, u64) {
    let addr = start + l3 + 24;
    if addr + 16 > end {
        return (0, 0);
    }
    // SAFETY: checked just above; alignment as in `dst_v4`.
    unsafe {
        (
            u64::from_be(load::<u64>(addr)),
            u64::from_be(load::<u64>(addr + 8)),
        )
    }
}

/// A frame [`full`] demultiplexed.
pub struct Demuxed {
    /// `BINDINGS` (and counter) index.
    pub index: u32,
    /// Bytes to count: the first buffer's, or the whole frame's when the IP length reaches
    /// past the first buffer.
    pub len: u64,
    /// IPv6 (counted in `GLOBALS`' `DEMUXED_IPV6` cell too).
    pub ipv6: bool,
    /// Offset of the IP header (14, 18 or 22): where a scoped port's search reads the
    /// destination address.
    pub l3: usize,
}

/// The whole frame's length, all buffers: a helper call, made only where the IP length or a
/// header reaches past the first buffer.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "BPF is 64-bit; a frame is far below 2^32 bytes"
)]
fn whole_len(ctx: &XdpContext) -> usize {
    // SAFETY: the helper reads the context the program was given.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

/// The outcome of a frame whose bytes `..need` are not all in the first buffer: malformed
/// when they go past `limit` (the frame's or the IP datagram's end), else split over buffers.
#[inline(always)]
fn past_first_buffer(need: usize, limit: usize) -> usize {
    if need > limit {
        outcome::MALFORMED
    } else {
        outcome::HEADERS_PAST_FIRST_BUFFER
    }
}

/// The bytes to count of a datagram ending at `ip_end` (an offset), or `MALFORMED` when it ends
/// past the frame. `linear` is the first buffer's length.
#[inline(always)]
fn datagram_len(ctx: &XdpContext, ip_end: usize, linear: usize) -> Result<u64, usize> {
    if ip_end <= linear {
        return Ok(linear as u64);
    }
    let whole = whole_len(ctx);
    if ip_end > whole {
        return Err(outcome::MALFORMED);
    }
    Ok(whole as u64)
}

/// The big-endian `EtherType` at the start of a little-endian word read at its offset.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the word's low half is the EtherType"
)]
const fn ether_type(word: u32) -> u16 {
    word as u16
}

/// Whether a big-endian `EtherType` is a VLAN tag's TPID.
#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q.to_be() || ether_type == ETH_P_8021AD.to_be()
}

/// Classifies any frame, step by step, as `port_demux_common::model::parse_buffers` states it:
/// up to two VLAN tags, then IPv4 or IPv6 with its extension headers.
#[inline(always)]
pub fn full(ctx: &XdpContext) -> Result<Demuxed, usize> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_LEN > end {
        return Err(past_first_buffer(ETH_LEN, whole_len(ctx)));
    }
    // SAFETY: 14 bytes are there.
    let mut ether_type: u16 = unsafe { load(start + 12) };
    let mut l3 = ETH_LEN;
    if is_vlan(ether_type) {
        if start + ETH_LEN + VLAN_LEN > end {
            return Err(past_first_buffer(ETH_LEN + VLAN_LEN, whole_len(ctx)));
        }
        // SAFETY: checked just above.
        ether_type = unsafe { load(start + ETH_LEN + 2) };
        l3 = ETH_LEN + VLAN_LEN;
        if is_vlan(ether_type) {
            if start + ETH_LEN + 2 * VLAN_LEN > end {
                return Err(past_first_buffer(ETH_LEN + 2 * VLAN_LEN, whole_len(ctx)));
            }
            // SAFETY: checked just above.
            ether_type = unsafe { load(start + ETH_LEN + VLAN_LEN + 2) };
            l3 = ETH_LEN + 2 * VLAN_LEN;
            if is_vlan(ether_type) {
                return Err(outcome::VLAN_TOO_DEEP);
            }
        }
    }
    if ether_type == ETH_P_IP.to_be() {
        ipv4(ctx, l3)
    } else if ether_type == ETH_P_IPV6.to_be() {
        ipv6(ctx, l3)
    } else {
        Err(outcome::NOT_IP)
    }
}

/// IPv4 at offset `l3`.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Demuxed, usize> {
    let start = ctx.data();
    let end = ctx.data_end();
    let ip = start + l3;
    if ip + IPV4_MIN_LEN > end {
        return Err(past_first_buffer(l3 + IPV4_MIN_LEN, whole_len(ctx)));
    }
    // SAFETY: the fixed IPv4 header is there.
    let (version_ihl, total_len, frag, proto) = unsafe {
        (
            load::<u8>(ip),
            load::<u16>(ip + 2),
            load::<u16>(ip + 6),
            load::<u8>(ip + 9),
        )
    };
    let header_len = usize::from(version_ihl & 0x0f) << 2;
    // A scalar from here on: never added to a packet pointer (issue 13).
    let total_len = usize::from(u16::from_be(total_len));
    if version_ihl & 0xf0 != 0x40 || header_len < IPV4_MIN_LEN || total_len < header_len {
        return Err(outcome::MALFORMED);
    }
    let len = datagram_len(ctx, l3 + total_len, end - start)?;
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
    // The total length already bounds the ports by the datagram: past the first buffer they
    // are split.
    let l4 = ip + header_len;
    if l4 + 4 > end {
        return Err(outcome::HEADERS_PAST_FIRST_BUFFER);
    }
    // SAFETY: checked just above.
    let dest_port = u16::from_be(unsafe { load::<u16>(l4 + 2) });
    Ok(Demuxed {
        index: port_index(proto, dest_port),
        len,
        ipv6: false,
        l3,
    })
}

/// The address of the extension header at offset `off`, whose first `NEED` bytes must lie
/// inside the datagram (else malformed) and the first buffer (else split).
#[inline(always)]
fn ext_header<const NEED: usize>(
    start: usize,
    end: usize,
    off: usize,
    ip_end: usize,
) -> Result<usize, usize> {
    if off + NEED > ip_end {
        return Err(outcome::MALFORMED);
    }
    let hdr = start + off;
    if hdr + NEED > end {
        return Err(outcome::HEADERS_PAST_FIRST_BUFFER);
    }
    Ok(hdr)
}

/// IPv6 at offset `l3`, and its extension headers.
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Demuxed, usize> {
    let start = ctx.data();
    let end = ctx.data_end();
    let ip = start + l3;
    if ip + IPV6_LEN > end {
        return Err(past_first_buffer(l3 + IPV6_LEN, whole_len(ctx)));
    }
    // SAFETY: the fixed IPv6 header is there.
    if unsafe { load::<u8>(ip) } & 0xf0 != 0x60 {
        return Err(outcome::MALFORMED);
    }
    ipv6_walk(ctx, start, end, l3)
}

/// The rest of the IPv6 datagram at `l3` of the frame `start..end`, whose fixed header the
/// caller checked: its length, then its extension headers.
#[inline(always)]
fn ipv6_walk(ctx: &XdpContext, start: usize, end: usize, l3: usize) -> Result<Demuxed, usize> {
    let ip = start + l3;
    if ip + IPV6_LEN > end {
        // The callers read the fixed header: never taken.
        return Err(outcome::MALFORMED);
    }
    // The payload length read here, not taken from the fast parse: there, the tests that
    // decline a frame narrow its range, and Linux 6.12's verifier, given a narrow range,
    // pins header offsets linked to other registers to constants and loses their bounds
    // ("REG INVARIANTS VIOLATION", then the program is rejected). A volatile read, which the
    // compiler does not merge with the fast parse's, is a fresh unknown to the verifier.
    // SAFETY: checked just above.
    let payload_len = unsafe { ((ip + 4) as *const u16).read_volatile() };
    // A scalar, compared with scalars only (issue 13); as `ipv6_rcv` checks it.
    let ip_end = l3 + IPV6_LEN + usize::from(u16::from_be(payload_len));
    let len = datagram_len(ctx, ip_end, end - start)?;
    // The next header read again after `datagram_len`'s helper call rather than kept across
    // it: kept, it takes a callee-saved register the fast IPv6 path then spills for.
    if ip + IPV6_LEN > end {
        // As above: never taken.
        return Err(outcome::MALFORMED);
    }
    // SAFETY: checked just above.
    let mut next = unsafe { load::<u8>(ip + 6) };
    // Offset of the header `next` names. Each step adds a byte times a constant plus a
    // constant, a range the verifier follows (at most 22 + 40 + 6 * 2,048).
    let mut off = l3 + IPV6_LEN;
    let mut i = 0;
    loop {
        let (proto, l4_len) = match next {
            IPPROTO_TCP => (PROTO_TCP, TCP_MIN_LEN),
            IPPROTO_UDP => (PROTO_UDP, UDP_LEN),
            IPPROTO_HOPOPTS if i > 0 => return Err(outcome::MALFORMED),
            _ if i == MAX_EXT_HEADERS => {
                return Err(match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
                    | IPPROTO_AH => outcome::EXT_HEADERS_TOO_LONG,
                    _ => outcome::NOT_TCP_UDP,
                });
            }
            IPPROTO_FRAGMENT => {
                let hdr = ext_header::<FRAG_HDR_LEN>(start, end, off, ip_end)?;
                // SAFETY: 8 bytes are there.
                let (this_next, frag) = unsafe { (load::<u8>(hdr), load::<u16>(hdr + 2)) };
                // Fragment offset: the high 13 bits of the big-endian word.
                if frag & 0xfff8u16.to_be() != 0 {
                    return Err(outcome::FRAGMENT);
                }
                next = this_next;
                off += FRAG_HDR_LEN;
                i += 1;
                continue;
            }
            // Two arms that differ only in the length formula: merged into one (the shift and
            // addend chosen by a branch), the verifier walked 2-3 times the instructions
            // (26,569 -> 85,950 on 6.18), because every later path is then explored twice.
            IPPROTO_AH => {
                let hdr = ext_header::<2>(start, end, off, ip_end)?;
                // SAFETY: 2 bytes are there.
                let (this_next, len) = unsafe { (load::<u8>(hdr), load::<u8>(hdr + 1)) };
                next = this_next;
                // AH counts its length in 4-byte words less 2.
                off += (usize::from(len) + 2) << 2;
                i += 1;
                continue;
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let hdr = ext_header::<2>(start, end, off, ip_end)?;
                // SAFETY: 2 bytes are there.
                let (this_next, len) = unsafe { (load::<u8>(hdr), load::<u8>(hdr + 1)) };
                next = this_next;
                // The others in 8-byte words less 1.
                off += (usize::from(len) + 1) << 3;
                i += 1;
                continue;
            }
            _ => return Err(outcome::NOT_TCP_UDP),
        };
        if off + l4_len > ip_end {
            return Err(outcome::MALFORMED);
        }
        let l4 = start + off;
        if l4 + 4 > end {
            return Err(outcome::HEADERS_PAST_FIRST_BUFFER);
        }
        // SAFETY: checked just above.
        let dest_port = u16::from_be(unsafe { load::<u16>(l4 + 2) });
        return Ok(Demuxed {
            index: port_index(proto, dest_port),
            len,
            ipv6: true,
            l3,
        });
    }
}
