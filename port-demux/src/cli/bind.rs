//! `port-demux bind` and `port-demux unbind`.

use std::io::Write;

use clap::Args;
use ipnet::IpNet;

use super::{Failure, check_privileges, open};
use crate::{Action, BindOptions, DirLock, PortSpec, Scope, prefix::parse_prefix};

/// Arguments of `bind`.
#[derive(Debug, Args)]
pub struct BindArgs {
    /// Interface (may be left out when exactly one is loaded).
    #[arg(short, long)]
    pub iface: Option<String>,
    /// PROTO/PORT or PROTO/FIRST-LAST: tcp/80, udp/5000-5099, tcp/http.
    pub ports: String,
    /// pass, drop or redirect:IFACE.
    pub action: String,
    /// Overwrite existing bindings instead of refusing.
    #[arg(long)]
    pub replace: bool,
    /// Label recorded with the binding and named in conflicts (at most 16 bytes).
    #[arg(long, default_value = "")]
    pub owner: String,
    /// Only frames to this destination prefix (`192.0.2.0/24`, `2001:db8::/32`, one address,
    /// `0.0.0.0/0` or `::/0` for every address of one family); repeatable. None: every address
    /// of both families.
    #[arg(long, value_name = "PREFIX")]
    pub dst: Vec<String>,
}

/// Arguments of `unbind`.
#[derive(Debug, Args)]
pub struct UnbindArgs {
    /// Interface (may be left out when exactly one is loaded).
    #[arg(short, long)]
    pub iface: Option<String>,
    /// PROTO/PORT or PROTO/FIRST-LAST.
    pub ports: String,
    /// Remove the bindings of these destination prefixes (as `bind --dst`); none: the
    /// binding without a prefix.
    #[arg(long, value_name = "PREFIX")]
    pub dst: Vec<String>,
}

/// The `--dst` prefixes, parsed; the first bad one is the error.
pub(super) fn prefixes(dst: &[String]) -> Result<Vec<IpNet>, Failure> {
    Ok(dst
        .iter()
        .map(|s| parse_prefix(s))
        .collect::<crate::Result<Vec<_>>>()?)
}

/// ` for 192.0.2.0/24, 2001:db8::/32`, or nothing.
fn for_dst(dst: &[IpNet]) -> String {
    if dst.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = dst.iter().map(ToString::to_string).collect();
        format!(" for {}", list.join(", "))
    }
}

pub fn bind(scope: &Scope, args: &BindArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let ports: PortSpec = args.ports.parse()?;
    let action: Action = args.action.parse()?;
    let dst = prefixes(&args.dst)?;
    check_privileges("port-demux bind")?;
    // The writers' lock before the instance is opened: no load, unload or other bind changes
    // which instance `-i` names, or its maps, until this one is done.
    let _lock = DirLock::writers(scope.bpffs())?;
    let demux = open(scope, args.iface.as_deref())?;
    let opts = BindOptions {
        replace: args.replace,
        owner: args.owner.clone(),
    };
    demux.bind_dst(ports, &dst, &action, &opts)?;
    writeln!(
        out,
        "bound {ports}{} to {action} on {}",
        for_dst(&dst),
        demux.iface()
    )?;
    Ok(())
}

pub fn unbind(scope: &Scope, args: &UnbindArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let ports: PortSpec = args.ports.parse()?;
    let dst = prefixes(&args.dst)?;
    check_privileges("port-demux unbind")?;
    let _lock = DirLock::writers(scope.bpffs())?;
    let demux = open(scope, args.iface.as_deref())?;
    demux.unbind_dst(ports, &dst)?;
    writeln!(out, "unbound {ports}{} on {}", for_dst(&dst), demux.iface())?;
    Ok(())
}
