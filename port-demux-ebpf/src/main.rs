//! The port-demux XDP program: parse Ethernet (up to two VLAN tags), IPv4 (with options) or
//! IPv6 (with extension headers), TCP and UDP, look the (protocol, destination port) up in
//! `BINDINGS` and pass, drop or redirect; count every frame.
//!
//! Semantics: `port_demux_common::model::classify`, which the tests hold this program to.
//!
//! Shape, for speed: the common frames (IPv4 TCP/UDP, any IHL; IPv6 with TCP/UDP right after
//! the fixed header; untagged or behind one or two VLAN tags; untagged IPv6 behind one or two
//! 8-byte extension headers) take a fast parse with constant offsets; a demultiplexed frame
//! costs one per-CPU lookup, its port's counter entry (IPv6 frames also count in that entry),
//! and keeps the frame pointers in registers for a scoped port's search. Frames neither IP nor
//! tagged, and untagged IPv4 of another protocol or a later fragment, are counted from the
//! fast parse. Other frames (other extension header chains, everything not demultiplexed)
//! are classified step by step; those not demultiplexed count by outcome.
//! Multi-buffer frames (`frags`: jumbo MTUs in native mode) are read in their first buffer
//! only. All of it is one function: a bpf-to-bpf call costs more here (a return through the
//! kernel's return thunk, 5-7 ns on this project's AMD machines) than the registers it would
//! spare the fast path. The program loaded with `--debug` is a second entry point,
//! `port_demux_debug`; the default one holds no logging code at all.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
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
use parse::Fast;
use port_demux_common::{
    BINDINGS_LEN, Binding, GlobalCounters, Globals, Meta, OWNER_LEN, PORT_GROUPS, PortCounterGroup,
    PortCounters, PortScope, REDIRECT_SLOTS, SCOPE_RECORDS, SCOPED_LEN, SEARCH_STEPS, ScopeTableV4,
    ScopeTableV6, ScopedBinding, action, port_counter_at, untarget,
};

/// `BPF_F_MMAPABLE`: the loader writes the scope tables through a memory mapping, so that a
/// port's switch to a new table is one atomic 8-byte store, and readers copy `SCOPED` through
/// one instead of a batch lookup (and `BINDINGS`, which the loader creates so).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Bindings, indexed by `port_index(proto, port)`: the one value of a one-entry array map
/// (its own data section, `.bss.bindings`), which the program addresses directly (the
/// kernel's direct map value access, `BPF_PSEUDO_MAP_VALUE`): no lookup, no key on the stack
/// and no null test on a frame's way. The loader creates the map itself (with
/// `BPF_F_MMAPABLE`) and pins it as `BINDINGS`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.bindings")]
static mut BINDINGS: [Binding; BINDINGS_LEN as usize] = [Binding {
    action: 0,
    slot: 0,
    owner: [0; OWNER_LEN],
}; BINDINGS_LEN as usize];

/// Packets and bytes per (protocol, destination port), per CPU, `PORT_GROUP` ports an entry
/// (a per-CPU entry is one kernel allocation: 8,192 of them, not 131,072, at every `load`),
/// and the demultiplexed IPv6 frames to the entry's ports.
#[map]
static PORT_STATS3: PerCpuArray<PortCounterGroup> = PerCpuArray::with_max_entries(PORT_GROUPS, 0);

/// Layout v2's global counters: never written here, pinned so that a v2 program's counts stay
/// in the totals after `load --upgrade`.
#[map]
static GLOBALS: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);

/// Frames not demultiplexed, by outcome, and redirects by result, per CPU (`Globals`' cells;
/// layout v6 counted demultiplexed IPv6 frames here too). The one map every count here goes
/// to: the verifier inlines a lookup only when the map is the same on every path to it.
#[map]
static GLOBALS2: PerCpuArray<Globals> = PerCpuArray::with_max_entries(1, 0);

/// Redirect targets; a binding's `slot` indexes it.
#[map]
static REDIRECT: DevMap = DevMap::with_max_entries(REDIRECT_SLOTS, 0);

/// Per (protocol, port): where its interval tables lie in `SCOPE_V4` and `SCOPE_V6`. Read
/// only for ports whose binding has the `action::SCOPED` flag.
#[map]
static SCOPES: Array<PortScope> = Array::with_max_entries(BINDINGS_LEN, BPF_F_MMAPABLE);

/// IPv4 interval records of every scoped port, each port's sorted by start: one value, the
/// whole table. A search looks it up once and indexes the records with a bounds check: an
/// array of records would take a lookup (a helper call to the compiler, whose argument
/// registers it must spill and reload around) at every step.
#[map]
static SCOPE_V4: Array<ScopeTableV4> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// IPv6 interval records of every scoped port, each port's sorted by start; as `SCOPE_V4`.
#[map]
static SCOPE_V6: Array<ScopeTableV6> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The address-scoped bindings as the loader recorded them; never read here.
#[map]
static SCOPED: Array<ScopedBinding> = Array::with_max_entries(SCOPED_LEN, BPF_F_MMAPABLE);

/// Packets and bytes per address-scoped binding (`SCOPED`'s index), per CPU.
#[map]
static SCOPED_STATS: PerCpuArray<PortCounters> = PerCpuArray::with_max_entries(SCOPED_LEN, 0);

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
    let (start, end) = (ctx.data(), ctx.data_end());
    // The frame length from the pointers the parse already loaded, before the map lookups:
    // after them, the context would have to be kept and read again.
    let found = match parse::fast(ctx) {
        Fast::Ipv4(index) => {
            let at = Ip {
                frame: Frame::Fast(start, end),
                ipv6: false,
            };
            return apply::<LOG>(ctx, index, (end - start) as u64, &at);
        }
        Fast::Ipv6(index) => {
            let at = Ip {
                frame: Frame::Fast(start, end),
                ipv6: true,
            };
            return apply::<LOG>(ctx, index, (end - start) as u64, &at);
        }
        Fast::Counted(outcome) => {
            count(Globals::outcome_cell(outcome));
            return XDP_PASS;
        }
        Fast::Parsed(found) => found,
        Fast::Other => parse::full(ctx),
    };
    match found {
        Ok(found) => {
            let at = Ip {
                frame: Frame::Full(found.l3),
                ipv6: found.ipv6,
            };
            apply::<LOG>(ctx, found.index, found.len, &at)
        }
        Err(outcome) => {
            count(Globals::outcome_cell(outcome));
            XDP_PASS
        }
    }
}

/// Where a demultiplexed frame's IP header is, for a scoped port's search.
struct Ip {
    /// The frame and where its IP header is.
    frame: Frame,
    /// IPv6 (else IPv4).
    ipv6: bool,
}

/// How a scoped port's search finds the IP header.
enum Frame {
    /// The fast parse's `(ctx.data(), ctx.data_end())`, kept in registers from the parse on
    /// (a map lookup does not invalidate packet pointers): no context on the stack for them.
    /// The IP header's offset, which differs with the tags, is found again from the frame
    /// ([`parse::l3_of`]) only for a scoped port, so that no register holds it on the way.
    Fast(usize, usize),
    /// The full parse's frame, with the offset of its IP header: the search reads the
    /// pointers from the context again. There they come out of many parse paths with
    /// different proven lengths, which the verifier would then walk through the search one
    /// by one.
    Full(usize),
}

/// Counts a demultiplexed frame of `len` bytes under its port and applies its binding; a
/// scoped port's frame goes to [`scoped`] first.
#[inline(always)]
fn apply<const LOG: bool>(ctx: &XdpContext, index: u32, len: u64, at: &Ip) -> u32 {
    let (entry, element) = port_counter_at(index);
    if at.ipv6 {
        // The entry is always there (`entry` < `PORT_GROUPS`): only the verifier walks the
        // early return. With it the compiler keeps IPv6's update in line; written as IPv4's
        // below, it moved it out of line (two taken jumps, the length spilled: IPv6 0.2-1.0
        // ns slower, measured). IPv4's early return cost IPv4 up to 0.8 ns (its registers
        // shuffled), so IPv4 keeps the `if let`.
        let Some(group) = PORT_STATS3.get_ptr_mut(entry) else {
            return XDP_PASS;
        };
        count_port(group, element, len);
        // SAFETY: as in `count_port`; a field of the same value. The entry the port's
        // counters are in, already in a register: no second map's lookup (a `GLOBALS2` cell
        // cost IPv6 frames 0.6-1.1 ns, measured).
        unsafe { (*group).ipv6 += 1 };
    } else if let Some(group) = PORT_STATS3.get_ptr_mut(entry) {
        count_port(group, element, len);
    }
    let at_index = bindings_index(index);
    // SAFETY: `at_index` < BINDINGS_LEN: inside the map's one value, plain memory the
    // program only reads. The loader rewrites the table with one update (the kernel's copy of
    // the value), as it rewrote entries with a batch update before.
    let (mut act, slot) = unsafe {
        let binding = core::ptr::addr_of!(BINDINGS)
            .cast::<Binding>()
            .add(at_index);
        ((*binding).action, (*binding).slot)
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
        action::PASS => XDP_PASS,
        // The `SCOPED` flag (with the action without a prefix in the low byte), or a value
        // this program does not know, which passes: the one test unscoped ports do not need,
        // and only on their pass path.
        _ => scoped(ctx, index, len, at, act, slot),
    }
}

/// `index` masked to `BINDINGS`' bounds by an `and` the compiler cannot drop (it knows the
/// index fits, and would): verifiers before Linux 6.18 lose its range at the port's byte swap
/// (see `parse`), and this mask is the bound they check the table access by. The mask is the
/// assembly itself, so it emits one instruction (an empty barrier emitting none gave the
/// debug program two line records at one instruction, which the kernel refuses).
#[inline(always)]
fn bindings_index(index: u32) -> usize {
    const _: () = assert!(BINDINGS_LEN == 0x2_0000);
    let mut at = index as usize;
    // SAFETY: one `and` of the register: no memory, no stack, no flags.
    unsafe {
        core::arch::asm!(
            "{0} &= 0x1ffff",
            inout(reg) at,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    at
}

/// Adds a frame of `len` bytes to the counters of the port at `element` of `group`.
#[inline(always)]
fn count_port(group: *mut PortCounterGroup, element: usize, len: u64) {
    // SAFETY: a per-CPU map value: only this CPU writes it and the program is not reentrant;
    // `element` < PORT_GROUP, so the counters lie inside it. Addressed by byte offset: with
    // `(*group).ports[element]` the compiler moved the update out of line (two jumps more a
    // frame; IPv4 0.6-1.7 ns slower than layout v5, measured).
    let counters = unsafe {
        &mut *group
            .cast::<PortCounters>()
            .byte_add(element * size_of::<PortCounters>())
    };
    counters.packets += 1;
    counters.bytes += len;
}

/// A scoped port's frame: the most specific prefix covering its destination, found by a
/// binary search of the port's intervals, decides and counts it; with none, the binding
/// without a prefix (the low byte of `act`, and `slot`) or the default action.
#[inline(always)]
fn scoped(ctx: &XdpContext, index: u32, len: u64, at: &Ip, act: u32, slot: u32) -> u32 {
    let (start, end, l3) = match at.frame {
        Frame::Fast(start, end) => (start, end, parse::l3_of(start, end)),
        Frame::Full(l3) => (ctx.data(), ctx.data_end(), l3),
    };
    let target = match SCOPES.get(index) {
        Some(scope) if at.ipv6 => search_v6(start, end, l3, scope.v6),
        Some(scope) => search_v4(start, end, l3, scope.v4),
        None => 0,
    };
    let (mut act, mut slot) = match untarget(target) {
        (_, action::UNBOUND, _) => (act & action::MASK, slot),
        (id, act, slot) => {
            if let Some(counters) = SCOPED_STATS.get_ptr_mut(id) {
                // SAFETY: as for PORT_STATS3.
                let counters = unsafe { &mut *counters };
                counters.packets += 1;
                counters.bytes += len;
            }
            (act, slot)
        }
    };
    if act == action::UNBOUND {
        act = DEFAULT_ACTION.load();
        slot = 0;
    }
    match act {
        action::DROP => XDP_DROP,
        action::REDIRECT => redirect(slot),
        _ => XDP_PASS,
    }
}

/// Repeats a search step [`SEARCH_STEPS`] (17) times, unrolled: in a loop the verifier would
/// walk the code after it once per iteration (the iteration count tells the exits apart),
/// unrolled the exits are alike and pruned.
macro_rules! unrolled {
    ($step:block) => {
        $step $step $step $step $step $step $step $step $step
        $step $step $step $step $step $step $step $step
    };
}
const _: () = assert!(SEARCH_STEPS == 17);

/// The target of the IPv4 interval (of the table `word` packs) holding the destination of the
/// IPv4 header at `l3`.
#[inline(always)]
fn search_v4(start: usize, end: usize, l3: usize, word: u64) -> u32 {
    if PortScope::unpack(word).1 == 0 {
        return 0;
    }
    let Some(table) = SCOPE_V4.get(0) else {
        return 0;
    };
    let addr = parse::dst_v4(start, end, l3);
    search(table, word, |r| addr >= r.start).map_or(0, |r| r.target)
}

/// As [`search_v4`], for IPv6: addresses compare as (bytes 0..8, bytes 8..16).
#[inline(always)]
fn search_v6(start: usize, end: usize, l3: usize, word: u64) -> u32 {
    if PortScope::unpack(word).1 == 0 {
        return 0;
    }
    let Some(table) = SCOPE_V6.get(0) else {
        return 0;
    };
    let (hi, lo) = parse::dst_v6(start, end, l3);
    search(table, word, |r| hi > r.hi || (hi == r.hi && lo >= r.lo)).map_or(0, |r| r.target)
}

/// The last record of the port's table (`word`: where it lies in `table`, and its length, at
/// least 1) that the address is at or past (`past`; the first record starts at the family's
/// first address). A binary search of at most [`SEARCH_STEPS`] steps, each a bounds-checked
/// index into the table the caller looked up once: the range halves whatever the comparison
/// says (the number of steps depends on the table's length only) and only its start moves.
#[inline(always)]
#[expect(
    unused_assignments,
    reason = "the last unrolled step's count is not read"
)]
fn search<R>(
    table: &[R; SCOPE_RECORDS as usize],
    word: u64,
    past: impl Fn(&R) -> bool,
) -> Option<&R> {
    let (lo, n) = PortScope::unpack(word);
    let (mut lo, mut n) = (lo as usize, n as usize);
    'search: {
        unrolled!({
            if n <= 1 {
                break 'search;
            }
            let half = n >> 1;
            if past(table.get(lo + half)?) {
                lo += half;
            }
            n -= half;
        });
    }
    table.get(lo)
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
        // SAFETY: as for PORT_STATS3.
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
