//! The example user crate (`examples/user-test`): its test in place, and a copy outside the
//! repository built from clean with the eBPF toolchain hidden, as a user without nightly and
//! bpf-linker builds it.

use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run, workspace};

/// Where the copy goes: outside the repository.
const COPY: &str = "/tmp/port-demux-user-test";

/// `cargo test` of the example crate in place.
pub fn in_place() -> Result<()> {
    let manifest = workspace().join("examples/user-test/Cargo.toml");
    run(cargo()
        .args(["test", "--manifest-path"])
        .arg(&manifest)
        .env_remove("PORT_DEMUX_EBPF"))
}

/// Copies the example crate to [`COPY`] with its paths pointing at this repository, then, in a
/// private mount namespace where `bpf-linker` and every nightly toolchain are hidden (bind
/// mounts over them: rustup puts `$CARGO_HOME/bin` on its children's PATH, so PATH cannot
/// hide them), checks they are hidden, builds it from clean on stable and runs its test.
pub fn hidden_toolchain() -> Result<()> {
    let repo = workspace();
    let copy = Path::new(COPY);
    if copy.exists() {
        fs::remove_dir_all(copy).with_context(|| format!("cannot remove {COPY}"))?;
    }
    let src = repo.join("examples/user-test");
    for dir in ["src", "tests"] {
        fs::create_dir_all(copy.join(dir))?;
        for entry in fs::read_dir(src.join(dir))? {
            let path = entry?.path();
            fs::copy(
                &path,
                copy.join(dir).join(path.file_name().expect("a file")),
            )?;
        }
    }
    let _ = fs::copy(src.join("Cargo.lock"), copy.join("Cargo.lock"));
    let manifest = fs::read_to_string(src.join("Cargo.toml"))?
        .replace("../../", &format!("{}/", repo.display()));
    fs::write(copy.join("Cargo.toml"), manifest)?;

    let mut hide = vec!["set -e".to_owned(), "mount --make-rprivate /".to_owned()];
    let linker = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .output()?;
    let linker = String::from_utf8_lossy(&linker.stdout).trim().to_owned();
    if !linker.is_empty() {
        hide.push(format!("mount --bind /dev/null '{linker}'"));
    }
    let home = std::env::var("RUSTUP_HOME")
        .unwrap_or_else(|_| format!("{}/.rustup", std::env::var("HOME").unwrap_or_default()));
    for entry in fs::read_dir(Path::new(&home).join("toolchains"))? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("nightly"))
        {
            hide.push(format!("mount -t tmpfs none '{}'", path.display()));
        }
    }
    hide.push(
        "if bpf-linker --version >/dev/null 2>&1 || rustup run nightly rustc --version \
         >/dev/null 2>&1; then echo 'the eBPF toolchain is still visible' >&2; exit 1; fi"
            .to_owned(),
    );
    let hide = hide.join("; ");
    eprintln!("xtask: building {COPY} on stable alone (bpf-linker and nightly hidden)");
    let start = Instant::now();
    hidden(&hide, "cargo build --tests --quiet", copy)
        .context("building the example crate with the eBPF toolchain hidden")?;
    eprintln!(
        "xtask: clean build of the example crate on stable alone: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    hidden(&hide, "cargo test", copy)
        .context("the example crate's test with the eBPF toolchain hidden")
}

/// Runs `command` in `dir` after `hide`, in a private mount namespace.
fn hidden(hide: &str, command: &str, dir: &Path) -> Result<()> {
    let status = Command::new("unshare")
        .args(["-m", "sh", "-c", &format!("{hide}; {command}")])
        .current_dir(dir)
        .env_remove("PORT_DEMUX_EBPF")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .status()
        .context("cannot run unshare")?;
    if !status.success() {
        bail!("{command} failed: {status}");
    }
    Ok(())
}
