//! The port-demux XDP program: parse Ethernet, IPv4 (with options), TCP and UDP, look the
//! (protocol, destination port) up in `BINDINGS` and pass, drop or redirect; count every frame.
//!
//! Semantics: `port_demux_common::model::classify`, which the tests hold this program to.
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
    BINDINGS_LEN, Binding, GlobalCounters, Meta, PortCounters, REDIRECT_SLOTS, action, outcome,
    taken,
};

/// Bindings, indexed by `port_index(proto, port)`.
#[map]
static BINDINGS: Array<Binding> = Array::with_max_entries(BINDINGS_LEN, 0);

/// Packets and bytes per (protocol, destination port), per CPU.
#[map]
static PORT_STATS: PerCpuArray<PortCounters> = PerCpuArray::with_max_entries(BINDINGS_LEN, 0);

/// Global outcome and action counters, per CPU.
#[map]
static GLOBALS: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);

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

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] macro fixes the signature"
)]
pub fn port_demux(ctx: XdpContext) -> u32 {
    let (cell, ret) = match parse::dest_port_index(&ctx) {
        Ok(index) => demux(&ctx, index),
        Err(outcome) => (GlobalCounters::cell(outcome, taken::PASS), XDP_PASS),
    };
    // One counter per frame: the (outcome, action taken) cell. Outcome and action totals are
    // its row and column sums, so they add up by construction.
    if let Some(globals) = GLOBALS.get_ptr_mut(0) {
        // SAFETY: a per-CPU map value: only this CPU writes it and the program is not
        // reentrant.
        if let Some(n) = unsafe { &mut *globals }.frames.get_mut(cell) {
            *n += 1;
        }
    }
    ret
}

/// Counts a demultiplexed frame under its port and applies its binding; returns the global
/// counter cell and the XDP action.
#[inline(always)]
fn demux(ctx: &XdpContext, index: u32) -> (usize, u32) {
    if let Some(counters) = PORT_STATS.get_ptr_mut(index) {
        // SAFETY: as for GLOBALS.
        let counters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += (ctx.data_end() - ctx.data()) as u64;
    }
    let (mut act, slot) = match BINDINGS.get(index) {
        Some(binding) => (binding.action, binding.slot),
        None => (action::UNBOUND, 0),
    };
    if act == action::UNBOUND {
        act = DEFAULT_ACTION.load();
    }
    aya_log_ebpf::debug!(
        ctx,
        "{} port {}: action {} (1 pass, 2 drop, 3 redirect)",
        if index >> 16 == 0 { "tcp" } else { "udp" },
        index & 0xffff,
        act
    );
    match act {
        action::DROP => (
            GlobalCounters::cell(outcome::DEMUXED, taken::DROP),
            XDP_DROP,
        ),
        action::REDIRECT => match REDIRECT.redirect(slot, u64::from(XDP_PASS)) {
            Ok(ret) => (GlobalCounters::cell(outcome::DEMUXED, taken::REDIRECT), ret),
            Err(_) => (
                GlobalCounters::cell(outcome::DEMUXED, taken::REDIRECT_FALLBACK),
                XDP_PASS,
            ),
        },
        // PASS, and any value this program does not know.
        _ => (
            GlobalCounters::cell(outcome::DEMUXED, taken::PASS),
            XDP_PASS,
        ),
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
