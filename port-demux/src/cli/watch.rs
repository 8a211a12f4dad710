//! `port-demux stats --watch [--interval SECS] [--json]`: rates, live.
//!
//! Every interval the counters are read again and [`Rates::between`] the two readings over the
//! time measured between them (monotonic clock). On a terminal: a view redrawn in place
//! (ratatui), the fastest ports first, that follows resizes and quits on q, Esc or Ctrl-C. With
//! `--json`: one JSON object per interval (NDJSON). The instance is opened afresh at each
//! reading, so an unload and a load in between show as a reset, not as a frozen view of maps
//! that are gone; an unload ends the watch with the usual error.

use std::{
    io::{IsTerminal as _, Write},
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};
use serde_json::json;

use super::{Failure, open, stats::StatsArgs};
use crate::{PortDemux, Rates, Scope, Stats, common::outcome};

/// Shortest and longest `--interval`.
const INTERVALS: (f64, f64) = (0.1, 3600.0);

/// Readings of one instance, one interval apart.
struct Watch<'a> {
    scope: &'a Scope,
    iface: String,
    before: Stats,
    at: Instant,
    period: Duration,
    next: Instant,
}

impl<'a> Watch<'a> {
    fn start(scope: &'a Scope, args: &StatsArgs) -> Result<Self, Failure> {
        let (low, high) = INTERVALS;
        if !(low..=high).contains(&args.interval) {
            return Err(Failure {
                message: format!(
                    "--interval {} is out of range: give {low} to {high} seconds",
                    args.interval
                ),
                code: 2,
            });
        }
        let demux = open(scope, args.iface.as_deref())?;
        let at = Instant::now();
        let before = demux.stats()?;
        let period = Duration::from_secs_f64(args.interval);
        Ok(Self {
            scope,
            iface: demux.iface().to_owned(),
            before,
            at,
            period,
            next: at + period,
        })
    }

    /// Reads the counters again (now: the caller waited until [`Watch::next`]) and returns
    /// the rates since the last reading.
    fn read(&mut self) -> Result<Rates, Failure> {
        let at = Instant::now();
        let after = PortDemux::open(self.scope, &self.iface)?.stats()?;
        let rates = Rates::between(&self.before, &after, (at - self.at).as_secs_f64());
        self.before = after;
        self.at = at;
        // The next reading one period after this one's schedule; past it (a slow reading, a
        // suspended process), one period from now: intervals are measured, never assumed.
        self.next += self.period;
        if self.next <= at {
            self.next = at + self.period;
        }
        Ok(rates)
    }
}

pub fn watch(scope: &Scope, args: &StatsArgs, out: &mut dyn Write) -> Result<(), Failure> {
    if !args.json && !std::io::stdout().is_terminal() {
        return Err(Failure {
            message: "stats --watch draws on a terminal: add --json for one JSON object per \
                      interval"
                .into(),
            code: 2,
        });
    }
    let mut watch = Watch::start(scope, args)?;
    if args.json {
        loop {
            std::thread::sleep(watch.next.saturating_duration_since(Instant::now()));
            let rates = watch.read()?;
            let (ports, hidden) = super::stats::select_by(&rates.ports, args.all, |p| {
                (p.action.is_some(), p.packets)
            });
            let doc = json!({
                "interface": watch.iface,
                "seconds": rates.seconds,
                "ports": ports,
                "hidden_ports": hidden,
                "totals": rates.totals,
                "rates": rates.rates,
            });
            writeln!(out, "{doc}")?;
            out.flush()?;
        }
    }
    let mut terminal = ratatui::try_init().map_err(|e| Failure {
        message: format!("cannot set up the terminal: {e}"),
        code: 1,
    })?;
    let result = run_tui(&mut terminal, &mut watch);
    ratatui::restore();
    result
}

fn run_tui(terminal: &mut DefaultTerminal, watch: &mut Watch) -> Result<(), Failure> {
    let mut rates = None;
    loop {
        terminal.draw(|f| draw(f, &watch.iface, watch.period, rates.as_ref()))?;
        // Keys and resizes until the next reading.
        loop {
            let left = watch.next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left)? {
                continue;
            }
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                // Drawing resizes the buffers to the terminal's new size.
                Event::Resize(..) => {
                    terminal.draw(|f| draw(f, &watch.iface, watch.period, rates.as_ref()))?;
                }
                _ => {}
            }
        }
        rates = Some(watch.read()?);
    }
}

/// `value` with an SI prefix: `12.3 k`, `4.56 M`.
fn si(value: f64) -> String {
    let (scaled, prefix) = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(f, _)| value >= *f)
        .map_or((value, ""), |(f, p)| (value / f, p));
    if prefix.is_empty() {
        format!("{scaled:.0}")
    } else {
        format!("{scaled:.3} {prefix}")
    }
}

fn draw(frame: &mut Frame, iface: &str, period: Duration, rates: Option<&Rates>) {
    let outer = Block::bordered().title(format!(" port-demux stats --watch: {iface} "));
    let area = outer.inner(frame.area());
    frame.render_widget(outer, frame.area());
    let [head, table, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let Some(rates) = rates else {
        frame.render_widget(Paragraph::new("measuring the first interval..."), head);
        return;
    };
    let r = &rates.rates;
    // Demultiplexed frames always, the other outcomes when they happen (eight do not fit).
    let mut outcomes = outcome::NAMES
        .iter()
        .zip(r.outcomes_per_s)
        .enumerate()
        .filter(|&(i, (_, v))| i == outcome::DEMUXED || v > 0.0)
        .map(|(_, (name, v))| format!("{name} {}", si(v)))
        .collect::<Vec<_>>()
        .join(", ");
    if r.outcomes_per_s.iter().skip(1).all(|&v| v == 0.0) {
        outcomes.push_str(", others 0");
    }
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(format!(
                "{} frames/s, {}bit/s demuxed; {} frames, {} bytes since load",
                si(r.packets_per_s),
                si(r.bits_per_s),
                rates.totals.packets,
                rates.totals.demuxed_bytes
            )),
            Line::from(format!("outcomes/s: {outcomes}")),
            Line::from(format!(
                "redirects/s: redirected {}, fallback {}",
                si(r.redirected_per_s),
                si(r.fallback_per_s)
            )),
        ]),
        head,
    );
    let rows = rates.ports.iter().map(|p| {
        Row::new([
            format!("{}/{}", p.proto, p.port),
            p.action
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            si(p.packets_per_s),
            si(p.bits_per_s),
            p.packets.to_string(),
            p.bytes.to_string(),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Min(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(14),
        Constraint::Length(16),
    ];
    frame.render_widget(
        Table::new(rows, widths).header(
            Row::new(["PORT", "BINDING", "PKT/S", "BIT/S", "PACKETS", "BYTES"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        ),
        table,
    );
    frame.render_widget(
        Paragraph::new(format!(
            "every {:.1} s, fastest first (packets/s); q quits",
            period.as_secs_f64()
        )),
        foot,
    );
}
