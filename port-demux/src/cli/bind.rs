//! `port-demux bind` and `port-demux unbind`.

use std::io::Write;

use clap::Args;

use super::{Failure, check_privileges, open};
use crate::{Action, BindOptions, DirLock, PortSpec, Scope};

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
}

/// Arguments of `unbind`.
#[derive(Debug, Args)]
pub struct UnbindArgs {
    /// Interface (may be left out when exactly one is loaded).
    #[arg(short, long)]
    pub iface: Option<String>,
    /// PROTO/PORT or PROTO/FIRST-LAST.
    pub ports: String,
}

pub fn bind(scope: &Scope, args: &BindArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let ports: PortSpec = args.ports.parse()?;
    let action: Action = args.action.parse()?;
    check_privileges("port-demux bind")?;
    // The writers' lock before the instance is opened: no load, unload or other bind changes
    // which instance `-i` names, or its maps, until this one is done.
    let _lock = DirLock::writers(scope.bpffs())?;
    let demux = open(scope, args.iface.as_deref())?;
    let opts = BindOptions {
        replace: args.replace,
        owner: args.owner.clone(),
    };
    demux.bind(ports, &action, &opts)?;
    writeln!(out, "bound {ports} to {action} on {}", demux.iface())?;
    Ok(())
}

pub fn unbind(scope: &Scope, args: &UnbindArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let ports: PortSpec = args.ports.parse()?;
    check_privileges("port-demux unbind")?;
    let _lock = DirLock::writers(scope.bpffs())?;
    let demux = open(scope, args.iface.as_deref())?;
    demux.unbind(ports)?;
    writeln!(out, "unbound {ports} on {}", demux.iface())?;
    Ok(())
}
