//! The few `bpf(2)` commands the control plane needs on pinned maps, called directly: aya's
//! typed wrappers lack delete on devmaps and batch operations, and the per-port arrays are
//! read and written whole with `BPF_MAP_*_BATCH` (one syscall for 131,072 entries).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_F_RDONLY: u32 = 1 << 3;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `bpf_attr` prefix of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            libc::c_uint::try_from(size_of::<T>()).expect("small attr"),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn raw(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("file descriptors are non-negative")
}

/// Opens a pinned BPF object; read-only when `read_only`.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub fn obj_get(path: &Path, read_only: bool) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        file_flags: if read_only { BPF_F_RDONLY } else { 0 },
        ..ObjAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd fits i32")) })
}

/// Opens a pinned object read-write, or read-only when read-write is not permitted: root
/// writes, a group granted read access to the pins (see the README) reads, and its writes then
/// fail with `EPERM`; on a bpffs mounted read-only, everyone reads.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
pub fn obj_get_readable(path: &Path) -> io::Result<OwnedFd> {
    obj_get(path, false).or_else(|e| match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => obj_get(path, true),
        _ => Err(e),
    })
}

/// Looks `key` up; `Ok(false)` when the element does not exist.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: raw(fd),
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates or replaces the element at `key`.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: raw(fd),
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Deletes the element at `key`; `Ok(false)` when it did not exist.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
pub fn delete(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: raw(fd),
        key: key.as_ptr() as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads every element of an array map of `len` entries into `values` (`len` values of
/// `value_size` bytes each; for per-CPU arrays `value_size` is the rounded size times the
/// number of possible CPUs), in one `BPF_MAP_LOOKUP_BATCH` call.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub fn lookup_array_batch(
    fd: BorrowedFd<'_>,
    len: u32,
    value_size: usize,
    values: &mut [u8],
) -> io::Result<()> {
    assert_eq!(values.len(), len as usize * value_size, "value buffer size");
    let mut keys = vec![0u32; len as usize];
    let mut out_batch = 0u32;
    let mut done = 0u32;
    let mut in_batch_storage = 0u32;
    while done < len {
        let mut attr = BatchAttr {
            in_batch: if done == 0 {
                0
            } else {
                std::ptr::from_ref(&in_batch_storage) as u64
            },
            out_batch: std::ptr::from_mut(&mut out_batch) as u64,
            keys: keys[done as usize..].as_mut_ptr() as u64,
            values: values[done as usize * value_size..].as_mut_ptr() as u64,
            count: len - done,
            map_fd: raw(fd),
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        done += attr.count;
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        in_batch_storage = out_batch;
    }
    if done != len {
        return Err(io::Error::other(format!(
            "batch lookup returned {done} of {len} entries"
        )));
    }
    Ok(())
}

/// Writes `values` (one per key) at `keys` in one `BPF_MAP_UPDATE_BATCH` call.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub fn update_batch(fd: BorrowedFd<'_>, keys: &[u32], values: &[u8]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).expect("fewer than 2^32 keys"),
        map_fd: raw(fd),
        ..BatchAttr::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    if attr.count as usize == keys.len() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "batch update wrote {} of {} entries",
            attr.count,
            keys.len()
        )))
    }
}

/// Number of possible CPUs: the length of every per-CPU value.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
pub fn possible_cpus() -> io::Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| e)
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The leading fields of `struct bpf_map_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapInfo {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Map id.
    pub id: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Number of entries.
    pub max_entries: u32,
    /// `BPF_F_*` flags.
    pub map_flags: u32,
}

/// The type, sizes and id of a map.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub fn map_info(fd: BorrowedFd<'_>) -> io::Result<MapInfo> {
    let mut info = MapInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: raw(fd),
        info_len: u32::try_from(size_of::<MapInfo>()).expect("small struct"),
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The memory the kernel charges to the BPF map or program behind `fd` (the `memlock:` line of
/// `/proc/self/fdinfo/FD`, in bytes): for a map its values (per-CPU ones times the number of
/// possible CPUs), keys and bookkeeping; for a program its instructions and JIT image.
///
/// # Errors
/// When the fdinfo file cannot be read or has no `memlock:` line (`InvalidData`).
pub fn memlock(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("memlock:")?.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no memlock in fdinfo"))
}

/// The id of the program behind a pinned `bpf_link`, opening the pin read-only when read-write
/// is not permitted (readers granted by group).
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub fn pinned_link_prog_id(path: &Path) -> io::Result<u32> {
    let fd = obj_get_readable(path)?;
    // struct bpf_link_info { u32 type; u32 id; u32 prog_id; ... }
    let mut info = [0u32; 3];
    let mut attr = InfoAttr {
        bpf_fd: raw(fd.as_fd()),
        info_len: u32::try_from(size_of_val(&info)).expect("small struct"),
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info[2])
}

/// A shared memory mapping of a `BPF_F_MMAPABLE` array map, unmapped on drop. Writes through
/// it are the data path's memory: an aligned 8-byte store is seen whole or not at all.
#[derive(Debug)]
pub struct Mapped {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl Mapped {
    /// Maps the first `len` bytes of the array map `fd`, read-write.
    ///
    /// # Errors
    /// The kernel's error (`EPERM` for a read-only descriptor, `EINVAL` past the map).
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of a descriptor we hold; the kernel checks the length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw(fd).cast_signed(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { ptr, len })
    }

    /// Copies `bytes` in at byte `offset`.
    ///
    /// # Panics
    /// When they do not fit.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len, "write inside the mapping");
        // SAFETY: inside the mapping (checked); the data path reads it concurrently, which
        // is why only regions no port points at yet are written this way.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            );
        }
    }

    /// The `u64` at byte `offset` (8-aligned), read atomically.
    ///
    /// # Panics
    /// When it is outside the mapping or not aligned.
    #[must_use]
    pub fn load_u64(&self, offset: usize) -> u64 {
        self.atomic(offset)
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores `value` at byte `offset` (8-aligned) in one atomic store, after every write
    /// before it (release).
    ///
    /// # Panics
    /// When it is outside the mapping or not aligned.
    pub fn store_u64(&self, offset: usize, value: u64) {
        self.atomic(offset)
            .store(value, std::sync::atomic::Ordering::Release);
    }

    fn atomic(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len,
            "aligned, inside"
        );
        // SAFETY: aligned (the mapping is page-aligned, the offset a multiple of 8) and
        // inside it; AtomicU64 has the layout of u64.
        #[expect(
            clippy::cast_ptr_alignment,
            reason = "page-aligned mapping, offset checked above"
        )]
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(offset)
                .cast::<std::sync::atomic::AtomicU64>()
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// What `BPF_OBJ_GET_INFO_BY_FD` tells of an XDP `bpf_link`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Link id (never reused while the kernel runs, like program ids).
    pub id: u32,
    /// Id of the program the link runs now.
    pub prog_id: u32,
    /// Index of the interface the link is attached to; 0 once the interface is gone (the
    /// kernel detaches the link then).
    pub ifindex: u32,
}

/// The id, program and interface of the XDP `bpf_link` pinned at `path`.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub fn pinned_link_info(path: &Path) -> io::Result<LinkInfo> {
    let fd = obj_get_readable(path)?;
    // struct bpf_link_info { u32 type; u32 id; u32 prog_id; union (8-aligned) { ...;
    // struct { u32 ifindex; } xdp; ... } }: the union starts at byte 16.
    let mut info = [0u64; 4];
    let mut attr = InfoAttr {
        bpf_fd: raw(fd.as_fd()),
        info_len: u32::try_from(size_of_val(&info)).expect("small struct"),
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let words: [u32; 8] = bytemuck::cast(info);
    Ok(LinkInfo {
        id: words[1],
        prog_id: words[2],
        ifindex: words[4],
    })
}
