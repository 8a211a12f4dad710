//! The load, upgrade and unload lifecycle. Every writer takes the writers' lock first
//! ([`DirLock::writers`]), then completes or removes what killed writers left
//! ([`instance::sweep`]), and changes pins only through a staging folder renamed into place
//! ([`instance::commit`], [`instance::retire`]): a kill at any instant leaves the old instance
//! or the new one, never half of one.

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use bytemuck::Zeroable as _;
use port_demux_common::{
    Binding, LAYOUT_VERSION, LAYOUT_VERSION_V2, LAYOUT_VERSION_V3, LAYOUT_VERSION_V4,
    LAYOUT_VERSION_V5, LAYOUT_VERSION_V6, LAYOUT_VERSION_V7, MODE_NATIVE, MODE_SKB, Meta,
    ScopedBinding, action,
};

use crate::{
    DefaultAction, Error, LoadOptions, LoadReport, Mode, Result, Scope, UpgradeReport,
    instance::{self, Found, attached_prog},
    kernel,
    layout::{
        BINDINGS_BYTES, BINDINGS_SECTION, BINDINGS_V7, DirLock, FROZEN_COUNTERS, GLOBALS2,
        LINK_PIN, MAPS, MAPS_V3, PORT_STATS, PORT_STATS_V5, PORT_STATS_V6, PORT_STATS2,
        PORT_STATS3, PROG_PIN, REDIRECT, SCOPE_TABLES_V4, Stage, check_ifname, instance_dir,
        open_maps, read_meta, remove_pins, staging_dir, write_meta,
    },
    maps::{self, Maps},
    netlink,
    scoped::{self, Successor},
    sys::{self, LinkInfo},
};

/// The XDP program, built from `port-demux-ebpf` by the build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/port-demux"));
/// The program's name in the object.
pub const PROGRAM: &str = "port_demux";
/// The same program with a debug log record per demultiplexed frame (`load --debug`).
pub const PROGRAM_DEBUG: &str = "port_demux_debug";

/// The writers' lock of `scope`'s bpffs, after which what dead writers left is swept.
fn lock(scope: &Scope) -> Result<DirLock> {
    let lock = DirLock::writers(scope.bpffs())?;
    instance::sweep(scope.bpffs(), &lock)?;
    Ok(lock)
}

/// Takes the writers' lock and lets it go: what killed writers left is completed or removed.
pub(crate) fn sweep(scope: &Scope) -> Result<()> {
    lock(scope).map(drop)
}

/// Creates a staging folder, root's only like the folders above it (a group granted read
/// access later gets it folder by folder, see the README).
fn create_staging(scope: &Scope, stage: Stage, target: (u64, u32)) -> Result<PathBuf> {
    let staging = staging_dir(scope.bpffs(), stage, Some(target));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| Error::io("cannot create", &staging, e))?;
    Ok(staging)
}

/// Loads the program, attaches it to `iface` and pins program, link and maps into a staging
/// folder renamed into place; then `open`s the result. All or nothing: on error no pin is left
/// and nothing runs that did not run before (but a foreign program `force` detached).
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
    let _lock = lock(scope)?;
    if instance::find_running(scope, ifindex)?.is_some() {
        return Err(Error::AlreadyLoaded {
            iface: iface.to_owned(),
        });
    }
    let foreign = foreign(scope, iface, ifindex, opts.force)?;
    let bpffs = scope.bpffs();
    let target = instance_dir(bpffs, scope.netns_cookie(), ifindex);
    let staging = create_staging(scope, Stage::Load, (scope.netns_cookie(), ifindex))?;
    let loaded = foreign
        .map(|attached| detach_foreign(scope, iface, ifindex, attached))
        .transpose()
        .and_then(|replaced| Ok((replaced, load_into(scope, iface, ifindex, opts, &staging)?)));
    let (replaced, (mode, fallback_reason, prog_id)) = match loaded {
        Ok(done) => done,
        Err(e) => {
            let _ = remove_pins(&staging);
            return Err(e);
        }
    };
    // A folder by the target's name runs nothing here: it is stale (removed), or its interface
    // took the program to another namespace and this interface has its old index (it moves
    // along).
    let stale_pins_removed =
        instance::commit(bpffs, &staging, None, &target).inspect_err(|_| {
            let _ = remove_pins(&staging);
        })?;
    // Opening checks the pins against this build's layout; a failure must not leave a
    // half-working instance behind.
    let this = open().inspect_err(|_| {
        let _ = instance::retire(bpffs, &target);
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

/// The instance `scope` runs on `iface`, or why there is none: [`Error::Detached`] for a stale
/// one of this namespace's by that name, [`Error::NotLoaded`].
pub(crate) fn find(scope: &Scope, iface: &str) -> Result<Found> {
    find_for(scope, iface, false)
}

/// [`find`] for a writer: one that cannot open the instance's link (a bpffs mounted
/// read-only, missing rights) is refused with the kernel's reason.
fn find_writable(scope: &Scope, iface: &str) -> Result<Found> {
    find_for(scope, iface, true)
}

fn find_for(scope: &Scope, iface: &str, writer: bool) -> Result<Found> {
    check_ifname(iface)?;
    if !crate::is_bpffs(scope.bpffs()) {
        return Err(Error::NoBpffs {
            path: scope.bpffs().to_owned(),
        });
    }
    if let Some(ifindex) = scope.ifindex(iface)?
        && let Some(found) = instance::find_running(scope, ifindex)?
    {
        if writer && found.link.id == 0 {
            let path = found.dir().join(LINK_PIN);
            crate::sys::obj_get(&path, false).map_err(|e| Error::io("cannot open", &path, e))?;
        }
        return Ok(found);
    }
    if let Some((_, detail)) = instance::stale_own(scope, iface)? {
        return Err(Error::Detached {
            iface: iface.to_owned(),
            detail,
        });
    }
    Err(Error::NotLoaded {
        iface: iface.to_owned(),
        where_: scope.where_(),
    })
}

/// Detaches the program and removes every pin of the instance on `iface`: the one running
/// there, or a stale one this namespace loaded on an interface of that name.
pub(crate) fn unload(scope: &Scope, iface: &str) -> Result<()> {
    check_ifname(iface)?;
    let _lock = lock(scope)?;
    let (dir, link) = match find_writable(scope, iface) {
        Ok(found) => (found.dir().to_owned(), Some(found.link)),
        Err(Error::Detached { .. }) => {
            let (dir, _) = instance::stale_own(scope, iface)?.ok_or_else(|| Error::NotLoaded {
                iface: iface.to_owned(),
                where_: scope.where_(),
            })?;
            (dir, None)
        }
        Err(e) => return Err(e),
    };
    // The link goes first: removing its last pin detaches the program.
    instance::retire(scope.bpffs(), &dir)?;
    crate::layout::remove_empty_namespace_dirs(scope.bpffs());
    // The kernel may release the link, and detach, after the unlink returns: wait for it,
    // so that a `load` right after finds the interface free.
    if let Some(link) = link {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while attached_prog(scope, link.ifindex)? == Some(link.prog_id) {
            if std::time::Instant::now() > deadline {
                return Err(Error::StillAttached {
                    iface: iface.to_owned(),
                    prog_id: link.prog_id,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    Ok(())
}

/// Replaces the running program with this build's through its `bpf_link`
/// (`BPF_LINK_UPDATE`), keeping bindings, counters and redirect targets; migrates layout v2 and
/// main's folders. The successor is built in a staging folder that pins the kept maps and the
/// link a second time; the link update is the commit point, after which the staging folder
/// takes the instance's place (completed by the next writer if this one is killed).
pub(crate) fn upgrade(scope: &Scope, iface: &str, opts: &LoadOptions) -> Result<UpgradeReport> {
    check_ifname(iface)?;
    let _lock = lock(scope)?;
    let found = find_writable(scope, iface)?;
    let dir = found.dir().to_owned();
    let meta = read_meta(&dir)?;
    let from = meta.layout_version;
    // Every map of the layout checked: v2 had the first five, v3 the first six
    // (`MAPS_V3`, before the scope maps), v4 all, its interval tables as arrays of records;
    // up to v5 the per-port counters were `PORT_STATS`, in v6 `PORT_STATS2`; and the frozen
    // counters an earlier upgrade kept.
    let had = match from {
        LAYOUT_VERSION | LAYOUT_VERSION_V7 | LAYOUT_VERSION_V6 | LAYOUT_VERSION_V5
        | LAYOUT_VERSION_V4 => MAPS.len(),
        LAYOUT_VERSION_V3 => MAPS_V3,
        LAYOUT_VERSION_V2 => 5,
        found => {
            return Err(Error::Layout {
                path: dir,
                found,
                expected: LAYOUT_VERSION,
            });
        }
    };
    for map in &MAPS[..had] {
        let v4_table = SCOPE_TABLES_V4.iter().find(|t| t.0 == map.0);
        match v4_table {
            Some(table) if from == LAYOUT_VERSION_V4 => open_maps(&dir, &[*table])?,
            _ if map.0 == "BINDINGS" && from != LAYOUT_VERSION => open_maps(&dir, &[BINDINGS_V7])?,
            _ if map.0 == PORT_STATS3 && from == LAYOUT_VERSION_V6 => {
                open_maps(&dir, &[PORT_STATS_V6])?
            }
            _ if map.0 == PORT_STATS3 && from != LAYOUT_VERSION && from != LAYOUT_VERSION_V7 => {
                open_maps(&dir, &[PORT_STATS_V5])?
            }
            _ => open_maps(&dir, &[*map])?,
        };
    }
    for (frozen, _) in FROZEN_COUNTERS {
        if dir.join(frozen.0).exists() {
            open_maps(&dir, &[frozen])?;
        }
    }
    let cookie = scope.netns_cookie();
    let ifindex = found.link.ifindex;
    let staging = create_staging(scope, Stage::Upgrade, (cookie, ifindex))?;
    let report = swap_program(
        scope, iface, &dir, &staging, meta, found.link, from, opts, None,
    )
    .inspect_err(|_| {
        // Before the commit point: the staging folder pins nothing the old one does not
        // (or new maps nothing uses), so removing it changes nothing.
        let _ = remove_pins(&staging);
    })?;
    instance::commit(
        scope.bpffs(),
        &staging,
        Some(&dir),
        &instance_dir(scope.bpffs(), cookie, ifindex),
    )?;
    Ok(report)
}

/// Replaces the bindings of the instance on `iface` with those `build` returns (every port's,
/// and every scoped binding, built under the lock from the instance's folder, where it may
/// fill redirect slots) and its default action with `default_action`, as one change: the
/// successor is built in a staging folder like an upgrade's, with a new `BINDINGS` map and new
/// scope maps, and swapped in through the link (the commit point), so the data path and
/// readers see the old set or the new one. Returns the report and the folder now in place.
pub(crate) fn replace_bindings(
    scope: &Scope,
    iface: &str,
    default_action: u32,
    build: impl FnOnce(&Path) -> Result<(Vec<Binding>, Vec<ScopedBinding>)>,
) -> Result<(UpgradeReport, PathBuf)> {
    check_ifname(iface)?;
    let _lock = lock(scope)?;
    let found = find(scope, iface)?;
    let dir = found.dir().to_owned();
    let mut meta = read_meta(&dir)?;
    if meta.layout_version != LAYOUT_VERSION {
        return Err(Error::Layout {
            path: dir,
            found: meta.layout_version,
            expected: LAYOUT_VERSION,
        });
    }
    open_maps(&dir, &MAPS)?;
    let (bindings, wanted) = build(&dir)?;
    let scoped = Successor::plan(&scoped::live(&Maps::open(&dir)?)?, &wanted)?;
    let next = Next {
        bindings: &bindings,
        scoped: &scoped,
    };
    meta.default_action = default_action;
    let opts = LoadOptions {
        debug: meta.debug != 0,
        ..LoadOptions::default()
    };
    let cookie = scope.netns_cookie();
    let ifindex = found.link.ifindex;
    let staging = create_staging(scope, Stage::Upgrade, (cookie, ifindex))?;
    let report = swap_program(
        scope,
        iface,
        &dir,
        &staging,
        meta,
        found.link,
        LAYOUT_VERSION,
        &opts,
        Some(next),
    )
    .inspect_err(|_| {
        // Before the commit point: nothing runs what the staging folder pins.
        let _ = remove_pins(&staging);
    })?;
    let target = instance_dir(scope.bpffs(), cookie, ifindex);
    instance::commit(scope.bpffs(), &staging, Some(&dir), &target)?;
    // Slots only the old bindings named.
    let users: Vec<Binding> = bindings
        .iter()
        .copied()
        .chain(scoped.slot_users())
        .collect();
    Maps::open(&target)?.collect_slots(&users)?;
    Ok((report, target))
}

/// What `apply` swaps in: every port's binding (without the `SCOPED` flag) and the scoped
/// bindings, each set written into new maps.
#[derive(Clone, Copy)]
struct Next<'a> {
    bindings: &'a [Binding],
    scoped: &'a Successor,
}

/// Builds the successor of the instance pinned in `dir` in `staging` and swaps its program in
/// through the link.
#[expect(
    clippy::too_many_arguments,
    reason = "one caller; the steps read best in one place"
)]
fn swap_program(
    scope: &Scope,
    iface: &str,
    dir: &Path,
    staging: &Path,
    mut meta: Meta,
    link_info: LinkInfo,
    from: u32,
    opts: &LoadOptions,
    next: Option<Next>,
) -> Result<UpgradeReport> {
    // The maps that carry over, pinned a second time: counters, (v3) the redirect
    // devmap and `GLOBALS2`, and (v4) the scope maps but the interval tables, which v5 holds
    // as one value each (new maps, v4's bytes copied in), and (up to v6) the per-port
    // counters beside v7's new `PORT_STATS3` ([`kept_maps`]); the ones an older layout lacked
    // are created empty. v2's devmap cannot serve this build's frags-aware program (the kernel
    // lets a devmap serve only programs that agree on multi-buffer support): the successor
    // gets a new one with the same slots; bindings name slots, so they stay valid.
    // `BINDINGS` is never kept: always new, the bindings copied in, or with `next` (apply)
    // the new set written. With `next`, new scope maps hold the new set too (`SCOPED`,
    // `SCOPES`, `SCOPE_V4`, `SCOPE_V6`), filled before the link update, so that the data path
    // and readers see the old set or the new, never a mix. `SCOPED_STATS` is kept like
    // the per-port counters (the scoped bindings that stay keep their ids, so their counters) unless
    // the two sets together need more ids than it has.
    let v2 = from == LAYOUT_VERSION_V2;
    let kept = kept_maps(from, dir);
    let renewed = |name: &str| {
        next.is_some_and(|next| {
            matches!(name, "SCOPES" | "SCOPE_V4" | "SCOPE_V6" | "SCOPED")
                || (name == "SCOPED_STATS" && !next.scoped.keep_stats)
        })
    };
    for name in kept.iter().filter(|name| !renewed(name)) {
        let (from, to) = (dir.join(name), staging.join(name));
        MapData::from_pin(&from)
            .map_err(|e| Error::io("cannot open", &from, io::Error::other(e)))?
            .pin(&to)
            .map_err(|e| Error::io("cannot pin", &to, io::Error::other(e)))?;
    }
    let debug = opts.debug;
    let mut ebpf = load_object(
        staging,
        meta.default_action,
        debug,
        opts.verifier_log.as_deref(),
    )?;
    if v2 {
        maps::copy_devmap(scope, &dir.join(REDIRECT), &staging.join(REDIRECT))?;
    }
    if from == LAYOUT_VERSION_V4 {
        Maps::open(staging)?.copy_tables_from_v4(dir)?;
    }
    if let Some(next) = next {
        let maps = Maps::open(staging)?;
        next.scoped.fill(&maps)?;
        maps.write_all_bindings_flagged(next.bindings)?;
    } else {
        // `BINDINGS` is always new (see `load_object`): the bindings copied in, flags and
        // owners as they are, before the program that reads them runs.
        Maps::open(staging)?.copy_bindings_from(dir)?;
    }
    meta.debug = u32::from(debug);
    meta.layout_version = LAYOUT_VERSION;
    meta.ifindex = link_info.ifindex;
    meta.netns_ino = scope.netns_ino();
    meta.ifname = [0; 16];
    meta.ifname[..iface.len()].copy_from_slice(iface.as_bytes());
    write_meta(staging, &meta)?;
    let prog = xdp_program(&mut ebpf, debug);
    let prog_pin = staging.join(PROG_PIN);
    prog.pin(&prog_pin)
        .map_err(|e| Error::io("cannot pin", &prog_pin, io::Error::other(e)))?;
    let link_path = dir.join(LINK_PIN);
    let staged_link = staging.join(LINK_PIN);
    let link: FdLink = PinnedLink::from_pin(&link_path)
        .map_err(|e| Error::io("cannot open", &link_path, io::Error::other(e)))?
        .into();
    let link: FdLink = link
        .pin(&staged_link)
        .map_err(|e| Error::io("cannot pin", &staged_link, io::Error::other(e)))?
        .into();
    let link = XdpLink::try_from(link)
        .map_err(|e| Error::io("not an XDP link:", &link_path, io::Error::other(e)))?;
    // The commit point.
    prog.attach_to_link(link).map_err(|source| Error::Attach {
        iface: iface.to_owned(),
        mode: "upgrade".to_owned(),
        source: Box::new(source),
    })?;
    let new_prog_id = prog
        .info()
        .map_err(|e| Error::Ebpf(Box::new(e.into())))?
        .id();
    Ok(UpgradeReport {
        old_prog_id: link_info.prog_id,
        new_prog_id,
    })
}

/// The maps of the instance in `dir`, of layout `from`, that its successor keeps.
///
/// Up to v5 the per-port counters were `PORT_STATS`, in v6 `PORT_STATS2`: kept as they are,
/// pinned under their names, no longer written (the successor counts into a new
/// `PORT_STATS3`) and added in by readers. The old program's last frames, counted there after
/// the commit point, are in the totals too; an instance upgraded more than once keeps each.
fn kept_maps(from: u32, dir: &Path) -> Vec<&'static str> {
    let all: &[&'static str] = &[
        "BINDINGS",
        PORT_STATS,
        "GLOBALS",
        REDIRECT,
        GLOBALS2,
        "SCOPES",
        "SCOPE_V4",
        "SCOPE_V6",
        "SCOPED",
        "SCOPED_STATS",
        PORT_STATS2,
        PORT_STATS3,
    ];
    // Maps of older layouts this one may hold, but need not.
    let pinned =
        |name: &&str| !matches!(*name, PORT_STATS | PORT_STATS2) || dir.join(name).exists();
    // `BINDINGS` (the list's first) is never kept: the successor's is a new map, the
    // bindings copied in.
    debug_assert_eq!(all[0], "BINDINGS");
    let all = &all[1..];
    match from {
        LAYOUT_VERSION_V2 => all[..2].to_vec(),
        LAYOUT_VERSION_V3 => all[..4].to_vec(),
        // v4's interval tables have this layout's bytes in maps of another shape: new ones
        // are created and the bytes copied.
        LAYOUT_VERSION_V4 => all
            .iter()
            .copied()
            .filter(|name| !matches!(*name, "SCOPE_V4" | "SCOPE_V6" | PORT_STATS2 | PORT_STATS3))
            .collect(),
        LAYOUT_VERSION_V5 | LAYOUT_VERSION_V6 => all
            .iter()
            .copied()
            .filter(|name| *name != PORT_STATS3)
            .filter(pinned)
            .collect(),
        _ => all.iter().copied().filter(pinned).collect(),
    }
}

/// Refuses to change an instance whose program no longer runs on its interface in `scope`
/// (the interface was deleted, moved, or the program detached behind port-demux's back): a
/// binding written there would report success and apply to nothing.
pub(crate) fn check_attached(scope: &Scope, iface: &str, link: LinkInfo) -> Result<()> {
    let detail = if link.ifindex == 0 {
        format!("its interface is gone{}", scope.where_())
    } else {
        match scope.run(|| netlink::xdp_query(link.ifindex))? {
            Ok(Some(a)) if a.runs(link.prog_id) => return Ok(()),
            Ok(Some(a)) => format!("{iface} runs XDP program id {} instead", a.prog_id),
            Ok(None) => format!("{iface} has no XDP program{}", scope.where_()),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => format!(
                "interface index {} is not in this network namespace{}",
                link.ifindex,
                scope.where_()
            ),
            Err(e) => return Err(Error::io("cannot query XDP on", iface, e)),
        }
    };
    Err(Error::Detached {
        iface: iface.to_owned(),
        detail,
    })
}

/// The XDP program attached to `ifindex` that port-demux did not load: refused unless
/// `force`.
fn foreign(
    scope: &Scope,
    iface: &str,
    ifindex: u32,
    force: bool,
) -> Result<Option<netlink::XdpAttachment>> {
    let attached = scope
        .run(|| netlink::xdp_query(ifindex))?
        .map_err(|e| Error::io("cannot query XDP on", iface, e))?;
    match attached {
        Some(attached) if !force => Err(Error::ForeignProgram {
            iface: iface.to_owned(),
            prog_id: attached.prog_id,
        }),
        other => Ok(other),
    }
}

/// Detaches the foreign program(s) `attached` (`load --force`); returns the first one's id.
fn detach_foreign(
    scope: &Scope,
    iface: &str,
    ifindex: u32,
    attached: netlink::XdpAttachment,
) -> Result<u32> {
    for (prog_id, mode_flags) in attached.programs() {
        scope
            .run(|| netlink::xdp_detach(ifindex, mode_flags))?
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    Error::HeldByLink {
                        iface: iface.to_owned(),
                        prog_id,
                    }
                } else {
                    Error::io("cannot detach the XDP program on", iface, e)
                }
            })?;
    }
    Ok(attached.prog_id)
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
    let log_level: u8 = if debug {
        aya_log::Level::Debug as u8
    } else {
        0
    };
    // `BINDINGS` is the object's data section, which the loader would create without
    // `BPF_F_MMAPABLE`: created here, empty, and found by the loader at its pin. It must be
    // new: the loader writes the section's zeros into it.
    let bindings = dir.join("BINDINGS");
    sys::create_pinned_mmapable_array("BINDINGS", BINDINGS_BYTES, &bindings).map_err(|e| {
        if kernel::denied(&e) {
            Error::Privileges {
                what: "creating the XDP program's maps".to_owned(),
            }
        } else {
            Error::io("cannot create", &bindings, e)
        }
    })?;
    let paths: Vec<(&str, PathBuf)> = MAPS
        .iter()
        .map(|m| {
            let name = if m.0 == "BINDINGS" {
                BINDINGS_SECTION
            } else {
                m.0
            };
            (name, dir.join(m.0))
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
    crate::staged::record_requested_mode(&mut meta, opts.mode);
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
