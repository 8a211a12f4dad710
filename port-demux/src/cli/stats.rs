//! `port-demux stats`.

use std::io::Write;

use clap::Args;
use port_demux_common::outcome;

use super::{Failure, open};
use crate::{PortStat, Scope, Totals};

/// What `stats --json` prints.
#[derive(serde::Serialize)]
struct StatsDoc<'a> {
    interface: &'a str,
    ports: &'a [&'a PortStat],
    scoped: &'a [PortStat],
    totals: &'a Totals,
}

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
    /// Only the scoped bindings of this destination prefix, and their ports.
    #[arg(long, value_name = "PREFIX")]
    pub dst: Option<String>,
    /// Live rates (packets/s, bits/s) beside the totals, redrawn every interval, fastest
    /// first; q quits. With --json: one JSON object per interval.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between readings with --watch.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, requires = "watch")]
    pub interval: f64,
}

pub fn stats(scope: &Scope, args: &StatsArgs, out: &mut dyn Write) -> Result<(), Failure> {
    if args.watch {
        return super::watch::watch(scope, args, out);
    }
    let filter = super::bind::prefixes(args.dst.as_slice())?;
    let demux = open(scope, args.iface.as_deref())?;
    let mut stats = demux.stats()?;
    if let Some(net) = filter.first() {
        stats.scoped.retain(|s| s.dst == Some(*net));
        let scoped = &stats.scoped;
        stats.ports.retain(|p| {
            scoped
                .iter()
                .any(|s| (s.proto, s.port) == (p.proto, p.port))
        });
    }
    let (ports, hidden) = select(&stats.ports, args.all);
    if args.json {
        let doc = StatsDoc {
            interface: demux.iface(),
            ports: &ports,
            scoped: &stats.scoped,
            totals: &stats.totals,
        };
        // Written straight from the types through one buffer: with every port bound and
        // 20,000 scoped bindings, building a `serde_json::Value` first and writing it to
        // the line-buffered stdout took about a third of the command's time.
        let mut buffered = std::io::BufWriter::with_capacity(1 << 16, &mut *out);
        serde_json::to_writer(&mut buffered, &doc).map_err(std::io::Error::from)?;
        buffered.write_all(b"\n")?;
        buffered.flush()?;
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
        "{:<14} {:<24} {:<20} {:>12} {:>14}",
        "PORT", "DST", "BINDING", "PACKETS", "BYTES"
    )?;
    for p in ports.iter().copied().chain(&stats.scoped) {
        let binding = p
            .action
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        writeln!(
            out,
            "{:<14} {:<24} {:<20} {:>12} {:>14}",
            format!("{}/{}", p.proto, p.port),
            p.dst.map_or_else(|| "*".to_owned(), |d| d.to_string()),
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
        t.demuxed_ipv4(),
        t.demuxed_ipv6
    )?;
    writeln!(
        out,
        "redirects: redirected {}, fallback {} (target gone: passed instead)",
        t.redirected, t.redirect_fallback
    )?;
    Ok(())
}

/// The ports `stats` lists, and how many ports with traffic it leaves out: every port with
/// traffic with `all`; else the bound ports (all of them up to [`BOUND_LISTED`], past it those
/// with traffic) and the [`BUSIEST_UNBOUND`] busiest unbound ones. `ports` is busiest first;
/// `key` gives a port's (bound, packets).
pub(super) fn select_by<T>(
    ports: &[T],
    all: bool,
    key: impl Fn(&T) -> (bool, u64),
) -> (Vec<&T>, usize) {
    let mut unbound_shown = 0;
    let mut hidden = 0;
    let bound = ports.iter().filter(|p| key(p).0).count();
    let listed = ports
        .iter()
        .filter(|p| {
            let (is_bound, packets) = key(p);
            if all && packets > 0 || is_bound && (packets > 0 || bound <= BOUND_LISTED) {
                return true;
            }
            if is_bound {
                return false;
            }
            if packets > 0 && unbound_shown < BUSIEST_UNBOUND {
                unbound_shown += 1;
                return true;
            }
            hidden += usize::from(packets > 0);
            false
        })
        .collect();
    (listed, hidden)
}

fn select(ports: &[PortStat], all: bool) -> (Vec<&PortStat>, usize) {
    select_by(ports, all, |p| (p.action.is_some(), p.packets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Proto};

    fn port(port: u16, packets: u64, action: Option<Action>) -> PortStat {
        PortStat {
            proto: Proto::Udp,
            port,
            packets,
            bytes: packets * 100,
            action,
            dst: None,
        }
    }

    fn ports(listed: &[&PortStat]) -> Vec<u16> {
        listed.iter().map(|p| p.port).collect()
    }

    #[test]
    fn bound_ports_and_the_busiest_unbound() {
        // Busiest first: 12 unbound ports with traffic, one bound with traffic, one without.
        let mut all: Vec<_> = (0..12)
            .map(|i| port(5000 + i, 100 - u64::from(i), None))
            .collect();
        all.push(port(7777, 1, Some(Action::Drop)));
        all.push(port(7000, 0, Some(Action::Pass)));
        let (listed, hidden) = select(&all, false);
        let mut want: Vec<u16> = (5000..5010).collect();
        want.extend([7777, 7000]);
        assert_eq!((ports(&listed), hidden), (want, 2));
        let (listed, hidden) = select(&all, true);
        // --all: every port with traffic, and the bound ones as without it.
        assert_eq!((listed.len(), hidden), (14, 0));
    }

    #[test]
    fn a_large_bound_range_lists_only_ports_with_traffic() {
        let mut all = vec![port(8000, 5, Some(Action::Pass))];
        all.extend((8001..8100).map(|p| port(p, 0, Some(Action::Pass))));
        let (listed, hidden) = select(&all, false);
        assert_eq!((ports(&listed), hidden), (vec![8000], 0));
    }
}
