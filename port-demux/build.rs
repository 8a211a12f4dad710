//! Provides the XDP program (`port-demux-ebpf`) as `OUT_DIR/port-demux`, which the library embeds
//! with `include_bytes_aligned!`.
//!
//! - With the eBPF toolchain (nightly with `rust-src`, `bpf-linker`) and the eBPF crate's sources
//!   beside this crate, the object is built from them, as aya-build does, silently unless it fails.
//! - Without it, the committed object `ebpf/port-demux.bpf.o` is used: a crate that depends on
//!   port-demux builds on stable Rust alone. `cargo xtask ebpf` refreshes that object and
//!   `cargo xtask ebpf --check` (run by `cargo xtask test`) fails when it is not current.
//!
//! `PORT_DEMUX_EBPF=prebuilt` forces the committed object, `PORT_DEMUX_EBPF=build` the build
//! (failing when the toolchain is missing).

use std::{
    env, fs,
    path::{Path, PathBuf},
};

#[path = "ebpf/build_ebpf.rs"]
mod build_ebpf;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let committed = manifest_dir.join(build_ebpf::COMMITTED);
    let ebpf_root = manifest_dir.join("../port-demux-ebpf");
    let common_root = manifest_dir.join("../port-demux-common");
    println!("cargo:rerun-if-env-changed=PORT_DEMUX_EBPF");
    println!("cargo:rerun-if-changed={}", committed.display());
    println!("cargo:rerun-if-changed=ebpf/build_ebpf.rs");

    let choice = env::var("PORT_DEMUX_EBPF").unwrap_or_default();
    let missing = if ebpf_root.join("Cargo.toml").is_file() {
        build_ebpf::toolchain_missing()
    } else {
        Some("the sources of port-demux-ebpf are not beside port-demux".to_owned())
    };
    let from_source = match (choice.as_str(), missing) {
        ("build", Some(why)) => {
            panic!("PORT_DEMUX_EBPF=build, but {why}: run `cargo xtask setup`")
        }
        ("build" | "", None) => true,
        ("prebuilt", _) | ("", Some(_)) => false,
        (other, _) => {
            panic!("PORT_DEMUX_EBPF={other:?}: use `build`, `prebuilt` or leave it unset")
        }
    };
    let dst = out_dir.join("port-demux");
    if from_source {
        // Every source of the object: rebuild when any of them changes.
        for dir in [&ebpf_root, &common_root] {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
        if let Some(linker) = build_ebpf::find_in_path("bpf-linker") {
            println!("cargo:rerun-if-changed={}", linker.display());
        }
        let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("set by cargo");
        // One eBPF target folder for every build of this crate in a profile (clippy, tests,
        // each feature set has its own OUT_DIR): target/<profile>/port-demux-ebpf. Builds that
        // run at once take turns on its lock; all but the first find it done.
        let target_dir = out_dir
            .ancestors()
            .nth(3)
            .map_or_else(|| out_dir.clone(), Path::to_path_buf)
            .join(build_ebpf::PACKAGE);
        match build_ebpf::build(&ebpf_root, &arch, &target_dir) {
            Ok(object) => copy(&object, &dst),
            Err(output) => {
                for line in output.lines() {
                    println!("cargo:warning={line}");
                }
                panic!("building the XDP program failed (its output is above)");
            }
        }
    } else {
        copy(&committed, &dst);
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = fs::copy(from, to) {
        panic!("cannot copy {} to {}: {e}", from.display(), to.display());
    }
}
