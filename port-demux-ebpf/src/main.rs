//! The port-demux XDP program: parse Ethernet (up to two VLAN tags), IPv4 (with options) or
//! IPv6 (with extension headers), TCP and UDP, look the (protocol, destination port) up in
//! `BINDINGS` and pass, drop or redirect; count every frame.
//!
//! Semantics: `port_demux_common::model::classify`, which the tests hold this program to.
//!
//! Shape, for speed: the common frame (untagged IPv4 TCP/UDP, any IHL) takes a fast parse and
//! costs one per-CPU counter update, its port's; other frames (tagged, IPv6, everything not
//! demultiplexed) are classified step by step; IPv6 frames also count in `GLOBALS`, others by
//! outcome. Multi-buffer frames (`frags`: jumbo MTUs in native mode) are read in their first
//! buffer only. All of it is one function: a bpf-to-bpf call costs more here (a return through
//! the kernel's return thunk, 5-7 ns on this project's AMD machines) than the registers it
//! would spare the fast path. The program loaded with `--debug` is a second entry point,
//! `port_demux_debug`; the default one holds no logging code at all.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "BPF: the hot path stays one function, without bpf-to-bpf calls"
)]

mod parse;

use aya_ebpf::{
    Global,
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::XdpContext,
};
use port_demux_common::{
    BINDINGS_LEN, Binding, GlobalCounters, Globals, Meta, PortCounters, REDIRECT_SLOTS, action,
};

/// Bindings, indexed by `port_index(proto, port)`.
#[map]
static BINDINGS: Array<Binding> = Array::with_max_entries(BINDINGS_LEN, 0);

/// Packets and bytes per (protocol, destination port), per CPU.
#[map]
static PORT_STATS: PerCpuArray<PortCounters> = PerCpuArray::with_max_entries(BINDINGS_LEN, 0);

/// Layout v2's global counters: never written here, pinned so that a v2 program's counts stay
/// in the totals after `load --upgrade`.
#[map]
static GLOBALS: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);

/// Frames not demultiplexed, by outcome, redirects by result, and demultiplexed IPv6 frames,
/// per CPU (`Globals`' cells). The one map every count here goes to: the verifier inlines a
/// lookup only when the map is the same on every path to it.
#[map]
static GLOBALS2: PerCpuArray<Globals> = PerCpuArray::with_max_entries(1, 0);

/// Redirect targets; a binding's `slot` indexes it.
#[map]
static REDIRECT: DevMap = DevMap::with_max_entries(REDIRECT_SLOTS, 0);

/// What the loader recorded about this instance; never read here.
#[map]
static META: Array<Meta> = Array::with_max_entries(1, 0);

/// Action for unbound ports, set at load time. It lives in `.rodata`, so the verifier knows it
/// and prunes the branch not taken.
#[unsafe(no_mangle)]
static DEFAULT_ACTION: Global<u32> = Global::new(action::PASS);

/// The data path.
#[xdp(frags)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro fixes the signature"
)]
pub fn port_demux(ctx: XdpContext) -> u32 {
    demux::<false>(&ctx)
}

/// The data path with a debug log record per demultiplexed frame (`load --debug`).
#[xdp(frags)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro fixes the signature"
)]
pub fn port_demux_debug(ctx: XdpContext) -> u32 {
    demux::<true>(&ctx)
}

#[inline(always)]
fn demux<const LOG: bool>(ctx: &XdpContext) -> u32 {
    if let Some(index) = parse::fast(ctx) {
        // The frame length from the pointers the parse already loaded, before the map
        // lookups: after them, the context would have to be kept and read again.
        return apply::<LOG>(ctx, index, (ctx.data_end() - ctx.data()) as u64);
    }
    match parse::full(ctx) {
        Ok(found) => {
            if found.ipv6 {
                count(Globals::DEMUXED_IPV6);
            }
            apply::<LOG>(ctx, found.index, found.len)
        }
        Err(outcome) => {
            count(Globals::outcome_cell(outcome));
            XDP_PASS
        }
    }
}

/// Counts a demultiplexed frame of `len` bytes under its port and applies its binding.
#[inline(always)]
fn apply<const LOG: bool>(ctx: &XdpContext, index: u32, len: u64) -> u32 {
    if let Some(counters) = PORT_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU map value: only this CPU writes it and the program is not
        // reentrant.
        let counters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += len;
    }
    let (mut act, slot) = match BINDINGS.get(index) {
        Some(binding) => (binding.action, binding.slot),
        None => (action::UNBOUND, 0),
    };
    if act == action::UNBOUND {
        act = DEFAULT_ACTION.load();
    }
    if LOG {
        aya_log_ebpf::debug!(
            ctx,
            "{} port {}: action {} (1 pass, 2 drop, 3 redirect)",
            if index >> 16 == 0 { "tcp" } else { "udp" },
            index & 0xffff,
            act
        );
    }
    match act {
        action::DROP => XDP_DROP,
        action::REDIRECT => redirect(slot),
        // PASS, and any value this program does not know.
        _ => XDP_PASS,
    }
}

/// Redirects through devmap `slot`; passes the frame when the slot is empty.
#[inline(always)]
fn redirect(slot: u32) -> u32 {
    if let Ok(ret) = REDIRECT.redirect(slot, u64::from(XDP_PASS)) {
        count(Globals::REDIRECTED);
        ret
    } else {
        count(Globals::REDIRECT_FALLBACK);
        XDP_PASS
    }
}

/// Adds one to a `GLOBALS2` cell.
#[inline(always)]
fn count(cell: usize) {
    if let Some(globals) = GLOBALS2.get_ptr_mut(0) {
        // SAFETY: as for PORT_STATS.
        if let Some(n) = unsafe { &mut *globals }.frames.get_mut(cell) {
            *n += 1;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
