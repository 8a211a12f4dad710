//! `port-demux status`.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::Failure;
use crate::{DefaultAction, PortDemux, Scope};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn status(scope: &Scope, args: &StatusArgs, out: &mut dyn Write) -> Result<(), Failure> {
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
