//! The reference model: what the XDP program does with one frame, as a pure function.
//!
//! This is the specification the kernel program is tested against (`BPF_PROG_TEST_RUN` on the
//! same frames must give the same action and the same counter deltas).

use crate::{Binding, PROTO_TCP, PROTO_UDP, action, family, outcome, port_index, taken};

/// An address-scoped binding as the model sees it: a prefix of one family on one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopedRule {
    /// `port_index(proto, port)`.
    pub index: u32,
    /// [`crate::family`].
    pub family: u8,
    /// The prefix's address as a number (IPv4 in the low 32 bits), host bits zero.
    pub addr: u128,
    /// Prefix length: 0-32 (IPv4) or 0-128 (IPv6).
    pub len: u8,
    /// [`action::PASS`], [`action::DROP`] or [`action::REDIRECT`].
    pub action: u32,
    /// `REDIRECT` devmap slot.
    pub slot: u32,
    /// Its `SCOPED`/`SCOPED_STATS` index.
    pub id: u32,
}

impl ScopedRule {
    /// Whether the prefix covers address `addr` of `family`.
    #[must_use]
    pub const fn covers(&self, family: u8, addr: u128) -> bool {
        let bits: u32 = if family == family::IPV4 { 32 } else { 128 };
        if family != self.family || self.len as u32 > bits {
            return false;
        }
        let host = bits - self.len as u32;
        host == 128 || addr >> host == self.addr >> host
    }
}

/// The most specific rule of port `index` covering `addr` of `family` (tubular's rule): a
/// plain scan, the statement the data path's interval search is held to.
#[must_use]
pub fn most_specific(
    rules: &[ScopedRule],
    index: u32,
    family: u8,
    addr: u128,
) -> Option<&ScopedRule> {
    rules
        .iter()
        .filter(|r| r.index == index && r.covers(family, addr))
        .max_by_key(|r| r.len)
}

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// `EtherType` of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// `EtherType` of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// `EtherType` (TPID) of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// `EtherType` (TPID) of an 802.1ad (`QinQ` service) VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Length of a VLAN tag (TPID and TCI).
pub const VLAN_LEN: usize = 4;
/// VLAN tags the data path reads before the `EtherType`; a deeper stack is
/// [`outcome::VLAN_TOO_DEEP`].
pub const MAX_VLAN_TAGS: usize = 2;
/// Minimum IPv4 header length.
pub const IPV4_MIN_LEN: usize = 20;
/// IPv6 fixed header length.
pub const IPV6_LEN: usize = 40;
/// TCP header length without options: the whole of it must be present.
pub const TCP_MIN_LEN: usize = 20;
/// UDP header length.
pub const UDP_LEN: usize = 8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 hop-by-hop options header (only as the first extension header).
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// `IPsec` ESP: encrypted, not TCP/UDP as far as the data path can see.
pub const IPPROTO_ESP: u8 = 50;
/// `IPsec` authentication header (length in 4-byte units, minus 2).
pub const IPPROTO_AH: u8 = 51;
/// `ICMPv6`.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 no next header.
pub const IPPROTO_NONE: u8 = 59;
/// IPv6 destination options header.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 fragment header length.
pub const FRAG_HDR_LEN: usize = 8;
/// IPv6 extension headers the data path walks; a longer chain is
/// [`outcome::EXT_HEADERS_TOO_LONG`] (xdp-tools' `parsing_helpers.h` also walks 6).
pub const MAX_EXT_HEADERS: usize = 6;

/// What the data path does with a frame and how it counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The XDP return code.
    pub xdp_action: u32,
    /// One of [`crate::outcome`]'s constants.
    pub outcome: usize,
    /// One of [`crate::taken`]'s constants.
    pub taken: usize,
    /// The (protocol, port) index counted (`port_index`), for demultiplexed frames.
    pub port_index: Option<u32>,
    /// [`crate::family`] of a demultiplexed frame, else 0.
    pub family: u8,
    /// The bytes counted under the port, for demultiplexed frames, else 0.
    pub bytes: u64,
    /// The address-scoped binding (its id) that matched and counted the frame too.
    pub scoped: Option<u32>,
}

/// A demultiplexed frame as the parse found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u32,
    /// Destination port.
    pub port: u16,
    /// [`crate::family`].
    pub family: u8,
    /// Bytes counted: the first buffer's length, or the whole frame's when the IP length
    /// reaches past the first buffer (a multi-buffer frame: the data path then asks the
    /// kernel for the whole length, on that path only).
    pub bytes: u64,
    /// Destination address as a number (IPv4 in the low 32 bits).
    pub dst: u128,
}

/// The (protocol index, destination port) of a single-buffer frame, or the outcome that
/// stops it short.
///
/// # Errors
/// The [`outcome`] of a frame that is not demultiplexed.
pub fn parse(frame: &[u8]) -> Result<(u32, u16), usize> {
    parse_buffers(frame, frame.len()).map(|p| (p.proto, p.port))
}

/// Bounds of one frame: reads must lie in the first buffer (`linear` bytes); lengths are
/// checked against the whole frame.
struct Bounds<'a> {
    frame: &'a [u8],
    linear: usize,
}

impl Bounds<'_> {
    /// Bytes `..end` must be there: past `limit` (the frame's or the IP datagram's end) the
    /// frame is malformed; inside it but past the first buffer, its headers are split.
    fn need(&self, end: usize, limit: usize) -> Result<(), usize> {
        if end > limit {
            Err(outcome::MALFORMED)
        } else if end > self.linear {
            Err(outcome::HEADERS_PAST_FIRST_BUFFER)
        } else {
            Ok(())
        }
    }

    fn u8(&self, off: usize) -> u8 {
        self.frame[off]
    }

    fn be16(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.frame[off], self.frame[off + 1]])
    }

    /// `n` (4 or 16) bytes at `off` as a big-endian number.
    fn addr(&self, off: usize, n: usize) -> u128 {
        self.frame[off..off + n]
            .iter()
            .fold(0, |a, &b| a << 8 | u128::from(b))
    }

    /// Bytes counted for a datagram ending at `ip_end`.
    fn bytes(&self, ip_end: usize) -> u64 {
        if ip_end > self.linear {
            self.frame.len() as u64
        } else {
            self.linear as u64
        }
    }
}

/// As [`parse`], for a frame of which only the first `linear` bytes are in the first buffer
/// (multi-buffer XDP; `linear == frame.len()` for a single buffer).
///
/// Ethernet, then up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags, then IPv4 or IPv6. IPv6: the
/// payload length must fit in the frame (as `ipv6_rcv` checks); then up to
/// [`MAX_EXT_HEADERS`] extension headers: hop-by-hop (first only), routing, destination
/// options, fragment (a non-first fragment stops as [`outcome::FRAGMENT`]) and AH; TCP or UDP
/// ends the walk, anything else (ESP, no next header, `ICMPv6`, ...) is
/// [`outcome::NOT_TCP_UDP`].
///
/// # Errors
/// The [`outcome`] of a frame that is not demultiplexed.
///
/// # Panics
/// When `linear > frame.len()`.
pub fn parse_buffers(frame: &[u8], linear: usize) -> Result<Parsed, usize> {
    assert!(
        linear <= frame.len(),
        "the first buffer is part of the frame"
    );
    let b = Bounds { frame, linear };
    let whole = frame.len();
    b.need(ETH_LEN, whole)?;
    let mut ether_type = b.be16(12);
    let mut l3 = ETH_LEN;
    let mut tags = 0;
    while ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        if tags == MAX_VLAN_TAGS {
            return Err(outcome::VLAN_TOO_DEEP);
        }
        b.need(l3 + VLAN_LEN, whole)?;
        ether_type = b.be16(l3 + 2);
        l3 += VLAN_LEN;
        tags += 1;
    }
    match ether_type {
        ETH_P_IP => ipv4(&b, l3),
        ETH_P_IPV6 => ipv6(&b, l3),
        _ => Err(outcome::NOT_IP),
    }
}

/// The (protocol, minimum header length) of TCP and UDP.
fn l4(next: u8) -> Option<(u32, usize)> {
    match next {
        IPPROTO_TCP => Some((PROTO_TCP, TCP_MIN_LEN)),
        IPPROTO_UDP => Some((PROTO_UDP, UDP_LEN)),
        _ => None,
    }
}

fn ipv4(b: &Bounds<'_>, l3: usize) -> Result<Parsed, usize> {
    b.need(l3 + IPV4_MIN_LEN, b.frame.len())?;
    let version_ihl = b.u8(l3);
    let ihl_len = usize::from(version_ihl & 0x0f) * 4;
    let total_len = usize::from(b.be16(l3 + 2));
    if version_ihl >> 4 != 4
        || ihl_len < IPV4_MIN_LEN
        || total_len < ihl_len
        || l3 + total_len > b.frame.len()
    {
        return Err(outcome::MALFORMED);
    }
    let Some((proto, l4_len)) = l4(b.u8(l3 + 9)) else {
        return Err(outcome::NOT_TCP_UDP);
    };
    if b.be16(l3 + 6) & 0x1fff != 0 {
        return Err(outcome::FRAGMENT);
    }
    if ihl_len + l4_len > total_len {
        return Err(outcome::MALFORMED);
    }
    let ports = l3 + ihl_len;
    let ip_end = l3 + total_len;
    b.need(ports + 4, ip_end)?;
    Ok(Parsed {
        proto,
        port: b.be16(ports + 2),
        family: family::IPV4,
        bytes: b.bytes(ip_end),
        dst: b.addr(l3 + 16, 4),
    })
}

fn ipv6(b: &Bounds<'_>, l3: usize) -> Result<Parsed, usize> {
    b.need(l3 + IPV6_LEN, b.frame.len())?;
    let payload_len = usize::from(b.be16(l3 + 4));
    if b.u8(l3) >> 4 != 6 || l3 + IPV6_LEN + payload_len > b.frame.len() {
        return Err(outcome::MALFORMED);
    }
    let ip_end = l3 + IPV6_LEN + payload_len;
    let mut next = b.u8(l3 + 6);
    let mut off = l3 + IPV6_LEN;
    for i in 0..=MAX_EXT_HEADERS {
        if let Some((proto, l4_len)) = l4(next) {
            if off + l4_len > ip_end {
                return Err(outcome::MALFORMED);
            }
            b.need(off + 4, ip_end)?;
            return Ok(Parsed {
                proto,
                port: b.be16(off + 2),
                family: family::IPV6,
                bytes: b.bytes(ip_end),
                dst: b.addr(l3 + 24, 16),
            });
        }
        let len = match next {
            IPPROTO_HOPOPTS if i > 0 => return Err(outcome::MALFORMED),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT | IPPROTO_AH
                if i == MAX_EXT_HEADERS =>
            {
                return Err(outcome::EXT_HEADERS_TOO_LONG);
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                b.need(off + 2, ip_end)?;
                (usize::from(b.u8(off + 1)) + 1) * 8
            }
            IPPROTO_AH => {
                b.need(off + 2, ip_end)?;
                (usize::from(b.u8(off + 1)) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                b.need(off + FRAG_HDR_LEN, ip_end)?;
                if b.be16(off + 2) & 0xfff8 != 0 {
                    return Err(outcome::FRAGMENT);
                }
                FRAG_HDR_LEN
            }
            _ => return Err(outcome::NOT_TCP_UDP),
        };
        next = b.u8(off);
        off += len;
    }
    unreachable!("the last round returns")
}

/// Classifies one frame.
///
/// `binding` gives the binding at a `BINDINGS` (and counter) index, `default_action` is the
/// action for unbound ports ([`action::PASS`] or [`action::DROP`]), and `slot_filled` says
/// whether a `REDIRECT` devmap slot holds an interface.
pub fn classify(
    frame: &[u8],
    binding: impl Fn(u32) -> Binding,
    default_action: u32,
    slot_filled: impl Fn(u32) -> bool,
) -> Verdict {
    classify_buffers(frame, frame.len(), binding, default_action, slot_filled)
}

/// As [`classify`], for a frame whose first buffer holds `linear` of its bytes.
///
/// # Panics
/// When `linear > frame.len()`.
pub fn classify_buffers(
    frame: &[u8],
    linear: usize,
    binding: impl Fn(u32) -> Binding,
    default_action: u32,
    slot_filled: impl Fn(u32) -> bool,
) -> Verdict {
    classify_scoped(frame, linear, binding, &[], default_action, slot_filled)
}

/// As [`classify_buffers`], with address-scoped bindings `rules`: for a demultiplexed frame,
/// the most specific prefix of its family on its port that covers its destination address
/// wins (its action; the frame also counts under that binding), then the port's binding
/// without a prefix, then `default_action`. The [`action::SCOPED`] flag in `binding`'s values
/// is ignored: the rules alone say which ports are scoped.
///
/// # Panics
/// When `linear > frame.len()`.
pub fn classify_scoped(
    frame: &[u8],
    linear: usize,
    binding: impl Fn(u32) -> Binding,
    rules: &[ScopedRule],
    default_action: u32,
    slot_filled: impl Fn(u32) -> bool,
) -> Verdict {
    let parsed = match parse_buffers(frame, linear) {
        Ok(found) => found,
        Err(outcome) => {
            return Verdict {
                xdp_action: XDP_PASS,
                outcome,
                taken: taken::PASS,
                port_index: None,
                family: 0,
                bytes: 0,
                scoped: None,
            };
        }
    };
    let index = port_index(parsed.proto, parsed.port);
    let matched = most_specific(rules, index, parsed.family, parsed.dst);
    let (act, slot) = if let Some(rule) = matched {
        (rule.action, rule.slot)
    } else {
        let bound = binding(index);
        (bound.action & action::MASK, bound.slot)
    };
    let act = if act == action::UNBOUND {
        default_action
    } else {
        act
    };
    let (xdp_action, taken) = match act {
        action::DROP => (XDP_DROP, taken::DROP),
        action::REDIRECT if slot_filled(slot) => (XDP_REDIRECT, taken::REDIRECT),
        action::REDIRECT => (XDP_PASS, taken::REDIRECT_FALLBACK),
        _ => (XDP_PASS, taken::PASS),
    };
    Verdict {
        xdp_action,
        outcome: outcome::DEMUXED,
        taken,
        port_index: Some(index),
        family: parsed.family,
        bytes: parsed.bytes,
        scoped: matched.map(|r| r.id),
    }
}

#[cfg(test)]
mod tests;
