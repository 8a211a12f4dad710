//! Readers follow the commit point (README, "Pinned-state contract"): an upgrade or an `apply`
//! killed after `BPF_LINK_UPDATE` swapped its program in, and before it renamed its folder into
//! place, leaves the data path running the new program with the staging folder's maps. With no
//! writer after it, `status`, `bindings`, `stats`, `status --all` and the library's
//! `PortDemux::open`/`open_only` open that folder, and real traffic is passed, dropped and
//! counted as it says. The next writer then puts the folder in place and nothing is left.
//!
//! The kill lands exactly there, not at a moment guessed: on the writer's first rename
//! ([`RENAMES`], `strace -e inject=...:signal=KILL:when=1`), which follows the link update; each
//! test checks that the link runs a new program and the instance's folder was not renamed.
//!
//! Needs root and `strace`. Each test has a bpffs of its own: no other test's writer (every
//! writer completes what killed ones left, in the whole bpffs) can complete the upgrade before
//! the readers are checked.

use std::{fs, path::PathBuf, process::Command};

use port_demux::{BindingRange, PortDemux, Scope};
use port_demux_testkit::{
    Lab, SILENCE,
    chaos::{PrivateBpffs, RENAMES, killed_at, netns_cookie},
    cli::{Run, command, execute, json},
    count_datagrams,
    netns::{SERVER_IF, poll, unique},
};
use serde_json::Value;

/// A lab whose instance lives in a bpffs of its own.
struct Setup {
    // Dropped first: the namespaces go, then the bpffs with the pins left in it.
    lab: Lab,
    bpffs: PrivateBpffs,
}

impl Setup {
    fn new() -> Self {
        let bpffs = PrivateBpffs::new();
        Self {
            lab: Lab::new(),
            bpffs,
        }
    }

    /// `port-demux --netns B --bpffs FS ARGS...`, not started.
    fn command(&self, args: &[&str]) -> Command {
        let mut all = vec!["--bpffs", self.bpffs.path()];
        all.extend_from_slice(args);
        command(&self.lab.server, &all)
    }

    fn run(&self, args: &[&str]) -> Run {
        execute(self.command(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
        run.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        json(&self.run(args), &args.join(" "))
    }

    fn scope(&self) -> Scope {
        self.lab.server.scope().with_bpffs(self.bpffs.dir())
    }

    fn root(&self) -> PathBuf {
        self.bpffs.dir().join("port-demux")
    }

    /// The instance's folder by the contract's name, `ns-<cookie>/if-<ifindex>`.
    fn instance_dir(&self) -> PathBuf {
        self.root()
            .join(format!("ns-{}", netns_cookie(&self.lab.server)))
            .join(format!("if-{}", self.lab.server.ifindex(SERVER_IF)))
    }

    /// The staging folders in the bpffs.
    fn staging(&self) -> Vec<PathBuf> {
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

    fn prog(&self) -> u32 {
        self.lab
            .server
            .xdp_prog(SERVER_IF)
            .expect("b0 runs a program")
    }

    /// Runs the writer `args` killed on its first rename; checks that the kill fell between
    /// the link update and the rename. Returns the staging folder and the program it swapped in.
    fn kill_at_commit(&self, args: &[&str]) -> (PathBuf, u32) {
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
    /// listed by `status --all` as replaced by it.
    fn assert_readers_follow(
        &self,
        staging: &std::path::Path,
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
            assert_eq!(rendered(&demux.bindings().expect("bindings")), bindings);
            assert_eq!(demux.status().expect("status").prog_id, prog);
        }
        let all = self.json(&["status", "--all", "--json"]);
        let instances = all["instances"].as_array().expect("instances");
        let state_of = |dir: &std::path::Path| {
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
    fn assert_traffic(&self, ports: &[(u16, u64, bool, Option<&str>)]) {
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
    fn assert_completed(&self, prog: u32, bindings: &[&str]) {
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
        assert_eq!(rendered(&demux.bindings().expect("bindings")), bindings);
    }
}

fn port_entry(stats: &Value, port: u16) -> Option<&Value> {
    stats["ports"]
        .as_array()?
        .iter()
        .find(|p| p["proto"] == "udp" && p["port"] == port)
}

fn rendered(ranges: &[BindingRange]) -> Vec<String> {
    ranges
        .iter()
        .map(|b| format!("{} {} {}", b.ports, b.action, b.owner))
        .collect()
}

fn rendered_json(doc: &Value) -> Vec<String> {
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
            format!(
                "{ports} {} {}",
                b["action"].as_str().unwrap_or("?"),
                b["owner"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// A TOML file in the temporary folder, removed on drop.
struct File(PathBuf);

impl File {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pdt-commit-{}-{}.toml",
            std::process::id(),
            unique()
        ));
        fs::write(&path, text).expect("writing the file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8")
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Old: udp/1000-1999 drop "old", tcp/80 pass, unbound ports pass.
const OLD: &str = r#"[interfaces.b0]
mode = "auto"
default = "pass"
bindings = [
    { ports = "udp/1000-1999", action = "drop", owner = "old" },
    { ports = "tcp/80", action = "pass" },
]
"#;
/// New: udp/1000-1999 pass "new", udp/7777 drop, unbound ports drop: a new `BINDINGS` and a
/// new `META` (the default action) in the staging folder.
const NEW: &str = r#"[interfaces.b0]
mode = "auto"
default = "drop"
bindings = [
    { ports = "udp/1000-1999", action = "pass", owner = "new" },
    { ports = "udp/7777", action = "drop" },
]
"#;
const OLD_SET: [&str; 2] = ["tcp/80 pass ", "udp/1000-1999 drop old"];
const NEW_SET: [&str; 2] = ["udp/1000-1999 pass new", "udp/7777 drop "];

#[test]
fn apply_killed_after_its_commit_point_readers_see_the_new_set() {
    let s = Setup::new();
    let (old, new) = (File::new(OLD), File::new(NEW));
    s.ok(&["apply", old.path()]);
    assert_eq!(
        rendered_json(&s.json(&["bindings", "-i", SERVER_IF, "--json"])),
        OLD_SET
    );
    let (staging, prog) = s.kill_at_commit(&["apply", new.path()]);
    // No writer since: readers open the staging folder, whose program runs.
    s.assert_readers_follow(&staging, prog, &NEW_SET, "drop", false);
    // And the data path does what they say: udp/1000 passes (the old set dropped it), udp/7777
    // drops (unbound before, passed by the old default), udp/3000 is dropped by the new
    // default (passed by the old one).
    s.assert_traffic(&[
        (1000, 3, true, Some("pass")),
        (7777, 5, false, Some("drop")),
        (3000, 7, false, None),
    ]);
    // The next writer completes the swap: the file is then the running state.
    assert_eq!(s.ok(&["apply", new.path()]), "b0: unchanged\n");
    s.assert_completed(prog, &NEW_SET);
    s.assert_traffic(&[(1000, 2, true, Some("pass")), (3000, 1, false, None)]);
}

#[test]
fn upgrade_killed_after_its_commit_point_readers_see_the_new_instance() {
    let s = Setup::new();
    s.ok(&["load", SERVER_IF]);
    s.ok(&["bind", "udp/5000", "drop", "--owner", "kept"]);
    s.ok(&["bind", "udp/5001", "pass"]);
    let bound = ["udp/5000 drop kept", "udp/5001 pass "];
    // `--debug`: the successor's `META` says so, the old folder's does not.
    let (staging, prog) = s.kill_at_commit(&["load", SERVER_IF, "--upgrade", "--debug"]);
    s.assert_readers_follow(&staging, prog, &bound, "pass", true);
    s.assert_traffic(&[
        (5000, 4, false, Some("drop")),
        (5001, 6, true, Some("pass")),
        (6000, 2, true, None),
    ]);
    // `prune`, the next writer here, removes the replaced folder (not the running staging
    // folder, which the writers' sweep then puts in place).
    let pruned = s.json(&["prune", "--json"]);
    let removed = pruned["instances"].as_array().expect("instances");
    assert_eq!(
        removed.iter().map(|i| i["dir"].clone()).collect::<Vec<_>>(),
        [Value::from(s.instance_dir().to_str().expect("UTF-8"))],
        "{pruned}"
    );
    s.assert_completed(prog, &bound);
    let status = s.json(&["status", "--json"]);
    assert_eq!(status["interfaces"][0]["debug"], true, "{status}");
    // The counters carried over: the upgrade kept the maps.
    s.assert_traffic(&[
        (5000, 1, false, Some("drop")),
        (5001, 1, true, Some("pass")),
    ]);
}
