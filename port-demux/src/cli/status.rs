//! `port-demux status`.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::Failure;
use crate::{DefaultAction, Instance, PortDemux, Scope, instances, prune};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Every instance in the bpffs, in every namespace, whatever its state (running,
    /// namespace-gone, interface-gone, half-written), with what to do about it.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn status(scope: &Scope, args: &StatusArgs, out: &mut dyn Write) -> Result<(), Failure> {
    if args.all {
        let all = instances(scope.bpffs())?;
        return print_instances(&all, args.json, "", out);
    }
    let mut all = Vec::new();
    for iface in scope.loaded()? {
        all.push(PortDemux::open(scope, &iface)?.status()?);
    }
    if args.json {
        writeln!(out, "{}", json!({ "interfaces": all }))?;
        return Ok(());
    }
    if all.is_empty() {
        writeln!(
            out,
            "port-demux is not loaded on any interface{}",
            scope.where_()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:<7} {:>8} {:<9} {:>6} {:<8} {:>9} PINS",
        "INTERFACE", "MODE", "PROG_ID", "ATTACHED", "BOUND", "DEFAULT", "MEMORY"
    )?;
    for s in &all {
        writeln!(
            out,
            "{:<16} {:<7} {:>8} {:<9} {:>6} {:<8} {:>9} {}",
            s.iface,
            s.mode.name(),
            s.prog_id,
            if s.attached { "yes" } else { "NO" },
            s.bound_ports,
            default_name(s.default_action),
            s.memlock_bytes.map_or_else(|| "-".to_owned(), mib),
            s.pin_dir.display()
        )?;
    }
    Ok(())
}

/// Bytes as MiB with one decimal, rounded.
fn mib(bytes: u64) -> String {
    let tenths = (bytes.saturating_mul(10) + (1 << 19)) >> 20;
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

const fn default_name(d: DefaultAction) -> &'static str {
    match d {
        DefaultAction::Pass => "pass",
        DefaultAction::Drop => "drop",
    }
}

/// `port-demux prune`: removes every instance that is not running.
pub fn prune_stale(scope: &Scope, args: &PruneArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let removed = prune(scope.bpffs())?;
    if !args.json && removed.is_empty() {
        writeln!(out, "nothing to prune: every instance runs")?;
        return Ok(());
    }
    print_instances(&removed, args.json, "removed ", out)
}

/// One line per instance (`prefix` first), or `{"instances": [...]}`.
fn print_instances(
    all: &[Instance],
    json: bool,
    prefix: &str,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    if json {
        writeln!(out, "{}", json!({ "instances": all }))?;
        return Ok(());
    }
    if all.is_empty() {
        writeln!(out, "no port-demux instance in the bpffs")?;
    }
    for i in all {
        let netns = match (&i.netns, i.netns_cookie) {
            (Some(name), _) => format!(" netns {name}"),
            (None, Some(cookie)) => format!(" netns cookie {cookie}"),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "{prefix}{} {}: {}{netns}{}: {}",
            i.state.name(),
            i.dir.display(),
            i.iface.as_deref().unwrap_or("?"),
            i.ifindex
                .map(|x| format!(" (ifindex {x})"))
                .unwrap_or_default(),
            i.hint
        )?;
    }
    Ok(())
}
