//! `cargo xtask`: set-up, build, demo, test, fuzz and bench for port-demux.
#![expect(
    clippy::cast_precision_loss,
    reason = "benchmark figures are counts and durations far below 2^52"
)]
#![expect(
    clippy::too_many_lines,
    reason = "the demo and the bench read best as one script each"
)]

mod bench;
mod bpf;
mod demo;
mod ebpf;
mod setup;
mod user_test;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, llvm-22-dev, bpf-linker, iproute2, ethtool,
    /// bpftool, xdp-tools, prometheus, zsh, fish, and for `vm-test` qemu, busybox-static,
    /// xz-utils, zstd.
    Setup,
    /// Set up, then build the XDP program and the CLI.
    Build {
        /// Release build.
        #[arg(long)]
        release: bool,
    },
    /// Rebuild the XDP program and refresh the committed object port-demux/ebpf/port-demux.bpf.o
    /// (what builds on stable Rust use); `--check` only says whether it is current.
    Ebpf {
        /// Fail when the committed object differs from a fresh build, instead of refreshing it.
        #[arg(long)]
        check: bool,
    },
    /// The example user crate (examples/user-test): its test, then a copy outside the repository
    /// built from clean and tested with bpf-linker and nightly hidden (stable Rust alone).
    UserTest,
    /// Set up, build, then run port-demux on a private namespace pair with real traffic.
    Demo,
    /// Set up, then everything: fmt, clippy (workspace and eBPF), the committed eBPF object
    /// current, unit and integration tests, the example user crate (also with the eBPF
    /// toolchain hidden), then `vm-test` on Linux 6.1 and 6.12.
    Test,
    /// The differential fuzz test against the reference model, with many frames.
    Fuzz {
        /// Frames to generate.
        #[arg(long, default_value_t = 2_000_000)]
        frames: u64,
        /// PRNG seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Boots Debian's newest 6.1 and 6.12 kernels under qemu and runs the integration tests
    /// there; one result line per kernel.
    VmTest(vm::VmTestArgs),
    /// Benchmarks: per-packet cost against an empty XDP program and xdp-filter, control plane,
    /// live traffic. Writes target/bench/latest.json.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release } => {
            setup::setup()?;
            build(release)
        }
        Cmd::Ebpf { check } => {
            setup::setup()?;
            ebpf::ebpf(check)
        }
        Cmd::UserTest => {
            ensure_bpffs()?;
            user_test::in_place()?;
            user_test::hidden_toolchain()
        }
        Cmd::Demo => {
            setup::setup()?;
            build(false)?;
            demo::demo(&workspace().join("target/debug/port-demux"))
        }
        Cmd::Test => {
            setup::setup()?;
            test()?;
            vm::vm_test(vm::Series::ALL, &[])
        }
        Cmd::VmTest(args) => {
            setup::setup()?;
            vm::vm_test(&args.series(), args.suites())
        }
        Cmd::Fuzz { frames, seed } => {
            setup::setup()?;
            let mut cmd = cargo();
            cmd.args([
                "test",
                "-p",
                "port-demux-testkit",
                "--test",
                "differential",
                "--",
                "--nocapture",
            ])
            .env("PORT_DEMUX_FUZZ_FRAMES", frames.to_string());
            if let Some(seed) = seed {
                cmd.env("PORT_DEMUX_FUZZ_SEED", seed.to_string());
            }
            run(&mut cmd)
        }
        Cmd::Bench(args) => {
            setup::setup()?;
            build(true)?;
            bench::bench(&args)
        }
    }
}

/// The workspace root.
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// `cargo` run from the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

/// The nightly toolchain's `cargo` (through rustup: `cargo +nightly` needs the rustup proxy,
/// and `cargo xtask` runs under the toolchain's own cargo).
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .current_dir(workspace())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO");
    cmd
}

/// Runs `cmd`, failing with its command line when it fails.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "port-demux"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted.
fn ensure_bpffs() -> Result<()> {
    port_demux::Scope::current()?.ensure_bpffs()?;
    Ok(())
}

fn test() -> Result<()> {
    run(nightly_cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "port-demux-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate in its own pass, for its own target.
    run(nightly_cargo()
        .current_dir(workspace().join("port-demux-ebpf"))
        .args([
            "clippy",
            "-p",
            "port-demux-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))?;
    ebpf::ebpf(true)?;
    build(false)?;
    ensure_bpffs()?;
    let mut cmd = cargo_test();
    cmd.arg("--no-fail-fast");
    run_counting(&mut cmd)?;
    user_test::in_place()?;
    user_test::hidden_toolchain()
}

/// `cargo test` on the workspace but the eBPF crate: the one set of flags under which the
/// tests are built, so that `vm-test` takes the executables the host tests ran.
fn cargo_test() -> Command {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "port-demux-ebpf"]);
    cmd
}

/// Runs `cargo test`, echoing its output, and closes with one line summing every test binary's
/// result (`tests: N passed, M failed`).
fn run_counting(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
