//! The `port-demux` binary run as a separate process, one command at a time, and what it said:
//! [`pd`] and its variants that must succeed ([`pd_ok`], [`pd_json`]) or must be refused
//! ([`pd_refused`], [`assert_refused`]).
//!
//! The binary is `PORT_DEMUX_BIN` when set, else `port-demux-under-test` beside the running
//! test's directory: the CLI built from the same sources by cargo before it runs this
//! package's tests, so never stale.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

use crate::netns::Netns;

/// The `port-demux` binary under test.
///
/// # Panics
/// When there is no binary there.
#[must_use]
pub fn bin() -> PathBuf {
    let path = std::env::var_os("PORT_DEMUX_BIN").map_or_else(
        || {
            // target/<profile>/deps/<test>-<hash> -> target/<profile>/port-demux-under-test
            let exe = std::env::current_exe().expect("the test's own path");
            exe.parent()
                .and_then(Path::parent)
                .map(|dir| dir.join("port-demux-under-test"))
                .expect("a test binary in target/<profile>/deps")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no port-demux binary at {}: run the tests with `cargo test -p port-demux-testkit` or \
         set PORT_DEMUX_BIN",
        path.display()
    );
    path
}

/// What one run of a command did.
#[derive(Debug)]
pub struct Run {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `port-demux --netns NS ARGS...`, not started yet.
///
/// # Panics
/// When there is no binary (see [`bin`]).
#[must_use]
pub fn command(ns: &Netns, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--netns").arg(ns.name()).args(args);
    cmd
}

/// Runs `cmd` to its end, collecting its output.
///
/// # Panics
/// When it cannot be started.
#[must_use]
pub fn execute(mut cmd: Command) -> Run {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
        .into()
}

/// Runs `port-demux --netns NS ARGS...` in its own process.
///
/// # Panics
/// When it cannot be started.
#[must_use]
pub fn pd(ns: &Netns, args: &[&str]) -> Run {
    Cli::process(ns).run(args)
}

/// The JSON document on the stdout of `run`, which must have succeeded; `what` names it in
/// failures.
///
/// # Panics
/// When the run failed or its stdout is not JSON.
#[must_use]
pub fn json(run: &Run, what: &str) -> Value {
    assert_eq!(run.code, Some(0), "{what}: {run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {run:?}"))
}

/// Asserts that `run` failed with one line on stderr holding every one of `wanted`; returns
/// that line. `what` names the run in failures.
///
/// # Panics
/// When the run succeeded, or said something else.
#[expect(
    clippy::must_use_candidate,
    reason = "the assertion is the point; the line is for callers that report it"
)]
pub fn assert_refused(run: &Run, what: &str, wanted: &[&str]) -> String {
    let what = format!("{what}: {run:?}");
    assert!(matches!(run.code, Some(c) if c != 0), "exit code: {what}");
    assert_eq!(run.stderr.lines().count(), 1, "one line on stderr: {what}");
    assert!(run.stderr.starts_with("port-demux: "), "{what}");
    for w in wanted {
        assert!(run.stderr.contains(w), "{w:?} missing: {what}");
    }
    run.stderr.trim_end().to_owned()
}

/// The CLI on one namespace (`--netns`), run as its own process (the binary: [`bin`]) or in
/// this process through [`port_demux::cli::run`], where the process boundary is not what a
/// test is about (parsing, refusals, output). Either way a [`Run`] says what it did: in
/// process, a failure's message is the stderr line the binary would print.
#[derive(Clone, Copy, Debug)]
pub struct Cli<'a> {
    ns: &'a Netns,
    in_process: bool,
}

impl<'a> Cli<'a> {
    /// Each command its own process.
    #[must_use]
    pub const fn process(ns: &'a Netns) -> Self {
        Self {
            ns,
            in_process: false,
        }
    }

    /// Each command in this process.
    #[must_use]
    pub const fn in_process(ns: &'a Netns) -> Self {
        Self {
            ns,
            in_process: true,
        }
    }

    /// Runs `port-demux --netns NS ARGS...`.
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn run(&self, args: &[&str]) -> Run {
        if !self.in_process {
            return execute(command(self.ns, args));
        }
        let mut all = vec!["port-demux", "--netns", self.ns.name()];
        all.extend_from_slice(args);
        let mut stdout = Vec::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let result = runtime.block_on(port_demux::cli::run(all, &mut stdout));
        let (code, stderr) = match result {
            Ok(()) => (0, String::new()),
            Err(port_demux::cli::Failure { message, code }) => {
                (i32::from(code), format!("port-demux: {message}\n"))
            }
        };
        Run {
            code: Some(code),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    ///
    /// # Panics
    /// When it fails.
    #[expect(
        clippy::must_use_candidate,
        reason = "the command is the point; most callers ignore its output"
    )]
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, Some(0), "port-demux {}: {run:?}", args.join(" "));
        run.stdout
    }

    /// Runs a `--json` command that must succeed; returns its document.
    ///
    /// # Panics
    /// When it fails or does not print JSON.
    #[must_use]
    pub fn json(&self, args: &[&str]) -> Value {
        json(&self.run(args), &format!("port-demux {}", args.join(" ")))
    }

    /// Runs a command that must be refused: see [`assert_refused`].
    ///
    /// # Panics
    /// When it succeeds, or says something else.
    #[expect(
        clippy::must_use_candidate,
        reason = "the assertion is the point; the line is for callers that report it"
    )]
    pub fn refused(&self, args: &[&str], wanted: &[&str]) -> String {
        assert_refused(
            &self.run(args),
            &format!("port-demux {}", args.join(" ")),
            wanted,
        )
    }
}

/// [`Cli::ok`] in its own process.
///
/// # Panics
/// When it fails.
#[expect(
    clippy::must_use_candidate,
    reason = "the command is the point; most callers ignore its output"
)]
pub fn pd_ok(ns: &Netns, args: &[&str]) -> String {
    Cli::process(ns).ok(args)
}

/// [`Cli::json`] in its own process.
///
/// # Panics
/// When it fails or does not print JSON.
#[must_use]
pub fn pd_json(ns: &Netns, args: &[&str]) -> Value {
    Cli::process(ns).json(args)
}

/// [`Cli::refused`] in its own process.
///
/// # Panics
/// When it succeeds, or says something else.
#[expect(
    clippy::must_use_candidate,
    reason = "the assertion is the point; the line is for callers that report it"
)]
pub fn pd_refused(ns: &Netns, args: &[&str], wanted: &[&str]) -> String {
    Cli::process(ns).refused(args, wanted)
}

/// (packets, bytes) of a port in `stats --json`; (0, 0) when it is not listed.
///
/// # Panics
/// When the document is not `stats --json`'s.
#[must_use]
pub fn json_port(stats: &Value, proto: &str, port: u16) -> (u64, u64) {
    stats["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["proto"] == proto && p["port"] == port)
        .map_or((0, 0), |p| {
            (
                p["packets"].as_u64().expect("packets"),
                p["bytes"].as_u64().expect("bytes"),
            )
        })
}

/// The `program_id` of an interface entry of `status --json`.
///
/// # Panics
/// When the entry has no program id.
#[must_use]
pub fn program_id(entry: &Value) -> u32 {
    u32::try_from(entry["program_id"].as_u64().expect("program_id")).expect("a u32 id")
}
