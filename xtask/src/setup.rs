//! Installs what a fresh machine lacks, saying what it installs; a no-op when all is there.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::run;

/// Debian packages: LLVM 22 for bpf-linker (matching rustc's LLVM), the tools the demo,
/// tests and benchmarks drive, and for `vm-test` qemu, a static busybox for the VM's userspace
/// and the decompressors of kernel modules (`.ko.xz`, `.ko.zst`); Prometheus, which the
/// exporter's test runs to scrape it, and zsh and fish, whose parsers check the completions.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "bpftool",
    "xdp-tools",
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "zstd",
    "prometheus",
    "zsh",
    "fish",
];
const BPF_LINKER_VERSION: &str = "0.13";

pub fn setup() -> Result<()> {
    nightly()?;
    packages()?;
    bpf_linker()
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nightly toolchain with rust-src (for `-Z build-std=core`), clippy and rustfmt.
fn nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF program")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask setup: installing the nightly toolchain (builds the eBPF program)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    for component in ["rust-src", "clippy", "rustfmt"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("xtask setup: installing nightly's {component}");
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing Debian packages {}",
        missing.join(" ")
    );
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// bpf-linker built against LLVM 22, the LLVM of the nightly rustc.
fn bpf_linker() -> Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        if version.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
            return Ok(());
        }
        eprintln!(
            "xtask setup: replacing {} with bpf-linker {BPF_LINKER_VERSION}",
            version.trim()
        );
    } else {
        eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} (LLVM 22)");
    }
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}
