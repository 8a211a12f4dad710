//! The bpffs pin layout and its lock: which folders and pins an instance has, the `META`
//! record and its layout versions, and the one `flock` that serialises writers.
//!
//! Pins live in the host's bpffs, one folder per (network namespace, interface):
//! `/sys/fs/bpf/port-demux/netns-<inode>/<iface>/` holding `prog`, `link` and the maps of
//! [`MAPS`].

use std::{
    fs::{self, File},
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
};

use bytemuck::Zeroable as _;
use port_demux_common::{
    BINDINGS_LEN, Binding, GlobalCounters, Globals, LAYOUT_VERSION, Meta, PortCounters, PortScope,
    REDIRECT_SLOTS, SCOPE_RECORDS, SCOPED_LEN, ScopeV4, ScopeV6, ScopedBinding,
};

use crate::{Error, Result, Scope, is_bpffs, spec::valid_ifname, sys};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_DEVMAP: u32 = 14;
/// Devmap values: `struct bpf_devmap_val { u32 ifindex; union { int fd; u32 id; } }`.
pub(crate) const DEVMAP_VALUE: u32 = 8;

/// The pinned maps: name, type, value size, entries. Layout v2 had the first five, v3 the
/// first six ([`MAPS_V3`]); v4 added the scope maps.
#[expect(clippy::cast_possible_truncation, reason = "sizes of small structs")]
pub(crate) const MAPS: [(&str, u32, u32, u32); 11] = [
    (
        "BINDINGS",
        BPF_MAP_TYPE_ARRAY,
        size_of::<Binding>() as u32,
        BINDINGS_LEN,
    ),
    (
        "PORT_STATS",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        size_of::<PortCounters>() as u32,
        BINDINGS_LEN,
    ),
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
        size_of::<ScopeV4>() as u32,
        SCOPE_RECORDS,
    ),
    (
        "SCOPE_V6",
        BPF_MAP_TYPE_ARRAY,
        size_of::<ScopeV6>() as u32,
        SCOPE_RECORDS,
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
/// The maps of layout v3, which `load --upgrade` from v3 keeps (and creates the rest).
pub(crate) const MAPS_V3: usize = 6;
/// The map layout v3 added; `load --upgrade` from v2 creates it.
pub(crate) const GLOBALS2: &str = "GLOBALS2";
/// The devmap of redirect targets.
pub(crate) const REDIRECT: &str = "REDIRECT";
/// Where `load --upgrade` from v2 pins the devmap it replaces `REDIRECT` with, until the swap.
pub(crate) const REDIRECT_V3: &str = "REDIRECT-v3";
pub(crate) const PROG_PIN: &str = "prog";
pub(crate) const LINK_PIN: &str = "link";

/// Prefix of the folders a `load` in progress pins into (longer than any interface name).
pub(crate) const STAGING: &str = "staging-loader-pid";

/// The pin folder name of an interface: bpffs refuses names with dots, so `.` becomes `%2E`
/// (and `%` becomes `%25`).
pub(crate) fn pin_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2E")
}

/// The interface named by a pin folder.
pub(crate) fn iface_of_pin(name: &str) -> String {
    name.replace("%2E", ".").replace("%25", "%")
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

impl Scope {
    /// Interfaces with port-demux loaded in this namespace, sorted.
    ///
    /// # Errors
    /// When the folder exists but cannot be read.
    pub fn loaded(&self) -> Result<Vec<String>> {
        let dir = self.dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !is_bpffs(self.bpffs()) => {
                return Err(Error::NoBpffs {
                    path: self.bpffs().to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot read", dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| !name.starts_with(STAGING))
            .map(|name| iface_of_pin(&name))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// An exclusive `flock` on a folder, released on drop: it serialises writers of one
/// namespace's or one interface's state. Readers never take it, and the data path never sees it.
#[derive(Debug)]
pub struct DirLock(#[expect(dead_code, reason = "held for its Drop")] File);

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
        Ok(Self(file))
    }
}
