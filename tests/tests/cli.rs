//! The `port-demux` binary, one process per command, against the real kernel: state lives in
//! bpffs pins and outlives every process; refusals are one line on stderr, a non-zero exit code,
//! and no change.
//!
//! Needs root. The binary is the kit's `port-demux-under-test`, which cargo builds with these
//! tests (or `PORT_DEMUX_BIN`).

use std::{fs, path::PathBuf, process::Command, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, loaded_programs},
};
use port_demux::{EBPF_OBJECT, PROGRAM};
use port_demux_testkit::{
    cli::{Cli, command, json_port, pd_json, pd_ok, pd_refused, program_id},
    netns::{
        Lab, Netns, SERVER_IF, SILENCE, UDP_OVERHEAD, count_datagrams, poll, recv_datagrams, run,
        unique,
    },
};

/// A second interface in B (a veth whose peer x1 is in B too), for a second instance or a
/// foreign program.
const OTHER_IF: &str = "x0";

fn add_other_if(ns: &Netns) {
    ns.ip(&[
        "link", "add", OTHER_IF, "type", "veth", "peer", "name", "x1",
    ]);
    ns.ip(&["link", "set", OTHER_IF, "up"]);
    ns.ip(&["link", "set", "x1", "up"]);
}

fn program_exists(id: u32) -> bool {
    loaded_programs().flatten().any(|p| p.id() == id)
}

#[test]
fn state_outlives_every_cli_process() {
    let lab = Lab::new();
    let ns = &lab.server;
    let out = pd_ok(ns, &["load", SERVER_IF]);
    assert!(out.contains("loaded port-demux on b0"), "{out}");
    pd_ok(ns, &["bind", "udp/7301", "pass"]);
    pd_ok(ns, &["bind", "-i", SERVER_IF, "udp/7302", "drop"]);

    let client = lab.udp_client();
    let passed = lab.udp_server(7301);
    let dropped = lab.udp_server(7302);
    let stats = || pd_json(ns, &["stats", "--json"]);
    let mut pass_bytes = lab.send_udp(&client, 7301, 25, 40);
    let mut drop_bytes = lab.send_udp(&client, 7302, 12, 90);
    assert_eq!(pass_bytes, 25 * (UDP_OVERHEAD + 40));
    assert_eq!(recv_datagrams(&passed, 25).len(), 25);
    let counted = poll("12 frames on udp/7302 in `stats --json`", stats, |s| {
        json_port(s, "udp", 7302).0 >= 12
    });
    assert_eq!(count_datagrams(&dropped, SILENCE), 0, "udp/7302 is dropped");
    assert_eq!(json_port(&counted, "udp", 7301), (25, pass_bytes));
    assert_eq!(json_port(&counted, "udp", 7302), (12, drop_bytes));
    assert_eq!(counted["totals"]["packets"], 37, "{counted}");
    assert_eq!(counted["totals"]["outcomes"]["demuxed"], 37, "{counted}");
    assert_eq!(
        counted["totals"]["demuxed_bytes"],
        pass_bytes + drop_bytes,
        "{counted}"
    );

    // Every CLI process has exited: the data path keeps counting, exactly what was sent.
    pass_bytes += lab.send_udp(&client, 7301, 10, 40);
    drop_bytes += lab.send_udp(&client, 7302, 5, 90);
    assert_eq!(recv_datagrams(&passed, 10).len(), 10);
    let counted = poll("17 frames on udp/7302", stats, |s| {
        json_port(s, "udp", 7302).0 >= 17
    });
    assert_eq!(json_port(&counted, "udp", 7301), (25 + 10, pass_bytes));
    assert_eq!(json_port(&counted, "udp", 7302), (12 + 5, drop_bytes));
    let totals = &counted["totals"];
    assert_eq!(totals["packets"], 52, "{counted}");
    assert_eq!(totals["outcomes"]["demuxed"], 52, "{counted}");
    assert_eq!(totals["redirects"]["redirected"], 0, "{counted}");
    assert_eq!(totals["outcomes"]["demuxed"], 52, "{counted}");

    let bindings = pd_json(ns, &["bindings", "--json"]);
    assert_eq!(
        bindings,
        serde_json::json!({
            "interface": "b0",
            "bindings": [
                {"proto": "udp", "first": 7301, "last": 7301, "action": "pass", "owner": "", "dst": null},
                {"proto": "udp", "first": 7302, "last": 7302, "action": "drop", "owner": "", "dst": null},
            ],
        })
    );
    let doc = pd_json(ns, &["status", "--json"]);
    let instances = doc["interfaces"].as_array().expect("interfaces");
    assert_eq!(instances.len(), 1, "{doc}");
    let instance = &instances[0];
    assert_eq!(instance["interface"], "b0");
    assert_eq!(instance["attached"], true);
    assert_eq!(instance["bound_ports"], 2);
    // The kernel memory it holds: at least the big arrays' values: BINDINGS' 131,072 24-byte
    // values, PORT_STATS3's 16 bytes per port and possible CPU (and a pointer per entry of
    // 16 ports), the scope maps (SCOPES' 16 bytes per port, 65,536 8-byte IPv4 and
    // 24-byte IPv6 records, 32,768 48-byte SCOPED entries and their per-CPU counters), at
    // most a quarter and 1 MiB on top: bookkeeping, small maps and program, and before Linux
    // 6.4 (whose maps report what they allocated) an estimate from key and value sizes (6.1,
    // layout 5: 18,911,232 for 15,466,496 of values on 2 CPUs).
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u64;
    let values = (1u64 << 17) * (24 + 16 * cpus + 16)
        + (1u64 << 13) * 8
        + (1u64 << 16) * (8 + 24)
        + (1u64 << 15) * (48 + 8 + 16 * cpus);
    let memlock = instance["memlock_bytes"].as_u64().expect("memlock_bytes");
    assert!(
        (values..values + values / 4 + (1 << 20)).contains(&memlock),
        "memlock_bytes {memlock}, arrays' values {values} on {cpus} possible CPUs"
    );
    let text = pd_ok(ns, &["status"]);
    let tenths = (memlock * 10 + (1 << 19)) >> 20;
    let mib = format!("{}.{} MiB", tenths / 10, tenths % 10);
    assert!(text.contains(&mib), "{mib} not in {text}");
    let prog_id = program_id(instance);
    assert!(program_exists(prog_id), "program {prog_id} is not loaded");
    assert_eq!(ns.xdp_prog(SERVER_IF), Some(prog_id), "attached to b0");
    let pins = PathBuf::from(instance["pins"].as_str().expect("pins"));
    assert!(pins.starts_with(ns.pin_dir()), "{}", pins.display());

    let out = pd_ok(ns, &["unload", SERVER_IF]);
    assert!(out.contains("unloaded port-demux from b0"), "{out}");
    assert!(!pins.exists(), "{} left behind", pins.display());
    assert!(!ns.pin_dir().exists(), "{} left", ns.pin_dir().display());
    assert_eq!(ns.xdp_prog(SERVER_IF), None, "b0 still has an XDP program");
    // The kernel frees the program once its last reference (the link pin) is gone.
    poll(
        &format!("program {prog_id} to be freed"),
        || program_exists(prog_id),
        |exists| !exists,
    );
    let out = pd_ok(ns, &["status", "--json"]);
    assert_eq!(out.trim(), r#"{"interfaces":[]}"#);

    // Without port-demux the formerly dropped port gets its datagrams.
    let _ = lab.send_udp(&client, 7302, 3, 90);
    assert_eq!(recv_datagrams(&dropped, 3), vec![90; 3]);
}

#[test]
fn cli_refusals_change_nothing() {
    let lab = Lab::new();
    // In process: parsing, refusals and output do not depend on the process boundary.
    let pd = Cli::in_process(&lab.server);
    pd.ok(&["load", SERVER_IF]);
    pd.ok(&["bind", "udp/7401", "pass", "--owner", "alpha"]);
    pd.ok(&["bind", "tcp/9000-9099", "drop"]);
    let bindings = || pd.json(&["bindings", "--json"]);
    let status = || pd.json(&["status", "--json"]);
    let (bindings_before, status_before) = (bindings(), status());
    assert_eq!(
        bindings_before["bindings"].as_array().map(Vec::len),
        Some(2)
    );

    let cases: &[(&[&str], &[&str])] = &[
        (&["bind", "udp/70000", "drop"], &["70000", "out of range"]),
        (&["bind", "sctp/80", "drop"], &["sctp", "unknown protocol"]),
        (
            &["bind", "udp/7402", "reject"],
            &["reject", "unknown action"],
        ),
        (&["load", "nosuch0"], &["nosuch0", "no interface"]),
        (
            &["bind", "-i", "lo", "udp/7402", "drop"],
            &["not loaded on lo"],
        ),
        (&["stats", "-i", "lo"], &["not loaded on lo"]),
        (
            &["bind", "udp/7401", "drop"],
            &["udp/7401", "already bound to pass", "alpha", "--replace"],
        ),
        (
            &["bind", "tcp/9050-9150", "pass"],
            &["tcp/9050-9099 are already bound to drop"],
        ),
        (&["unbind", "udp/7999"], &["udp/7999", "is not bound"]),
        (
            &["unbind", "tcp/9090-9110"],
            &["tcp/9100-9110 are not bound"],
        ),
        (
            &["bind", "udp/7403", "redirect:nosuchif"],
            &["nosuchif", "no such interface"],
        ),
        (&["load", SERVER_IF], &["already loaded on b0"]),
        (&["unload", "lo"], &["not loaded on lo"]),
        (&["bind", "udp/7404"], &["required", "<ACTION>"]),
        (
            &["load", SERVER_IF, "--mode", "turbo"],
            &["turbo", "--mode"],
        ),
    ];
    for (args, wanted) in cases {
        let line = pd.refused(args, wanted);
        assert_eq!(bindings(), bindings_before, "after {args:?}: {line}");
        assert_eq!(status(), status_before, "after {args:?}: {line}");
    }

    // What the conflict message suggests works: --replace changes the action.
    pd.ok(&["bind", "udp/7401", "drop", "--replace"]);
    let mut expected = bindings_before;
    expected["bindings"][1] = serde_json::json!(
        {"proto": "udp", "first": 7401, "last": 7401, "action": "drop", "owner": "", "dst": null}
    );
    assert_eq!(bindings(), expected);
    pd.ok(&["unload", SERVER_IF]);
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: scoped bindings made, listed, refused in every way, removed"
)]
fn cli_scoped_bindings_and_their_refusals() {
    let lab = Lab::new();
    let pd = Cli::in_process(&lab.server);
    pd.ok(&["load", SERVER_IF]);
    let out = pd.ok(&[
        "bind",
        "udp/53",
        "drop",
        "--dst",
        "192.0.2.0/24",
        "--dst",
        "2001:db8::/32",
        "--owner",
        "dns",
    ]);
    assert!(out.contains("for 192.0.2.0/24, 2001:db8::/32"), "{out}");
    pd.ok(&["bind", "udp/53-54", "pass", "--dst", "192.0.2.1"]);
    pd.ok(&["bind", "udp/53", "pass"]);
    let bindings = || pd.json(&["bindings", "--json"]);
    let stats = || pd.json(&["stats", "--json"])["scoped"].clone();
    let (bindings_before, stats_before) = (bindings(), stats());
    let dsts: Vec<&serde_json::Value> = bindings_before["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .map(|b| &b["dst"])
        .collect();
    assert_eq!(
        dsts,
        [
            &serde_json::Value::Null,
            &serde_json::json!("192.0.2.0/24"),
            &serde_json::json!("192.0.2.1/32"),
            &serde_json::json!("2001:db8::/32"),
        ],
        "{bindings_before}"
    );
    // udp/53-54 --dst 192.0.2.1 is one range.
    assert_eq!(
        bindings_before["bindings"][2]["last"], 54,
        "{bindings_before}"
    );
    let only = pd.json(&["bindings", "--json", "--dst", "2001:db8::/32"]);
    assert_eq!(only["bindings"].as_array().map(Vec::len), Some(1), "{only}");
    assert_eq!(only["bindings"][0]["owner"], "dns", "{only}");
    assert_eq!(
        stats_before.as_array().map(Vec::len),
        Some(4),
        "{stats_before}"
    );
    let filtered = pd.json(&["stats", "--json", "--dst", "192.0.2.1/32"]);
    assert_eq!(
        filtered["scoped"].as_array().map(Vec::len),
        Some(2),
        "{filtered}"
    );
    assert!(pd.ok(&["bindings"]).contains("2001:db8::/32"));

    // 3,000 ports times 11 prefixes: more scoped bindings than the table holds.
    let mut too_many = vec!["bind", "udp/10000-12999", "drop"];
    let nets: Vec<String> = (0..11).map(|i| format!("10.{i}.0.0/16")).collect();
    for net in &nets {
        too_many.extend(["--dst", net]);
    }
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["bind", "udp/53", "drop", "--dst", "192.0.2.1/24"],
            &[
                "192.0.2.1/24 has host bits set",
                "did you mean 192.0.2.0/24?",
            ],
        ),
        (
            &["bind", "udp/53", "drop", "--dst", "192.0.2.300/24"],
            &["192.0.2.300/24", "not an address prefix"],
        ),
        (
            &["bind", "udp/53", "drop", "--dst", "192.0.2.0/40"],
            &["an IPv4 prefix is at most /32"],
        ),
        (
            &["bind", "udp/53", "drop", "--dst", "::ffff:192.0.2.0/120"],
            &["IPv4-mapped", "write the IPv4 prefix 192.0.2.0/24"],
        ),
        (
            &["bind", "udp/53", "pass", "--dst", "2001:db8::/32"],
            &[
                "udp/53 to 2001:db8::/32",
                "already bound to drop",
                "dns",
                "--replace",
            ],
        ),
        (
            &["unbind", "udp/53-54", "--dst", "192.0.2.0/24"],
            &["udp/54 to 192.0.2.0/24", "is not bound"],
        ),
        (&too_many, &["no room", "33000 scoped bindings"]),
    ];
    for (args, wanted) in cases {
        let line = pd.refused(args, wanted);
        assert_eq!(bindings(), bindings_before, "after {args:?}: {line}");
        assert_eq!(stats(), stats_before, "after {args:?}: {line}");
    }
    // --replace replaces one (protocol, prefix, port); unbind --dst removes them.
    pd.ok(&[
        "bind",
        "udp/53",
        "pass",
        "--dst",
        "2001:db8::/32",
        "--replace",
    ]);
    pd.ok(&["unbind", "udp/53-54", "--dst", "192.0.2.1"]);
    pd.ok(&[
        "unbind",
        "udp/53",
        "--dst",
        "192.0.2.0/24",
        "--dst",
        "2001:db8::/32",
    ]);
    assert_eq!(bindings()["bindings"].as_array().map(Vec::len), Some(1));
    assert_eq!(stats(), serde_json::json!([]));
    pd.ok(&["unload", SERVER_IF]);
}

/// Loads port-demux's own object as a program port-demux does not manage (no pins of its
/// own), in the calling thread's namespace; `then` attaches or pins it. Returns the loader, which
/// owns the program and what `then` attached, and the program's id.
fn foreign_program(then: impl FnOnce(&mut Xdp)) -> (Ebpf, u32) {
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .expect("loading the object");
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .expect("the program")
        .try_into()
        .expect("an XDP program");
    prog.load().expect("loading the program");
    then(prog);
    let id = prog.info().expect("program info").id();
    (ebpf, id)
}

/// A pin of a program outside port-demux's folder, removed on drop.
struct ForeignPin(PathBuf);

impl ForeignPin {
    /// Port-demux's object loaded in `ns` as a foreign program and pinned outside port-demux's
    /// folder (only the pin holds it once the loader is gone); returns the pin and its id.
    fn new(ns: &Netns) -> (Self, u32) {
        let pin = Self(PathBuf::from(format!(
            "/sys/fs/bpf/pdt-{}-{}-foreign",
            std::process::id(),
            unique()
        )));
        let (_, prog_id) = ns.run(|| foreign_program(|prog| prog.pin(&pin.0).expect("pinning")));
        (pin, prog_id)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8")
    }
}

impl Drop for ForeignPin {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs::remove_file(&self.0);
        }
    }
}

#[test]
fn cli_refuses_a_foreign_xdp_program() {
    let lab = Lab::new();
    let ns = &lab.server;
    add_other_if(ns);
    pd_ok(ns, &["load", SERVER_IF]);
    pd_ok(ns, &["bind", "udp/7501", "drop"]);
    let (bindings_before, status_before) = (
        pd_json(ns, &["bindings", "--json"]),
        pd_json(ns, &["status", "--json"]),
    );
    let unchanged = |after: &str, foreign: u32| {
        assert_eq!(ns.xdp_prog(OTHER_IF), Some(foreign), "{after}");
        assert_eq!(
            pd_json(ns, &["bindings", "--json"]),
            bindings_before,
            "{after}"
        );
        assert_eq!(pd_json(ns, &["status", "--json"]), status_before, "{after}");
        assert_eq!(
            ns.scope().loaded().expect("loaded"),
            vec![SERVER_IF.to_owned()],
            "{after}"
        );
    };

    // A program this test attaches through a bpf_link it holds.
    let ifindex = ns.ifindex(OTHER_IF);
    let (ebpf, prog_id) = ns.run(|| {
        foreign_program(|prog| {
            prog.attach_to_if_index(ifindex, XdpMode::Skb)
                .expect("attaching");
        })
    });
    let id = prog_id.to_string();
    pd_refused(
        ns,
        &["load", OTHER_IF],
        &[OTHER_IF, &id, "did not load", "--force"],
    );
    unchanged("load without --force", prog_id);
    pd_refused(
        ns,
        &["load", OTHER_IF, "--force"],
        &[OTHER_IF, &id, "bpf_link"],
    );
    unchanged("load --force over a bpf_link", prog_id);
    drop(ebpf);
    // Polled: a child another test of this process is spawning holds a copy of the link's
    // descriptor from its fork until its exec.
    poll(
        "the link's program to go with the link",
        || ns.xdp_prog(OTHER_IF),
        Option::is_none,
    );

    // The same program attached over netlink (by `ip`): --force replaces it.
    let (pin, prog_id) = ForeignPin::new(ns);
    let pin_path = pin.path();
    // Not `ip -n`: it remounts /sys in a mount namespace of its own, hiding /sys/fs/bpf. A child
    // spawned from a thread inside B runs in B and sees the host's mounts.
    ns.run(|| {
        run(
            "ip",
            &[
                "link",
                "set",
                "dev",
                OTHER_IF,
                "xdpgeneric",
                "pinned",
                pin_path,
            ],
        );
    });
    let id = prog_id.to_string();
    pd_refused(
        ns,
        &["load", OTHER_IF],
        &[OTHER_IF, &id, "did not load", "--force"],
    );
    unchanged("load without --force", prog_id);
    let out = pd_ok(ns, &["load", OTHER_IF, "--force"]);
    assert!(
        out.contains(&format!("replaced XDP program id {id} on x0")),
        "{out}"
    );
    let doc = pd_json(ns, &["status", "--json"]);
    let x0 = &doc["interfaces"][1];
    assert_eq!(
        (&x0["interface"], &x0["attached"]),
        (&"x0".into(), &true.into())
    );
    assert_ne!(x0["program_id"], prog_id);
    let ours = program_id(x0);
    assert_eq!(ns.xdp_prog(OTHER_IF), Some(ours), "attached to x0");
    pd_ok(ns, &["unload", OTHER_IF]);
    pd_ok(ns, &["unload", SERVER_IF]);
}

#[test]
fn cli_asks_which_interface_when_several_are_loaded() {
    let lab = Lab::new();
    add_other_if(&lab.server);
    let pd = Cli::in_process(&lab.server);
    pd.refused(&["bindings"], &["not loaded on any interface", "load"]);
    pd.ok(&["load", SERVER_IF]);
    pd.ok(&["bind", "udp/7601", "drop"]);
    pd.ok(&["load", OTHER_IF, "--mode", "skb"]);
    let state = || {
        (
            pd.json(&["bindings", "--json", "-i", SERVER_IF]),
            pd.json(&["bindings", "--json", "-i", OTHER_IF]),
        )
    };
    let before = state();
    for args in [
        &["bindings", "--json"][..],
        &["stats"],
        &["bind", "udp/7602", "drop"],
        &["unbind", "udp/7601"],
    ] {
        let line = pd.refused(args, &["b0, x0", "-i"]);
        assert_eq!(state(), before, "after {args:?}: {line}");
    }
    pd.ok(&["unload", OTHER_IF]);
    pd.ok(&["unload", SERVER_IF]);
}

/// `load --debug` compiles the log in and `log` follows it, one record per demultiplexed frame;
/// without `--debug`, `log` refuses with one line.
#[test]
fn log_follows_the_debug_log() {
    let lab = Lab::new();
    let ns = &lab.server;
    pd_ok(ns, &["load", SERVER_IF]);
    pd_refused(ns, &["log"], &["debug logging is off", "--debug"]);
    pd_ok(ns, &["unload", SERVER_IF]);
    pd_ok(ns, &["load", SERVER_IF, "--debug"]);
    pd_ok(ns, &["bind", "udp/7444", "drop"]);
    let mut follower = command(ns, &["log"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("port-demux log");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        follower.stdout.take().expect("stdout"),
    ));
    // A watchdog: if the records never come, the follower dies and the reads below fail.
    let pid = follower.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(first.starts_with("following the log of b0"), "{first}");
    // A ring buffer has one reader: a second `log` would get nothing; it is refused instead.
    pd_refused(
        ns,
        &["log"],
        &["already follows the log of b0", &format!("pid {pid}")],
    );
    let client = lab.udp_client();
    let bytes = lab.send_udp(&client, 7444, 3, 8);
    for _ in 0..3 {
        let line = lines.next().expect("a record").expect("utf-8");
        assert_eq!(
            line,
            "DEBUG udp port 7444: action 2 (1 pass, 2 drop, 3 redirect)"
        );
    }
    follower.kill().expect("kill");
    follower.wait().expect("wait");
    let stats = pd_json(ns, &["stats", "--json"]);
    assert_eq!(json_port(&stats, "udp", 7444), (3, bytes));
}

/// Two namespaces with an interface of the same name: each has its own pins, bindings and
/// counters.
#[test]
fn same_interface_name_in_two_namespaces() {
    let (one, two) = (Lab::new(), Lab::new());
    for lab in [&one, &two] {
        pd_ok(&lab.server, &["load", SERVER_IF]);
    }
    assert_ne!(one.server.pin_dir(), two.server.pin_dir());
    pd_ok(&one.server, &["bind", "udp/7555", "drop", "--owner", "one"]);
    pd_ok(&two.server, &["bind", "udp/7555", "pass", "--owner", "two"]);
    let (c1, c2) = (one.udp_client(), two.udp_client());
    let bytes_one = one.send_udp(&c1, 7555, 4, 8);
    let bytes_two = two.send_udp(&c2, 7555, 6, 8);
    for (lab, counted, action, owner) in [
        (&one, (4, bytes_one), "drop", "one"),
        (&two, (6, bytes_two), "pass", "two"),
    ] {
        let stats = pd_json(&lab.server, &["stats", "--json"]);
        assert_eq!(json_port(&stats, "udp", 7555), counted);
        let bindings = pd_json(&lab.server, &["bindings", "--json"]);
        assert_eq!(bindings["bindings"][0]["action"], action);
        assert_eq!(bindings["bindings"][0]["owner"], owner);
    }
}

/// The lifecycle in each attach mode, every step its own process: load, bind, traffic counted,
/// `load --upgrade` (a new program; bindings and counters kept), more traffic counted on, unload,
/// and nothing left: no pins, no XDP program, both programs freed. Short and without timing
/// margins, so that `cargo xtask vm-test` runs it on every supported kernel under emulation.
#[test]
fn lifecycle_with_upgrade_in_native_and_skb_mode() {
    let lab = Lab::new();
    let ns = &lab.server;
    let client = lab.udp_client();
    let passed = lab.udp_server(7401);
    let dropped = lab.udp_server(7402);
    let instance = || {
        let doc = pd_json(ns, &["status", "--json"]);
        let instances = doc["interfaces"].as_array().expect("interfaces").clone();
        assert_eq!(instances.len(), 1, "{doc}");
        instances[0].clone()
    };
    for mode in ["native", "skb"] {
        pd_ok(ns, &["load", SERVER_IF, "--mode", mode]);
        let loaded = instance();
        assert_eq!(loaded["mode"], mode, "{loaded}");
        let first_id = program_id(&loaded);
        assert_eq!(ns.xdp_prog(SERVER_IF), Some(first_id), "{mode}: attached");
        pd_ok(ns, &["bind", "udp/7401", "pass"]);
        pd_ok(ns, &["bind", "udp/7402", "drop", "--owner", "lifecycle"]);
        let mut pass_bytes = lab.send_udp(&client, 7401, 5, 40);
        let drop_bytes = lab.send_udp(&client, 7402, 4, 90);
        assert_eq!(recv_datagrams(&passed, 5).len(), 5, "{mode}");
        let stats = || pd_json(ns, &["stats", "--json"]);
        poll("4 frames on udp/7402", stats, |s| {
            json_port(s, "udp", 7402).0 >= 4
        });
        assert_eq!(
            count_datagrams(&dropped, SILENCE),
            0,
            "{mode}: udp/7402 is dropped"
        );
        let bindings = pd_json(ns, &["bindings", "--json"]);

        let out = pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
        let upgraded = instance();
        let new_id = program_id(&upgraded);
        assert_ne!(new_id, first_id, "{mode}: {out}");
        assert_eq!(upgraded["mode"], mode, "{upgraded}");
        assert_eq!(
            ns.xdp_prog(SERVER_IF),
            Some(new_id),
            "{mode}: upgraded in place"
        );
        assert_eq!(pd_json(ns, &["bindings", "--json"]), bindings, "{mode}");
        let counted = stats();
        assert_eq!(json_port(&counted, "udp", 7401), (5, pass_bytes), "{mode}");
        assert_eq!(json_port(&counted, "udp", 7402), (4, drop_bytes), "{mode}");
        pass_bytes += lab.send_udp(&client, 7401, 3, 40);
        assert_eq!(recv_datagrams(&passed, 3).len(), 3, "{mode}");
        let counted = poll("8 frames on udp/7401", stats, |s| {
            json_port(s, "udp", 7401).0 >= 8
        });
        assert_eq!(json_port(&counted, "udp", 7401), (8, pass_bytes), "{mode}");
        assert_eq!(counted["totals"]["packets"], 12, "{mode}: {counted}");

        let pins = PathBuf::from(upgraded["pins"].as_str().expect("pins"));
        pd_ok(ns, &["unload", SERVER_IF]);
        assert!(!pins.exists(), "{mode}: {} left behind", pins.display());
        assert!(
            !ns.pin_dir().exists(),
            "{mode}: {} left",
            ns.pin_dir().display()
        );
        assert_eq!(
            ns.xdp_prog(SERVER_IF),
            None,
            "{mode}: b0 still has an XDP program"
        );
        for id in [first_id, new_id] {
            poll(
                &format!("program {id} to be freed"),
                || program_exists(id),
                |exists| !exists,
            );
        }
        assert_eq!(
            pd_ok(ns, &["status", "--json"]).trim(),
            r#"{"interfaces":[]}"#
        );
    }
}

/// A native and a generic program cannot be attached to one interface at once (the kernel says
/// "Native and generic XDP can't be active at the same time"): with port-demux native on x0, a
/// generic program over netlink is refused by the kernel, and port-demux still reads its own
/// program as the one attached. (Two programs at once, `XDP_ATTACHED_MULTI`, need an offloaded
/// one beside; the netlink module's unit tests parse those replies.)
#[test]
fn native_and_generic_at_once_is_refused_by_the_kernel_and_ours_stays_read() {
    let lab = Lab::new();
    let ns = &lab.server;
    add_other_if(ns);
    pd_ok(ns, &["load", OTHER_IF, "--mode", "native"]);
    let ours = ns.xdp_prog(OTHER_IF).expect("attached");
    let (pin, foreign) = ForeignPin::new(ns);
    let pin_path = pin.path();
    let refused = ns.run(|| {
        Command::new("ip")
            .args([
                "link",
                "set",
                "dev",
                OTHER_IF,
                "xdpgeneric",
                "pinned",
                pin_path,
            ])
            .output()
            .expect("ip")
    });
    assert!(
        !refused.status.success(),
        "the kernel took generic program {foreign} beside native {ours}: {refused:?}"
    );
    let doc = pd_json(ns, &["status", "--json"]);
    assert_eq!(doc["interfaces"][0]["attached"], true, "{doc}");
    assert_eq!(program_id(&doc["interfaces"][0]), ours, "{doc}");
    pd_ok(ns, &["bind", "-i", OTHER_IF, "udp/7601", "drop"]);
    pd_ok(ns, &["unload", OTHER_IF]);
    assert_eq!(ns.xdp_prog(OTHER_IF), None);
}

/// `--netns` that is no network namespace (a regular file, an empty name, another kind of
/// namespace, a missing name) is refused with one line by every verb, `status` included.
#[test]
fn every_verb_refuses_a_netns_that_is_not_one() {
    let verbs: [&[&str]; 9] = [
        &["status"],
        &["status", "--json"],
        &["load", "x0"],
        &["unload", "x0"],
        &["bind", "udp/7700", "drop"],
        &["unbind", "udp/7700"],
        &["bindings"],
        &["stats"],
        &["log"],
    ];
    for netns in [
        "/etc/passwd",
        "",
        "/proc/self/ns/mnt",
        "pdt-no-such-namespace",
    ] {
        for args in verbs {
            let mut cmd = Command::new(port_demux_testkit::cli::bin());
            cmd.arg("--netns").arg(netns).args(args);
            let what = format!("--netns {netns:?} {}", args.join(" "));
            port_demux_testkit::cli::assert_refused(
                &port_demux_testkit::cli::execute(cmd),
                &what,
                &["cannot open network namespace", &format!("{netns:?}")],
            );
        }
    }
}

/// Owner labels that would not print as one line (newline, escape) or do not fit the owner
/// field are refused at bind, with one line, and nothing is bound.
#[test]
fn owners_with_control_characters_or_too_long_are_refused() {
    let lab = Lab::new();
    let ns = &lab.server;
    let pd = Cli::in_process(ns);
    pd.ok(&["load", SERVER_IF]);
    let long = "o".repeat(port_demux::common::OWNER_LEN + 1);
    for (owner, wanted) in [
        ("web\nfake: line", "control characters"),
        ("\u{1b}[31mred", "control characters"),
        ("tab\there", "control characters"),
        (long.as_str(), "longer than the owner field"),
    ] {
        let line = pd.refused(&["bind", "udp/7701", "drop", "--owner", owner], &[wanted]);
        assert!(
            !line.contains('\u{1b}'),
            "the escape is printed raw: {line:?}"
        );
    }
    let fits = "o".repeat(port_demux::common::OWNER_LEN);
    pd.ok(&["bind", "udp/7701", "drop", "--owner", &fits]);
    let doc = pd.json(&["bindings", "--json"]);
    assert_eq!(doc["bindings"].as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(doc["bindings"][0]["owner"], fits.as_str());
    // A conflict names the owner on one line.
    pd.refused(
        &["bind", "udp/7701", "pass"],
        &["udp/7701 is already bound to drop", &fits, "--replace"],
    );
    pd.ok(&["unload", SERVER_IF]);
}

/// Service names resolve per protocol from /etc/services: `http` is tcp only there, so
/// `udp/http-https` is refused naming it, and binds nothing. (Needs /etc/services, as Debian's
/// netbase installs it; without it a built-in table applies, see spec.rs.)
#[test]
fn service_names_resolve_per_protocol() {
    let lab = Lab::new();
    let ns = &lab.server;
    let pd = Cli::in_process(ns);
    pd.ok(&["load", SERVER_IF]);
    pd.refused(
        &["bind", "udp/http-https", "drop"],
        &["\"http\"", "no udp entry", "tcp/80"],
    );
    assert_eq!(
        pd.json(&["bindings", "--json"])["bindings"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    pd.ok(&["bind", "tcp/http-https", "drop"]);
    pd.ok(&["unload", SERVER_IF]);
}
