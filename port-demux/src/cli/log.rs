//! `port-demux log`: follows the debug log of an instance loaded with `--debug`.

use std::{
    fs::{self, File},
    io::{Read as _, Seek as _, Write},
    os::fd::AsRawFd as _,
    path::PathBuf,
};

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
    let _reader = ReaderLock::take(status.prog_id, &status.iface)?;
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

/// Where the reader locks of log ring buffers live.
const LOCK_DIR: &str = "/run/port-demux";

/// The one reader of a program's log ring buffer: a BPF ring buffer hands each record to
/// whichever reader consumes it first, so a second `log` would silently split (in practice:
/// get none of) the records. Held as an exclusive `flock` on `/run/port-demux/log-MAPID`, keyed
/// by the ring buffer's map id (which outlives program ids across `load --upgrade`), holding
/// the reader's pid; the kernel drops it when the process ends, however it ends.
struct ReaderLock {
    _file: File,
}

impl ReaderLock {
    fn take(prog_id: u32, iface: &str) -> Result<Self, Failure> {
        let fail = |message: String| Failure { message, code: 1 };
        let ring = log_map_id(prog_id).ok_or_else(|| {
            fail(format!(
                "program {prog_id} on {iface} has no log ring buffer: load it again with `port-demux load {iface} --debug`"
            ))
        })?;
        fs::create_dir_all(LOCK_DIR).map_err(|e| fail(format!("cannot create {LOCK_DIR}: {e}")))?;
        let path = PathBuf::from(LOCK_DIR).join(format!("log-{ring}"));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(fail(format!("cannot lock {}: {e}", path.display())));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(fail(format!(
                "another `port-demux log`{holder} already follows the log of {iface}, and a log has one reader: stop that one first"
            )));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }
}

/// The id of the `AYA_LOGS` ring buffer of program `prog_id`, as `aya_log` finds it.
fn log_map_id(prog_id: u32) -> Option<u32> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)?;
    info.map_ids().ok()??.into_iter().find(|&id| {
        aya::maps::MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some("AYA_LOGS"))
    })
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
