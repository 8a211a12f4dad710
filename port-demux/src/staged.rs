//! What `apply` and `export` need of an instance beyond the facade: its load options as
//! requested, and the replacement of its whole binding set and default action as one change
//! (built like an upgrade's successor, see [`crate::lifecycle::replace_bindings`]).

use bytemuck::Zeroable as _;
use port_demux_common::{BINDINGS_LEN, Binding, Meta, OWNER_LEN, action, port_index};

use crate::{
    Action, BindingRange, DefaultAction, Error, Mode, PortDemux, PortSpec, Result, UpgradeReport,
    demux::scoped_value, lifecycle, maps::Maps, scoped,
};

/// `Meta::pad` records the attach mode `load` was asked for (the `META` record has no other
/// room, and its layout is shared with the data path's object): 0 for instances loaded by
/// builds that did not record it.
const fn mode_code(mode: Mode) -> u32 {
    match mode {
        Mode::Auto => 1,
        Mode::Native => 2,
        Mode::Skb => 3,
    }
}

/// Records the requested `mode` in `meta`.
pub(crate) const fn record_requested_mode(meta: &mut Meta, mode: Mode) {
    meta.pad = mode_code(mode);
}

/// An instance's load options as `export` writes them and `apply` compares them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The attach mode `load` was asked for (the resolved one for instances loaded by builds
    /// that did not record it).
    pub mode: Mode,
    /// The action for unbound ports.
    pub default_action: DefaultAction,
    /// Debug logging compiled in.
    pub debug: bool,
}

impl PortDemux {
    /// Completes or removes what writers killed midway left in `scope`'s bpffs (their staging
    /// folders), as every writer does first: `apply` does it also when it has nothing to
    /// change, so that a state it leaves is clean.
    ///
    /// # Errors
    /// When the lock cannot be taken or a leftover cannot be completed or removed.
    pub fn finish_pending(scope: &crate::Scope) -> Result<()> {
        lifecycle::sweep(scope)
    }

    /// The load options of the instance.
    ///
    /// # Errors
    /// When the pins cannot be read.
    pub fn settings(&self) -> Result<Settings> {
        let status = self.status()?;
        let mode = match self.meta().pad {
            1 => Mode::Auto,
            2 => Mode::Native,
            3 => Mode::Skb,
            _ => status.mode,
        };
        Ok(Settings {
            mode,
            default_action: status.default_action,
            debug: status.debug,
        })
    }

    /// Replaces every binding of the instance with `wanted` (scoped ones, `dst` set, included),
    /// and its default action with `default_action`, as one change: the data path and readers
    /// see the old set or the new, never a mix. The successor is built like an upgrade's, in a
    /// staging folder with a new `BINDINGS` map and new scope maps, and swapped in through the
    /// link; a kill at any instant leaves the old state or the new one (the pinned-state
    /// contract). Ranges without `dst` in `wanted` must not overlap, nor those of one prefix.
    /// Per-port counters carry over, and so do a scoped binding's when `wanted` has it
    /// unchanged (same action and owner); a scoped binding added or changed starts from zero.
    ///
    /// # Errors
    /// [`Error::BadSpec`] (an owner too long), [`Error::Capacity`],
    /// [`Error::BadRedirectTarget`], [`Error::NoRedirectSlot`], [`Error::Detached`], load or
    /// update failures; nothing changed then.
    pub fn replace_bindings(
        &self,
        wanted: &[BindingRange],
        default_action: DefaultAction,
    ) -> Result<UpgradeReport> {
        let default_action = match default_action {
            DefaultAction::Pass => action::PASS,
            DefaultAction::Drop => action::DROP,
        };
        let build = |dir: &std::path::Path| {
            let maps = Maps::open(dir)?;
            let mut current = maps.read_bindings()?;
            current.extend(scoped::live(&maps)?.iter().map(|(_, b)| Binding {
                action: b.action,
                slot: b.slot,
                owner: b.owner,
            }));
            let mut all = vec![Binding::zeroed(); BINDINGS_LEN as usize];
            let mut scoped = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for range in wanted {
                if range.owner.len() > OWNER_LEN {
                    return Err(Error::BadSpec(format!(
                        "owner {:?} is longer than {OWNER_LEN} bytes: shorten it",
                        range.owner
                    )));
                }
                let mut value = Binding::zeroed();
                value.owner[..range.owner.len()].copy_from_slice(range.owner.as_bytes());
                value.action = match &range.action {
                    Action::Pass => action::PASS,
                    Action::Drop => action::DROP,
                    Action::Redirect(target) => {
                        // A slot for a new target is filled now: no binding the running
                        // program reads names it yet.
                        value.slot = self.redirect_slot(target, &current)?;
                        action::REDIRECT
                    }
                };
                for port in range.ports.ports() {
                    let index = port_index(range.ports.proto.index(), port);
                    match &range.dst {
                        None => all[index as usize] = value,
                        Some(net) if !seen.insert((index, *net)) => {
                            return Err(Error::Conflict {
                                ports: PortSpec::single(range.ports.proto, port),
                                dst: Some(*net),
                                action: range.action.clone(),
                                owner: (!range.owner.is_empty()).then(|| range.owner.clone()),
                            });
                        }
                        Some(net) => scoped.push(scoped_value(index, net, &value)),
                    }
                }
            }
            Ok((all, scoped))
        };
        let (report, _dir) =
            lifecycle::replace_bindings(self.scope(), self.iface(), default_action, build)?;
        Ok(report)
    }
}
