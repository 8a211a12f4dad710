//! Header parsing: every read is bounds-checked against `data_end` right before it, in the
//! form the verifier tracks (`pointer + constant or bounded offset > data_end`).

use aya_ebpf::programs::XdpContext;
use port_demux_common::{
    PROTO_TCP, PROTO_UDP,
    model::{ETH_LEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_LEN, TCP_MIN_LEN, UDP_LEN},
    outcome, port_index,
};

/// A pointer to a `T` at `offset` into the frame, if the whole `T` lies inside it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a `T` at `offset`; `Err(MALFORMED)` when the frame is too short.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, usize> {
    let ptr = ptr_at::<T>(ctx, offset).ok_or(outcome::MALFORMED)?;
    // SAFETY: `ptr_at` checked that the `T` lies inside the frame.
    Ok(unsafe { ptr.read_unaligned() })
}

/// The `PORT_STATS`/`BINDINGS` index of a frame, or the outcome that stops it short.
#[inline(always)]
pub fn dest_port_index(ctx: &XdpContext) -> Result<u32, usize> {
    let ether_type: u16 = read(ctx, 12)?;
    if ether_type != ETH_P_IP.to_be() {
        return Err(outcome::NOT_IPV4);
    }
    // The fixed IPv4 header: [version/IHL, TOS, total length, id, flags/fragment offset, TTL,
    // protocol, ...].
    let ip: [u8; IPV4_MIN_LEN] = read(ctx, ETH_LEN)?;
    let version_ihl = ip[0];
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if version_ihl >> 4 != 4
        || header_len < IPV4_MIN_LEN
        || total_len < header_len
        || ctx.data() + ETH_LEN + total_len > ctx.data_end()
    {
        return Err(outcome::MALFORMED);
    }
    let (proto, l4_len) = match ip[9] {
        IPPROTO_TCP => (PROTO_TCP, TCP_MIN_LEN),
        IPPROTO_UDP => (PROTO_UDP, UDP_LEN),
        _ => return Err(outcome::NOT_TCP_UDP),
    };
    if (ip[6] & 0x1f) | ip[7] != 0 {
        return Err(outcome::FRAGMENT);
    }
    if header_len + l4_len > total_len {
        return Err(outcome::MALFORMED);
    }
    // Source and destination port; `total_len` already bounds them, this check is the one the
    // verifier can follow.
    let ports: [u8; 4] = read(ctx, ETH_LEN + header_len)?;
    Ok(port_index(proto, u16::from_be_bytes([ports[2], ports[3]])))
}
