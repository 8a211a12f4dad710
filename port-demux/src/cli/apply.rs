//! `port-demux apply FILE [--dry-run] [--prune]` and `port-demux export`: the state of the
//! interfaces of a namespace as a TOML file.
//!
//! ```toml
//! [interfaces.eth1]
//! mode = "auto"          # auto | native | skb: what load is asked for
//! default = "pass"       # pass | drop: unbound ports
//! debug = false
//! bindings = [
//!     { ports = "udp/7777", action = "drop", owner = "dns" },
//!     { ports = "tcp/8000-8099", action = "pass" },
//!     { ports = "udp/53", action = "drop", dst = ["192.0.2.0/24", "2001:db8::/32"] },
//! ]
//! ```
//!
//! For each interface it names, the file is the whole state: `apply` prints the difference and
//! makes it so, the bindings and the default action of one interface switching as one change
//! ([`PortDemux::replace_bindings`]). A change of attach mode cannot be atomic (the program
//! is detached and attached again) and the plan says so. Interfaces the file does not name are
//! left alone unless `--prune`. The whole file is checked before anything changes; errors
//! name its line. A binding with `dst = ["192.0.2.0/24", "2001:db8::1", ...]` is scoped to
//! those destination prefixes (one address-scoped binding per port and prefix, as
//! `bind --dst`); the file's scoped bindings are part of the whole state and swap with the rest.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::Write,
    ops::Range,
    path::{Path, PathBuf},
};

use clap::Args;
use serde::Deserialize;
use toml::Spanned;

use super::{Failure, check_load_privileges};
use crate::{
    Action, BindingRange, DefaultAction, IpNet, LoadOptions, Mode, PortDemux, PortSpec, Proto,
    Scope, Settings, common::OWNER_LEN, prefix::parse_prefix,
};

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The TOML file: per interface, its load options and every binding.
    pub file: PathBuf,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also unload port-demux from the interfaces the file does not name.
    #[arg(long)]
    pub prune: bool,
}

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    interfaces: BTreeMap<String, Spanned<IfaceDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IfaceDoc {
    mode: Option<Spanned<String>>,
    default: Option<Spanned<String>>,
    #[serde(default)]
    debug: bool,
    #[serde(default)]
    bindings: Vec<Spanned<BindingDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingDoc {
    ports: Spanned<String>,
    action: Spanned<String>,
    #[serde(default)]
    owner: Option<Spanned<String>>,
    /// Destination prefixes the binding is scoped to (address-scoped bindings).
    #[serde(default)]
    dst: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One interface as the file wants it.
#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    settings: Settings,
    bindings: Vec<BindingRange>,
}

/// A file's text and name, for errors that point at a line.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    /// `FILE:LINE: message` for the byte offsets `span`.
    fn error(&self, span: Option<Range<usize>>, message: &str) -> Failure {
        let at = span.map_or(String::new(), |span| {
            let line = self.text[..span.start.min(self.text.len())]
                .bytes()
                .filter(|&b| b == b'\n')
                .count()
                + 1;
            format!(":{line}")
        });
        let message = message.trim().replace('\n', " ");
        Failure {
            message: format!(
                "{}{at}: {message}; nothing was changed",
                self.path.display()
            ),
            code: 1,
        }
    }
}

/// Parses and checks the whole file.
fn parse(source: &Source) -> Result<BTreeMap<String, Wanted>, Failure> {
    let doc: FileDoc =
        toml::from_str(source.text).map_err(|e| source.error(e.span(), e.message()))?;
    let mut all = BTreeMap::new();
    for (iface, spanned) in doc.interfaces {
        let doc = spanned.into_inner();
        let mode = match doc.mode {
            None => Mode::Auto,
            Some(m) => match m.get_ref().as_str() {
                "auto" => Mode::Auto,
                "native" => Mode::Native,
                "skb" => Mode::Skb,
                other => {
                    return Err(source.error(
                        Some(m.span()),
                        &format!("mode {other:?} of {iface}: use auto, native or skb"),
                    ));
                }
            },
        };
        let default_action = match doc.default {
            None => DefaultAction::Pass,
            Some(d) => match d.get_ref().as_str() {
                "pass" => DefaultAction::Pass,
                "drop" => DefaultAction::Drop,
                other => {
                    return Err(source.error(
                        Some(d.span()),
                        &format!("default {other:?} of {iface}: use pass or drop"),
                    ));
                }
            },
        };
        let bindings = bindings(source, &iface, doc.bindings)?;
        all.insert(
            iface,
            Wanted {
                settings: Settings {
                    mode,
                    default_action,
                    debug: doc.debug,
                },
                bindings,
            },
        );
    }
    Ok(all)
}

/// The bindings of interface `iface` in the file, checked: ports, actions, owners, prefixes,
/// and no two bindings of one prefix (or both without one) on the same port.
fn bindings(
    source: &Source,
    iface: &str,
    docs: Vec<Spanned<BindingDoc>>,
) -> Result<Vec<BindingRange>, Failure> {
    let mut bindings: Vec<(BindingRange, Range<usize>)> = Vec::new();
    // The bindings of each prefix (none: the ports' own), as indexes into `bindings`:
    // only those can overlap (a file of 10,000 prefixes is checked in one pass).
    let mut by_dst: HashMap<Option<IpNet>, Vec<usize>> = HashMap::new();
    for b in docs {
        let at = b.span();
        let b = b.into_inner();
        let dst = prefixes(source, b.dst)?;
        let ports: PortSpec = b
            .ports
            .get_ref()
            .parse()
            .map_err(|e: crate::Error| source.error(Some(b.ports.span()), &e.to_string()))?;
        let action: Action = b
            .action
            .get_ref()
            .parse()
            .map_err(|e: crate::Error| source.error(Some(b.action.span()), &e.to_string()))?;
        let owner = match b.owner {
            Some(o) if o.get_ref().len() > OWNER_LEN => {
                return Err(source.error(
                    Some(o.span()),
                    &format!(
                        "owner {:?} is longer than {OWNER_LEN} bytes: shorten it",
                        o.get_ref()
                    ),
                ));
            }
            Some(o) => o.into_inner(),
            None => String::new(),
        };
        for (net, net_at) in dst {
            let same = by_dst.entry(net).or_default();
            if let Some((other, other_at)) = same
                .iter()
                .map(|&i| &bindings[i])
                .find(|(r, _)| overlap(r.ports, ports))
            {
                let line = source.text[..other_at.start].matches('\n').count() + 1;
                let what = net.map_or_else(String::new, |net| format!(" dst {net}"));
                return Err(source.error(
                    Some(net_at.unwrap_or_else(|| at.clone())),
                    &format!(
                        "{ports}{what} of {iface} overlaps {}{what} on line {line}: bind each port once per prefix",
                        other.ports
                    ),
                ));
            }
            same.push(bindings.len());
            bindings.push((
                BindingRange {
                    ports,
                    action: action.clone(),
                    owner: owner.clone(),
                    dst: net,
                },
                net_at.unwrap_or_else(|| at.clone()),
            ));
        }
    }
    let mut bindings: Vec<BindingRange> = bindings.into_iter().map(|(b, _)| b).collect();
    bindings.sort_by_key(|b| (b.ports.proto, b.ports.first, b.dst));
    Ok(bindings)
}

/// A binding's prefix (none: every address) and where the file gives it.
type Prefix = (Option<IpNet>, Option<Range<usize>>);

/// The prefixes of a binding's `dst`, each with its place in the file: `[(None, None)]` without
/// `dst` (the binding without a prefix).
fn prefixes(
    source: &Source,
    dst: Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Vec<Prefix>, Failure> {
    let Some(dst) = dst else {
        return Ok(vec![(None, None)]);
    };
    if dst.get_ref().is_empty() {
        return Err(source.error(
            Some(dst.span()),
            "dst is empty: list prefixes (dst = [\"192.0.2.0/24\"]), or leave dst out for every address",
        ));
    }
    dst.into_inner()
        .into_iter()
        .map(|p| {
            let net = parse_prefix(p.get_ref())
                .map_err(|e| source.error(Some(p.span()), &format!("dst {e}")))?;
            Ok((Some(net), Some(p.span())))
        })
        .collect()
}

fn overlap(a: PortSpec, b: PortSpec) -> bool {
    a.proto == b.proto && a.first <= b.last && b.first <= a.last
}

/// Every bound (prefix, port) with its (action, owner): the ports' own bindings first (no
/// prefix), then each prefix's, in port order.
fn expand(ranges: &[BindingRange]) -> BTreeMap<Key, (String, String)> {
    let mut all = BTreeMap::new();
    for r in ranges {
        for port in r.ports.ports() {
            all.insert(
                (r.dst, r.ports.proto, port),
                (r.action.to_string(), r.owner.clone()),
            );
        }
    }
    all
}

/// A binding's prefix (none: the port's own), protocol and port.
type Key = (Option<IpNet>, Proto, u16);

fn describe(binding: &(String, String)) -> String {
    if binding.1.is_empty() {
        binding.0.clone()
    } else {
        format!("{} owner {:?}", binding.0, binding.1)
    }
}

/// A run of ports changed alike: prefix, protocol, first and last port, old and new binding.
type Run<'a> = (
    Option<IpNet>,
    Proto,
    u16,
    u16,
    Option<&'a (String, String)>,
    Option<&'a (String, String)>,
);

/// The changes from `old` to `new` bindings, one line per run of consecutive ports of one
/// prefix (or none) changed alike: `+ PORTS [dst PREFIX] ACTION` bound, `- ...` unbound,
/// `~ PORTS [dst PREFIX] OLD -> NEW` changed; the ports' own bindings first, then each
/// prefix's.
fn diff(old: &[BindingRange], new: &[BindingRange]) -> Vec<String> {
    let (old, new) = (expand(old), expand(new));
    let mut keys: Vec<&Key> = old.keys().chain(new.keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut runs: Vec<Run> = Vec::new();
    for &(dst, proto, port) in keys {
        let (a, b) = (old.get(&(dst, proto, port)), new.get(&(dst, proto, port)));
        if a == b {
            continue;
        }
        match runs.last_mut() {
            Some(run)
                if run.0 == dst
                    && run.1 == proto
                    && u32::from(run.3) + 1 == u32::from(port)
                    && run.4 == a
                    && run.5 == b =>
            {
                run.3 = port;
            }
            _ => runs.push((dst, proto, port, port, a, b)),
        }
    }
    runs.into_iter()
        .filter_map(|(dst, proto, first, last, a, b)| {
            let spec = PortSpec { proto, first, last };
            let ports = dst.map_or_else(|| spec.to_string(), |net| format!("{spec} dst {net}"));
            match (a, b) {
                (None, Some(b)) => Some(format!("+ {ports} {}", describe(b))),
                (Some(a), None) => Some(format!("- {ports} {}", describe(a))),
                (Some(a), Some(b)) => Some(format!("~ {ports} {} -> {}", describe(a), describe(b))),
                // Equal runs are skipped above.
                (None, None) => None,
            }
        })
        .collect()
}

/// What `apply` does to one interface.
#[derive(Debug)]
enum Step {
    /// Not loaded: load, then swap in the bindings.
    Load,
    /// Loaded in another mode: unload and load again (not atomic), then the bindings.
    Reload,
    /// Debug logging switched: the program replaced through its link (atomic).
    Debug,
    /// The bindings and default action swapped in.
    Swap,
    /// Not in the file, `--prune`.
    Unload,
}

const fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn default_name(d: DefaultAction) -> &'static str {
    match d {
        DefaultAction::Pass => "pass",
        DefaultAction::Drop => "drop",
    }
}

pub fn apply(scope: &Scope, args: &ApplyArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| Failure {
        message: format!(
            "cannot read {}: {e}; give apply a TOML file (port-demux export writes one)",
            args.file.display()
        ),
        code: 1,
    })?;
    let source = Source {
        path: &args.file,
        text: &text,
    };
    let wanted = parse(&source)?;
    if !args.dry_run {
        check_load_privileges("port-demux apply")?;
        PortDemux::finish_pending(scope)?;
    }
    let loaded = scope.loaded()?;
    // The plan, checked whole before anything changes.
    let mut plan: Vec<(String, Vec<Step>, Vec<String>)> = Vec::new();
    for (iface, want) in &wanted {
        let (steps, lines) = if loaded.contains(iface) {
            plan_loaded(scope, iface, want)?
        } else {
            if scope.ifindex(iface)?.is_none() {
                return Err(source.error(
                    None,
                    &format!(
                        "no interface {iface}{}: check the name with `ip link`",
                        scope.where_()
                    ),
                ));
            }
            let mut lines = vec![format!(
                "load (mode {}, default {}, debug {})",
                want.settings.mode.name(),
                default_name(want.settings.default_action),
                on_off(want.settings.debug)
            )];
            lines.extend(diff(&[], &want.bindings));
            (vec![Step::Load], lines)
        };
        for b in &want.bindings {
            if let Action::Redirect(target) = &b.action
                && scope.ifindex(target)?.is_none()
            {
                return Err(source.error(
                    None,
                    &format!(
                        "{} of {iface} redirects to {target}, which does not exist{}",
                        b.ports,
                        scope.where_()
                    ),
                ));
            }
        }
        plan.push((iface.clone(), steps, lines));
    }
    if args.prune {
        for iface in loaded.iter().filter(|i| !wanted.contains_key(*i)) {
            plan.push((
                iface.clone(),
                vec![Step::Unload],
                vec!["unload (--prune)".into()],
            ));
        }
    }
    for (iface, steps, lines) in &plan {
        if steps.is_empty() {
            writeln!(out, "{iface}: unchanged")?;
            continue;
        }
        let atomic = if steps
            .iter()
            .any(|s| matches!(s, Step::Swap | Step::Load | Step::Reload))
        {
            " (bindings and default switch as one change)"
        } else {
            ""
        };
        writeln!(out, "{iface}:{atomic}")?;
        for line in lines {
            writeln!(out, "  {line}")?;
        }
    }
    if args.dry_run {
        writeln!(out, "dry run: nothing changed")?;
        return Ok(());
    }
    for (iface, steps, _) in &plan {
        for step in steps {
            run_step(scope, iface, step, wanted.get(iface))?;
        }
    }
    Ok(())
}

/// The steps and plan lines for an interface that is loaded; none when it is as wanted.
fn plan_loaded(
    scope: &Scope,
    iface: &str,
    want: &Wanted,
) -> Result<(Vec<Step>, Vec<String>), Failure> {
    let demux = PortDemux::open(scope, iface)?;
    let have = demux.settings()?;
    let bindings = demux.bindings()?;
    let mut steps = Vec::new();
    let mut lines = Vec::new();
    if have.mode == want.settings.mode {
        if have.debug != want.settings.debug {
            steps.push(Step::Debug);
            lines.push(format!(
                "debug {} -> {} (the program replaced through its link)",
                on_off(have.debug),
                on_off(want.settings.debug)
            ));
        }
        let changes = diff(&bindings, &want.bindings);
        if have.default_action != want.settings.default_action || !changes.is_empty() {
            steps.push(Step::Swap);
            if have.default_action != want.settings.default_action {
                lines.push(format!(
                    "default {} -> {}",
                    default_name(have.default_action),
                    default_name(want.settings.default_action)
                ));
            }
            lines.extend(changes);
        }
    } else {
        steps.push(Step::Reload);
        lines.push(format!(
            "mode {} -> {}: NOT atomic: detached and attached again (frames meet no program in between, counters restart)",
            have.mode.name(),
            want.settings.mode.name()
        ));
        lines.extend(diff(&[], &want.bindings));
    }
    Ok((steps, lines))
}

fn run_step(scope: &Scope, iface: &str, step: &Step, want: Option<&Wanted>) -> Result<(), Failure> {
    let load_opts = |w: &Wanted| LoadOptions {
        mode: w.settings.mode,
        default_action: w.settings.default_action,
        debug: w.settings.debug,
        ..LoadOptions::default()
    };
    match (step, want) {
        (Step::Unload, _) => PortDemux::unload(scope, iface)?,
        (Step::Load | Step::Reload, Some(w)) => {
            if matches!(step, Step::Reload) {
                PortDemux::unload(scope, iface)?;
            }
            let (demux, _) = PortDemux::load(scope, iface, &load_opts(w))?;
            if !w.bindings.is_empty() {
                demux.replace_bindings(&w.bindings, w.settings.default_action)?;
            }
        }
        (Step::Debug, Some(w)) => {
            PortDemux::upgrade(scope, iface, &load_opts(w))?;
        }
        (Step::Swap, Some(w)) => {
            PortDemux::open(scope, iface)?
                .replace_bindings(&w.bindings, w.settings.default_action)?;
        }
        (_, None) => {}
    }
    Ok(())
}

/// A TOML key: bare when it can be, else quoted.
fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        name.to_owned()
    } else {
        toml::Value::String(name.to_owned()).to_string()
    }
}

fn string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

pub fn export(scope: &Scope, _args: &ExportArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let mut doc = String::from(
        "# port-demux export: the running state; `port-demux apply FILE` makes it so again.\n",
    );
    for iface in scope.loaded()? {
        let demux = PortDemux::open(scope, &iface)?;
        let settings = demux.settings()?;
        let _ = write!(
            doc,
            "\n[interfaces.{}]\nmode = {}\ndefault = {}\ndebug = {}\nbindings = [\n",
            key(&iface),
            string(settings.mode.name()),
            string(default_name(settings.default_action)),
            settings.debug
        );
        // The scoped bindings of the same ports, action and owner share one line, their
        // prefixes in one `dst` list.
        let mut lines: Vec<(BindingRange, Vec<IpNet>)> = Vec::new();
        let mut scoped_line: HashMap<(Proto, u16, u16, String, String), usize> = HashMap::new();
        for b in demux.bindings()? {
            let Some(net) = b.dst else {
                lines.push((b, Vec::new()));
                continue;
            };
            let key = (
                b.ports.proto,
                b.ports.first,
                b.ports.last,
                b.action.to_string(),
                b.owner.clone(),
            );
            if let Some(&i) = scoped_line.get(&key) {
                lines[i].1.push(net);
            } else {
                scoped_line.insert(key, lines.len());
                lines.push((b, vec![net]));
            }
        }
        for (b, dst) in lines {
            let owner = if b.owner.is_empty() {
                String::new()
            } else {
                format!(", owner = {}", string(&b.owner))
            };
            let dst = if dst.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = dst.iter().map(|n| string(&n.to_string())).collect();
                format!(", dst = [{}]", list.join(", "))
            };
            let _ = writeln!(
                doc,
                "    {{ ports = {}, action = {}{owner}{dst} }},",
                string(&b.ports.to_string()),
                string(&b.action.to_string())
            );
        }
        doc.push_str("]\n");
    }
    out.write_all(doc.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<BTreeMap<String, Wanted>, String> {
        parse(&Source {
            path: Path::new("f.toml"),
            text,
        })
        .map_err(|f| f.message)
    }

    #[test]
    fn errors_name_the_line() {
        let text = "[interfaces.b0]\nbindings = [\n  { ports = \"udp/7777\", action = \"drop\" },\n  { ports = \"udp/70000\", action = \"drop\" },\n]\n";
        let e = parsed(text).unwrap_err();
        assert!(e.starts_with("f.toml:4: "), "{e}");
        assert!(e.contains("70000"), "{e}");
        let e = parsed("[interfaces.b0]\nmode = \"fast\"\n").unwrap_err();
        assert!(
            e.starts_with("f.toml:2: ") && e.contains("auto, native or skb"),
            "{e}"
        );
        let e = parsed("[interfaces.b0]\nbindings = [\n { ports = \"udp/1-10\", action = \"drop\" },\n { ports = \"udp/5\", action = \"pass\" },\n]\n").unwrap_err();
        assert!(e.starts_with("f.toml:4: ") && e.contains("line 3"), "{e}");
        let e = parsed("[interfaces.b0]\nmood = 1\n").unwrap_err();
        assert!(e.starts_with("f.toml:2: ") && e.contains("mood"), "{e}");
        let e = parsed("[interfaces.b0\n").unwrap_err();
        assert!(e.starts_with("f.toml:1: "), "{e}");
        assert_eq!(e.lines().count(), 1);
        let e = parsed("[interfaces.b0]\nbindings = [\n { ports = \"udp/53\", action = \"pass\", dst = [\"10.0.0.0/8\",\n  \"10.0.0.1/8\"] },\n]\n").unwrap_err();
        assert!(
            e.starts_with("f.toml:4: ") && e.contains("did you mean 10.0.0.0/8?"),
            "{e}"
        );
        let e = parsed(
            "[interfaces.b0]\nbindings = [{ ports = \"udp/53\", action = \"pass\", dst = [] }]\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("f.toml:2: ") && e.contains("dst is empty"),
            "{e}"
        );
        // The same (protocol, prefix, port) twice; the same port without a prefix and with
        // one, or with two prefixes, coexist.
        let e = parsed("[interfaces.b0]\nbindings = [\n { ports = \"udp/50-60\", action = \"pass\", dst = [\"10.0.0.1\"] },\n { ports = \"udp/53\", action = \"drop\" },\n { ports = \"udp/53\", action = \"drop\", dst = [\"::/0\", \"10.0.0.1/32\"] },\n]\n").unwrap_err();
        assert!(
            e.starts_with("f.toml:5: ") && e.contains("dst 10.0.0.1/32") && e.contains("line 3"),
            "{e}"
        );
        let ok = parsed("[interfaces.b0]\nbindings = [\n { ports = \"udp/53\", action = \"drop\" },\n { ports = \"udp/53\", action = \"pass\", dst = [\"10.0.0.0/8\", \"2001:db8::1\"] },\n]\n").unwrap();
        let dst: Vec<_> = ok["b0"]
            .bindings
            .iter()
            .map(|b| b.dst.map(|d| d.to_string()))
            .collect();
        assert_eq!(
            dst,
            [
                None,
                Some("10.0.0.0/8".into()),
                Some("2001:db8::1/128".into())
            ]
        );
    }

    #[test]
    fn diff_lines_are_runs() {
        let r = |spec: &str, action: &str, owner: &str| BindingRange {
            ports: spec.parse().unwrap(),
            action: action.parse().unwrap(),
            owner: owner.into(),
            dst: None,
        };
        let old = [r("udp/1-10", "drop", ""), r("tcp/80", "pass", "web")];
        let new = [
            r("udp/1-5", "drop", ""),
            r("udp/6-8", "pass", ""),
            r("tcp/443", "pass", "web"),
        ];
        assert_eq!(
            diff(&old, &new),
            [
                "- tcp/80 pass owner \"web\"",
                "+ tcp/443 pass owner \"web\"",
                "~ udp/6-8 drop -> pass",
                "- udp/9-10 drop"
            ]
        );
        assert!(diff(&new, &new).is_empty());
        let scoped = |spec: &str, action: &str, dst: &str| BindingRange {
            dst: Some(dst.parse().unwrap()),
            ..r(spec, action, "")
        };
        let old = [
            r("udp/53", "pass", ""),
            scoped("udp/53-54", "drop", "10.0.0.0/8"),
            scoped("udp/53", "drop", "2001:db8::/32"),
        ];
        let new = [
            r("udp/53", "pass", ""),
            scoped("udp/53", "drop", "10.0.0.0/8"),
            scoped("udp/53", "pass", "2001:db8::/32"),
            scoped("udp/53", "pass", "10.0.0.1/32"),
        ];
        assert_eq!(
            diff(&old, &new),
            [
                "- udp/54 dst 10.0.0.0/8 drop",
                "+ udp/53 dst 10.0.0.1/32 pass",
                "~ udp/53 dst 2001:db8::/32 drop -> pass",
            ]
        );
    }
}
