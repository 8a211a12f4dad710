//! The pinned-state contract (README, "Pinned-state contract"), shown on the real kernel: an
//! instance follows its interface through renames and moves to another namespace, a namespace
//! that inherits a dead one's inode sees nothing of it, `status --all` tells every instance's
//! state and `prune` removes the stale ones, a library handle on an unloaded instance says so,
//! and the folders main's builds made are still found, upgraded and unloaded.
//!
//! Needs root. Each test creates its own namespaces and veth pairs and removes them, also when
//! it fails. The CLI ones run the binary (`PORT_DEMUX_BIN` runs them against another build,
//! such as main's). The tests of this file run one at a time: some make stale instances on
//! purpose, and `prune` removes every stale instance of the machine.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
};

use port_demux::{
    Action, BPFFS, BindOptions, DirLock, Error, LoadOptions, PortDemux, State, instances, prune,
};
use port_demux_testkit::{
    cli::{bin, execute, json, pd_json, pd_ok, pd_refused},
    netns::{Netns, hunt_inode, poll},
};
use serde_json::Value;

/// One test at a time (see the file's doc).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A veth pair `a` <-> `b` in `ns`, both up.
fn veth(ns: &Netns, a: &str, b: &str) {
    ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    ns.ip(&["link", "set", a, "up"]);
    ns.ip(&["link", "set", b, "up"]);
}

/// `port-demux ARGS...` in the host namespace, which must succeed with JSON on stdout.
fn host_json(args: &[&str]) -> Value {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    json(&execute(cmd), &args.join(" "))
}

/// The `status --json` interfaces of `ns` as (name, attached, program id).
fn interfaces(ns: &Netns) -> Vec<(String, bool, u64)> {
    let status = pd_json(ns, &["status", "--json"]);
    status["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("interfaces: {status}"))
        .iter()
        .map(|i| {
            (
                i["interface"].as_str().expect("interface").to_owned(),
                i["attached"].as_bool().expect("attached"),
                i["program_id"].as_u64().expect("program_id"),
            )
        })
        .collect()
}

/// The `bindings --json` of `iface` in `ns` as (proto, first, last, action, owner).
fn bindings(ns: &Netns, iface: &str) -> Vec<(String, u64, u64, String, String)> {
    let doc = pd_json(ns, &["bindings", "-i", iface, "--json"]);
    doc["bindings"]
        .as_array()
        .unwrap_or_else(|| panic!("bindings: {doc}"))
        .iter()
        .map(|b| {
            (
                b["proto"].as_str().expect("proto").to_owned(),
                b["first"].as_u64().expect("first"),
                b["last"].as_u64().expect("last"),
                b["action"].as_str().expect("action").to_owned(),
                b["owner"].as_str().expect("owner").to_owned(),
            )
        })
        .collect()
}

fn binding(port: u64, action: &str, owner: &str) -> (String, u64, u64, String, String) {
    ("udp".into(), port, port, action.into(), owner.into())
}

/// The `status --all --json` entry of folder `dir`, if listed.
fn entry(dir: &Path) -> Option<Value> {
    let all = host_json(&["status", "--all", "--json"]);
    all["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("instances: {all}"))
        .iter()
        .find(|i| i["dir"] == dir.to_str().expect("UTF-8"))
        .cloned()
}

/// The pin folder `status --json` names for `iface` in `ns`.
fn pins(ns: &Netns, iface: &str) -> PathBuf {
    let status = pd_json(ns, &["status", "--json"]);
    status["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|i| i["interface"] == iface)
        .and_then(|i| i["pins"].as_str())
        .map_or_else(|| panic!("{iface} in {status}"), PathBuf::from)
}

/// Removes the pin folders it holds on drop (the link first, which detaches a program still
/// held): what a test made stale on purpose goes also when the test fails before its `prune`.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for dir in &self.0 {
            if !dir.exists() {
                continue;
            }
            let _ = fs::remove_file(dir.join("link"));
            for pin in fs::read_dir(dir).into_iter().flatten().flatten() {
                let _ = fs::remove_file(pin.path());
            }
            let _ = fs::remove_dir(dir);
            // The namespace folder too, once empty (fails, harmlessly, if not).
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// Row 1 of issue 9: a renamed interface keeps its instance, and a `load` of a new interface
/// that took the old name touches neither the renamed one's program nor its bindings.
#[test]
fn a_renamed_interface_keeps_its_instance() {
    let _serial = serial();
    let ns = Netns::new("ren");
    veth(&ns, "hxb", "hxp");
    pd_ok(&ns, &["load", "hxb"]);
    pd_ok(
        &ns,
        &["bind", "-i", "hxb", "udp/5000", "drop", "--owner", "me"],
    );
    let prog = ns.xdp_prog("hxb").expect("attached");
    ns.ip(&["link", "set", "hxb", "down"]);
    ns.ip(&["link", "set", "hxb", "name", "hxc"]);
    ns.ip(&["link", "set", "hxc", "up"]);
    // A new interface with the old name: loading it leaves hxc, its program and its bindings
    // alone.
    veth(&ns, "hxb", "hxq");
    let out = pd_ok(&ns, &["load", "hxb"]);
    assert_eq!(ns.xdp_prog("hxc"), Some(prog), "hxc's program was replaced");
    assert!(!out.contains("stale"), "{out}");
    // The instance follows the rename.
    assert_eq!(bindings(&ns, "hxc"), [binding(5000, "drop", "me")]);
    assert!(bindings(&ns, "hxb").is_empty());
    let listed = interfaces(&ns);
    let names: Vec<&str> = listed.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, ["hxb", "hxc"], "{listed:?}");
    assert!(
        listed.iter().all(|(_, attached, _)| *attached),
        "{listed:?}"
    );
    // Several loaded: -i is needed, and names the instances by their names now.
    pd_refused(
        &ns,
        &["bind", "udp/6000", "pass"],
        &["hxb, hxc", "-i IFACE"],
    );
    pd_ok(&ns, &["unload", "hxc"]);
    assert_eq!(ns.xdp_prog("hxc"), None);
    pd_ok(&ns, &["unload", "hxb"]);
    assert_eq!(ns.xdp_prog("hxb"), None);
}

/// Row 5: an interface moved to another namespace takes its instance along; it is managed
/// from there, also once the namespace it came from is gone.
#[test]
fn a_moved_interface_is_managed_from_its_new_namespace() {
    let _serial = serial();
    let from = Netns::new("mvA");
    let to = Netns::new("mvB");
    veth(&from, "mv0", "mv1");
    pd_ok(&from, &["load", "mv0"]);
    pd_ok(
        &from,
        &["bind", "-i", "mv0", "udp/5001", "drop", "--owner", "mover"],
    );
    let prog = from.xdp_prog("mv0").expect("attached");
    from.ip(&["link", "set", "mv0", "netns", to.name()]);
    to.ip(&["link", "set", "mv0", "up"]);
    assert_eq!(
        to.xdp_prog("mv0"),
        Some(prog),
        "the kernel keeps XDP on a move"
    );
    // The namespace it left has nothing; the one it is in has it, bindings included.
    assert!(interfaces(&from).is_empty(), "{:?}", interfaces(&from));
    pd_refused(&from, &["stats"], &["not loaded on any interface"]);
    // The peer leaves too (a veth pair dies with either end's namespace), then the namespace
    // the instance was loaded in goes.
    from.ip(&["link", "set", "mv1", "netns", to.name()]);
    to.ip(&["link", "set", "mv1", "up"]);
    drop(from);
    assert_eq!(interfaces(&to), [("mv0".to_owned(), true, u64::from(prog))]);
    assert_eq!(bindings(&to, "mv0"), [binding(5001, "drop", "mover")]);
    pd_ok(&to, &["bind", "udp/5002", "pass"]);
    assert_eq!(
        bindings(&to, "mv0"),
        [binding(5001, "drop", "mover"), binding(5002, "pass", "")]
    );
    let moved = pins(&to, "mv0");
    let listed = entry(&moved).unwrap_or_else(|| panic!("{} in status --all", moved.display()));
    assert_eq!(listed["state"], "running", "{listed}");
    assert_eq!(listed["netns"], to.name(), "{listed}");
    assert_eq!(listed["iface"], "mv0", "{listed}");
    assert_eq!(listed["prog_id"], prog, "{listed}");
    // An upgrade moves its folder to the new namespace's.
    pd_ok(&to, &["load", "mv0", "--upgrade"]);
    let upgraded = pins(&to, "mv0");
    assert!(
        upgraded.starts_with(to.scope().dir()),
        "{}",
        upgraded.display()
    );
    assert_eq!(bindings(&to, "mv0").len(), 2);
    pd_ok(&to, &["unload", "mv0"]);
    assert_eq!(to.xdp_prog("mv0"), None);
    assert!(!upgraded.exists());
}

/// Row 6: a namespace deleted while loaded leaves a dead instance; a new namespace that
/// inherits its inode sees nothing of it (`status`, `stats`, `bindings`, `bind` without `-i`,
/// `open_only`), loads its own, and `prune` removes the dead one. Fails if the kernel does not
/// hand the inode out again within 200 namespaces.
#[test]
fn a_namespace_that_inherits_an_inode_sees_nothing_of_a_dead_instance() {
    let _serial = serial();
    let dead = Netns::new("dead");
    veth(&dead, "d0", "d1");
    pd_ok(&dead, &["load", "d0"]);
    pd_ok(
        &dead,
        &["bind", "-i", "d0", "udp/5000", "drop", "--owner", "ghost"],
    );
    let dead_pins = pins(&dead, "d0");
    let _cleanup = RemoveOnDrop(vec![dead_pins.clone()]);
    let ino = dead.scope().netns_ino();
    // From here until `prune`, this test holds the writers' lock (see
    // `status_all_and_prune_report_every_state`): no other process's `prune` removes the dead
    // instance before it is looked at. The CLI runs readers meanwhile; the writes go through
    // the library in this thread, where the lock nests.
    let lock = DirLock::writers(Path::new(BPFFS)).expect("the writers' lock");
    dead.delete();
    // The kernel frees a namespace (its devices, then its inode number) after `ip netns del`
    // returns, from a work queue: wait until its instance no longer runs.
    poll(
        "the dead namespace's instance to stop running",
        || {
            instances(Path::new(BPFFS))
                .expect("instances")
                .into_iter()
                .find(|i| i.dir == dead_pins)
                .map(|i| i.state)
        },
        |state| *state == Some(State::NamespaceGone),
    );
    let heir = hunt_inode(ino, || Netns::new("heir"), |ns| ns.scope().netns_ino()).unwrap_or_else(
        |made| panic!("the kernel did not reuse inode {ino} in {made} new namespaces"),
    );
    eprintln!("inode {ino} reused by {}", heir.name());
    assert!(interfaces(&heir).is_empty(), "{:?}", interfaces(&heir));
    pd_refused(&heir, &["stats"], &["not loaded on any interface"]);
    pd_refused(&heir, &["bindings"], &["not loaded on any interface"]);
    veth(&heir, "d0", "d1");
    pd_refused(&heir, &["stats", "-i", "d0"], &["not loaded on d0"]);
    assert!(matches!(
        PortDemux::open_only(&heir.scope()),
        Err(Error::NoneLoaded { .. })
    ));
    // The dead instance is there for `status --all`.
    let listed = entry(&dead_pins).unwrap_or_else(|| panic!("{}", dead_pins.display()));
    assert_eq!(listed["state"], "namespace-gone", "{listed}");
    assert_eq!(listed["iface"], "d0", "{listed}");
    // The heir loads its own, which has nothing of the dead one's; `prune` removes the dead one.
    let (own, _) =
        PortDemux::load(&heir.scope(), "d0", &LoadOptions::default()).expect("load in the heir");
    assert!(own.bindings().expect("bindings").is_empty());
    assert_ne!(own.pin_dir(), dead_pins);
    let removed = prune_releasing(lock);
    assert!(removed.contains(&dead_pins), "{removed:?}");
    assert!(!dead_pins.exists());
    assert!(!removed.contains(&own.pin_dir().to_owned()), "{removed:?}");
    // `bind` without -i takes the heir's own instance, the only one running there.
    let out = pd_ok(&heir, &["bind", "udp/5001", "drop"]);
    assert!(out.ends_with("on d0\n"), "{out}");
    assert_eq!(bindings(&heir, "d0"), [binding(5001, "drop", "")]);
    assert_eq!(interfaces(&heir).len(), 1);
    pd_ok(&heir, &["unload", "d0"]);
}

/// The library's `prune` under `lock` (the writers' lock this thread holds, in which it nests),
/// then the lock released: the folders removed.
fn prune_releasing(lock: DirLock) -> Vec<PathBuf> {
    let removed = prune(Path::new(BPFFS))
        .expect("prune")
        .into_iter()
        .map(|i| i.dir)
        .collect();
    drop(lock);
    removed
}

/// A pid that no process has: one that ran and exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawning true");
    let pid = child.id();
    child.wait().expect("waiting for true");
    pid
}

/// `status --all` names every state, `prune` removes every stale instance (detaching a program
/// a killed load left attached) and nothing running; a second `prune` finds nothing of ours.
#[test]
fn status_all_and_prune_report_every_state() {
    let _serial = serial();
    let ns = Netns::new("st");
    let gone_ns = Netns::new("stgone");
    for (a, b) in [("s0", "p0"), ("s1", "p1"), ("s2", "p2"), ("s3", "p3")] {
        veth(&ns, a, b);
    }
    veth(&gone_ns, "g0", "h0");
    for (n, iface) in [
        (&ns, "s0"),
        (&ns, "s1"),
        (&ns, "s2"),
        (&ns, "s3"),
        (&gone_ns, "g0"),
    ] {
        pd_ok(n, &["load", iface]);
    }
    let dir = |n: &Netns, iface: &str| pins(n, iface);
    let (running, iface_gone, half, killed, ns_gone) = (
        dir(&ns, "s0"),
        dir(&ns, "s1"),
        dir(&ns, "s2"),
        dir(&ns, "s3"),
        dir(&gone_ns, "g0"),
    );
    // Until `prune` below, this test holds the writers' lock: no other process's writer (another
    // test binary's `prune` or load, which sweep) removes the stale instances made here before
    // they are looked at. Readers do not take it.
    let lock = DirLock::writers(Path::new(BPFFS)).expect("the writers' lock");
    // A killed load: its folder still under the staging name of a dead process (start time 1:
    // never a live process's, even once the pid is reused), the program attached and pinned
    // there only.
    let staging = running
        .parent()
        .and_then(Path::parent)
        .expect("port-demux folder")
        .join(format!("staging-pid{}-1-load-0-ns1-if1", dead_pid()));
    fs::rename(&killed, &staging).expect("renaming into a staging name");
    let _cleanup = RemoveOnDrop(vec![
        iface_gone.clone(),
        half.clone(),
        staging.clone(),
        ns_gone.clone(),
    ]);
    let killed_prog = ns.xdp_prog("s3").expect("the killed load's program runs");
    ns.ip(&["link", "del", "s1"]);
    fs::remove_file(half.join("link")).expect("unpinning s2's link");
    gone_ns.delete();
    let state = |d: &Path| entry(d).map(|e| e["state"].as_str().expect("state").to_owned());
    assert_eq!(state(&running).as_deref(), Some("running"));
    assert_eq!(state(&iface_gone).as_deref(), Some("interface-gone"));
    assert_eq!(state(&half).as_deref(), Some("half-written"));
    assert_eq!(state(&staging).as_deref(), Some("half-written"));
    assert_eq!(state(&ns_gone).as_deref(), Some("namespace-gone"));
    let listed = entry(&iface_gone).expect("listed");
    assert!(
        listed["hint"].as_str().expect("hint").contains("prune"),
        "{listed}"
    );
    assert_eq!(listed["netns"], ns.name(), "{listed}");
    // The namespace's own status lists the running instance only.
    assert_eq!(interfaces(&ns).len(), 1, "{:?}", interfaces(&ns));
    let text = {
        let mut cmd = Command::new(bin());
        cmd.args(["status", "--all"]);
        execute(cmd)
    };
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("interface-gone ") && l.contains("s1")),
        "{text:?}"
    );

    // The library's prune, under the lock this thread holds (it nests): what it removed is
    // exactly what was made stale here, whatever other processes do meanwhile.
    let removed = prune_releasing(lock);
    for d in [&iface_gone, &half, &staging, &ns_gone] {
        assert!(removed.contains(d), "{d:?} in {removed:?}");
        assert!(!d.exists(), "{} left", d.display());
    }
    assert!(!removed.contains(&running), "{removed:?}");
    assert!(running.exists());
    assert_ne!(
        ns.xdp_prog("s3"),
        Some(killed_prog),
        "the killed load's program still runs"
    );
    assert_eq!(ns.xdp_prog("s3"), None);
    // The CLI's prune finds nothing of ours any more.
    let again = host_json(&["prune", "--json"]);
    for d in [&iface_gone, &half, &staging, &ns_gone, &running] {
        assert!(
            !again["instances"]
                .as_array()
                .expect("instances")
                .iter()
                .any(|i| i["dir"] == d.to_str().expect("UTF-8")),
            "{again}"
        );
    }
    pd_ok(&ns, &["unload", "s0"]);
}

/// A library handle whose instance was unloaded (and loaded again) since it was opened says
/// so with its own error, and writes nothing into the new instance.
#[test]
fn a_handle_on_an_unloaded_instance_says_so() {
    let _serial = serial();
    let ns = Netns::new("lib");
    veth(&ns, "l0", "l1");
    let scope = ns.scope();
    let (old, _) = PortDemux::load(&scope, "l0", &LoadOptions::default()).expect("load");
    PortDemux::unload(&scope, "l0").expect("unload");
    let bind = |demux: &PortDemux| {
        demux.bind(
            "udp/7000".parse().expect("spec"),
            &Action::Drop,
            &BindOptions::default(),
        )
    };
    assert!(matches!(bind(&old), Err(Error::Unloaded { iface }) if iface == "l0"));
    assert!(matches!(old.stats(), Err(Error::Unloaded { .. })));
    let (new, _) = PortDemux::load(&scope, "l0", &LoadOptions::default()).expect("load again");
    assert!(matches!(bind(&old), Err(Error::Unloaded { .. })));
    assert!(matches!(old.status(), Err(Error::Unloaded { .. })));
    assert!(new.bindings().expect("bindings").is_empty());
    bind(&new).expect("binding through the new handle");
    PortDemux::unload(&scope, "l0").expect("unload");
}

/// The folders main's builds made (`netns-<inode>/<iface>`, layout 3; layout 2 is
/// `upgrade_v2.rs`'s) are found as running instances, upgraded into this build's folders with
/// their bindings, and unloaded; the library lists them with `instances`.
#[test]
fn main_folders_are_found_upgraded_and_unloaded() {
    let _serial = serial();
    let ns = Netns::new("old");
    veth(&ns, "o0", "q0");
    veth(&ns, "o1", "q1");
    let scope = ns.scope();
    // Main's layout 3 is this build's maps and META in main's folder: made by moving this
    // build's folder there.
    let legacy = |iface: &str| -> PathBuf {
        // Under the writers' lock, as every writer of pins (it nests in the library's load).
        let _lock = DirLock::writers(Path::new(BPFFS)).expect("the writers' lock");
        let (demux, _) = PortDemux::load(&scope, iface, &LoadOptions::default()).expect("load");
        demux
            .bind(
                "udp/5300".parse().expect("spec"),
                &Action::Drop,
                &BindOptions {
                    replace: false,
                    owner: "main".into(),
                },
            )
            .expect("bind");
        let to = scope.legacy_dir().join(iface);
        fs::create_dir_all(scope.legacy_dir()).expect("netns folder");
        fs::rename(demux.pin_dir(), &to).expect("moving into main's folder");
        to
    };
    let (o0, o1) = (legacy("o0"), legacy("o1"));
    let _cleanup = RemoveOnDrop(vec![o0.clone(), o1.clone()]);
    let found: Vec<_> = instances(Path::new("/sys/fs/bpf"))
        .expect("instances")
        .into_iter()
        .filter(|i| i.dir == o0 || i.dir == o1)
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found
            .iter()
            .all(|i| i.state == State::Running
                && i.layout == Some(port_demux::common::LAYOUT_VERSION))
    );
    let names: Vec<String> = interfaces(&ns).into_iter().map(|i| i.0).collect();
    assert_eq!(names, ["o0", "o1"]);
    assert_eq!(bindings(&ns, "o0"), [binding(5300, "drop", "main")]);
    // Upgraded: into this build's folder, bindings kept, main's folder gone.
    pd_ok(&ns, &["load", "o0", "--upgrade"]);
    let upgraded = pins(&ns, "o0");
    assert!(upgraded.starts_with(scope.dir()), "{}", upgraded.display());
    assert!(!o0.exists());
    assert_eq!(bindings(&ns, "o0"), [binding(5300, "drop", "main")]);
    // Unloaded straight from main's folder.
    let prog = ns.xdp_prog("o1").expect("attached");
    pd_ok(&ns, &["unload", "o1"]);
    assert!(!o1.exists());
    assert_ne!(ns.xdp_prog("o1"), Some(prog));
    pd_ok(&ns, &["unload", "o0"]);
    assert!(!scope.legacy_dir().exists());
    // Nothing stale of ours left for prune.
    assert!(
        !prune(Path::new("/sys/fs/bpf"))
            .expect("prune")
            .iter()
            .any(|i| i.dir.starts_with(scope.dir()) || i.dir.starts_with(scope.legacy_dir()))
    );
}
