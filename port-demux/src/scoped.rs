//! Changing address-scoped bindings: many (protocol, port, prefix) bindings added or removed
//! in one batch, each affected port's interval tables rebuilt and switched to atomically.
//!
//! A port's new table is written into records no port points at, then the port's `SCOPES`
//! word (start and count, 8 bytes) is switched with one atomic store through the memory
//! mapping: the data path sees the old table or the new one, never a half-written one. The
//! old records become free for a later change: every change is a separate locked command,
//! while a frame's search lasts nanoseconds (and, within one change, records freed by it are
//! not reused). A port gets the `SCOPED` flag in its binding after its tables are in place,
//! and loses it before they go.
//!
//! `apply` replaces the whole set at once instead ([`Successor`]): the successor's new scope
//! maps are filled from record 0 before its program replaces the running one through the link.

use bytemuck::Zeroable as _;
use port_demux_common::{
    PortScope, SCOPE_RECORDS, ScopeV4, ScopeV6, ScopedBinding, action, model::ScopedRule,
};

use crate::{
    Error, Result,
    maps::{Maps, ScopeMaps, flagged},
    prefix::{PortTables, rule_of},
};

/// The live scoped bindings, by id.
pub(crate) type Live = Vec<(u32, ScopedBinding)>;

/// The live scoped bindings, as (id, entry).
pub(crate) fn live(maps: &Maps) -> Result<Live> {
    Ok((0u32..)
        .zip(maps.read_scoped()?)
        .filter(|(_, b)| b.action != action::UNBOUND)
        .collect())
}

/// Removes the bindings `remove` (ids of live entries) and adds `add`, all or nothing: the
/// capacity (ids, records of each family) is checked before anything is written.
pub(crate) fn change(
    maps: &Maps,
    live: &[(u32, ScopedBinding)],
    remove: &[u32],
    add: &[ScopedBinding],
) -> Result<()> {
    let used: std::collections::HashSet<u32> = live.iter().map(|(id, _)| *id).collect();
    let all_ids = u32::try_from(maps_len()).expect("small");
    let new_ids: Vec<u32> = (0..all_ids)
        .filter(|id| !used.contains(id))
        .take(add.len())
        .collect();
    if new_ids.len() < add.len() {
        return Err(Error::Capacity {
            what: "scoped bindings",
            need: add.len(),
            free: new_ids.len(),
            capacity: maps_len(),
        });
    }
    let removed: std::collections::HashSet<u32> = remove.iter().copied().collect();
    let mut ports: Vec<u32> = add.iter().map(|b| b.index).collect();
    ports.extend(
        live.iter()
            .filter(|(id, _)| removed.contains(id))
            .map(|(_, b)| b.index),
    );
    ports.sort_unstable();
    ports.dedup();
    let rules: Vec<ScopedRule> = live
        .iter()
        .filter(|(id, _)| !removed.contains(id))
        .map(|(id, b)| rule_of(*id, b))
        .chain(new_ids.iter().zip(add).map(|(id, b)| rule_of(*id, b)))
        .collect();
    let sm = maps.scope_maps()?;
    // Plan every table before writing anything.
    let mut free4 = Regions::used_by(&sm, false);
    let mut free6 = Regions::used_by(&sm, true);
    let mut plan = Vec::new();
    let mut by_port: std::collections::HashMap<u32, Vec<ScopedRule>> =
        std::collections::HashMap::new();
    for r in &rules {
        if ports.binary_search(&r.index).is_ok() {
            by_port.entry(r.index).or_default().push(*r);
        }
    }
    for &index in &ports {
        let mine = by_port.remove(&index).unwrap_or_default();
        let t = PortTables::build(&mine);
        let w4 = free4.place(t.v4.len(), "IPv4 interval records")?;
        let w6 = free6.place(t.v6.len(), "IPv6 interval records")?;
        plan.push((index, t, w4, w6));
    }
    // Counters of new bindings start at zero; their entries go in before any table names
    // them.
    maps.zero_scoped_stats(&new_ids)?;
    maps.write_scoped(&new_ids, add)?;
    let bindings = maps.read_bindings()?;
    let mut flags = (Vec::new(), Vec::new());
    for (index, t, w4, w6) in &plan {
        write_records(&sm, t, *w4, *w6);
        let now = *w4 != 0 || *w6 != 0;
        if !now && sm.scoped(*index) {
            // Flag off first, then the tables go.
            maps.write_raw_bindings(&[*index], &[flagged(bindings[*index as usize], false)])?;
        }
        sm.set_word(*index, false, *w4);
        sm.set_word(*index, true, *w6);
        if now {
            flags.0.push(*index);
            flags.1.push(flagged(bindings[*index as usize], true));
        }
    }
    maps.write_raw_bindings(&flags.0, &flags.1)?;
    maps.write_scoped(remove, &vec![ScopedBinding::zeroed(); remove.len()])
}

/// Entries of `SCOPED` and `SCOPED_STATS`.
fn maps_len() -> usize {
    port_demux_common::SCOPED_LEN as usize
}

/// Copies a port's tables into the records its new words point at.
fn write_records(sm: &ScopeMaps, t: &PortTables, w4: u64, w6: u64) {
    if w4 != 0 {
        let (start, _) = PortScope::unpack(w4);
        sm.v4.write(
            start as usize * size_of::<ScopeV4>(),
            bytemuck::cast_slice(&t.v4),
        );
    }
    if w6 != 0 {
        let (start, _) = PortScope::unpack(w6);
        sm.v6.write(
            start as usize * size_of::<ScopeV6>(),
            bytemuck::cast_slice(&t.v6),
        );
    }
}

/// The records of one family in use (by any port's current table, or planned in this change),
/// as sorted (start, end) ranges.
struct Regions(Vec<(u32, u32)>);

impl Regions {
    fn used_by(sm: &ScopeMaps, v6: bool) -> Self {
        let mut used: Vec<(u32, u32)> = (0..port_demux_common::BINDINGS_LEN)
            .map(|index| PortScope::unpack(sm.word(index, v6)))
            .filter(|&(_, count)| count != 0)
            .map(|(start, count)| (start, start + count))
            .collect();
        used.sort_unstable();
        Self(used)
    }

    /// The packed word of `len` records placed in the first gap that holds them (0 for an
    /// empty table).
    fn place(&mut self, len: usize, what: &'static str) -> Result<u64> {
        if len == 0 {
            return Ok(0);
        }
        let want = u32::try_from(len).unwrap_or(u32::MAX);
        let mut at = 0u32;
        let mut free = 0usize;
        let mut found = None;
        for (i, &(start, end)) in self.0.iter().enumerate() {
            let gap = start.saturating_sub(at);
            free += gap as usize;
            if found.is_none() && gap >= want {
                found = Some((at, i));
            }
            at = at.max(end);
        }
        let tail = SCOPE_RECORDS.saturating_sub(at);
        free += tail as usize;
        if found.is_none() && tail >= want {
            found = Some((at, self.0.len()));
        }
        let Some((start, i)) = found else {
            return Err(Error::Capacity {
                what,
                need: len,
                free,
                capacity: SCOPE_RECORDS as usize,
            });
        };
        self.0.insert(i, (start, start + want));
        Ok(PortScope::pack(start, want))
    }
}

/// A whole set of scoped bindings for a successor's new scope maps (`apply`): each entry with
/// its id and the tables built from them.
#[derive(Debug)]
pub(crate) struct Successor {
    /// `(id, entry)` of every scoped binding of the new set.
    pub(crate) entries: Vec<(u32, ScopedBinding)>,
    /// Ids whose counters start at zero: the bindings that are not in the old set unchanged.
    pub(crate) fresh: Vec<u32>,
    /// Whether the old `SCOPED_STATS` serves the successor (every binding of the old set that
    /// is unchanged keeps its id and its counters); else a new, zeroed map does.
    pub(crate) keep_stats: bool,
    tables: crate::prefix::Tables,
}

impl Successor {
    /// Gives each binding of `wanted` an id: a binding of the old set (`old`, live) that is
    /// unchanged (the same entry: port, prefix, action, slot, owner) keeps its own, so that
    /// its counters, in the kept `SCOPED_STATS`, carry over; every other one takes an id no
    /// old binding uses (the running program never counts under it, so zeroing it before the
    /// swap leaves the old state whole). When the old and new sets together need more ids
    /// than there are, every binding gets a new one in a new `SCOPED_STATS` (all counters
    /// restart). Checks the capacity of the interval tables.
    ///
    /// # Errors
    /// [`Error::Capacity`] when the set does not fit the tables.
    pub(crate) fn plan(old: &[(u32, ScopedBinding)], wanted: &[ScopedBinding]) -> Result<Self> {
        if wanted.len() > maps_len() {
            return Err(Error::Capacity {
                what: "scoped bindings",
                need: wanted.len(),
                free: maps_len(),
                capacity: maps_len(),
            });
        }
        let by_value: std::collections::HashMap<[u8; 48], u32> =
            old.iter().map(|(id, b)| (key(b), *id)).collect();
        let used: std::collections::HashSet<u32> = old.iter().map(|(id, _)| *id).collect();
        let all_ids = u32::try_from(maps_len()).expect("small");
        let mut free = (0..all_ids).filter(|id| !used.contains(id));
        let mut entries = Vec::with_capacity(wanted.len());
        let mut fresh = Vec::new();
        let mut keep_stats = true;
        for b in wanted {
            let id = if let Some(&id) = by_value.get(&key(b)) {
                id
            } else if let Some(id) = free.next() {
                fresh.push(id);
                id
            } else {
                keep_stats = false;
                break;
            };
            entries.push((id, *b));
        }
        if !keep_stats {
            entries = (0..).zip(wanted.iter().copied()).collect();
            fresh = entries.iter().map(|(id, _)| *id).collect();
        }
        let rules: Vec<ScopedRule> = entries.iter().map(|(id, b)| rule_of(*id, b)).collect();
        let tables = crate::prefix::Tables::build(&rules);
        for (len, what) in [
            (tables.v4.len(), "IPv4 interval records"),
            (tables.v6.len(), "IPv6 interval records"),
        ] {
            if len > SCOPE_RECORDS as usize {
                return Err(Error::Capacity {
                    what,
                    need: len,
                    free: SCOPE_RECORDS as usize,
                    capacity: SCOPE_RECORDS as usize,
                });
            }
        }
        Ok(Self {
            entries,
            fresh,
            keep_stats,
            tables,
        })
    }

    /// Fills the successor's scope maps (`maps`: new `SCOPED`, `SCOPES`, `SCOPE_V4`,
    /// `SCOPE_V6`, which nothing runs against yet) and zeroes the counters of the fresh ids.
    pub(crate) fn fill(&self, maps: &Maps) -> Result<()> {
        let (ids, values): (Vec<u32>, Vec<ScopedBinding>) = self.entries.iter().copied().unzip();
        maps.write_scoped(&ids, &values)?;
        if self.keep_stats {
            maps.zero_scoped_stats(&self.fresh)?;
        }
        let sm = maps.scope_maps()?;
        sm.v4.write(0, bytemuck::cast_slice(&self.tables.v4));
        sm.v6.write(0, bytemuck::cast_slice(&self.tables.v6));
        for (index, scope) in &self.tables.scopes {
            sm.set_word(*index, false, scope.v4);
            sm.set_word(*index, true, scope.v6);
        }
        Ok(())
    }

    /// The scoped bindings' action, slot and owner, as the redirect slots' users.
    pub(crate) fn slot_users(&self) -> impl Iterator<Item = port_demux_common::Binding> + '_ {
        self.entries
            .iter()
            .map(|(_, b)| port_demux_common::Binding {
                action: b.action,
                slot: b.slot,
                owner: b.owner,
            })
    }
}

/// A `SCOPED` entry as bytes, to find an unchanged one.
fn key(b: &ScopedBinding) -> [u8; 48] {
    bytemuck::cast(*b)
}

#[cfg(test)]
mod tests {
    use port_demux_common::{family, port_index};

    use super::*;

    /// udp/`port` dropped or passed on 10.0.`host`/32.
    fn entry(port: u16, host: u16, act: u32) -> ScopedBinding {
        let mut b = ScopedBinding::zeroed();
        b.index = port_index(port_demux_common::PROTO_UDP, port);
        b.action = act;
        b.family = family::IPV4;
        b.len = 32;
        let [hi, lo] = host.to_be_bytes();
        b.addr[..4].copy_from_slice(&[10, 0, hi, lo]);
        b
    }

    #[test]
    fn unchanged_bindings_keep_their_ids_others_take_unused_ones() {
        let old = [
            (0, entry(53, 1, action::DROP)),
            (1, entry(53, 2, action::DROP)),
            (5, entry(53, 3, action::DROP)),
        ];
        let wanted = [
            entry(53, 3, action::DROP),
            entry(53, 2, action::PASS),
            entry(53, 4, action::DROP),
        ];
        let s = Successor::plan(&old, &wanted).unwrap();
        assert!(s.keep_stats);
        let ids: Vec<u32> = s.entries.iter().map(|(id, _)| *id).collect();
        // The unchanged one keeps 5; the changed and the new one take 2 and 3, which no old
        // binding uses (1, the changed one's old id, is still counted by the old program).
        assert_eq!(ids, [5, 2, 3]);
        assert_eq!(s.fresh, [2, 3]);
        assert_eq!(s.tables.scopes.len(), 1);
        // Before .2, .2, .3, .4, after .4.
        assert_eq!(s.tables.v4.len(), 5);
    }

    #[test]
    fn too_many_ids_for_both_sets_restart_every_counter() {
        let len = u16::try_from(maps_len()).unwrap();
        // Every id used, by one port's addresses (a table of one record per address, and one
        // after them).
        let old: Vec<(u32, ScopedBinding)> = (0..len)
            .map(|h| (u32::from(h), entry(53, h, action::DROP)))
            .collect();
        let mut wanted: Vec<ScopedBinding> = (0..len).map(|h| entry(53, h, action::DROP)).collect();
        wanted[7] = entry(53, 7, action::PASS);
        let s = Successor::plan(&old, &wanted).unwrap();
        assert!(!s.keep_stats);
        assert!(
            s.entries
                .iter()
                .enumerate()
                .all(|(i, (id, _))| *id as usize == i)
        );
        assert_eq!(s.fresh.len(), maps_len());
        wanted.push(entry(54, 0, action::DROP));
        assert!(matches!(
            Successor::plan(&old, &wanted),
            Err(Error::Capacity {
                what: "scoped bindings",
                ..
            })
        ));
    }
}
