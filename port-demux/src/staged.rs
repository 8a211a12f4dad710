//! Replacing an instance's whole binding set and its default action as one change (`apply`).
//!
//! The data path reads bindings from an array map one port at a time, so rewriting that map in
//! place would let a frame, or a reader, see some ports bound the old way and others the new.
//! Instead a swap builds a complete new `BINDINGS` map (and a new `META` record), loads the
//! program again with them and every other pinned map as it is (counters, redirect targets),
//! and replaces the running program through its `bpf_link` (`BPF_LINK_UPDATE`): the kernel
//! switches from the old program, with the old map, to the new one at once. The pins follow by
//! rename. Until they have, the staged pins and the staged program's pin tell readers which
//! map is current:
//!
//! 1. `BINDINGS-next` and `META-next` are created and filled, the new program is pinned as
//!    `prog-apply`: nothing runs them; a kill here leaves the old state, and the next writer
//!    removes them.
//! 2. The link switches to the new program: the commit point.
//! 3. `BINDINGS-next` and `META-next` are renamed over `BINDINGS` and `META`, then
//!    `prog-apply` over `prog`. While `prog-apply` is the program the link runs, a staged map
//!    that is still there is the current one: readers open it ([`map_path`]), and the next
//!    writer completes the renames ([`finish`]).
//!
//! Readers therefore see the old set or the new one, never a mix, and so does the data path.

use std::{
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use bytemuck::Zeroable as _;
use port_demux_common::{BINDINGS_LEN, Binding, Meta, OWNER_LEN, action, port_index};

use crate::{
    Action, BindingRange, DefaultAction, Error, Mode, PortDemux, Result, UpgradeReport,
    layout::{self, DirLock, LINK_PIN, PROG_PIN},
    lifecycle,
    maps::Maps,
    sys,
};

/// Suffix of the maps a swap stages beside the pinned ones.
const NEXT: &str = "-next";
/// The staged program's pin.
const PROG_STAGED: &str = "prog-apply";
/// The maps a swap replaces.
const SWAPPED: [&str; 2] = ["BINDINGS", "META"];

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

fn staged(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{NEXT}"))
}

/// The pin to open for map `name` of the instance in `dir`: its staged copy while a swap that
/// committed has not renamed it yet, else its usual pin.
pub(crate) fn map_path(dir: &Path, name: &str) -> PathBuf {
    if SWAPPED.contains(&name) {
        let next = staged(dir, name);
        if next.exists() && committed(dir) {
            return next;
        }
    }
    dir.join(name)
}

/// Whether the link runs the staged program: the swap in `dir` committed. A reader that may
/// not open the program pin (programs open read-write only) takes it as not committed.
fn committed(dir: &Path) -> bool {
    let Ok(fd) = sys::obj_get(&dir.join(PROG_STAGED), false) else {
        return false;
    };
    let (Ok(staged), Ok(running)) = (
        sys::prog_id(fd.as_fd()),
        sys::pinned_link_prog_id(&dir.join(LINK_PIN)),
    ) else {
        return false;
    };
    staged == running
}

/// Completes a swap that committed but was killed before its renames, or removes what one
/// killed before committing staged. Writers call it under the lock before anything else.
///
/// # Errors
/// When a pin cannot be renamed or removed.
pub(crate) fn finish(dir: &Path) -> Result<()> {
    let prog = dir.join(PROG_STAGED);
    let leftovers = prog.exists() || SWAPPED.iter().any(|n| staged(dir, n).exists());
    if !leftovers {
        return Ok(());
    }
    if committed(dir) {
        for name in SWAPPED {
            let next = staged(dir, name);
            if next.exists() {
                fs::rename(&next, dir.join(name))
                    .map_err(|e| Error::io("cannot rename", &next, e))?;
            }
        }
        fs::rename(&prog, dir.join(PROG_PIN)).map_err(|e| Error::io("cannot rename", &prog, e))
    } else {
        for path in SWAPPED.iter().map(|n| staged(dir, n)).chain([prog]) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove", &path, e)),
            }
        }
        Ok(())
    }
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
    /// Completes or removes what an apply killed midway left (see the module's
    /// documentation); every writer does it first, `apply` also when it has nothing to change.
    ///
    /// # Errors
    /// When a pin cannot be renamed or removed.
    pub fn finish_pending(&self) -> Result<()> {
        let _lock = DirLock::exclusive(self.pin_dir())?;
        finish(self.pin_dir())
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

    /// Replaces every binding of the instance with `wanted`, and its default action with
    /// `default_action`, as one change: the data path and readers see the old set or the new,
    /// never a mix (see the module's documentation). Ranges in `wanted` must not overlap.
    ///
    /// # Errors
    /// [`Error::BadRedirectTarget`], [`Error::NoRedirectSlot`], [`Error::Detached`], load or
    /// update failures; nothing changed then.
    pub fn replace_bindings(
        &self,
        wanted: &[BindingRange],
        default_action: DefaultAction,
    ) -> Result<UpgradeReport> {
        let dir = self.pin_dir();
        let _lock = DirLock::exclusive(dir)?;
        finish(dir)?;
        self.check_attached()?;
        // Fresh descriptors: the ones this instance was opened with may predate a swap.
        let maps = Maps::open(dir)?;
        let current = maps.read_bindings()?;
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
                    // Slots for new targets are filled now: no binding the running program
                    // reads names them yet.
                    value.slot = self.redirect_slot(target, &current)?;
                    action::REDIRECT
                }
            };
            for port in range.ports.ports() {
                all[port_index(range.ports.proto.index(), port) as usize] = value;
            }
        }
        let mut meta = layout::read_meta(dir)?;
        meta.default_action = match default_action {
            DefaultAction::Pass => action::PASS,
            DefaultAction::Drop => action::DROP,
        };
        let report = swap(dir, self.iface(), meta, &all)?;
        // Slots only the old bindings used.
        Maps::open(dir)?.collect_slots(&all)?;
        Ok(report)
    }
}

/// The swap itself, under the lock: stage, commit, rename.
fn swap(dir: &Path, iface: &str, meta: Meta, bindings: &[Binding]) -> Result<UpgradeReport> {
    let next: Vec<(&str, PathBuf)> = SWAPPED.iter().map(|n| (*n, staged(dir, n))).collect();
    let substitutes: Vec<(&str, &Path)> = next.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let prog_pin = dir.join(PROG_STAGED);
    let staging = || -> Result<UpgradeReport> {
        let debug = meta.debug != 0;
        let mut ebpf =
            lifecycle::load_object_with(dir, meta.default_action, debug, None, &substitutes)?;
        let bindings_pin = &next[0].1;
        let fd = sys::obj_get(bindings_pin, false)
            .map_err(|e| Error::io("cannot open", bindings_pin, e))?;
        let keys: Vec<u32> = (0..BINDINGS_LEN).collect();
        sys::update_batch(fd.as_fd(), &keys, bytemuck::cast_slice(bindings))
            .map_err(|e| Error::io("cannot write", bindings_pin, e))?;
        let meta_pin = &next[1].1;
        let fd =
            sys::obj_get(meta_pin, false).map_err(|e| Error::io("cannot open", meta_pin, e))?;
        sys::update(fd.as_fd(), &0u32.to_ne_bytes(), bytemuck::bytes_of(&meta))
            .map_err(|e| Error::io("cannot write", meta_pin, e))?;
        let prog = lifecycle::xdp_program(&mut ebpf, debug);
        prog.pin(&prog_pin)
            .map_err(|e| Error::io("cannot pin", &prog_pin, io::Error::other(e)))?;
        // The commit point.
        lifecycle::switch_link(prog, dir, iface, "apply")
    };
    match staging() {
        Ok(report) => {
            finish(dir)?;
            Ok(report)
        }
        Err(e) => {
            // Not committed (or committed and then failing to read an id: finish tells).
            let _ = finish(dir);
            Err(e)
        }
    }
}
