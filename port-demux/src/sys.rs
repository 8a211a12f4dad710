//! The few `bpf(2)` commands the control plane needs on pinned maps, called directly: aya's
//! typed wrappers lack delete on devmaps and batch operations, and the per-port arrays are
//! read and written whole with `BPF_MAP_*_BATCH` (one syscall for 131,072 entries).
//!
//! Private to the crate: the kernel reads keys and writes values of the sizes the map was
//! created with, whatever buffer it is handed, so every element call first checks the buffers
//! against the map's own sizes (`BPF_OBJ_GET_INFO_BY_FD`; per-CPU values are the rounded size
//! times the possible CPUs) and refuses a short one with `EINVAL`-like
//! [`io::ErrorKind::InvalidInput`]. [`crate::pinned`] is the typed public face.

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

const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
const BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: u32 = 21;

/// The key size and the size of one value as user space reads and writes it: the map's value
/// size, or for a per-CPU map that size rounded up to 8 bytes times the possible CPUs.
fn element_sizes(fd: BorrowedFd<'_>) -> io::Result<(usize, usize)> {
    let info = map_info(fd)?;
    let value = info.value_size as usize;
    let value = if is_per_cpu(&info) {
        value.next_multiple_of(8) * possible_cpus()?
    } else {
        value
    };
    Ok((info.key_size as usize, value))
}

/// Whether the map holds one value per possible CPU.
pub(crate) const fn is_per_cpu(info: &MapInfo) -> bool {
    matches!(
        info.map_type,
        BPF_MAP_TYPE_PERCPU_HASH
            | BPF_MAP_TYPE_PERCPU_ARRAY
            | BPF_MAP_TYPE_LRU_PERCPU_HASH
            | BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE
    )
}

fn too_small(what: &str, given: usize, needed: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} buffer of {given} bytes where the map needs {needed}"),
    )
}

/// Checks a key and a value buffer against the map's sizes (`value` of `None`: no value).
fn check_element(fd: BorrowedFd<'_>, key: &[u8], value: Option<usize>) -> io::Result<()> {
    let (key_size, value_size) = element_sizes(fd)?;
    if key.len() < key_size {
        return Err(too_small("key", key.len(), key_size));
    }
    match value {
        Some(len) if len < value_size => Err(too_small("value", len, value_size)),
        _ => Ok(()),
    }
}

/// `BPF_MAP_CREATE`'s attributes, up to the name.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `BPF_OBJ_PIN`'s attributes.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Creates a one-entry array map of `value_size` bytes with `BPF_F_MMAPABLE`, named `name`
/// (at most 15 bytes), and pins it at `path`.
///
/// # Errors
/// The kernel's error: `EPERM` without privileges, `E2BIG` for a value past its limit,
/// `EEXIST` when `path` is taken.
pub(crate) fn create_pinned_mmapable_array(
    name: &str,
    value_size: u32,
    path: &Path,
) -> io::Result<OwnedFd> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: 1,
        map_flags: BPF_F_MMAPABLE,
        ..MapCreateAttr::default()
    };
    let len = name.len().min(15);
    attr.map_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: a new descriptor the kernel gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("a descriptor")) };
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut pin = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: raw(fd.as_fd()),
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut pin)?;
    Ok(fd)
}

/// Opens a pinned BPF object; read-only when `read_only`.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub(crate) fn obj_get(path: &Path, read_only: bool) -> io::Result<OwnedFd> {
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
pub(crate) fn obj_get_readable(path: &Path) -> io::Result<OwnedFd> {
    obj_get(path, false).or_else(|e| match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => obj_get(path, true),
        _ => Err(e),
    })
}

/// Looks `key` up; `Ok(false)` when the element does not exist.
///
/// # Errors
/// A key or value buffer smaller than the map's ([`io::ErrorKind::InvalidInput`]), or the
/// kernel's error (`EPERM`, `EACCES`, ...) as an [`io::Error`].
pub(crate) fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    check_element(fd, key, Some(value.len()))?;
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
/// A key or value buffer smaller than the map's ([`io::ErrorKind::InvalidInput`]), or the
/// kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
pub(crate) fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    check_element(fd, key, Some(value.len()))?;
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
/// A key buffer smaller than the map's ([`io::ErrorKind::InvalidInput`]), or the kernel's error
/// (`EPERM`, `EACCES`, ...) as an [`io::Error`].
pub(crate) fn delete(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    check_element(fd, key, None)?;
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

/// Reads the first `len` elements of an array map into `values` (`len` values of
/// `value_size` bytes each; for per-CPU arrays `value_size` is the rounded size times the
/// number of possible CPUs), in one `BPF_MAP_LOOKUP_BATCH` call.
///
/// # Errors
/// Sizes that are not the map's (4-byte keys, `value_size` the map's value size, at most its
/// entries: [`io::ErrorKind::InvalidInput`]), or the kernel's error (`EPERM`, `EACCES`, ...) as
/// an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub(crate) fn lookup_array_batch(
    fd: BorrowedFd<'_>,
    len: u32,
    value_size: usize,
    values: &mut [u8],
) -> io::Result<()> {
    lookup_array_batch_at(fd, 0, len, value_size, values)
}

/// As [`lookup_array_batch`], for the `len` elements from key `first` on: batches of one
/// array from several threads read it in parallel.
///
/// # Errors
/// As [`lookup_array_batch`]; keys past the map's entries are [`io::ErrorKind::InvalidInput`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub(crate) fn lookup_array_batch_at(
    fd: BorrowedFd<'_>,
    first: u32,
    len: u32,
    value_size: usize,
    values: &mut [u8],
) -> io::Result<()> {
    check_batch(fd, first as usize, len as usize, value_size, values.len())?;
    let mut keys = vec![0u32; len as usize];
    let mut out_batch = 0u32;
    let mut done = 0u32;
    // The kernel continues after the key in `in_batch`: the one before `first`.
    let mut in_batch_storage = first.wrapping_sub(1);
    while done < len {
        let mut attr = BatchAttr {
            in_batch: if done == 0 && first == 0 {
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
/// A value buffer that is not one map value per key ([`io::ErrorKind::InvalidInput`]), or the
/// kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
///
/// # Panics
/// Only on impossible sizes: descriptors, counts and buffer lengths the kernel gave or took.
pub(crate) fn update_batch(fd: BorrowedFd<'_>, keys: &[u32], values: &[u8]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let (_, value_size) = element_sizes(fd)?;
    check_batch(fd, 0, keys.len(), value_size, values.len())?;
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

/// Checks a batch of `count` 4-byte keys and `count` values of `value_size` bytes in a buffer of
/// `buffer` bytes against the map: its key size, its value size, its number of entries.
/// Checks a batch of `count` entries (from key `first` on, for a lookup) against the map.
fn check_batch(
    fd: BorrowedFd<'_>,
    first: usize,
    count: usize,
    value_size: usize,
    buffer: usize,
) -> io::Result<()> {
    let info = map_info(fd)?;
    let (key_size, map_value_size) = element_sizes(fd)?;
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if key_size != size_of::<u32>() {
        return Err(invalid(format!("batch over {key_size}-byte keys, not u32")));
    }
    if value_size != map_value_size {
        return Err(invalid(format!(
            "batch of {value_size}-byte values where the map's are {map_value_size}"
        )));
    }
    if first + count > info.max_entries as usize {
        return Err(invalid(format!(
            "batch of {count} entries from key {first} in a map of {}",
            info.max_entries
        )));
    }
    if buffer != count * value_size {
        return Err(too_small("batch value", buffer, count * value_size));
    }
    Ok(())
}

/// Number of possible CPUs: the length of every per-CPU value.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
pub(crate) fn possible_cpus() -> io::Result<usize> {
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
pub(crate) struct MapInfo {
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
pub(crate) fn map_info(fd: BorrowedFd<'_>) -> io::Result<MapInfo> {
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

/// A shared memory mapping of a `BPF_F_MMAPABLE` array map, unmapped on drop. Writes through
/// it are the data path's memory: an aligned 8-byte store is seen whole or not at all.
#[derive(Debug)]
pub struct Mapped {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    writable: bool,
}

/// `BPF_F_MMAPABLE`: an array map whose values can be memory-mapped.
pub(crate) const BPF_F_MMAPABLE: u32 = 1 << 10;

impl Mapped {
    /// Maps the first `len` bytes of the array map `fd`, read-write.
    ///
    /// # Errors
    /// The kernel's error (`EPERM` for a read-only descriptor, `EINVAL` past the map).
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::map(fd, len, true)
    }

    /// Maps the first `len` bytes of the array map `fd`, read-only.
    ///
    /// # Errors
    /// The kernel's error: `EINVAL` past the map, for a map without `BPF_F_MMAPABLE`, and for
    /// a descriptor opened read-only (`mmap` turns a shared mapping of a file not open for
    /// writing into a private one, which the kernel refuses for maps).
    pub fn read_only(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::map(fd, len, false)
    }

    fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Self> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a descriptor we hold; the kernel checks the length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                raw(fd).cast_signed(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { ptr, len, writable })
    }

    /// Copies the mapping's bytes from byte `offset` into `out`.
    ///
    /// # Panics
    /// When they are not all inside the mapping.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len, "read inside the mapping");
        // SAFETY: inside the mapping (checked). Writers may change it meanwhile, as they may
        // during a batch lookup: a value read while it is rewritten can mix old and new.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
    }

    /// Copies `bytes` in at byte `offset`.
    ///
    /// # Panics
    /// When they do not fit.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(self.writable, "a writable mapping");
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
        assert!(self.writable, "a writable mapping");
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
pub(crate) struct LinkInfo {
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
pub(crate) fn pinned_link_info(path: &Path) -> io::Result<LinkInfo> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;

    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }

    /// An array of `entries` values of `value_size` bytes (needs root, as every kernel test).
    fn array(value_size: u32, entries: u32) -> OwnedFd {
        let mut attr = CreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size,
            max_entries: entries,
        };
        let fd = bpf(BPF_MAP_CREATE, &mut attr).expect("BPF_MAP_CREATE (run as root)");
        // SAFETY: a new descriptor the kernel gave us.
        unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd")) }
    }

    #[test]
    fn short_buffers_never_reach_the_kernel() {
        let map = array(24, 4);
        let fd = map.as_fd();
        let key = 0u32.to_ne_bytes();
        let refused = |r: io::Result<bool>| {
            assert_eq!(
                r.expect_err("a short buffer").kind(),
                io::ErrorKind::InvalidInput
            );
        };
        refused(lookup(fd, &key, &mut [0u8; 1]));
        refused(lookup(fd, &key[..2], &mut [0u8; 24]));
        refused(delete(fd, &key[..1]));
        assert_eq!(
            update(fd, &key, &[7u8; 23]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        update(fd, &key, &[7u8; 24]).expect("the map's size");
        let mut value = [0u8; 24];
        assert!(lookup(fd, &key, &mut value).expect("lookup"));
        assert_eq!(value, [7u8; 24]);

        let mut all = vec![0u8; 4 * 24];
        lookup_array_batch(fd, 4, 24, &mut all).expect("batch of the map's size");
        assert_eq!(all[..24], [7u8; 24]);
        for (len, size, buffer) in [(4, 16, 4 * 16), (5, 24, 5 * 24), (4, 24, 24)] {
            let mut buf = vec![0u8; buffer];
            assert_eq!(
                lookup_array_batch(fd, len, size, &mut buf)
                    .unwrap_err()
                    .kind(),
                io::ErrorKind::InvalidInput,
                "{len} x {size} in {buffer}"
            );
        }
        assert_eq!(
            update_batch(fd, &[0, 1], &[0u8; 24]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn batches_from_a_key_read_that_part_of_the_array() {
        let map = array(8, 10);
        let fd = map.as_fd();
        let keys: Vec<u32> = (0..10).collect();
        let values: Vec<u8> = keys
            .iter()
            .flat_map(|k| u64::from(k * 3 + 1).to_ne_bytes())
            .collect();
        update_batch(fd, &keys, &values).expect("update");
        for (first, len) in [(0, 10), (0, 4), (4, 6), (9, 1), (3, 0)] {
            let mut part = vec![0u8; len as usize * 8];
            lookup_array_batch_at(fd, first, len, 8, &mut part).expect("lookup");
            let from = first as usize * 8;
            assert_eq!(part, values[from..from + part.len()], "{first} + {len}");
        }
        let mut one = [0u8; 16];
        assert_eq!(
            lookup_array_batch_at(fd, 9, 2, 8, &mut one)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput,
            "past the end"
        );
    }

    #[test]
    fn typed_access_checks_the_types() {
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Value([u8; 24]);
        let map = array(24, 3);
        let fd = map.as_fd();
        assert_eq!(
            crate::pinned::read_array::<u64>(fd).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            crate::pinned::read_array::<Value>(fd).expect("read").len(),
            3
        );
        assert_eq!(
            crate::pinned::delete(fd, &0u8).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
