//! `port-demux load` and `port-demux unload`.

use std::io::Write;

use clap::Args;

use super::{Failure, check_load_privileges, check_privileges};
use crate::{DefaultAction, LoadOptions, Mode, PortDemux, Scope};

/// Arguments of `load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Interface to attach to.
    pub iface: String,
    /// Attach mode: auto tries native and falls back to skb.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Action for ports with no binding.
    #[arg(long = "default", value_enum, default_value_t = DefaultAction::Pass)]
    pub default_action: DefaultAction,
    /// Replace an XDP program that port-demux did not load.
    #[arg(long)]
    pub force: bool,
    /// Compile debug logging into the data path (follow it with `port-demux log`).
    #[arg(long)]
    pub debug: bool,
    /// Replace the program of a loaded instance atomically, keeping bindings and counters.
    #[arg(long, conflicts_with_all = ["mode", "default_action", "force"])]
    pub upgrade: bool,
    /// Where to write the kernel verifier's log if it rejects the program (default: a file in
    /// the temporary directory, named in the error).
    #[arg(long, value_name = "FILE")]
    pub verifier_log: Option<std::path::PathBuf>,
}

/// Arguments of `unload`.
#[derive(Debug, Args)]
pub struct UnloadArgs {
    /// Interface to detach from.
    pub iface: String,
}

pub fn load(scope: &Scope, args: &LoadArgs, out: &mut dyn Write) -> Result<(), Failure> {
    check_load_privileges("port-demux load")?;
    let opts = LoadOptions {
        mode: args.mode,
        default_action: args.default_action,
        force: args.force,
        debug: args.debug,
        verifier_log: args.verifier_log.clone(),
    };
    if args.upgrade {
        let report = PortDemux::upgrade(scope, &args.iface, &opts)?;
        writeln!(
            out,
            "upgraded port-demux on {}: program id {} replaced {} through its link; bindings and counters kept",
            args.iface, report.new_prog_id, report.old_prog_id
        )?;
        return Ok(());
    }
    let (demux, report) = PortDemux::load(scope, &args.iface, &opts)?;
    if report.stale_pins_removed {
        writeln!(
            out,
            "removed stale pins of an instance that no longer ran on {}",
            args.iface
        )?;
    }
    if let Some(id) = report.replaced {
        writeln!(out, "replaced XDP program id {id} on {}", args.iface)?;
    }
    if let Some(reason) = &report.fallback_reason {
        writeln!(out, "native XDP unavailable ({reason}); using skb mode")?;
    }
    writeln!(
        out,
        "loaded port-demux on {} ({} mode, program id {}, unbound ports: {}); pins in {}",
        args.iface,
        report.mode.name(),
        report.prog_id,
        match args.default_action {
            DefaultAction::Pass => "pass",
            DefaultAction::Drop => "drop",
        },
        demux.pin_dir().display()
    )?;
    Ok(())
}

pub fn unload(scope: &Scope, args: &UnloadArgs, out: &mut dyn Write) -> Result<(), Failure> {
    check_privileges("port-demux unload")?;
    PortDemux::unload(scope, &args.iface)?;
    writeln!(out, "unloaded port-demux from {}", args.iface)?;
    Ok(())
}
