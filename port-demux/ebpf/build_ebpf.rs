//! Building the XDP program (`port-demux-ebpf`) with the eBPF toolchain: nightly with
//! `rust-src`, and `bpf-linker`. Shared by port-demux's build script and `cargo xtask ebpf`
//! (each includes this file with `#[path]`), so that both build the object the same way.
//!
//! The command is aya-build's (`build_ebpf`), with the compiler's output kept and shown only when
//! the build fails: a build that works prints nothing.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

/// The eBPF package and its binary (the object's name).
pub const PACKAGE: &str = "port-demux-ebpf";
/// The committed object, relative to port-demux's manifest folder.
pub const COMMITTED: &str = "ebpf/port-demux.bpf.o";

/// Why the eBPF toolchain cannot be used, or `None` when it can.
pub fn toolchain_missing() -> Option<String> {
    if find_in_path("bpf-linker").is_none() {
        return Some("bpf-linker is not on PATH".to_owned());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => return Some("the nightly toolchain is not installed".to_owned()),
    };
    if !sysroot.join("lib/rustlib/src/rust/library").is_dir() {
        return Some("nightly has no rust-src".to_owned());
    }
    None
}

/// The first regular, executable file named `name` in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Builds the object from the package at `root` (release, `bpfel-unknown-none`, BTF) for a
/// loader running on `arch` (`x86_64`, ...) in `target_dir`, and returns its path. On failure,
/// the error holds the compiler's output.
pub fn build(root: &Path, arch: &str, target_dir: &Path) -> Result<PathBuf, String> {
    let rustflags = OsString::from(format!(
        "--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"
    ));
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", PACKAGE])
        .args(["-Z", "build-std=core", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(target_dir)
        .current_dir(root)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's choices must not leak into the nightly build.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(key);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target_dir.join("bpfel-unknown-none/release/port-demux"))
}
