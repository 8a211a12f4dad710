//! `port-demux log`: follows the debug log of an instance loaded with `--debug`.

use std::io::Write;

use clap::Args;
use tokio::io::unix::AsyncFd;

use super::{Failure, open};
use crate::{Error, Scope};

/// Arguments of `log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Interface (may be left out when exactly one is loaded).
    #[arg(short, long)]
    pub iface: Option<String>,
}

pub async fn log(scope: &Scope, args: &LogArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let demux = open(scope, args.iface.as_deref())?;
    let status = demux.status()?;
    if !status.debug {
        return Err(Error::BadSpec(format!(
            "debug logging is off on {}: load it with `port-demux load {} --debug`",
            status.iface, status.iface
        ))
        .into());
    }
    let logger =
        aya_log::EbpfLogger::init_from_id_with_logger(status.prog_id, Stdout).map_err(|e| {
            Failure {
                message: format!("cannot open the log of program {}: {e}", status.prog_id),
                code: 1,
            }
        })?;
    writeln!(out, "following the log of {} (Ctrl-C stops)", status.iface)?;
    out.flush()?;
    // SAFETY: the logger owns the ring buffer's descriptor and lives inside the AsyncFd, so the
    // descriptor outlives the registration.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| Failure {
            message: format!("cannot watch the log: {e}"),
            code: 1,
        })?;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Prints every record of the program's log on stdout, whatever the process's log filter.
struct Stdout;

impl log::Log for Stdout {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        println!("{:<5} {}", record.level(), record.args());
    }

    fn flush(&self) {}
}
