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
        "{:<16} {:<7} {:>8} {:<9} {:>6} {:<8} PINS",
        "INTERFACE", "MODE", "PROG_ID", "ATTACHED", "BOUND", "DEFAULT"
    )?;
    for s in &all {
        writeln!(
            out,
            "{:<16} {:<7} {:>8} {:<9} {:>6} {:<8} {}",
            s.iface,
            s.mode.name(),
            s.prog_id,
            if s.attached { "yes" } else { "NO" },
            s.bound_ports,
            default_name(s.default_action),
            s.pin_dir.display()
        )?;
    }
    Ok(())
}

const fn default_name(d: DefaultAction) -> &'static str {
    match d {
        DefaultAction::Pass => "pass",
        DefaultAction::Drop => "drop",
    }
}
