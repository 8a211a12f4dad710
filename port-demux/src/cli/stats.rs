//! `port-demux stats`.

use std::io::Write;

use clap::Args;
use port_demux_common::outcome;
use serde_json::{Map, Value, json};

use super::{Failure, open};
use crate::{Scope, Totals};

/// Unbound ports shown besides the bound ones without `--all`.
const BUSIEST_UNBOUND: usize = 10;
/// Up to this many bound ports are listed even without traffic; past it (a bound range), only
/// those with traffic are.
const BOUND_LISTED: usize = 64;

/// Arguments of `stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Interface (may be left out when exactly one is loaded).
    #[arg(short, long)]
    pub iface: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Every port with a non-zero counter, not just the bound and the busiest others.
    #[arg(long)]
    pub all: bool,
}

pub fn stats(scope: &Scope, args: &StatsArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let demux = open(scope, args.iface.as_deref())?;
    let stats = demux.stats()?;
    let mut unbound_shown = 0;
    let mut hidden = 0;
    let bound = stats.ports.iter().filter(|p| p.action.is_some()).count();
    let ports: Vec<_> = stats
        .ports
        .iter()
        .filter(|p| {
            if args.all && p.packets > 0
                || p.action.is_some() && (p.packets > 0 || bound <= BOUND_LISTED)
            {
                return true;
            }
            if p.action.is_some() {
                return false;
            }
            if p.packets > 0 && unbound_shown < BUSIEST_UNBOUND {
                unbound_shown += 1;
                return true;
            }
            hidden += usize::from(p.packets > 0);
            false
        })
        .collect();
    if args.json {
        let list: Vec<_> = ports
            .iter()
            .map(|p| {
                json!({
                    "proto": p.proto.name(),
                    "port": p.port,
                    "packets": p.packets,
                    "bytes": p.bytes,
                    "action": p.action.as_ref().map(ToString::to_string),
                })
            })
            .collect();
        let doc = json!({
            "interface": demux.iface(),
            "ports": list,
            "totals": totals_json(&stats.totals),
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    let t = &stats.totals;
    writeln!(
        out,
        "{}: {} frames seen, {} bytes to TCP/UDP ports",
        demux.iface(),
        t.packets,
        t.demuxed_bytes
    )?;
    writeln!(
        out,
        "{:<14} {:<20} {:>12} {:>14}",
        "PORT", "BINDING", "PACKETS", "BYTES"
    )?;
    for p in &ports {
        let binding = p
            .action
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        writeln!(
            out,
            "{:<14} {:<20} {:>12} {:>14}",
            format!("{}/{}", p.proto, p.port),
            binding,
            p.packets,
            p.bytes
        )?;
    }
    if hidden > 0 {
        writeln!(out, "({hidden} more ports with traffic: --all shows them)")?;
    }
    let line = |names: &[&str], values: &[u64]| {
        names
            .iter()
            .zip(values)
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(out, "outcomes: {}", line(&outcome::NAMES, &t.outcomes))?;
    writeln!(
        out,
        "demuxed by family: ipv4 {}, ipv6 {}",
        t.outcomes[outcome::DEMUXED].saturating_sub(t.demuxed_ipv6),
        t.demuxed_ipv6
    )?;
    writeln!(
        out,
        "redirects: redirected {}, fallback {} (target gone: passed instead)",
        t.redirected, t.redirect_fallback
    )?;
    Ok(())
}

/// `{"packets", "demuxed_bytes", "outcomes": {...}, "families": {...}, "redirects": {...}}`.
/// `outcomes` also carries the v2 key `not_ipv4` (deprecated, the value of `not_ip`) for one
/// release.
#[must_use]
pub fn totals_json(t: &Totals) -> Value {
    let named = |names: &[&str], values: &[u64]| -> Map<String, Value> {
        names
            .iter()
            .zip(values)
            .map(|(n, v)| ((*n).to_owned(), json!(v)))
            .collect()
    };
    let mut outcomes = named(&outcome::NAMES, &t.outcomes);
    outcomes.insert(
        outcome::DEPRECATED_NOT_IPV4.to_owned(),
        json!(t.outcomes[outcome::NOT_IP]),
    );
    json!({
        "packets": t.packets,
        "demuxed_bytes": t.demuxed_bytes,
        "outcomes": outcomes,
        "families": {
            "ipv4": t.outcomes[outcome::DEMUXED].saturating_sub(t.demuxed_ipv6),
            "ipv6": t.demuxed_ipv6,
        },
        "redirects": {
            "redirected": t.redirected,
            "fallback": t.redirect_fallback,
        },
    })
}
