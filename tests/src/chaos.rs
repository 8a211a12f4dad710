//! Adversarial runs of the `port-demux` binary and what must hold after each (issue 9's
//! pinned-state contract): commands killed at a chosen system call (`strace -e inject`), slowed
//! at one (`delay_enter`), raced against each other; then [`assert_sound`]: `status --all` is
//! true, no program runs that no pin names, a printed `bound` line is a binding that is there;
//! and [`assert_removable`]: `prune` and `unload` leave nothing of the namespace behind.
//! [`CommitLab`]: a writer killed exactly at its commit point, in a bpffs of its own, and what
//! readers and the data path must show then.
//!
//! Needs root, `strace` and the binary ([`crate::cli::bin`]).

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs,
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use port_demux::{BindingRange, PortDemux, Scope};
use serde_json::Value;

use crate::{
    Lab, SILENCE,
    cli::{Run, command, execute, json},
    count_datagrams,
    netns::{Netns, SERVER_IF, output, poll, run, unique},
};

/// The system calls a writer's crash points are chosen among: every BPF command, and every
/// change to the pin tree or its locks.
pub const CRASH_SYSCALLS: [&str; 10] = [
    "bpf",
    "mkdir",
    "mkdirat",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "flock",
];

/// The states `status --all` may give an instance.
pub const STATES: [&str; 4] = [
    "running",
    "namespace-gone",
    "interface-gone",
    "half-written",
];

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The namespace cookie of `ns` (`SO_NETNS_COOKIE`): what the kernel never reuses.
///
/// # Panics
/// When the namespace cannot be entered or the kernel has no netns cookies.
#[must_use]
pub fn netns_cookie(ns: &Netns) -> u64 {
    ns.run(|| {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("a socket in the namespace");
        let mut cookie = 0u64;
        let mut len = libc::socklen_t::try_from(size_of::<u64>()).expect("8");
        // SAFETY: getsockopt into a u64 we own, its size passed.
        let ret = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                std::ptr::from_mut(&mut cookie).cast(),
                &raw mut len,
            )
        };
        assert_eq!(
            ret,
            0,
            "SO_NETNS_COOKIE: {}",
            std::io::Error::last_os_error()
        );
        cookie
    })
}

/// `cmd` run under `strace -f` with `options` (an `-e inject=...`), not started yet.
#[must_use]
pub fn under_strace(cmd: &Command, options: &[String]) -> Command {
    let mut traced = Command::new("strace");
    traced
        .args(["-f", "-qq", "-o", "/dev/null"])
        .args(options)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    traced
}

/// The system calls that rename a folder: a writer's first one after its `BPF_LINK_UPDATE` is
/// where an upgrade has passed its commit point and has not yet put its folder in place
/// ([`killed_at`] with `when=1`).
pub const RENAMES: &str = "rename,renameat,renameat2";

/// `cmd` with every `flock` it makes delayed by `ms` milliseconds on entry.
#[must_use]
pub fn slowed(cmd: &Command, ms: u32) -> Command {
    under_strace(cmd, &[format!("--inject=flock:delay_enter={}", ms * 1000)])
}

/// `cmd` killed (SIGKILL) on entry to its `n`-th call of `syscall` (counted per thread).
#[must_use]
pub fn killed_at(cmd: &Command, syscall: &str, n: usize) -> Command {
    under_strace(cmd, &[format!("--inject={syscall}:signal=KILL:when={n}")])
}

/// Runs `cmd` once under strace and counts its calls of each of [`CRASH_SYSCALLS`], per
/// thread (as `when=N` counts them): the largest count of any thread, per system call.
///
/// # Panics
/// When strace cannot run.
#[must_use]
pub fn count_syscalls(cmd: &Command) -> (Run, BTreeMap<String, usize>) {
    let log = std::env::temp_dir().join(format!("pd-strace-{}-{}", std::process::id(), unique()));
    let mut traced = Command::new("strace");
    traced
        .args(["-f", "-qq", "-o"])
        .arg(&log)
        .arg(format!("--trace={}", CRASH_SYSCALLS.join(",")))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    let run = execute(traced);
    let text = fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let _ = fs::remove_file(&log);
    let mut per_thread: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in text.lines() {
        // "PID name(args...) = ret" or "PID name(... <unfinished ...>"; resumptions are
        // the same call.
        let mut words = line.splitn(2, ' ');
        let (Some(pid), Some(rest)) = (words.next(), words.next()) else {
            continue;
        };
        // strace pads the pid to five columns.
        let rest = rest.trim_start();
        if rest.starts_with("<...") || rest.starts_with("---") || rest.starts_with("+++") {
            continue;
        }
        let Some(name) = rest.split('(').next() else {
            continue;
        };
        if CRASH_SYSCALLS.contains(&name) {
            *per_thread
                .entry((name.to_owned(), pid.to_owned()))
                .or_default() += 1;
        }
    }
    let mut counts = BTreeMap::new();
    for ((name, _), n) in per_thread {
        let max: &mut usize = counts.entry(name).or_default();
        *max = (*max).max(n);
    }
    assert!(
        !counts.is_empty(),
        "strace saw none of {CRASH_SYSCALLS:?} in {run:?}; its log began: {:?}",
        text.lines().take(5).collect::<Vec<_>>()
    );
    (run, counts)
}

/// Every (system call, N) to kill `cmd` at: every call it makes of each of [`CRASH_SYSCALLS`],
/// or, for a system call made more than `cap` times, `cap` of them spread evenly (the first and
/// last included).
#[must_use]
pub fn crash_points(counts: &BTreeMap<String, usize>, cap: usize) -> Vec<(String, usize)> {
    let mut points = Vec::new();
    for (name, &count) in counts {
        if count <= cap {
            points.extend((1..=count).map(|n| (name.clone(), n)));
        } else {
            points.extend((0..cap).map(|i| (name.clone(), 1 + i * (count - 1) / (cap - 1))));
        }
    }
    points
}

/// `port-demux status --all --json` (run with `--netns` of `ns`, which it must not need): it
/// must succeed and list every instance in one of [`STATES`].
///
/// # Panics
/// When it fails, or lists an instance in no known state.
/// With `PD_WITHOUT_STATUS_ALL=1` (a binary from before `status --all`, run to record how it
/// fails the rest of a test) the instances are those plain `status --json` lists for `ns`,
/// running when their program is attached.
#[must_use]
pub fn status_all(ns: &Netns, context: &str) -> Vec<Value> {
    if without_status_all() {
        return legacy_status(ns, context);
    }
    let run = execute(command(ns, &["status", "--all", "--json"]));
    assert_eq!(run.code, Some(0), "{context}: status --all --json: {run:?}");
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{context}: status --all --json: {e}: {run:?}"));
    let instances = doc["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}: no instances[] in {doc}"))
        .clone();
    for i in &instances {
        let state = i["state"].as_str().unwrap_or_default();
        assert!(STATES.contains(&state), "{context}: state of {i}");
        assert!(i["dir"].is_string(), "{context}: dir of {i}");
    }
    instances
}

fn without_status_all() -> bool {
    std::env::var_os("PD_WITHOUT_STATUS_ALL").is_some_and(|v| v == "1")
}

fn legacy_status(ns: &Netns, context: &str) -> Vec<Value> {
    let run = execute(command(ns, &["status", "--json"]));
    assert_eq!(run.code, Some(0), "{context}: status --json: {run:?}");
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{context}: status --json: {e}: {run:?}"));
    let cookie = netns_cookie(ns);
    doc["interfaces"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    serde_json::json!({
                        "dir": i["pins"],
                        "state": if i["attached"] == true { "running" } else { "interface-gone" },
                        "iface": i["interface"],
                        "netns_cookie": cookie,
                        "prog_id": i["program_id"],
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The instances of `status --all` whose namespace is `ns` (by cookie).
#[must_use]
pub fn instances_of(instances: &[Value], cookie: u64) -> Vec<Value> {
    instances
        .iter()
        .filter(|i| i["netns_cookie"].as_u64() == Some(cookie))
        .cloned()
        .collect()
}

/// The running instance of `status --all` on `iface` of the namespace with `cookie`.
#[must_use]
pub fn running_on(instances: &[Value], cookie: u64, iface: &str) -> Option<Value> {
    instances_of(instances, cookie)
        .into_iter()
        .find(|i| i["state"] == "running" && i["iface"] == iface)
}

/// The ids of every BPF program the kernel has loaded.
///
/// # Panics
/// When the programs cannot be listed.
#[must_use]
pub fn loaded_prog_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| p.id())
        .collect()
}

/// Waits until none of `ids` is a loaded program, for up to 10 s; returns those still loaded
/// then. Removing the last pin of a program does not free it at once: bpffs drops the pin's
/// reference when the inode is freed, an RCU callback, and a link is released from a work
/// item; on a busy machine either can lag the command that removed the pin.
#[must_use]
pub fn still_loaded_after_release(ids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let loaded = loaded_prog_ids();
        let left: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| loaded.contains(id))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What must hold after any command, however it ended, on namespace `ns` whose port-demux
/// interfaces are `ifaces`:
/// - `status --all --json` succeeds and is true: each running instance of `ns` names the
///   program attached to its interface now;
/// - every XDP program on `ifaces` is named by a running instance's pins;
/// - when `run` succeeded, every `bound PROTO/PORTS ... on IFACE` line it printed is a binding
///   that is there now.
///
/// # Panics
/// When any of them does not hold; `context` says after what.
pub fn assert_sound(ns: &Netns, ifaces: &[&str], run: Option<&Run>, context: &str) {
    let cookie = netns_cookie(ns);
    let all = status_all(ns, context);
    for i in instances_of(&all, cookie) {
        if i["state"] != "running" {
            continue;
        }
        let iface = i["iface"].as_str().unwrap_or_default();
        assert_eq!(
            ns.xdp_prog(iface).map(u64::from),
            i["prog_id"].as_u64(),
            "{context}: running instance {i} is not what {iface} runs"
        );
    }
    for iface in ifaces {
        if let Some(id) = ns.xdp_prog(iface) {
            let named = running_on(&all, cookie, iface);
            assert_eq!(
                named.as_ref().and_then(|i| i["prog_id"].as_u64()),
                Some(u64::from(id)),
                "{context}: program {id} runs on {iface} and no running instance names it: {all:?}"
            );
        }
    }
    let Some(run) = run.filter(|r| r.code == Some(0)) else {
        return;
    };
    for line in run.stdout.lines() {
        if let Some(rest) = line.strip_prefix("bound ") {
            // "bound udp/5000 to drop on hxb" or "... on hxb (owner x)"
            let spec = rest.split(' ').next().unwrap_or_default();
            let iface = rest
                .split(" on ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .unwrap_or_default();
            let bindings = execute(command(ns, &["bindings", "-i", iface, "--json"]));
            assert_eq!(
                bindings.code,
                Some(0),
                "{context}: printed {line:?} but bindings fail: {bindings:?}"
            );
            let (proto, ports) = spec.split_once('/').unwrap_or_default();
            let first: u64 = ports
                .split('-')
                .next()
                .unwrap_or_default()
                .parse()
                .unwrap_or(0);
            let doc: Value = serde_json::from_str(&bindings.stdout).unwrap_or_default();
            let found = doc["bindings"].as_array().is_some_and(|b| {
                b.iter().any(|b| {
                    b["proto"] == proto
                        && b["first"].as_u64() <= Some(first)
                        && b["last"].as_u64() >= Some(first)
                })
            });
            assert!(
                found,
                "{context}: printed {line:?}, exit 0, and the binding is not there: {}",
                bindings.stdout
            );
        }
    }
}

/// Serializes `prune` in this process with tests that count on a stale instance staying listed
/// until they prune it themselves: `prune` removes every stale instance of the bpffs, so one
/// run by a test beside them (each test runs in a thread of one process) would take theirs.
static PRUNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`PRUNING`]: taken by [`assert_removable`] around its `prune`, and by a test for as
/// long as its stale instance must stay.
pub fn no_other_prune() -> std::sync::MutexGuard<'static, ()> {
    PRUNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `prune` then `unload` of each of `ifaces` remove everything of `ns`: no instance of it left
/// in `status --all`, no XDP program on `ifaces`, and every program id its instances named
/// gone from the kernel (unless `keep` names it: an instance that must survive elsewhere).
///
/// # Panics
/// When something is left; `context` says after what.
pub fn assert_removable(ns: &Netns, ifaces: &[&str], context: &str) {
    let cookie = netns_cookie(ns);
    let before = instances_of(&status_all(ns, context), cookie);
    if !without_status_all() {
        let _pruning = no_other_prune();
        let prune = execute(command(ns, &["prune", "--json"]));
        assert_eq!(prune.code, Some(0), "{context}: prune: {prune:?}");
    }
    for iface in ifaces {
        let run = execute(command(ns, &["unload", iface]));
        assert!(
            run.code == Some(0) || run.stderr.lines().count() == 1,
            "{context}: unload {iface}: {run:?}"
        );
    }
    for iface in ifaces {
        assert_eq!(
            ns.xdp_prog(iface),
            None,
            "{context}: a program stays on {iface} after prune and unload"
        );
    }
    let after = instances_of(&status_all(ns, context), cookie);
    assert!(
        after.is_empty(),
        "{context}: left after prune and unload: {after:?}"
    );
    let ids: Vec<u32> = before
        .iter()
        .filter_map(|i| i["prog_id"].as_u64())
        .filter_map(|id| u32::try_from(id).ok())
        .collect();
    let left = still_loaded_after_release(&ids);
    assert!(
        left.is_empty(),
        "{context}: programs {left:?} of {before:?} are still loaded 10 s after prune and unload"
    );
}

/// The arguments of `cmd`, for messages.
#[must_use]
pub fn describe(cmd: &Command) -> String {
    let args: Vec<OsString> = cmd.get_args().map(ToOwned::to_owned).collect();
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A bpffs of its own mounted at a fresh folder (`--bpffs`, [`port_demux::Scope::with_bpffs`]):
/// no other test's writer sweeps it. Unmounted (which releases every pin, and with them the
/// programs nothing else holds) and the folder removed on drop.
pub struct PrivateBpffs(PathBuf);

impl PrivateBpffs {
    /// Mounts one.
    ///
    /// # Panics
    /// When the folder cannot be made or the mount fails.
    #[must_use]
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("pd-bpffs-{}-{}", std::process::id(), unique()));
        fs::create_dir(&dir).expect("mount point");
        let fs = Self(dir);
        run("mount", &["-t", "bpf", "bpf", fs.path()]);
        fs
    }

    /// The mount point.
    ///
    /// # Panics
    /// Never: the temporary folder's path is UTF-8 here.
    #[must_use]
    pub fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }

    /// The mount point as a path.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// Remounts it with `mode` (`ro`, `rw`).
    ///
    /// # Panics
    /// When the remount fails.
    pub fn remount(&self, mode: &str) {
        run("mount", &["-o", &format!("remount,{mode}"), self.path()]);
    }

    /// Every file and folder in it.
    ///
    /// # Panics
    /// When it cannot be listed.
    #[must_use]
    pub fn entries(&self) -> Vec<String> {
        // Less the kernel's own `maps.debug` and `progs.debug` (bpf preload).
        let out = output("find", &[self.path(), "-mindepth", "1"]);
        out.lines()
            .filter(|l| !["maps.debug", "progs.debug"].iter().any(|k| l.ends_with(k)))
            .map(str::to_owned)
            .collect()
    }
}

impl Default for PrivateBpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = Command::new("mount")
            .args(["-o", "remount,rw", self.path()])
            .output();
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = fs::remove_dir(&self.0);
    }
}

/// A [`Lab`] whose port-demux instance lives in a bpffs of its own ([`PrivateBpffs`]), for a
/// writer killed at its commit point ([`CommitLab::kill_at_commit`]): every writer completes
/// what killed ones left in its whole bpffs, so no other test's may run before the readers are
/// checked.
pub struct CommitLab {
    // Dropped first: the namespaces go, then the bpffs with the pins left in it.
    /// The namespaces, b0 the interface port-demux runs on.
    pub lab: Lab,
    /// Its bpffs.
    pub bpffs: PrivateBpffs,
}

impl CommitLab {
    /// A lab and a bpffs.
    ///
    /// # Panics
    /// When either cannot be made.
    #[must_use]
    pub fn new() -> Self {
        let bpffs = PrivateBpffs::new();
        Self {
            lab: Lab::new(),
            bpffs,
        }
    }

    /// `port-demux --netns B --bpffs FS ARGS...`, not started.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut all = vec!["--bpffs", self.bpffs.path()];
        all.extend_from_slice(args);
        command(&self.lab.server, &all)
    }

    /// Runs `port-demux --netns B --bpffs FS ARGS...`.
    #[must_use]
    pub fn run(&self, args: &[&str]) -> Run {
        execute(self.command(args))
    }

    /// Runs `port-demux --netns B --bpffs FS ARGS...`, which must succeed.
    ///
    /// # Panics
    /// When it fails.
    pub fn ok(&self, args: &[&str]) {
        let run = self.run(args);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
    }

    /// Runs `port-demux --netns B --bpffs FS ARGS...`, which must succeed with JSON.
    ///
    /// # Panics
    /// When it fails or prints no JSON.
    #[must_use]
    pub fn json(&self, args: &[&str]) -> Value {
        json(&self.run(args), &args.join(" "))
    }

    /// B's scope, with this bpffs.
    #[must_use]
    pub fn scope(&self) -> Scope {
        self.lab.server.scope().with_bpffs(self.bpffs.dir())
    }

    fn root(&self) -> PathBuf {
        self.bpffs.dir().join("port-demux")
    }

    /// The instance's folder by the contract's name, `ns-<cookie>/if-<ifindex>`.
    #[must_use]
    pub fn instance_dir(&self) -> PathBuf {
        self.root()
            .join(format!("ns-{}", netns_cookie(&self.lab.server)))
            .join(format!("if-{}", self.lab.server.ifindex(SERVER_IF)))
    }

    /// The staging folders in the bpffs.
    ///
    /// # Panics
    /// When port-demux's folder cannot be read.
    #[must_use]
    pub fn staging(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(self.root())
            .expect("the pins' folder")
            .map(|e| e.expect("an entry").path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("staging-"))
            })
            .collect();
        found.sort();
        found
    }

    /// The program b0 runs.
    ///
    /// # Panics
    /// When it runs none.
    #[must_use]
    pub fn prog(&self) -> u32 {
        self.lab
            .server
            .xdp_prog(SERVER_IF)
            .expect("b0 runs a program")
    }

    /// Runs the writer `args` killed on its first rename; checks that the kill fell between
    /// the link update and the rename: the link runs another program, the instance's folder
    /// is where it was, one staging folder (the upgrade's) is there. Returns the staging folder
    /// and the program it swapped in.
    ///
    /// # Panics
    /// When the writer was not killed there.
    #[must_use]
    pub fn kill_at_commit(&self, args: &[&str]) -> (PathBuf, u32) {
        let before = self.prog();
        let dir = self.instance_dir();
        assert!(dir.exists(), "the instance is at {}", dir.display());
        let run = execute(killed_at(&self.command(args), RENAMES, 1));
        assert_eq!(
            run.code, None,
            "{args:?} killed on its first rename: {run:?}"
        );
        let now = self.prog();
        assert_ne!(
            now, before,
            "{args:?}: the link runs the new program when the first rename comes"
        );
        assert!(
            dir.exists(),
            "{args:?}: the kill came before any rename, the old folder is in place"
        );
        let staging = self.staging();
        let [upgrade] = staging.as_slice() else {
            panic!("{args:?}: one staging folder, the upgrade's: {staging:?}");
        };
        assert!(
            upgrade.to_string_lossy().contains("-upgrade-"),
            "{}",
            upgrade.display()
        );
        (upgrade.clone(), now)
    }

    /// What readers see of the instance, with no writer since the kill: the staging folder
    /// `staging`, running program `prog`, with `bindings`, `default` and `debug`; the old folder
    /// listed by `status --all` as replaced by it. `bindings` as `PROTO/PORTS ACTION OWNER`.
    ///
    /// # Panics
    /// When any reader sees something else.
    pub fn assert_readers_follow(
        &self,
        staging: &Path,
        prog: u32,
        bindings: &[&str],
        default: &str,
        debug: bool,
    ) {
        let status = self.json(&["status", "--json"]);
        let [one] = status["interfaces"]
            .as_array()
            .expect("interfaces")
            .as_slice()
        else {
            panic!("one instance: {status}");
        };
        assert_eq!(one["pins"], staging.to_str().expect("UTF-8"), "{status}");
        assert_eq!(one["program_id"], prog, "{status}");
        assert_eq!(one["attached"], true, "{status}");
        assert_eq!(one["default"], default, "{status}");
        assert_eq!(one["debug"], debug, "{status}");
        assert_eq!(
            rendered_json(&self.json(&["bindings", "-i", SERVER_IF, "--json"])),
            bindings
        );
        let scope = self.scope();
        for demux in [
            PortDemux::open(&scope, SERVER_IF).expect("open"),
            PortDemux::open_only(&scope).expect("open_only"),
        ] {
            assert_eq!(demux.pin_dir(), staging);
            assert_eq!(library_rendered(&demux), bindings);
            assert_eq!(demux.status().expect("status").prog_id, prog);
        }
        let all = self.json(&["status", "--all", "--json"]);
        let instances = all["instances"].as_array().expect("instances");
        let state_of = |dir: &Path| {
            instances
                .iter()
                .find(|i| i["dir"] == dir.to_str().expect("UTF-8"))
                .unwrap_or_else(|| panic!("{} not listed: {all}", dir.display()))
                .clone()
        };
        let new = state_of(staging);
        assert_eq!(new["state"], "running", "{new}");
        assert_eq!(new["prog_id"], prog, "{new}");
        assert_eq!(new["iface"], SERVER_IF, "{new}");
        let old = state_of(&self.instance_dir());
        assert_eq!(old["state"], "half-written", "{old}");
        assert!(
            old["hint"]
                .as_str()
                .is_some_and(|h| h.contains(staging.to_str().expect("UTF-8"))),
            "{old}"
        );
        assert_eq!(instances.len(), 2, "{all}");
    }

    /// Sends `count` datagrams to each udp port of `ports` (port, count, passes, action):
    /// polls `stats --json` until it counts each exactly (`count` more than before), and shows
    /// each port's `action`; then each passing port's socket has received them all and each
    /// dropping port's none.
    ///
    /// # Panics
    /// When a count differs.
    pub fn assert_traffic(&self, ports: &[(u16, u64, bool, Option<&str>)]) {
        let before = self.json(&["stats", "-i", SERVER_IF, "--json"]);
        let counted_before = |port| {
            port_entry(&before, port)
                .and_then(|p| p["packets"].as_u64())
                .unwrap_or(0)
        };
        let client = self.lab.udp_client();
        let servers: Vec<_> = ports
            .iter()
            .map(|&(port, ..)| self.lab.udp_server(port))
            .collect();
        for &(port, count, ..) in ports {
            let _ = self.lab.send_udp(&client, port, count, 16);
        }
        let stats = poll(
            "stats --json to count every datagram",
            || self.json(&["stats", "-i", SERVER_IF, "--json"]),
            |doc| {
                ports.iter().all(|&(port, count, ..)| {
                    port_entry(doc, port)
                        .is_some_and(|p| p["packets"] == counted_before(port) + count)
                })
            },
        );
        for (&(port, count, passes, action), server) in ports.iter().zip(&servers) {
            let entry = port_entry(&stats, port).expect("counted");
            assert_eq!(
                entry["action"].as_str(),
                action,
                "udp/{port} in stats: {entry}"
            );
            let received = count_datagrams(server, SILENCE);
            assert_eq!(
                received as u64,
                if passes { count } else { 0 },
                "udp/{port}: {count} sent, passes: {passes}"
            );
        }
    }

    /// After the next writer: one instance, running `prog` from its own folder, with
    /// `bindings`, and no staging folder left.
    ///
    /// # Panics
    /// When anything else is there.
    pub fn assert_completed(&self, prog: u32, bindings: &[&str]) {
        assert_eq!(self.staging(), Vec::<PathBuf>::new());
        assert_eq!(self.prog(), prog);
        let all = self.json(&["status", "--all", "--json"]);
        let [one] = all["instances"].as_array().expect("instances").as_slice() else {
            panic!("one instance: {all}");
        };
        assert_eq!(one["state"], "running", "{all}");
        assert_eq!(one["dir"], self.instance_dir().to_str().expect("UTF-8"));
        assert_eq!(one["prog_id"], prog, "{all}");
        let demux = PortDemux::open(&self.scope(), SERVER_IF).expect("open");
        assert_eq!(demux.pin_dir(), self.instance_dir());
        assert_eq!(library_rendered(&demux), bindings);
    }
}

impl Default for CommitLab {
    fn default() -> Self {
        Self::new()
    }
}

fn port_entry(stats: &Value, port: u16) -> Option<&Value> {
    stats["ports"]
        .as_array()?
        .iter()
        .find(|p| p["proto"] == "udp" && p["port"] == port)
}

/// The bindings `demux` reads, as [`rendered`] shows them.
fn library_rendered(demux: &PortDemux) -> Vec<String> {
    rendered(&demux.bindings().expect("bindings"))
}

/// Binding ranges as `PROTO/PORTS ACTION OWNER`, followed by ` dst PREFIX` for an
/// address-scoped one.
#[must_use]
pub fn rendered(ranges: &[BindingRange]) -> Vec<String> {
    ranges
        .iter()
        .map(|b| match b.dst {
            None => format!("{} {} {}", b.ports, b.action, b.owner),
            Some(dst) => format!("{} {} {} dst {dst}", b.ports, b.action, b.owner),
        })
        .collect()
}

/// The bindings of a `bindings --json`, as `PROTO/PORTS ACTION OWNER`, followed by
/// ` dst PREFIX` for an address-scoped one.
///
/// # Panics
/// When `doc` has no `bindings` list.
#[must_use]
pub fn rendered_json(doc: &Value) -> Vec<String> {
    doc["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .map(|b| {
            let ports = if b["first"] == b["last"] {
                format!("{}/{}", b["proto"].as_str().unwrap_or("?"), b["first"])
            } else {
                format!(
                    "{}/{}-{}",
                    b["proto"].as_str().unwrap_or("?"),
                    b["first"],
                    b["last"]
                )
            };
            let dst = b["dst"]
                .as_str()
                .map_or_else(String::new, |d| format!(" dst {d}"));
            format!(
                "{ports} {} {}{dst}",
                b["action"].as_str().unwrap_or("?"),
                b["owner"].as_str().unwrap_or_default()
            )
        })
        .collect()
}
