//! The load, upgrade and unload lifecycle: loading the object, attaching, pinning, swapping
//! the program through the link, and removing pins.

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use bytemuck::Zeroable as _;
use port_demux_common::{LAYOUT_VERSION, LAYOUT_VERSION_V2, MODE_NATIVE, MODE_SKB, Meta, action};

use crate::{
    DefaultAction, Error, LoadOptions, LoadReport, Mode, Result, Scope, UpgradeReport, kernel,
    layout::{
        DirLock, LINK_PIN, MAPS, MAPS_V3, PROG_PIN, REDIRECT, REDIRECT_V3, STAGING, check_ifname,
        open_maps, pin_name, read_meta, remove_pins, write_meta,
    },
    maps, netlink, sys,
};

/// The XDP program, built from `port-demux-ebpf` by the build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/port-demux"));
/// The program's name in the object.
pub const PROGRAM: &str = "port_demux";
/// The same program with a debug log record per demultiplexed frame (`load --debug`).
pub const PROGRAM_DEBUG: &str = "port_demux_debug";

/// Loads the program, attaches it to `iface` and pins program, link and maps into a staging
/// folder renamed into place; then `open`s the result, under the namespace's lock. All or
/// nothing: on error no pin is left.
pub(crate) fn load<T>(
    scope: &Scope,
    iface: &str,
    opts: &LoadOptions,
    open: impl FnOnce() -> Result<T>,
) -> Result<(T, LoadReport)> {
    check_ifname(iface)?;
    kernel::check()?;
    let ifindex = scope
        .ifindex(iface)?
        .ok_or_else(|| Error::UnknownInterface {
            iface: iface.to_owned(),
            where_: scope.where_(),
        })?;
    scope.ensure_bpffs()?;
    let ns_dir = scope.create_dir()?;
    let _lock = DirLock::exclusive(&ns_dir)?;
    let dir = ns_dir.join(pin_name(iface));
    let mut stale_pins_removed = false;
    if dir.exists() {
        if pinned_program_attached(scope, &dir, ifindex)? {
            return Err(Error::AlreadyLoaded {
                iface: iface.to_owned(),
            });
        }
        // Pins whose program no longer runs on this interface: left by a namespace that
        // was deleted without `unload` (the kernel reuses its inode number, which keys the
        // folder) or by a program detached behind port-demux's back.
        remove_pins(&dir)?;
        stale_pins_removed = true;
    }
    let replaced = replace_foreign(scope, iface, ifindex, opts.force)?;
    let tmp = ns_dir.join(format!(
        "{STAGING}{}-{}",
        std::process::id(),
        pin_name(iface)
    ));
    remove_pins(&tmp)?;
    // Root's only, like the folders above it: a group granted read access later gets it
    // folder by folder (see the README).
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| Error::io("cannot create", &tmp, e))?;
    match load_into(scope, iface, ifindex, opts, &tmp) {
        Ok((mode, fallback_reason, prog_id)) => {
            fs::rename(&tmp, &dir).map_err(|e| {
                let _ = remove_pins(&tmp);
                Error::io("cannot rename pins to", &dir, e)
            })?;
            let this = open().inspect_err(|_| {
                let _ = remove_pins(&dir);
            })?;
            Ok((
                this,
                LoadReport {
                    mode,
                    fallback_reason,
                    prog_id,
                    replaced,
                    stale_pins_removed,
                },
            ))
        }
        Err(e) => {
            let _ = remove_pins(&tmp);
            Err(e)
        }
    }
}

/// Detaches the program and removes every pin of `iface`.
pub(crate) fn unload(scope: &Scope, iface: &str) -> Result<()> {
    check_ifname(iface)?;
    let ns_dir = scope.dir();
    let dir = ns_dir.join(pin_name(iface));
    if !dir.exists() {
        return Err(Error::NotLoaded {
            iface: iface.to_owned(),
            where_: scope.where_(),
        });
    }
    let _lock = DirLock::exclusive(&ns_dir)?;
    let prog_id = sys::pinned_link_prog_id(&dir.join(LINK_PIN)).ok();
    // The link first: removing its last reference detaches the program.
    remove_pins(&dir)?;
    if scope.loaded()?.is_empty() {
        // The namespace's folder, then port-demux's own if no namespace is left in it.
        let _ = fs::remove_dir(&ns_dir);
        if let Some(root) = ns_dir.parent() {
            let _ = fs::remove_dir(root);
        }
    }
    // The kernel may release the link, and detach, after the unlink returns: wait for it,
    // so that a `load` right after finds the interface free.
    if let (Some(prog_id), Some(ifindex)) = (prog_id, scope.ifindex(iface)?) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while runs(scope, ifindex, prog_id)? {
            if std::time::Instant::now() > deadline {
                return Err(Error::StillAttached {
                    iface: iface.to_owned(),
                    prog_id,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    Ok(())
}

/// Refuses to change an instance whose program no longer runs on its interface (the
/// interface was deleted, or the program detached behind port-demux's back): a binding
/// written there would report success and apply to nothing.
pub(crate) fn check_attached(scope: &Scope, iface: &str, dir: &Path, ifindex: u32) -> Result<()> {
    let link_path = dir.join(LINK_PIN);
    let prog_id = sys::pinned_link_prog_id(&link_path)
        .map_err(|e| Error::io("cannot read", &link_path, e))?;
    let detail = match scope.run(|| netlink::xdp_query(ifindex))? {
        Ok(Some(a)) if a.prog_id == prog_id => return Ok(()),
        Ok(Some(a)) => format!("{iface} runs XDP program id {} instead", a.prog_id),
        Ok(None) => format!("{iface} has no XDP program"),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            format!("interface index {ifindex} is gone{}", scope.where_())
        }
        Err(e) => return Err(Error::io("cannot query XDP on", iface, e)),
    };
    Err(Error::Detached {
        iface: iface.to_owned(),
        detail,
    })
}

/// Loads this build's program with the maps pinned in `dir` (creating those missing, which
/// are then pinned there) and swaps it in through the pinned link; writes `meta` as this
/// layout's with `debug`.
pub(crate) fn replace_program(
    dir: &Path,
    iface: &str,
    mut meta: Meta,
    opts: &LoadOptions,
    v2_redirect: Option<&Scope>,
) -> Result<UpgradeReport> {
    let debug = opts.debug;
    let staged = dir.join(REDIRECT_V3);
    let mut ebpf = load_object_with(
        dir,
        meta.default_action,
        debug,
        opts.verifier_log.as_deref(),
        v2_redirect.map(|_| staged.as_path()),
    )?;
    if let Some(scope) = v2_redirect {
        maps::copy_devmap(scope, &dir.join(REDIRECT), &staged)?;
    }
    let prog = xdp_program(&mut ebpf, debug);
    let link_path = dir.join(LINK_PIN);
    let link: FdLink = PinnedLink::from_pin(&link_path)
        .map_err(|e| Error::io("cannot open", &link_path, io::Error::other(e)))?
        .into();
    let old_prog_id = link
        .info()
        .map_err(|e| Error::io("cannot read", &link_path, io::Error::other(e)))?
        .program_id();
    let link = XdpLink::try_from(link)
        .map_err(|e| Error::io("not an XDP link:", &link_path, io::Error::other(e)))?;
    prog.attach_to_link(link).map_err(|source| Error::Attach {
        iface: iface.to_owned(),
        mode: "upgrade".to_owned(),
        source: Box::new(source),
    })?;
    let new_prog_id = prog
        .info()
        .map_err(|e| Error::Ebpf(Box::new(e.into())))?
        .id();
    if v2_redirect.is_some() {
        // The new program runs with the new devmap: its pin takes the usual name.
        fs::rename(&staged, dir.join(REDIRECT))
            .map_err(|e| Error::io("cannot rename", &staged, e))?;
    }
    // Re-pin the program under its usual name; the link pin is the same link.
    let next = dir.join("prog-next");
    let _ = fs::remove_file(&next);
    prog.pin(&next)
        .map_err(|e| Error::io("cannot pin", &next, io::Error::other(e)))?;
    fs::rename(&next, dir.join(PROG_PIN)).map_err(|e| Error::io("cannot rename", &next, e))?;
    meta.debug = u32::from(debug);
    meta.layout_version = LAYOUT_VERSION;
    write_meta(dir, &meta)?;
    Ok(UpgradeReport {
        old_prog_id,
        new_prog_id,
    })
}

/// `load --upgrade` of pins of an older layout (`from`: v2 or v3): the maps that layout had
/// are checked and kept as they are (bindings, per-port counters and global cells mean the
/// same); the maps it lacked (`GLOBALS2` for v2, the scope maps for both) are created empty and
/// pinned; from v2, the redirect targets are copied into a new devmap (see below); then the
/// program is swapped in through the link, as for any upgrade. On a failure before the swap,
/// the new pins are removed again: nothing changed.
pub(crate) fn upgrade_old(
    scope: &Scope,
    iface: &str,
    dir: &Path,
    opts: &LoadOptions,
    from: u32,
    upgrade: impl FnOnce() -> Result<UpgradeReport>,
) -> Result<UpgradeReport> {
    let _lock = DirLock::exclusive(dir)?;
    // Re-read under the lock: another upgrade may have finished meanwhile.
    let meta = read_meta(dir)?;
    if meta.layout_version != from {
        return upgrade();
    }
    let kept = if from == LAYOUT_VERSION_V2 {
        5
    } else {
        MAPS_V3
    };
    for map in &MAPS[..kept] {
        open_maps(dir, &[*map])?;
    }
    let mut created = Vec::new();
    for map in &MAPS[kept..] {
        let path = dir.join(map.0);
        if path.exists() {
            // Left by an upgrade that stopped after creating it: reused if it is the right map.
            open_maps(dir, &[*map])?;
        } else {
            created.push(path);
        }
    }
    let link_path = dir.join(LINK_PIN);
    let prog_id = sys::pinned_link_prog_id(&link_path)
        .map_err(|e| Error::io("cannot read", &link_path, e))?;
    if !runs(scope, meta.ifindex, prog_id)? {
        return Err(Error::Detached {
            iface: iface.to_owned(),
            detail: format!("{iface} does not run the pinned program id {prog_id}"),
        });
    }
    // The kernel lets a devmap serve only programs that agree on multi-buffer support
    // (`xdp.frags`): v2's program was not frags-aware, so v2's `REDIRECT` cannot serve this
    // build's. The upgrade gives it a new devmap with the same slots, swapped in with the
    // program; bindings name slots, so they stay valid.
    let v2 = from == LAYOUT_VERSION_V2;
    let _ = fs::remove_file(dir.join(REDIRECT_V3));
    replace_program(dir, iface, meta, opts, v2.then_some(scope)).inspect_err(|_| {
        let _ = fs::remove_file(dir.join(REDIRECT_V3));
        for path in &created {
            let _ = fs::remove_file(path);
        }
    })
}

/// Whether the program behind the pinned link in `dir` is the one attached to `ifindex`.
fn pinned_program_attached(scope: &Scope, dir: &Path, ifindex: u32) -> Result<bool> {
    let Ok(prog_id) = sys::pinned_link_prog_id(&dir.join(LINK_PIN)) else {
        return Ok(false);
    };
    runs(scope, ifindex, prog_id)
}

/// Whether interface `ifindex` of `scope` runs XDP program `prog_id`; a vanished interface
/// runs nothing.
pub(crate) fn runs(scope: &Scope, ifindex: u32, prog_id: u32) -> Result<bool> {
    match scope.run(|| netlink::xdp_query(ifindex))? {
        Ok(attached) => Ok(attached.is_some_and(|a| a.prog_id == prog_id)),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(Error::io(
            "cannot query XDP on interface index",
            ifindex.to_string(),
            e,
        )),
    }
}

/// Refuses, or with `force` detaches, an XDP program port-demux did not load.
fn replace_foreign(scope: &Scope, iface: &str, ifindex: u32, force: bool) -> Result<Option<u32>> {
    let attached = scope
        .run(|| netlink::xdp_query(ifindex))?
        .map_err(|e| Error::io("cannot query XDP on", iface, e))?;
    let Some(attached) = attached else {
        return Ok(None);
    };
    if !force {
        return Err(Error::ForeignProgram {
            iface: iface.to_owned(),
            prog_id: attached.prog_id,
        });
    }
    scope
        .run(|| netlink::xdp_detach(ifindex, attached.mode_flags))?
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::BadSpec(format!(
                    "XDP program id {} on {iface} is held by a bpf_link that --force cannot break: remove it with the tool that attached it (bpftool link)",
                    attached.prog_id
                ))
            } else {
                Error::io("cannot detach the XDP program on", iface, e)
            }
        })?;
    Ok(Some(attached.prog_id))
}

/// Loads the object with its maps pinned in (or reused from) `dir` and the program verified,
/// not attached. A verifier rejection writes the whole log to `verifier_log` (or a file in the
/// temporary directory) and becomes [`Error::Verifier`].
fn load_object(
    dir: &Path,
    default_action: u32,
    debug: bool,
    verifier_log: Option<&Path>,
) -> Result<Ebpf> {
    load_object_with(dir, default_action, debug, verifier_log, None)
}

/// As [`load_object`], with `REDIRECT` pinned at `redirect` instead of in `dir` (created there
/// when missing).
fn load_object_with(
    dir: &Path,
    default_action: u32,
    debug: bool,
    verifier_log: Option<&Path>,
    redirect: Option<&Path>,
) -> Result<Ebpf> {
    let log_level: u8 = if debug {
        aya_log::Level::Debug as u8
    } else {
        0
    };
    let paths: Vec<(&str, PathBuf)> = MAPS
        .iter()
        .map(|m| match redirect {
            Some(path) if m.0 == REDIRECT => (m.0, path.to_owned()),
            _ => (m.0, dir.join(m.0)),
        })
        .collect();
    let mut loader = EbpfLoader::new();
    loader
        .override_global("DEFAULT_ACTION", &default_action, true)
        .override_global(aya_log::LEVEL, &log_level, false);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| match &e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
            if kernel::denied(io_error) =>
        {
            Error::Privileges {
                what: "creating the XDP program's maps".to_owned(),
            }
        }
        _ => Error::Ebpf(Box::new(e)),
    })?;
    let program = if debug { PROGRAM_DEBUG } else { PROGRAM };
    xdp_program(&mut ebpf, debug)
        .load()
        .map_err(|e| kernel::program_load_error(e, program, verifier_log))?;
    Ok(ebpf)
}
/// The XDP program of the embedded object: the plain one, or the one that logs.
fn xdp_program(ebpf: &mut Ebpf, debug: bool) -> &mut Xdp {
    ebpf.program_mut(if debug { PROGRAM_DEBUG } else { PROGRAM })
        .expect("the object has both programs")
        .try_into()
        .expect("both programs are XDP programs")
}

/// Loads, attaches and pins into `tmp`; returns the mode, the fallback reason and the
/// program id.
fn load_into(
    scope: &Scope,
    iface: &str,
    ifindex: u32,
    opts: &LoadOptions,
    tmp: &Path,
) -> Result<(Mode, Option<String>, u32)> {
    let default_action = match opts.default_action {
        DefaultAction::Pass => action::PASS,
        DefaultAction::Drop => action::DROP,
    };
    let mut ebpf = load_object(
        tmp,
        default_action,
        opts.debug,
        opts.verifier_log.as_deref(),
    )?;
    let prog = xdp_program(&mut ebpf, opts.debug);
    let attach = |prog: &mut Xdp, mode: Mode| {
        let xdp_mode = if mode == Mode::Skb {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        };
        scope
            .run(|| prog.attach_to_if_index(ifindex, xdp_mode))?
            .map_err(|source| Error::Attach {
                iface: iface.to_owned(),
                mode: mode.name().to_owned(),
                source: Box::new(source),
            })
    };
    let (link_id, mode, fallback) = match opts.mode {
        Mode::Auto => match attach(prog, Mode::Native) {
            Ok(id) => (id, Mode::Native, None),
            Err(native) => (
                attach(prog, Mode::Skb)?,
                Mode::Skb,
                Some(native.to_string()),
            ),
        },
        mode => (attach(prog, mode)?, mode, None),
    };
    let prog_id = prog
        .info()
        .map_err(|e| Error::Ebpf(Box::new(e.into())))?
        .id();
    let mut meta = Meta::zeroed();
    meta.layout_version = LAYOUT_VERSION;
    meta.ifindex = ifindex;
    meta.default_action = default_action;
    meta.mode = if mode == Mode::Skb {
        MODE_SKB
    } else {
        MODE_NATIVE
    };
    meta.netns_ino = scope.netns_ino();
    meta.debug = u32::from(opts.debug);
    meta.ifname[..iface.len()].copy_from_slice(iface.as_bytes());
    write_meta(tmp, &meta)?;
    prog.pin(tmp.join(PROG_PIN))
        .map_err(|e| Error::io("cannot pin", tmp.join(PROG_PIN), io::Error::other(e)))?;
    let link = prog
        .take_link(link_id)
        .map_err(|e| Error::Ebpf(Box::new(e.into())))?;
    let link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| {
            Error::io("cannot pin", tmp.join(LINK_PIN), io::Error::other(e))
        })?;
    link.pin(tmp.join(LINK_PIN))
        .map_err(|e| Error::io("cannot pin", tmp.join(LINK_PIN), io::Error::other(e)))?;
    Ok((mode, fallback, prog_id))
}
