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
pub const LAYOUT_VERSION: u32 = 2;

/// Index of TCP in the per-protocol halves of [`BINDINGS_LEN`]-sized maps.
pub const PROTO_TCP: u32 = 0;
/// Index of UDP in the per-protocol halves of [`BINDINGS_LEN`]-sized maps.
pub const PROTO_UDP: u32 = 1;
/// Number of protocols that are demultiplexed (TCP, UDP).
pub const NUM_PROTOS: u32 = 2;
/// Number of ports per protocol.
pub const PORTS_PER_PROTO: u32 = 1 << 16;
/// Entries of the `BINDINGS` and `PORT_STATS` arrays: one per (protocol, port).
pub const BINDINGS_LEN: u32 = NUM_PROTOS * PORTS_PER_PROTO;
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
}

/// Global outcome of a frame: every frame is counted under exactly one.
pub mod outcome {
    /// IPv4 TCP or UDP with a readable destination port: looked up and counted per port.
    pub const DEMUXED: usize = 0;
    /// Not an IPv4 frame (ARP, IPv6, VLAN-tagged, ...).
    pub const NOT_IPV4: usize = 1;
    /// IPv4, but neither TCP nor UDP.
    pub const NOT_TCP_UDP: usize = 2;
    /// A non-first IPv4 fragment of TCP or UDP: it carries no ports.
    pub const FRAGMENT: usize = 3;
    /// Runt, truncated header, IHL < 5, IPv4 version != 4, or lengths past the frame.
    pub const MALFORMED: usize = 4;
    /// Number of outcomes.
    pub const COUNT: usize = 5;
    /// Names, as printed by the CLI and used in JSON.
    pub const NAMES: [&str; COUNT] = [
        "demuxed",
        "not_ipv4",
        "not_tcp_udp",
        "fragment",
        "malformed",
    ];
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

/// Value of the per-CPU `PORT_STATS` array, one per (protocol, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortCounters {
    /// Frames seen to this (protocol, destination port).
    pub packets: u64,
    /// Their bytes, as XDP sees them (Ethernet header included).
    pub bytes: u64,
}
const _: () = assert!(size_of::<PortCounters>() == 16);

/// Value of the single-entry per-CPU `GLOBALS` array.
///
/// A demultiplexed frame is counted once, under its port in `PORT_STATS`, and nowhere else
/// unless it is redirected: the per-port counters are the whole account of those frames, and
/// the fast path touches one per-CPU value. Every other frame is counted here, once, under
/// the [`outcome`] that stopped it (`frames[outcome]`; those frames are always passed), and
/// each redirect of a demultiplexed frame once more, by result ([`Self::REDIRECTED`],
/// [`Self::REDIRECT_FALLBACK`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GlobalCounters {
    /// Frames per cell; `frames[outcome::DEMUXED]` and the last cell stay 0.
    pub frames: [u64; GlobalCounters::LEN],
}
const _: () = assert!(size_of::<GlobalCounters>() == 64);

impl GlobalCounters {
    /// Cells: one per outcome, the two redirect results, one spare (a cache line in all).
    pub const LEN: usize = 8;
    /// Cell of demultiplexed frames sent on through the `REDIRECT` devmap.
    pub const REDIRECTED: usize = outcome::COUNT;
    /// Cell of demultiplexed frames bound to a redirect whose devmap slot was empty (the
    /// target is gone): they are passed instead.
    pub const REDIRECT_FALLBACK: usize = outcome::COUNT + 1;

    /// The cell a frame with this `outcome` and action [`taken`] is counted in, if any:
    /// demultiplexed frames that are passed or dropped are counted per port only.
    #[inline]
    #[must_use]
    pub const fn cell(outcome: usize, taken: usize) -> Option<usize> {
        match (outcome, taken) {
            (outcome::DEMUXED, taken::REDIRECT) => Some(Self::REDIRECTED),
            (outcome::DEMUXED, taken::REDIRECT_FALLBACK) => Some(Self::REDIRECT_FALLBACK),
            (outcome::DEMUXED, _) => None,
            (outcome, _) => Some(outcome),
        }
    }

    /// Frames that were not demultiplexed, per [`outcome`] (`outcome::DEMUXED`'s cell is never
    /// counted in: those frames are the sum of the per-port counters).
    #[must_use]
    pub fn not_demuxed(&self) -> [u64; outcome::COUNT] {
        core::array::from_fn(|o| self.frames[o])
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

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is `bytemuck::Pod` (checked by the derive): `repr(C)`, no padding, any
    // bit pattern valid.
    unsafe impl aya::Pod for super::Binding {}
    unsafe impl aya::Pod for super::PortCounters {}
    unsafe impl aya::Pod for super::GlobalCounters {}
    unsafe impl aya::Pod for super::Meta {}
}
