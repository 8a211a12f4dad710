//! [`PortDemux`]: the facade over one instance of the data path on one interface, found through
//! its pins. The pin layout is [`crate::layout`], map access [`crate::maps`], loading and
//! unloading [`crate::lifecycle`].

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::programs::ProgramInfo;
use bytemuck::Zeroable as _;
use ipnet::IpNet;
use port_demux_common::{
    Binding, Globals, LAYOUT_VERSION, LAYOUT_VERSION_V2, LAYOUT_VERSION_V3, LAYOUT_VERSION_V4,
    LAYOUT_VERSION_V5, LAYOUT_VERSION_V6, LAYOUT_VERSION_V7, MODE_SKB, Meta, OWNER_LEN,
    PortCounters, REDIRECT_SLOTS, ScopedBinding, action, port_index,
};

use crate::{
    Action, BindOptions, BindingRange, DefaultAction, Error, LoadOptions, LoadReport, Mode,
    PortSpec, PortStat, Proto, Result, Scope, Stats, Status, Totals, UpgradeReport,
    instance::{self, Found},
    layout::{self, DirLock, LINK_PIN, PROG_PIN},
    lifecycle,
    maps::{self, Maps},
    prefix::{addr_bytes, prefix_key, prefix_of},
    scoped, sys,
};

/// `dst` without repeats, in order.
fn dedup(dst: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::with_capacity(dst.len());
    let mut seen = std::collections::HashSet::new();
    for net in dst {
        if seen.insert(*net) {
            out.push(*net);
        }
    }
    out
}

/// Each (port, prefix) of `ports` times `dst`, with its live scoped binding if it has one
/// (looked up in a map of the live ones: a batch of 10,000 prefixes against as many bound).
fn pairs<'a>(
    live: &'a [(u32, ScopedBinding)],
    ports: PortSpec,
    dst: &'a [IpNet],
) -> impl Iterator<Item = (u16, &'a IpNet, Option<(u32, ScopedBinding)>)> + 'a {
    let by_key: std::rc::Rc<std::collections::HashMap<(u32, IpNet), (u32, ScopedBinding)>> =
        std::rc::Rc::new(
            live.iter()
                .map(|&(id, b)| ((b.index, prefix_of(&b)), (id, b)))
                .collect(),
        );
    ports.ports().flat_map(move |port| {
        let index = port_index(ports.proto.index(), port);
        let by_key = std::rc::Rc::clone(&by_key);
        dst.iter()
            .map(move |net| (port, net, by_key.get(&(index, *net)).copied()))
    })
}

/// The `SCOPED` entry of (`index`, `net`) with `value`'s action, slot and owner.
pub(crate) fn scoped_value(index: u32, net: &IpNet, value: &Binding) -> ScopedBinding {
    let (family, _, len) = prefix_key(net);
    ScopedBinding {
        index,
        action: value.action,
        slot: value.slot,
        family,
        len,
        pad: [0; 2],
        addr: addr_bytes(net),
        owner: value.owner,
    }
}

/// A scoped binding's action, slot and owner as a [`Binding`].
fn as_binding(b: &ScopedBinding) -> Binding {
    Binding {
        action: b.action,
        slot: b.slot,
        owner: b.owner,
    }
}

/// One instance of port-demux on one interface, opened through its pins.
#[derive(Debug)]
pub struct PortDemux {
    scope: Scope,
    iface: String,
    dir: PathBuf,
    meta: Meta,
    /// The pinned `bpf_link`'s id: what identifies the instance while it lives.
    link_id: u32,
    maps: Maps,
}

impl PortDemux {
    /// Loads the program, attaches it to `iface` and pins program, link and maps; the data path
    /// keeps running after this process exits. All or nothing: on error no pin is left.
    ///
    /// # Errors
    /// Unknown interface, already loaded, a foreign program (unless `force`), attach or load
    /// failures, missing privileges.
    pub fn load(scope: &Scope, iface: &str, opts: &LoadOptions) -> Result<(Self, LoadReport)> {
        lifecycle::load(scope, iface, opts, || Self::open(scope, iface))
    }

    /// Opens the instance running on `iface` (its name now) through its pins.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], [`Error::Detached`] (a stale instance of this namespace by that
    /// name), [`Error::LayoutV2`], [`Error::Layout`], [`Error::Privileges`].
    pub fn open(scope: &Scope, iface: &str) -> Result<Self> {
        Self::open_resolved(
            || Ok((iface.to_owned(), lifecycle::find(scope, iface)?)),
            scope,
        )
    }

    /// Opens the instance `resolve` finds. A writer may rename the folder away between the
    /// finding and the opening (putting an upgrade in place, or retiring its predecessor):
    /// then it is found again where it went, a few times at most (each time a writer renamed
    /// it), rather than reported gone. The folder is told by its inode, not its path: a commit
    /// moves the predecessor away and its successor in under the same name, so a reader that
    /// lost a pin in between finds the path there again, holding another folder.
    fn open_resolved(resolve: impl Fn() -> Result<(String, Found)>, scope: &Scope) -> Result<Self> {
        let folder = |dir: &Path| fs::metadata(dir).ok().map(|m| m.ino());
        let mut tries = 3;
        loop {
            let (iface, found) = resolve()?;
            let before = folder(found.dir());
            match Self::open_found(scope, &iface, &found) {
                Err(_) if tries > 1 && (before.is_none() || folder(found.dir()) != before) => {
                    tries -= 1;
                }
                opened => return opened,
            }
        }
    }

    fn open_found(scope: &Scope, iface: &str, found: &Found) -> Result<Self> {
        let dir = found.dir().to_owned();
        let meta = layout::read_meta(&dir)?;
        if meta.layout_version == LAYOUT_VERSION_V2 {
            return Err(Error::LayoutV2 {
                path: dir,
                iface: iface.to_owned(),
            });
        }
        if meta.layout_version == LAYOUT_VERSION_V3 {
            return Err(Error::LayoutV3 {
                path: dir,
                iface: iface.to_owned(),
            });
        }
        if meta.layout_version == LAYOUT_VERSION_V4 {
            return Err(Error::LayoutV4 {
                path: dir,
                iface: iface.to_owned(),
            });
        }
        if meta.layout_version == LAYOUT_VERSION_V5 {
            return Err(Error::LayoutV5 {
                path: dir,
                iface: iface.to_owned(),
            });
        }
        if meta.layout_version == LAYOUT_VERSION_V6 {
            return Err(Error::LayoutV6 {
                path: dir,
                iface: iface.to_owned(),
            });
        }
        if meta.layout_version == LAYOUT_VERSION_V7 {
            return Err(Error::LayoutV7 {
                path: dir,
                iface: iface.to_owned(),
            });
        }
        if meta.layout_version != LAYOUT_VERSION {
            return Err(Error::Layout {
                path: dir,
                found: meta.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        let maps = Maps::open(&dir)?;
        Ok(Self {
            scope: scope.clone(),
            iface: iface.to_owned(),
            dir,
            meta,
            link_id: found.link.id,
            maps,
        })
    }

    /// Opens the only instance running in `scope`, for commands whose `-i` was left out.
    /// Stale instances are never chosen.
    ///
    /// # Errors
    /// [`Error::WhichInterface`] when none or several run.
    pub fn open_only(scope: &Scope) -> Result<Self> {
        Self::open_resolved(
            || {
                let mut running = instance::running_in(scope)?;
                match running.len() {
                    1 => Ok(running.remove(0)),
                    0 => Err(Error::NoneLoaded {
                        where_: scope.where_(),
                    }),
                    _ => Err(Error::WhichInterface {
                        loaded: running.into_iter().map(|(name, _)| name).collect(),
                    }),
                }
            },
            scope,
        )
    }

    /// Detaches the program and removes every pin of the instance on `iface` (running there,
    /// or a stale one this namespace loaded on an interface of that name).
    ///
    /// # Errors
    /// [`Error::NotLoaded`], or when a pin cannot be removed.
    pub fn unload(scope: &Scope, iface: &str) -> Result<()> {
        lifecycle::unload(scope, iface)
    }

    /// Replaces the running program with this build's, atomically through its `bpf_link`
    /// (`BPF_LINK_UPDATE`): bindings, counters and redirect targets stay, no frame goes
    /// unprocessed. Migrates layout v2 and the folders of main's builds. Refused when the pins'
    /// layout is neither this build's nor v2.
    ///
    /// Only `opts.debug` and `opts.verifier_log` are used: the instance keeps its mode and
    /// default action.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], [`Error::Layout`], [`Error::Detached`], [`Error::Verifier`], load
    /// or update failures.
    pub fn upgrade(scope: &Scope, iface: &str, opts: &LoadOptions) -> Result<UpgradeReport> {
        lifecycle::upgrade(scope, iface, opts)
    }

    /// The interface.
    #[must_use]
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The pin folder.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// The scope it was opened in.
    #[must_use]
    pub const fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Binds every port of `ports` to `action`; all or nothing. A port already bound is a
    /// conflict unless `opts.replace`.
    ///
    /// # Errors
    /// [`Error::Conflict`], [`Error::BadRedirectTarget`], [`Error::NoRedirectSlot`],
    /// [`Error::Detached`].
    pub fn bind(&self, ports: PortSpec, act: &Action, opts: &BindOptions) -> Result<()> {
        check_owner(&opts.owner)?;
        let _lock = self.lock_writers()?;
        let current = self.maps.read_bindings()?;
        let at = |port: u16| current[port_index(ports.proto.index(), port) as usize];
        if !opts.replace
            && let Some(first) = ports.ports().find(|&p| at(p).action != action::UNBOUND)
        {
            let b = at(first);
            let same = |p: u16| {
                let other = at(p);
                other.action == b.action && other.slot == b.slot && other.owner == b.owner
            };
            let last = (first..=ports.last)
                .take_while(|&p| same(p))
                .last()
                .unwrap_or(first);
            let owner = maps::owner_str(&b);
            return Err(Error::Conflict {
                ports: PortSpec {
                    proto: ports.proto,
                    first,
                    last,
                },
                action: maps::describe(&b, &self.slot_names()?),
                dst: None,
                owner: (!owner.is_empty()).then_some(owner),
            });
        }
        let value = self.value_of(act, opts)?;
        self.maps.write_bindings(ports, &value)?;
        if opts.replace {
            self.maps.collect_slots(&self.slot_users()?)?;
        }
        Ok(())
    }

    /// Binds every (port, prefix) of `ports` times `dst` to `action` in one batch: a frame of a
    /// prefix's family whose destination address the prefix covers takes the most specific
    /// such binding of its port, before the port's binding without a prefix ([`bind`]). All or
    /// nothing: the same (protocol, prefix, port) bound already is a conflict unless
    /// `opts.replace` (which resets its counters); different prefixes on one port coexist.
    /// `dst` empty is [`bind`].
    ///
    /// [`bind`]: Self::bind
    ///
    /// # Errors
    /// [`Error::Conflict`], [`Error::Capacity`], [`Error::BadRedirectTarget`],
    /// [`Error::NoRedirectSlot`], [`Error::Detached`].
    pub fn bind_dst(
        &self,
        ports: PortSpec,
        dst: &[IpNet],
        act: &Action,
        opts: &BindOptions,
    ) -> Result<()> {
        if dst.is_empty() {
            return self.bind(ports, act, opts);
        }
        check_owner(&opts.owner)?;
        let dst = dedup(dst);
        let _lock = self.lock_writers()?;
        let live = scoped::live(&self.maps)?;
        let mut remove = Vec::new();
        for (port, net, found) in pairs(&live, ports, &dst) {
            if let Some((id, b)) = found {
                if !opts.replace {
                    return Err(self.conflict(
                        PortSpec::single(ports.proto, port),
                        *net,
                        &as_binding(&b),
                    )?);
                }
                remove.push(id);
            }
        }
        let value = self.value_of(act, opts)?;
        let add: Vec<ScopedBinding> = ports
            .ports()
            .flat_map(|port| {
                let index = port_index(ports.proto.index(), port);
                dst.iter().map(move |net| scoped_value(index, net, &value))
            })
            .collect();
        let done = scoped::change(&self.maps, &live, &remove, &add);
        if done.is_err() || opts.replace {
            // A redirect slot filled for a change that did not happen, or one no binding
            // uses any more.
            self.maps.collect_slots(&self.slot_users()?)?;
        }
        done
    }

    /// Removes the bindings of every port of `ports`; all or nothing: every one must be bound.
    /// Scoped bindings of these ports stay ([`unbind_dst`](Self::unbind_dst) removes those).
    ///
    /// # Errors
    /// [`Error::NotBound`], [`Error::Detached`].
    pub fn unbind(&self, ports: PortSpec) -> Result<()> {
        let _lock = self.lock_writers()?;
        let current = self.maps.read_bindings()?;
        let unbound =
            |p: u16| current[port_index(ports.proto.index(), p) as usize].action == action::UNBOUND;
        if let Some(first) = ports.ports().find(|&p| unbound(p)) {
            let last = (first..=ports.last)
                .take_while(|&p| unbound(p))
                .last()
                .unwrap_or(first);
            return Err(Error::NotBound {
                ports: PortSpec {
                    proto: ports.proto,
                    first,
                    last,
                },
                dst: None,
            });
        }
        self.maps.write_bindings(ports, &Binding::zeroed())?;
        self.maps.collect_slots(&self.slot_users()?)
    }

    /// Removes the binding of every (port, prefix) of `ports` times `dst`, in one batch; all or
    /// nothing: every one must be bound. `dst` empty is [`unbind`](Self::unbind).
    ///
    /// # Errors
    /// [`Error::NotBound`], [`Error::Detached`].
    pub fn unbind_dst(&self, ports: PortSpec, dst: &[IpNet]) -> Result<()> {
        if dst.is_empty() {
            return self.unbind(ports);
        }
        let dst = dedup(dst);
        let _lock = self.lock_writers()?;
        let live = scoped::live(&self.maps)?;
        let mut remove = Vec::new();
        for (port, net, found) in pairs(&live, ports, &dst) {
            let (id, _) = found.ok_or_else(|| Error::NotBound {
                ports: PortSpec::single(ports.proto, port),
                dst: Some(*net),
            })?;
            remove.push(id);
        }
        scoped::change(&self.maps, &live, &remove, &[])?;
        self.maps.collect_slots(&self.slot_users()?)
    }

    /// Every binding, as runs of consecutive ports with the same action and owner.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn bindings(&self) -> Result<Vec<BindingRange>> {
        self.current()?;
        let all = self.maps.read_bindings()?;
        let slot_names = self.slot_names()?;
        Ok(Self::ranges(&all, &slot_names, &scoped::live(&self.maps)?))
    }

    /// [`Self::stats`] and [`Self::bindings`] from one read of each map: the `BINDINGS` array
    /// (131,072 entries) and the scoped bindings are read once for both, what a reader that
    /// polls both (the exporter, at each scrape) saves.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn stats_and_bindings(&self) -> Result<(Stats, Vec<BindingRange>)> {
        self.current()?;
        let (globals, counters) = self.maps.counters()?;
        let (bindings, live) = self.bindings_and_live()?;
        let slot_names = self.slot_names()?;
        let stats = self.stats_from(&globals, &counters, &bindings, &slot_names, &live)?;
        Ok((stats, Self::ranges(&bindings, &slot_names, &live)))
    }

    /// The runs of `all` (`BINDINGS`) and of the `live` scoped bindings.
    fn ranges(
        all: &[Binding],
        slot_names: &[Option<String>],
        live: &[(u32, ScopedBinding)],
    ) -> Vec<BindingRange> {
        maps::coalesce(all)
            .into_iter()
            .map(|(first, last, b)| BindingRange {
                ports: PortSpec {
                    proto: Proto::from_index(first),
                    first: maps::low16(first),
                    last: maps::low16(last),
                },
                action: maps::describe(&b, slot_names),
                owner: maps::owner_str(&b),
                dst: None,
            })
            .chain(Self::scoped_ranges(live, slot_names))
            .collect()
    }

    /// The scoped bindings as runs of consecutive ports with the same prefix, action and
    /// owner, by protocol, first port and prefix.
    fn scoped_ranges(
        live: &[(u32, ScopedBinding)],
        slot_names: &[Option<String>],
    ) -> Vec<BindingRange> {
        let mut live = live.to_vec();
        live.sort_by_key(|(_, b)| (prefix_of(b), b.index));
        let mut out: Vec<BindingRange> = Vec::new();
        for (_, b) in &live {
            let (net, action, owner) = (
                prefix_of(b),
                maps::describe(&as_binding(b), slot_names),
                maps::owner_str(&as_binding(b)),
            );
            let proto = Proto::from_index(b.index);
            let port = maps::low16(b.index);
            if let Some(last) = out.last_mut()
                && last.dst == Some(net)
                && last.ports.proto == proto
                && u32::from(last.ports.last) + 1 == u32::from(port)
                && last.action == action
                && last.owner == owner
            {
                last.ports.last = port;
                continue;
            }
            out.push(BindingRange {
                ports: PortSpec::single(proto, port),
                action,
                owner,
                dst: Some(net),
            });
        }
        out.sort_by_key(|r| (r.ports.proto, r.ports.first, r.dst));
        out
    }

    /// Per-port and global counters, summed over CPUs.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn stats(&self) -> Result<Stats> {
        self.current()?;
        let (globals, counters) = self.maps.counters()?;
        let (bindings, live) = self.bindings_and_live()?;
        let slot_names = self.slot_names()?;
        self.stats_from(&globals, &counters, &bindings, &slot_names, &live)
    }

    /// `BINDINGS` (the `SCOPED` flag masked) and the live scoped bindings. A scoped binding
    /// acts only while its port carries the flag (set after its entry and tables are written,
    /// cleared before they go): with no flag set, `SCOPED` is not read, nor (in `stats_from`)
    /// `SCOPED_STATS`, 32,768 entries each, a quarter of a plain `stats`' time.
    fn bindings_and_live(&self) -> Result<(Vec<Binding>, scoped::Live)> {
        let mut bindings = self.maps.read_raw_bindings()?;
        let any_scoped = bindings.iter().any(|b| b.action & action::SCOPED != 0);
        for b in &mut bindings {
            b.action &= !action::SCOPED;
        }
        let live = if any_scoped {
            scoped::live(&self.maps)?
        } else {
            Vec::new()
        };
        Ok((bindings, live))
    }

    /// The [`Stats`] of counters and bindings read, reading the scoped bindings' counters.
    fn stats_from(
        &self,
        globals: &Globals,
        counters: &[PortCounters],
        bindings: &[Binding],
        slot_names: &[Option<String>],
        live: &[(u32, ScopedBinding)],
    ) -> Result<Stats> {
        let mut ports = Vec::new();
        for (index, (c, b)) in (0u32..).zip(counters.iter().zip(bindings)) {
            if c.packets == 0 && c.bytes == 0 && b.action == action::UNBOUND {
                continue;
            }
            ports.push(PortStat {
                proto: Proto::from_index(index),
                port: maps::low16(index),
                packets: c.packets,
                bytes: c.bytes,
                action: (b.action != action::UNBOUND).then(|| maps::describe(b, slot_names)),
                dst: None,
            });
        }
        let by_traffic = |a: &PortStat, b: &PortStat| {
            (b.packets, b.bytes)
                .cmp(&(a.packets, a.bytes))
                .then((a.proto, a.port, a.dst).cmp(&(b.proto, b.port, b.dst)))
        };
        ports.sort_by(by_traffic);
        let below = live.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
        let scoped_counters = if below == 0 {
            Vec::new()
        } else {
            self.maps.scoped_counters(below)?
        };
        let mut scoped: Vec<PortStat> = live
            .iter()
            .map(|(id, b)| {
                let c = scoped_counters[*id as usize];
                PortStat {
                    proto: Proto::from_index(b.index),
                    port: maps::low16(b.index),
                    packets: c.packets,
                    bytes: c.bytes,
                    action: Some(maps::describe(&as_binding(b), slot_names)),
                    dst: Some(prefix_of(b)),
                }
            })
            .collect();
        scoped.sort_by(by_traffic);
        Ok(Stats {
            ports,
            scoped,
            totals: maps::totals(counters, globals),
        })
    }

    /// The totals alone, summed over ports and CPUs.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn totals(&self) -> Result<Totals> {
        self.current()?;
        let (globals, counters) = self.maps.counters()?;
        Ok(maps::totals(&counters, &globals))
    }

    /// Attach mode, program id, whether it is attached, bindings.
    ///
    /// # Errors
    /// When the pins cannot be read.
    pub fn status(&self) -> Result<Status> {
        let found = self.current()?;
        let link = found.link;
        let (prog_id, attached) = self.program(&found)?;
        let iface = match link.ifindex {
            0 => None,
            ifindex => self.scope.ifname(ifindex)?,
        }
        .unwrap_or_else(|| self.iface.clone());
        let bound_ports = u32::try_from(
            self.maps
                .read_bindings()?
                .iter()
                .filter(|b| b.action != action::UNBOUND)
                .count(),
        )
        .unwrap_or(u32::MAX);
        Ok(Status {
            iface,
            ifindex: if link.ifindex == 0 {
                self.meta.ifindex
            } else {
                link.ifindex
            },
            mode: if self.meta.mode == MODE_SKB {
                Mode::Skb
            } else {
                Mode::Native
            },
            prog_id,
            attached,
            bound_ports,
            default_action: if self.meta.default_action == action::DROP {
                DefaultAction::Drop
            } else {
                DefaultAction::Pass
            },
            debug: self.meta.debug != 0,
            verified_insns: ProgramInfo::from_pin(found.dir().join(PROG_PIN))
                .ok()
                .and_then(|info| info.verified_instruction_count()),
            memlock_bytes: memlock(found.dir()).ok(),
            pin_dir: found.dir().to_owned(),
        })
    }

    /// Whether the interface runs the instance's pinned program now: [`Status::attached`]
    /// without the rest of [`Self::status`] (which reads the bindings and every pin's memory).
    ///
    /// # Errors
    /// When the pins cannot be read.
    pub fn attached(&self) -> Result<bool> {
        Ok(self.program(&self.current()?)?.1)
    }

    /// The program the instance `found` runs, and whether its interface runs it now.
    fn program(&self, found: &Found) -> Result<(u32, bool)> {
        let link = found.link;
        let now = match link.ifindex {
            0 => None,
            ifindex => instance::attached_prog(&self.scope, ifindex)?,
        };
        // A reader that cannot open the link (id 0) takes the program from the interface.
        let prog_id = if link.id == 0 {
            now.unwrap_or(0)
        } else {
            link.prog_id
        };
        Ok((prog_id, now.is_some() && now == Some(prog_id)))
    }

    /// The folder that pins this handle's instance now (it moves when its interface moves to
    /// another namespace, or an upgrade migrates it), found by its link's id.
    fn current(&self) -> Result<Found> {
        instance::by_link_id(self.scope.bpffs(), self.link_id, &self.dir)?.ok_or_else(|| {
            Error::Unloaded {
                iface: self.iface.clone(),
            }
        })
    }

    /// The writers' lock, then the check that this handle's instance is still pinned
    /// ([`Error::Unloaded`]) and runs on its interface ([`Error::Detached`]): a handle opened
    /// before another process unloaded (and perhaps loaded again) never writes into maps that
    /// no longer serve.
    fn lock_writers(&self) -> Result<DirLock> {
        let lock = DirLock::writers(self.scope.bpffs())?;
        instance::sweep(self.scope.bpffs(), &lock)?;
        let found = self.current()?;
        if found.link.id == 0 {
            // Recognised by its folder only: a writer must open the link (it cannot on a
            // bpffs mounted read-only, or without the rights), and says why.
            let path = found.dir().join(layout::LINK_PIN);
            sys::obj_get(&path, false).map_err(|e| Error::io("cannot open", &path, e))?;
        }
        lifecycle::check_attached(&self.scope, &self.iface, found.link)?;
        // `apply` swaps in a new bindings map: one opened before would be written in vain.
        if Maps::open(found.dir())?.bindings_id()? != self.maps.bindings_id()? {
            return Err(Error::Replaced {
                iface: self.iface.clone(),
            });
        }
        Ok(lock)
    }

    /// The `META` record it was opened with.
    pub(crate) const fn meta(&self) -> Meta {
        self.meta
    }

    /// Every binding that may hold a redirect slot: the ports' and the scoped ones.
    fn slot_users(&self) -> Result<Vec<Binding>> {
        let mut all = self.maps.read_bindings()?;
        all.extend(scoped::live(&self.maps)?.iter().map(|(_, b)| as_binding(b)));
        Ok(all)
    }

    /// The binding value of `act` and `opts`' owner (filling a redirect slot if needed).
    fn value_of(&self, act: &Action, opts: &BindOptions) -> Result<Binding> {
        let mut value = Binding::zeroed();
        value.owner[..opts.owner.len()].copy_from_slice(opts.owner.as_bytes());
        value.action = match act {
            Action::Pass => action::PASS,
            Action::Drop => action::DROP,
            Action::Redirect(target) => {
                value.slot = self.redirect_slot(target, &self.slot_users()?)?;
                action::REDIRECT
            }
        };
        Ok(value)
    }

    /// The conflict with binding `b` of `what` (a port, or a port and prefix).
    fn conflict(&self, ports: PortSpec, dst: IpNet, b: &Binding) -> Result<Error> {
        let owner = maps::owner_str(b);
        Ok(Error::Conflict {
            ports,
            dst: Some(dst),
            action: maps::describe(b, &self.slot_names()?),
            owner: (!owner.is_empty()).then_some(owner),
        })
    }

    /// The devmap slot that redirects to `target`, filling a free one if needed.
    pub(crate) fn redirect_slot(&self, target: &str, current: &[Binding]) -> Result<u32> {
        let ifindex = self
            .scope
            .ifindex(target)?
            .ok_or_else(|| Error::BadRedirectTarget {
                iface: target.to_owned(),
                where_: self.scope.where_(),
            })?;
        let slots = self.maps.read_slots()?;
        if let Some(slot) = (0u32..)
            .zip(&slots)
            .find_map(|(s, i)| (*i == Some(ifindex)).then_some(s))
        {
            return Ok(slot);
        }
        let used = |slot: u32| {
            current
                .iter()
                .any(|b| b.action == action::REDIRECT && b.slot == slot)
        };
        let slot = (0..REDIRECT_SLOTS)
            .find(|&s| slots[s as usize].is_none() && !used(s))
            .ok_or(Error::NoRedirectSlot(REDIRECT_SLOTS))?;
        self.maps.set_slot(&self.scope, slot, ifindex)?;
        Ok(slot)
    }

    /// The interface each devmap slot redirects to, named once for all the bindings that
    /// use it.
    fn slot_names(&self) -> Result<Vec<Option<String>>> {
        self.maps
            .read_slots()?
            .into_iter()
            .map(|slot| {
                slot.map(|ifindex| {
                    Ok(self
                        .scope
                        .ifname(ifindex)?
                        .unwrap_or_else(|| format!("ifindex-{ifindex}")))
                })
                .transpose()
            })
            .collect()
    }
}

/// Refuses an owner label that does not fit its field or would not print as one line (control
/// characters: a newline, an escape sequence).
fn check_owner(owner: &str) -> Result<()> {
    let problem = if owner.len() > OWNER_LEN {
        "is longer than the owner field"
    } else if owner.chars().any(char::is_control) {
        "has control characters"
    } else {
        return Ok(());
    };
    Err(Error::BadOwner {
        owner: owner.to_owned(),
        problem,
        max: OWNER_LEN,
    })
}

/// The kernel memory of every pinned map and of the program in `dir` (the link holds none of
/// its own): each pin opened, its `memlock` read from fdinfo.
fn memlock(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|name| name == LINK_PIN) {
            continue;
        }
        total += sys::memlock(std::os::fd::AsFd::as_fd(&sys::obj_get_readable(&path)?))?;
    }
    Ok(total)
}
