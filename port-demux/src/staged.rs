//! What `apply` and `export` need of an instance beyond the facade: its load options as
//! requested, and the replacement of its whole binding set and default action as one change
//! (built like an upgrade's successor, see [`crate::lifecycle::replace_bindings`]).

use bytemuck::Zeroable as _;
use port_demux_common::{BINDINGS_LEN, Binding, Meta, OWNER_LEN, action, port_index};

use crate::{
    Action, BindingRange, DefaultAction, Error, Mode, PortDemux, Result, UpgradeReport, lifecycle,
    maps::Maps,
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

    /// Replaces every binding of the instance with `wanted`, and its default action with
    /// `default_action`, as one change: the data path and readers see the old set or the new,
    /// never a mix. The successor is built like an upgrade's, in a staging folder with a new
    /// `BINDINGS` map, and swapped in through the link; a kill at any instant leaves the old
    /// state or the new one (the pinned-state contract). Ranges in `wanted` must not overlap.
    ///
    /// # Errors
    /// [`Error::BadSpec`] (an owner too long), [`Error::BadRedirectTarget`],
    /// [`Error::NoRedirectSlot`], [`Error::Detached`], load or update failures; nothing changed
    /// then.
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
            let current = Maps::open(dir)?.read_bindings()?;
            let mut all = vec![Binding::zeroed(); BINDINGS_LEN as usize];
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
                    all[port_index(range.ports.proto.index(), port) as usize] = value;
                }
            }
            Ok(all)
        };
        let (report, _dir) =
            lifecycle::replace_bindings(self.scope(), self.iface(), default_action, build)?;
        Ok(report)
    }
}
