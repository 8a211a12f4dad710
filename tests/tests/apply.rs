//! `port-demux apply` and `export` against real instances: the dry run's plan, idempotence,
//! the export/apply round trip, a bad file that changes nothing, a reader polling the bindings
//! during applies that never sees a mix of two sets, and applies killed (SIGKILL) at any moment
//! that leave the old set or the new one, with the data path doing what the pins say.
//!
//! Needs root.

use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use port_demux::{BindingRange, PortDemux, Proto};
use port_demux_testkit::{
    Lab, SILENCE,
    chaos::{CommitLab, rendered_json},
    cli::{assert_refused, command, pd},
    count_datagrams,
    netns::{SERVER_IF, poll, unique},
};

/// A TOML file in the temporary folder, removed on drop.
struct File(PathBuf);

impl File {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pdt-apply-{}-{}.toml",
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

fn ok(lab: &Lab, args: &[&str]) -> String {
    let run = pd(&lab.server, args);
    assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
    run.stdout
}

fn prog_id(lab: &Lab) -> u32 {
    PortDemux::open(&lab.server.scope(), SERVER_IF)
        .and_then(|d| d.status())
        .expect("status")
        .prog_id
}

fn bindings(lab: &Lab) -> Vec<BindingRange> {
    PortDemux::open(&lab.server.scope(), SERVER_IF)
        .and_then(|d| d.bindings())
        .expect("bindings")
}

fn rendered(ranges: &[BindingRange]) -> Vec<String> {
    ranges
        .iter()
        .map(|b| format!("{} {} {}", b.ports, b.action, b.owner))
        .collect()
}

/// Old: udp/1000-1999 drop "old", tcp/80 pass. New: udp/1000-1999 pass "new", udp/7777 drop.
const OLD: &str = r#"[interfaces.b0]
mode = "auto"
default = "pass"
bindings = [
    { ports = "udp/1000-1999", action = "drop", owner = "old" },
    { ports = "tcp/80", action = "pass" },
]
"#;
const NEW: &str = r#"[interfaces.b0]
mode = "auto"
default = "pass"
bindings = [
    { ports = "udp/1000-1999", action = "pass", owner = "new" },
    { ports = "udp/7777", action = "drop" },
]
"#;
const OLD_SET: [&str; 2] = ["tcp/80 pass ", "udp/1000-1999 drop old"];
const NEW_SET: [&str; 2] = ["udp/1000-1999 pass new", "udp/7777 drop "];

#[test]
fn dry_run_idempotence_and_round_trip() {
    let lab = Lab::new();
    let (old, new) = (File::new(OLD), File::new(NEW));
    // Not loaded: the dry run plans the load and changes nothing.
    let plan = ok(&lab, &["apply", old.path(), "--dry-run"]);
    assert_eq!(
        plan,
        "b0: (bindings and default switch as one change)\n  load (mode auto, default pass, debug off)\n  + tcp/80 pass\n  + udp/1000-1999 drop owner \"old\"\ndry run: nothing changed\n"
    );
    assert!(lab.server.scope().loaded().expect("loaded").is_empty());
    ok(&lab, &["apply", old.path()]);
    assert_eq!(rendered(&bindings(&lab)), OLD_SET);
    let id = prog_id(&lab);
    // The same file again: nothing to do, the program untouched.
    assert_eq!(ok(&lab, &["apply", old.path()]), "b0: unchanged\n");
    assert_eq!(prog_id(&lab), id);
    // The dry run of the new file: the difference, nothing changed.
    let plan = ok(&lab, &["apply", new.path(), "--dry-run"]);
    assert_eq!(
        plan,
        "b0: (bindings and default switch as one change)\n  - tcp/80 pass\n  ~ udp/1000-1999 drop owner \"old\" -> pass owner \"new\"\n  + udp/7777 drop\ndry run: nothing changed\n"
    );
    assert_eq!(rendered(&bindings(&lab)), OLD_SET);
    assert_eq!(prog_id(&lab), id);
    ok(&lab, &["apply", new.path()]);
    assert_eq!(rendered(&bindings(&lab)), NEW_SET);
    assert_ne!(prog_id(&lab), id, "the swap replaces the program");
    // Export, apply the export: unchanged; export again: the same text.
    let exported = ok(&lab, &["export"]);
    let file = File::new(&exported);
    assert_eq!(ok(&lab, &["apply", file.path()]), "b0: unchanged\n");
    assert_eq!(ok(&lab, &["export"]), exported);
    assert!(
        exported.contains("mode = \"auto\""),
        "the requested mode: {exported}"
    );
    // A bind made by hand is part of the running state; apply takes it away again.
    ok(&lab, &["bind", "tcp/22", "pass"]);
    assert_eq!(
        ok(&lab, &["apply", new.path()]),
        "b0: (bindings and default switch as one change)\n  - tcp/22 pass\n"
    );
    assert_eq!(rendered(&bindings(&lab)), NEW_SET);
}

#[test]
fn a_bad_file_changes_nothing() {
    let lab = Lab::new();
    let old = File::new(OLD);
    ok(&lab, &["apply", old.path()]);
    let id = prog_id(&lab);
    let bad_port = File::new(&NEW.replace("udp/7777", "udp/77777"));
    let line = assert_refused(
        &pd(&lab.server, &["apply", bad_port.path()]),
        "bad port",
        &[
            &format!("{}:6:", bad_port.path()),
            "77777",
            "nothing was changed",
        ],
    );
    assert!(!line.contains('\n'));
    // The inline table left open: the parser notices on the next line.
    let syntax = File::new(&NEW.replace("action = \"drop\" }", "action = \"drop\" "));
    assert_refused(
        &pd(&lab.server, &["apply", syntax.path()]),
        "syntax",
        &[&format!("{}:7:", syntax.path())],
    );
    let gone = File::new(&NEW.replace("\"drop\" }", "\"redirect:nowhere0\" }"));
    assert_refused(
        &pd(&lab.server, &["apply", gone.path()]),
        "missing target",
        &["nowhere0", "nothing was changed"],
    );
    let unknown = File::new(&format!("{NEW}\n[interfaces.nosuch0]\n"));
    assert_refused(
        &pd(&lab.server, &["apply", unknown.path()]),
        "unknown interface",
        &["nosuch0"],
    );
    assert_eq!(rendered(&bindings(&lab)), OLD_SET);
    assert_eq!(prog_id(&lab), id);
}

#[test]
fn a_reader_polling_during_applies_never_sees_a_mix() {
    let lab = Lab::new();
    let (old, new) = (File::new(OLD), File::new(NEW));
    ok(&lab, &["apply", old.path()]);
    let done = AtomicBool::new(false);
    let (seen_old, seen_new, reads) = thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut seen_old, mut seen_new, mut reads) = (0, 0, 0);
            while !done.load(Ordering::Relaxed) {
                let now = rendered(&bindings(&lab));
                reads += 1;
                if now == OLD_SET {
                    seen_old += 1;
                } else if now == NEW_SET {
                    seen_new += 1;
                } else {
                    panic!("a mix of the two sets: {now:?}");
                }
            }
            (seen_old, seen_new, reads)
        });
        for i in 0..6 {
            let file = if i % 2 == 0 { &new } else { &old };
            ok(&lab, &["apply", file.path()]);
        }
        done.store(true, Ordering::Relaxed);
        reader.join().expect("the reader")
    });
    eprintln!("{reads} reads: {seen_old} old, {seen_new} new");
    assert!(seen_old > 0 && seen_new > 0, "the reader saw both sets");
    assert_eq!(rendered(&bindings(&lab)), OLD_SET);
}

/// Whether a datagram to udp/1000 gets through b0 now: it is counted by port-demux, then
/// received or not.
fn udp_1000_passes(lab: &Lab, sent: &mut u64) -> bool {
    let server = lab.udp_server(1000);
    let client = lab.udp_client();
    let _ = lab.send_udp(&client, 1000, 1, 8);
    *sent += 1;
    let scope = lab.server.scope();
    poll(
        "port-demux to count the datagram",
        || {
            PortDemux::open(&scope, SERVER_IF)
                .and_then(|d| d.stats())
                .map_or(0, |s| s.port(Proto::Udp, 1000).packets)
        },
        |n| n == sent,
    );
    count_datagrams(&server, SILENCE) == 1
}

#[test]
fn sigkill_during_apply_leaves_the_old_or_the_new_set() {
    let lab = Lab::new();
    let (old, new) = (File::new(OLD), File::new(NEW));
    ok(&lab, &["apply", old.path()]);
    // How long one apply that swaps takes here (process start, the program's verification):
    // the kills land from its start to one and a half times its length.
    let started = std::time::Instant::now();
    ok(&lab, &["apply", new.path()]);
    let full = started.elapsed();
    ok(&lab, &["apply", old.path()]);
    let mut sent = 0;
    let mut outcomes = Vec::new();
    let mut is_new = false;
    for step in 0..=15u32 {
        let delay = full * step / 10;
        // Always towards the other set, so that every apply swaps.
        let file = if is_new { &old } else { &new };
        let mut child = command(&lab.server, &["apply", file.path()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting apply");
        let pid = child.id();
        thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("waiting for apply");
        // No writer since the kill: readers follow the commit point (a swap the kill left
        // past its link update is read from its staging folder, whose program runs).
        let now = rendered(&bindings(&lab));
        is_new = if now == NEW_SET {
            true
        } else {
            assert_eq!(now, OLD_SET, "after a kill at {delay:?}: a mix");
            false
        };
        // The data path does what the pins say: udp/1000 drops in the old set, passes in
        // the new.
        assert_eq!(
            udp_1000_passes(&lab, &mut sent),
            is_new,
            "after a kill at {delay:?} the pins say {now:?}"
        );
        outcomes.push((delay.as_millis(), status.code(), is_new));
        // The next command completes or removes what the kill left.
        let fix = if is_new { &new } else { &old };
        ok(&lab, &["apply", fix.path()]);
        // Nothing of the killed process is left: its staging folder, if any, was completed or
        // removed by the apply above (which finishes what killed writers left even when it has
        // nothing to change).
        let root = lab.server.scope().bpffs().join("port-demux");
        let leftovers: Vec<String> = fs::read_dir(&root)
            .expect("the pins' folder")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8")
            })
            .filter(|n| n.contains(&format!("pid{pid}-")))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    eprintln!("one apply {full:?}; (kill after ms, exit code, new set): {outcomes:?}");
}

#[test]
fn a_bind_waiting_for_apply_is_refused_not_lost() {
    // The refusal text, in process: a bind holding descriptors from before a swap.
    let lab = Lab::new();
    let old = File::new(OLD);
    ok(&lab, &["apply", old.path()]);
    let stale = PortDemux::open(&lab.server.scope(), SERVER_IF).expect("open");
    let new = File::new(NEW);
    ok(&lab, &["apply", new.path()]);
    let e = stale
        .bind(
            "udp/5".parse().expect("spec"),
            &"drop".parse().expect("action"),
            &port_demux::BindOptions::default(),
        )
        .expect_err("a stale bind");
    assert!(e.to_string().contains("were replaced"), "{e}");
    assert_eq!(rendered(&bindings(&lab)), NEW_SET);
}

/// An apply killed exactly at its commit point, between the link update that swaps its program
/// in and the rename that puts its folder in place (its first rename, strace inject): with no
/// writer after it, every reader reads the new set and default action from the staging folder,
/// and the data path does what they say, counted exactly; the next apply completes it. In a
/// bpffs of its own, so that no other test's writer completes it first.
#[test]
fn apply_killed_at_its_commit_point_readers_see_the_new_set() {
    let c = CommitLab::new();
    // The new file also changes the default action: a new `META` beside the new `BINDINGS`.
    let (old, new) = (
        File::new(OLD),
        File::new(&NEW.replace("default = \"pass\"", "default = \"drop\"")),
    );
    c.ok(&["apply", old.path()]);
    assert_eq!(
        rendered_json(&c.json(&["bindings", "-i", SERVER_IF, "--json"])),
        OLD_SET
    );
    let (staging, prog) = c.kill_at_commit(&["apply", new.path()]);
    c.assert_readers_follow(&staging, prog, &NEW_SET, "drop", false);
    // udp/1000 passes (the old set dropped it), udp/7777 drops (the old default passed it),
    // udp/3000 unbound is dropped by the new default (passed by the old one).
    c.assert_traffic(&[
        (1000, 3, true, Some("pass")),
        (7777, 5, false, Some("drop")),
        (3000, 7, false, None),
    ]);
    // The next writer puts the folder in place: the file is then the running state.
    let next = c.run(&["apply", new.path()]);
    assert_eq!(
        (next.code, next.stdout.as_str()),
        (Some(0), "b0: unchanged\n"),
        "{next:?}"
    );
    c.assert_completed(prog, &NEW_SET);
    c.assert_traffic(&[(1000, 2, true, Some("pass")), (3000, 1, false, None)]);
}
