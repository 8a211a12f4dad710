//! The bpffs pin layout and its lock: which folders and pins an instance has, the `META`
//! record and its layout versions, and the one `flock` that serialises writers.
//!
//! Pins live in the host's bpffs, one folder per instance:
//! `/sys/fs/bpf/port-demux/ns-<cookie>/if-<ifindex>/` holding `prog`, `link` and the maps of
//! [`MAPS`]; main's builds used `port-demux/netns-<inode>/<iface>/`, which this build still
//! reads, upgrades and unloads. The README's "Pinned-state contract" is the whole story.

use std::{
    fs::{self, File},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::DirBuilderExt as _,
    },
    path::{Path, PathBuf},
};

use bytemuck::Zeroable as _;
use port_demux_common::{
    BINDINGS_LEN, Binding, GlobalCounters, Globals, Grouping, LAYOUT_VERSION, Meta, PortCounters,
    PortScope, REDIRECT_SLOTS, SCOPE_RECORDS, SCOPED_LEN, ScopeTableV4, ScopeTableV6, ScopeV4,
    ScopeV6, ScopedBinding,
};

use crate::{Error, Result, is_bpffs, spec::valid_ifname, sys};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_DEVMAP: u32 = 14;
/// Devmap values: `struct bpf_devmap_val { u32 ifindex; union { int fd; u32 id; } }`.
pub(crate) const DEVMAP_VALUE: u32 = 8;

/// The pinned maps: name, type, value size, entries. Layout v2 had the first five, v3 the
/// first six ([`MAPS_V3`]); v4 added the scope maps, with `SCOPE_V4` and `SCOPE_V6` as arrays
/// of records ([`SCOPE_TABLES_V4`]); v5 has them as one value each (the same bytes). Up to v5
/// the per-port counters were [`PORT_STATS_V5`], in v6 [`PORT_STATS_V6`]; v7 has `PORT_STATS3`
/// in their place. Up to v7 `BINDINGS` was [`BINDINGS_V7`]; v8's holds the same bytes as one
/// value.
#[expect(clippy::cast_possible_truncation, reason = "sizes of small structs")]
pub(crate) const MAPS: [(&str, u32, u32, u32); 11] = [
    ("BINDINGS", BPF_MAP_TYPE_ARRAY, BINDINGS_BYTES, 1),
    counters(PORT_STATS3, port_demux_common::PORT_STATS_V7),
    (
        "GLOBALS",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        size_of::<GlobalCounters>() as u32,
        1,
    ),
    (
        "REDIRECT",
        BPF_MAP_TYPE_DEVMAP,
        DEVMAP_VALUE,
        REDIRECT_SLOTS,
    ),
    ("META", BPF_MAP_TYPE_ARRAY, size_of::<Meta>() as u32, 1),
    (
        "GLOBALS2",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        size_of::<Globals>() as u32,
        1,
    ),
    (
        "SCOPES",
        BPF_MAP_TYPE_ARRAY,
        size_of::<PortScope>() as u32,
        BINDINGS_LEN,
    ),
    (
        "SCOPE_V4",
        BPF_MAP_TYPE_ARRAY,
        size_of::<ScopeTableV4>() as u32,
        1,
    ),
    (
        "SCOPE_V6",
        BPF_MAP_TYPE_ARRAY,
        size_of::<ScopeTableV6>() as u32,
        1,
    ),
    (
        "SCOPED",
        BPF_MAP_TYPE_ARRAY,
        size_of::<ScopedBinding>() as u32,
        SCOPED_LEN,
    ),
    (
        "SCOPED_STATS",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        size_of::<PortCounters>() as u32,
        SCOPED_LEN,
    ),
];
/// Layouts v2-v7's `BINDINGS`: one entry per (protocol, port), the bytes of v8's one value.
#[expect(clippy::cast_possible_truncation, reason = "sizes of small structs")]
pub(crate) const BINDINGS_V7: MapSpec = (
    "BINDINGS",
    BPF_MAP_TYPE_ARRAY,
    size_of::<Binding>() as u32,
    BINDINGS_LEN,
);
/// The size of `BINDINGS`' one value: every port's binding.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the size of a small struct"
)]
pub(crate) const BINDINGS_BYTES: u32 = BINDINGS_LEN * size_of::<Binding>() as u32;
/// The name the object gives `BINDINGS`: its data section's, which makes the loader relocate
/// the program's accesses to it as direct value accesses.
pub(crate) const BINDINGS_SECTION: &str = ".bss.bindings";
/// A pinned map as [`open_maps`] checks it: name, type, value size, entries.
pub(crate) type MapSpec = (&'static str, u32, u32, u32);

/// A per-CPU counter array of `grouping`'s shape.
const fn counters(name: &'static str, grouping: Grouping) -> MapSpec {
    (
        name,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        grouping.value_size(),
        grouping.groups,
    )
}
/// The per-port counters of layouts v2-v5, one entry per (protocol, port). An upgrade from
/// those layouts keeps the map pinned under its name beside the new counters: no program
/// writes it any more, and readers add it in, so its counts stay in every total.
pub(crate) const PORT_STATS_V5: MapSpec = counters(PORT_STATS, port_demux_common::PORT_STATS_V5);
/// The per-port counters of layout v6, 16 ports an entry; kept by an upgrade as v5's are.
pub(crate) const PORT_STATS_V6: MapSpec = counters(PORT_STATS2, port_demux_common::PORT_STATS_V6);
/// The frozen per-port counters an upgrade keeps, oldest first, with their shapes: each
/// pinned when the instance was upgraded from the layout that wrote it.
pub(crate) const FROZEN_COUNTERS: [(MapSpec, Grouping); 2] = [
    (PORT_STATS_V5, port_demux_common::PORT_STATS_V5),
    (PORT_STATS_V6, port_demux_common::PORT_STATS_V6),
];
/// Layout v7's per-port counters.
pub(crate) const PORT_STATS3: &str = "PORT_STATS3";
/// Layout v6's per-port counters, in v7 a frozen base when the instance was upgraded.
pub(crate) const PORT_STATS2: &str = "PORT_STATS2";
/// Layouts v2-v5's per-port counters, a frozen base when the instance was upgraded.
pub(crate) const PORT_STATS: &str = "PORT_STATS";
/// The maps of layout v3, which `load --upgrade` from v3 keeps (and creates the rest).
pub(crate) const MAPS_V3: usize = 6;
/// Layout v4's `SCOPE_V4` and `SCOPE_V6`: arrays of [`SCOPE_RECORDS`] records, whose bytes
/// `load --upgrade` copies into v5's one-value maps.
#[expect(clippy::cast_possible_truncation, reason = "sizes of small structs")]
pub(crate) const SCOPE_TABLES_V4: [(&str, u32, u32, u32); 2] = [
    (
        "SCOPE_V4",
        BPF_MAP_TYPE_ARRAY,
        size_of::<ScopeV4>() as u32,
        SCOPE_RECORDS,
    ),
    (
        "SCOPE_V6",
        BPF_MAP_TYPE_ARRAY,
        size_of::<ScopeV6>() as u32,
        SCOPE_RECORDS,
    ),
];
/// The map layout v3 added; `load --upgrade` from v2 creates it.
pub(crate) const GLOBALS2: &str = "GLOBALS2";
/// The devmap of redirect targets.
pub(crate) const REDIRECT: &str = "REDIRECT";
pub(crate) const PROG_PIN: &str = "prog";
pub(crate) const LINK_PIN: &str = "link";

/// port-demux's folder in the bpffs; its `flock` is the writers' lock.
pub(crate) const ROOT: &str = "port-demux";
/// Prefix of this build's staging folders, in [`ROOT`].
pub(crate) const STAGING: &str = "staging-";
/// Prefix of the staging folders main's builds left in `netns-<inode>` folders.
const LEGACY_STAGING: &str = "staging-loader-pid";

/// The interface named by a pin folder of main's layout.
pub(crate) fn iface_of_pin(name: &str) -> String {
    name.replace("%2E", ".").replace("%25", "%")
}

/// `port-demux` in `bpffs`.
pub(crate) fn root(bpffs: &Path) -> PathBuf {
    bpffs.join(ROOT)
}

/// The folder of the instance on interface `ifindex` of the namespace with `cookie`:
/// `port-demux/ns-<cookie>/if-<ifindex>`.
pub(crate) fn instance_dir(bpffs: &Path, cookie: u64, ifindex: u32) -> PathBuf {
    root(bpffs)
        .join(format!("ns-{cookie}"))
        .join(format!("if-{ifindex}"))
}

/// What a staging folder is for, which decides what the next writer does with it when its
/// process died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// A `load` building a new instance: discarded (its link detaches).
    Load,
    /// An upgrade building the successor of a running instance: completed if the link already
    /// runs its program, else discarded.
    Upgrade,
    /// An instance on its way out (unload, prune, or the predecessor of an upgrade): removed.
    Retired,
}

impl Stage {
    const fn name(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Upgrade => "upgrade",
            Self::Retired => "retired",
        }
    }
}

/// One folder of port-demux's in the bpffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Folder {
    /// `ns-<cookie>/if-<ifindex>`: this build's.
    Current {
        dir: PathBuf,
        cookie: u64,
        ifindex: u32,
    },
    /// `netns-<inode>/<iface>`: main's layout 2 or 3.
    Legacy {
        dir: PathBuf,
        ino: u64,
        iface: String,
    },
    /// `staging-pid<PID>-<START>-<stage>-<n>[-ns<cookie>-if<ifindex>]`, or main's
    /// `netns-<inode>/staging-loader-pid<PID>-<iface>`.
    Staging {
        dir: PathBuf,
        owner: Owner,
        stage: Stage,
        target: Option<(u64, u32)>,
    },
}

impl Folder {
    pub(crate) fn dir(&self) -> &Path {
        match self {
            Self::Current { dir, .. } | Self::Legacy { dir, .. } | Self::Staging { dir, .. } => dir,
        }
    }
}

/// The process a staging folder belongs to: pid and start time (clock ticks since boot, field
/// 22 of `/proc/PID/stat`), so that a reused pid is not taken for the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub pid: u32,
    pub start: Option<u64>,
}

impl Owner {
    /// This process.
    pub(crate) fn me() -> Self {
        Self {
            pid: std::process::id(),
            start: start_time(std::process::id()),
        }
    }

    /// Whether the process still runs.
    pub(crate) fn alive(self) -> bool {
        match (self.start, start_time(self.pid)) {
            (_, None) => false,
            (Some(a), Some(b)) => a == b,
            (None, Some(_)) => true,
        }
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// A new staging folder name for `stage` of this process, in [`ROOT`].
pub(crate) fn staging_dir(bpffs: &Path, stage: Stage, target: Option<(u64, u32)>) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let me = Owner::me();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let target = target
        .map(|(cookie, ifindex)| format!("-ns{cookie}-if{ifindex}"))
        .unwrap_or_default();
    root(bpffs).join(format!(
        "{STAGING}pid{}-{}-{}-{n}{target}",
        me.pid,
        me.start.unwrap_or(0),
        stage.name()
    ))
}

fn parse_staging(dir: PathBuf, name: &str) -> Option<Folder> {
    let mut parts = name.strip_prefix(STAGING)?.split('-');
    let pid = parts.next()?.strip_prefix("pid")?.parse().ok()?;
    let start = parts.next()?.parse().ok().filter(|&s| s != 0);
    let stage = match parts.next()? {
        "load" => Stage::Load,
        "upgrade" => Stage::Upgrade,
        "retired" => Stage::Retired,
        _ => return None,
    };
    let _n = parts.next()?;
    let target = match (parts.next(), parts.next()) {
        (Some(ns), Some(ifx)) => Some((
            ns.strip_prefix("ns")?.parse().ok()?,
            ifx.strip_prefix("if")?.parse().ok()?,
        )),
        _ => None,
    };
    Some(Folder::Staging {
        dir,
        owner: Owner { pid, start },
        stage,
        target,
    })
}

/// The names in `dir`, sorted; none when it is missing, or (`tolerant`) unreadable: a reader
/// granted one namespace's folders (see the README) lists those it may read.
fn names_in(dir: &Path, tolerant: bool) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) if tolerant && e.kind() == io::ErrorKind::PermissionDenied => Ok(Vec::new()),
        Err(e) => Err(Error::io("cannot read", dir, e)),
    }
}

fn names(dir: &Path) -> Result<Vec<String>> {
    names_in(dir, false)
}

/// The names in `port-demux/` of `bpffs`, sorted: namespace folders and staging folders.
pub(crate) fn root_names(bpffs: &Path) -> Result<Vec<String>> {
    names(&root(bpffs))
}

/// Every folder of port-demux's in `bpffs`: this build's, main's, and staging ones.
///
/// # Errors
/// [`Error::NoBpffs`] when nothing is mounted there, or a folder cannot be read.
pub(crate) fn folders(bpffs: &Path) -> Result<Vec<Folder>> {
    let root = root(bpffs);
    if !root.exists() && !is_bpffs(bpffs) {
        return Err(Error::NoBpffs {
            path: bpffs.to_owned(),
        });
    }
    let mut found = Vec::new();
    for name in names(&root)? {
        let dir = root.join(&name);
        if name.starts_with(STAGING) {
            found.extend(parse_staging(dir, &name));
        } else if let Some(cookie) = name.strip_prefix("ns-").and_then(|c| c.parse().ok()) {
            for inner in names_in(&dir, true)? {
                if let Some(ifindex) = inner.strip_prefix("if-").and_then(|i| i.parse().ok()) {
                    found.push(Folder::Current {
                        dir: dir.join(inner),
                        cookie,
                        ifindex,
                    });
                }
            }
        } else if let Some(ino) = name.strip_prefix("netns-").and_then(|i| i.parse().ok()) {
            for inner in names_in(&dir, true)? {
                let sub = dir.join(&inner);
                if let Some(rest) = inner.strip_prefix(LEGACY_STAGING) {
                    let pid = rest.split('-').next().and_then(|p| p.parse().ok());
                    if let Some(pid) = pid {
                        found.push(Folder::Staging {
                            dir: sub,
                            owner: Owner { pid, start: None },
                            stage: Stage::Load,
                            target: None,
                        });
                    }
                } else {
                    found.push(Folder::Legacy {
                        dir: sub,
                        ino,
                        iface: iface_of_pin(&inner),
                    });
                }
            }
        }
    }
    Ok(found)
}

/// Creates `dir` and the folders above it that are missing, root's only (mode 0700; a group
/// granted read access later gets it folder by folder, see the README).
pub(crate) fn create_dirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("cannot create", dir, e))
}

/// Removes the namespace folders (`ns-*`, `netns-*`) left empty.
pub(crate) fn remove_empty_namespace_dirs(bpffs: &Path) {
    let root = root(bpffs);
    for name in names(&root).unwrap_or_default() {
        if name.starts_with("ns-") || name.starts_with("netns-") {
            // Fails, harmlessly, unless empty.
            let _ = fs::remove_dir(root.join(name));
        }
    }
}

pub(crate) fn check_ifname(iface: &str) -> Result<()> {
    if valid_ifname(iface) {
        Ok(())
    } else {
        Err(Error::BadSpec(format!(
            "{iface:?} is not an interface name: check the name with `ip link`"
        )))
    }
}

/// Reads the `META` record pinned in `dir`; a folder without it is of no known layout.
pub(crate) fn read_meta(dir: &Path) -> Result<Meta> {
    let [meta_fd] = open_maps(dir, &[MAPS[4]])?;
    let mut meta = Meta::zeroed();
    sys::lookup(
        meta_fd.as_fd(),
        &0u32.to_ne_bytes(),
        bytemuck::bytes_of_mut(&mut meta),
    )
    .map_err(|e| Error::io("cannot read", dir.join("META"), e))?;
    Ok(meta)
}

/// Opens the pinned `maps` and checks each one's type and sizes against this build's layout.
pub(crate) fn open_maps<const N: usize>(
    dir: &Path,
    maps: &[(&str, u32, u32, u32); N],
) -> Result<[OwnedFd; N]> {
    let open = |&(name, map_type, value_size, max_entries): &(&str, u32, u32, u32)| {
        let path = dir.join(name);
        let fd = sys::obj_get_readable(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Layout {
                    path: dir.to_owned(),
                    found: 0,
                    expected: LAYOUT_VERSION,
                }
            } else {
                Error::io("cannot open", &path, e)
            }
        })?;
        let info = sys::map_info(fd.as_fd()).map_err(|e| Error::io("cannot inspect", &path, e))?;
        if (
            info.map_type,
            info.key_size,
            info.value_size,
            info.max_entries,
        ) != (map_type, 4, value_size, max_entries)
        {
            return Err(Error::Layout {
                path: dir.to_owned(),
                found: 0,
                expected: LAYOUT_VERSION,
            });
        }
        Ok(fd)
    };
    let fds = maps.iter().map(open).collect::<Result<Vec<_>>>()?;
    Ok(fds.try_into().expect("one descriptor per map"))
}

/// Writes the `META` record pinned in `dir`.
pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let path = dir.join("META");
    let fd = sys::obj_get(&path, false).map_err(|e| Error::io("cannot open", &path, e))?;
    sys::update(fd.as_fd(), &0u32.to_ne_bytes(), bytemuck::bytes_of(meta))
        .map_err(|e| Error::io("cannot write", &path, e))
}

/// Removes a pin folder: the link first (detaching the program), then everything else.
pub(crate) fn remove_pins(dir: &Path) -> Result<()> {
    // bpffs answers EPERM, not ENOENT, to unlink in a missing folder.
    if !dir.exists() {
        return Ok(());
    }
    let link = dir.join(LINK_PIN);
    match fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot remove", link, e)),
    }
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("cannot read", dir, e)),
    }
    fs::remove_dir(dir).map_err(|e| Error::io("cannot remove", dir, e))
}

/// An exclusive `flock` on a folder, released on drop. [`DirLock::writers`] is the one lock
/// every writer of port-demux's pinned state takes; readers never take it, and the data path
/// never sees it.
#[derive(Debug)]
pub struct DirLock {
    /// The locked folder; `None` for a writers' lock this thread already held.
    file: Option<File>,
    /// Whether it is (a nesting of) the writers' lock.
    writers: bool,
}

thread_local! {
    /// How many writers' locks this thread holds: the CLI takes it before it opens an
    /// instance, and the library call it then makes takes it again.
    static WRITERS_HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl DirLock {
    /// Blocks until the lock on `dir` is ours.
    ///
    /// # Errors
    /// When the folder cannot be opened or locked.
    pub fn exclusive(dir: &Path) -> Result<Self> {
        let file = File::open(dir).map_err(|e| Error::io("cannot open", dir, e))?;
        // SAFETY: flock on a descriptor we hold.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io("cannot lock", dir, io::Error::last_os_error()));
        }
        Ok(Self {
            file: Some(file),
            writers: false,
        })
    }

    /// The writers' lock: the `flock` of `port-demux/` in `bpffs` (created, root's only, when
    /// missing). Every command that changes pins or maps (load, unload, upgrade, bind, unbind,
    /// prune) holds it from before it opens a map or pin until it is done. Taken again by the
    /// thread that holds it, it nests (another thread or process waits).
    ///
    /// # Errors
    /// [`Error::NoBpffs`] when no bpffs is mounted at `bpffs`; when the folder cannot be
    /// created, opened or locked.
    pub fn writers(bpffs: &Path) -> Result<Self> {
        if WRITERS_HELD.get() == 0 {
            if !is_bpffs(bpffs) {
                return Err(Error::NoBpffs {
                    path: bpffs.to_owned(),
                });
            }
            let root = root(bpffs);
            create_dirs(&root)?;
            let mut lock = Self::exclusive(&root)?;
            lock.writers = true;
            WRITERS_HELD.set(1);
            return Ok(lock);
        }
        WRITERS_HELD.set(WRITERS_HELD.get() + 1);
        Ok(Self {
            file: None,
            writers: true,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if self.writers {
            WRITERS_HELD.set(WRITERS_HELD.get().saturating_sub(1));
        }
        // The flock goes with the descriptor.
        drop(self.file.take());
    }
}
