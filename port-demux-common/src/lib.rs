//! Types shared by the port-demux XDP program (`port-demux-ebpf`) and its loader (`port-demux`).
//!
//! Everything here crosses the kernel boundary as raw bytes in BPF maps, so every type is
//! `#[repr(C)]`, has explicit padding, and holds no `bool`, `enum` or `Option`.
//!
//! The module [`model`] states the data path's semantics as a pure function; the XDP program
//! must agree with it frame for frame (the differential tests check that).
#![no_std]

use core::mem::size_of;

pub mod model;

/// Version of the pinned layout (map names, key and value layouts). A loader refuses pins that
/// carry another version instead of misreading them.
pub const LAYOUT_VERSION: u32 = 8;
/// The layout `load --upgrade` migrates from: v2 (IPv4 only) had every map v3 has but
/// `GLOBALS2`, so the upgrade creates that map and keeps the others (the devmap's content
/// moves to a new devmap: see `port-demux`'s upgrade).
pub const LAYOUT_VERSION_V2: u32 = 2;
/// The layout before address-scoped bindings: every map of v4 and v5 but the scope maps
/// (`SCOPES`, `SCOPE_V4`, `SCOPE_V6`, `SCOPED`, `SCOPED_STATS`), which `load --upgrade`
/// creates empty.
pub const LAYOUT_VERSION_V3: u32 = 3;
/// The layout whose `SCOPE_V4` and `SCOPE_V6` were arrays of [`SCOPE_RECORDS`] records; v5's
/// are one-entry arrays holding the same bytes as one value, which `load --upgrade` copies
/// into new maps (every other map is kept).
pub const LAYOUT_VERSION_V4: u32 = 4;
/// The layout whose per-port counters were `PORT_STATS`, one per-CPU entry per (protocol,
/// port); v6 counts into `PORT_STATS2`, 16 ports an entry. `load --upgrade` from v2-v5 keeps
/// the old `PORT_STATS` pinned, no longer written, and readers add it in (the counts made
/// before the upgrade stay, and none made while the programs swap is lost).
pub const LAYOUT_VERSION_V5: u32 = 5;
/// The layout whose per-port counters were `PORT_STATS2`, 16 ports a 256-byte per-CPU entry,
/// and whose demultiplexed IPv6 frames were counted in a `GLOBALS2` cell, a second per-CPU
/// lookup and update for every IPv6 frame (0.6-1.1 ns on this project's bench); v7 counts
/// them in the port's own `PORT_STATS3` entry ([`PortCounterGroup::ipv6`]). `load --upgrade`
/// from v6 keeps `PORT_STATS2` as v6 kept v5's `PORT_STATS`: pinned, frozen, added in by
/// readers (and `GLOBALS2`'s IPv6 cell, which keeps its counts).
pub const LAYOUT_VERSION_V6: u32 = 6;
/// The layout whose `BINDINGS` was an array of [`BINDINGS_LEN`] entries, which the program
/// looked up (a key on the stack, a bounds test and a null test on every demultiplexed
/// frame's way); v8's is a one-entry array holding the same bytes as one value, which the
/// program addresses directly. `load --upgrade` copies the bindings into the new map (every
/// other map is kept); layouts v2-v7 all had the old `BINDINGS`.
pub const LAYOUT_VERSION_V7: u32 = 7;

/// Index of TCP in the per-protocol halves of [`BINDINGS_LEN`]-sized maps.
pub const PROTO_TCP: u32 = 0;
/// Index of UDP in the per-protocol halves of [`BINDINGS_LEN`]-sized maps.
pub const PROTO_UDP: u32 = 1;
/// Number of protocols that are demultiplexed (TCP, UDP).
pub const NUM_PROTOS: u32 = 2;
/// Number of ports per protocol.
pub const PORTS_PER_PROTO: u32 = 1 << 16;
/// Entries of the `BINDINGS` array (and of layout v5's `PORT_STATS`): one per (protocol, port).
pub const BINDINGS_LEN: u32 = NUM_PROTOS * PORTS_PER_PROTO;
/// Ports per `PORT_STATS3` entry: the kernel allocates a per-CPU array's entries one by one
/// (1.2-1.8 us each here), so layout v5's 131,072 entries of one port took 150-240 ms of
/// every `load`; 8,192 entries of 16 ports take about 7 ms.
pub const PORT_GROUP: u32 = 16;
/// Entries of the per-CPU `PORT_STATS3` array.
pub const PORT_GROUPS: u32 = BINDINGS_LEN / PORT_GROUP;

/// How a per-CPU counter array holds the [`BINDINGS_LEN`] ports' counters: `groups` entries of
/// `group` [`PortCounters`] each, index `i` at entry `i % groups`, element `i / groups`, and
/// `tail` bytes after them in each value. This layout's `PORT_STATS3` is [`PORT_STATS_V7`];
/// the frozen maps an upgrade keeps are v5's `PORT_STATS` ([`PORT_STATS_V5`], one port an
/// entry) and v6's `PORT_STATS2` ([`PORT_STATS_V6`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grouping {
    /// Entries.
    pub groups: u32,
    /// Ports an entry.
    pub group: u32,
    /// Bytes after the ports' counters: v7's [`PortCounterGroup::ipv6`].
    pub tail: u32,
}

impl Grouping {
    /// Entry and element of (protocol, port) `index`.
    #[inline]
    #[must_use]
    pub const fn at(self, index: u32) -> (u32, usize) {
        (
            index % self.groups,
            (index / self.groups % self.group) as usize,
        )
    }

    /// Where `index`'s counters lie in the map's counters read entry after entry (entry `e`'s
    /// element `k` at `e * group + k`), as a reader that sums over CPUs holds them.
    #[inline]
    #[must_use]
    pub const fn offset(self, index: u32) -> usize {
        let (entry, element) = self.at(index);
        entry as usize * self.group as usize + element
    }

    /// Bytes of one CPU's value.
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "16")]
    pub const fn value_size(self) -> u32 {
        self.group * size_of::<PortCounters>() as u32 + self.tail
    }
}

/// Layout v7's `PORT_STATS3`.
#[expect(clippy::cast_possible_truncation, reason = "8")]
pub const PORT_STATS_V7: Grouping = Grouping {
    groups: PORT_GROUPS,
    group: PORT_GROUP,
    tail: size_of::<u64>() as u32,
};
/// Layout v6's `PORT_STATS2`: v7's without the IPv6 count.
pub const PORT_STATS_V6: Grouping = Grouping {
    groups: PORT_GROUPS,
    group: PORT_GROUP,
    tail: 0,
};
/// Layout v2-v5's `PORT_STATS`.
pub const PORT_STATS_V5: Grouping = Grouping {
    groups: BINDINGS_LEN,
    group: 1,
    tail: 0,
};

/// Where the counters of (protocol, port) `index` lie in `PORT_STATS3`: entry
/// `index % PORT_GROUPS`, element `index / PORT_GROUPS` of its [`PortCounterGroup`]. The
/// entry is the port's low 13 bits, so the data path takes the lookup key from the port alone
/// and the element from the index after the lookup (with the element from the port's low bits,
/// the compiler kept the port in a fifth register across the lookup call and spilled one).
#[inline]
#[must_use]
pub const fn port_counter_at(index: u32) -> (u32, usize) {
    PORT_STATS_V7.at(index)
}
/// Entries of the `REDIRECT` devmap: distinct redirect targets per interface.
pub const REDIRECT_SLOTS: u32 = 64;

/// The array index of a (protocol, port) pair; `proto` is [`PROTO_TCP`] or [`PROTO_UDP`].
#[inline]
#[must_use]
pub const fn port_index(proto: u32, port: u16) -> u32 {
    (proto << 16) | port as u32
}

/// What a binding does with a frame. Stored as `u32` in [`Binding::action`].
pub mod action {
    /// No binding: the interface's default action applies.
    pub const UNBOUND: u32 = 0;
    /// Hand the frame to the kernel stack (`XDP_PASS`).
    pub const PASS: u32 = 1;
    /// Drop the frame (`XDP_DROP`).
    pub const DROP: u32 = 2;
    /// Redirect the frame through the `REDIRECT` devmap slot in [`super::Binding::slot`].
    pub const REDIRECT: u32 = 3;
    /// Flag in [`super::Binding::action`]: the port has address-scoped bindings, so the data
    /// path searches its intervals (`SCOPES`) before it applies the rest of the value (the
    /// binding without a prefix, or [`UNBOUND`]). A bit of the second byte: setting or
    /// clearing it changes one byte of the value, which no copy can tear.
    pub const SCOPED: u32 = 0x100;
    /// The bits of [`super::Binding::action`] that hold the action.
    pub const MASK: u32 = 0xff;
}

/// Global outcome of a frame: every frame is counted under exactly one.
pub mod outcome {
    /// IPv4 or IPv6 TCP or UDP with a readable destination port: looked up and counted per
    /// port.
    pub const DEMUXED: usize = 0;
    /// Neither IPv4 nor IPv6 (ARP, LLDP, MPLS, ...), after up to two VLAN tags. Named
    /// `not_ipv4` in layout v2 and its JSON; the old key is kept one release (see
    /// [`DEPRECATED_NOT_IPV4`]).
    pub const NOT_IP: usize = 1;
    /// IPv4 or IPv6, but neither TCP nor UDP (ICMP, `ICMPv6`, ESP, no next header, ...).
    pub const NOT_TCP_UDP: usize = 2;
    /// A non-first fragment (IPv4 of TCP or UDP; IPv6 of anything): it carries no ports.
    pub const FRAGMENT: usize = 3;
    /// Runt, truncated header, wrong IP version, lengths inconsistent or past the frame, a
    /// hop-by-hop header not first.
    pub const MALFORMED: usize = 4;
    /// More than two VLAN tags before the `EtherType`.
    pub const VLAN_TOO_DEEP: usize = 5;
    /// More IPv6 extension headers than the data path walks ([`crate::model::MAX_EXT_HEADERS`]).
    pub const EXT_HEADERS_TOO_LONG: usize = 6;
    /// A multi-buffer (jumbo) frame whose headers, up to the destination port, do not fit in
    /// its first buffer: the data path reads only that buffer.
    pub const HEADERS_PAST_FIRST_BUFFER: usize = 7;
    /// Number of outcomes.
    pub const COUNT: usize = 8;
    /// Names, as printed by the CLI and used in JSON.
    pub const NAMES: [&str; COUNT] = [
        "demuxed",
        "not_ip",
        "not_tcp_udp",
        "fragment",
        "malformed",
        "vlan_too_deep",
        "ext_headers_too_long",
        "headers_past_first_buffer",
    ];
    /// The v2 name of [`NOT_IP`], still printed in JSON beside `not_ip` with the same value
    /// for one release.
    pub const DEPRECATED_NOT_IPV4: &str = "not_ipv4";
}

/// The IP version of a demultiplexed frame.
pub mod family {
    /// IPv4.
    pub const IPV4: u8 = 4;
    /// IPv6.
    pub const IPV6: u8 = 6;
}

/// Action taken on a frame: every frame is counted under exactly one.
pub mod taken {
    /// `XDP_PASS`.
    pub const PASS: usize = 0;
    /// `XDP_DROP`.
    pub const DROP: usize = 1;
    /// `XDP_REDIRECT` into the devmap.
    pub const REDIRECT: usize = 2;
    /// A redirect whose devmap slot was empty (target gone): the frame is passed instead.
    pub const REDIRECT_FALLBACK: usize = 3;
    /// Number of taken actions.
    pub const COUNT: usize = 4;
    /// Names, as printed by the CLI and used in JSON.
    pub const NAMES: [&str; COUNT] = ["pass", "drop", "redirect", "redirect_fallback"];
}

/// Maximum length of a binding's owner label, in bytes.
pub const OWNER_LEN: usize = 16;

/// Value of the `BINDINGS` array, one per (protocol, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Binding {
    /// One of [`action`]'s constants.
    pub action: u32,
    /// `REDIRECT` devmap slot for [`action::REDIRECT`], else 0.
    pub slot: u32,
    /// Who bound it: UTF-8, NUL-padded. The data path never reads it.
    pub owner: [u8; OWNER_LEN],
}
const _: () = assert!(size_of::<Binding>() == 24);

/// Counters of one (protocol, port), IPv4 and IPv6 together: an element of
/// [`PortCounterGroup`], and the value of layout v5's per-CPU `PORT_STATS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortCounters {
    /// Frames seen to this (protocol, destination port).
    pub packets: u64,
    /// Their bytes, as XDP sees them (Ethernet header included; the whole frame, all its
    /// buffers, when the IP length says the datagram goes past the first one).
    pub bytes: u64,
}
const _: () = assert!(size_of::<PortCounters>() == 16);

/// Value of the per-CPU `PORT_STATS3` array: the counters of [`PORT_GROUP`] (protocol, port)
/// indices [`PORT_GROUPS`] apart, placed by [`port_counter_at`], and the demultiplexed IPv6
/// frames among them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortCounterGroup {
    /// The ports' counters, element `i` the index `entry + i * PORT_GROUPS`.
    pub ports: [PortCounters; PORT_GROUP as usize],
    /// Demultiplexed IPv6 frames to any of these ports: counted here, beside the port's
    /// counters, the entry the data path already holds, not in a second map. Readers add
    /// every entry's (and layout v6's `GLOBALS2` cell [`Globals::DEMUXED_IPV6`]).
    pub ipv6: u64,
}
const _: () = assert!(size_of::<PortCounterGroup>() == 264);
const _: () = assert!(size_of::<PortCounterGroup>() == PORT_STATS_V7.value_size() as usize);

/// Value of the single-entry per-CPU `GLOBALS` array of layout v2: eight cells, a cache line.
/// A v3 program never writes it; it stays pinned so that the counts a v2 program made before
/// `load --upgrade` stay in the totals ([`Globals::from_maps`] adds it in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GlobalCounters {
    /// Frames per cell, numbered as [`Globals`]' first eight.
    pub frames: [u64; GlobalCounters::LEN],
}
const _: () = assert!(size_of::<GlobalCounters>() == 64);

impl GlobalCounters {
    /// Cells.
    pub const LEN: usize = 8;
}

/// Value of the single-entry per-CPU `GLOBALS2` array (layout v3), and the sum of both maps.
///
/// A demultiplexed frame is counted under its port in `PORT_STATS3`, and nowhere else unless it
/// is IPv6 or redirected: the per-port counters are the whole account of those frames, and
/// the IPv4 fast path touches one per-CPU value. Every other frame is counted once, under the
/// [`outcome`] that stopped it (those frames are always passed). Cells 0-7 mean what they
/// meant in v2's `GLOBALS`: outcomes 1-4, the redirect results (5, 6), and (new) demultiplexed
/// IPv6 frames (7, v2's spare: IPv4 is the rest); cells 8-10 hold the outcomes v3 added, and
/// 11-15 are spare. One map for every cell the program writes: a lookup whose map depended on
/// the outcome would not be inlined by the verifier (a helper call, 10 ns and more).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Globals {
    /// Frames per cell.
    pub frames: [u64; Globals::LEN],
}
const _: () = assert!(size_of::<Globals>() == 128);

impl Globals {
    /// Cells in all.
    pub const LEN: usize = 16;
    /// Cell of demultiplexed frames sent on through the `REDIRECT` devmap.
    pub const REDIRECTED: usize = 5;
    /// Cell of demultiplexed frames bound to a redirect whose devmap slot was empty (the
    /// target is gone): they are passed instead.
    pub const REDIRECT_FALLBACK: usize = 6;
    /// Cell of demultiplexed IPv6 frames (the spare cell of layout v2, never written there).
    /// Written by layout v6 only: v7 counts them in each port's `PORT_STATS3` entry
    /// ([`PortCounterGroup::ipv6`]), and readers add those in here.
    pub const DEMUXED_IPV6: usize = 7;

    /// The cell counting frames that stopped at `outcome` (not [`outcome::DEMUXED`]).
    #[inline]
    #[must_use]
    pub const fn outcome_cell(outcome: usize) -> usize {
        if outcome < outcome::VLAN_TOO_DEEP {
            outcome
        } else {
            outcome + 3
        }
    }

    /// The cells (at most two) one frame is counted in, given its `outcome`, the action
    /// [`taken`] and, for a demultiplexed frame, its [`family`]: demultiplexed IPv4 frames
    /// passed or dropped are counted per port only.
    #[must_use]
    pub fn cells(outcome: usize, taken: usize, family: u8) -> [Option<usize>; 2] {
        if outcome != outcome::DEMUXED {
            return [Some(Self::outcome_cell(outcome)), None];
        }
        [
            (family == family::IPV6).then_some(Self::DEMUXED_IPV6),
            match taken {
                taken::REDIRECT => Some(Self::REDIRECTED),
                taken::REDIRECT_FALLBACK => Some(Self::REDIRECT_FALLBACK),
                _ => None,
            },
        ]
    }

    /// The sum of `GLOBALS` (a v2 program's counts, before an upgrade) and `GLOBALS2`.
    #[must_use]
    pub fn from_maps(globals: &GlobalCounters, globals2: &Self) -> Self {
        let mut all = *globals2;
        for (a, b) in all.frames.iter_mut().zip(globals.frames) {
            *a += b;
        }
        all
    }

    /// Frames that were not demultiplexed, per [`outcome`] (`outcome::DEMUXED`'s entry is 0:
    /// those frames are the sum of the per-port counters).
    #[must_use]
    pub fn not_demuxed(&self) -> [u64; outcome::COUNT] {
        core::array::from_fn(|o| {
            if o == outcome::DEMUXED {
                0
            } else {
                self.frames[Self::outcome_cell(o)]
            }
        })
    }

    /// Adds `other` cell by cell (summing per-CPU values).
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.frames.iter_mut().zip(other.frames) {
            *a += b;
        }
    }
}

/// Value of the single-entry `META` array: what the loader recorded about this instance.
/// The data path never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the loader that created the pins.
    pub layout_version: u32,
    /// Interface index the program is attached to.
    pub ifindex: u32,
    /// Default action for unbound ports ([`action::PASS`] or [`action::DROP`]).
    pub default_action: u32,
    /// Attach mode: 1 native (driver), 2 generic (skb).
    pub mode: u32,
    /// Inode of the network namespace of the interface.
    pub netns_ino: u64,
    /// 1 when debug logging was compiled in at load time.
    pub debug: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// Interface name, NUL-padded.
    pub ifname: [u8; 16],
}
const _: () = assert!(size_of::<Meta>() == 48);

/// `Meta::mode` for native (driver) XDP.
pub const MODE_NATIVE: u32 = 1;
/// `Meta::mode` for generic (skb) XDP.
pub const MODE_SKB: u32 = 2;

/// Interval records per address family (`SCOPE_V4`, `SCOPE_V6`), shared by every scoped
/// port: a port with `n` prefixes of a family uses at most `2n + 1` records of it (the address
/// space cut into intervals, each mapped to its most specific prefix or to none), and a
/// replaced table is written beside the old one before the port switches to it.
pub const SCOPE_RECORDS: u32 = 1 << 16;
/// Address-scoped bindings (`SCOPED`, `SCOPED_STATS`): one per (protocol, port, prefix).
pub const SCOPED_LEN: u32 = 1 << 15;
/// Steps of the data path's binary search: enough for any table of [`SCOPE_RECORDS`].
pub const SEARCH_STEPS: u32 = 17;
const _: () = assert!(1 << SEARCH_STEPS >= SCOPE_RECORDS);

/// Value of the `SCOPES` array, one per (protocol, port): where the port's interval table of
/// each family lies in `SCOPE_V4`/`SCOPE_V6`, as [`PortScope::pack`]ed `start | count << 32`
/// (count 0: no table of that family). Each half is one aligned 8-byte word, which the loader
/// stores atomically (the map is memory-mapped) once the table it points to is complete.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortScope {
    /// IPv4 table.
    pub v4: u64,
    /// IPv6 table.
    pub v6: u64,
}
const _: () = assert!(size_of::<PortScope>() == 16);

impl PortScope {
    /// `start | count << 32`.
    #[inline]
    #[must_use]
    pub const fn pack(start: u32, count: u32) -> u64 {
        start as u64 | (count as u64) << 32
    }

    /// `(start, count)` of a packed word.
    #[inline]
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "the halves of a u64")]
    pub const fn unpack(word: u64) -> (u32, u32) {
        (word as u32, (word >> 32) as u32)
    }
}

/// What an interval maps to, in one `u32` so that the search's last read gives the action:
/// `id << 8 | slot << 2 | action`; action [`action::UNBOUND`] (target 0) when no prefix covers
/// the interval.
#[inline]
#[must_use]
pub const fn target(id: u32, act: u32, slot: u32) -> u32 {
    id << 8 | (slot & 0x3f) << 2 | (act & 3)
}

/// `(id, action, slot)` of a [`target`].
#[inline]
#[must_use]
pub const fn untarget(t: u32) -> (u32, u32, u32) {
    (t >> 8, t & 3, (t >> 2) & 0x3f)
}

/// One interval of a port's IPv4 table: addresses from `start` (host order) up to the next
/// record's start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScopeV4 {
    /// First address, as a number.
    pub start: u32,
    /// [`target`].
    pub target: u32,
}
const _: () = assert!(size_of::<ScopeV4>() == 8);

/// One interval of a port's IPv6 table: the first address as two numbers (`hi`, the first 8
/// bytes, compared first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScopeV6 {
    /// First address, bytes 0..8.
    pub hi: u64,
    /// First address, bytes 8..16.
    pub lo: u64,
    /// [`target`].
    pub target: u32,
    /// Explicit padding, zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<ScopeV6>() == 24);

/// The value of the one-entry `SCOPE_V4` map: every IPv4 interval record (layout v5; v4 had an
/// array of [`SCOPE_RECORDS`] records, the same bytes).
pub type ScopeTableV4 = [ScopeV4; SCOPE_RECORDS as usize];
/// The value of the one-entry `SCOPE_V6` map: every IPv6 interval record.
pub type ScopeTableV6 = [ScopeV6; SCOPE_RECORDS as usize];

/// Value of the `SCOPED` array: one address-scoped binding, as the loader records it (the data
/// path never reads it; it reads the [`target`]s built from these). Free when `action` is
/// [`action::UNBOUND`]. Its counters are `SCOPED_STATS` at the same index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScopedBinding {
    /// `port_index(proto, port)`.
    pub index: u32,
    /// [`action::PASS`], [`action::DROP`] or [`action::REDIRECT`].
    pub action: u32,
    /// `REDIRECT` devmap slot for [`action::REDIRECT`].
    pub slot: u32,
    /// [`family`].
    pub family: u8,
    /// Prefix length.
    pub len: u8,
    /// Explicit padding, zero.
    pub pad: [u8; 2],
    /// The prefix's address, network order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Who bound it, as [`Binding::owner`].
    pub owner: [u8; OWNER_LEN],
}
const _: () = assert!(size_of::<ScopedBinding>() == 48);

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is `bytemuck::Pod` (checked by the derive): `repr(C)`, no padding, any
    // bit pattern valid.
    unsafe impl aya::Pod for super::PortScope {}
    unsafe impl aya::Pod for super::ScopeV4 {}
    unsafe impl aya::Pod for super::ScopeV6 {}
    unsafe impl aya::Pod for super::ScopedBinding {}
    unsafe impl aya::Pod for super::Binding {}
    unsafe impl aya::Pod for super::PortCounters {}
    unsafe impl aya::Pod for super::PortCounterGroup {}
    unsafe impl aya::Pod for super::GlobalCounters {}
    unsafe impl aya::Pod for super::Globals {}
    unsafe impl aya::Pod for super::Meta {}
}
