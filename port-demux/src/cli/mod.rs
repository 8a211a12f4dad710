//! The `port-demux` command line: clap definitions and one module per verb.
//!
//! Each verb writes its output to the writer it is given, so tests can run it in-process.

mod apply;
mod bind;
mod bindings;
mod exporter;
mod generate;
mod load;
mod log;
mod stats;
mod status;
mod watch;

use std::{ffi::OsString, io::Write};

use clap::{Parser, Subcommand};

use crate::{Error, PortDemux, Scope};

/// XDP demultiplexer for TCP and UDP ports: pass, drop or redirect by destination port at the
/// driver, and count every frame.
#[derive(Debug, Parser)]
#[command(name = "port-demux", version)]
pub struct Cli {
    /// Run the interface side of the command inside this network namespace (a name from
    /// `ip netns`, or a path); state stays in the host's bpffs.
    #[arg(long, global = true, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// bpffs mount point holding the pins.
    #[arg(long, global = true, default_value = crate::BPFFS, hide = true)]
    pub bpffs: std::path::PathBuf,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach port-demux to an interface and pin it; it keeps running after this command.
    Load(load::LoadArgs),
    /// Detach port-demux from an interface and remove every pin.
    Unload(load::UnloadArgs),
    /// Bind PROTO/PORT[-PORT] to pass, drop or redirect:IFACE.
    Bind(bind::BindArgs),
    /// Remove the bindings of PROTO/PORT[-PORT].
    Unbind(bind::UnbindArgs),
    /// List bindings.
    Bindings(bindings::BindingsArgs),
    /// Per-port packets and bytes, busiest first, and the global counters.
    Stats(stats::StatsArgs),
    /// Interfaces with port-demux, attach mode, program id, bindings; `--all`: every instance
    /// in the bpffs, whatever its state.
    Status(status::StatusArgs),
    /// Remove every instance that does not run (its namespace or interface gone, or half
    /// written), detaching any program it still holds.
    Prune(status::PruneArgs),
    /// Follow the debug log of an instance loaded with `--debug`.
    Log(log::LogArgs),
    /// Make the interfaces named in a TOML file as it says: load options and every binding,
    /// each interface's bindings switching as one change.
    Apply(apply::ApplyArgs),
    /// Print the running state of every interface as a TOML file that apply takes back.
    Export(apply::ExportArgs),
    /// Serve every instance's counters as Prometheus metrics on http://ADDR:PORT/metrics.
    Exporter(exporter::ExporterArgs),
    /// Write shell completions and man pages generated from these definitions.
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// A failed command: the one-line message and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong and what to do.
    pub message: String,
    /// Exit code: 2 for usage errors, 1 otherwise.
    pub code: u8,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self {
            message: format!("{e}{}", hint(&e)),
            code: 1,
        }
    }
}

/// What to type next for an error the library words in its own terms: the CLI's verbs and
/// flags, appended to the library's sentence.
fn hint(e: &Error) -> String {
    match e {
        Error::NotLoaded { iface, .. } | Error::Unloaded { iface } => {
            format!(" (`port-demux load {iface}`)")
        }
        Error::NoBpffs { .. } | Error::NoneLoaded { .. } => " (`port-demux load IFACE`)".into(),
        Error::WhichInterface { .. } => " with -i IFACE".into(),
        Error::AlreadyLoaded { iface } => {
            format!(" (`port-demux unload {iface}`, or `port-demux load {iface} --upgrade`)")
        }
        Error::ForeignProgram { .. } => ", or `load --force` to replace it".into(),
        Error::Detached { iface, .. } => {
            format!(" (`port-demux unload {iface}`, or `port-demux prune`)")
        }
        Error::LayoutV2 { iface, .. }
        | Error::LayoutV3 { iface, .. }
        | Error::LayoutV4 { iface, .. }
        | Error::LayoutV5 { iface, .. }
        | Error::LayoutV6 { iface, .. }
        | Error::LayoutV7 { iface, .. } => {
            format!(" (`port-demux load {iface} --upgrade`)")
        }
        Error::Conflict { .. } => " (`unbind`, or `bind --replace`)".into(),
        Error::NotBound { .. } => "; see `port-demux bindings`".into(),
        Error::Verifier { log: None, .. } => {
            "; rerun with --verifier-log FILE to keep its whole log".into()
        }
        _ => String::new(),
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self {
            message: format!("cannot write output: {e}"),
            code: 1,
        }
    }
}

/// The `port-demux` process: logging to stderr, the verb from the command line, its failure
/// printed as one line with the exit code.
#[must_use]
pub fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("port-demux: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(run(std::env::args_os(), &mut stdout)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure { message, code }) => {
            drop(stdout);
            eprintln!("port-demux: {message}");
            std::process::ExitCode::from(code)
        }
    }
}

/// Parses `args` (program name first) and runs the verb, writing to `out`.
///
/// # Errors
/// A [`Failure`] with a one-line message.
pub async fn run(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                write!(out, "{e}")?;
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    Err(Failure {
                        message: "a command is needed: see port-demux --help".into(),
                        code: 2,
                    })
                } else {
                    Ok(())
                };
            }
            return Err(usage(&e));
        }
    };
    let scope = match &cli.netns {
        Some(ns) => Scope::netns(ns)?,
        None => Scope::current()?,
    }
    .with_bpffs(&cli.bpffs);
    match cli.command {
        Command::Load(args) => load::load(&scope, &args, out),
        Command::Unload(args) => load::unload(&scope, &args, out),
        Command::Bind(args) => bind::bind(&scope, &args, out),
        Command::Unbind(args) => bind::unbind(&scope, &args, out),
        Command::Bindings(args) => bindings::bindings(&scope, &args, out),
        Command::Stats(args) => stats::stats(&scope, &args, out),
        Command::Status(args) => status::status(&scope, &args, out),
        Command::Prune(args) => status::prune_stale(&scope, &args, out),
        Command::Log(args) => log::log(&scope, &args, out).await,
        Command::Apply(args) => apply::apply(&scope, &args, out),
        Command::Export(args) => apply::export(&scope, &args, out),
        Command::Exporter(args) => {
            exporter::exporter(&scope, cli.netns.as_deref(), &args, out).await
        }
        Command::Generate(args) => generate::generate(&args, out),
    }
}

/// Clap's error as one line: its first paragraph (which names the missing arguments on the
/// lines after the first) joined, without the `error: ` prefix, plus a pointer to the help.
fn usage(e: &clap::Error) -> Failure {
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    let first = if first.is_empty() {
        "invalid arguments"
    } else {
        first
    };
    Failure {
        message: format!("{first} (see port-demux --help)"),
        code: 2,
    }
}

/// Opens `-i IFACE`, or the only loaded interface when it was left out.
fn open(scope: &Scope, iface: Option<&str>) -> Result<PortDemux, Error> {
    match iface {
        Some(iface) => PortDemux::open(scope, iface),
        None => PortDemux::open_only(scope),
    }
}

/// Capabilities, by number (`linux/capability.h`) and name.
const CAP_NET_ADMIN: (u32, &str) = (12, "CAP_NET_ADMIN");
const CAP_SYS_ADMIN: (u32, &str) = (21, "CAP_SYS_ADMIN");
const CAP_PERFMON: (u32, &str) = (38, "CAP_PERFMON");
const CAP_BPF: (u32, &str) = (39, "CAP_BPF");

/// The process's effective capabilities.
fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Whether the process has the capabilities that changing XDP state needs.
fn check_privileges(what: &str) -> Result<(), Error> {
    let effective = effective_capabilities();
    let has = |(cap, _): (u32, &str)| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN)) {
        Ok(())
    } else {
        Err(Error::Privileges {
            what: what.to_owned(),
        })
    }
}

/// Whether the process has what loading the program needs, each capability proven needed by
/// the kernel (`tests/tests/nonroot.rs`): `CAP_BPF` to create maps and load (or `CAP_SYS_ADMIN`),
/// `CAP_NET_ADMIN` to create the redirect devmap and attach to an interface, `CAP_PERFMON` (or
/// `CAP_SYS_ADMIN`) for the verifier to accept the program's pointer arithmetic; the refusal
/// names those missing, where the kernel's own errors would not.
fn check_load_privileges(what: &str) -> Result<(), Error> {
    let effective = effective_capabilities();
    let has = |(cap, _): (u32, &str)| effective & (1 << cap) != 0;
    let missing: Vec<&'static str> = [
        (CAP_BPF, has(CAP_BPF) || has(CAP_SYS_ADMIN)),
        (CAP_NET_ADMIN, has(CAP_NET_ADMIN)),
        (CAP_PERFMON, has(CAP_PERFMON) || has(CAP_SYS_ADMIN)),
    ]
    .into_iter()
    .filter(|&(_, held)| !held)
    .map(|((_, name), _)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Capabilities {
            what: what.to_owned(),
            missing,
        })
    }
}
