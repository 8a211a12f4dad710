//! Errors. Each reads as one line that says what is wrong and what to do about it, in the
//! library's terms: no command-line words (flags, verbs of the `port-demux` CLI), which the CLI
//! adds itself (`cli::hint`). Variants carry typed fields, never pre-rendered text.

use std::{io, path::PathBuf};

use crate::spec::{Action, PortSpec};

/// Everything the library can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed port, range, protocol, action or interface name.
    #[error("{0}")]
    BadSpec(String),
    /// The interface does not exist (in the namespace the command runs in).
    #[error("no interface named {iface:?}{where_}: check the name with `ip link`")]
    UnknownInterface {
        /// The name given.
        iface: String,
        /// " in network namespace X", or empty.
        where_: String,
    },
    /// A redirect target that does not exist.
    #[error(
        "cannot redirect to {iface:?}: no such interface{where_}; create it or pick one from `ip link`"
    )]
    BadRedirectTarget {
        /// The target given.
        iface: String,
        /// " in network namespace X", or empty.
        where_: String,
    },
    /// The network namespace given with `--netns` cannot be opened.
    #[error("cannot open network namespace {name:?} ({source}): check `ip netns list`")]
    NetNs {
        /// Name or path given.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Not root or missing capabilities.
    #[error("{what}: needs root (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN): run it with sudo")]
    Privileges {
        /// What was attempted.
        what: String,
    },
    /// `apply` replaced the bindings map while a command waited to change it.
    #[error(
        "the bindings of {iface} were replaced by a configuration apply while this change waited: make it again"
    )]
    Replaced {
        /// Interface.
        iface: String,
    },
    /// Capabilities that loading needs are missing (root has them all).
    #[error(
        "{what}: needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; missing {}: run it with sudo, or grant them (deploy/port-demux.service does)",
        .missing.join(", ")
    )]
    Capabilities {
        /// What was attempted.
        what: String,
        /// The capabilities the process lacks.
        missing: Vec<&'static str>,
    },
    /// No instance on this interface.
    #[error("port-demux is not loaded on {iface}{where_}: load it first")]
    NotLoaded {
        /// Interface.
        iface: String,
        /// " in network namespace X", or empty.
        where_: String,
    },
    /// Nothing can be loaded: no bpffs where the pins would be.
    #[error("port-demux is not loaded: no bpf filesystem is mounted at {path} (loading mounts one)", path = .path.display())]
    NoBpffs {
        /// The bpffs mount point.
        path: PathBuf,
    },
    /// No interface given, and none is loaded.
    #[error("port-demux is not loaded on any interface{where_}: load it on one first")]
    NoneLoaded {
        /// " in network namespace X", or empty.
        where_: String,
    },
    /// No interface given, and several are loaded.
    #[error("port-demux is loaded on {}: say which interface", .loaded.join(", "))]
    WhichInterface {
        /// The interfaces it is loaded on.
        loaded: Vec<String>,
    },
    /// An owner label that cannot be stored or printed as one line.
    #[error("owner {owner:?} {problem}: give a label of at most {max} printable bytes")]
    BadOwner {
        /// The label given.
        owner: String,
        /// What is wrong with it.
        problem: &'static str,
        /// The most bytes a label may have.
        max: usize,
    },
    /// `load` on an interface that already has port-demux.
    #[error(
        "port-demux is already loaded on {iface}: unload it first, or upgrade it to replace the program"
    )]
    AlreadyLoaded {
        /// Interface.
        iface: String,
    },
    /// Another XDP program is attached.
    #[error(
        "interface {iface} already has XDP program id {prog_id} that port-demux did not load: detach it first"
    )]
    ForeignProgram {
        /// Interface.
        iface: String,
        /// Its id.
        prog_id: u32,
    },
    /// A foreign program attached through a `bpf_link` someone else holds: it cannot be
    /// detached from outside.
    #[error(
        "XDP program id {prog_id} on {iface} is held by a bpf_link, which cannot be detached from outside: remove it with the tool that attached it (bpftool link)"
    )]
    HeldByLink {
        /// Interface.
        iface: String,
        /// The program.
        prog_id: u32,
    },
    /// The pins exist but the interface runs another program or none.
    #[error(
        "port-demux's pins for {iface} exist but its program is not attached ({detail}): unload it and load again"
    )]
    Detached {
        /// Interface.
        iface: String,
        /// What was found instead.
        detail: String,
    },
    /// A library handle on an instance that was unloaded since it was opened.
    #[error(
        "the port-demux instance opened on {iface} was unloaded since: load it and open it again"
    )]
    Unloaded {
        /// The interface it was opened on.
        iface: String,
    },
    /// A pin folder that a new instance needs holds one whose program runs on an interface
    /// of a namespace no process or `/run/netns` name holds open.
    #[error(
        "{path} holds an instance still attached to interface index {ifindex} of a namespace port-demux cannot enter: unload it from that namespace first", path = .path.display()
    )]
    Busy {
        /// The folder.
        path: PathBuf,
        /// The interface index it runs on.
        ifindex: u32,
    },
    /// `unload` removed the pins, but another process keeps the link, and the program, alive.
    #[error(
        "pins removed, but {iface} still runs program id {prog_id} after 5 s: another process holds its bpf_link (find it with `bpftool link`)"
    )]
    StillAttached {
        /// Interface.
        iface: String,
        /// The program still attached.
        prog_id: u32,
    },
    /// Pins written by another layout version.
    #[error(
        "pins at {path} have layout version {found}, this port-demux reads version {expected}: unload with the port-demux that loaded them, then load again"
    )]
    Layout {
        /// Pin folder.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version understood.
        expected: u32,
    },
    /// Pins of layout v2 (IPv4 only), which `load --upgrade` migrates.
    #[error(
        "pins at {path} have layout version 2 (IPv4 only), this port-demux reads version {LAYOUT}: upgrade the instance on {iface} to migrate them (bindings and counters are kept)", LAYOUT = port_demux_common::LAYOUT_VERSION
    )]
    LayoutV2 {
        /// Pin folder.
        path: PathBuf,
        /// Interface.
        iface: String,
    },
    /// Pins of layout v3 (before address-scoped bindings), which `load --upgrade` migrates.
    #[error(
        "pins at {path} have layout version 3 (no address-scoped bindings), this port-demux reads version {LAYOUT}: upgrade the instance on {iface} to migrate them (bindings and counters are kept)", LAYOUT = port_demux_common::LAYOUT_VERSION
    )]
    LayoutV3 {
        /// Pin folder.
        path: PathBuf,
        /// Interface.
        iface: String,
    },
    /// Pins of layout v4 (interval tables as arrays of records), which `load --upgrade`
    /// migrates.
    #[error(
        "pins at {path} have layout version 4 (interval tables as arrays of records), this port-demux reads version {LAYOUT}: upgrade the instance on {iface} to migrate them (bindings, scoped bindings and counters are kept)", LAYOUT = port_demux_common::LAYOUT_VERSION
    )]
    LayoutV4 {
        /// Pin folder.
        path: PathBuf,
        /// Interface.
        iface: String,
    },
    /// Pins of layout v5 (one per-CPU counter entry per port), which `load --upgrade`
    /// migrates.
    #[error(
        "pins at {path} have layout version 5 (one counter entry per port), this port-demux reads version {LAYOUT}: upgrade the instance on {iface} to migrate them (bindings, scoped bindings and counters are kept)", LAYOUT = port_demux_common::LAYOUT_VERSION
    )]
    LayoutV5 {
        /// Pin folder.
        path: PathBuf,
        /// Interface.
        iface: String,
    },
    /// Pins of layout v6 (IPv6 frames counted in `GLOBALS2`), which `load --upgrade` migrates.
    #[error(
        "pins at {path} have layout version 6 (IPv6 frames counted apart from their port), this port-demux reads version {LAYOUT}: upgrade the instance on {iface} to migrate them (bindings, scoped bindings and counters are kept)", LAYOUT = port_demux_common::LAYOUT_VERSION
    )]
    LayoutV6 {
        /// Pin folder.
        path: PathBuf,
        /// Interface.
        iface: String,
    },
    /// Pins of layout v7 (`BINDINGS` an array of one entry a port), which `load --upgrade`
    /// migrates.
    #[error(
        "pins at {path} have layout version 7 (bindings in a map the program looks up), this port-demux reads version {LAYOUT}: upgrade the instance on {iface} to migrate them (bindings, scoped bindings and counters are kept)", LAYOUT = port_demux_common::LAYOUT_VERSION
    )]
    LayoutV7 {
        /// Pin folder.
        path: PathBuf,
        /// Interface.
        iface: String,
    },
    /// Ports of the range are bound already.
    #[error(
        "{ports}{to} {is} already bound to {action}{owner}: nothing changed; unbind {it} first or replace the binding",
        to = .dst.map(|net| format!(" to {net}")).unwrap_or_default(),
        is = if .ports.len() == 1 { "is" } else { "are" },
        it = if .ports.len() == 1 { "it" } else { "them" },
        owner = .owner.as_ref().map(|o| format!(" (owner {})", o.escape_debug())).unwrap_or_default()
    )]
    Conflict {
        /// The first run of conflicting ports of the range (same action and owner), like
        /// `udp/53` or `tcp/9050-9099`.
        ports: PortSpec,
        /// The destination prefix of a scoped binding; `None` for the ports' own binding.
        dst: Option<crate::IpNet>,
        /// Their binding.
        action: Action,
        /// Their owner label, if they have one.
        owner: Option<String>,
    },
    /// Scoped bindings that do not fit in the tables.
    #[error(
        "no room: this needs {need} {what} together, {free} of {capacity} are free: nothing changed; unbind scoped bindings, or bind fewer prefixes or ports at once"
    )]
    Capacity {
        /// What ran out: scoped bindings, or interval records of a family.
        what: &'static str,
        /// How many this change needs (records: in one run, for one port's table).
        need: usize,
        /// How many are free (records: in all).
        free: usize,
        /// How many the table holds.
        capacity: usize,
    },
    /// Unbind of ports that are not bound.
    #[error(
        "{ports}{to} {is} not bound: nothing changed",
        to = .dst.map(|net| format!(" to {net}")).unwrap_or_default(),
        is = if .ports.len() == 1 { "is" } else { "are" }
    )]
    NotBound {
        /// The first run of unbound ports of the range, like `tcp/9100-9110`.
        ports: PortSpec,
        /// The destination prefix of a scoped binding; `None` for the ports' own binding.
        dst: Option<crate::IpNet>,
    },
    /// Every devmap slot is in use.
    #[error(
        "all {0} redirect targets are in use: unbind ports redirected elsewhere before adding another target"
    )]
    NoRedirectSlot(u32),
    /// Attaching failed; the message carries the kernel's reason (the errno of the failed call).
    #[error("cannot attach to {iface} in {mode} mode: {}", chain(source.as_ref()))]
    Attach {
        /// Interface.
        iface: String,
        /// Mode tried.
        mode: String,
        /// Why.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// bpffs is missing and cannot be mounted.
    #[error("no bpf filesystem at {path} and mounting one failed ({source}): mount it with `mount -t bpf bpf {path}`", path = .path.display())]
    Bpffs {
        /// Mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Loading the eBPF object failed.
    #[error("cannot load the XDP program: {}", crate::kernel::describe_ebpf(.0))]
    Ebpf(#[from] Box<aya::EbpfError>),
    /// The running kernel lacks a feature `load` needs (see `kernel::FEATURES`).
    #[error(
        "{kernel} lacks {feature}, which port-demux needs ({used_for}): Linux {since} or later has it"
    )]
    KernelTooOld {
        /// The running kernel, like `Linux 5.4.0`.
        kernel: String,
        /// What it lacks.
        feature: &'static str,
        /// What port-demux needs it for.
        used_for: &'static str,
        /// First release with it, like `5.9`.
        since: String,
    },
    /// The kernel's verifier rejected the program.
    #[error(
        "the verifier of {kernel} rejected the XDP program {program}: {reason}{log} (port-demux is tested on Linux 6.1, 6.12 and newer)",
        log = match .log {
            Some(path) => format!("; its whole log is in {}", path.display()),
            None => String::new(),
        }
    )]
    Verifier {
        /// The running kernel, like `Linux 6.1.0`.
        kernel: String,
        /// The program's name in the object.
        program: String,
        /// The verifier's last error line.
        reason: String,
        /// Where the whole log was written, when it could be.
        log: Option<PathBuf>,
    },
    /// A kernel call on a pin or map failed.
    #[error("{what} {path}: {source}", path = .path.display())]
    Io {
        /// What was attempted.
        what: &'static str,
        /// Pin or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// An [`Error::Io`], or [`Error::Privileges`] when the kernel said EPERM or EACCES.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            return Self::Privileges {
                what: format!("{what} {}", path.display()),
            };
        }
        Self::Io { what, path, source }
    }
}

/// An error and its sources on one line, `a: b: c`: aya's call errors say which call failed,
/// their source what the kernel answered.
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = source.source();
    }
    line
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
