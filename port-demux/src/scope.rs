//! Where an instance's state lives and which network namespace its interface is in.
//!
//! State is pinned in the host's bpffs under a folder per network namespace ([`Scope::dir`]);
//! what is inside is [`crate::layout`]'s.

use std::{
    ffi::{CStr, CString},
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{Error, Result};

/// Default mount point of the BPF filesystem.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A network namespace opened by name (`/run/netns/NAME`) or path.
#[derive(Debug)]
struct NetNs {
    name: String,
    file: File,
}

/// The namespace an interface is looked up in, and the bpffs folder its pins go to.
#[derive(Clone, Debug)]
pub struct Scope {
    bpffs: PathBuf,
    netns: Option<Arc<NetNs>>,
    ino: u64,
    cookie: u64,
}

impl Scope {
    /// The calling thread's network namespace, pins under [`BPFFS`].
    ///
    /// # Errors
    /// When `/proc/thread-self/ns/net` cannot be read.
    pub fn current() -> Result<Self> {
        let path = Path::new("/proc/thread-self/ns/net");
        let ino = fs::metadata(path)
            .map_err(|e| Error::io("cannot read", path, e))?
            .ino();
        let cookie = netns_cookie().map_err(|e| Error::io("cannot read", "SO_NETNS_COOKIE", e))?;
        Ok(Self {
            bpffs: BPFFS.into(),
            netns: None,
            ino,
            cookie,
        })
    }

    /// The network namespace `name_or_path`: a name from `ip netns` (`/run/netns/NAME`) or a
    /// path such as `/proc/PID/ns/net`. Pins still go to the host's bpffs.
    ///
    /// # Errors
    /// [`Error::NetNs`] when it cannot be opened.
    pub fn netns(name_or_path: &str) -> Result<Self> {
        let path = if name_or_path.contains('/') {
            PathBuf::from(name_or_path)
        } else {
            Path::new("/run/netns").join(name_or_path)
        };
        let err = |source| Error::NetNs {
            name: name_or_path.to_owned(),
            source,
        };
        let file = File::open(&path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        let mut this = Self {
            bpffs: BPFFS.into(),
            netns: Some(Arc::new(NetNs {
                name: name_or_path.to_owned(),
                file,
            })),
            ino: meta.ino(),
            cookie: 0,
        };
        this.cookie = this
            .run(netns_cookie)?
            .map_err(|e| Error::io("cannot read", "SO_NETNS_COOKIE", e))?;
        Ok(this)
    }

    /// Puts the pins under another bpffs mount.
    #[must_use]
    pub fn with_bpffs(mut self, bpffs: impl Into<PathBuf>) -> Self {
        self.bpffs = bpffs.into();
        self
    }

    /// The bpffs mount point.
    #[must_use]
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The folder holding one sub-folder per instance loaded in this namespace:
    /// `port-demux/ns-<cookie>` (see the README's pinned-state contract).
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        self.bpffs
            .join("port-demux")
            .join(format!("ns-{}", self.cookie))
    }

    /// The folder main's builds (layouts 2 and 3 before the pinned-state contract) pinned this
    /// namespace's instances in: `port-demux/netns-<inode>`. The kernel reuses namespace
    /// inodes, so it never identifies an instance on its own; this build still finds, upgrades
    /// and unloads the instances pinned there.
    #[must_use]
    pub fn legacy_dir(&self) -> PathBuf {
        self.bpffs
            .join("port-demux")
            .join(format!("netns-{}", self.ino))
    }

    /// Inode of the network namespace (reused by the kernel once the namespace is gone).
    #[must_use]
    pub const fn netns_ino(&self) -> u64 {
        self.ino
    }

    /// Cookie of the network namespace (`SO_NETNS_COOKIE`): never reused while the kernel runs.
    #[must_use]
    pub const fn netns_cookie(&self) -> u64 {
        self.cookie
    }

    /// The name or path the namespace was opened by, `None` for the caller's own.
    #[must_use]
    pub fn netns_name(&self) -> Option<&str> {
        self.netns.as_ref().map(|ns| ns.name.as_str())
    }

    /// `" in network namespace NAME"`, or empty for the caller's own namespace.
    #[must_use]
    pub fn where_(&self) -> String {
        self.netns
            .as_ref()
            .map(|ns| format!(" in network namespace {}", ns.name))
            .unwrap_or_default()
    }

    /// Runs `f` on this thread inside the namespace, then returns to the thread's own, also
    /// when `f` panics (a guard restores it while the panic unwinds). Sockets `f` creates stay
    /// in the namespace wherever they are used later.
    ///
    /// # Errors
    /// [`Error::Privileges`] or [`Error::NetNs`] when the namespace cannot be entered.
    ///
    /// # Panics
    /// When `f` panics (after the thread is back in its own namespace), or when the thread
    /// cannot return to its own namespace (it would run on in the wrong one).
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let Some(ns) = &self.netns else {
            return Ok(f());
        };
        let own = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::io("cannot open", "/proc/thread-self/ns/net", e))?;
        setns(&ns.file).map_err(|source| match source.raw_os_error() {
            Some(libc::EPERM) => Error::Privileges {
                what: format!("entering network namespace {}", ns.name),
            },
            _ => Error::NetNs {
                name: ns.name.clone(),
                source,
            },
        })?;
        let _back = Restore(own);
        Ok(f())
    }

    /// Index of `iface` in the namespace, or `None` when there is none.
    ///
    /// # Errors
    /// When the namespace cannot be entered.
    pub fn ifindex(&self, iface: &str) -> Result<Option<u32>> {
        let Ok(name) = CString::new(iface) else {
            return Ok(None);
        };
        // SAFETY: a NUL-terminated name.
        self.run(|| Some(unsafe { libc::if_nametoindex(name.as_ptr()) }).filter(|&i| i != 0))
    }

    /// Name of interface `ifindex` in the namespace.
    ///
    /// # Errors
    /// When the namespace cannot be entered.
    pub fn ifname(&self, ifindex: u32) -> Result<Option<String>> {
        self.run(|| {
            let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
            // SAFETY: the buffer is IF_NAMESIZE long, as if_indextoname requires.
            let ret = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
            (!ret.is_null()).then(|| {
                // SAFETY: if_indextoname wrote a NUL-terminated name.
                unsafe { CStr::from_ptr(buf.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            })
        })
    }

    /// Makes sure a bpffs is mounted at [`Scope::bpffs`], mounting one if not.
    ///
    /// # Errors
    /// [`Error::Bpffs`] when there is none and mounting fails.
    pub fn ensure_bpffs(&self) -> Result<()> {
        if is_bpffs(&self.bpffs) {
            return Ok(());
        }
        let err = |source| Error::Bpffs {
            path: self.bpffs.clone(),
            source,
        };
        fs::create_dir_all(&self.bpffs).map_err(err)?;
        let target = CString::new(self.bpffs.as_os_str().as_encoded_bytes())
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        // SAFETY: NUL-terminated strings; no data argument.
        let ret = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if ret != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                return Err(Error::Privileges {
                    what: format!("mounting bpffs at {}", self.bpffs.display()),
                });
            }
            return Err(err(e));
        }
        Ok(())
    }
}

/// Whether `path` is the root of a mounted bpffs.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct we own.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ret = unsafe { libc::statfs(c.as_ptr(), &raw mut buf) };
    #[allow(
        clippy::useless_conversion,
        reason = "f_type's width differs between libcs"
    )]
    let magic = i64::from(buf.f_type);
    ret == 0 && magic == BPF_FS_MAGIC
}

/// Returns the thread to the network namespace it holds when dropped: after [`Scope::run`]'s
/// closure, returned or unwinding.
struct Restore(File);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.0) {
            // The thread would go on in the wrong namespace: never let it.
            if std::thread::panicking() {
                eprintln!("cannot return to the thread's own network namespace: {e}");
                std::process::abort();
            }
            panic!("cannot return to the thread's own network namespace: {e}");
        }
    }
}

/// The cookie of the calling thread's network namespace: `SO_NETNS_COOKIE` of a socket made
/// in it (Linux 5.14 and later).
fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a plain socket call; the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).expect("8 fits");
    // SAFETY: getsockopt into a u64 we own, its length passed.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if ret == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A live network namespace found by [`namespaces`].
#[derive(Clone, Debug)]
pub(crate) struct LiveNs {
    /// The namespace, opened.
    pub scope: Scope,
    /// Its name in `/run/netns`, if it has one.
    pub name: Option<String>,
}

/// Every network namespace this process can find: the caller's own first, those named in
/// `/run/netns`, those of every process (`/proc/*/ns/net`); one entry each.
pub(crate) fn namespaces(bpffs: &Path) -> Vec<LiveNs> {
    let mut found: Vec<LiveNs> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |scope: Scope, name: Option<String>| {
        if let Some(ns) = found.iter_mut().find(|ns| ns.scope.cookie == scope.cookie) {
            if ns.name.is_none() {
                ns.name = name;
            }
        } else {
            found.push(LiveNs { scope, name });
        }
    };
    if let Ok(own) = Scope::current() {
        seen.insert(own.ino);
        add(own.with_bpffs(bpffs), None);
    }
    let mut named: Vec<String> = fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    named.sort();
    for name in named {
        if let Ok(scope) = Scope::netns(&name) {
            seen.insert(scope.ino);
            add(scope.with_bpffs(bpffs), Some(name));
        }
    }
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let path = format!("/proc/{pid}/ns/net");
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !seen.insert(meta.ino()) {
            continue;
        }
        if let Ok(scope) = Scope::netns(&path) {
            add(scope.with_bpffs(bpffs), None);
        }
    }
    found
}

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: setns on a namespace file descriptor we hold open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
