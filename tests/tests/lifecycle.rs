//! Issue 9's table, row by row, through the `port-demux` binary (`PORT_DEMUX_BIN`, else the
//! kit's `port-demux-under-test`): renamed, moved and orphaned interfaces, namespaces deleted
//! and their inode reused, SIGKILL at every BPF call and pin-tree change of `load`, `unload`,
//! `bind` and `load --upgrade`, every pair of writers raced, read-only and missing bpffs.
//! After each: what `status --all` says is true, no program runs that no pin names, a printed
//! success is a change that is there, `prune` and `unload` remove everything, and a layout v2
//! instance elsewhere is still found, upgraded and unloaded
//! ([`port_demux_testkit::chaos`]).
//!
//! Needs root and `strace`. Run time (about 15 minutes on an idle 2-core machine, 29 under the
//! load of three concurrent builds) is set by two knobs:
//! - `PD_CRASH_CAP` (default 20): the most crash points per system call and command. A command
//!   making more calls of one system call than that (`load` and `load --upgrade` make 70 to 90
//!   `bpf` calls) is killed at that many of them spread evenly, the first and the last included;
//!   every call of every other system call is a point. `PD_CRASH_CAP=1000`: every call.
//! - `PD_RACE_ITERATIONS` (default 50, the figure): runs per raced pair, plain and
//!   slowed each (12 pairs: 1,200 races); `PD_RACE_ITERATIONS=5` for a quick look.
//!
//! `PD_WITHOUT_STATUS_ALL=1` runs the tests against a binary from before `status --all` and
//! `prune` (main at 9b4f76c), reading plain `status --json` instead, to record how it fails.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::Instant,
};

use port_demux_testkit::{
    chaos::{
        CommitLab, PrivateBpffs, assert_removable, assert_sound, count_syscalls, crash_points,
        describe, instances_of, killed_at, netns_cookie, no_other_prune, running_on, slowed,
        status_all, still_loaded_after_release,
    },
    cli::{Run, command, execute, pd, pd_json, pd_ok},
    netns::{Netns, SERVER_IF, hunt_inode, run, unique},
    v2::{bind_v2, load_v2, netns_inode},
};
use serde_json::Value;

const IF_B: &str = "hxb";
const IF_C: &str = "hxc";

/// Held while a test of this file creates a namespace, and by row 6 from deleting its namespace
/// until a new one has its inode: the kernel hands out the lowest free inode number, and a
/// namespace another test creates meanwhile would take it.
static NETNS_CREATION: Mutex<()> = Mutex::new(());

fn creating() -> MutexGuard<'static, ()> {
    NETNS_CREATION
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// [`Netns::new`], never while row 6 waits for an inode.
fn new_netns(tag: &str) -> Netns {
    let _creating = creating();
    Netns::new(tag)
}

/// Adds a veth pair `iface`/`peer` in `ns`, both up.
fn add_veth(ns: &Netns, iface: &str, peer: &str) {
    ns.ip(&["link", "add", iface, "type", "veth", "peer", "name", peer]);
    ns.ip(&["link", "set", iface, "up"]);
    ns.ip(&["link", "set", peer, "up"]);
}

/// A namespace with veths hxb (peer hxbp) and hxc (peer hxcp).
fn two_ifaces(tag: &str) -> Netns {
    let ns = new_netns(tag);
    add_veth(&ns, IF_B, "hxbp");
    add_veth(&ns, IF_C, "hxcp");
    ns
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bindings(ns: &Netns, iface: &str) -> Value {
    pd_json(ns, &["bindings", "-i", iface, "--json"])["bindings"].clone()
}

fn has_binding(ns: &Netns, iface: &str, proto: &str, port: u64) -> bool {
    count_bound(ns, iface, proto, port..=port) == 1
}

/// How many of `ports` (`proto`) are bound on `iface`, by one `bindings --json`.
fn count_bound(
    ns: &Netns,
    iface: &str,
    proto: &str,
    ports: std::ops::RangeInclusive<u64>,
) -> usize {
    let run = pd(ns, &["bindings", "-i", iface, "--json"]);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    let runs = doc["bindings"].as_array().cloned().unwrap_or_default();
    ports
        .filter(|&p| {
            runs.iter().any(|b| {
                b["proto"] == proto
                    && b["first"].as_u64() <= Some(p)
                    && b["last"].as_u64() >= Some(p)
            })
        })
        .count()
}

/// A layout v2 instance in a namespace of its own, made at the start of a test: at its end it
/// must still be found by `status --all`, upgraded and unloaded, whatever the test did.
struct V2Witness {
    ns: Netns,
}

impl V2Witness {
    fn new() -> Self {
        let ns = new_netns("v2w");
        add_veth(&ns, IF_B, "hxbp");
        let dir = load_v2(&ns, IF_B);
        bind_v2(&dir, 5000, port_demux::common::action::DROP);
        Self { ns }
    }

    fn check(self, context: &str) {
        let ns = &self.ns;
        let prog = ns.xdp_prog(IF_B).expect("the v2 program runs");
        let all = status_all(ns, context);
        let found = running_on(&all, netns_cookie(ns), IF_B)
            .unwrap_or_else(|| panic!("{context}: the v2 instance is not listed running: {all:?}"));
        assert_eq!(
            found["prog_id"].as_u64(),
            Some(u64::from(prog)),
            "{context}"
        );
        pd_ok(ns, &["load", IF_B, "--upgrade"]);
        assert!(
            has_binding(ns, IF_B, "udp", 5000),
            "{context}: v2 binding lost"
        );
        assert_ne!(ns.xdp_prog(IF_B), Some(prog), "{context}: not upgraded");
        pd_ok(ns, &["unload", IF_B]);
        assert_eq!(ns.xdp_prog(IF_B), None, "{context}");
        assert!(instances_of(&status_all(ns, context), netns_cookie(ns)).is_empty());
    }
}

/// Row 1: a renamed interface is followed, and a new interface given its old name is a new
/// interface: `load` there leaves the renamed one running with its bindings.
#[test]
fn row1_rename_is_followed_and_a_namesake_destroys_nothing() {
    let ns = new_netns("ren");
    add_veth(&ns, IF_B, "hxbp");
    pd_ok(&ns, &["load", IF_B]);
    pd_ok(&ns, &["bind", "udp/5000", "drop"]);
    let prog = ns.xdp_prog(IF_B).expect("attached");
    ns.ip(&["link", "set", IF_B, "down"]);
    ns.ip(&["link", "set", IF_B, "name", IF_C]);
    ns.ip(&["link", "set", IF_C, "up"]);
    add_veth(&ns, IF_B, "hxbq");

    let status = pd_json(&ns, &["status", "--json"]);
    assert_eq!(
        status["interfaces"][0]["interface"], IF_C,
        "status follows the rename: {status}"
    );
    let run = pd(&ns, &["load", IF_B]);
    assert_eq!(run.code, Some(0), "load on the new {IF_B}: {run:?}");
    assert_eq!(
        ns.xdp_prog(IF_C),
        Some(prog),
        "the renamed instance runs on"
    );
    assert!(
        has_binding(&ns, IF_C, "udp", 5000),
        "its binding is kept: {run:?}"
    );
    assert_sound(&ns, &[IF_B, IF_C], Some(&run), "after the rename");
    let all = status_all(&ns, "after the rename");
    let cookie = netns_cookie(&ns);
    assert!(running_on(&all, cookie, IF_C).is_some(), "{all:?}");
    assert!(running_on(&all, cookie, IF_B).is_some(), "{all:?}");
    assert_removable(&ns, &[IF_B, IF_C], "after the rename");
}

/// Row 5: an interface moved to another namespace takes its instance along: managed from
/// there, unloaded from there; the old namespace does not list it as its own.
#[test]
fn row5_a_moved_interface_takes_its_instance_along() {
    let from = new_netns("mvf");
    let to = new_netns("mvt");
    add_veth(&from, IF_B, "hxbp");
    pd_ok(&from, &["load", IF_B]);
    pd_ok(&from, &["bind", "udp/5000", "drop"]);
    let prog = from.xdp_prog(IF_B).expect("attached");
    from.ip(&["link", "set", IF_B, "netns", to.name()]);
    to.ip(&["link", "set", IF_B, "up"]);
    assert_eq!(
        to.xdp_prog(IF_B),
        Some(prog),
        "XDP moves with the interface"
    );

    let status = pd_json(&to, &["status", "--json"]);
    assert_eq!(status["interfaces"][0]["interface"], IF_B, "{status}");
    assert!(
        has_binding(&to, IF_B, "udp", 5000),
        "managed from the new namespace"
    );
    let old = pd_json(&from, &["status", "--json"]);
    assert!(
        old["interfaces"].as_array().is_none_or(Vec::is_empty),
        "the old namespace does not list it: {old}"
    );
    assert_sound(&to, &[IF_B], None, "after the move");
    pd_ok(&to, &["unload", IF_B]);
    assert_eq!(to.xdp_prog(IF_B), None);
    assert_eq!(
        still_loaded_after_release(&[prog]),
        Vec::<u32>::new(),
        "program {prog} is still loaded 10 s after unload"
    );
    assert_removable(&to, &[IF_B], "after the move");
    assert_removable(&from, &[], "after the move");
}

/// A namespace made with `ip netns add` (not the kit's [`Netns`], which removes the stale pins
/// of a reused inode itself), deleted on drop.
struct RawNetns(String);

impl Drop for RawNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Row 6: a namespace deleted while loaded, and a new namespace that gets its inode: the dead
/// instance is listed as namespace-gone, never taken for the new namespace's, and `prune` frees
/// its program.
#[test]
fn row6_a_deleted_namespace_whose_inode_is_reused() {
    let dead = new_netns("dead");
    add_veth(&dead, IF_B, "hxbp");
    pd_ok(&dead, &["load", IF_B]);
    pd_ok(&dead, &["bind", "udp/5000", "drop"]);
    let prog = dead.xdp_prog(IF_B).expect("attached");
    let inode = netns_inode(dead.name());
    let cookie = netns_cookie(&dead);
    // Its instance, stale once the namespace is gone, must stay listed until its own prune
    // below: no other test of this process prunes meanwhile.
    let _no_other_prune = no_other_prune();
    let creating = creating();
    run("ip", &["netns", "del", dead.name()]);

    let reused = hunt_inode(
        inode,
        || {
            let name = format!("pdt-{}-{}-reuse", std::process::id(), unique());
            run("ip", &["netns", "add", &name]);
            RawNetns(name)
        },
        |ns| netns_inode(&ns.0),
    );
    drop(creating);
    let reused = reused.unwrap_or_else(|made| {
        panic!("the kernel did not reuse inode {inode} in {made} new namespaces: row 6 untested")
    });
    let ns_name = reused.0.clone();
    run(
        "ip",
        &[
            "-n", &ns_name, "link", "add", IF_B, "type", "veth", "peer", "name", "hxbp",
        ],
    );
    run("ip", &["-n", &ns_name, "link", "set", IF_B, "up"]);
    let pd_in = |args: &[&str]| -> Run {
        let mut cmd = Command::new(port_demux_testkit::cli::bin());
        cmd.arg("--netns").arg(&ns_name).args(args);
        execute(cmd)
    };

    let status = pd_in(&["status", "--json"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    let doc: Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert!(
        doc["interfaces"].as_array().is_none_or(Vec::is_empty),
        "the new namespace shows the dead instance: {doc}"
    );
    let bind = pd_in(&["bind", "udp/5001", "drop"]);
    assert_ne!(bind.code, Some(0), "bind took the dead instance: {bind:?}");
    assert!(
        bind.stderr.contains("not loaded") || bind.stderr.contains("no interface"),
        "bind without -i: {bind:?}"
    );
    let all = pd_in(&["status", "--all", "--json"]);
    assert_eq!(all.code, Some(0), "{all:?}");
    let doc: Value = serde_json::from_str(&all.stdout).expect("JSON");
    let gone: Vec<&Value> = doc["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["netns_cookie"].as_u64() == Some(cookie))
        .collect();
    assert_eq!(gone.len(), 1, "{doc}");
    assert_eq!(gone[0]["state"], "namespace-gone", "{doc}");
    let prune = pd_in(&["prune", "--json"]);
    assert_eq!(prune.code, Some(0), "{prune:?}");
    assert_eq!(
        still_loaded_after_release(&[prog]),
        Vec::<u32>::new(),
        "program {prog} of the dead namespace is still loaded 10 s after prune"
    );
    let all = pd_in(&["status", "--all", "--json"]);
    let doc: Value = serde_json::from_str(&all.stdout).expect("JSON");
    assert!(
        !doc["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .any(|i| i["netns_cookie"].as_u64() == Some(cookie)),
        "{doc}"
    );
    drop(dead);
}

/// What a crash must leave of the instance on hxb, given what was there before.
#[derive(Clone, Copy)]
enum Before {
    /// Nothing loaded.
    Nothing,
    /// hxb loaded with udp/5000 bound to drop.
    Bound,
}

/// Rows 3 and 4: `args` killed at every BPF call and pin-tree change it makes (counted by a
/// first run), each on a fresh `before` state; after each kill the instance is the old or the new
/// one, never half of one, and everything holds ([`assert_sound`], [`assert_removable`]).
fn crash_sweep(tag: &str, before: Before, args: &[&str]) {
    let witness = V2Witness::new();
    let ns = new_netns(tag);
    add_veth(&ns, IF_B, "hxbp");
    let prepare = || {
        if let Before::Bound = before {
            pd_ok(&ns, &["load", IF_B]);
            pd_ok(&ns, &["bind", "udp/5000", "drop"]);
        }
    };
    prepare();
    let (first, counts) = count_syscalls(&command(&ns, args));
    assert_eq!(first.code, Some(0), "{args:?} unharmed: {first:?}");
    assert_removable(&ns, &[IF_B], "after the counting run");
    let points = crash_points(&counts, env_usize("PD_CRASH_CAP", 20));
    assert!(
        points.len() >= 20.min(counts.values().sum()),
        "{args:?}: {counts:?}"
    );
    eprintln!("{args:?}: {} crash points from {counts:?}", points.len());
    for (syscall, n) in points {
        prepare();
        let old_prog = ns.xdp_prog(IF_B);
        let cmd = killed_at(&command(&ns, args), &syscall, n);
        let context = format!("{} killed at {syscall} #{n}", describe(&cmd));
        let run = execute(cmd);
        assert!(
            run.code.is_none() || run.code == Some(0),
            "{context}: neither killed nor done: {run:?}"
        );
        let status = pd(&ns, &["status", "--json"]);
        assert_eq!(status.code, Some(0), "{context}: status: {status:?}");
        // Right after the kill, before any writer ran: a program on hxb is named by some pin
        // folder (a half-written or retiring one counts: the next writer completes or removes
        // it), and a running instance is the old one or the new one, whole.
        let cookie = netns_cookie(&ns);
        let all = status_all(&ns, &context);
        if let Some(id) = ns.xdp_prog(IF_B) {
            assert!(
                all.iter()
                    .any(|i| i["prog_id"].as_u64() == Some(u64::from(id))),
                "{context}: program {id} runs on {IF_B} and no pin folder names it: {all:?}"
            );
        }
        if running_on(&all, cookie, IF_B).is_some() {
            if let Before::Bound = before {
                // Bindings are kept unless the instance was unloaded.
                assert!(
                    has_binding(&ns, IF_B, "udp", 5000),
                    "{context}: udp/5000 lost while {IF_B} still runs (was {old_prog:?})"
                );
            }
            if args[0] == "bind" {
                // A range is all or nothing, also when the bind is killed.
                let bound = count_bound(&ns, IF_B, "udp", 6000..=6009);
                assert!(
                    bound == 0 || bound == 10,
                    "{context}: {bound} of udp/6000-6009 bound"
                );
            }
        }
        // The next command after a kill works: the interface can be loaded and unloaded.
        let next = pd(&ns, &["load", IF_B]);
        assert!(
            next.code == Some(0) || next.stderr.contains("already"),
            "{context}: the next load: {next:?}"
        );
        // After that writer, nothing half is left and everything holds.
        let mine = instances_of(&status_all(&ns, &context), cookie);
        assert!(
            mine.iter().all(|i| i["state"] == "running"),
            "{context}: a half instance is left after the next load: {mine:?}"
        );
        assert_sound(&ns, &[IF_B], Some(&run), &context);
        assert_removable(&ns, &[IF_B], &context);
    }
    witness.check(&format!("after killing {args:?}"));
}

#[test]
fn row4_load_killed_at_every_point() {
    crash_sweep("kload", Before::Nothing, &["load", IF_B]);
}

#[test]
fn row3_unload_killed_at_every_point() {
    crash_sweep("kunload", Before::Bound, &["unload", IF_B]);
}

#[test]
fn bind_killed_at_every_point() {
    crash_sweep(
        "kbind",
        Before::Bound,
        &["bind", "-i", IF_B, "udp/6000-6009", "pass"],
    );
}

#[test]
fn upgrade_killed_at_every_point() {
    crash_sweep("kupg", Before::Bound, &["load", IF_B, "--upgrade"]);
}

/// One writer of a race: the commands it runs one after the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writer {
    /// `load hxc` (row 8: beside `unload hxb`).
    Load,
    /// `unload hxb`.
    Unload,
    /// `unload hxb` then `load hxb` (row 2, against `bind`).
    Reload,
    /// `bind -i hxb udp/6000 drop`.
    Bind,
    /// `unbind -i hxb udp/5000`.
    Unbind,
    /// `load hxb --upgrade`.
    Upgrade,
}

impl Writer {
    fn commands(self) -> Vec<Vec<&'static str>> {
        match self {
            Self::Load => vec![vec!["load", IF_C]],
            Self::Unload => vec![vec!["unload", IF_B]],
            Self::Reload => vec![vec!["unload", IF_B], vec!["load", IF_B]],
            Self::Bind => vec![vec!["bind", "-i", IF_B, "udp/6000", "drop"]],
            Self::Unbind => vec![vec!["unbind", "-i", IF_B, "udp/5000"]],
            Self::Upgrade => vec![vec!["load", IF_B, "--upgrade"]],
        }
    }

    /// Whether it takes hxb's instance away.
    const fn removes(self) -> bool {
        matches!(self, Self::Unload | Self::Reload)
    }
}

/// What one writer did: each command's run and when its process ended.
struct Done {
    runs: Vec<(Run, Instant)>,
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn run_writer(ns: &Netns, w: Writer, slow: bool) -> Done {
    let mut runs = Vec::new();
    for args in w.commands() {
        let plain = command(ns, &args);
        let mut cmd = if slow { slowed(&plain, 50) } else { plain };
        let out = spawn(&mut cmd).wait_with_output().expect("wait");
        runs.push((Run::from(out), Instant::now()));
    }
    Done { runs }
}

/// Brings the namespace back to: hxb loaded with udp/5000 (and nothing else) bound, hxc not
/// loaded.
fn reset(ns: &Netns) {
    if ns.xdp_prog(IF_C).is_some() {
        pd_ok(ns, &["unload", IF_C]);
    }
    if ns.xdp_prog(IF_B).is_none() {
        pd_ok(ns, &["load", IF_B]);
    }
    let b = bindings(ns, IF_B);
    if b.as_array()
        .is_some_and(|b| b.iter().any(|b| b["first"] == 6000))
    {
        pd_ok(ns, &["unbind", "-i", IF_B, "udp/6000"]);
    }
    if !has_binding(ns, IF_B, "udp", 5000) {
        pd_ok(ns, &["bind", "-i", IF_B, "udp/5000", "drop"]);
    }
}

/// Rows 2 and 8: `a` and `b` started together, `iterations` times, with `a` slowed at its
/// `flock` when `slow`. Writers that touch different things must both succeed; a `bound` line
/// must be a binding that is there unless a remover ended after the bind; `unloaded` must mean
/// nothing runs on hxb when nothing loaded it again.
fn race(ns: &Netns, a: Writer, b: Writer, iterations: usize, slow: bool) {
    for i in 0..iterations {
        reset(ns);
        let context = format!(
            "{a:?}{} racing {b:?}, run {i}",
            if slow { " (slowed)" } else { "" }
        );
        let (da, db) = thread::scope(|s| {
            let ta = s.spawn(|| run_writer(ns, a, slow));
            let tb = s.spawn(|| run_writer(ns, b, false));
            (ta.join().expect("writer a"), tb.join().expect("writer b"))
        });
        for (w, d, other, od) in [(a, &da, b, &db), (b, &db, a, &da)] {
            for (run, _) in &d.runs {
                assert!(
                    run.code == Some(0) || run.stderr.lines().count() == 1,
                    "{context}: {w:?} failed without one line: {run:?}"
                );
            }
            // Nothing takes away what a writer that does not race a remover works on.
            if !other.removes() && !w.removes() {
                for (run, _) in &d.runs {
                    assert_eq!(
                        run.code,
                        Some(0),
                        "{context}: {w:?} spuriously refused: {run:?}"
                    );
                }
            }
            if w == Writer::Load {
                assert_eq!(
                    d.runs[0].0.code,
                    Some(0),
                    "{context}: load {IF_C}: {:?}",
                    d.runs[0].0
                );
            }
            if w == Writer::Bind && d.runs[0].0.code == Some(0) {
                let bound_at = d.runs[0].1;
                // A remover that ended before the bind ended ran before it (the lock orders
                // them): the binding must be in the instance that runs now, if any.
                let removed_after = other.removes() && od.runs[0].1 > bound_at;
                if !removed_after && ns.xdp_prog(IF_B).is_some() {
                    assert!(
                        has_binding(ns, IF_B, "udp", 6000),
                        "{context}: printed {:?} and udp/6000 is not bound",
                        d.runs[0].0.stdout.trim()
                    );
                }
                if other == Writer::Unload && od.runs[0].1 < bound_at {
                    assert_ne!(
                        od.runs[0].0.code,
                        Some(0),
                        "{context}: bind printed {:?} after unload {IF_B} succeeded",
                        d.runs[0].0.stdout.trim()
                    );
                }
            }
            if w == Writer::Unload && d.runs[0].0.code == Some(0) {
                assert_eq!(
                    ns.xdp_prog(IF_B),
                    None,
                    "{context}: unloaded, still attached"
                );
            }
        }
        // The `bound` line was checked above, knowing what raced it.
        assert_sound(ns, &[IF_B, IF_C], None, &context);
    }
}

/// `pairs` raced, each plain and with its first writer slowed, in a namespace of their own
/// beside a v2 instance.
fn race_pairs(tag: &str, pairs: &[(Writer, Writer)]) {
    let witness = V2Witness::new();
    let ns = two_ifaces(tag);
    let iterations = env_usize("PD_RACE_ITERATIONS", 50);
    let started = Instant::now();
    for &(a, b) in pairs {
        race(&ns, a, b, iterations, false);
        race(&ns, a, b, iterations, true);
    }
    eprintln!("{tag}: {pairs:?} x {iterations} in {:?}", started.elapsed());
    assert_removable(&ns, &[IF_B, IF_C], "after the races");
    witness.check("after the races");
}

/// Row 8 and its kin: `unload` against every other writer.
#[test]
fn row8_unload_raced_with_every_writer() {
    race_pairs(
        "rcunl",
        &[
            (Writer::Load, Writer::Unload),
            (Writer::Unload, Writer::Bind),
            (Writer::Bind, Writer::Unload),
            (Writer::Unload, Writer::Unbind),
            (Writer::Unload, Writer::Upgrade),
        ],
    );
}

/// Row 2 exactly: `bind` racing `unload` + `load` of its interface.
#[test]
fn row2_bind_raced_with_unload_and_load() {
    race_pairs("rcbnd", &[(Writer::Bind, Writer::Reload)]);
}

/// Every pair of the writers that take nothing away: both must succeed, every time.
#[test]
fn writers_that_remove_nothing_raced_in_pairs() {
    race_pairs(
        "rcall",
        &[
            (Writer::Load, Writer::Bind),
            (Writer::Load, Writer::Unbind),
            (Writer::Load, Writer::Upgrade),
            (Writer::Bind, Writer::Unbind),
            (Writer::Bind, Writer::Upgrade),
            (Writer::Unbind, Writer::Upgrade),
        ],
    );
}

fn pd_on(ns: &Netns, bpffs: &str, args: &[&str]) -> Run {
    let mut all = vec!["--bpffs", bpffs];
    all.extend_from_slice(args);
    pd(ns, &all)
}

/// Row 7: on a read-only bpffs every writer is refused with one line and nothing changes:
/// `load --upgrade` does not swap the program in while failing, a `load` leaves no folder.
#[test]
fn row7_read_only_bpffs_changes_nothing() {
    let ns = two_ifaces("robpf");
    let bpffs = PrivateBpffs::new();
    let fs = bpffs.path();
    let ok = |args: &[&str]| {
        let r = pd_on(&ns, fs, args);
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
    };
    {
        // A program port-demux did not load, on hxc: `load hxc` is refused and leaves no folder.
        let ifindex = ns.ifindex(IF_C);
        let (_foreign, foreign_id) = ns.run(|| {
            let mut ebpf = aya::EbpfLoader::new()
                .load(port_demux::EBPF_OBJECT)
                .expect("loading the object");
            let xdp: &mut aya::programs::Xdp = ebpf
                .program_mut(port_demux::PROGRAM)
                .expect("the program")
                .try_into()
                .expect("XDP");
            xdp.load().expect("loading");
            xdp.attach_to_if_index(ifindex, aya::programs::XdpMode::Skb)
                .expect("attaching");
            let id = xdp.info().expect("info").id();
            (ebpf, id)
        });
        let r = pd_on(&ns, fs, &["load", IF_C]);
        assert_ne!(r.code, Some(0), "load over a foreign program: {r:?}");
        assert_eq!(ns.xdp_prog(IF_C), Some(foreign_id), "{r:?}");
        // The root folder `port-demux` may be made: its flock is the writers' lock.
        let left: Vec<String> = bpffs
            .entries()
            .into_iter()
            .filter(|e| !e.ends_with("/port-demux"))
            .collect();
        assert!(left.is_empty(), "a refused load left {left:?}: {r:?}");
    }
    ok(&["load", IF_B]);
    ok(&["bind", "udp/5000", "drop"]);
    let prog = ns.xdp_prog(IF_B).expect("attached");
    let tree = bpffs.entries();
    bpffs.remount("ro");
    for args in [
        vec!["load", IF_B, "--upgrade"],
        vec!["load", IF_C],
        vec!["unload", IF_B],
        vec!["bind", "-i", IF_B, "udp/6000", "drop"],
        vec!["unbind", "-i", IF_B, "udp/5000"],
        vec!["prune"],
    ] {
        let r = pd_on(&ns, fs, &args);
        let context = format!("{args:?} on a read-only bpffs");
        // On a read-only bpffs none of these can write their pins: no success can be true.
        assert!(
            r.code != Some(0) || args[0] == "prune",
            "{context}: succeeded: {r:?}"
        );
        if args[0] != "prune" {
            assert_eq!(r.stderr.lines().count(), 1, "{context}: {r:?}");
        }
        assert_eq!(
            ns.xdp_prog(IF_B),
            Some(prog),
            "{context}: the program changed: {r:?}"
        );
        assert_eq!(ns.xdp_prog(IF_C), None, "{context}: {r:?}");
        assert_eq!(bpffs.entries(), tree, "{context}: the pins changed");
    }
    let status = pd_on(&ns, fs, &["status", "--all", "--json"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    bpffs.remount("rw");
    assert!(has_binding_on(&ns, fs, IF_B, 5000), "udp/5000 kept");
    ok(&["unload", IF_B]);
    assert_eq!(ns.xdp_prog(IF_B), None);
}

fn has_binding_on(ns: &Netns, bpffs: &str, iface: &str, port: u64) -> bool {
    let run = pd_on(ns, bpffs, &["bindings", "-i", iface, "--json"]);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    doc["bindings"].as_array().is_some_and(|b| {
        b.iter()
            .any(|b| b["first"].as_u64() <= Some(port) && b["last"].as_u64() >= Some(port))
    })
}

/// Row 7, missing bpffs: with a `--bpffs` that does not exist, every verb but `load` is
/// refused with one line and creates nothing; `load` either is refused the same way or mounts a
/// bpffs there (as it does at `/sys/fs/bpf`) and the instance is then fully managed there.
#[test]
fn row7_missing_bpffs_is_refused_and_changes_nothing() {
    let ns = two_ifaces("nobpf");
    let plain = std::env::temp_dir().join(format!("pd-plain-{}-{}", std::process::id(), unique()));
    fs::create_dir(&plain).expect("a plain folder");
    let missing = plain.join("missing");
    let root = missing.to_str().expect("UTF-8");
    let _unmount = Unmount(missing.clone());
    for args in [
        vec!["status", "--all"],
        vec!["bind", "-i", IF_B, "udp/5000", "drop"],
        vec!["unbind", "-i", IF_B, "udp/5000"],
        vec!["unload", IF_B],
        vec!["load", IF_B, "--upgrade"],
    ] {
        let r = pd_on(&ns, root, &args);
        let context = format!("{args:?} with --bpffs {root}");
        assert_ne!(r.code, Some(0), "{context}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{context}: {r:?}");
        assert_eq!(ns.xdp_prog(IF_B), None, "{context}: attached");
        assert!(
            !missing.exists(),
            "{context}: created {}",
            missing.display()
        );
    }
    let r = pd_on(&ns, root, &["load", IF_B]);
    if r.code == Some(0) {
        assert!(
            port_demux::is_bpffs(&missing),
            "load succeeded without a bpffs: {r:?}"
        );
        let prog = ns.xdp_prog(IF_B).expect("attached");
        let status = pd_on(&ns, root, &["status", "--json"]);
        assert!(status.stdout.contains(&prog.to_string()), "{status:?}");
        let unload = pd_on(&ns, root, &["unload", IF_B]);
        assert_eq!(unload.code, Some(0), "{unload:?}");
    } else {
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        assert!(
            !missing.exists(),
            "a refused load created {}",
            missing.display()
        );
    }
    assert_eq!(ns.xdp_prog(IF_B), None);
}

/// Unmounts whatever a test let the binary mount at a path, and removes the folders.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if port_demux::is_bpffs(&self.0) {
            let _ = Command::new("umount").arg(&self.0).output();
        }
        let _ = fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// `load --upgrade --debug` killed exactly at its commit point, between the link update and its
/// first rename (strace inject): with no writer after it, every reader reads the staging folder
/// (its `META` says debug, the replaced folder's does not), the bindings it kept drop and pass
/// datagrams counted exactly; `prune`, the next writer here, removes the replaced folder and
/// puts the upgrade in place. In a bpffs of its own, so that no other writer completes it first.
#[test]
fn upgrade_killed_at_its_commit_point_readers_see_the_new_instance() {
    let c = {
        let _creating = creating();
        CommitLab::new()
    };
    c.ok(&["load", SERVER_IF]);
    c.ok(&["bind", "udp/5000", "drop", "--owner", "kept"]);
    c.ok(&["bind", "udp/5001", "pass"]);
    let bound = ["udp/5000 drop kept", "udp/5001 pass "];
    let (staging, prog) = c.kill_at_commit(&["load", SERVER_IF, "--upgrade", "--debug"]);
    c.assert_readers_follow(&staging, prog, &bound, "pass", true);
    c.assert_traffic(&[
        (5000, 4, false, Some("drop")),
        (5001, 6, true, Some("pass")),
        (6000, 2, true, None),
    ]);
    let pruned = c.json(&["prune", "--json"]);
    let removed: Vec<&Value> = pruned["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| &i["dir"])
        .collect();
    assert_eq!(
        removed,
        [&Value::from(c.instance_dir().to_str().expect("UTF-8"))],
        "only the replaced folder: {pruned}"
    );
    c.assert_completed(prog, &bound);
    assert_eq!(
        c.json(&["status", "--json"])["interfaces"][0]["debug"],
        true
    );
    // The upgrade kept the counters: they go on from where they were.
    c.assert_traffic(&[
        (5000, 1, false, Some("drop")),
        (5001, 1, true, Some("pass")),
    ]);
}
