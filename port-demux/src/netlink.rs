//! What is attached to an interface's XDP hook, and detaching a foreign program (`load --force`),
//! over rtnetlink: the kernel's own answer, whoever attached the program and however.
#![expect(
    clippy::cast_possible_truncation,
    reason = "libc's netlink constants are small positive i32s"
)]

use std::{io, os::fd::AsRawFd as _};

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
const XDP_ATTACHED_MULTI: u8 = 4;
/// `XDP_FLAGS_SKB_MODE`.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The XDP program on an interface, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpAttachment {
    /// Program id.
    pub prog_id: u32,
    /// `XDP_FLAGS_DRV_MODE` or `XDP_FLAGS_SKB_MODE` (0 for hardware or several).
    pub mode_flags: u32,
}

struct Socket(std::os::fd::OwnedFd);

impl Socket {
    fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn request(&self, msg: &[u8]) -> io::Result<Vec<u8>> {
        // SAFETY: sending an initialised buffer.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(usize::try_from(n).unwrap_or(0));
        Ok(buf)
    }
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).expect("small attribute");
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn message(kind: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(32 + attrs.len());
    let len = u32::try_from(32 + attrs.len()).expect("small message");
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    // struct ifinfomsg
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&i32::try_from(ifindex).unwrap_or(0).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // change
    msg.extend_from_slice(attrs);
    msg
}

fn u16_at(buf: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(off..off + 4)?.try_into().ok()?))
}

/// Iterates the attributes in `buf` as (type without flags, payload).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(buf, off)?);
        let kind = u16_at(buf, off + 2)? & !NLA_F_NESTED;
        if len < 4 {
            return None;
        }
        let payload = buf.get(off + 4..off + len)?;
        off += len.next_multiple_of(4);
        Some((kind, payload))
    })
}

/// The error code of an `NLMSG_ERROR` reply (0 is an acknowledgement).
fn check_error(reply: &[u8]) -> io::Result<()> {
    if u16_at(reply, 4) == Some(libc::NLMSG_ERROR as u16) {
        let code = u32_at(reply, 16).map_or(0, u32::cast_signed);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}

/// The XDP program attached to `ifindex` in the calling thread's network namespace, if any.
pub fn xdp_query(ifindex: u32) -> io::Result<Option<XdpAttachment>> {
    let socket = Socket::new()?;
    let reply = socket.request(&message(
        libc::RTM_GETLINK,
        libc::NLM_F_REQUEST as u16,
        ifindex,
        &[],
    ))?;
    check_error(&reply)?;
    Ok(parse_link_reply(&reply))
}

/// The XDP attachment in an `RTM_NEWLINK` reply (`nlmsghdr`, `ifinfomsg`, attributes).
fn parse_link_reply(reply: &[u8]) -> Option<XdpAttachment> {
    let len = u32_at(reply, 0).unwrap_or(0) as usize;
    let body = reply.get(32..len.min(reply.len())).unwrap_or(&[]);
    for (kind, payload) in attrs(body) {
        if kind != IFLA_XDP {
            continue;
        }
        let mut attached = 0u8;
        let mut prog_id = 0u32;
        for (kind, value) in attrs(payload) {
            match kind {
                IFLA_XDP_ATTACHED => attached = value.first().copied().unwrap_or(0),
                IFLA_XDP_PROG_ID => prog_id = u32_at(value, 0).unwrap_or(0),
                _ => {}
            }
        }
        let mode_flags = match attached {
            XDP_ATTACHED_DRV => XDP_FLAGS_DRV_MODE,
            XDP_ATTACHED_SKB => XDP_FLAGS_SKB_MODE,
            XDP_ATTACHED_HW | XDP_ATTACHED_MULTI => 0,
            _ => return None,
        };
        return Some(XdpAttachment {
            prog_id,
            mode_flags,
        });
    }
    None
}

/// Detaches a program attached through netlink (not through a `bpf_link`) from `ifindex`.
pub fn xdp_detach(ifindex: u32, mode_flags: u32) -> io::Result<()> {
    let mut nested = Vec::new();
    push_attr(&mut nested, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    push_attr(&mut nested, IFLA_XDP_FLAGS, &mode_flags.to_ne_bytes());
    let mut attr = Vec::new();
    push_attr(&mut attr, IFLA_XDP | NLA_F_NESTED, &nested);
    let socket = Socket::new()?;
    let reply = socket.request(&message(
        libc::RTM_SETLINK,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        ifindex,
        &attr,
    ))?;
    check_error(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IFLA_IFNAME: u16 = 3;

    /// A reply as the kernel sends it: the interface name, then `IFLA_XDP` with `attached`
    /// and the program id.
    fn reply(attached: u8, prog_id: u32) -> Vec<u8> {
        let mut xdp = Vec::new();
        push_attr(&mut xdp, IFLA_XDP_ATTACHED, &[attached]);
        push_attr(&mut xdp, IFLA_XDP_PROG_ID, &prog_id.to_ne_bytes());
        let mut attrs = Vec::new();
        push_attr(&mut attrs, IFLA_IFNAME, b"veth0\0");
        push_attr(&mut attrs, IFLA_XDP | NLA_F_NESTED, &xdp);
        message(libc::RTM_NEWLINK, 0, 7, &attrs)
    }

    #[test]
    fn xdp_attachment_of_a_link_reply() {
        assert_eq!(
            parse_link_reply(&reply(XDP_ATTACHED_DRV, 42)),
            Some(XdpAttachment {
                prog_id: 42,
                mode_flags: XDP_FLAGS_DRV_MODE
            })
        );
        assert_eq!(
            parse_link_reply(&reply(XDP_ATTACHED_SKB, 9)).map(|a| a.mode_flags),
            Some(XDP_FLAGS_SKB_MODE)
        );
        assert_eq!(parse_link_reply(&reply(0, 0)), None, "nothing attached");
        let full = reply(XDP_ATTACHED_DRV, 42);
        for cut in 0..full.len() {
            // A reply cut anywhere is read as far as it goes, never past its end.
            let _ = parse_link_reply(&full[..cut]);
        }
    }

    #[test]
    fn error_replies() {
        let mut ack = message(libc::NLMSG_ERROR as u16, 0, 0, &[]);
        assert!(check_error(&ack).is_ok());
        ack[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            check_error(&ack).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
    }
}
