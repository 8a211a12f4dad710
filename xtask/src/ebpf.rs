//! `cargo xtask ebpf [--check]`: rebuild the XDP program and refresh the committed object
//! `port-demux/ebpf/port-demux.bpf.o`, or check that it is current.
//!
//! The object's bytes differ between checkouts (its debug info and BTF line info hold source
//! paths), so the check compares what the kernel gets: every non-debug section with its bytes
//! and relocations (the programs' instructions, the map definitions, `.rodata`, the license),
//! the symbols in them, and the BTF types as `bpftool btf dump` lists them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

use crate::workspace;

#[path = "../../port-demux/ebpf/build_ebpf.rs"]
mod build_ebpf;

/// The committed object.
pub fn committed() -> PathBuf {
    workspace().join("port-demux").join(build_ebpf::COMMITTED)
}

/// Builds the object from `port-demux-ebpf` into `target/ebpf`; returns its path.
fn build() -> Result<PathBuf> {
    if let Some(why) = build_ebpf::toolchain_missing() {
        bail!("cannot build the XDP program: {why}; run `cargo xtask setup`");
    }
    eprintln!("xtask: building the XDP program (port-demux-ebpf)");
    build_ebpf::build(
        &workspace().join("port-demux-ebpf"),
        std::env::consts::ARCH,
        &workspace().join("target/ebpf"),
    )
    .map_err(|output| anyhow!("{output}"))
}

/// Refreshes the committed object (`check` false), or fails when it differs from a fresh build
/// in anything but debug info.
pub fn ebpf(check: bool) -> Result<()> {
    let built = build()?;
    let committed = committed();
    if check {
        let (new, old) = (summary(&built)?, summary(&committed)?);
        let differs = new
            .iter()
            .zip(&old)
            .find(|(n, o)| n != o)
            .map(|(n, _)| n.0.clone())
            .or_else(|| {
                (new.len() != old.len()).then(|| "the number of sections or symbols".into())
            });
        if let Some(what) = differs {
            bail!(
                "port-demux/{} is stale ({what} differs from a fresh build of port-demux-ebpf): \
                 run `cargo xtask ebpf` and commit it",
                build_ebpf::COMMITTED
            );
        }
        eprintln!("xtask: port-demux/{} is current", build_ebpf::COMMITTED);
    } else {
        fs::copy(&built, &committed).with_context(|| {
            format!("cannot copy {} to {}", built.display(), committed.display())
        })?;
        eprintln!(
            "xtask: refreshed port-demux/{}: commit it",
            build_ebpf::COMMITTED
        );
    }
    Ok(())
}

/// Whether a section is debug info, which holds checkout paths.
fn is_debug(name: &str) -> bool {
    name.starts_with(".debug") || name.starts_with(".rel.debug") || name.starts_with(".BTF")
}

/// What the kernel gets from the object, in a stable order: (what, its fingerprint).
fn summary(path: &Path) -> Result<Vec<(String, String)>> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file =
        object::File::parse(&*data).with_context(|| format!("cannot parse {}", path.display()))?;
    let mut lines = Vec::new();
    for section in file.sections() {
        let name = section.name()?;
        if is_debug(name) || name.is_empty() {
            continue;
        }
        let kind = section.kind();
        let bytes = section.data()?;
        let relocations: Vec<String> = section
            .relocations()
            .map(|(offset, reloc)| {
                let target = match reloc.target() {
                    RelocationTarget::Symbol(index) => file
                        .symbol_by_index(index)
                        .and_then(|symbol| match symbol.name()? {
                            "" => Ok(symbol
                                .section_index()
                                .and_then(|i| file.section_by_index(i).ok())
                                .and_then(|s| s.name().ok().map(str::to_owned))
                                .unwrap_or_default()),
                            name => Ok(name.to_owned()),
                        })
                        .unwrap_or_else(|e| format!("?{e}")),
                    other => format!("{other:?}"),
                };
                format!("{offset:#x}->{target}")
            })
            .collect();
        lines.push((
            format!("section {name}"),
            format!(
                "{kind:?}, {} bytes, hash {:016x}, relocations [{}]",
                section.size(),
                fnv1a(bytes),
                relocations.join(", ")
            ),
        ));
    }
    let mut symbols: Vec<(String, String)> = file
        .symbols()
        .filter_map(|symbol| {
            let section = file.section_by_index(symbol.section_index()?).ok()?;
            let section = section.name().ok()?;
            (!is_debug(section)).then(|| {
                (
                    format!("symbol {}", symbol.name().unwrap_or("?")),
                    format!(
                        "in {section} at {:#x}, {} bytes",
                        symbol.address(),
                        symbol.size()
                    ),
                )
            })
        })
        .collect();
    symbols.sort();
    lines.extend(symbols);
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(path)
        .output()
        .context("cannot run bpftool: run `cargo xtask setup`")?;
    if !out.status.success() {
        bail!(
            "bpftool btf dump file {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    lines.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| {
        let key: String = l.trim().chars().take(60).collect();
        (format!("BTF `{key}`"), l.to_owned())
    }));
    Ok(lines)
}

/// FNV-1a: a short fingerprint of a section's bytes for the summary.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
