//! Crafted Ethernet frames: a builder for Ethernet + IPv4 (options, flags, fragment offset and
//! total length under control) + TCP/UDP, a small deterministic PRNG, and generators of valid
//! and hostile frames for the differential test.

use port_demux_common::model::{
    ETH_LEN, ETH_P_IP, FRAG_HDR_LEN, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_ESP, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP,
};

/// Ethertype of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Ethertype of an 802.1ad (`QinQ`) tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IPv4 "more fragments" flag, in the flags/fragment-offset field.
pub const IP_MF: u16 = 0x2000;
/// IPv4 "don't fragment" flag, in the flags/fragment-offset field.
pub const IP_DF: u16 = 0x4000;
/// The reserved (evil) IPv4 flag bit, in the flags/fragment-offset field.
pub const IP_RESERVED: u16 = 0x8000;

/// Largest frame `BPF_PROG_TEST_RUN` hands an XDP program whole (linear): a page minus
/// `XDP_PACKET_HEADROOM` (256) minus the aligned `skb_shared_info` (320 on x86-64):
/// 4096 - 256 - 320. Longer input is split into fragments, which a program loaded without
/// `xdp.frags` cannot see (the `test_run` tests check this limit against the kernel).
pub const TEST_RUN_MAX_LINEAR: usize = 3520;
/// Shortest frame `BPF_PROG_TEST_RUN` accepts for XDP: an Ethernet header (`ETH_HLEN`); shorter
/// input fails with `EINVAL` before the program runs.
pub const TEST_RUN_MIN: usize = ETH_LEN;

/// An Ethernet frame under construction. Every field that a hostile frame may want wrong is
/// explicit; [`build`](Self::build) computes the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameBuilder {
    /// Ethertype.
    pub ethertype: u16,
    /// IPv4 version nibble (4 for a valid frame).
    pub version: u8,
    /// IHL nibble; `None`: computed from [`options`](Self::options) (5 + options / 4).
    pub ihl: Option<u8>,
    /// IPv4 options, written right after the 20-byte fixed header.
    pub options: Vec<u8>,
    /// IPv4 total length; `None`: the real IP header + L4 length.
    pub total_len: Option<u16>,
    /// Flags and fragment offset (e.g. [`IP_MF`] | offset in 8-byte units).
    pub flags_frag: u16,
    /// IP protocol.
    pub protocol: u8,
    /// Everything after the IP header: the L4 header and payload.
    pub l4: Vec<u8>,
    /// Bytes after the IP datagram (e.g. Ethernet padding), not counted in the total length.
    pub trailer: Vec<u8>,
}

impl FrameBuilder {
    /// An IPv4 frame carrying `l4` (header and payload) with IP protocol `protocol`.
    #[must_use]
    pub fn ip(protocol: u8, l4: Vec<u8>) -> Self {
        Self {
            ethertype: ETH_P_IP,
            version: 4,
            ihl: None,
            options: Vec::new(),
            total_len: None,
            flags_frag: 0,
            protocol,
            l4,
            trailer: Vec::new(),
        }
    }

    /// A UDP datagram from port 40000 to `dport` with `payload_len` bytes of payload.
    #[must_use]
    pub fn udp(dport: u16, payload_len: usize) -> Self {
        Self::ip(IPPROTO_UDP, udp(40_000, dport, &payload(payload_len)))
    }

    /// A TCP segment (SYN) from port 40000 to `dport` with `payload_len` bytes of payload.
    #[must_use]
    pub fn tcp(dport: u16, payload_len: usize) -> Self {
        Self::ip(IPPROTO_TCP, tcp(40_000, dport, &payload(payload_len)))
    }

    /// Sets the ethertype.
    #[must_use]
    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.ethertype = ethertype;
        self
    }

    /// Sets the IPv4 version nibble.
    #[must_use]
    pub fn version(mut self, version: u8) -> Self {
        self.version = version;
        self
    }

    /// Forces the IHL nibble.
    #[must_use]
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ihl = Some(ihl);
        self
    }

    /// Sets the IPv4 options (a multiple of 4 bytes for a consistent IHL).
    #[must_use]
    pub fn options(mut self, options: Vec<u8>) -> Self {
        self.options = options;
        self
    }

    /// Forces the IPv4 total length.
    #[must_use]
    pub fn total_len(mut self, total_len: u16) -> Self {
        self.total_len = Some(total_len);
        self
    }

    /// Sets flags and fragment offset (offset in 8-byte units, flags as [`IP_MF`], [`IP_DF`]).
    #[must_use]
    pub fn flags_frag(mut self, flags_frag: u16) -> Self {
        self.flags_frag = flags_frag;
        self
    }

    /// Sets the IP protocol.
    #[must_use]
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets bytes after the IP datagram.
    #[must_use]
    pub fn trailer(mut self, trailer: Vec<u8>) -> Self {
        self.trailer = trailer;
        self
    }

    /// The IHL nibble that will be written.
    #[must_use]
    pub fn ihl_nibble(&self) -> u8 {
        self.ihl
            .unwrap_or_else(|| u8::try_from(5 + self.options.len() / 4).unwrap_or(0x0f) & 0x0f)
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(
            ETH_LEN + 20 + self.options.len() + self.l4.len() + self.trailer.len(),
        );
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
        frame.extend_from_slice(&self.ethertype.to_be_bytes());
        let ip_len = 20 + self.options.len() + self.l4.len();
        let total_len = self
            .total_len
            .unwrap_or_else(|| u16::try_from(ip_len).unwrap_or(u16::MAX));
        let ip_start = frame.len();
        frame.push((self.version << 4) | self.ihl_nibble());
        frame.push(0); // TOS
        frame.extend_from_slice(&total_len.to_be_bytes());
        frame.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
        frame.extend_from_slice(&self.flags_frag.to_be_bytes());
        frame.push(64); // TTL
        frame.push(self.protocol);
        frame.extend_from_slice(&[0, 0]); // checksum, filled below
        frame.extend_from_slice(&[10, 0, 0, 1]);
        frame.extend_from_slice(&[10, 0, 0, 2]);
        frame.extend_from_slice(&self.options);
        let checksum = ip_checksum(&frame[ip_start..]);
        frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend_from_slice(&self.l4);
        frame.extend_from_slice(&self.trailer);
        frame
    }
}

/// An IPv6 extension header of `kind` (hop-by-hop 0, routing 43, destination options 60: `len`
/// 8-byte units beyond the first; AH 51: `len` 4-byte units beyond the first two; fragment 44:
/// `len` ignored, 8 bytes) with its next-header byte filled in by [`Ipv6Builder::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtHeader {
    /// The header's protocol number.
    pub kind: u8,
    /// Its bytes, the next-header byte (0) included.
    pub bytes: Vec<u8>,
}

impl ExtHeader {
    /// Hop-by-hop (0), routing (43) or destination options (60) with `len` as its length byte:
    /// `(len + 1) * 8` bytes of PadN-like filler.
    #[must_use]
    pub fn options(kind: u8, len: u8) -> Self {
        let mut bytes = vec![0u8; (usize::from(len) + 1) * 8];
        bytes[1] = len;
        Self { kind, bytes }
    }

    /// An authentication header with `len` as its length byte: `(len + 2) * 4` bytes.
    #[must_use]
    pub fn ah(len: u8) -> Self {
        let mut bytes = vec![0u8; (usize::from(len) + 2) * 4];
        bytes[1] = len;
        bytes[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes()); // SPI
        Self {
            kind: IPPROTO_AH,
            bytes,
        }
    }

    /// A fragment header at `offset` (8-byte units, 13 bits) with the M flag `more`.
    #[must_use]
    pub fn fragment(offset: u16, more: bool) -> Self {
        let mut bytes = vec![0u8; FRAG_HDR_LEN];
        let word = (offset << 3) | u16::from(more);
        bytes[2..4].copy_from_slice(&word.to_be_bytes());
        bytes[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes()); // identification
        Self {
            kind: IPPROTO_FRAGMENT,
            bytes,
        }
    }
}

/// An IPv6 frame under construction: VLAN tags, the fixed header, extension headers, the
/// upper-layer bytes and a trailer, each field under control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Builder {
    /// VLAN tags outermost first: (TPID, TCI).
    pub tags: Vec<(u16, u16)>,
    /// Version nibble (6 for a valid frame).
    pub version: u8,
    /// Payload length; `None`: the real extension headers + upper layer length.
    pub payload_len: Option<u16>,
    /// Extension headers, in order.
    pub ext: Vec<ExtHeader>,
    /// The upper-layer protocol after the last extension header.
    pub protocol: u8,
    /// Upper-layer header and payload.
    pub l4: Vec<u8>,
    /// Bytes after the datagram.
    pub trailer: Vec<u8>,
    /// Destination address.
    pub dst: [u8; 16],
}

impl Ipv6Builder {
    /// An IPv6 datagram (ULA addresses) carrying `l4` with upper-layer protocol `protocol`.
    #[must_use]
    pub fn ip(protocol: u8, l4: Vec<u8>) -> Self {
        let mut dst = [0u8; 16];
        dst[0] = 0xfd;
        dst[15] = 2;
        Self {
            tags: Vec::new(),
            version: 6,
            payload_len: None,
            ext: Vec::new(),
            protocol,
            l4,
            trailer: Vec::new(),
            dst,
        }
    }

    /// UDP from port 40000 to `dport` with `payload_len` bytes of payload.
    #[must_use]
    pub fn udp(dport: u16, payload_len: usize) -> Self {
        Self::ip(IPPROTO_UDP, udp(40_000, dport, &payload(payload_len)))
    }

    /// TCP (SYN) from port 40000 to `dport` with `payload_len` bytes of payload.
    #[must_use]
    pub fn tcp(dport: u16, payload_len: usize) -> Self {
        Self::ip(IPPROTO_TCP, tcp(40_000, dport, &payload(payload_len)))
    }

    /// Adds an extension header after the present ones.
    #[must_use]
    pub fn ext(mut self, header: ExtHeader) -> Self {
        self.ext.push(header);
        self
    }

    /// Adds a VLAN tag inside the present ones.
    #[must_use]
    pub fn tag(mut self, tpid: u16, tci: u16) -> Self {
        self.tags.push((tpid, tci));
        self
    }

    /// The offset of the IPv6 header in the frame.
    #[must_use]
    pub fn l3(&self) -> usize {
        ETH_LEN + 4 * self.tags.len()
    }

    /// The offset of the upper-layer header in the frame.
    #[must_use]
    pub fn l4_offset(&self) -> usize {
        self.l3() + 40 + self.ext.iter().map(|e| e.bytes.len()).sum::<usize>()
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut frame = ethernet(&self.tags, ETH_P_IPV6);
        let ext_len: usize = self.ext.iter().map(|e| e.bytes.len()).sum();
        let payload_len = self
            .payload_len
            .unwrap_or_else(|| u16::try_from(ext_len + self.l4.len()).unwrap_or(u16::MAX));
        frame.extend_from_slice(&[self.version << 4, 0, 0, 1]); // version, class, flow
        frame.extend_from_slice(&payload_len.to_be_bytes());
        frame.push(self.ext.first().map_or(self.protocol, |e| e.kind));
        frame.push(64); // hop limit
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 1;
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&self.dst);
        for (i, e) in self.ext.iter().enumerate() {
            let start = frame.len();
            frame.extend_from_slice(&e.bytes);
            frame[start] = self.ext.get(i + 1).map_or(self.protocol, |n| n.kind);
        }
        frame.extend_from_slice(&self.l4);
        frame.extend_from_slice(&self.trailer);
        frame
    }
}

/// The Ethernet header (and `tags`, outermost first) of a frame of `ether_type`.
#[must_use]
pub fn ethernet(tags: &[(u16, u16)], ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_LEN + 4 * tags.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    for (tpid, tci) in tags {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&tci.to_be_bytes());
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

/// `frame` with a VLAN tag (`tpid`, `tci`) inserted after the MAC addresses, outside any
/// present tags.
#[must_use]
pub fn tagged(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// A UDP header (checksum 0: none) followed by `payload`.
#[must_use]
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&len.to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    l4
}

/// A 20-byte TCP header (SYN, no options, checksum left 0) followed by `payload`.
#[must_use]
pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + payload.len());
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&1u32.to_be_bytes()); // sequence number
    l4.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment number
    l4.push(5 << 4); // data offset
    l4.push(0x02); // SYN
    l4.extend_from_slice(&64_240u16.to_be_bytes()); // window
    l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    l4.extend_from_slice(payload);
    l4
}

/// A non-zero, recognisable payload of `len` bytes.
#[must_use]
pub fn payload(len: usize) -> Vec<u8> {
    (0..=255u8).cycle().take(len).map(|b| 0xa0 ^ b).collect()
}

/// `len` bytes of IPv4 options: NOPs ending in an end-of-options byte.
#[must_use]
pub fn nop_options(len: usize) -> Vec<u8> {
    let mut options = vec![1u8; len];
    if let Some(last) = options.last_mut() {
        *last = 0;
    }
    options
}

/// The Internet checksum of an IPv4 header whose checksum field is zero.
#[must_use]
pub fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let [lo, hi, ..] = sum.to_le_bytes();
    !u16::from_le_bytes([lo, hi])
}

/// Lowercase hex of `bytes`, 32 bytes a line.
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2 + bytes.len() / 32 + 1);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 32 == 0 {
            out.push('\n');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses hex as written by [`to_hex`]: whitespace is ignored, as are lines starting with `#`.
///
/// # Errors
/// A description of the first bad character or an odd number of digits.
pub fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(str::bytes)
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            u8::from_str_radix(s, 16).map_err(|e| format!("bad hex {s:?}: {e}"))
        })
        .collect()
}

/// FNV-1a, 64 bits: names regression files after their content.
#[must_use]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A small deterministic PRNG (SplitMix64): reproducible frames from a seed, no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform value below `n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A uniform index below `n`.
    ///
    /// # Panics
    /// When `n` is 0.
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("below a usize")
    }

    /// A uniform value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.index(hi - lo + 1)
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }

    /// A random `u16`.
    pub fn u16(&mut self) -> u16 {
        let [a, b, ..] = self.next_u64().to_le_bytes();
        u16::from_le_bytes([a, b])
    }

    /// A random `u32`.
    pub fn u32(&mut self) -> u32 {
        let [a, b, c, d, ..] = self.next_u64().to_le_bytes();
        u32::from_le_bytes([a, b, c, d])
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// A random element of `items` (non-empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }
}

/// Ethertypes worth trying besides IPv4: ARP, IPv6, VLAN and `QinQ` tags, byte-swapped IPv4,
/// IPv4's neighbours, zero, all ones, and an 802.3 length.
pub const ODD_ETHERTYPES: [u16; 10] = [
    ETH_P_ARP,
    ETH_P_IPV6,
    ETH_P_8021Q,
    ETH_P_8021AD,
    0x0008,
    0x0801,
    0x07ff,
    0x0000,
    0xffff,
    0x05dc,
];

/// Ethertypes that share a byte with a VLAN TPID (0x8100, 0x88a8), either way round, and zero:
/// not tags, which a table keyed by one byte could take for one; and LLDP (0x88cc) and Fibre
/// Channel over Ethernet (0x8906), whose first byte a one-byte TPID filter (masked with 0xf6,
/// as the fast parse once had) lets through.
pub const NEAR_TPIDS: [u16; 12] = [
    0x0000, 0x8000, 0x8800, 0x81a8, 0x8108, 0x0081, 0xa888, 0x0088, 0x00a8, 0xa800, 0x88cc, 0x8906,
];

/// The kinds of frame [`Generator::frame`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Well-formed TCP or UDP, options and trailers included.
    Valid,
    /// A valid frame cut at a random point.
    Truncated,
    /// Random bytes.
    Random,
    /// Random bytes behind an IPv4 ethertype and a plausible version/IHL byte.
    RandomIpv4,
    /// IHL, total length and options inconsistent with each other and the frame.
    IhlVariant,
    /// Flags and fragment offset at random, including first and non-first fragments.
    Fragment,
    /// A valid frame with another ethertype.
    OddEthertype,
    /// 14 to 33 bytes: an Ethernet header and a partial IPv4 header at most.
    Runt,
    /// A valid frame up to [`TEST_RUN_MAX_LINEAR`] bytes.
    Jumbo,
    /// Another IP protocol than TCP and UDP, sometimes also fragmented or malformed.
    Protocol,
    /// A valid frame with a few bytes of its headers changed at random.
    Mutated,
    /// IPv6: TCP, UDP or another protocol behind 0 to 8 extension headers of every kind
    /// (fragments first and later), lengths sometimes wrong, sometimes cut short.
    Ipv6,
    /// IPv4 or IPv6 behind 1 to 3 VLAN tags (802.1Q, 802.1ad), sometimes cut inside them.
    Tagged,
    /// IPv4 or IPv6 of 3,521 to 9,000 bytes: a multi-buffer frame in `BPF_PROG_TEST_RUN`,
    /// its headers sometimes pushed past the first buffer by extension headers.
    MultiBuffer,
}

/// Every [`Kind`], to draw from.
pub const KINDS: [Kind; 14] = [
    Kind::Valid,
    Kind::Truncated,
    Kind::Random,
    Kind::RandomIpv4,
    Kind::IhlVariant,
    Kind::Fragment,
    Kind::OddEthertype,
    Kind::Runt,
    Kind::Jumbo,
    Kind::Protocol,
    Kind::Mutated,
    Kind::Ipv6,
    Kind::Tagged,
    Kind::MultiBuffer,
];

/// Longest frame [`Kind::MultiBuffer`] makes.
pub const MULTI_BUFFER_MAX: usize = 9000;

/// Extension header kinds, and protocols that end the walk, for the generator.
const IPV6_NEXT: [u8; 11] = [
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_AH,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_ESP,
    IPPROTO_NONE,
    IPPROTO_ICMPV6,
    135, // mobility: not walked
];

/// Random frames of every [`Kind`], with destination ports drawn mostly from a small pool (so
/// that bindings on those ports are hit often) and sometimes from all 65,536.
#[derive(Clone, Debug)]
pub struct Generator {
    /// The PRNG.
    pub rng: Rng,
    /// Ports drawn most of the time.
    pub ports: Vec<u16>,
    /// Longest frame made.
    pub max_len: usize,
}

impl Generator {
    /// A generator seeded with `seed`, whose preferred ports are `ports` (non-empty).
    #[must_use]
    pub fn new(seed: u64, ports: Vec<u16>) -> Self {
        Self {
            rng: Rng::new(seed),
            ports,
            max_len: TEST_RUN_MAX_LINEAR,
        }
    }

    /// A destination port: from the pool, an edge value or anything.
    pub fn port(&mut self) -> u16 {
        match self.rng.below(8) {
            0 => self.rng.u16(),
            1 => self
                .rng
                .pick(&[0, 1, 53, 80, 443, 0x0100, 0x8000, 0xfffe, 0xffff]),
            _ => self.rng.pick(&self.ports),
        }
    }

    /// Options of a random length (multiple of 4, up to 40): NOPs or random bytes.
    fn options(&mut self) -> Vec<u8> {
        let len = self.rng.range(0, 10) * 4;
        if self.rng.one_in(2) {
            nop_options(len)
        } else {
            self.rng.bytes(len)
        }
    }

    /// A well-formed TCP or UDP frame with `payload_max` bytes of payload at most.
    pub fn valid_builder(&mut self, payload_max: usize) -> FrameBuilder {
        let dport = self.port();
        let sport = self.rng.u16();
        let payload_len = match self.rng.below(4) {
            0 => 0,
            1 => self.rng.range(0, 16.min(payload_max)),
            _ => self.rng.range(0, payload_max),
        };
        let body = self.rng.bytes(payload_len);
        let mut b = if self.rng.one_in(2) {
            FrameBuilder::ip(IPPROTO_UDP, udp(sport, dport, &body))
        } else {
            FrameBuilder::ip(IPPROTO_TCP, tcp(sport, dport, &body))
        };
        if self.rng.one_in(3) {
            b.options = self.options();
        }
        b.flags_frag = match self.rng.below(4) {
            0 => IP_DF,
            1 => IP_MF, // a first fragment: still demultiplexed
            2 => IP_RESERVED | IP_DF,
            _ => 0,
        };
        if self.rng.one_in(4) {
            // Ethernet padding or other bytes after the datagram.
            let len = self.rng.range(1, 46);
            b.trailer = if self.rng.one_in(2) {
                vec![0; len]
            } else {
                self.rng.bytes(len)
            };
        }
        b
    }

    /// A well-formed frame no longer than the generator's maximum.
    fn valid(&mut self, payload_max: usize) -> Vec<u8> {
        let mut frame = self.valid_builder(payload_max).build();
        frame.truncate(self.max_len);
        frame
    }

    /// A random frame length from `lo`, mostly short.
    fn len_from(&mut self, lo: usize) -> usize {
        if self.rng.one_in(8) {
            self.rng.range(lo, self.max_len)
        } else {
            self.rng.range(lo, lo + 80)
        }
    }

    /// A frame of `kind`, at least [`TEST_RUN_MIN`] bytes and at most the maximum.
    #[expect(
        clippy::too_many_lines,
        reason = "one short arm per kind, best read together"
    )]
    pub fn frame_of(&mut self, kind: Kind) -> Vec<u8> {
        let frame = match kind {
            Kind::Valid => self.valid(200),
            Kind::Truncated => {
                let full = self.valid(64);
                let cut = self.rng.range(TEST_RUN_MIN, full.len());
                full[..cut].to_vec()
            }
            Kind::Random => {
                let len = self.len_from(TEST_RUN_MIN);
                self.rng.bytes(len)
            }
            Kind::RandomIpv4 => {
                let len = self.len_from(TEST_RUN_MIN);
                let mut frame = self.rng.bytes(len);
                frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
                if let Some(b) = frame.get_mut(ETH_LEN) {
                    *b = if self.rng.one_in(2) {
                        0x45
                    } else {
                        0x40 | (*b & 0x0f)
                    };
                }
                if let Some(p) = frame.get_mut(ETH_LEN + 9) {
                    *p = self.rng.pick(&[IPPROTO_TCP, IPPROTO_UDP, *p]);
                }
                frame
            }
            Kind::IhlVariant => {
                let mut b = self.valid_builder(32);
                if self.rng.one_in(2) {
                    b.ihl = Some(self.rng.byte() & 0x0f);
                }
                b.total_len = match self.rng.below(5) {
                    0 => None,
                    1 => Some(self.rng.u16()),
                    2 => Some(u16::from(b.ihl_nibble()) * 4 + u16::from(self.rng.byte() % 30)),
                    3 => Some(u16::from(self.rng.byte() % 64)),
                    _ => {
                        let real = 20 + b.options.len() + b.l4.len();
                        let real = u16::try_from(real).unwrap_or(u16::MAX);
                        Some(real.wrapping_add(self.rng.u16() % 9).wrapping_sub(4))
                    }
                };
                if self.rng.one_in(4) {
                    b.version = self.rng.byte() & 0x0f;
                }
                b.build()
            }
            Kind::Fragment => {
                let mut b = self.valid_builder(32);
                let offset = match self.rng.below(4) {
                    0 => 0,
                    1 => 1,
                    2 => 0x1fff,
                    _ => self.rng.u16() & 0x1fff,
                };
                let flags = self
                    .rng
                    .pick(&[0, IP_MF, IP_DF, IP_MF | IP_DF, IP_RESERVED]);
                b.flags_frag = flags | offset;
                if self.rng.one_in(4) {
                    b.protocol = self.rng.byte();
                }
                b.build()
            }
            Kind::OddEthertype => {
                let mut frame = self.valid(32);
                let ethertype = if self.rng.one_in(4) {
                    self.rng.u16()
                } else {
                    self.rng.pick(&ODD_ETHERTYPES)
                };
                frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
                frame
            }
            Kind::Runt => {
                let full = self.valid(0);
                let cut = self.rng.range(TEST_RUN_MIN, ETH_LEN + 19);
                let mut frame = full[..cut].to_vec();
                if self.rng.one_in(4) {
                    frame[12..14].copy_from_slice(&self.rng.pick(&ODD_ETHERTYPES).to_be_bytes());
                }
                frame
            }
            Kind::Jumbo => {
                let max = self.max_len.saturating_sub(ETH_LEN + 60 + 20);
                let mut b = self.valid_builder(max);
                let target = self.rng.range(1000, max.max(1000));
                let body_len = b.l4.len();
                if body_len < target {
                    let extra = self.rng.bytes(target - body_len);
                    b.l4.extend_from_slice(&extra);
                    if b.protocol == IPPROTO_UDP {
                        // Keep the UDP length consistent (it is not checked anyway).
                        let len = u16::try_from(b.l4.len()).unwrap_or(u16::MAX);
                        b.l4[4..6].copy_from_slice(&len.to_be_bytes());
                    }
                }
                let mut frame = b.build();
                frame.truncate(self.max_len);
                frame
            }
            Kind::Protocol => {
                let mut b = self.valid_builder(32);
                b.protocol = if self.rng.one_in(3) {
                    self.rng
                        .pick(&[IPPROTO_ICMP, 0, 2, 41, 47, 50, 58, 132, 136, 255])
                } else {
                    self.rng.byte()
                };
                if self.rng.one_in(4) {
                    b.flags_frag = self.rng.u16();
                }
                if self.rng.one_in(4) {
                    b.total_len = Some(self.rng.u16() % 80);
                }
                b.build()
            }
            Kind::Ipv6 | Kind::Tagged | Kind::MultiBuffer => self.frame_v6_kind(kind),
            Kind::Mutated => {
                let mut frame = if self.rng.one_in(2) {
                    self.valid(48)
                } else {
                    let mut b = self.ipv6_builder(24);
                    if self.rng.one_in(3) {
                        b.tags = self.tags();
                    }
                    let mut frame = b.build();
                    frame.truncate(self.max_len);
                    frame
                };
                let n = self.rng.range(1, 4);
                for _ in 0..n {
                    // Mostly within the headers, where the parser looks.
                    let span = frame.len().min(ETH_LEN + 60 + 24);
                    let i = self.rng.index(span);
                    if self.rng.one_in(2) {
                        frame[i] ^= 1 << self.rng.below(8);
                    } else {
                        frame[i] = self.rng.byte();
                    }
                }
                frame
            }
        };
        debug_assert!(
            (TEST_RUN_MIN..=self.max_len).contains(&frame.len())
                || kind == Kind::MultiBuffer && frame.len() <= MULTI_BUFFER_MAX
        );
        frame
    }

    /// A random extension header.
    fn ext_header(&mut self) -> ExtHeader {
        match self.rng.below(6) {
            0 => ExtHeader::options(IPPROTO_HOPOPTS, self.small_len()),
            1 => ExtHeader::options(IPPROTO_ROUTING, self.small_len()),
            2 => ExtHeader::options(IPPROTO_DSTOPTS, self.small_len()),
            3 => ExtHeader::ah(self.small_len()),
            4 => ExtHeader::fragment(0, self.rng.one_in(2)),
            _ => {
                let offset = if self.rng.one_in(2) {
                    self.rng.pick(&[1, 2, 0x1fff])
                } else {
                    self.rng.u16() & 0x1fff
                };
                ExtHeader::fragment(offset, self.rng.one_in(2))
            }
        }
    }

    /// An extension header length byte: mostly small, sometimes large.
    fn small_len(&mut self) -> u8 {
        if self.rng.one_in(8) {
            self.rng.byte()
        } else {
            u8::try_from(self.rng.below(3)).unwrap_or(0)
        }
    }

    /// A random IPv6 frame (see [`Kind::Ipv6`]) with `payload_max` bytes of payload at most.
    pub fn ipv6_builder(&mut self, payload_max: usize) -> Ipv6Builder {
        let v4 = self.valid_builder(payload_max);
        let mut b = Ipv6Builder::ip(v4.protocol, v4.l4);
        let n = match self.rng.below(4) {
            0 => 0,
            1 => self.rng.range(1, 3),
            2 => self.rng.range(4, 7),
            _ => self.rng.range(5, 9),
        };
        for _ in 0..n {
            let h = self.ext_header();
            b.ext.push(h);
        }
        if self.rng.one_in(6) {
            b.protocol = self.rng.pick(&IPV6_NEXT);
        }
        if b.ext.len() >= 2 && self.rng.one_in(8) {
            // Out of order: a hop-by-hop header later in the chain is malformed.
            let (i, j) = (self.rng.index(b.ext.len()), self.rng.index(b.ext.len()));
            b.ext.swap(i, j);
        }
        if self.rng.one_in(10) {
            let real = u16::try_from(b.l4_offset() - b.l3() - 40 + b.l4.len()).unwrap_or(0);
            b.payload_len = Some(match self.rng.below(3) {
                0 => self.rng.u16(),
                1 => real.saturating_sub(u16::try_from(self.rng.below(24)).unwrap_or(0)),
                _ => real + u16::try_from(self.rng.below(4)).unwrap_or(0),
            });
        }
        if self.rng.one_in(20) {
            b.version = self.rng.byte() & 0x0f;
        }
        if self.rng.one_in(4) {
            let len = self.rng.range(1, 30);
            b.trailer = self.rng.bytes(len);
        }
        b
    }

    /// 1 to 3 random VLAN tags; one in eight has a tag whose TPID is not one (a value
    /// sharing a byte with a TPID, or zero): the frame is then not IP at that tag.
    fn tags(&mut self) -> Vec<(u16, u16)> {
        let n = match self.rng.below(8) {
            0 => 3,
            1..=3 => 2,
            _ => 1,
        };
        let mut tags: Vec<(u16, u16)> = (0..n)
            .map(|_| {
                let tpid = self.rng.pick(&[ETH_P_8021Q, ETH_P_8021AD]);
                (tpid, self.rng.u16())
            })
            .collect();
        if self.rng.one_in(8) {
            let at = self.rng.index(n);
            tags[at].0 = self.rng.pick(&NEAR_TPIDS);
        }
        tags
    }

    /// A frame of one of the kinds added with IPv6 and VLAN support.
    fn frame_v6_kind(&mut self, kind: Kind) -> Vec<u8> {
        match kind {
            Kind::Ipv6 => {
                let b = self.ipv6_builder(64);
                let mut frame = b.build();
                if self.rng.one_in(4) {
                    // Cut at or near a header boundary.
                    let cut = if self.rng.one_in(2) {
                        b.l4_offset() + self.rng.range(0, 4)
                    } else {
                        self.rng.range(TEST_RUN_MIN, frame.len())
                    };
                    frame.truncate(cut.clamp(TEST_RUN_MIN, frame.len()));
                }
                frame.truncate(self.max_len);
                frame
            }
            Kind::Tagged => {
                let tags = self.tags();
                let tagged_len = ETH_LEN + 4 * tags.len();
                let mut frame = if self.rng.one_in(2) {
                    let mut b = self.ipv6_builder(32);
                    b.tags.clone_from(&tags);
                    b.build()
                } else {
                    let mut frame = self.valid(32);
                    for (tpid, tci) in tags.iter().rev() {
                        frame = tagged(&frame, *tpid, *tci);
                    }
                    frame
                };
                if self.rng.one_in(5) {
                    let cut = self.rng.range(TEST_RUN_MIN, tagged_len + 24);
                    frame.truncate(cut.max(TEST_RUN_MIN));
                }
                frame.truncate(self.max_len);
                frame
            }
            _ => {
                let len = self.rng.range(self.max_len + 1, MULTI_BUFFER_MAX);
                let mut frame = if self.rng.one_in(3) {
                    let mut b = self.valid_builder(0);
                    let target = len - (ETH_LEN + 20 + b.options.len());
                    let extra = target.saturating_sub(b.l4.len());
                    b.l4.extend(self.rng.bytes(extra));
                    b.build()
                } else {
                    let mut b = self.ipv6_builder(0);
                    if self.rng.one_in(2) {
                        // Extension headers reaching past the first buffer.
                        let mut at = b.l4_offset();
                        while at < self.max_len - 200 && b.ext.len() < 8 {
                            let h = ExtHeader::options(IPPROTO_DSTOPTS, 255);
                            at += h.bytes.len();
                            b.ext.push(h);
                        }
                        b.ext.truncate(self.rng.range(1, b.ext.len() + 1));
                    }
                    let target = len.saturating_sub(b.l4_offset());
                    let extra = target.saturating_sub(b.l4.len());
                    b.l4.extend(self.rng.bytes(extra));
                    b.build()
                };
                frame.truncate(len);
                frame
            }
        }
    }

    /// A frame of a random kind, returned with its kind.
    pub fn frame(&mut self) -> (Kind, Vec<u8>) {
        let kind = self.rng.pick(&KINDS);
        (kind, self.frame_of(kind))
    }
}

#[cfg(test)]
mod tests {
    use port_demux_common::{PROTO_TCP, PROTO_UDP, model};

    use super::*;

    #[test]
    fn builder_makes_what_the_model_parses() {
        let frame = FrameBuilder::udp(7777, 10).build();
        assert_eq!(frame.len(), 14 + 20 + 8 + 10);
        assert_eq!(model::parse(&frame), Ok((PROTO_UDP, 7777)));
        let frame = FrameBuilder::tcp(80, 0).options(nop_options(40)).build();
        assert_eq!(frame.len(), 14 + 60 + 20);
        assert_eq!(frame[ETH_LEN], 0x4f);
        assert_eq!(model::parse(&frame), Ok((PROTO_TCP, 80)));
        // A correct checksum sums to zero over the header.
        assert_eq!(ip_checksum(&frame[ETH_LEN..ETH_LEN + 60]), 0);
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = format!("# comment\n{}\n", to_hex(&bytes));
        assert_eq!(from_hex(&text).unwrap(), bytes);
        assert!(from_hex("abc").is_err());
    }

    #[test]
    fn generator_is_deterministic_and_in_bounds() {
        let mut a = Generator::new(7, vec![1, 2, 3]);
        let mut b = Generator::new(7, vec![1, 2, 3]);
        for _ in 0..10_000 {
            let (kind, frame) = a.frame();
            assert_eq!(b.frame(), (kind, frame.clone()));
            let max = if kind == Kind::MultiBuffer {
                MULTI_BUFFER_MAX
            } else {
                TEST_RUN_MAX_LINEAR
            };
            assert!((TEST_RUN_MIN..=max).contains(&frame.len()), "{kind:?}");
        }
    }
}
