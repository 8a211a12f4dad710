//! `port-demux bindings`.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{Failure, open};
use crate::Scope;

/// Arguments of `bindings`.
#[derive(Debug, Args)]
pub struct BindingsArgs {
    /// Interface (may be left out when exactly one is loaded).
    #[arg(short, long)]
    pub iface: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn bindings(scope: &Scope, args: &BindingsArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let demux = open(scope, args.iface.as_deref())?;
    let ranges = demux.bindings()?;
    if args.json {
        let list: Vec<_> = ranges
            .iter()
            .map(|r| {
                json!({
                    "proto": r.ports.proto.name(),
                    "first": r.ports.first,
                    "last": r.ports.last,
                    "action": r.action.to_string(),
                    "owner": r.owner,
                })
            })
            .collect();
        let doc = json!({ "interface": demux.iface(), "bindings": list });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    if ranges.is_empty() {
        writeln!(out, "no bindings on {}", demux.iface())?;
        return Ok(());
    }
    writeln!(out, "{:<18} {:<20} OWNER", "PORTS", "ACTION")?;
    for r in &ranges {
        writeln!(
            out,
            "{:<18} {:<20} {}",
            r.ports.to_string(),
            r.action.to_string(),
            r.owner
        )?;
    }
    Ok(())
}
