//! `load --upgrade` from layout v2 (main at 5e68fb7, IPv4 only; its object is kept as
//! `tests/fixtures/port-demux-v2.o`) to this build's layout v4, under traffic, on a real veth;
//! and from layout v3 (main before address-scoped bindings, `tests/fixtures/port-demux-v3.o`),
//! whose maps are kept while the scope maps are created empty.
//!
//! The v2 instance is made as v2's loader made it: maps pinned in
//! `/sys/fs/bpf/port-demux/netns-<inode>/<iface>/`, the program attached through a pinned
//! `bpf_link`, `META` saying layout 2. Then: every v3 verb but the upgrade refuses it with one
//! line; `load --upgrade` keeps bindings and counters and loses no frame; a layout it cannot
//! migrate is refused with one line and nothing changed.
//!
//! Needs root and the binary (`PORT_DEMUX_BIN`, or `target/debug/port-demux`).

use std::{
    fs,
    net::SocketAddrV4,
    os::fd::AsFd as _,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::Duration,
};

use aya::maps::{Array, DevMap, MapData, PerCpuArray};
use port_demux::{
    Error, PortDemux,
    common::{
        BINDINGS_LEN, GlobalCounters, Globals, Grouping, LAYOUT_VERSION, Meta, OWNER_LEN,
        PROTO_UDP, PortCounterGroup, PortCounters, ScopedBinding, action, family, port_counter_at,
        port_index,
    },
    pinned,
};
use port_demux_testkit::{
    cli::{assert_refused, json_port, pd, pd_json, pd_ok},
    netns::{
        Capture, Lab, Netns, REDIRECT_IF, SERVER_IF, SILENCE, SINK_IF, UDP_OVERHEAD,
        count_datagrams, poll, recv_datagrams, set_rcvbuf, udp_to,
    },
    v2::{bind_scoped_v4, bind_v2, load_v2, load_v3, load_v4, load_v5, load_v6, load_v7},
};

const PASS_PORT: u16 = 7911;
const DROP_PORT: u16 = 7912;
const REDIRECT_PORT: u16 = 7913;
const PAYLOAD: usize = 100;
/// The maps layout v4 added.
const SCOPE_MAPS: [&str; 5] = ["SCOPES", "SCOPE_V4", "SCOPE_V6", "SCOPED", "SCOPED_STATS"];

/// The pinned `PORT_STATS` (any layout), held open: the map outlives the folder's moves.
fn port_stats(dir: &Path) -> PerCpuArray<MapData, PortCounters> {
    PerCpuArray::try_from(aya::maps::Map::PerCpuArray(
        MapData::from_pin(dir.join("PORT_STATS")).expect("PORT_STATS"),
    ))
    .expect("a per-CPU array")
}

/// Packets counted on UDP `port` in `stats`.
fn counted(stats: &PerCpuArray<MapData, PortCounters>, port: u16) -> u64 {
    stats
        .get(&port_index(PROTO_UDP, port), 0)
        .expect("PORT_STATS entry")
        .iter()
        .map(|c| c.packets)
        .sum()
}

/// Packets counted on UDP `port` in the frozen per-CPU counters `name` pinned in `dir`, `N`
/// ports an entry (v5's `PORT_STATS` 1, v6's `PORT_STATS2` 16), 0 while there is none.
fn counted_in<const N: usize>(dir: &Path, name: &str, port: u16) -> u64 {
    let Ok(data) = MapData::from_pin(dir.join(name)) else {
        return 0;
    };
    let groups: PerCpuArray<MapData, [PortCounters; N]> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).expect("a per-CPU array");
    let n = u32::try_from(N).expect("a few ports an entry");
    let grouping = Grouping {
        groups: BINDINGS_LEN / n,
        group: n,
        tail: 0,
    };
    let (entry, element) = grouping.at(port_index(PROTO_UDP, port));
    groups
        .get(&entry, 0)
        .unwrap_or_else(|e| panic!("{name}[{entry}]: {e}"))
        .iter()
        .map(|g| g[element].packets)
        .sum()
}

/// This layout's `PORT_STATS3` pinned in `dir`, 0 while there is none: packets counted on UDP
/// `port` (after an upgrade the older layout's counters no longer move), and the IPv6 frames
/// counted in its entry.
fn counted_now(dir: &Path, port: u16) -> u64 {
    counted_now_and_ipv6(dir, port).0
}

/// See [`counted_now`].
fn counted_now_and_ipv6(dir: &Path, port: u16) -> (u64, u64) {
    let Ok(data) = MapData::from_pin(dir.join("PORT_STATS3")) else {
        return (0, 0);
    };
    let groups: PerCpuArray<MapData, PortCounterGroup> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).expect("a per-CPU array");
    let (entry, element) = port_counter_at(port_index(PROTO_UDP, port));
    let per_cpu = groups
        .get(&entry, 0)
        .unwrap_or_else(|e| panic!("PORT_STATS3[{entry}]: {e}"));
    (
        per_cpu.iter().map(|g| g.ports[element].packets).sum(),
        per_cpu.iter().map(|g| g.ipv6).sum(),
    )
}

/// Through the instance of an older layout pinned in `dir`: 20 datagrams to the passed port,
/// all received on `passed`, and 10 to the dropped one; all 30 counted in its per-port
/// counters, which `counted` reads.
fn traffic_before_upgrade(
    lab: &Lab,
    client: &std::net::UdpSocket,
    passed: &std::net::UdpSocket,
    dir: &Path,
    layout: &str,
    counted: fn(&Path, u16) -> u64,
) {
    let _ = lab.send_udp(client, PASS_PORT, 20, PAYLOAD);
    let _ = lab.send_udp(client, DROP_PORT, 10, PAYLOAD);
    assert_eq!(recv_datagrams(passed, 20).len(), 20);
    poll(
        &format!("{layout} counts 30"),
        || counted(dir, PASS_PORT) + counted(dir, DROP_PORT),
        |&n| n == 30,
    );
}

/// Packets counted on UDP `port` in the `PORT_STATS` of layouts v2-v5 pinned in `dir`.
fn counted_v5(dir: &Path, port: u16) -> u64 {
    counted_in::<1>(dir, "PORT_STATS", port)
}

/// `load b0 --upgrade` in `ns` while `client` sends datagrams of `PAYLOAD` bytes to
/// `PASS_PORT` and `DROP_PORT` in turns, from 300 pairs before the upgrade to 300 after it.
/// Every 32 pairs the sender waits until `counted` (the frames the instance counted, `base` of
/// them before this traffic) is within 128 of what it sent, so as to stay within the veth's
/// ring. Returns the upgrade's output and the pairs sent.
fn upgrade_under_traffic(
    ns: &Netns,
    lab: &Lab,
    client: &std::net::UdpSocket,
    counted: impl Fn() -> u64 + Sync,
    base: u64,
) -> (String, u64) {
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    thread::scope(|s| {
        // A failure below must stop the sender too.
        let _stop = StopOnDrop(&stop);
        let sender = s.spawn(|| {
            let data = vec![0x5a; PAYLOAD];
            let (to_pass, to_drop) = (
                SocketAddrV4::new(lab.server_addr(), PASS_PORT),
                SocketAddrV4::new(lab.server_addr(), DROP_PORT),
            );
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                client.send_to(&data, to_pass).expect("send");
                client.send_to(&data, to_drop).expect("send");
                n += 1;
                sent.store(n, Ordering::SeqCst);
                if n.is_multiple_of(32) {
                    poll("counters catching up", &counted, |&c| {
                        c + 128 >= base + 2 * n
                    });
                    thread::sleep(Duration::from_micros(200));
                }
            }
        });
        poll(
            "traffic flowing",
            || sent.load(Ordering::SeqCst),
            |&n| n >= 300,
        );
        let at_upgrade = sent.load(Ordering::SeqCst);
        let out = pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
        // Traffic goes on after the upgrade as well.
        poll(
            "traffic after the upgrade",
            || sent.load(Ordering::SeqCst),
            |&n| n >= at_upgrade + 300,
        );
        stop.store(true, Ordering::SeqCst);
        sender.join().expect("sender");
        (out, sent.load(Ordering::SeqCst))
    })
}

/// Sets the flag when dropped, also while unwinding.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn pins(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("pins")
        .map(|e| e.expect("pin").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The error `PortDemux::open` gives for an older layout's pins on `SERVER_IF` of `ns`,
/// checked to be one line that names the upgrade.
fn open_refusal(ns: &Netns) -> Error {
    match PortDemux::open(&ns.scope(), SERVER_IF) {
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n') && line.contains("upgrade"), "{line}");
            e
        }
        other => panic!("open of older pins: {other:?}"),
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: v2 traffic, the upgrade under traffic, then every check"
)]
fn upgrade_from_v2_keeps_bindings_and_counters_under_traffic() {
    assert_eq!(BINDINGS_LEN, 2 << 16);
    assert_eq!(size_of::<GlobalCounters>(), 64);
    let lab = Lab::with_redirect();
    let ns = &lab.server;
    let dir = load_v2(&lab.server, SERVER_IF);
    let v2_prog = ns.xdp_prog(SERVER_IF).expect("the v2 program is attached");
    bind_v2(&dir, DROP_PORT, action::DROP);
    bind_v2(&dir, PASS_PORT, action::PASS);
    // A redirect to c0 through devmap slot 0, as v2's `bind udp/7913 redirect:c0` made it.
    let c0 = ns.ifindex(REDIRECT_IF);
    ns.run(|| {
        let mut devmap = DevMap::try_from(aya::maps::Map::DevMap(
            MapData::from_pin(dir.join("REDIRECT")).expect("REDIRECT"),
        ))
        .expect("a devmap");
        devmap.set(0, c0, None, 0).expect("filling slot 0");
    });
    bind_v2(&dir, REDIRECT_PORT, action::REDIRECT);

    // v3 reads no v2 pins: one line saying how to migrate.
    let e = open_refusal(ns);
    assert!(matches!(e, Error::LayoutV2 { .. }), "{e:?}");
    // The library's words; the CLI adds `port-demux load b0 --upgrade`.
    assert!(!e.to_string().contains("--"), "{e}");
    assert_refused(
        &pd(ns, &["stats"]),
        "stats on v2 pins",
        &["layout version 2", "load b0 --upgrade"],
    );

    let client = lab.udp_client();
    let passed = lab.udp_server(PASS_PORT);
    set_rcvbuf(&passed, 64 << 20);
    let _dropped = lab.udp_server(DROP_PORT);
    // Traffic under v2 first.
    let before_pass =
        lab.send_udp(&client, PASS_PORT, 100, PAYLOAD) / (UDP_OVERHEAD + PAYLOAD as u64);
    let before_drop =
        lab.send_udp(&client, DROP_PORT, 50, PAYLOAD) / (UDP_OVERHEAD + PAYLOAD as u64);
    assert_eq!(recv_datagrams(&passed, 100).len(), 100);
    let stats = port_stats(&dir);
    poll(
        "v2 counts 150",
        || counted(&stats, PASS_PORT) + counted(&stats, DROP_PORT),
        |&n| n == 150,
    );

    // Then the upgrade, with datagrams going out all along. The sender paces itself on
    // what v2's `PORT_STATS` counted and, from the commit point, on the successor's
    // `PORT_STATS3` in this build's folder.
    let new_dir = ns
        .scope()
        .dir()
        .join(format!("if-{}", lab.server.ifindex(SERVER_IF)));
    let both = || {
        counted(&stats, PASS_PORT)
            + counted(&stats, DROP_PORT)
            + counted_now(&new_dir, PASS_PORT)
            + counted_now(&new_dir, DROP_PORT)
    };
    let (upgrade, pairs) = upgrade_under_traffic(ns, &lab, &client, both, 150);
    assert!(
        upgrade.starts_with("upgraded port-demux on b0: "),
        "{upgrade}"
    );
    let new_prog = ns.xdp_prog(SERVER_IF).expect("attached");
    assert_ne!(new_prog, v2_prog, "the program was replaced");

    let (sent_pass, sent_drop) = (before_pass + pairs, before_drop + pairs);
    // Every passed datagram reached the socket: none was lost while the program changed.
    assert_eq!(
        recv_datagrams(&passed, usize::try_from(sent_pass - 100).unwrap()).len() as u64,
        sent_pass - 100
    );
    let stats = poll(
        "every frame counted",
        || pd_json(ns, &["stats", "--json"]),
        |s| {
            json_port(s, "udp", PASS_PORT).0 + json_port(s, "udp", DROP_PORT).0
                >= sent_pass + sent_drop
        },
    );
    let frame = UDP_OVERHEAD + PAYLOAD as u64;
    assert_eq!(
        json_port(&stats, "udp", PASS_PORT),
        (sent_pass, sent_pass * frame),
        "{stats}"
    );
    assert_eq!(
        json_port(&stats, "udp", DROP_PORT),
        (sent_drop, sent_drop * frame),
        "{stats}"
    );
    let totals = &stats["totals"];
    assert_eq!(
        totals["outcomes"]["demuxed"],
        sent_pass + sent_drop,
        "{stats}"
    );
    assert_eq!(totals["families"]["ipv6"], 0, "{stats}");
    // The bindings made under v2, owners included.
    let bindings = pd_json(ns, &["bindings", "--json"]);
    let list = bindings["bindings"].as_array().expect("bindings");
    assert_eq!(list.len(), 3, "{bindings}");
    assert!(
        list.iter()
            .any(|b| b["first"] == REDIRECT_PORT && b["action"] == "redirect:c0"),
        "{bindings}"
    );
    // The redirect target moved to the new devmap: frames still reach it.
    let mut sink = Capture::open(lab.sink(), SINK_IF);
    let _ = lab.send_udp(&lab.udp_client(), REDIRECT_PORT, 10, PAYLOAD);
    sink.wait("10 redirected after the upgrade", |f| {
        udp_to(f, REDIRECT_PORT).0 == 10
    });
    let t = poll(
        "10 redirects counted",
        || pd_json(ns, &["stats", "--json"]),
        |s| s["totals"]["redirects"]["redirected"] == 10,
    );
    assert_eq!(t["totals"]["redirects"]["fallback"], 0, "{t}");
    for (port, act) in [(PASS_PORT, "pass"), (DROP_PORT, "drop")] {
        assert!(
            list.iter()
                .any(|b| b["first"] == port && b["action"] == act && b["owner"] == "v2"),
            "{port} {act}: {bindings}"
        );
    }
    let after = pd_json(ns, &["status", "--json"]);
    assert_eq!(after["interfaces"][0]["attached"], true, "{after}");
    // Migrated to this build's folder, keyed by the namespace's cookie and the ifindex; main's
    // folder is gone. v2's counters stay pinned beside the new ones.
    assert!(new_dir.join("GLOBALS2").exists());
    assert!(new_dir.join("PORT_STATS").exists() && new_dir.join("PORT_STATS3").exists());
    assert!(!dir.exists(), "{} left", dir.display());
    for map in SCOPE_MAPS {
        assert!(new_dir.join(map).exists(), "{map}");
    }
    assert_eq!(
        PortDemux::open(&ns.scope(), SERVER_IF)
            .expect("v4 now")
            .pin_dir(),
        new_dir
    );
    pd_ok(ns, &["unload", SERVER_IF]);
    assert!(!new_dir.exists());
}

#[test]
fn a_layout_it_cannot_migrate_is_refused_and_nothing_changes() {
    let lab = Lab::new();
    let ns = &lab.server;
    let dir = load_v2(&lab.server, SERVER_IF);
    bind_v2(&dir, DROP_PORT, action::DROP);
    let prog = ns.xdp_prog(SERVER_IF);
    let pins_before = pins(&dir);
    let mut meta_map: Array<MapData, Meta> = Array::try_from(aya::maps::Map::Array(
        MapData::from_pin(dir.join("META")).expect("META"),
    ))
    .expect("META");
    let original = meta_map.get(&0, 0).expect("META[0]");
    // A layout older than v2, and one newer than this build.
    for version in [1, LAYOUT_VERSION + 1] {
        meta_map
            .set(
                0,
                Meta {
                    layout_version: version,
                    ..original
                },
                0,
            )
            .expect("META");
        let line = assert_refused(
            &pd(ns, &["load", SERVER_IF, "--upgrade"]),
            &format!("upgrade from layout {version}"),
            &[&format!("layout version {version}")],
        );
        assert!(
            line.contains(&format!("reads version {LAYOUT_VERSION}")),
            "{line}"
        );
        assert_eq!(pins(&dir), pins_before, "layout {version}: pins changed");
        assert_eq!(
            ns.xdp_prog(SERVER_IF),
            prog,
            "layout {version}: program changed"
        );
    }
    meta_map.set(0, original, 0).expect("META");
    // A v2 folder whose PORT_STATS is not v2's: refused before anything is created.
    let real = MapData::from_pin(dir.join("PORT_STATS")).expect("PORT_STATS");
    fs::remove_file(dir.join("PORT_STATS")).expect("unpin");
    PerCpuArray::<MapData, u64>::create(16, 0)
        .expect("create")
        .pin(dir.join("PORT_STATS"))
        .expect("pin");
    assert_refused(
        &pd(ns, &["load", SERVER_IF, "--upgrade"]),
        "upgrade with a foreign PORT_STATS",
        &["layout version 0"],
    );
    assert_eq!(pins(&dir), pins_before, "pins changed");
    assert_eq!(ns.xdp_prog(SERVER_IF), prog, "program changed");
    fs::remove_file(dir.join("PORT_STATS")).expect("unpin");
    real.pin(dir.join("PORT_STATS")).expect("re-pin");
    // Restored, it migrates.
    pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
    pd_ok(ns, &["unload", SERVER_IF]);
}

/// Layout v3 (main's object before address-scoped bindings): `load --upgrade` keeps its
/// bindings and counters, creates the scope maps empty, and scoped bindings work after it.
#[test]
fn upgrade_from_v3_keeps_everything_and_adds_the_scope_maps() {
    let lab = Lab::new();
    let ns = &lab.server;
    let dir = load_v3(&lab.server, SERVER_IF);
    bind_v2(&dir, DROP_PORT, action::DROP);
    bind_v2(&dir, PASS_PORT, action::PASS);
    let e = open_refusal(ns);
    assert!(matches!(e, Error::LayoutV3 { .. }), "{e:?}");
    let client = lab.udp_client();
    let passed = lab.udp_server(PASS_PORT);
    traffic_before_upgrade(&lab, &client, &passed, &dir, "v3", counted_v5);
    let out = pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
    assert!(out.starts_with("upgraded port-demux on b0: "), "{out}");
    let new_dir = PortDemux::open(&ns.scope(), SERVER_IF)
        .expect("v4 now")
        .pin_dir()
        .to_owned();
    for map in SCOPE_MAPS {
        assert!(new_dir.join(map).exists(), "{map}");
    }
    // v3's BINDINGS, made without BPF_F_MMAPABLE and read by a batch lookup, is copied into
    // a new one of this layout (one value, mmapable): the `bindings` below come from it.
    let copied = pinned::open(&new_dir.join("BINDINGS"), true).expect("BINDINGS");
    let flags = pinned::map_flags(copied.as_fd()).expect("map info");
    assert_ne!(
        flags & pinned::BPF_F_MMAPABLE,
        0,
        "the new BINDINGS: {flags:#x}"
    );
    let stats = pd_json(ns, &["stats", "--json"]);
    let frame = UDP_OVERHEAD + PAYLOAD as u64;
    assert_eq!(
        json_port(&stats, "udp", PASS_PORT),
        (20, 20 * frame),
        "{stats}"
    );
    assert_eq!(
        json_port(&stats, "udp", DROP_PORT),
        (10, 10 * frame),
        "{stats}"
    );
    assert_eq!(stats["scoped"], serde_json::json!([]), "{stats}");
    let bindings = pd_json(ns, &["bindings", "--json"]);
    assert_eq!(
        bindings["bindings"].as_array().map(Vec::len),
        Some(2),
        "{bindings}"
    );
    // The drop port's own address drops, another passes: scoped on the upgraded instance.
    let server = format!("{}", lab.server_addr());
    pd_ok(
        ns,
        &[
            "bind",
            &format!("udp/{PASS_PORT}"),
            "drop",
            "--dst",
            &server,
        ],
    );
    let _ = lab.send_udp(&client, PASS_PORT, 5, PAYLOAD);
    let stats = poll(
        "the scoped binding to count 5",
        || pd_json(ns, &["stats", "--json"]),
        |s| s["scoped"][0]["packets"] == 5,
    );
    assert_eq!(stats["scoped"][0]["dst"], format!("{server}/32"), "{stats}");
    assert_eq!(json_port(&stats, "udp", PASS_PORT).0, 25, "{stats}");
    pd_ok(ns, &["unload", SERVER_IF]);
    assert!(!new_dir.exists());
}

/// A v4 instance (interval tables as arrays of records) with a plain and an address-scoped
/// binding: the CLI refuses it with one line naming the upgrade; `load --upgrade` copies its
/// tables into this layout's one-value maps, keeps every other map, and the scoped binding
/// goes on dropping its address, its counters carried over.
#[test]
fn upgrade_from_v4_moves_the_interval_tables_and_keeps_everything() {
    let lab = Lab::new();
    let ns = &lab.server;
    let dir = load_v4(&lab.server, SERVER_IF);
    bind_v2(&dir, PASS_PORT, action::PASS);
    let server = lab.server_addr();
    let mut owner = [0u8; OWNER_LEN];
    owner[..2].copy_from_slice(b"v4");
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&server.octets());
    bind_scoped_v4(
        &dir,
        ScopedBinding {
            index: port_index(PROTO_UDP, DROP_PORT),
            action: action::DROP,
            slot: 0,
            family: family::IPV4,
            len: 32,
            pad: [0; 2],
            addr,
            owner,
        },
    );
    assert_refused(
        &pd(ns, &["stats"]),
        "stats of v4 pins",
        &["layout version 4", "load b0 --upgrade"],
    );

    let client = lab.udp_client();
    let passed = lab.udp_server(PASS_PORT);
    let dropped = lab.udp_server(DROP_PORT);
    traffic_before_upgrade(&lab, &client, &passed, &dir, "v4", counted_v5);

    let out = pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
    assert!(out.starts_with("upgraded port-demux on b0: "), "{out}");
    let frame = UDP_OVERHEAD + PAYLOAD as u64;
    let stats = pd_json(ns, &["stats", "--json"]);
    assert_eq!(
        json_port(&stats, "udp", PASS_PORT),
        (20, 20 * frame),
        "{stats}"
    );
    assert_eq!(
        json_port(&stats, "udp", DROP_PORT),
        (10, 10 * frame),
        "{stats}"
    );
    let scoped = &stats["scoped"][0];
    assert_eq!(
        (&scoped["dst"], &scoped["packets"], &scoped["bytes"]),
        (
            &serde_json::json!(format!("{server}/32")),
            &serde_json::json!(10),
            &serde_json::json!(10 * frame)
        ),
        "{stats}"
    );
    let bindings = pd_json(ns, &["bindings", "--json"]);
    let owners: Vec<&str> = bindings["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .filter_map(|b| b["owner"].as_str())
        .collect();
    assert_eq!(owners, ["v2", "v4"], "{bindings}");

    // The copied table decides frames: the address is still dropped, and counted.
    let _ = lab.send_udp(&client, DROP_PORT, 5, PAYLOAD);
    let stats = poll(
        "the scoped binding to count 15",
        || pd_json(ns, &["stats", "--json"]),
        |s| s["scoped"][0]["packets"] == 15,
    );
    assert_eq!(json_port(&stats, "udp", DROP_PORT).0, 15, "{stats}");
    assert_eq!(count_datagrams(&dropped, SILENCE), 0, "udp/{DROP_PORT}");
    pd_ok(ns, &["unload", SERVER_IF]);
}

/// Layout v5 (one per-CPU `PORT_STATS` entry per port) and layout v6 (16 ports a 256-byte
/// `PORT_STATS2` entry): each refused with one line naming the upgrade; `load --upgrade`
/// counts into a new `PORT_STATS3` and keeps the old map, no longer written, in every total;
/// a second upgrade keeps both; `unload` removes both.
#[test]
fn upgrade_from_v5_and_v6_keeps_their_counters_beside_the_new_ones() {
    type Case = (
        fn(&Netns, &str) -> std::path::PathBuf,
        u32,
        fn(&Error) -> bool,
        fn(&Path, u16) -> u64,
        &'static str,
    );
    let cases: [Case; 2] = [
        (
            load_v5,
            5,
            |e| matches!(e, Error::LayoutV5 { .. }),
            counted_v5,
            "PORT_STATS",
        ),
        (
            load_v6,
            6,
            |e| matches!(e, Error::LayoutV6 { .. }),
            |dir, port| counted_in::<16>(dir, "PORT_STATS2", port),
            "PORT_STATS2",
        ),
    ];
    for (load, layout, refused, frozen, frozen_name) in cases {
        upgrade_keeps_frozen_counters(
            load,
            layout,
            refused,
            frozen,
            &upgraded_pins(&[frozen_name]),
        );
    }
}

/// A v6 instance that an upgrade from v5 left with v5's `PORT_STATS` beside its own counters
/// (made here by pinning such a map, with counts in it, into a v6 folder): the upgrade keeps
/// both frozen maps, and every total adds all three.
#[test]
fn upgrade_of_an_upgraded_v6_keeps_both_frozen_maps() {
    let lab = Lab::new();
    let ns = &lab.server;
    let dir = load_v6(&lab.server, SERVER_IF);
    bind_v2(&dir, DROP_PORT, action::DROP);
    // What v5 counted before that upgrade: 5 frames of 100 bytes on udp/DROP_PORT, on CPU 0.
    let mut v5: PerCpuArray<MapData, PortCounters> =
        PerCpuArray::create(BINDINGS_LEN, 0).expect("a v5 PORT_STATS");
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    let mut values = vec![PortCounters::default(); cpus];
    values[0] = PortCounters {
        packets: 5,
        bytes: 500,
    };
    v5.set(
        port_index(PROTO_UDP, DROP_PORT),
        aya::maps::PerCpuValues::try_from(values).expect("one value a CPU"),
        0,
    )
    .expect("PORT_STATS");
    v5.pin(dir.join("PORT_STATS")).expect("pinning PORT_STATS");
    let client = lab.udp_client();
    let _ = lab.send_udp(&client, DROP_PORT, 10, PAYLOAD);
    poll(
        "v6 counts 10",
        || counted_in::<16>(&dir, "PORT_STATS2", DROP_PORT),
        |&n| n == 10,
    );
    pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
    assert_eq!(pins(&dir), upgraded_pins(&["PORT_STATS", "PORT_STATS2"]));
    let _ = lab.send_udp(&client, DROP_PORT, 3, PAYLOAD);
    let frame = UDP_OVERHEAD + PAYLOAD as u64;
    let stats = poll(
        "the new frames counted",
        || pd_json(ns, &["stats", "--json"]),
        |s| json_port(s, "udp", DROP_PORT).0 == 18,
    );
    assert_eq!(
        json_port(&stats, "udp", DROP_PORT),
        (18, 500 + 13 * frame),
        "{stats}"
    );
    assert_eq!(counted_v5(&dir, DROP_PORT), 5);
    assert_eq!(counted_in::<16>(&dir, "PORT_STATS2", DROP_PORT), 10);
    assert_eq!(counted_now(&dir, DROP_PORT), 3);
    pd_ok(ns, &["unload", SERVER_IF]);
    assert!(!dir.exists(), "{} left", dir.display());
}

/// Layout v6 counted demultiplexed IPv6 frames in `GLOBALS2`'s cell, v7 in the port's
/// `PORT_STATS3` entry: across the upgrade, `stats` adds both, and each count stays where it
/// was made.
#[test]
fn upgrade_from_v6_keeps_its_ipv6_count() {
    let lab = Lab::new();
    lab.enable_ipv6();
    let ns = &lab.server;
    let dir = load_v6(&lab.server, SERVER_IF);
    bind_v2(&dir, DROP_PORT, action::DROP);
    let client = lab
        .client
        .run(|| std::net::UdpSocket::bind((lab.client_addr6(), 0)))
        .expect("client");
    let to = std::net::SocketAddrV6::new(lab.server_addr6(), DROP_PORT, 0, 0);
    let send = |n: usize| {
        for _ in 0..n {
            assert_eq!(client.send_to(&[0x5a; 100], to).expect("send"), 100);
        }
    };
    let globals2 = || -> u64 {
        let data = MapData::from_pin(dir.join("GLOBALS2")).expect("GLOBALS2");
        let map: PerCpuArray<MapData, Globals> =
            PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).expect("a per-CPU array");
        map.get(&0, 0)
            .expect("GLOBALS2[0]")
            .iter()
            .map(|g| g.frames[Globals::DEMUXED_IPV6])
            .sum()
    };
    send(12);
    poll("v6 counts 12 IPv6 frames", globals2, |&n| n == 12);
    assert_eq!(counted_in::<16>(&dir, "PORT_STATS2", DROP_PORT), 12);
    pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
    send(5);
    let stats = poll(
        "the new frames counted",
        || pd_json(ns, &["stats", "--json"]),
        |s| json_port(s, "udp", DROP_PORT).0 == 17,
    );
    assert_eq!(stats["totals"]["families"]["ipv6"], 17, "{stats}");
    assert_eq!(stats["totals"]["families"]["ipv4"], 0, "{stats}");
    assert_eq!(globals2(), 12, "GLOBALS2 moved after the upgrade");
    assert_eq!(counted_now_and_ipv6(&dir, DROP_PORT), (5, 5));
    pd_ok(ns, &["unload", SERVER_IF]);
}

/// Layout v7 (`BINDINGS` an array of one entry a port, which the program looked up): refused
/// with one line naming the upgrade; `load --upgrade`, under traffic, copies every binding,
/// owner included, into layout v8's one-value `BINDINGS` (a new map) before the new program
/// runs, and keeps `PORT_STATS3`: every passed datagram reaches its socket, none to the
/// dropped port does, and every frame is counted once.
#[test]
fn upgrade_from_v7_moves_the_bindings_under_traffic() {
    let lab = Lab::new();
    let ns = &lab.server;
    let dir = load_v7(&lab.server, SERVER_IF);
    bind_v2(&dir, PASS_PORT, action::PASS);
    bind_v2(&dir, DROP_PORT, action::DROP);
    let old_bindings = pinned::open(&dir.join("BINDINGS"), true).expect("v7's BINDINGS");
    let e = open_refusal(ns);
    assert!(matches!(e, Error::LayoutV7 { .. }), "{e:?}");
    assert_refused(
        &pd(ns, &["stats"]),
        "stats of v7 pins",
        &["layout version 7", "load b0 --upgrade"],
    );
    let client = lab.udp_client();
    let passed = lab.udp_server(PASS_PORT);
    set_rcvbuf(&passed, 64 << 20);
    let dropped = lab.udp_server(DROP_PORT);
    traffic_before_upgrade(&lab, &client, &passed, &dir, "v7", counted_now);

    let both = || counted_now(&dir, PASS_PORT) + counted_now(&dir, DROP_PORT);
    let (out, n) = upgrade_under_traffic(ns, &lab, &client, both, 30);
    assert!(out.starts_with("upgraded port-demux on b0: "), "{out}");
    // A new `BINDINGS`, of this layout's shape, in the old one's place.
    let new_bindings = pinned::open(&dir.join("BINDINGS"), true).expect("BINDINGS");
    assert_ne!(
        pinned::map_id(new_bindings.as_fd()).expect("id"),
        pinned::map_id(old_bindings.as_fd()).expect("id"),
        "BINDINGS was not replaced"
    );
    let n_usize = usize::try_from(n).expect("a count");
    assert_eq!(
        recv_datagrams(&passed, n_usize).len(),
        n_usize,
        "passed after the upgrade"
    );
    assert_eq!(count_datagrams(&dropped, SILENCE), 0, "udp/{DROP_PORT}");
    let frame = UDP_OVERHEAD + PAYLOAD as u64;
    let stats = poll(
        "every frame counted",
        || pd_json(ns, &["stats", "--json"]),
        |s| json_port(s, "udp", PASS_PORT).0 + json_port(s, "udp", DROP_PORT).0 == 30 + 2 * n,
    );
    assert_eq!(
        json_port(&stats, "udp", PASS_PORT),
        (20 + n, (20 + n) * frame),
        "{stats}"
    );
    assert_eq!(
        json_port(&stats, "udp", DROP_PORT),
        (10 + n, (10 + n) * frame),
        "{stats}"
    );
    let bindings = pd_json(ns, &["bindings", "--json"]);
    let owners: Vec<(&str, &str)> = bindings["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .filter_map(|b| Some((b["action"].as_str()?, b["owner"].as_str()?)))
        .collect();
    assert_eq!(owners, [("pass", "v2"), ("drop", "v2")], "{bindings}");
    pd_ok(ns, &["unload", SERVER_IF]);
    assert!(!dir.exists(), "{} left", dir.display());
}

/// An instance of an older layout whose per-port counters were another map (`frozen` reads
/// them): refused with one line naming the upgrade; `load --upgrade`, twice, keeps that map,
/// no longer written, in every total and counts new frames in `PORT_STATS3` only; `unload`
/// removes both.
fn upgrade_keeps_frozen_counters(
    load: fn(&Netns, &str) -> std::path::PathBuf,
    layout: u32,
    refused: fn(&Error) -> bool,
    frozen: fn(&Path, u16) -> u64,
    pins_after: &[&str],
) {
    let lab = Lab::new();
    let ns = &lab.server;
    let dir = load(&lab.server, SERVER_IF);
    bind_v2(&dir, PASS_PORT, action::PASS);
    bind_v2(&dir, DROP_PORT, action::DROP);
    let e = open_refusal(ns);
    assert!(refused(&e), "{e:?}");
    assert_refused(
        &pd(ns, &["stats"]),
        &format!("stats of v{layout} pins"),
        &[&format!("layout version {layout}"), "load b0 --upgrade"],
    );
    let client = lab.udp_client();
    let passed = lab.udp_server(PASS_PORT);
    let dropped = lab.udp_server(DROP_PORT);
    traffic_before_upgrade(&lab, &client, &passed, &dir, &format!("v{layout}"), frozen);

    let frame = UDP_OVERHEAD + PAYLOAD as u64;
    for (round, (pass, drop)) in [(20, 10), (27, 13)].into_iter().enumerate() {
        let out = pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
        assert!(
            out.starts_with("upgraded port-demux on b0: "),
            "{round}: {out}"
        );
        assert_eq!(pins(&dir)[..], pins_after[..], "round {round}");
        let stats = pd_json(ns, &["stats", "--json"]);
        assert_eq!(
            json_port(&stats, "udp", PASS_PORT),
            (pass, pass * frame),
            "round {round}: {stats}"
        );
        assert_eq!(
            json_port(&stats, "udp", DROP_PORT),
            (drop, drop * frame),
            "round {round}: {stats}"
        );
        // New frames count in the new map only; the old one stays as it was.
        let _ = lab.send_udp(&client, PASS_PORT, 7, PAYLOAD);
        let _ = lab.send_udp(&client, DROP_PORT, 3, PAYLOAD);
        assert_eq!(recv_datagrams(&passed, 7).len(), 7);
        let stats = poll(
            "the new frames counted",
            || pd_json(ns, &["stats", "--json"]),
            |s| {
                json_port(s, "udp", PASS_PORT).0 + json_port(s, "udp", DROP_PORT).0
                    == pass + drop + 10
            },
        );
        assert_eq!(
            json_port(&stats, "udp", DROP_PORT),
            (drop + 3, (drop + 3) * frame),
            "round {round}: {stats}"
        );
        assert_eq!(frozen(&dir, PASS_PORT) + frozen(&dir, DROP_PORT), 30);
        assert_eq!(
            counted_now(&dir, PASS_PORT) + counted_now(&dir, DROP_PORT),
            pass + drop + 10 - 30
        );
    }
    assert_eq!(count_datagrams(&dropped, SILENCE), 0, "udp/{DROP_PORT}");
    pd_ok(ns, &["unload", SERVER_IF]);
    assert!(!dir.exists(), "{} left", dir.display());
}

/// The pins of a v7 instance upgraded from layouts whose counters were `frozen`: v4's maps
/// but `PORT_STATS`, `PORT_STATS3`, the frozen counters, program and link, sorted.
fn upgraded_pins(frozen: &[&'static str]) -> Vec<&'static str> {
    let mut pins = vec![
        "BINDINGS",
        "GLOBALS",
        "GLOBALS2",
        "META",
        "PORT_STATS3",
        "REDIRECT",
        "SCOPED",
        "SCOPED_STATS",
        "SCOPES",
        "SCOPE_V4",
        "SCOPE_V6",
        "link",
        "prog",
    ];
    pins.extend_from_slice(frozen);
    pins.sort_unstable();
    pins
}
