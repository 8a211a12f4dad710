//! An instance's pinned maps read and written by their types, for tools and tests that look at
//! them directly, as another program would: opening a pin, reading a whole array in one
//! `BPF_MAP_LOOKUP_BATCH` (or a one-value table such as `BINDINGS` in one lookup), writing such
//! a table in one update, deleting an element (which aya's `DevMap` lacks). Every call checks
//! the Rust types against the map's own key and value sizes before the kernel sees a buffer.

use std::{
    io,
    os::fd::{BorrowedFd, OwnedFd},
    path::Path,
};

use bytemuck::Pod;

use crate::sys;

/// Opens the pinned map or program at `path`; read-only when `read_only`.
///
/// # Errors
/// The kernel's error (`ENOENT`, `EPERM`, `EACCES`, ...) as an [`io::Error`].
pub fn open(path: &Path, read_only: bool) -> io::Result<OwnedFd> {
    sys::obj_get(path, read_only)
}

/// `BPF_F_MMAPABLE`, a bit of [`map_flags`]: the array's values can be memory-mapped.
pub const BPF_F_MMAPABLE: u32 = sys::BPF_F_MMAPABLE;

/// The `BPF_F_*` flags the map `fd` was created with.
///
/// # Errors
/// The kernel's error as an [`io::Error`].
pub fn map_flags(fd: BorrowedFd<'_>) -> io::Result<u32> {
    sys::map_info(fd).map(|info| info.map_flags)
}

/// The map's id.
///
/// # Errors
/// The kernel's error as an [`io::Error`].
pub fn map_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    sys::map_info(fd).map(|info| info.id)
}

/// Every element of the array map `fd`, in one batch lookup: `V` is the map's value type; for
/// a per-CPU array, one CPU's value, and the result holds each entry's values for every
/// possible CPU one after the other (entry-major). A one-entry array whose value is a table of
/// `V` (`BINDINGS`) gives the table's records, from one lookup.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] when `V` is not the map's value type (its size differs, or
/// for a per-CPU map is not a multiple of 8 bytes), or the kernel's error.
pub fn read_array<V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<V>> {
    let info = sys::map_info(fd)?;
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let value_size = info.value_size as usize;
    if !sys::is_per_cpu(&info)
        && info.max_entries == 1
        && value_size > size_of::<V>()
        && value_size.is_multiple_of(size_of::<V>())
    {
        // A one-value table (`BINDINGS`, `SCOPE_V4`, ...): its records, in one lookup.
        let mut values = vec![V::zeroed(); value_size / size_of::<V>()];
        sys::lookup(
            fd,
            &0u32.to_ne_bytes(),
            bytemuck::cast_slice_mut(&mut values),
        )?;
        return Ok(values);
    }
    if size_of::<V>() != value_size {
        return Err(invalid(format!(
            "a {}-byte value type for a map of {}-byte values",
            size_of::<V>(),
            info.value_size
        )));
    }
    let per_cpu = sys::is_per_cpu(&info);
    if per_cpu && !size_of::<V>().is_multiple_of(8) {
        return Err(invalid(format!(
            "a per-CPU value of {} bytes: the kernel pads them to 8",
            size_of::<V>()
        )));
    }
    let cpus = if per_cpu { sys::possible_cpus()? } else { 1 };
    let mut values = vec![V::zeroed(); info.max_entries as usize * cpus];
    sys::lookup_array_batch(
        fd,
        info.max_entries,
        size_of::<V>() * cpus,
        bytemuck::cast_slice_mut(&mut values),
    )?;
    Ok(values)
}

/// Writes `values` as the one value of the one-entry array map `fd` whose value is a table of
/// `V` (`BINDINGS`), in one update.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] when the map is not such a table of `values.len()` records
/// of `V`, or the kernel's error.
pub fn write_table<V: Pod>(fd: BorrowedFd<'_>, values: &[V]) -> io::Result<()> {
    let info = sys::map_info(fd)?;
    if sys::is_per_cpu(&info)
        || info.max_entries != 1
        || info.value_size as usize != size_of_val(values)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} records of {} bytes for a map of {} values of {} bytes",
                values.len(),
                size_of::<V>(),
                info.max_entries,
                info.value_size
            ),
        ));
    }
    sys::update(fd, &0u32.to_ne_bytes(), bytemuck::cast_slice(values))
}

/// Deletes the element at `key` of map `fd`; `Ok(false)` when it did not exist.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] when `K` is not the map's key size, or the kernel's error.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, key: &K) -> io::Result<bool> {
    let info = sys::map_info(fd)?;
    if size_of::<K>() != info.key_size as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a {}-byte key type for a map of {}-byte keys",
                size_of::<K>(),
                info.key_size
            ),
        ));
    }
    sys::delete(fd, bytemuck::bytes_of(key))
}
