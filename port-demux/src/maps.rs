//! Typed access to an instance's pinned maps: bindings, redirect slots and counters. With
//! the `META` record of [`crate::layout`], the only code that reads or writes map values.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use port_demux_common::{
    BINDINGS_LEN, Binding, GlobalCounters, Globals, Grouping, OWNER_LEN, PORT_STATS_V7,
    PortCounters, PortScope, REDIRECT_SLOTS, SCOPED_LEN, ScopeTableV4, ScopeTableV6, ScopedBinding,
    action, outcome, port_index,
};

use crate::{
    Action, Error, PortSpec, Result, Scope, Totals,
    layout::{DEVMAP_VALUE, FROZEN_COUNTERS, GLOBALS2, MAPS, PORT_STATS3, open_maps},
    sys,
};

/// Every binding in the array map `fd` of `entries` entries: this layout's one value, or
/// layouts v2-v7's one entry a port. Through a read-only memory mapping when the map may be
/// mapped; else (v2 and v3's maps, made without `BPF_F_MMAPABLE`, and descriptors opened
/// read-only) one lookup of the value, or one batch lookup of the entries.
fn read_bindings(fd: &OwnedFd, entries: u32) -> std::io::Result<Vec<Binding>> {
    let mut all = vec![<Binding as bytemuck::Zeroable>::zeroed(); BINDINGS_LEN as usize];
    let out: &mut [u8] = bytemuck::cast_slice_mut(&mut all);
    if sys::map_info(fd.as_fd())?.map_flags & sys::BPF_F_MMAPABLE != 0
        && let Ok(mapped) = sys::Mapped::read_only(fd.as_fd(), out.len())
    {
        mapped.read(0, out);
        return Ok(all);
    }
    if entries == 1 {
        sys::lookup(fd.as_fd(), &0u32.to_ne_bytes(), out)?;
    } else {
        sys::lookup_array_batch(fd.as_fd(), BINDINGS_LEN, size_of::<Binding>(), out)?;
    }
    Ok(all)
}

/// Per-CPU arrays of at least this many entries are read by several threads.
const PARALLEL_FROM: u32 = 16_384;
/// The most threads reading one array.
const MAX_READERS: usize = 4;

/// The pinned maps of an instance of this build's layout, opened and checked.
#[derive(Debug)]
pub(crate) struct Maps {
    dir: PathBuf,
    bindings: OwnedFd,
    port_stats: OwnedFd,
    /// The older layouts' counters an upgrade kept (v5's `PORT_STATS`, v6's `PORT_STATS2`):
    /// no longer written, added in.
    port_bases: Vec<(OwnedFd, &'static str, Grouping)>,
    globals: OwnedFd,
    globals2: OwnedFd,
    redirect: OwnedFd,
    scopes: OwnedFd,
    scope_v4: OwnedFd,
    scope_v6: OwnedFd,
    scoped: OwnedFd,
    scoped_stats: OwnedFd,
}

/// The memory-mapped scope maps, for writing tables and switching ports to them.
#[derive(Debug)]
pub(crate) struct ScopeMaps {
    /// `SCOPES`.
    pub(crate) scopes: sys::Mapped,
    /// `SCOPE_V4`.
    pub(crate) v4: sys::Mapped,
    /// `SCOPE_V6`.
    pub(crate) v6: sys::Mapped,
}

impl ScopeMaps {
    /// The `SCOPES` word of port `index` for the IPv4 (`v6` false) or IPv6 table.
    pub(crate) fn word(&self, index: u32, v6: bool) -> u64 {
        self.scopes.load_u64(Self::offset(index, v6))
    }

    /// Points port `index`'s table of one family at `word` (one atomic store).
    pub(crate) fn set_word(&self, index: u32, v6: bool, word: u64) {
        self.scopes.store_u64(Self::offset(index, v6), word);
    }

    /// Whether port `index` has a table of either family.
    pub(crate) fn scoped(&self, index: u32) -> bool {
        self.word(index, false) != 0 || self.word(index, true) != 0
    }

    fn offset(index: u32, v6: bool) -> usize {
        index as usize * size_of::<PortScope>() + if v6 { 8 } else { 0 }
    }
}

impl Maps {
    /// Opens every map of [`MAPS`] pinned in `dir`, checking each one's type and sizes.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let [
            bindings,
            port_stats,
            globals,
            redirect,
            _meta,
            globals2,
            scopes,
            scope_v4,
            scope_v6,
            scoped_entries,
            scoped_stats,
        ] = open_maps(dir, &MAPS)?;
        let mut port_bases = Vec::new();
        for (spec, grouping) in FROZEN_COUNTERS {
            if dir.join(spec.0).exists() {
                let [base] = open_maps(dir, &[spec])?;
                port_bases.push((base, spec.0, grouping));
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            bindings,
            port_stats,
            port_bases,
            globals,
            globals2,
            redirect,
            scopes,
            scope_v4,
            scope_v6,
            scoped: scoped_entries,
            scoped_stats,
        })
    }

    /// Maps `SCOPES`, `SCOPE_V4` and `SCOPE_V6` read-write.
    pub(crate) fn scope_maps(&self) -> Result<ScopeMaps> {
        let map = |fd: &OwnedFd, name: &str, len: usize| {
            sys::Mapped::new(fd.as_fd(), len)
                .map_err(|e| Error::io("cannot map", self.dir.join(name), e))
        };
        Ok(ScopeMaps {
            scopes: map(
                &self.scopes,
                "SCOPES",
                BINDINGS_LEN as usize * size_of::<PortScope>(),
            )?,
            v4: map(&self.scope_v4, "SCOPE_V4", size_of::<ScopeTableV4>())?,
            v6: map(&self.scope_v6, "SCOPE_V6", size_of::<ScopeTableV6>())?,
        })
    }

    /// Copies layout v4's interval records (`SCOPE_V4` and `SCOPE_V6` pinned in `old`, arrays
    /// of records) into this instance's one-value tables, which hold the same bytes: the
    /// `SCOPES` words kept with them stay valid.
    pub(crate) fn copy_tables_from_v4(&self, old: &Path) -> Result<()> {
        let tables = self.scope_maps()?;
        for (name, to, len) in [
            ("SCOPE_V4", &tables.v4, size_of::<ScopeTableV4>()),
            ("SCOPE_V6", &tables.v6, size_of::<ScopeTableV6>()),
        ] {
            let path = old.join(name);
            // Read-write: a descriptor opened read-only cannot be mapped shared.
            let fd = sys::obj_get(&path, false).map_err(|e| Error::io("cannot open", &path, e))?;
            let from = sys::Mapped::read_only(fd.as_fd(), len)
                .map_err(|e| Error::io("cannot map", &path, e))?;
            let mut bytes = vec![0u8; len];
            from.read(0, &mut bytes);
            to.write(0, &bytes);
        }
        Ok(())
    }

    /// Every `SCOPED` entry (free ones have action `UNBOUND`), by id.
    pub(crate) fn read_scoped(&self) -> Result<Vec<ScopedBinding>> {
        self.read_plain(&self.scoped, "SCOPED", SCOPED_LEN)
    }

    /// The whole plain array `fd` (`name` in errors) of `len` values `T`: copied through a
    /// read-only memory mapping when the map has `BPF_F_MMAPABLE` and `fd` may be mapped (one
    /// copy, where the kernel's generic batch lookup costs about 0.4 us an entry), else with a
    /// batch lookup (the maps of instances loaded by builds before it, which an upgrade keeps
    /// as they were, and descriptors opened read-only).
    fn read_plain<T: bytemuck::Pod>(&self, fd: &OwnedFd, name: &str, len: u32) -> Result<Vec<T>> {
        let io = |e| Error::io("cannot read", self.dir.join(name), e);
        let mut all = vec![T::zeroed(); len as usize];
        let out: &mut [u8] = bytemuck::cast_slice_mut(&mut all);
        if sys::map_info(fd.as_fd()).map_err(io)?.map_flags & sys::BPF_F_MMAPABLE != 0 {
            // A read-only descriptor (a reader granted read access to the pins, not write)
            // cannot be mapped shared: the kernel says EINVAL, and the batch lookup serves.
            if let Ok(mapped) = sys::Mapped::read_only(fd.as_fd(), out.len()) {
                mapped.read(0, out);
                return Ok(all);
            }
        }
        sys::lookup_array_batch(fd.as_fd(), len, size_of::<T>(), out).map_err(io)?;
        Ok(all)
    }

    /// Writes `SCOPED` entries at `ids`, one batch.
    pub(crate) fn write_scoped(&self, ids: &[u32], values: &[ScopedBinding]) -> Result<()> {
        sys::update_batch(self.scoped.as_fd(), ids, bytemuck::cast_slice(values))
            .map_err(|e| Error::io("cannot write", self.dir.join("SCOPED"), e))
    }

    /// Zeroes the counters of `ids` on every CPU, one batch.
    pub(crate) fn zero_scoped_stats(&self, ids: &[u32]) -> Result<()> {
        let cpus = sys::possible_cpus().map_err(|e| Error::io("cannot count", "CPUs", e))?;
        let zeros = vec![0u8; ids.len() * cpus * size_of::<PortCounters>()];
        sys::update_batch(self.scoped_stats.as_fd(), ids, &zeros)
            .map_err(|e| Error::io("cannot write", self.dir.join("SCOPED_STATS"), e))
    }

    /// `SCOPED_STATS` of the ids below `below`, summed over CPUs, by id. Ids are taken
    /// lowest first, so reading up to the highest live one reads little of the 32,768.
    pub(crate) fn scoped_counters(&self, below: u32) -> Result<Vec<PortCounters>> {
        self.summed(
            &self.scoped_stats,
            "SCOPED_STATS",
            below.min(SCOPED_LEN),
            1,
            0,
        )
        .map(|(counters, _)| counters)
    }

    /// The id of the `BINDINGS` map opened.
    pub(crate) fn bindings_id(&self) -> Result<u32> {
        sys::map_info(self.bindings.as_fd())
            .map(|info| info.id)
            .map_err(|e| Error::io("cannot inspect", self.dir.join("BINDINGS"), e))
    }

    /// The global counters ([`Self::globals`]) and every port's ([`Self::port_counters`]),
    /// the IPv6 frames counted beside the ports' in the global cell
    /// [`Globals::DEMUXED_IPV6`]. The global counters are read first: a frame counted
    /// between the two reads then shows in the per-port sum at worst, never as a redirect
    /// whose port count is missing.
    pub(crate) fn counters(&self) -> Result<(Globals, Vec<PortCounters>)> {
        let mut globals = self.globals()?;
        let (ports, ipv6) = self.port_counters()?;
        globals.frames[Globals::DEMUXED_IPV6] += ipv6;
        Ok((globals, ports))
    }

    /// Every port's counters by index: `PORT_STATS3` summed over CPUs, plus the frozen
    /// counters of older layouts an upgrade kept; and the demultiplexed IPv6 frames
    /// `PORT_STATS3` counted.
    fn port_counters(&self) -> Result<(Vec<PortCounters>, u64)> {
        let (mut all, ipv6) = self.ungrouped(&self.port_stats, PORT_STATS3, PORT_STATS_V7)?;
        for (fd, name, grouping) in &self.port_bases {
            for (sum, old) in all.iter_mut().zip(self.ungrouped(fd, name, *grouping)?.0) {
                sum.packets += old.packets;
                sum.bytes += old.bytes;
            }
        }
        Ok((all, ipv6))
    }

    /// The counters of a per-CPU array of `grouping`'s shape, summed over CPUs, by index; and
    /// the sum of the `u64` after each value's counters (when `grouping` has a tail).
    fn ungrouped(
        &self,
        fd: &OwnedFd,
        name: &str,
        grouping: Grouping,
    ) -> Result<(Vec<PortCounters>, u64)> {
        let (groups, tail) = self.summed(
            fd,
            name,
            grouping.groups,
            grouping.group as usize,
            grouping.tail as usize,
        )?;
        let ports = (0..BINDINGS_LEN)
            .map(|index| groups[grouping.offset(index)])
            .collect();
        Ok((ports, tail))
    }

    /// A per-CPU array of `len` entries of `per_entry` [`PortCounters`] each, then `tail`
    /// bytes, summed over CPUs: `len * per_entry` counters, and the sum of the `u64`s that
    /// start the tails (0 without one).
    fn summed(
        &self,
        fd: &OwnedFd,
        name: &str,
        len: u32,
        per_entry: usize,
        tail: usize,
    ) -> Result<(Vec<PortCounters>, u64)> {
        let cpus = sys::possible_cpus().map_err(|e| Error::io("cannot count", "CPUs", e))?;
        let counters = size_of::<PortCounters>() * per_entry;
        let value = counters + tail;
        let stride = value * cpus;
        let mut raw = vec![0u8; len as usize * stride];
        // The kernel copies a per-CPU entry in about 0.4 us: v5's PORT_STATS' 131,072 took
        // 55 ms on one core. Large arrays are read in parallel batches, one a thread.
        let threads = if len >= PARALLEL_FROM {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_READERS))
        } else {
            1
        };
        let per_thread = len.div_ceil(u32::try_from(threads).unwrap_or(1));
        let fd = fd.as_fd();
        let read = if threads == 1 {
            sys::lookup_array_batch_at(fd, 0, len, stride, &mut raw)
        } else {
            std::thread::scope(|scope| {
                let batches: Vec<_> = (0u32..)
                    .zip(raw.chunks_mut(per_thread as usize * stride))
                    .map(|(i, chunk)| {
                        let count = u32::try_from(chunk.len() / stride).expect("at most len");
                        scope.spawn(move || {
                            sys::lookup_array_batch_at(fd, i * per_thread, count, stride, chunk)
                        })
                    })
                    .collect();
                batches
                    .into_iter()
                    .try_for_each(|b| b.join().expect("a batch lookup does not panic"))
            })
        };
        read.map_err(|e| Error::io("cannot read", self.dir.join(name), e))?;
        let mut sums = vec![PortCounters::default(); len as usize * per_entry];
        let mut tails = 0u64;
        for (entry, per_cpu) in sums
            .chunks_exact_mut(per_entry)
            .zip(raw.chunks_exact(stride))
        {
            for cpu in per_cpu.chunks_exact(value) {
                let (cpu, rest) = cpu.split_at(counters);
                for (sum, c) in entry
                    .iter_mut()
                    .zip(cpu.chunks_exact(size_of::<PortCounters>()))
                {
                    let c: PortCounters = bytemuck::pod_read_unaligned(c);
                    sum.packets += c.packets;
                    sum.bytes += c.bytes;
                }
                if let Some(t) = rest.get(..size_of::<u64>()) {
                    tails += bytemuck::pod_read_unaligned::<u64>(t);
                }
            }
        }
        Ok((sums, tails))
    }

    /// `GLOBALS` and `GLOBALS2`, summed over CPUs and added.
    fn globals(&self) -> Result<Globals> {
        let cpus = sys::possible_cpus().map_err(|e| Error::io("cannot count", "CPUs", e))?;
        let read = |fd: &OwnedFd, name: &str, size: usize| -> Result<Vec<u8>> {
            let mut raw = vec![0u8; size * cpus];
            sys::lookup(fd.as_fd(), &0u32.to_ne_bytes(), &mut raw)
                .map_err(|e| Error::io("cannot read", self.dir.join(name), e))?;
            Ok(raw)
        };
        let v2 = read(&self.globals, "GLOBALS", size_of::<GlobalCounters>())?;
        let v3 = read(&self.globals2, GLOBALS2, size_of::<Globals>())?;
        let mut sum = Globals::default();
        for (a, b) in v2
            .chunks_exact(size_of::<GlobalCounters>())
            .zip(v3.chunks_exact(size_of::<Globals>()))
        {
            sum.add(&Globals::from_maps(
                &bytemuck::pod_read_unaligned(a),
                &bytemuck::pod_read_unaligned(b),
            ));
        }
        Ok(sum)
    }

    /// Reads the whole `BINDINGS` array.
    pub(crate) fn read_bindings(&self) -> Result<Vec<Binding>> {
        let mut all = self.read_raw_bindings()?;
        // The data path's flag is the scope maps' business, not the binding's.
        for b in &mut all {
            b.action &= !action::SCOPED;
        }
        Ok(all)
    }

    /// Every `BINDINGS` entry as the data path reads it, the `SCOPED` flag included: the one
    /// value, through a read-only memory mapping, or (a descriptor opened read-only, which
    /// cannot be mapped) one lookup.
    pub(crate) fn read_raw_bindings(&self) -> Result<Vec<Binding>> {
        read_bindings(&self.bindings, 1)
            .map_err(|e| Error::io("cannot read", self.dir.join("BINDINGS"), e))
    }

    /// Copies the bindings of the instance pinned in `old` (this layout's `BINDINGS`, or
    /// the array of one entry a port of layouts v2-v7) into this instance's, which no
    /// program reads yet.
    pub(crate) fn copy_bindings_from(&self, old: &Path) -> Result<()> {
        let path = old.join("BINDINGS");
        // Read-write: a descriptor opened read-only cannot be mapped shared.
        let fd = sys::obj_get(&path, false).map_err(|e| Error::io("cannot open", &path, e))?;
        let entries = sys::map_info(fd.as_fd())
            .map_err(|e| Error::io("cannot inspect", &path, e))?
            .max_entries;
        let all = read_bindings(&fd, entries).map_err(|e| Error::io("cannot read", &path, e))?;
        self.write_table(&all)
    }

    /// Writes `value` at every port of `ports`, one batch, keeping the `SCOPED` flag of the
    /// ports that have scoped bindings.
    pub(crate) fn write_bindings(&self, ports: PortSpec, value: &Binding) -> Result<()> {
        let scope = self.scope_maps()?;
        let keys: Vec<u32> = ports
            .ports()
            .map(|p| port_index(ports.proto.index(), p))
            .collect();
        let values: Vec<Binding> = keys
            .iter()
            .map(|&index| flagged(*value, scope.scoped(index)))
            .collect();
        self.write_raw_bindings(&keys, &values)
    }

    /// Writes `BINDINGS` values as they are, flag included: the table read, changed at
    /// `keys`, and written back whole in one `BPF_MAP_UPDATE_ELEM`, so that a writer killed
    /// at any instant has changed every entry or none (a signal does not stop a system call
    /// midway). The data path sees the entries change one by one during the kernel's copy,
    /// each rewritten with its own bytes or its new ones, as the batch update of layouts
    /// before v8 did.
    pub(crate) fn write_raw_bindings(&self, keys: &[u32], values: &[Binding]) -> Result<()> {
        let mut all = self.read_raw_bindings()?;
        for (&key, value) in keys.iter().zip(values) {
            all[key as usize] = *value;
        }
        self.write_table(&all)
    }

    /// Writes the whole table (`all`, indexed like the map) in one `BPF_MAP_UPDATE_ELEM`.
    fn write_table(&self, all: &[Binding]) -> Result<()> {
        sys::update(
            self.bindings.as_fd(),
            &0u32.to_ne_bytes(),
            bytemuck::cast_slice(all),
        )
        .map_err(|e| Error::io("cannot write", self.dir.join("BINDINGS"), e))
    }

    /// Writes every port's binding (`all`, indexed like the map), in one update.
    pub(crate) fn write_all_bindings(&self, all: &[Binding]) -> Result<()> {
        self.write_table(all)
    }

    /// As [`Maps::write_all_bindings`], with the `SCOPED` flag set on the ports that have
    /// scope tables (`all` holds the bindings without the flag, as read).
    pub(crate) fn write_all_bindings_flagged(&self, all: &[Binding]) -> Result<()> {
        let scope = self.scope_maps()?;
        let flagged: Vec<Binding> = (0u32..)
            .zip(all)
            .map(|(index, b)| flagged(*b, scope.scoped(index)))
            .collect();
        self.write_all_bindings(&flagged)
    }

    /// The ifindex in each devmap slot.
    pub(crate) fn read_slots(&self) -> Result<Vec<Option<u32>>> {
        (0..REDIRECT_SLOTS)
            .map(|slot| {
                let mut value = [0u8; DEVMAP_VALUE as usize];
                let found = sys::lookup(self.redirect.as_fd(), &slot.to_ne_bytes(), &mut value)
                    .map_err(|e| Error::io("cannot read", self.dir.join("REDIRECT"), e))?;
                Ok(found.then(|| u32::from_ne_bytes([value[0], value[1], value[2], value[3]])))
            })
            .collect()
    }

    /// Points devmap `slot` at `ifindex`, resolved in `scope`'s namespace (the devmap
    /// resolves an ifindex in its writer's network namespace).
    pub(crate) fn set_slot(&self, scope: &Scope, slot: u32, ifindex: u32) -> Result<()> {
        let mut value = [0u8; DEVMAP_VALUE as usize];
        value[..4].copy_from_slice(&ifindex.to_ne_bytes());
        scope
            .run(|| sys::update(self.redirect.as_fd(), &slot.to_ne_bytes(), &value))?
            .map_err(|e| Error::io("cannot write", self.dir.join("REDIRECT"), e))
    }

    /// Empties the devmap slots no binding uses any more.
    pub(crate) fn collect_slots(&self, bindings: &[Binding]) -> Result<()> {
        let slots = self.read_slots()?;
        for (slot, ifindex) in (0u32..).zip(slots) {
            if ifindex.is_some()
                && !bindings
                    .iter()
                    .any(|b| b.action == action::REDIRECT && b.slot == slot)
            {
                sys::delete(self.redirect.as_fd(), &slot.to_ne_bytes())
                    .map_err(|e| Error::io("cannot write", self.dir.join("REDIRECT"), e))?;
            }
        }
        Ok(())
    }
}

/// `b` with the data path's `SCOPED` flag set when `scoped`.
pub(crate) fn flagged(mut b: Binding, scoped: bool) -> Binding {
    if scoped {
        b.action |= action::SCOPED;
    } else {
        b.action &= !action::SCOPED;
    }
    b
}

/// Totals from the per-port counters and the global ones.
pub(crate) fn totals(ports: &[PortCounters], globals: &Globals) -> Totals {
    let mut outcomes = globals.not_demuxed();
    outcomes[outcome::DEMUXED] = ports.iter().map(|c| c.packets).sum();
    Totals {
        packets: outcomes.iter().sum(),
        outcomes,
        demuxed_ipv6: globals.frames[Globals::DEMUXED_IPV6],
        demuxed_bytes: ports.iter().map(|c| c.bytes).sum(),
        redirected: globals.frames[Globals::REDIRECTED],
        redirect_fallback: globals.frames[Globals::REDIRECT_FALLBACK],
    }
}

/// The [`Action`] of a binding, naming the redirect target from the facade's slot names.
pub(crate) fn describe(b: &Binding, slot_names: &[Option<String>]) -> Action {
    match b.action {
        action::DROP => Action::Drop,
        action::REDIRECT => Action::Redirect(
            slot_names
                .get(b.slot as usize)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "(gone)".to_owned()),
        ),
        _ => Action::Pass,
    }
}
pub(crate) fn low16(index: u32) -> u16 {
    (index & 0xffff) as u16
}

pub(crate) fn owner_str(b: &Binding) -> String {
    let end = b.owner.iter().position(|&c| c == 0).unwrap_or(OWNER_LEN);
    String::from_utf8_lossy(&b.owner[..end]).into_owned()
}
/// Runs of consecutive bound ports with equal bindings, as (first index, last index, binding):
/// a run never crosses from one protocol's half of the array into the other's.
pub(crate) fn coalesce(all: &[Binding]) -> Vec<(u32, u32, Binding)> {
    let mut ranges: Vec<(u32, u32, Binding)> = Vec::new();
    for (index, b) in (0u32..).zip(all) {
        if b.action == action::UNBOUND {
            continue;
        }
        match ranges.last_mut() {
            Some((_, last, prev)) if *last + 1 == index && prev == b && index & 0xffff != 0 => {
                *last = index;
            }
            _ => ranges.push((index, index, *b)),
        }
    }
    ranges
}
/// Copies every filled slot of the devmap pinned at `from` into the one pinned at `to`, in
/// `scope`'s namespace (a devmap resolves an ifindex in its writer's namespace).
pub(crate) fn copy_devmap(scope: &Scope, from: &Path, to: &Path) -> Result<()> {
    let old = sys::obj_get_readable(from).map_err(|e| Error::io("cannot open", from, e))?;
    let new = sys::obj_get(to, false).map_err(|e| Error::io("cannot open", to, e))?;
    for slot in 0..REDIRECT_SLOTS {
        let mut value = [0u8; DEVMAP_VALUE as usize];
        let found = sys::lookup(old.as_fd(), &slot.to_ne_bytes(), &mut value)
            .map_err(|e| Error::io("cannot read", from, e))?;
        if found {
            // Only the ifindex: the slot holds no program.
            value[4..].fill(0);
            scope
                .run(|| sys::update(new.as_fd(), &slot.to_ne_bytes(), &value))?
                .map_err(|e| Error::io("cannot write", to, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytemuck::Zeroable as _;

    use super::*;

    fn bound(act: u32, owner: u8) -> Binding {
        let mut b = Binding::zeroed();
        b.action = act;
        b.owner[0] = owner;
        b
    }

    #[test]
    fn ranges_coalesce_runs_of_equal_bindings() {
        let mut all = vec![<Binding as bytemuck::Zeroable>::zeroed(); BINDINGS_LEN as usize];
        all[7000..=7099].fill(bound(action::PASS, 0));
        all[7100] = bound(action::PASS, b'x'); // another owner: a run of its own
        all[7101] = bound(action::DROP, 0);
        all[7103] = bound(action::DROP, 0); // a gap: a run of its own
        // tcp/65535 and udp/0 are neighbours in the array, never in a range.
        all[0xffff] = bound(action::DROP, 0);
        all[0x1_0000] = bound(action::DROP, 0);
        let pass = bound(action::PASS, 0);
        let drop = bound(action::DROP, 0);
        assert_eq!(
            coalesce(&all),
            [
                (7000, 7099, pass),
                (7100, 7100, bound(action::PASS, b'x')),
                (7101, 7101, drop),
                (7103, 7103, drop),
                (0xffff, 0xffff, drop),
                (0x1_0000, 0x1_0000, drop),
            ]
        );
        assert!(coalesce(&[]).is_empty());
    }
}
