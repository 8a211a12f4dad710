//! The XDP program loaded (unattached, unpinned) for `BPF_PROG_TEST_RUN`.
//!
//! A [`Harness`] owns one private instance of the program and its maps: nothing is pinned or
//! attached, so harnesses do not see each other or a running `port-demux`. It keeps a shadow
//! of the bindings and devmap slots it wrote, so that it can also say what the reference model
//! ([`port_demux_common::model::classify`]) expects of a frame and check the program against it.

use std::{collections::HashMap, os::fd::AsFd as _};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, IterableMap as _, MapData, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use port_demux::{EBPF_OBJECT, PROGRAM, PROGRAM_DEBUG, pinned, prefix::Tables};
use port_demux_common::{
    BINDINGS_LEN, Binding, GlobalCounters, Globals, PORT_GROUP, PORT_STATS_V7, PortCounterGroup,
    PortCounters, PortScope, REDIRECT_SLOTS, ScopeTableV4, ScopeTableV6, action, family,
    model::{self, ScopedRule, Verdict},
    outcome, port_counter_at,
};

use crate::frames::to_hex;

/// `XDP_ABORTED`: no frame may ever get it.
pub const XDP_ABORTED: u32 = 0;
pub use port_demux_common::model::{XDP_DROP, XDP_PASS, XDP_REDIRECT};

/// The first buffer `BPF_PROG_TEST_RUN` gives a frags program: a page less the headroom
/// (256) and `skb_shared_info` (320) on x86-64; longer input goes into further buffers.
pub const TEST_RUN_LINEAR: usize = 4096 - 256 - 320;

/// Interface index of `lo`, which exists in every network namespace: a valid devmap target.
pub const LO_IFINDEX: u32 = 1;

/// A binding with `act` ([`action`]) and `slot`, and the owner "test".
#[must_use]
pub fn binding(act: u32, slot: u32) -> Binding {
    let mut owner = [0u8; port_demux_common::OWNER_LEN];
    owner[..4].copy_from_slice(b"test");
    Binding {
        action: act,
        slot,
        owner,
    }
}

/// The empty binding (unbound port).
#[must_use]
pub fn unbound() -> Binding {
    bytemuck::Zeroable::zeroed()
}

/// `a - b`, cell by cell (wrapping, so a decrease shows as a huge delta).
#[must_use]
pub fn globals_delta(a: &Globals, b: &Globals) -> Globals {
    let mut d = Globals::default();
    for (d, (a, b)) in d.frames.iter_mut().zip(a.frames.iter().zip(&b.frames)) {
        *d = a.wrapping_sub(*b);
    }
    d
}

/// `a - b`, field by field (wrapping).
#[must_use]
pub fn port_delta(a: &PortCounters, b: &PortCounters) -> PortCounters {
    PortCounters {
        packets: a.packets.wrapping_sub(b.packets),
        bytes: a.bytes.wrapping_sub(b.bytes),
    }
}

/// The global counter delta of one IPv4 frame with `outcome` and action `taken`: its cell +1
/// if it has one (frames not demultiplexed, redirects), nothing for a demultiplexed frame
/// passed or dropped (counted per port only).
#[must_use]
pub fn one_frame(outcome: usize, taken: usize) -> Globals {
    one_frame_of(outcome, taken, family::IPV4)
}

/// As [`one_frame`], for a frame of `family` (a demultiplexed IPv6 frame also counts in
/// [`Globals::DEMUXED_IPV6`]).
#[must_use]
pub fn one_frame_of(outcome: usize, taken: usize, family: u8) -> Globals {
    let mut d = Globals::default();
    for cell in Globals::cells(outcome, taken, family).into_iter().flatten() {
        d.frames[cell] = 1;
    }
    d
}

/// The global counter delta of one frame classified as `verdict`.
#[must_use]
pub fn expected_globals(verdict: &Verdict) -> Globals {
    one_frame_of(verdict.outcome, verdict.taken, verdict.family)
}

/// The name of a [`Globals`] cell.
#[must_use]
pub fn cell_name(cell: usize) -> &'static str {
    match cell {
        Globals::REDIRECTED => "redirected",
        Globals::REDIRECT_FALLBACK => "redirect_fallback",
        Globals::DEMUXED_IPV6 => "demuxed_ipv6",
        c => (1..outcome::COUNT)
            .find(|&o| Globals::outcome_cell(o) == c)
            .map_or("spare", |o| outcome::NAMES[o]),
    }
}

/// Names of the non-zero cells of `g`, for messages: `malformed=1 redirected=3`.
#[must_use]
pub fn describe_globals(g: &Globals) -> String {
    let mut parts = Vec::new();
    for (cell, n) in g.frames.iter().enumerate() {
        if *n != 0 {
            parts.push(format!("{}={}", cell_name(cell), n.cast_signed()));
        }
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(" ")
    }
}

/// The sum of per-CPU port counters.
fn sum_ports(per_cpu: impl Iterator<Item = PortCounters>) -> PortCounters {
    per_cpu.fold(PortCounters::default(), |acc, c| PortCounters {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

/// Every counter of an instance, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `GLOBALS` and `GLOBALS2`.
    pub globals: Globals,
    /// Every port's counters (`PORT_STATS3`), all [`port_demux_common::BINDINGS_LEN`] of them.
    pub ports: Vec<PortCounters>,
}

/// A whole interval table (`SCOPE_V4` or `SCOPE_V6`'s one value) holding `records` from 0,
/// on the heap (1.5 MiB for IPv6).
#[expect(
    clippy::unnecessary_box_returns,
    reason = "1.5 MiB: never on the stack"
)]
fn table<R: Copy + Default, const N: usize>(records: &[R]) -> Box<[R; N]> {
    let mut all = vec![R::default(); N];
    all[..records.len()].copy_from_slice(records);
    all.into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("N records"))
}

/// One private instance of the XDP program, for `BPF_PROG_TEST_RUN`.
pub struct Harness {
    ebpf: Ebpf,
    /// `BINDINGS`: the object's `.bss.bindings` data map, whose one value is every port's
    /// binding.
    bindings: MapData,
    /// What this harness wrote into `bindings`' value (written whole at every change).
    table: Vec<Binding>,
    port_stats: PerCpuArray<MapData, PortCounterGroup>,
    globals: PerCpuArray<MapData, GlobalCounters>,
    globals2: PerCpuArray<MapData, Globals>,
    redirect: DevMap<MapData>,
    scopes: Array<MapData, PortScope>,
    scope_v4: Array<MapData, ScopeTableV4>,
    scope_v6: Array<MapData, ScopeTableV6>,
    scoped_stats: PerCpuArray<MapData, PortCounters>,
    /// Scoped bindings written through [`Harness::set_scoped`].
    shadow_rules: Vec<ScopedRule>,
    default_action: u32,
    cpus: usize,
    /// Non-empty bindings written, by index.
    shadow_bindings: HashMap<u32, Binding>,
    /// Devmap slots filled.
    shadow_slots: [bool; REDIRECT_SLOTS as usize],
    /// Which program of the object runs.
    program: &'static str,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("default_action", &self.default_action)
            .field("bindings", &self.shadow_bindings.len())
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Loads the program with `default_action` ([`action::PASS`] or [`action::DROP`]) for
    /// unbound ports and debug logging off; nothing is pinned or attached.
    ///
    /// # Errors
    /// When the object does not load (not root, verifier rejection, ...).
    pub fn new(default_action: u32) -> Result<Self> {
        Self::with_program(default_action, PROGRAM)
    }

    /// As [`Harness::new`], running `program` of the object ([`PROGRAM`] or
    /// [`PROGRAM_DEBUG`], which logs at debug level).
    ///
    /// # Errors
    /// When the object does not load (not root, verifier rejection, ...).
    pub fn with_program(default_action: u32, program: &'static str) -> Result<Self> {
        let log_level = if program == PROGRAM_DEBUG {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("DEFAULT_ACTION", &default_action, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(EBPF_OBJECT)
            .context("cannot load the eBPF object (are we root?)")?;
        let prog: &mut Xdp = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("no program {program}"))?
            .try_into()?;
        prog.load().context("the verifier rejected the program")?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the object has no map {name}"))
        };
        let aya::maps::Map::Array(bindings) = take(".bss.bindings")? else {
            return Err(anyhow!("the object's BINDINGS is not an array"));
        };
        let port_stats = PerCpuArray::try_from(take("PORT_STATS3")?)?;
        let globals = PerCpuArray::try_from(take("GLOBALS")?)?;
        let globals2 = PerCpuArray::try_from(take("GLOBALS2")?)?;
        let redirect = DevMap::try_from(take("REDIRECT")?)?;
        let scopes = Array::try_from(take("SCOPES")?)?;
        let scope_v4 = Array::try_from(take("SCOPE_V4")?)?;
        let scope_v6 = Array::try_from(take("SCOPE_V6")?)?;
        let scoped_stats = PerCpuArray::try_from(take("SCOPED_STATS")?)?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| anyhow!("cannot count the possible CPUs ({what}): {e}"))?;
        Ok(Self {
            ebpf,
            bindings,
            table: vec![unbound(); BINDINGS_LEN as usize],
            port_stats,
            globals,
            globals2,
            redirect,
            scopes,
            scope_v4,
            scope_v6,
            scoped_stats,
            shadow_rules: Vec::new(),
            default_action,
            cpus,
            shadow_bindings: HashMap::new(),
            shadow_slots: [false; REDIRECT_SLOTS as usize],
            program,
        })
    }

    /// The default action the program was loaded with.
    #[must_use]
    pub fn default_action(&self) -> u32 {
        self.default_action
    }

    fn prog(&self) -> &Xdp {
        self.ebpf
            .program(self.program)
            .expect("the program is there")
            .try_into()
            .expect("an XDP program")
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN`.
    ///
    /// # Errors
    /// When the kernel refuses the run (e.g. `EINVAL` for a frame shorter than 14 bytes).
    pub fn try_run(&self, frame: &[u8]) -> Result<u32, ProgramError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        Ok(self.prog().test_run(opts)?.return_value)
    }

    /// Runs the program once on `frame` and returns its XDP action.
    ///
    /// # Panics
    /// When the kernel refuses the run, or the program returns `XDP_ABORTED`.
    #[must_use]
    pub fn run(&self, frame: &[u8]) -> u32 {
        let ret = self.try_run(frame).unwrap_or_else(|e| {
            panic!(
                "`BPF_PROG_TEST_RUN` failed on a {}-byte frame: {e:?}\n{}",
                frame.len(),
                to_hex(frame)
            )
        });
        assert_ne!(
            ret,
            XDP_ABORTED,
            "XDP_ABORTED on a {}-byte frame:\n{}",
            frame.len(),
            to_hex(frame)
        );
        ret
    }

    /// Writes the binding at `index` (a `port_index`).
    ///
    /// # Panics
    /// When the map update fails.
    pub fn set_binding(&mut self, index: u32, value: Binding) {
        let mut stored = value;
        if self.shadow_rules.iter().any(|r| r.index == index) {
            stored.action |= action::SCOPED;
        }
        self.table[index as usize] = stored;
        pinned::write_table(self.bindings.fd().as_fd(), &self.table)
            .unwrap_or_else(|e| panic!("cannot set binding {index}: {e}"));
        if value == unbound() {
            self.shadow_bindings.remove(&index);
        } else {
            self.shadow_bindings.insert(index, value);
        }
    }

    /// Removes every binding written through [`set_binding`](Self::set_binding).
    pub fn clear_bindings(&mut self) {
        let indices: Vec<u32> = self.shadow_bindings.keys().copied().collect();
        for index in indices {
            self.set_binding(index, unbound());
        }
    }

    /// Replaces every address-scoped binding with `rules` (ids are `SCOPED_STATS` indices): the
    /// interval tables as the library builds them (`port_demux::prefix::Tables`), laid out
    /// from record 0, and the `SCOPED` flag in the bindings of the ports that have rules.
    ///
    /// # Panics
    /// When a map update fails.
    pub fn set_scoped(&mut self, rules: Vec<ScopedRule>) {
        let old: Vec<u32> = self.shadow_rules.iter().map(|r| r.index).collect();
        for index in &old {
            self.scopes
                .set(*index, PortScope::default(), 0)
                .expect("cannot clear SCOPES");
        }
        let tables = Tables::build(&rules);
        // Each map's one value is the whole table: its records from 0, the rest zero.
        let v4: Box<ScopeTableV4> = table(&tables.v4);
        self.scope_v4.set(0, v4, 0).expect("cannot write SCOPE_V4");
        let v6: Box<ScopeTableV6> = table(&tables.v6);
        self.scope_v6.set(0, v6, 0).expect("cannot write SCOPE_V6");
        for (index, scope) in &tables.scopes {
            self.scopes
                .set(*index, *scope, 0)
                .expect("cannot write SCOPES");
        }
        self.shadow_rules = rules;
        let mut touched: Vec<u32> = old;
        touched.extend(self.shadow_rules.iter().map(|r| r.index));
        touched.sort_unstable();
        touched.dedup();
        for index in touched {
            let value = self
                .shadow_bindings
                .get(&index)
                .copied()
                .unwrap_or_else(unbound);
            self.set_binding(index, value);
        }
    }

    /// `SCOPED_STATS[id]`, summed over CPUs.
    ///
    /// # Panics
    /// When the map lookup fails.
    #[must_use]
    pub fn scoped(&self, id: u32) -> PortCounters {
        let per_cpu = self
            .scoped_stats
            .get(&id, 0)
            .unwrap_or_else(|e| panic!("cannot read SCOPED_STATS[{id}]: {e}"));
        sum_ports(per_cpu.iter().copied())
    }

    /// The binding at `index`, read from the map.
    ///
    /// # Panics
    /// When the map lookup fails.
    #[must_use]
    pub fn binding(&self, index: u32) -> Binding {
        pinned::read_array::<Binding>(self.bindings.fd().as_fd())
            .unwrap_or_else(|e| panic!("cannot read binding {index}: {e}"))[index as usize]
    }

    /// Points devmap `slot` at interface `ifindex` (use [`LO_IFINDEX`]).
    ///
    /// # Panics
    /// When the map update fails.
    pub fn set_slot(&mut self, slot: u32, ifindex: u32) {
        self.redirect
            .set(slot, ifindex, None, 0)
            .unwrap_or_else(|e| panic!("cannot fill devmap slot {slot}: {e}"));
        self.shadow_slots[slot as usize] = true;
    }

    /// Empties devmap `slot` (aya's `DevMap` has no delete: [`pinned::delete`]).
    ///
    /// # Panics
    /// When the delete fails for another reason than an already empty slot.
    pub fn clear_slot(&mut self, slot: u32) {
        pinned::delete(self.redirect.map().fd().as_fd(), &slot)
            .unwrap_or_else(|e| panic!("cannot empty devmap slot {slot}: {e}"));
        self.shadow_slots[slot as usize] = false;
    }

    /// Whether devmap `slot` is filled, as far as this harness wrote it.
    #[must_use]
    pub fn slot_filled(&self, slot: u32) -> bool {
        self.shadow_slots
            .get(slot as usize)
            .copied()
            .unwrap_or(false)
    }

    /// `GLOBALS` and `GLOBALS2`, summed over CPUs, with the demultiplexed IPv6 frames that
    /// `PORT_STATS3` counts beside the ports ([`PortCounterGroup::ipv6`]) in
    /// [`Globals::DEMUXED_IPV6`]: the counts as the model has them, as `stats` reads them.
    ///
    /// # Panics
    /// When a map lookup fails.
    #[must_use]
    pub fn globals(&self) -> Globals {
        self.globals_with(&self.groups())
    }

    /// [`Self::globals`] with the IPv6 counts of `groups`, a batch read of `PORT_STATS3`.
    fn globals_with(&self, groups: &[PortCounterGroup]) -> Globals {
        let mut sum = self.global_maps();
        sum.frames[Globals::DEMUXED_IPV6] += groups.iter().map(|g| g.ipv6).sum::<u64>();
        sum
    }

    /// [`Self::globals`] with the IPv6 frames of one `PORT_STATS3` entry only, the one port
    /// `index`'s counters are in (none without it): one entry's lookup, where the whole
    /// array's batch read takes milliseconds (far more in an emulated VM). For a frame's
    /// check: the frame can count only there.
    fn globals_at(&self, index: Option<u32>) -> Globals {
        let mut sum = self.global_maps();
        if let Some(index) = index {
            let (entry, _) = port_counter_at(index);
            let per_cpu = self
                .port_stats
                .get(&entry, 0)
                .unwrap_or_else(|e| panic!("cannot read PORT_STATS3 for index {index}: {e}"));
            sum.frames[Globals::DEMUXED_IPV6] += per_cpu.iter().map(|g| g.ipv6).sum::<u64>();
        }
        sum
    }

    /// `GLOBALS` and `GLOBALS2`, summed over CPUs.
    fn global_maps(&self) -> Globals {
        let mut sum = Globals::default();
        let a = self.globals.get(&0, 0).expect("cannot read GLOBALS");
        let b = self.globals2.get(&0, 0).expect("cannot read GLOBALS2");
        for (a, b) in a.iter().zip(b.iter()) {
            sum.add(&Globals::from_maps(a, b));
        }
        sum
    }

    /// Every CPU's value of every `PORT_STATS3` entry, entry after entry, in one batch lookup.
    fn groups(&self) -> Vec<PortCounterGroup> {
        pinned::read_array::<PortCounterGroup>(self.port_stats.map().fd().as_fd())
            .expect("cannot batch-read PORT_STATS3")
    }

    /// The counters of port `index` (in `PORT_STATS3`), summed over CPUs.
    ///
    /// # Panics
    /// When the map lookup fails.
    #[must_use]
    pub fn port(&self, index: u32) -> PortCounters {
        let (entry, element) = port_counter_at(index);
        let per_cpu = self
            .port_stats
            .get(&entry, 0)
            .unwrap_or_else(|e| panic!("cannot read PORT_STATS3 for index {index}: {e}"));
        sum_ports(per_cpu.iter().map(|g| g.ports[element]))
    }

    /// Every port's counters, summed over CPUs, in one batch lookup of `PORT_STATS3`.
    ///
    /// # Panics
    /// When the batch lookup fails.
    #[must_use]
    pub fn ports(&self) -> Vec<PortCounters> {
        self.ports_of(&self.groups())
    }

    /// [`Self::ports`] of `groups`, a batch read of `PORT_STATS3`.
    fn ports_of(&self, groups: &[PortCounterGroup]) -> Vec<PortCounters> {
        // Summed over CPUs, entry after entry, then read by index.
        let summed: Vec<PortCounters> = groups
            .chunks_exact(self.cpus)
            .flat_map(|per_cpu| {
                (0..PORT_GROUP as usize).map(|k| sum_ports(per_cpu.iter().map(|g| g.ports[k])))
            })
            .collect();
        (0..BINDINGS_LEN)
            .map(|index| summed[PORT_STATS_V7.offset(index)])
            .collect()
    }

    /// Every counter, summed over CPUs.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let groups = self.groups();
        Snapshot {
            globals: self.globals_with(&groups),
            ports: self.ports_of(&groups),
        }
    }

    /// What the reference model does with `frame`, given the bindings and slots written
    /// through this harness and its default action.
    #[must_use]
    pub fn model(&self, frame: &[u8]) -> Verdict {
        model::classify_scoped(
            frame,
            frame.len().min(TEST_RUN_LINEAR),
            |index| {
                self.shadow_bindings
                    .get(&index)
                    .copied()
                    .unwrap_or_else(unbound)
            },
            &self.shadow_rules,
            self.default_action,
            |slot| self.slot_filled(slot),
        )
    }

    /// Runs `frame` and checks the program against the model: the same XDP action, exactly the
    /// model's global cell +1 (if it has one) and no other, and the port counter of a
    /// demultiplexed frame by one packet and its length. With `all_ports`, also
    /// checks that no other port counter moved, and IPv6 counts in every entry, not only the
    /// frame's port's (batch reads of the whole array).
    ///
    /// # Errors
    /// What disagrees.
    pub fn check(&self, frame: &[u8], all_ports: bool) -> Result<Verdict, Box<Mismatch>> {
        let verdict = self.model(frame);
        let mut m = Box::<Mismatch>::default();
        // With `all_ports`, every port and every entry's IPv6 count, from one batch read;
        // else the frame's port and the IPv6 count of its entry (the differential test's
        // periodic check of every counter covers the others).
        let counters_of = |h: &Self| {
            if all_ports {
                let groups = h.groups();
                (h.globals_with(&groups), h.ports_of(&groups))
            } else {
                let port = verdict.port_index.map(|i| h.port(i));
                (h.globals_at(verdict.port_index), port.into_iter().collect())
            }
        };
        let (globals_before, ports_before) = counters_of(self);
        // Every scoped binding's counters: the one the model names must move by the frame,
        // the others not at all.
        let ids: Vec<u32> = self.shadow_rules.iter().map(|r| r.id).collect();
        let scoped_before: Vec<PortCounters> = ids.iter().map(|&id| self.scoped(id)).collect();
        let ret = match self.try_run(frame) {
            Ok(ret) => ret,
            Err(e) => {
                m.refused = Some(format!("{e:?}"));
                return Err(m);
            }
        };
        if ret != verdict.xdp_action {
            m.action = Some((ret, verdict));
        }
        let (globals_after, ports_after) = counters_of(self);
        let delta = globals_delta(&globals_after, &globals_before);
        let want = expected_globals(&verdict);
        if delta != want {
            m.globals = Some((delta, want));
        }
        let port_want = PortCounters {
            packets: 1,
            bytes: verdict.bytes,
        };
        if all_ports {
            for (i, (a, b)) in (0u32..).zip(ports_after.iter().zip(&ports_before)) {
                let d = port_delta(a, b);
                let w = if verdict.port_index == Some(i) {
                    port_want
                } else {
                    PortCounters::default()
                };
                if d != w {
                    m.ports.push((i, d, w));
                }
            }
        } else if let Some(i) = verdict.port_index {
            let d = port_delta(&ports_after[0], &ports_before[0]);
            if d != port_want {
                m.ports.push((i, d, port_want));
            }
        }
        for (&id, before) in ids.iter().zip(&scoped_before) {
            let d = port_delta(&self.scoped(id), before);
            let w = if verdict.scoped == Some(id) {
                port_want
            } else {
                PortCounters::default()
            };
            if d != w {
                m.scoped.push((id, d, w));
            }
        }
        if *m == Mismatch::default() {
            Ok(verdict)
        } else {
            Err(m)
        }
    }
}

/// How the program disagreed with the model on one frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// The kernel refused the run (its error).
    pub refused: Option<String>,
    /// The program's XDP action and the model's verdict, when the actions differ.
    pub action: Option<(u32, Verdict)>,
    /// The `GLOBALS`/`GLOBALS2` delta and the model's, when they differ.
    pub globals: Option<(Globals, Globals)>,
    /// port counters whose delta differs: index, delta, the model's delta.
    pub ports: Vec<(u32, PortCounters, PortCounters)>,
    /// `SCOPED_STATS` entries whose delta differs: id, delta, the model's delta.
    pub scoped: Vec<(u32, PortCounters, PortCounters)>,
}

impl Mismatch {
    /// Which checks failed, as a bit set (refused, action, globals, ports): the minimiser keeps
    /// a candidate only if it fails the same way.
    #[must_use]
    pub fn kind(&self) -> u8 {
        u8::from(self.refused.is_some())
            | u8::from(self.action.is_some()) << 1
            | u8::from(self.globals.is_some()) << 2
            | u8::from(!self.ports.is_empty()) << 3
            | u8::from(!self.scoped.is_empty()) << 4
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(e) = &self.refused {
            parts.push(format!("test run refused: {e}"));
        }
        if let Some((ret, v)) = &self.action {
            parts.push(format!("XDP action {ret}, model {} ({v:?})", v.xdp_action));
        }
        if let Some((got, want)) = &self.globals {
            parts.push(format!(
                "GLOBALS delta {}, model {}",
                describe_globals(got),
                describe_globals(want)
            ));
        }
        for (i, got, want) in &self.ports {
            parts.push(format!("port[{i}] delta {got:?}, model {want:?}"));
        }
        for (id, got, want) in &self.scoped {
            parts.push(format!("SCOPED_STATS[{id}] delta {got:?}, model {want:?}"));
        }
        f.write_str(&parts.join("; "))
    }
}

/// The (action, slot) bindings a regression frame's (protocol, port) is replayed under, with
/// devmap slot 0 filled and slot 1 empty: unbound, pass, drop, redirect to a filled slot, to
/// an empty slot and to a slot outside the devmap.
pub const REPLAY_BINDINGS: [(u32, u32); 6] = [
    (action::UNBOUND, 0),
    (action::PASS, 0),
    (action::DROP, 0),
    (action::REDIRECT, 0),
    (action::REDIRECT, 1),
    (action::REDIRECT, REDIRECT_SLOTS + 3),
];
