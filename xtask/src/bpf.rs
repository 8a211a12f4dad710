//! The raw `bpf(2)` calls the benchmarks need beyond the library: the floor program, pins,
//! `BPF_PROG_TEST_RUN` with the repeat count and flags the bench sets.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_TYPE_XDP: u32 = 6;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is an initialised `bpf_attr` prefix of the size passed.
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

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel returned a new descriptor that we now own.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd fits i32")) }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;

/// Loads an XDP program that only returns `action` (`r0 = action; exit`), named `name`: the
/// floor (`XDP_PASS`), the drop-only receiver and the live-traffic sender (`XDP_TX`).
pub fn load_return_program(action: u32, name: &str) -> io::Result<OwnedFd> {
    // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }
    let [a0, a1, a2, a3] = action.to_le_bytes();
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0, 0, a0, a1, a2, a3]), // BPF_ALU64 | BPF_MOV | BPF_K: r0 = action
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),        // BPF_JMP | BPF_EXIT
    ];
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    let len = name.len().min(15);
    prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins `fd` at `path`.
pub fn obj_pin(fd: &OwnedFd, path: &str) -> io::Result<()> {
    let path = CString::new(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: u32::try_from(fd.as_raw_fd()).expect("fd"),
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens a pinned object.
pub fn obj_get(path: &str) -> io::Result<OwnedFd> {
    let path = CString::new(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Opens a program by id.
pub fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = IdAttr {
        id,
        ..IdAttr::default()
    };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `BPF_PROG_TEST_RUN`: runs `prog` on `frame` `repeat` times; returns the action and the mean
/// nanoseconds per run as the kernel measured it (whole nanoseconds).
pub fn test_run(prog: &OwnedFd, frame: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(prog.as_raw_fd()).expect("fd"),
        data_size_in: u32::try_from(frame.len()).expect("small frame"),
        data_size_out: u32::try_from(out.len()).expect("small frame"),
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr.retval, attr.duration))
}

/// `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18): the frames a test run's program returns
/// `XDP_TX` or `XDP_REDIRECT` for are really sent.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// `struct xdp_md`, the context a test run takes.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// `BPF_PROG_TEST_RUN` in live-frames mode: runs `prog` `repeat` times on `frame` as if it
/// arrived on interface `ifindex` (looked up in the calling thread's network namespace), and
/// really sends what it returns `XDP_TX` for, out of that interface (in batches of 64, the
/// kernel's default). Its peer's XDP program runs on them in the softirq that follows each
/// batch, on this CPU, inside the time the kernel measures: returns that time per frame
/// (`duration`, whole nanoseconds; the call's set-up and tear-down are outside it).
pub fn test_run_live(prog: &OwnedFd, frame: &[u8], repeat: u32, ifindex: u32) -> io::Result<u32> {
    let ctx = XdpMd {
        data_end: u32::try_from(frame.len()).expect("small frame"),
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(prog.as_raw_fd()).expect("fd"),
        data_size_in: u32::try_from(frame.len()).expect("small frame"),
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: u32::try_from(size_of::<XdpMd>()).expect("small struct"),
        ctx_in: std::ptr::from_ref(&ctx) as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| attr.duration)
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_prog_info` up to `jited_ksyms` (Linux 4.18).
#[repr(C)]
struct ProgInfo {
    head: [u8; 104],
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
}

/// The address of a program's code: its main function's entry in `jited_ksyms`.
pub fn prog_ksym(prog: &OwnedFd) -> io::Result<u64> {
    let mut ksym = 0u64;
    let mut info = ProgInfo {
        head: [0; 104],
        nr_jited_ksyms: 1,
        nr_jited_func_lens: 0,
        jited_ksyms: std::ptr::from_mut(&mut ksym) as u64,
    };
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(prog.as_raw_fd()).expect("fd"),
        info_len: u32::try_from(size_of::<ProgInfo>()).expect("small struct"),
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(ksym)
}
