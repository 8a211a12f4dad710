//! The kit leaves nothing behind: tests that panic at several points (inside `Scope::run`, in a
//! spawned thread, with port-demux loaded and bound) and a test process killed with SIGKILL
//! leave no namespace, veth, pin or XDP program once the kit next runs. Needs root.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use port_demux::{Action, BindOptions, LoadOptions, PortDemux, Scope};
use port_demux_testkit::{HostVeth, Lab, netns::poll, reap};

/// What a test leaves if its guards do not run: namespaces, the host veth, the pin folders,
/// and the XDP program (by id).
#[derive(Debug)]
struct Traces {
    netns: Vec<String>,
    host_veth: String,
    pin_dirs: Vec<PathBuf>,
    prog_id: u32,
}

/// A lab and a host veth, port-demux loaded on b0 and bound; what they would leave.
fn set_up(lab: &Lab, veth: &HostVeth) -> Traces {
    let scope = lab.server.scope();
    let (demux, report) =
        PortDemux::load(&scope, lab.server_if(), &LoadOptions::default()).unwrap();
    demux
        .bind(
            "udp/7777".parse().unwrap(),
            &Action::Drop,
            &BindOptions::default(),
        )
        .unwrap();
    Traces {
        netns: vec![lab.server.name().to_owned(), lab.client.name().to_owned()],
        host_veth: veth.name.clone(),
        pin_dirs: vec![scope.dir()],
        prog_id: report.prog_id,
    }
}

/// Polls until none of `traces` is left (an XDP program is freed once its last reference goes,
/// after an RCU grace period).
fn assert_gone(traces: &Traces) {
    poll(
        "every trace of the test to be gone",
        || {
            let mut left = Vec::new();
            left.extend(
                traces
                    .netns
                    .iter()
                    .filter(|ns| Path::new("/run/netns").join(ns).exists())
                    .cloned(),
            );
            if Path::new("/sys/class/net").join(&traces.host_veth).exists() {
                left.push(traces.host_veth.clone());
            }
            left.extend(
                traces
                    .pin_dirs
                    .iter()
                    .filter(|dir| dir.exists())
                    .map(|d| d.display().to_string()),
            );
            if aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .any(|p| p.id() == traces.prog_id)
            {
                left.push(format!("XDP program {}", traces.prog_id));
            }
            left
        },
        Vec::is_empty,
    );
}

fn netns_ino() -> u64 {
    fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

#[test]
fn a_panic_inside_scope_run_returns_the_thread_to_its_namespace() {
    let lab = Lab::new();
    let scope = lab.server.scope();
    let own = netns_ino();
    let inside = scope.run(netns_ino).unwrap();
    assert_ne!(inside, own, "Scope::run enters the namespace");
    let caught = panic::catch_unwind(AssertUnwindSafe(|| {
        scope
            .run(|| panic!("a test failing inside the namespace"))
            .unwrap();
    }));
    assert!(caught.is_err());
    assert_eq!(netns_ino(), own, "back in the thread's own namespace");
    assert_eq!(Scope::current().unwrap().netns_ino(), own);
}

/// Where a test fails, given its lab.
type Failure = fn(&Lab);

#[test]
fn tests_panicking_anywhere_leave_nothing() {
    // Inside Scope::run, in a thread the test spawned, and on the test's own thread.
    let points: [(&str, Failure); 3] = [
        ("inside Scope::run", |lab| {
            lab.server
                .scope()
                .run(|| panic!("inside Scope::run"))
                .unwrap();
        }),
        ("in a spawned thread", |_| {
            thread::scope(|s| s.spawn(|| panic!("in a spawned thread")).join()).unwrap();
        }),
        ("on the test's thread", |_| panic!("on the test's thread")),
    ];
    // Each with the kit's unique names, then with names the test chose.
    for ((point, fail), named) in points.into_iter().flat_map(|p| [(p, false), (p, true)]) {
        let mut traces = None;
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            let lab = if named {
                named_lab(&format!("kitpanic{}", std::process::id()))
            } else {
                Lab::new()
            };
            let veth = HostVeth::new();
            traces = Some(set_up(&lab, &veth));
            fail(&lab);
        }));
        assert!(
            caught.is_err(),
            "{point} (named {named}): the test panicked"
        );
        assert_gone(&traces.expect("set up before the panic"));
    }
}

/// A lab with namespace, interface names and addresses chosen here: none carries the kit's
/// `pdt-<pid>-` form.
fn named_lab(base: &str) -> Lab {
    Lab::builder()
        .netns(&format!("{base}-cl"), &format!("{base}-srv"))
        .interfaces("cl0", "srv0")
        .ipv4(
            "198.51.100.2".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
            24,
        )
        .ipv6(
            "2001:db8:5::2".parse().unwrap(),
            "2001:db8:5::1".parse().unwrap(),
            64,
        )
        .build()
}

/// Run as a child process by `a_killed_test_leaves_nothing_once_the_kit_runs_again`: sets up,
/// prints its traces, and waits to be killed.
#[test]
fn killed_child() {
    if std::env::var_os("PORT_DEMUX_KIT_CHILD").is_none() {
        return;
    }
    let lab = Lab::new();
    let veth = HostVeth::new();
    let traces = set_up(&lab, &veth);
    // A second lab with names of the test's choosing (no pid in them), port-demux loaded too.
    let named = named_lab(&std::env::var("PORT_DEMUX_KIT_CHILD").unwrap());
    let named_traces = set_up(&named, &veth);
    println!(
        "TRACES {} {} {} {} {} {} {} {} {}",
        traces.netns[0],
        traces.netns[1],
        traces.host_veth,
        traces.pin_dirs[0].display(),
        traces.prog_id,
        named_traces.netns[0],
        named_traces.netns[1],
        named_traces.pin_dirs[0].display(),
        named_traces.prog_id,
    );
    loop {
        thread::park();
    }
}

#[test]
fn a_killed_test_leaves_nothing_once_the_kit_runs_again() {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_child", "--nocapture", "--test-threads=1"])
        .env(
            "PORT_DEMUX_KIT_CHILD",
            format!("kitkill{}", std::process::id()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // The harness prints `test killed_child ... ` on the same line first.
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| Some(l.split_once("TRACES ")?.1.to_owned()))
        .expect("the child set up and printed its traces");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let traces = Traces {
        netns: vec![fields[0].to_owned(), fields[1].to_owned()],
        host_veth: fields[2].to_owned(),
        pin_dirs: vec![PathBuf::from(fields[3])],
        prog_id: fields[4].parse().unwrap(),
    };
    let named = Traces {
        netns: vec![fields[5].to_owned(), fields[6].to_owned()],
        host_veth: fields[2].to_owned(),
        pin_dirs: vec![PathBuf::from(fields[7])],
        prog_id: fields[8].parse().unwrap(),
    };
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert!(
        Path::new("/run/netns").join(&traces.netns[0]).exists(),
        "the killed child left its lab"
    );
    assert!(
        Path::new("/run/netns").join(&named.netns[0]).exists(),
        "the killed child left its named lab"
    );
    // What the kit does before it creates anything in a new test process.
    reap::reap();
    assert_gone(&traces);
    assert_gone(&named);
}
