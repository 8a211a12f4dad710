//! What port-demux needs of the running kernel, from which Linux release each need is met, and
//! the one-line answers when the kernel lacks something or its verifier rejects the program.
//!
//! The oldest kernels the project tests on every CI run are Debian's 6.1 and 6.12 LTS
//! (`cargo xtask vm-test`), besides the host's. The table below is what the code depends on;
//! `load` refuses, in one line, a kernel older than any [`Need::Required`] entry, instead of
//! failing later with a syscall's bare errno.

use std::{fmt, io, path::Path};

use aya::{
    EbpfLoader,
    programs::{ProgramError, Xdp},
    util::KernelVersion,
};

use crate::{Error, Result};

/// How much port-demux depends on a kernel feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `load` refuses a kernel without it.
    Required,
    /// Only the named part degrades without it.
    Optional,
}

/// A kernel feature port-demux uses, and the first Linux release that has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What the kernel offers.
    pub name: &'static str,
    /// First release with it: (major, minor).
    pub since: (u8, u8),
    /// What port-demux uses it for, or what degrades without it.
    pub used_for: &'static str,
    /// Whether `load` needs it.
    pub need: Need,
}

/// Every kernel feature port-demux relies on, oldest first.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "BPF_MAP_LOOKUP_BATCH and BPF_MAP_UPDATE_BATCH",
        since: (5, 6),
        used_for: "bind, unbind and stats read or write all 131,072 ports in one syscall",
        need: Need::Required,
    },
    Feature {
        name: "devmap values with a program slot (struct bpf_devmap_val)",
        since: (5, 8),
        used_for: "redirect targets",
        need: Need::Required,
    },
    Feature {
        name: "bpf_link for XDP (BPF_LINK_CREATE, BPF_LINK_UPDATE)",
        since: (5, 9),
        used_for: "the program stays attached after the loader exits (pinned link); an upgrade swaps it atomically",
        need: Need::Required,
    },
    Feature {
        name: "processed-instruction count in program info (verified_insns)",
        since: (5, 16),
        used_for: "cargo xtask vm-test reports the verifier's margin; nothing at run time",
        need: Need::Optional,
    },
    Feature {
        name: "multi-buffer XDP (xdp.frags programs, BPF_F_XDP_HAS_FRAGS, bpf_xdp_get_buff_len)",
        since: (5, 18),
        used_for: "the program is loaded as frags-aware, so that native mode works on jumbo MTUs",
        need: Need::Required,
    },
    Feature {
        name: "BPF_PROG_TEST_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES)",
        since: (5, 18),
        used_for: "cargo xtask bench's live traffic; nothing at run time",
        need: Need::Optional,
    },
    Feature {
        name: "opening pins and reading maps by file permission alone",
        since: (6, 5),
        used_for: "stats, bindings and status for a group granted read access without root (README, Who may read)",
        need: Need::Optional,
    },
];

/// The release this build is tested on in CI, oldest first (besides the host's).
pub const TESTED: &[(u8, u8)] = &[(6, 1), (6, 12)];

/// The running kernel's version, if `uname` can be read.
#[must_use]
pub fn running() -> Option<KernelVersion> {
    KernelVersion::current().ok()
}

/// The first required feature that `kernel` lacks.
#[must_use]
pub fn missing(kernel: KernelVersion) -> Option<&'static Feature> {
    FEATURES
        .iter()
        .find(|f| f.need == Need::Required && kernel < KernelVersion::new(f.since.0, f.since.1, 0))
}

/// Refuses, in one line, a kernel that lacks a feature `load` needs.
pub(crate) fn check() -> Result<()> {
    let Some(running) = running() else {
        return Ok(());
    };
    match missing(running) {
        None => Ok(()),
        Some(f) => Err(Error::KernelTooOld {
            kernel: Release(Some(running)).to_string(),
            feature: f.name,
            used_for: f.used_for,
            since: format!("{}.{}", f.since.0, f.since.1),
        }),
    }
}

/// Why the verifier rejected a program: its last meaningful line (the error itself; the lines
/// before it are the path it followed).
#[must_use]
pub fn verifier_reason(log: &str) -> String {
    log.lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("-- END PROG LOAD LOG --")
        })
        .unwrap_or("no verifier log")
        .to_owned()
}

/// Whether the kernel said the caller may not.
pub(crate) fn denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

/// A failed `BPF_PROG_LOAD` as one line: missing privileges, or the verifier's reason with its
/// whole log saved to a file.
pub(crate) fn program_load_error(e: ProgramError, program: &str, log_path: Option<&Path>) -> Error {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = e
    else {
        return Error::Ebpf(Box::new(e.into()));
    };
    let log = verifier_log.to_string();
    // EPERM without a log is the capability check; EACCES or EINVAL with one is the verifier.
    if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
        return Error::Privileges {
            what: "loading the XDP program".to_owned(),
        };
    }
    let path = log_path.map_or_else(
        || std::env::temp_dir().join("port-demux-verifier.log"),
        Path::to_owned,
    );
    let saved = std::fs::write(&path, &log).ok().map(|()| path);
    Error::Verifier {
        kernel: Release(running()).to_string(),
        program: program.to_owned(),
        reason: format!("{} ({io_error})", verifier_reason(&log)),
        log: saved,
    }
}

/// Loads `program` of the eBPF object `object` into the kernel, unattached and unpinned (its
/// maps are created and freed with it), and returns the number of instructions the verifier
/// processed (`None` before Linux 5.16). What `load` would say of the same object on this
/// kernel, without touching any interface: `cargo xtask vm-test` and the kernel tests use it.
///
/// # Errors
/// [`Error::Verifier`] (its whole log written to `verifier_log` or a file in the temporary
/// directory), [`Error::Privileges`], or the object's other load errors.
pub fn verify(object: &[u8], program: &str, verifier_log: Option<&Path>) -> Result<Option<u32>> {
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .map_err(|e| Error::Ebpf(Box::new(e)))?;
    let xdp: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or_else(|| Error::BadSpec(format!("the object has no program {program:?}")))?
        .try_into()
        .map_err(|e: ProgramError| Error::Ebpf(Box::new(e.into())))?;
    xdp.load()
        .map_err(|e| program_load_error(e, program, verifier_log))?;
    let info = xdp.info().map_err(|e| Error::Ebpf(Box::new(e.into())))?;
    Ok(info.verified_instruction_count())
}

/// `Linux 6.1.0`, or `this kernel` when its version is unknown.
pub(crate) struct Release(pub Option<KernelVersion>);

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "Linux {v}"),
            None => f.write_str("this kernel"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_features_by_release() {
        assert_eq!(missing(KernelVersion::new(6, 1, 0)), None);
        assert_eq!(missing(KernelVersion::new(5, 18, 0)), None);
        let frags = missing(KernelVersion::new(5, 17, 15)).expect("5.17 lacks xdp.frags");
        assert!(frags.name.contains("multi-buffer"), "{frags:?}");
        let old = missing(KernelVersion::new(5, 8, 18)).expect("5.8 lacks XDP links");
        assert!(old.name.contains("bpf_link"), "{old:?}");
        let older = missing(KernelVersion::new(5, 4, 0)).expect("5.4 lacks batch ops");
        assert!(older.name.contains("BATCH"), "{older:?}");
        // Optional features never block a load.
        assert!(
            FEATURES
                .iter()
                .any(|f| f.need == Need::Optional && f.since > (5, 9))
        );
        // Sorted oldest first, so `missing` names the oldest gap.
        assert!(FEATURES.windows(2).all(|w| w[0].since <= w[1].since));
    }

    #[test]
    fn the_verifier_reason_is_the_last_error_line() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n; let w12 = ...\n12: (0f) r2 += r3\n\
                   math between pkt pointer and register with unbounded min value is not allowed\n\
                   processed 37 insns (limit 1000000) max_states_per_insn 0 total_states 2\n\n";
        assert_eq!(
            verifier_reason(log),
            "math between pkt pointer and register with unbounded min value is not allowed"
        );
        assert_eq!(verifier_reason(""), "no verifier log");
    }
}

/// aya's error as a sentence for users: the failed call and the kernel's errno text, map names
/// as names; never aya's `Debug`-shaped text (``map `Some("META")` requested pinning``).
pub(crate) fn describe_ebpf(e: &aya::EbpfError) -> String {
    match e {
        aya::EbpfError::MapError(m) => describe_map_error(m),
        aya::EbpfError::ProgramError(p) => describe_program_error(p),
        aya::EbpfError::FileError { path, error } => {
            format!("cannot read {}: {error}", path.display())
        }
        // Parsing, BTF and relocation of the embedded object: aya's own sentences.
        other => other.to_string(),
    }
}

fn describe_map_error(e: &aya::maps::MapError) -> String {
    use aya::maps::MapError;
    match e {
        MapError::CreateError { name, io_error } => {
            format!("the kernel refused to create map {name}: {io_error}")
        }
        MapError::PinError { name, error } => format!(
            "cannot pin map {}: {}",
            name.as_deref().unwrap_or("(unnamed)"),
            describe_pin_error(error)
        ),
        MapError::SyscallError(s) => describe_syscall(s),
        MapError::IoError(e) => e.to_string(),
        other => other.to_string(),
    }
}

fn describe_pin_error(e: &aya::pin::PinError) -> String {
    match e {
        aya::pin::PinError::SyscallError(s) => describe_syscall(s),
        aya::pin::PinError::InvalidPinPath { path, .. } => {
            format!("{} is not a path a pin can have", path.display())
        }
        other @ aya::pin::PinError::NoFd { .. } => other.to_string(),
    }
}

/// A program error as a sentence (attach failures: the call and the kernel's errno text).
pub(crate) fn describe_program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::SyscallError(s) => describe_syscall(s),
        ProgramError::MapError(m) => describe_map_error(m),
        ProgramError::LoadError { io_error, .. } => {
            format!("the kernel refused the program: {io_error}")
        }
        ProgramError::IOError(e) => e.to_string(),
        other => other.to_string(),
    }
}

fn describe_syscall(s: &aya::sys::SyscallError) -> String {
    format!("{} failed: {}", s.call, s.io_error)
}

#[cfg(test)]
mod describe_tests {
    use super::*;

    #[test]
    fn aya_errors_read_as_sentences() {
        let pin = aya::EbpfError::MapError(aya::maps::MapError::PinError {
            name: Some("META".to_owned()),
            error: aya::pin::PinError::SyscallError(aya::sys::SyscallError {
                call: "BPF_OBJ_PIN",
                io_error: io::Error::from_raw_os_error(libc::EROFS),
            }),
        });
        let text = describe_ebpf(&pin);
        assert_eq!(
            text,
            "cannot pin map META: BPF_OBJ_PIN failed: Read-only file system (os error 30)"
        );
        assert!(!text.contains("Some("), "{text}");
        let attach = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(libc::ERANGE),
        });
        assert_eq!(
            describe_program_error(&attach),
            "bpf_link_create failed: Numerical result out of range (os error 34)"
        );
    }
}
