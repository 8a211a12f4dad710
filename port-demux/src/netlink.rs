//! What is attached to an interface's XDP hook, and detaching a foreign program (`load --force`),
//! over rtnetlink: the kernel's own answer, whoever attached the program and however. Messages
//! are built and parsed by `netlink-packet-route`, sent on a `netlink-sys` socket.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `XDP_FLAGS_SKB_MODE`.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_FLAGS_HW_MODE`.
pub const XDP_FLAGS_HW_MODE: u32 = 1 << 3;

/// The XDP programs on an interface, as the kernel reports them: one, or two when an offloaded
/// program sits beside a native or generic one (`XDP_ATTACHED_MULTI`: the kernel then omits
/// `IFLA_XDP_PROG_ID` and gives one id per mode; it refuses native and generic at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpAttachment {
    /// Program id: the native one, else the generic one, else the offloaded one.
    pub prog_id: u32,
    /// `XDP_FLAGS_DRV_MODE`, `XDP_FLAGS_SKB_MODE` or `XDP_FLAGS_HW_MODE` of `prog_id`.
    pub mode_flags: u32,
    /// The second program and its mode flags, when there are two.
    pub second: Option<(u32, u32)>,
}

impl XdpAttachment {
    /// Whether program `prog_id` is attached, in whichever mode.
    #[must_use]
    pub fn runs(&self, prog_id: u32) -> bool {
        self.programs().any(|(id, _)| id == prog_id)
    }

    /// Every attached program with its mode flags.
    pub fn programs(&self) -> impl Iterator<Item = (u32, u32)> {
        std::iter::once((self.prog_id, self.mode_flags)).chain(self.second)
    }
}

/// Sends `message` on a new rtnetlink socket and returns the kernel's replies up to its first
/// answer (a message or an error/acknowledgement).
fn request(
    mut message: NetlinkMessage<RouteNetlinkMessage>,
) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    message.finalize();
    let mut buf = vec![0u8; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let mut out = Vec::new();
    let mut off = 0;
    while off < reply.len() {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[off..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let len = msg.header.length as usize;
        if let NetlinkPayload::Error(e) = &msg.payload
            && let Some(code) = e.code
        {
            return Err(io::Error::from_raw_os_error(-code.get()));
        }
        out.push(msg);
        if len == 0 {
            break;
        }
        off += len.next_multiple_of(4);
    }
    Ok(out)
}

fn link_message(ifindex: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    link.attributes = attributes;
    link
}

fn netlink_message(
    flags: u16,
    payload: RouteNetlinkMessage,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload))
}

/// The XDP program attached to `ifindex` in the calling thread's network namespace, if any.
///
/// # Errors
/// The kernel's error (`ENODEV` for a missing interface) as an [`io::Error`].
pub fn xdp_query(ifindex: u32) -> io::Result<Option<XdpAttachment>> {
    let replies = request(netlink_message(
        NLM_F_REQUEST,
        RouteNetlinkMessage::GetLink(link_message(ifindex, Vec::new())),
    ))?;
    Ok(replies.iter().find_map(|m| match &m.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => attachment(link),
        _ => None,
    }))
}

/// The XDP attachment in an `RTM_NEWLINK` message. With one program the kernel gives its id
/// (`IFLA_XDP_PROG_ID`); with a native and a generic one it gives only their ids per mode
/// (`IFLA_XDP_DRV_PROG_ID`, `IFLA_XDP_SKB_PROG_ID`).
fn attachment(link: &LinkMessage) -> Option<XdpAttachment> {
    let xdp = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => Some(xdp),
        _ => None,
    })?;
    let (mut attached, mut prog, mut drv, mut skb, mut hw) = (None, None, None, None, None);
    for nla in xdp {
        match nla {
            LinkXdp::Attached(a) => attached = Some(*a),
            LinkXdp::ProgId(id) => prog = Some(*id),
            LinkXdp::DrvProgId(id) => drv = Some(*id),
            LinkXdp::SkbProgId(id) => skb = Some(*id),
            LinkXdp::HwProgId(id) => hw = Some(*id),
            _ => {}
        }
    }
    let single = |id: Option<u32>, mode_flags| {
        Some(XdpAttachment {
            prog_id: prog.or(id)?,
            mode_flags,
            second: None,
        })
    };
    match attached? {
        XdpAttached::Driver => single(drv, XDP_FLAGS_DRV_MODE),
        XdpAttached::SocketBuffer => single(skb, XDP_FLAGS_SKB_MODE),
        XdpAttached::Hardware => single(hw, XDP_FLAGS_HW_MODE),
        XdpAttached::Multiple => {
            let mut each = [
                drv.map(|id| (id, XDP_FLAGS_DRV_MODE)),
                skb.map(|id| (id, XDP_FLAGS_SKB_MODE)),
                hw.map(|id| (id, XDP_FLAGS_HW_MODE)),
            ]
            .into_iter()
            .flatten();
            let (prog_id, mode_flags) = each.next()?;
            Some(XdpAttachment {
                prog_id,
                mode_flags,
                second: each.next(),
            })
        }
        _ => None,
    }
}

/// Detaches a program attached through netlink (not through a `bpf_link`) from `ifindex`.
///
/// # Errors
/// The kernel's error (`EBUSY` for a program held by a `bpf_link`) as an [`io::Error`].
pub fn xdp_detach(ifindex: u32, mode_flags: u32) -> io::Result<()> {
    let link = link_message(
        ifindex,
        vec![LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(mode_flags),
        ])],
    );
    request(netlink_message(
        NLM_F_REQUEST | NLM_F_ACK,
        RouteNetlinkMessage::SetLink(link),
    ))
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `RTM_NEWLINK` reply with `xdp` as the kernel sends it, parsed back as
    /// [`xdp_query`] parses it.
    fn round_trip(xdp: Vec<LinkXdp>) -> Option<XdpAttachment> {
        let link = link_message(
            7,
            vec![
                LinkAttribute::IfName("veth0".into()),
                LinkAttribute::Xdp(xdp),
            ],
        );
        let mut msg = netlink_message(0, RouteNetlinkMessage::NewLink(link));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf)
            .expect("parses")
            .payload
        {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => attachment(&link),
            other => panic!("not a link: {other:?}"),
        }
    }

    #[test]
    fn one_program() {
        assert_eq!(
            round_trip(vec![
                LinkXdp::Attached(XdpAttached::Driver),
                LinkXdp::ProgId(42)
            ]),
            Some(XdpAttachment {
                prog_id: 42,
                mode_flags: XDP_FLAGS_DRV_MODE,
                second: None
            })
        );
        assert_eq!(
            round_trip(vec![
                LinkXdp::Attached(XdpAttached::SocketBuffer),
                LinkXdp::ProgId(9)
            ])
            .map(|a| a.mode_flags),
            Some(XDP_FLAGS_SKB_MODE)
        );
        assert_eq!(round_trip(vec![LinkXdp::Attached(XdpAttached::None)]), None);
    }

    #[test]
    fn two_programs_at_once() {
        // The kernel omits IFLA_XDP_PROG_ID then, and gives the id of each mode.
        for (ids, modes) in [
            (
                vec![LinkXdp::DrvProgId(11), LinkXdp::HwProgId(12)],
                [XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE],
            ),
            (
                vec![LinkXdp::SkbProgId(11), LinkXdp::HwProgId(12)],
                [XDP_FLAGS_SKB_MODE, XDP_FLAGS_HW_MODE],
            ),
            (
                vec![LinkXdp::DrvProgId(11), LinkXdp::SkbProgId(12)],
                [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE],
            ),
        ] {
            let mut xdp = vec![LinkXdp::Attached(XdpAttached::Multiple)];
            xdp.extend(ids);
            let both = round_trip(xdp).expect("attached");
            assert!(both.runs(11) && both.runs(12) && !both.runs(13), "{both:?}");
            assert_eq!(
                both.programs().collect::<Vec<_>>(),
                [(11, modes[0]), (12, modes[1])]
            );
        }
    }
}
