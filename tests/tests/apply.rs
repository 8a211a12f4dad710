//! `port-demux apply` and `export` against real instances: the dry run's plan, idempotence,
//! the export/apply round trip, a bad file that changes nothing, address-scoped bindings of
//! both families obeyed by the data path after a swap, a reader polling the bindings
//! during applies that never sees a mix of two sets, and applies killed (SIGKILL) at any moment
//! that leave the old set or the new one, with the data path doing what the pins say.
//!
//! Needs root.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use port_demux::{BindingRange, IpNet, PortDemux, Proto};
use port_demux_testkit::{
    Lab, SILENCE, Sent,
    chaos::{CommitLab, rendered, rendered_json},
    cli::{assert_refused, command, pd},
    count_datagrams,
    netns::{SERVER_IF, poll, recv_datagrams, unique},
    send_udp,
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

/// Old: udp/1000-1999 drop "old", tcp/80 pass, udp/2000-2001 drop "old" on `10.0.0.0/8` and
/// `2001:db8::/32`. New: udp/1000-1999 pass "new", udp/7777 drop, udp/2000-2001 pass "new" on
/// `10.0.0.0/8`, udp/2000 drop on `2001:db8::1`.
const OLD: &str = r#"[interfaces.b0]
mode = "auto"
default = "pass"
bindings = [
    { ports = "udp/1000-1999", action = "drop", owner = "old" },
    { ports = "tcp/80", action = "pass" },
    { ports = "udp/2000-2001", action = "drop", owner = "old", dst = ["10.0.0.0/8", "2001:db8::/32"] },
]
"#;
const NEW: &str = r#"[interfaces.b0]
mode = "auto"
default = "pass"
bindings = [
    { ports = "udp/1000-1999", action = "pass", owner = "new" },
    { ports = "udp/7777", action = "drop" },
    { ports = "udp/2000-2001", action = "pass", owner = "new", dst = ["10.0.0.0/8"] },
    { ports = "udp/2000", action = "drop", dst = ["2001:db8::1"] },
]
"#;
const OLD_SET: [&str; 4] = [
    "tcp/80 pass ",
    "udp/1000-1999 drop old",
    "udp/2000-2001 drop old dst 10.0.0.0/8",
    "udp/2000-2001 drop old dst 2001:db8::/32",
];
const NEW_SET: [&str; 4] = [
    "udp/1000-1999 pass new",
    "udp/7777 drop ",
    "udp/2000-2001 pass new dst 10.0.0.0/8",
    "udp/2000 drop  dst 2001:db8::1/128",
];

#[test]
fn dry_run_idempotence_and_round_trip() {
    let lab = Lab::new();
    let (old, new) = (File::new(OLD), File::new(NEW));
    // Not loaded: the dry run plans the load and changes nothing.
    let plan = ok(&lab, &["apply", old.path(), "--dry-run"]);
    assert_eq!(
        plan,
        "b0: (bindings and default switch as one change)\n  load (mode auto, default pass, debug off)\n  + tcp/80 pass\n  + udp/1000-1999 drop owner \"old\"\n  + udp/2000-2001 dst 10.0.0.0/8 drop owner \"old\"\n  + udp/2000-2001 dst 2001:db8::/32 drop owner \"old\"\ndry run: nothing changed\n"
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
        "b0: (bindings and default switch as one change)\n  - tcp/80 pass\n  ~ udp/1000-1999 drop owner \"old\" -> pass owner \"new\"\n  + udp/7777 drop\n  ~ udp/2000-2001 dst 10.0.0.0/8 drop owner \"old\" -> pass owner \"new\"\n  - udp/2000-2001 dst 2001:db8::/32 drop owner \"old\"\n  + udp/2000 dst 2001:db8::1/128 drop\ndry run: nothing changed\n"
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
    wait_udp_counted(lab, 1000, *sent);
    count_datagrams(&server, SILENCE) == 1
}

/// Waits until port-demux has counted `packets` frames to udp/`port` (b0's per-port counter).
fn wait_udp_counted(lab: &Lab, port: u16, packets: u64) {
    let scope = lab.server.scope();
    poll(
        &format!("port-demux to count {packets} datagrams to udp/{port}"),
        || {
            PortDemux::open(&scope, SERVER_IF)
                .and_then(|d| d.stats())
                .map_or(0, |s| s.port(Proto::Udp, port).packets)
        },
        |&n| n == packets,
    );
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

/// A file for b0 with udp/5353 passed on every address and dropped on the addresses `drop`
/// (as written in the file: one address, a /32 or /128).
fn scoped_file(drop: &[String]) -> String {
    let lines: Vec<String> = drop
        .iter()
        .map(|d| {
            format!("    {{ ports = \"udp/5353\", action = \"drop\", owner = \"inside\", dst = [\"{d}\"] }},\n")
        })
        .collect();
    format!(
        "[interfaces.b0]\nmode = \"auto\"\ndefault = \"pass\"\nbindings = [\n    {{ ports = \"udp/5353\", action = \"pass\", owner = \"port\" }},\n{}]\n",
        lines.concat()
    )
}

/// Sends `counts[i]` datagrams of 100 bytes to udp/5353 on `to[i]` and checks, once the
/// per-port counter has them all, that the socket on each address received them exactly when
/// `passes[i]`. Returns what was sent to each.
fn send_to_each(
    lab: &Lab,
    sockets: &[UdpSocket],
    to: &[IpAddr],
    counts: &[u64],
    passes: &[bool],
    counted_before: u64,
) -> Vec<Sent> {
    let client4 = lab.udp_client();
    let client6 = lab
        .client
        .udp_socket(SocketAddr::from((lab.client_addr6(), 0)));
    let sent: Vec<Sent> = to
        .iter()
        .zip(counts)
        .map(|(addr, &n)| {
            let client = if addr.is_ipv4() { &client4 } else { &client6 };
            send_udp(client, SocketAddr::new(*addr, 5353), n, 100)
        })
        .collect();
    let all: u64 = sent.iter().map(|s| s.packets).sum::<u64>() + counted_before;
    wait_udp_counted(lab, 5353, all);
    for (((sock, addr), &n), &pass) in sockets.iter().zip(to).zip(counts).zip(passes) {
        let got = if pass {
            recv_datagrams(sock, usize::try_from(n).expect("small")).len()
        } else {
            count_datagrams(sock, SILENCE)
        };
        let want = if pass { n } else { 0 };
        assert_eq!(got as u64, want, "datagrams received on {addr}");
    }
    sent
}

fn scoped_counts(lab: &Lab) -> Vec<(IpNet, u64, u64)> {
    let stats = PortDemux::open(&lab.server.scope(), SERVER_IF)
        .and_then(|d| d.stats())
        .expect("stats");
    let mut all: Vec<(IpNet, u64, u64)> = stats
        .scoped
        .iter()
        .map(|s| (s.dst.expect("a prefix"), s.packets, s.bytes))
        .collect();
    all.sort_unstable();
    all
}

/// Scoped bindings of both families in the file: the dry run lists them with their prefixes,
/// the data path obeys them (real datagrams to addresses inside and outside the prefixes,
/// received or dropped, counted exactly), a second file swaps the set (a binding that stays
/// keeps its counters, a new one starts at zero), applying it again is unchanged, and the
/// export applies back unchanged.
#[test]
fn scoped_bindings_in_the_file() {
    let lab = Lab::new();
    lab.enable_ipv6();
    let (s4, s6) = (lab.server_addr(), lab.server_addr6());
    let (o4, o6) = lab.add_second_server_addrs();
    let net = |a: IpAddr| IpNet::from(a);
    // The first file drops udp/5353 on the server's first addresses, the second on its IPv4
    // first address (unchanged) and its IPv6 second one.
    let first = File::new(&scoped_file(&[s4.to_string(), s6.to_string()]));
    let second = File::new(&scoped_file(&[s4.to_string(), format!("{o6}/128")]));
    let plan = ok(&lab, &["apply", first.path(), "--dry-run"]);
    assert_eq!(
        plan,
        format!(
            "b0: (bindings and default switch as one change)\n  load (mode auto, default pass, debug off)\n  + udp/5353 pass owner \"port\"\n{}dry run: nothing changed\n",
            by_prefix([('+', s4.into()), ('+', s6.into())])
        )
    );
    assert!(lab.server.scope().loaded().expect("loaded").is_empty());
    ok(&lab, &["apply", first.path()]);

    let to: [IpAddr; 4] = [s4.into(), s6.into(), o4.into(), o6.into()];
    let sockets: Vec<UdpSocket> = to
        .iter()
        .map(|a| lab.server.udp_socket(SocketAddr::new(*a, 5353)))
        .collect();
    // Inside the prefixes: dropped; outside (the second addresses): the port's pass.
    let one = send_to_each(
        &lab,
        &sockets,
        &to,
        &[7, 5, 3, 2],
        &[false, false, true, true],
        0,
    );
    let mut want = vec![
        (net(s4.into()), one[0].packets, one[0].bytes),
        (net(s6.into()), one[1].packets, one[1].bytes),
    ];
    want.sort_unstable();
    assert_eq!(
        scoped_counts(&lab),
        want,
        "each scoped binding counts its frames"
    );

    let plan = ok(&lab, &["apply", second.path(), "--dry-run"]);
    assert_eq!(
        plan,
        format!(
            "b0: (bindings and default switch as one change)\n{}dry run: nothing changed\n",
            by_prefix([('-', s6.into()), ('+', o6.into())])
        )
    );
    let id = prog_id(&lab);
    ok(&lab, &["apply", second.path()]);
    assert_ne!(prog_id(&lab), id, "the swap replaces the program");
    // The IPv6 drop moved to the second address; the IPv4 one stayed, with its counters.
    let counted: u64 = one.iter().map(|s| s.packets).sum();
    let two = send_to_each(
        &lab,
        &sockets,
        &to,
        &[4, 6, 3, 5],
        &[false, true, true, false],
        counted,
    );
    let mut want = vec![
        (
            net(s4.into()),
            one[0].packets + two[0].packets,
            one[0].bytes + two[0].bytes,
        ),
        (net(o6.into()), two[3].packets, two[3].bytes),
    ];
    want.sort_unstable();
    assert_eq!(
        scoped_counts(&lab),
        want,
        "kept counters, a new binding from zero"
    );

    // Idempotence and the round trip.
    let id = prog_id(&lab);
    assert_eq!(ok(&lab, &["apply", second.path()]), "b0: unchanged\n");
    let exported = exported_with(&lab, &[s4.into(), o6.into()]);
    let file = File::new(&exported);
    assert_eq!(ok(&lab, &["apply", file.path()]), "b0: unchanged\n");
    assert_eq!(ok(&lab, &["export"]), exported);
    assert_eq!(prog_id(&lab), id, "unchanged: the program untouched");

    bad_prefixes_change_nothing(&lab, o4);
    assert_eq!(ok(&lab, &["export"]), exported);
    assert_eq!(prog_id(&lab), id);
    assert_eq!(scoped_counts(&lab), want);
}

/// After [`scoped_bindings_in_the_file`]: a file with a bad prefix, or with the same
/// (protocol, prefix, port) twice, is refused naming its line.
fn bad_prefixes_change_nothing(lab: &Lab, o4: Ipv4Addr) {
    let s4 = lab.server_addr();
    // A bad prefix: refused with its line, nothing changed.
    let bad = File::new(&scoped_file(&[s4.to_string(), format!("{o4}/24")]));
    let [a, b, c, _] = o4.octets();
    assert_refused(
        &pd(&lab.server, &["apply", bad.path()]),
        "host bits set",
        &[
            &format!("{}:7:", bad.path()),
            &format!("did you mean {a}.{b}.{c}.0/24?"),
            "nothing was changed",
        ],
    );
    // The same (protocol, prefix, port) twice: refused, naming both lines.
    let twice = File::new(&scoped_file(&[s4.to_string(), format!("{s4}/32")]));
    assert_refused(
        &pd(&lab.server, &["apply", twice.path()]),
        "the same prefix twice",
        &[
            &format!("{}:7:", twice.path()),
            "line 6",
            "nothing was changed",
        ],
    );
}

/// `export`'s text, checked to hold the drop of udp/5353 on `dropped` (a /32 and a /128) on
/// one line with both prefixes.
fn exported_with(lab: &Lab, dropped: &[IpAddr; 2]) -> String {
    let mut nets = dropped.map(IpNet::from);
    nets.sort_unstable();
    let dst = nets.map(|n| format!("\"{n}\""));
    let exported = ok(lab, &["export"]);
    assert!(
        exported.contains(&format!(
            "    {{ ports = \"udp/5353\", action = \"drop\", owner = \"inside\", dst = [{}] }},\n",
            dst.join(", ")
        )),
        "{exported}"
    );
    exported
}

/// The plan's lines that add (`+`) or remove (`-`) the drop of udp/5353 on each address (a /32
/// or /128), in the plan's order: by prefix.
fn by_prefix(changes: [(char, IpAddr); 2]) -> String {
    let mut lines = changes.map(|(sign, addr)| {
        let net = IpNet::from(addr);
        (
            net,
            format!("  {sign} udp/5353 dst {net} drop owner \"inside\"\n"),
        )
    });
    lines.sort();
    lines.map(|(_, line)| line).concat()
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
