//! Where an instance's state lives and which network namespace its interface is in.
//!
//! State is pinned in the host's bpffs under a folder per network namespace ([`Scope::dir`]);
//! what is inside is [`crate::layout`]'s.

use std::{
    ffi::{CStr, CString},
    fs::{self, File},
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, MetadataExt as _},
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
        Ok(Self {
            bpffs: BPFFS.into(),
            netns: None,
            ino,
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
        let ino = file.metadata().map_err(err)?.ino();
        Ok(Self {
            bpffs: BPFFS.into(),
            netns: Some(Arc::new(NetNs {
                name: name_or_path.to_owned(),
                file,
            })),
            ino,
        })
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

    /// The folder holding one sub-folder per loaded interface of this namespace.
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        self.bpffs
            .join("port-demux")
            .join(format!("netns-{}", self.ino))
    }

    /// Inode of the network namespace.
    #[must_use]
    pub const fn netns_ino(&self) -> u64 {
        self.ino
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

    /// Creates the namespace folder (root only, mode 0700) and returns it.
    pub(crate) fn create_dir(&self) -> Result<PathBuf> {
        let dir = self.dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("cannot create", &dir, e))?;
        Ok(dir)
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

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: setns on a namespace file descriptor we hold open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
