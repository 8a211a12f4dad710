//! [`PortDemux`]: the facade over one instance of the data path on one interface, found through
//! its pins. The pin layout is [`crate::layout`], map access [`crate::maps`], loading and
//! unloading [`crate::lifecycle`].

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::ProgramInfo;
use bytemuck::Zeroable as _;
use port_demux_common::{
    Binding, LAYOUT_VERSION, LAYOUT_VERSION_V2, MODE_SKB, Meta, OWNER_LEN, REDIRECT_SLOTS, action,
    port_index,
};

use crate::{
    Action, BindOptions, BindingRange, DefaultAction, Error, LoadOptions, LoadReport, Mode,
    PortSpec, PortStat, Proto, Result, Scope, Stats, Status, Totals, UpgradeReport,
    layout::{self, DirLock, LINK_PIN, PROG_PIN, check_ifname, pin_name},
    lifecycle,
    maps::{self, Maps},
    sys,
};

/// One instance of port-demux on one interface, opened through its pins.
#[derive(Debug)]
pub struct PortDemux {
    scope: Scope,
    iface: String,
    dir: PathBuf,
    meta: Meta,
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
        // Opening checks the pins against this build's layout; a failure must not leave a
        // half-working instance behind (the lifecycle removes the pins then).
        lifecycle::load(scope, iface, opts, || Self::open(scope, iface))
    }

    /// Opens the instance on `iface` through its pins.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], [`Error::Layout`], [`Error::Privileges`].
    pub fn open(scope: &Scope, iface: &str) -> Result<Self> {
        check_ifname(iface)?;
        let dir = scope.dir().join(pin_name(iface));
        match fs::metadata(&dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(if crate::is_bpffs(scope.bpffs()) {
                    Error::NotLoaded {
                        iface: iface.to_owned(),
                        where_: scope.where_(),
                    }
                } else {
                    Error::NoBpffs {
                        path: scope.bpffs().to_owned(),
                    }
                });
            }
            Err(e) => return Err(Error::io("cannot read", &dir, e)),
        }
        let meta = layout::read_meta(&dir)?;
        if meta.layout_version == LAYOUT_VERSION_V2 {
            return Err(Error::LayoutV2 {
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
            maps,
        })
    }

    /// Opens the only instance in `scope`, for commands whose `-i` was left out.
    ///
    /// # Errors
    /// [`Error::WhichInterface`] when none or several are loaded.
    pub fn open_only(scope: &Scope) -> Result<Self> {
        let loaded = scope.loaded()?;
        match loaded.as_slice() {
            [iface] => Self::open(scope, iface),
            [] => Err(Error::WhichInterface(format!(
                "port-demux is not loaded on any interface{}: run `port-demux load IFACE` first",
                scope.where_()
            ))),
            many => Err(Error::WhichInterface(format!(
                "port-demux is loaded on {}: say which with -i IFACE",
                many.join(", ")
            ))),
        }
    }

    /// Detaches the program and removes every pin of `iface`.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], or when a pin cannot be removed.
    pub fn unload(scope: &Scope, iface: &str) -> Result<()> {
        lifecycle::unload(scope, iface)
    }

    /// Replaces the running program with this build's, atomically through its `bpf_link`
    /// (`BPF_LINK_UPDATE`): bindings, counters and redirect targets stay, no frame goes
    /// unprocessed. Refused when the pins' layout differs from this build's.
    ///
    /// Only `opts.debug` and `opts.verifier_log` are used: the instance keeps its mode and
    /// default action.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], [`Error::Layout`], [`Error::Detached`], [`Error::Verifier`], load
    /// or update failures.
    pub fn upgrade(scope: &Scope, iface: &str, opts: &LoadOptions) -> Result<UpgradeReport> {
        let this = match Self::open(scope, iface) {
            Err(Error::LayoutV2 { path, .. }) => {
                return lifecycle::upgrade_v2(scope, iface, &path, opts, || {
                    Self::upgrade(scope, iface, opts)
                });
            }
            other => other?,
        };
        let _lock = DirLock::exclusive(&this.dir)?;
        this.check_attached()?;
        lifecycle::replace_program(&this.dir, iface, this.meta, opts, None)
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
        if opts.owner.len() > OWNER_LEN {
            return Err(Error::BadSpec(format!(
                "owner {:?} is longer than {OWNER_LEN} bytes: shorten it",
                opts.owner
            )));
        }
        let _lock = DirLock::exclusive(&self.dir)?;
        self.check_attached()?;
        let current = self.maps.read_bindings()?;
        if !opts.replace
            && let Some(port) = ports.ports().find(|&p| {
                current[port_index(ports.proto.index(), p) as usize].action != action::UNBOUND
            })
        {
            let b = current[port_index(ports.proto.index(), port) as usize];
            let owner = maps::owner_str(&b);
            return Err(Error::Conflict {
                port: PortSpec::single(ports.proto, port).to_string(),
                action: maps::describe(&b, &self.slot_names()?).to_string(),
                owner: if owner.is_empty() {
                    String::new()
                } else {
                    format!(" (owner {owner})")
                },
            });
        }
        let mut value = Binding::zeroed();
        value.owner[..opts.owner.len()].copy_from_slice(opts.owner.as_bytes());
        value.action = match act {
            Action::Pass => action::PASS,
            Action::Drop => action::DROP,
            Action::Redirect(target) => {
                value.slot = self.redirect_slot(target, &current)?;
                action::REDIRECT
            }
        };
        self.maps.write_bindings(ports, &value)?;
        if opts.replace {
            let after = self.maps.read_bindings()?;
            self.maps.collect_slots(&after)?;
        }
        Ok(())
    }

    /// Removes the bindings of every port of `ports`; all or nothing: every one must be bound.
    ///
    /// # Errors
    /// [`Error::NotBound`], [`Error::Detached`].
    pub fn unbind(&self, ports: PortSpec) -> Result<()> {
        let _lock = DirLock::exclusive(&self.dir)?;
        self.check_attached()?;
        let current = self.maps.read_bindings()?;
        if let Some(port) = ports.ports().find(|&p| {
            current[port_index(ports.proto.index(), p) as usize].action == action::UNBOUND
        }) {
            return Err(Error::NotBound {
                port: PortSpec::single(ports.proto, port).to_string(),
            });
        }
        self.maps.write_bindings(ports, &Binding::zeroed())?;
        let after = self.maps.read_bindings()?;
        self.maps.collect_slots(&after)
    }

    /// Every binding, as runs of consecutive ports with the same action and owner.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn bindings(&self) -> Result<Vec<BindingRange>> {
        let all = self.maps.read_bindings()?;
        let slot_names = self.slot_names()?;
        Ok(maps::coalesce(&all)
            .into_iter()
            .map(|(first, last, b)| BindingRange {
                ports: PortSpec {
                    proto: Proto::from_index(first),
                    first: maps::low16(first),
                    last: maps::low16(last),
                },
                action: maps::describe(&b, &slot_names),
                owner: maps::owner_str(&b),
            })
            .collect())
    }

    /// Per-port and global counters, summed over CPUs.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn stats(&self) -> Result<Stats> {
        // Globals first: see `totals`.
        let globals = self.maps.globals()?;
        let counters = self.maps.port_counters()?;
        let bindings = self.maps.read_bindings()?;
        let slot_names = self.slot_names()?;
        let mut ports = Vec::new();
        for (index, (c, b)) in (0u32..).zip(counters.iter().zip(&bindings)) {
            if c.packets == 0 && c.bytes == 0 && b.action == action::UNBOUND {
                continue;
            }
            ports.push(PortStat {
                proto: Proto::from_index(index),
                port: maps::low16(index),
                packets: c.packets,
                bytes: c.bytes,
                action: (b.action != action::UNBOUND).then(|| maps::describe(b, &slot_names)),
            });
        }
        ports.sort_by(|a, b| {
            (b.packets, b.bytes)
                .cmp(&(a.packets, a.bytes))
                .then((a.proto, a.port).cmp(&(b.proto, b.port)))
        });
        Ok(Stats {
            ports,
            totals: maps::totals(&counters, &globals),
        })
    }

    /// The totals alone, summed over ports and CPUs.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn totals(&self) -> Result<Totals> {
        // Globals first: a frame counted between the two reads then shows in the per-port
        // sum at worst, never as a redirect whose port count is missing.
        let globals = self.maps.globals()?;
        Ok(maps::totals(&self.maps.port_counters()?, &globals))
    }

    /// Attach mode, program id, whether it is attached, bindings.
    ///
    /// # Errors
    /// When the pins cannot be read.
    pub fn status(&self) -> Result<Status> {
        let link_path = self.dir.join(LINK_PIN);
        let prog_id = sys::pinned_link_prog_id(&link_path)
            .map_err(|e| Error::io("cannot read", &link_path, e))?;
        let attached = lifecycle::runs(&self.scope, self.meta.ifindex, prog_id)?;
        let bound_ports = u32::try_from(
            self.maps
                .read_bindings()?
                .iter()
                .filter(|b| b.action != action::UNBOUND)
                .count(),
        )
        .unwrap_or(u32::MAX);
        Ok(Status {
            iface: self.iface.clone(),
            ifindex: self.meta.ifindex,
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
            verified_insns: ProgramInfo::from_pin(self.dir.join(PROG_PIN))
                .ok()
                .and_then(|info| info.verified_instruction_count()),
            pin_dir: self.dir.clone(),
        })
    }

    /// Refuses to change an instance whose program no longer runs on its interface: see
    /// [`lifecycle::check_attached`].
    fn check_attached(&self) -> Result<()> {
        lifecycle::check_attached(&self.scope, &self.iface, &self.dir, self.meta.ifindex)
    }

    /// The devmap slot that redirects to `target`, filling a free one if needed.
    fn redirect_slot(&self, target: &str, current: &[Binding]) -> Result<u32> {
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
