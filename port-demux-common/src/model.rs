//! The reference model: what the XDP program does with one frame, as a pure function.
//!
//! This is the specification the kernel program is tested against (`BPF_PROG_TEST_RUN` on the
//! same frames must give the same action and the same counter deltas).

use crate::{Binding, PROTO_TCP, PROTO_UDP, action, outcome, port_index, taken};

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
/// Minimum IPv4 header length.
pub const IPV4_MIN_LEN: usize = 20;
/// TCP header length without options: the whole of it must be present.
pub const TCP_MIN_LEN: usize = 20;
/// UDP header length.
pub const UDP_LEN: usize = 8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// What the data path does with a frame and how it counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The XDP return code.
    pub xdp_action: u32,
    /// One of [`crate::outcome`]'s constants.
    pub outcome: usize,
    /// One of [`crate::taken`]'s constants.
    pub taken: usize,
    /// The `PORT_STATS` index counted, for demultiplexed frames.
    pub port_index: Option<u32>,
}

/// The (protocol index, destination port) of a frame, or the outcome that stops it short.
///
/// # Errors
/// The [`outcome`] of a frame that is not demultiplexed.
pub fn parse(frame: &[u8]) -> Result<(u32, u16), usize> {
    let be16 = |off: usize| u16::from_be_bytes([frame[off], frame[off + 1]]);
    if frame.len() < ETH_LEN {
        return Err(outcome::MALFORMED);
    }
    if be16(12) != ETH_P_IP {
        return Err(outcome::NOT_IPV4);
    }
    if frame.len() < ETH_LEN + IPV4_MIN_LEN {
        return Err(outcome::MALFORMED);
    }
    let version_ihl = frame[ETH_LEN];
    let ihl_len = usize::from(version_ihl & 0x0f) * 4;
    let total_len = usize::from(be16(ETH_LEN + 2));
    if version_ihl >> 4 != 4
        || ihl_len < IPV4_MIN_LEN
        || total_len < ihl_len
        || ETH_LEN + total_len > frame.len()
    {
        return Err(outcome::MALFORMED);
    }
    let proto = match frame[ETH_LEN + 9] {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => return Err(outcome::NOT_TCP_UDP),
    };
    if be16(ETH_LEN + 6) & 0x1fff != 0 {
        return Err(outcome::FRAGMENT);
    }
    let l4_len = if proto == PROTO_TCP {
        TCP_MIN_LEN
    } else {
        UDP_LEN
    };
    if ihl_len + l4_len > total_len {
        return Err(outcome::MALFORMED);
    }
    Ok((proto, be16(ETH_LEN + ihl_len + 2)))
}

/// Classifies one frame.
///
/// `binding` gives the binding at a `PORT_STATS`/`BINDINGS` index, `default_action` is the
/// action for unbound ports ([`action::PASS`] or [`action::DROP`]), and `slot_filled` says
/// whether a `REDIRECT` devmap slot holds an interface.
pub fn classify(
    frame: &[u8],
    binding: impl Fn(u32) -> Binding,
    default_action: u32,
    slot_filled: impl Fn(u32) -> bool,
) -> Verdict {
    let (proto, port) = match parse(frame) {
        Ok(found) => found,
        Err(outcome) => {
            return Verdict {
                xdp_action: XDP_PASS,
                outcome,
                taken: taken::PASS,
                port_index: None,
            };
        }
    };
    let index = port_index(proto, port);
    let bound = binding(index);
    let act = if bound.action == action::UNBOUND {
        default_action
    } else {
        bound.action
    };
    let (xdp_action, taken) = match act {
        action::DROP => (XDP_DROP, taken::DROP),
        action::REDIRECT if slot_filled(bound.slot) => (XDP_REDIRECT, taken::REDIRECT),
        action::REDIRECT => (XDP_PASS, taken::REDIRECT_FALLBACK),
        _ => (XDP_PASS, taken::PASS),
    };
    Verdict {
        xdp_action,
        outcome: outcome::DEMUXED,
        taken,
        port_index: Some(index),
    }
}
