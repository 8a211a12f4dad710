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
    /// Only the bindings of this destination prefix.
    #[arg(long, value_name = "PREFIX")]
    pub dst: Option<String>,
}

pub fn bindings(scope: &Scope, args: &BindingsArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let filter = super::bind::prefixes(args.dst.as_slice())?;
    let demux = open(scope, args.iface.as_deref())?;
    let mut ranges = demux.bindings()?;
    if let Some(net) = filter.first() {
        ranges.retain(|r| r.dst == Some(*net));
    }
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
                    "dst": r.dst.map(|d| d.to_string()),
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
    writeln!(out, "{:<18} {:<24} {:<20} OWNER", "PORTS", "DST", "ACTION")?;
    for r in &ranges {
        writeln!(
            out,
            "{:<18} {:<24} {:<20} {}",
            r.ports.to_string(),
            r.dst.map_or_else(|| "*".to_owned(), |d| d.to_string()),
            r.action.to_string(),
            r.owner
        )?;
    }
    Ok(())
}
