//! Reliability against the real kernel: upgrades under traffic, pins of another layout, writers
//! killed mid-write, concurrent writers and readers, hostile input and users, and who may read
//! the pins. Every command is the real `port-demux` binary in its own process; every count is
//! exact.
//!
//! Needs root, `setpriv`, `unshare`, `groupadd`/`useradd`. The binary is the kit's
//! `port-demux-under-test`, which cargo builds with these tests (or `PORT_DEMUX_BIN`).

use std::{
    fmt,
    fs::{self, File},
    io,
    net::{SocketAddrV4, UdpSocket},
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::{fs::MetadataExt as _, process::ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use bytemuck::Zeroable as _;
use port_demux::{
    Action, BindOptions, BindingRange, DirLock, Error, IpNet, LoadOptions, PortDemux, Proto, Scope,
    Stats,
    common::{
        BINDINGS_LEN, Binding, GlobalCounters, LAYOUT_VERSION, Meta, OWNER_LEN, PortCounterGroup,
        action, outcome, port_counter_at, port_index,
    },
    is_bpffs, pinned,
};
use port_demux_testkit::{
    cli::{
        Run, assert_refused, bin, command, execute, json, json_port, pd, pd_json, pd_ok, program_id,
    },
    frames::ip_checksum,
    netns::{
        CLIENT_IF, Capture, HostVeth, Lab, Netns, SERVER_IF, SILENCE, TIMEOUT, UDP_OVERHEAD,
        count_datagrams, output, packet_socket, poll, recv_datagrams, run, set_rcvbuf, udp_to,
    },
};
use serde_json::Value;

/// Commands that must finish while a writer holds the lock get this long.
const PROMPTLY: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------
// Running the binary.

/// Waits for `child` for at most `limit`; kills it (by its id) and panics when it takes longer.
fn finish_within(child: Child, limit: Duration, what: &str) -> Run {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if let Ok(out) = rx.recv_timeout(limit) {
        return out.unwrap_or_else(|e| panic!("{what}: {e}")).into();
    }
    // SAFETY: kill(2) on the id of a child we started and have not reaped.
    unsafe { libc::kill(libc::pid_t::try_from(pid).expect("a pid"), libc::SIGKILL) };
    panic!("{what} did not finish within {limit:?}");
}

/// The program id `status --json` reports for `iface`, checking it is attached.
fn status_prog_id(ns: &Netns, iface: &str) -> u32 {
    let doc = pd_json(ns, &["status", "--json"]);
    let entry = doc["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|i| i["interface"] == iface)
        .unwrap_or_else(|| panic!("{iface} missing in {doc}"));
    assert_eq!(entry["attached"], true, "{doc}");
    program_id(entry)
}

// ------------------------------------------------------------------------------------------
// Reading and writing the pinned maps directly, as another tool would.

/// Every binding of the instance pinned in `dir`: 131,072 of 24 bytes, `BINDINGS`' one value,
/// read through a read-only descriptor in one lookup.
fn raw_bindings(dir: &Path) -> Vec<Binding> {
    let path = dir.join("BINDINGS");
    let fd =
        pinned::open(&path, true).unwrap_or_else(|e| panic!("BPF_OBJ_GET {}: {e}", path.display()));
    let values = pinned::read_array::<Binding>(fd.as_fd())
        .unwrap_or_else(|e| panic!("BPF_MAP_LOOKUP_ELEM {}: {e}", path.display()));
    assert_eq!(values.len(), BINDINGS_LEN as usize);
    values
}

/// The pinned `META` array, read-write through aya.
fn meta_map(dir: &Path) -> Array<MapData, Meta> {
    let data = MapData::from_pin(dir.join("META")).unwrap_or_else(|e| panic!("META: {e}"));
    Array::try_from(Map::Array(data)).unwrap_or_else(|e| panic!("META as Array<Meta>: {e}"))
}

fn read_meta(dir: &Path) -> Meta {
    meta_map(dir)
        .get(&0, 0)
        .unwrap_or_else(|e| panic!("META[0]: {e}"))
}

fn owner(label: &str) -> [u8; OWNER_LEN] {
    let mut owner = [0; OWNER_LEN];
    owner[..label.len()].copy_from_slice(label.as_bytes());
    owner
}

/// Where two dumps of `BINDINGS` first differ, for a readable failure.
fn first_difference(a: &[Binding], b: &[Binding]) -> Option<(usize, Binding, Binding)> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| (i, a[i], b[i]))
}

/// Everything a refused command must leave as it was: the raw `BINDINGS` and `META` of each
/// instance, and what `status --json` says.
#[derive(PartialEq, Eq)]
struct State {
    instances: Vec<(PathBuf, Vec<Binding>, Meta)>,
    status: Value,
}

impl State {
    fn read(ns: &Netns, dirs: &[&Path]) -> Self {
        Self {
            instances: dirs
                .iter()
                .map(|d| (d.to_path_buf(), raw_bindings(d), read_meta(d)))
                .collect(),
            status: pd_json(ns, &["status", "--json"]),
        }
    }

    fn assert_unchanged(&self, after: &Self, what: &str) {
        for ((dir, a, meta_a), (_, b, meta_b)) in self.instances.iter().zip(&after.instances) {
            assert_eq!(
                first_difference(a, b),
                None,
                "BINDINGS of {} changed after {what}",
                dir.display()
            );
            assert_eq!(
                meta_a,
                meta_b,
                "META of {} changed after {what}",
                dir.display()
            );
        }
        assert_eq!(self.status, after.status, "status changed after {what}");
        assert!(self == after, "state changed after {what}");
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bound: Vec<_> = self
            .instances
            .iter()
            .map(|(d, b, _)| (d, b.iter().filter(|x| x.action != action::UNBOUND).count()))
            .collect();
        write!(f, "State {{ bound: {bound:?}, status: {} }}", self.status)
    }
}

// ------------------------------------------------------------------------------------------
// Sockets and frames.

/// An Ethernet + IPv4 + UDP frame to `port` with `payload` bytes (valid IPv4 checksum).
fn udp_frame(port: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    let ip_len = u16::try_from(20 + 8 + payload).expect("small");
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 99, 0, 2, 10, 99, 0, 1]);
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&u16::try_from(8 + payload).expect("small").to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(f.len() + payload, 0x5a);
    f
}

/// Sends `frame` `count` times out of interface `ifindex` of the caller's namespace through an
/// `AF_PACKET` socket: no address, route or neighbour needed.
fn inject(ifindex: u32, frame: &[u8], count: usize) {
    let fd = packet_socket();
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).expect("fits");
    addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex fits");
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    for _ in 0..count {
        // SAFETY: sending a buffer we own to a sockaddr_ll of the size given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("small"),
            )
        };
        assert_eq!(
            usize::try_from(n).ok(),
            Some(frame.len()),
            "AF_PACKET send: {}",
            io::Error::last_os_error()
        );
    }
}

/// Sets a flag when dropped, also while a failed test unwinds: threads that watch it stop.
struct RaiseOnDrop<'a>(&'a AtomicBool);

impl Drop for RaiseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ------------------------------------------------------------------------------------------
// 1. Upgrades under traffic.

const UPGRADE_PASS: u16 = 7811;
const UPGRADE_DROP: u16 = 7812;
const UPGRADE_PASS_PAYLOAD: usize = 32;
const UPGRADE_DROP_PAYLOAD: usize = 48;

/// What the sender sent.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    pass: u64,
    drop: u64,
}

impl Sent {
    const fn total(self) -> u64 {
        self.pass + self.drop
    }
}

/// Frames port-demux counted on the two ports the upgrade test sends to, summed over CPUs:
/// two lookups in the pinned `PORT_STATS3`, not a read of all 131,072 ports, so the sender's
/// pacing does not depend on how fast a loaded machine reads the whole table.
fn counted_upgrade_ports(port_stats: &PerCpuArray<MapData, PortCounterGroup>) -> u64 {
    [UPGRADE_PASS, UPGRADE_DROP]
        .into_iter()
        .map(|port| {
            let (entry, element) = port_counter_at(port_index(Proto::Udp.index(), port));
            port_stats
                .get(&entry, 0)
                .unwrap_or_else(|e| panic!("PORT_STATS3[udp/{port}]: {e}"))
                .iter()
                .map(|g| g.ports[element].packets)
                .sum::<u64>()
        })
        .sum()
}

/// Sends datagrams to the passed and the dropped port (two to one) until `upgrading` is
/// cleared and at least `at_least` went out, or `abort` is raised. Never more than a window
/// ahead of what port-demux has counted, so the veth's 256-frame ring cannot overflow; and a
/// pause after each burst.
fn send_during_upgrades(
    lab: &Lab,
    demux: &PortDemux,
    upgrading: &AtomicBool,
    abort: &AtomicBool,
    progress: &AtomicU64,
    at_least: u64,
) -> Sent {
    const BURST: u64 = 32;
    const WINDOW: u64 = 128;
    const PAUSE: Duration = Duration::from_millis(1);
    let client = lab.udp_client();
    let to_pass = SocketAddrV4::new(lab.server_addr(), UPGRADE_PASS);
    let to_drop = SocketAddrV4::new(lab.server_addr(), UPGRADE_DROP);
    let (pass, drop) = ([0x11; UPGRADE_PASS_PAYLOAD], [0x22; UPGRADE_DROP_PAYLOAD]);
    let port_stats = MapData::from_pin(demux.pin_dir().join("PORT_STATS3"))
        .and_then(|data| PerCpuArray::try_from(Map::PerCpuArray(data)))
        .unwrap_or_else(|e| panic!("PORT_STATS3: {e}"));
    let mut sent = Sent::default();
    while (upgrading.load(Ordering::SeqCst) || sent.total() < at_least)
        && !abort.load(Ordering::SeqCst)
    {
        let n = if sent.total() % 3 == 2 {
            sent.drop += 1;
            client.send_to(&drop, to_drop)
        } else {
            sent.pass += 1;
            client.send_to(&pass, to_pass)
        };
        assert!(n.is_ok(), "sending datagram {}: {n:?}", sent.total());
        progress.store(sent.total(), Ordering::SeqCst);
        if sent.total().is_multiple_of(BURST) {
            let total = sent.total();
            poll(
                &format!(
                    "port-demux to count {} of {total} frames",
                    total.saturating_sub(WINDOW)
                ),
                || counted_upgrade_ports(&port_stats),
                |&counted| counted + WINDOW >= total,
            );
            thread::sleep(PAUSE);
        }
    }
    sent
}

/// Receives datagrams on `sock` until `expected` (set once known) arrived, `abort` is raised,
/// or nothing arrived for [`TIMEOUT`] after `expected` was set. Returns (datagrams, of which
/// with the wrong length).
fn receive_all(
    sock: &UdpSocket,
    len: usize,
    expected: &AtomicU64,
    abort: &AtomicBool,
) -> (u64, u64) {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    let (mut got, mut wrong) = (0u64, 0u64);
    let mut idle_since = Instant::now();
    loop {
        if got >= expected.load(Ordering::SeqCst) || abort.load(Ordering::SeqCst) {
            return (got, wrong);
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                got += 1;
                wrong += u64::from(n != len);
                idle_since = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if expected.load(Ordering::SeqCst) != u64::MAX && idle_since.elapsed() > TIMEOUT {
                    return (got, wrong);
                }
            }
            Err(e) => panic!("receiving: {e}"),
        }
    }
}

/// `port-demux load b0 --upgrade` as its own process; returns (new id, old id) as printed.
fn upgrade_once(ns: &Netns) -> (u32, u32) {
    let out = pd_ok(ns, &["load", SERVER_IF, "--upgrade"]);
    assert!(out.starts_with("upgraded port-demux on b0: "), "{out}");
    let number_after = |key: &str| -> u32 {
        let rest = &out[out.find(key).unwrap_or_else(|| panic!("{key:?} in {out}")) + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|e| panic!("{key:?} in {out}: {e}"))
    };
    (number_after("program id "), number_after("replaced "))
}

/// Ten upgrades, each checked; returns the frames port-demux counted during each.
fn ten_upgrades(ns: &Netns, demux: &PortDemux, first_id: u32) -> Vec<u64> {
    let mut ids = vec![first_id];
    let mut during = Vec::new();
    for round in 1..=10 {
        let before = demux.totals().expect("totals").packets;
        let (new_id, old_id) = upgrade_once(ns);
        let after = demux.totals().expect("totals").packets;
        during.push(after - before);
        let previous = *ids.last().expect("an id");
        assert_eq!(old_id, previous, "upgrade {round} replaced another program");
        assert!(
            !ids.contains(&new_id),
            "upgrade {round} reused id {new_id}: {ids:?}"
        );
        assert_eq!(
            status_prog_id(ns, SERVER_IF),
            new_id,
            "status after upgrade {round}"
        );
        assert_eq!(
            ns.xdp_prog(SERVER_IF),
            Some(new_id),
            "ip link after upgrade {round}"
        );
        ids.push(new_id);
    }
    during
}

#[test]
fn upgrades_under_traffic_lose_nothing() {
    const AT_LEAST: u64 = 20_000;
    let lab = Lab::new();
    let ns = &lab.server;
    pd_ok(ns, &["load", SERVER_IF]);
    pd_ok(ns, &["bind", "udp/7811", "pass", "--owner", "upgrades"]);
    pd_ok(ns, &["bind", "udp/7812", "drop"]);
    let demux = PortDemux::open(&ns.scope(), SERVER_IF).expect("open");
    let dir = demux.pin_dir().to_owned();
    let (bindings_before, raw_before) = (pd_json(ns, &["bindings", "--json"]), raw_bindings(&dir));
    let first_id = status_prog_id(ns, SERVER_IF);
    assert_eq!(ns.xdp_prog(SERVER_IF), Some(first_id));

    let passed = lab.udp_server(UPGRADE_PASS);
    // A receive buffer no test fills: a datagram the socket dropped would read as a loss.
    set_rcvbuf(&passed, 64 << 20);
    let dropped = lab.udp_server(UPGRADE_DROP);
    let sent_capture = Capture::open_sent(&lab.client, CLIENT_IF);
    let received_capture = Capture::open(&lab.server, SERVER_IF);

    let (upgrading, abort, stop_draining) = (
        AtomicBool::new(true),
        AtomicBool::new(false),
        AtomicBool::new(false),
    );
    let (progress, expected_pass) = (AtomicU64::new(0), AtomicU64::new(u64::MAX));
    let started = Instant::now();
    let (sent, during, (delivered, wrong_len), captures) = thread::scope(|s| {
        let _abort = RaiseOnDrop(&abort);
        let sending =
            s.spawn(|| send_during_upgrades(&lab, &demux, &upgrading, &abort, &progress, AT_LEAST));
        let receiving =
            s.spawn(|| receive_all(&passed, UPGRADE_PASS_PAYLOAD, &expected_pass, &abort));
        let draining = s.spawn(|| {
            let (mut a, mut b) = (sent_capture, received_capture);
            while !stop_draining.load(Ordering::SeqCst) && !abort.load(Ordering::SeqCst) {
                a.read_for(Duration::from_millis(2));
                b.read_for(Duration::from_millis(2));
            }
            (a, b)
        });
        // Traffic flows before the first upgrade starts.
        poll(
            "the first 1000 datagrams",
            || progress.load(Ordering::SeqCst),
            |&n| n >= 1000,
        );
        let during = ten_upgrades(ns, &demux, first_id);
        upgrading.store(false, Ordering::SeqCst);
        let sent = sending.join().expect("sender");
        expected_pass.store(sent.pass, Ordering::SeqCst);
        let delivered = receiving.join().expect("receiver");
        // Every frame went through XDP before the captures stop being drained.
        poll(
            &format!("{} frames counted", sent.total()),
            || demux.totals().expect("totals").packets,
            |&n| n >= sent.total(),
        );
        stop_draining.store(true, Ordering::SeqCst);
        let captures = draining.join().expect("drainer");
        (sent, during, delivered, captures)
    });
    let elapsed = started.elapsed();
    eprintln!(
        "upgrades_under_traffic: {} datagrams ({} to udp/{UPGRADE_PASS}, {} to udp/{UPGRADE_DROP}) in {elapsed:?}; frames counted during each upgrade: {during:?}",
        sent.total(),
        sent.pass,
        sent.drop
    );
    assert!(sent.total() >= AT_LEAST, "{sent:?}");
    for (round, n) in during.iter().enumerate() {
        assert!(*n > 0, "no frame went through during upgrade {}", round + 1);
    }

    // The sockets: every passed datagram delivered, none of the dropped ones.
    assert_eq!(
        (delivered, wrong_len),
        (sent.pass, 0),
        "datagrams on udp/{UPGRADE_PASS}"
    );
    assert_eq!(
        count_datagrams(&passed, SILENCE),
        0,
        "more on udp/{UPGRADE_PASS}"
    );
    assert_eq!(
        count_datagrams(&dropped, SILENCE),
        0,
        "udp/{UPGRADE_DROP} is dropped"
    );
    assert_counted_exactly(ns, &demux, sent, captures);

    assert_eq!(pd_json(ns, &["bindings", "--json"]), bindings_before);
    assert_eq!(
        first_difference(&raw_before, &raw_bindings(&dir)),
        None,
        "BINDINGS"
    );
    drop(demux);
    pd_ok(ns, &["unload", SERVER_IF]);
}

/// Every frame sent was seen by a0's capture, counted once by port-demux on its port and in
/// the totals, and (the passed ones) seen by b0's capture.
fn assert_counted_exactly(
    ns: &Netns,
    demux: &PortDemux,
    sent: Sent,
    (mut sent_capture, mut received_capture): (Capture, Capture),
) {
    // The captures: a0 sent exactly these frames; b0's stack got exactly the passed ones.
    let pass_bytes = sent.pass * (UDP_OVERHEAD + UPGRADE_PASS_PAYLOAD as u64);
    let drop_bytes = sent.drop * (UDP_OVERHEAD + UPGRADE_DROP_PAYLOAD as u64);
    let by_a0 = sent_capture.wait("every frame a0 sent", |f| f.len() as u64 >= sent.total());
    assert_eq!(by_a0.len() as u64, sent.total(), "frames a0 sent");
    assert_eq!(
        udp_to(by_a0, UPGRADE_PASS),
        (sent.pass, pass_bytes),
        "a0 sent"
    );
    assert_eq!(
        udp_to(by_a0, UPGRADE_DROP),
        (sent.drop, drop_bytes),
        "a0 sent"
    );
    let to_stack = received_capture.wait("passed frames on b0", |f| f.len() as u64 >= sent.pass);
    assert_eq!(
        to_stack.len() as u64,
        sent.pass,
        "frames b0's stack received"
    );
    assert_eq!(
        udp_to(to_stack, UPGRADE_PASS),
        (sent.pass, pass_bytes),
        "b0 received"
    );
    assert_eq!(
        sent_capture.take_drops(),
        0,
        "the a0 capture dropped frames"
    );
    assert_eq!(
        received_capture.take_drops(),
        0,
        "the b0 capture dropped frames"
    );

    // The counters survived every upgrade: nothing reset, nothing missed.
    let stats = demux.stats().expect("stats");
    let port = |p: u16| {
        stats
            .ports
            .iter()
            .find(|x| x.proto == Proto::Udp && x.port == p)
            .map(|x| (x.packets, x.bytes))
    };
    assert_eq!(
        port(UPGRADE_PASS),
        Some((sent.pass, pass_bytes)),
        "udp/{UPGRADE_PASS}"
    );
    assert_eq!(
        port(UPGRADE_DROP),
        Some((sent.drop, drop_bytes)),
        "udp/{UPGRADE_DROP}"
    );
    assert_eq!(
        stats.ports.len(),
        2,
        "ports with counters: {:?}",
        stats.ports
    );
    let t = &stats.totals;
    assert_eq!(t.packets, sent.total(), "{t:?}");
    assert_eq!(t.outcomes.iter().sum::<u64>(), t.packets, "{t:?}");
    assert_eq!(t.outcomes[outcome::DEMUXED], t.packets, "{t:?}");
    assert_eq!(t.demuxed_bytes, pass_bytes + drop_bytes, "{t:?}");
    assert_eq!((t.redirected, t.redirect_fallback), (0, 0), "{t:?}");
    let cli = pd_json(ns, &["stats", "--json"]);
    assert_eq!(
        json_port(&cli, "udp", UPGRADE_PASS),
        (sent.pass, pass_bytes)
    );
    assert_eq!(cli["totals"]["packets"], sent.total(), "{cli}");
}

// ------------------------------------------------------------------------------------------
// 2. Pins of another layout.

/// A map pinned in place of `GLOBALS`: what it is, and how to create and pin it.
type Impostor = (&'static str, fn(&Path));

fn assert_layout_error(scope: &Scope, dir: &Path, found: u32, what: &str) {
    match PortDemux::open(scope, SERVER_IF) {
        Err(Error::Layout {
            path,
            found: f,
            expected,
        }) => {
            assert_eq!(
                (path.as_path(), f, expected),
                (dir, found, LAYOUT_VERSION),
                "{what}"
            );
        }
        other => panic!("{what}: open gave {other:?}, not a layout error"),
    }
}

/// The CLI refuses every verb on the instance with one line naming the layout versions, and
/// changes nothing.
fn assert_cli_refuses_layout(lab: &Lab, dir: &Path, found: u32, what: &str) {
    let ns = &lab.server;
    let (raw_before, meta_before) = (raw_bindings(dir), read_meta(dir));
    let prog = ns.xdp_prog(SERVER_IF);
    let found = format!("layout version {found}");
    let expected = format!("reads version {LAYOUT_VERSION}");
    for args in [
        &["bind", "udp/7902", "drop"][..],
        &["unbind", "udp/7901"],
        &["stats"],
        &["bindings"],
        &["status"],
        &["load", SERVER_IF, "--upgrade"],
    ] {
        let what = format!("{what}: port-demux {}", args.join(" "));
        assert_refused(&pd(ns, args), &what, &[&found, &expected]);
        assert_eq!(
            first_difference(&raw_before, &raw_bindings(dir)),
            None,
            "{what}"
        );
        assert_eq!(read_meta(dir), meta_before, "{what}");
        assert_eq!(ns.xdp_prog(SERVER_IF), prog, "{what}");
    }
}

/// The `BPF_F_*` flags of the map pinned at `path`.
fn map_flags(path: &Path) -> u32 {
    let fd =
        pinned::open(path, true).unwrap_or_else(|e| panic!("BPF_OBJ_GET {}: {e}", path.display()));
    pinned::map_flags(fd.as_fd()).unwrap_or_else(|e| panic!("map info {}: {e}", path.display()))
}

/// Readers copy a fresh instance's `BINDINGS` through a memory mapping (the map is created
/// mmapable): what they see is what a lookup of the kernel returns, entry for entry, at both
/// ends of the table and of both protocols.
#[test]
fn bindings_read_through_the_mapping_agree_with_a_batch_lookup() {
    let lab = Lab::new();
    let ns = &lab.server;
    let (demux, _) =
        PortDemux::load(&ns.scope(), SERVER_IF, &LoadOptions::default()).expect("load");
    let bound: [(&str, Action, &str); 5] = [
        ("udp/0-9", Action::Drop, "low"),
        ("udp/1000-1999", Action::Pass, "range"),
        ("tcp/443", Action::Drop, "web"),
        ("tcp/65535", Action::Pass, ""),
        ("udp/65530-65535", Action::Drop, "top"),
    ];
    for (spec, act, label) in &bound {
        let opts = BindOptions {
            replace: false,
            owner: (*label).into(),
        };
        demux
            .bind(spec.parse().expect("spec"), act, &opts)
            .expect("bind");
    }
    // SCOPED, the scoped bindings' entries, is read the same way.
    let dst: IpNet = "192.0.2.0/24".parse().expect("prefix");
    let opts = BindOptions {
        replace: false,
        owner: "scoped".into(),
    };
    demux
        .bind_dst(
            "udp/53".parse().expect("spec"),
            &[dst],
            &Action::Drop,
            &opts,
        )
        .expect("bind --dst");
    let dir = demux.pin_dir();
    for map in ["BINDINGS", "SCOPED"] {
        assert_ne!(
            map_flags(&dir.join(map)) & pinned::BPF_F_MMAPABLE,
            0,
            "{map}"
        );
    }
    let raw = raw_bindings(dir);
    let mut seen = vec![Binding::zeroed(); BINDINGS_LEN as usize];
    for range in demux.bindings().expect("bindings") {
        if let Some(prefix) = range.dst {
            assert_eq!(
                (
                    range.ports.to_string(),
                    &range.action,
                    prefix,
                    range.owner.as_str()
                ),
                ("udp/53".to_owned(), &Action::Drop, dst, "scoped")
            );
            // The port's own entry is unbound, with the data path's SCOPED flag.
            seen[port_index(range.ports.proto.index(), 53) as usize].action = action::SCOPED;
            continue;
        }
        let act = match range.action {
            Action::Pass => action::PASS,
            Action::Drop => action::DROP,
            Action::Redirect(_) => panic!("no redirect was bound"),
        };
        for port in range.ports.ports() {
            seen[port_index(range.ports.proto.index(), port) as usize] = Binding {
                action: act,
                slot: 0,
                owner: owner(&range.owner),
            };
        }
    }
    assert_eq!(first_difference(&seen, &raw), None, "mapping against batch");
    let bound_ports = raw.iter().filter(|b| b.action != action::UNBOUND).count();
    assert_eq!(bound_ports, 10 + 1000 + 1 + 1 + 6 + 1);
    drop(demux);
    PortDemux::unload(&ns.scope(), SERVER_IF).expect("unload");
}

#[test]
fn layout_mismatch_is_refused() {
    let lab = Lab::new();
    let ns = &lab.server;
    let scope = ns.scope();
    let (demux, _) = PortDemux::load(&scope, SERVER_IF, &LoadOptions::default()).expect("load");
    demux
        .bind(
            "udp/7901".parse().expect("spec"),
            &Action::Drop,
            &BindOptions {
                replace: false,
                owner: "layout".into(),
            },
        )
        .expect("bind");
    let dir = demux.pin_dir().to_owned();
    drop(demux);
    let client = lab.udp_client();
    let _ = lab.send_udp(&client, 7901, 3, 10);

    // META says another version.
    let mut meta = meta_map(&dir);
    let original = meta.get(&0, 0).expect("META[0]");
    assert_eq!(original.layout_version, LAYOUT_VERSION);
    meta.set(
        0,
        Meta {
            layout_version: 999,
            ..original
        },
        0,
    )
    .expect("writing META");
    assert_layout_error(&scope, &dir, 999, "META version 999");
    assert_cli_refuses_layout(&lab, &dir, 999, "META version 999");
    meta.set(0, original, 0).expect("restoring META");
    let demux = PortDemux::open(&scope, SERVER_IF).expect("open after restoring META");
    assert_eq!(demux.bindings().expect("bindings").len(), 1);
    drop(demux);

    // GLOBALS replaced by maps of another value size, type or length. The program keeps its
    // own map: the pin is only how a loader finds it.
    let globals = dir.join("GLOBALS");
    let real = MapData::from_pin(&globals).expect("GLOBALS");
    fs::remove_file(&globals).expect("unpinning GLOBALS");
    let impostors: [Impostor; 3] = [
        ("a per-CPU array of u64", |p| {
            PerCpuArray::<MapData, u64>::create(1, 0)
                .expect("creating")
                .pin(p)
                .expect("pinning");
        }),
        ("a plain array of GlobalCounters", |p| {
            Array::<MapData, GlobalCounters>::create(1, 0)
                .expect("creating")
                .pin(p)
                .expect("pinning");
        }),
        ("a per-CPU array of two GlobalCounters", |p| {
            PerCpuArray::<MapData, GlobalCounters>::create(2, 0)
                .expect("creating")
                .pin(p)
                .expect("pinning");
        }),
    ];
    for (what, pin) in &impostors {
        pin(&globals);
        let what = format!("GLOBALS replaced by {what}");
        assert_layout_error(&scope, &dir, 0, &what);
        assert_cli_refuses_layout(&lab, &dir, 0, &what);
        fs::remove_file(&globals).expect("unpinning the impostor");
    }
    // Frames while the pin was away still count: the data path never used the pin.
    let _ = lab.send_udp(&client, 7901, 4, 10);
    real.pin(&globals).expect("re-pinning GLOBALS");
    let demux = PortDemux::open(&scope, SERVER_IF).expect("open after restoring GLOBALS");
    let stats = poll(
        "7 frames counted",
        || demux.stats().expect("stats"),
        |s| s.totals.packets >= 7,
    );
    let t = &stats.totals;
    assert_eq!(t.packets, 7, "{t:?}");
    assert_eq!(t.outcomes[outcome::DEMUXED], 7, "{t:?}");
    assert_eq!((t.redirected, t.redirect_fallback), (0, 0), "{t:?}");
    drop(demux);
    PortDemux::unload(&scope, SERVER_IF).expect("unload");
}

// ------------------------------------------------------------------------------------------
// 3. Writers killed mid-write.

/// Whether the flock every writer takes on `dir` is free now (taking and releasing it).
fn lock_is_free(dir: &Path) -> bool {
    let file = File::open(dir).expect("opening the pin folder");
    // SAFETY: flock on a descriptor we hold; closing it releases the lock.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[test]
fn sigkill_mid_bind_leaves_consistent_state() {
    const ROUNDS: u64 = 20;
    let lab = Lab::new();
    let ns = &lab.server;
    let scope = ns.scope();
    let (demux, _) = PortDemux::load(&scope, SERVER_IF, &LoadOptions::default()).expect("load");
    demux
        .bind(
            "udp/5353".parse().expect("spec"),
            &Action::Pass,
            &BindOptions {
                replace: false,
                owner: "keep".into(),
            },
        )
        .expect("bind");
    let dir = demux.pin_dir().to_owned();
    let baseline = raw_bindings(&dir);
    let new_value = Binding {
        action: action::DROP,
        slot: 0,
        owner: owner("killed"),
    };
    let tcp =
        port_index(Proto::Tcp.index(), 0) as usize..=port_index(Proto::Tcp.index(), 65535) as usize;
    // How long a whole bind takes here and now: the kills are spread over 0 to 1.5 times that,
    // so that some land before the write and some after.
    let started = Instant::now();
    pd_ok(ns, &["bind", "tcp/0-65535", "drop", "--owner", "killed"]);
    let whole = started.elapsed();
    pd_ok(ns, &["unbind", "tcp/0-65535"]);
    let (mut before, mut after, mut finished) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let delay = whole * 3 * u32::try_from(round).expect("few rounds")
            / 2
            / u32::try_from(ROUNDS - 1).expect("few rounds");
        let mut child = command(ns, &["bind", "tcp/0-65535", "drop", "--owner", "killed"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning bind");
        // The varied delay is what is tested, not a wait for something.
        thread::sleep(delay);
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reaping");
        let killed = status.signal() == Some(libc::SIGKILL);
        assert!(killed || status.success(), "round {round}: {status}");

        let now = raw_bindings(&dir);
        let mut written = 0;
        for (index, (b, base)) in now.iter().zip(&baseline).enumerate() {
            if tcp.contains(&index) {
                if *b == new_value {
                    written += 1;
                } else {
                    assert_eq!(*b, Binding::zeroed(), "round {round}: torn entry {index}");
                }
            } else {
                assert_eq!(
                    b, base,
                    "round {round}: entry {index} outside the range changed"
                );
            }
        }
        // One BPF_MAP_UPDATE_BATCH writes the range, and a signal does not stop it midway.
        assert!(
            written == 0 || written == 65536,
            "round {round}: {written} of 65536 entries written"
        );
        assert!(
            lock_is_free(&dir),
            "round {round}: the lock outlived the process"
        );
        match (written > 0, killed) {
            (false, _) => before.push(delay),
            (true, true) => after.push(delay),
            (true, false) => finished.push(delay),
        }
        if written > 0 {
            pd_ok(ns, &["unbind", "tcp/0-65535"]);
        }
        pd_ok(ns, &["bind", "udp/5454", "drop"]);
        pd_ok(ns, &["unbind", "udp/5454"]);
        assert_eq!(
            first_difference(&baseline, &raw_bindings(&dir)),
            None,
            "round {round}"
        );
    }
    eprintln!(
        "sigkill_mid_bind: a whole bind took {whole:?}; {ROUNDS} kills: {} before the write {before:?}, {} after it {after:?}, {} binds finished first {finished:?}",
        before.len(),
        after.len(),
        finished.len()
    );
    assert!(
        before.contains(&Duration::ZERO),
        "a kill at once landed after the write"
    );
    drop(demux);
    PortDemux::unload(&scope, SERVER_IF).expect("unload");
}

// ------------------------------------------------------------------------------------------
// 4. Concurrent writers, and readers while a writer holds the lock.

/// Starts every command at once and waits for all.
fn all_at_once(commands: Vec<Command>) -> Vec<Run> {
    let children: Vec<Child> = commands
        .into_iter()
        .map(|mut c| {
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning port-demux")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("waiting").into())
        .collect()
}

/// Whether process `pid` waits for a `flock` (an arrow line of `/proc/locks`).
fn blocked_on_flock(pid: u32) -> bool {
    fs::read_to_string("/proc/locks")
        .expect("/proc/locks")
        .lines()
        .any(|l| {
            let mut words = l.split_whitespace().skip(1);
            words.next() == Some("->")
                && words.next() == Some("FLOCK")
                && l.split_whitespace().nth(5) == Some(&pid.to_string())
        })
}

#[test]
fn concurrent_binds() {
    const DISTINCT: u16 = 32;
    const SAME: usize = 16;
    let lab = Lab::new();
    let ns = &lab.server;
    pd_ok(ns, &["load", SERVER_IF]);
    let demux = PortDemux::open(&ns.scope(), SERVER_IF).expect("open");

    let runs = all_at_once(
        (0..DISTINCT)
            .map(|i| {
                command(
                    ns,
                    &[
                        "bind",
                        &format!("udp/{}", 6000 + i),
                        "pass",
                        "--owner",
                        &format!("p{i}"),
                    ],
                )
            })
            .collect(),
    );
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.code, Some(0), "bind {i}: {run:?}");
    }
    let expected: Vec<BindingRange> = (0..DISTINCT)
        .map(|i| BindingRange {
            ports: format!("udp/{}", 6000 + i).parse().expect("spec"),
            action: Action::Pass,
            owner: format!("p{i}"),
            dst: None,
        })
        .collect();
    assert_eq!(demux.bindings().expect("bindings"), expected);

    let runs = all_at_once(
        (0..SAME)
            .map(|i| {
                command(
                    ns,
                    &["bind", "udp/6500", "drop", "--owner", &format!("r{i}")],
                )
            })
            .collect(),
    );
    let winners: Vec<usize> = (0..SAME).filter(|&i| runs[i].code == Some(0)).collect();
    assert_eq!(winners.len(), 1, "winners {winners:?}: {runs:?}");
    let winner = format!("r{}", winners[0]);
    for (i, run) in runs.iter().enumerate().filter(|(i, _)| *i != winners[0]) {
        assert_refused(
            run,
            &format!("racing bind r{i}"),
            &[&format!(
                "udp/6500 is already bound to drop (owner {winner})"
            )],
        );
        assert_eq!(run.code, Some(1), "racing bind r{i}");
    }
    let bindings = demux.bindings().expect("bindings");
    assert_eq!(bindings.len(), expected.len() + 1, "{bindings:?}");
    assert_eq!(
        bindings.last(),
        Some(&BindingRange {
            ports: "udp/6500".parse().expect("spec"),
            action: Action::Drop,
            owner: winner.clone(),
            dst: None,
        })
    );
    eprintln!(
        "concurrent_binds: {DISTINCT} distinct binds all bound; {SAME} racing binds: {winner} won, {} refused",
        SAME - 1
    );

    readers_never_block(&lab, &demux);
    drop(demux);
    pd_ok(ns, &["unload", SERVER_IF]);
}

/// While the test holds the writers' lock: a writer waits for it, and readers finish and see
/// traffic counted.
fn readers_never_block(lab: &Lab, demux: &PortDemux) {
    let ns = &lab.server;
    let server = lab.udp_server(6001);
    let client = lab.udp_client();
    let lock = DirLock::writers(demux.scope().bpffs()).expect("locking");
    let writer = command(ns, &["bind", "udp/6600", "pass"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning bind");
    let pid = writer.id();
    poll(
        &format!("bind (pid {pid}) to wait for the lock"),
        || blocked_on_flock(pid),
        |&b| b,
    );
    for args in [
        &["stats", "--json"][..],
        &["bindings", "--json"],
        &["status", "--json"],
    ] {
        let child = command(ns, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a reader");
        let what = format!("port-demux {} under the lock", args.join(" "));
        let run = finish_within(child, PROMPTLY, &what);
        let _ = json(&run, &what);
    }
    let bytes = lab.send_udp(&client, 6001, 7, 21);
    assert_eq!(recv_datagrams(&server, 7), vec![21; 7]);
    let stats = json(
        &finish_within(
            command(ns, &["stats", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning stats"),
            PROMPTLY,
            "stats after traffic",
        ),
        "stats after traffic",
    );
    assert_eq!(json_port(&stats, "udp", 6001), (7, bytes), "{stats}");
    assert!(
        blocked_on_flock(pid),
        "the writer stopped waiting while the lock was held"
    );
    drop(lock);
    let run = finish_within(writer, PROMPTLY, "bind after the lock was released");
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(demux.bindings().expect("bindings").contains(&BindingRange {
        ports: "udp/6600".parse().expect("spec"),
        action: Action::Pass,
        owner: String::new(),
        dst: None,
    }));
}

// ------------------------------------------------------------------------------------------
// 5. Hostile users.

/// Who runs a case.
#[derive(Clone, Copy, Debug)]
enum As {
    /// Root, as the tests run.
    Root,
    /// User nobody with every capability dropped.
    Nobody,
    /// Root in a private mount namespace without bpffs.
    NoBpffs,
}

fn hostile(ns: &Netns, who: As, args: &[&str]) -> Run {
    let wrapper: &[&str] = match who {
        As::Root => return pd(ns, args),
        As::Nobody => &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ],
        // `unshare -m` makes every mount private: the umount stays in its namespace.
        As::NoBpffs => &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf || exit 99; done; exec \"$@\"",
            "sh",
        ],
    };
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(bin())
        .arg("--netns")
        .arg(ns.name())
        .args(args);
    execute(cmd)
}

/// An interface in B that vanishes: `v0` (peer `v1`), port-demux loaded on it and one binding.
fn vanished_instance(ns: &Netns) -> PathBuf {
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "up"]);
    pd_ok(ns, &["load", "v0"]);
    pd_ok(
        ns,
        &["bind", "-i", "v0", "udp/5100", "drop", "--owner", "gone"],
    );
    let dir = PortDemux::open(&ns.scope(), "v0")
        .expect("v0 loaded")
        .pin_dir()
        .to_owned();
    ns.ip(&["link", "del", "v0"]);
    dir
}

const ROOT: &str = "needs root";

/// The refusals: who runs the command, its arguments, what its one line must say. Foreign XDP
/// programs are cli.rs's (`cli_refuses_a_foreign_xdp_program`).
const HOSTILE: &[(As, &[&str], &[&str])] = &[
    (
        As::Root,
        &["bind", "-i", "b0", "udp/70000", "drop"],
        &["70000", "out of range"],
    ),
    (
        As::Root,
        &["bind", "-i", "b0", "tcp/65536", "drop"],
        &["65536", "out of range"],
    ),
    (
        As::Root,
        &["bind", "-i", "b0", "udp/90-80", "drop"],
        &["udp/90-80", "backwards"],
    ),
    (
        As::Root,
        &["bind", "-i", "b0", "udp/1-2-3", "drop"],
        &["udp/1-2-3", "is not a port range"],
    ),
    (
        As::Root,
        &["unbind", "-i", "b0", "tcp/8000-80000"],
        &["80000", "out of range"],
    ),
    (
        As::Root,
        &["bind", "-i", "b0", "sctp/80", "drop"],
        &["sctp", "unknown protocol"],
    ),
    (
        As::Root,
        &["bind", "-i", "b0", "tcp/nosuchservice", "drop"],
        &["nosuchservice", "unknown tcp service"],
    ),
    (As::Root, &["load", "nosuch0"], &["nosuch0", "no interface"]),
    (
        As::Root,
        &["bind", "-i", "nosuch0", "udp/5002", "drop"],
        &["not loaded on nosuch0"],
    ),
    (As::Root, &["unload", "nosuch0"], &["not loaded on nosuch0"]),
    (
        As::Root,
        &["bind", "-i", "lo", "udp/5002", "drop"],
        &["not loaded on lo"],
    ),
    (As::Root, &["stats", "-i", "lo"], &["not loaded on lo"]),
    (
        As::Root,
        &["bind", "-i", "b0", "udp/5002", "redirect:nosuch1"],
        &["nosuch1", "no such interface"],
    ),
    (As::Root, &["load", "v0"], &["v0", "no interface"]),
    (
        As::Root,
        &["bind", "-i", "v0", "udp/5101", "drop"],
        &["v0", "not attached", "gone"],
    ),
    (
        As::Root,
        &["unbind", "-i", "v0", "udp/5100"],
        &["v0", "not attached"],
    ),
    (
        As::Root,
        &["load", "v0", "--upgrade"],
        &["v0", "not attached"],
    ),
    (As::Nobody, &["load", "b0"], &[ROOT]),
    (As::Nobody, &["load", "b0", "--upgrade"], &[ROOT]),
    (
        As::Nobody,
        &["bind", "-i", "b0", "udp/5002", "drop"],
        &[ROOT],
    ),
    (As::Nobody, &["unbind", "-i", "b0", "udp/5001"], &[ROOT]),
    (As::Nobody, &["unload", "b0"], &[ROOT]),
    (As::Nobody, &["stats", "-i", "b0"], &[ROOT]),
    (As::Nobody, &["bindings", "-i", "b0"], &[ROOT]),
    (As::Nobody, &["status"], &[ROOT]),
    (
        As::NoBpffs,
        &["stats"],
        &["not loaded", "no bpf filesystem is mounted at /sys/fs/bpf"],
    ),
    (
        As::NoBpffs,
        &["stats", "-i", "b0"],
        &["not loaded", "no bpf filesystem is mounted at /sys/fs/bpf"],
    ),
    (
        As::NoBpffs,
        &["bind", "-i", "b0", "udp/5002", "drop"],
        &["not loaded", "no bpf filesystem is mounted at /sys/fs/bpf"],
    ),
    (
        As::Root,
        &["--bpffs", "/proc/nonexistent-dir", "load", "b0"],
        &["no bpf filesystem at /proc/nonexistent-dir"],
    ),
];

#[test]
fn hostile_users_change_nothing() {
    let lab = Lab::new();
    let ns = &lab.server;
    pd_ok(ns, &["load", SERVER_IF]);
    pd_ok(ns, &["bind", "udp/5001", "pass", "--owner", "alpha"]);
    pd_ok(ns, &["bind", "tcp/8000-8099", "drop"]);
    let b0 = PortDemux::open(&ns.scope(), SERVER_IF)
        .expect("b0 loaded")
        .pin_dir()
        .to_owned();
    let v0 = vanished_instance(ns);

    let mut state = State::read(ns, &[&b0, &v0]);
    for (who, args, wanted) in HOSTILE {
        let what = format!("{who:?}: port-demux {}", args.join(" "));
        let line = assert_refused(&hostile(ns, *who, args), &what, wanted);
        eprintln!("hostile: {what} -> {line}");
        state.assert_unchanged(&State::read(ns, &[&b0, &v0]), &format!("{what} ({line})"));
    }
    assert!(
        is_bpffs(Path::new("/sys/fs/bpf")),
        "the host lost its bpffs"
    );

    // The vanished interface's instance is stale: never listed or read as a running one
    // (`status` of the namespace shows b0 alone), `status --all` shows it with what to do,
    // and `unload v0` (or `prune`) removes it.
    for args in [
        &["stats", "-i", "v0", "--json"][..],
        &["bindings", "-i", "v0", "--json"],
    ] {
        assert_refused(
            &pd(ns, args),
            &args.join(" "),
            &["v0", "not attached", "gone"],
        );
    }
    let listed = pd_json(ns, &["status", "--json"]);
    let attached: Vec<_> = listed["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| (i["interface"].clone(), i["attached"].clone()))
        .collect();
    assert_eq!(attached, [("b0".into(), true.into())]);
    let all = pd_json(ns, &["status", "--all", "--json"]);
    let v0_entry = all["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["dir"] == v0.to_str().expect("UTF-8"))
        .unwrap_or_else(|| panic!("v0 in {all}"))
        .clone();
    assert_eq!(v0_entry["state"], "interface-gone", "{all}");
    assert_eq!(v0_entry["iface"], "v0", "{all}");
    assert_eq!(v0_entry["netns"], ns.name(), "{all}");
    pd_ok(ns, &["unload", "v0"]);
    assert!(!v0.exists(), "{} left behind", v0.display());
    state.instances.truncate(1);
    let after = State::read(ns, &[&b0]);
    assert_eq!(
        first_difference(&state.instances[0].1, &after.instances[0].1),
        None
    );
    pd_ok(ns, &["unload", SERVER_IF]);
}

// ------------------------------------------------------------------------------------------
// 6. Who may read the pins.

const READERS: &str = "pdstats";
const READER: &str = "pdreader";

/// Group `pdstats` and user `pdreader` in it, removed on drop.
struct Account;

impl Account {
    fn new() -> Self {
        // Left by a run that was killed before its guard ran.
        if Command::new("id")
            .arg(READER)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            run("userdel", &[READER]);
        }
        run("groupadd", &["-f", READERS]);
        let account = Self;
        run(
            "useradd",
            &["-M", "-N", "-g", READERS, "-s", "/usr/sbin/nologin", READER],
        );
        account
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        for (cmd, name) in [("userdel", READER), ("groupdel", READERS)] {
            match Command::new(cmd).arg(name).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "{cmd} {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("cannot run {cmd}: {e}"),
            }
        }
    }
}

/// Gives folders back to root, mode 0700, on drop (the shared top folder above all).
struct RootOnly(Vec<PathBuf>);

impl Drop for RootOnly {
    fn drop(&mut self) {
        for dir in &self.0 {
            if dir.exists() {
                let _ = Command::new("chgrp").arg("root").arg(dir).status();
                let _ = Command::new("chmod").arg("0700").arg(dir).status();
            }
        }
    }
}

/// `port-demux ARGS...` as `pdreader`, group `pdstats`, no capabilities, in the host namespace.
fn as_reader(args: &[&str]) -> Run {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        READER,
        "--regid",
        READERS,
        "--init-groups",
        "--inh-caps=-all",
        "--",
    ])
    .arg(bin())
    .args(args);
    execute(cmd)
}

fn assert_root_only(path: &Path, mode: u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, mode),
        "owner, group and mode of {}",
        path.display()
    );
}

fn stats_of(stats: &Stats, port: u16) -> (u64, u64) {
    stats
        .ports
        .iter()
        .find(|p| p.proto == Proto::Udp && p.port == port)
        .map_or((0, 0), |p| (p.packets, p.bytes))
}

#[test]
fn pins_are_root_only_and_group_readable_when_granted() {
    let account = Account::new();
    let veth = HostVeth::new();
    let iface = veth.name.as_str();
    let scope = HostVeth::scope();
    let (demux, _) = PortDemux::load(&scope, iface, &LoadOptions::default()).expect("load");
    demux
        .bind(
            "udp/7001".parse().expect("spec"),
            &Action::Drop,
            &BindOptions {
                replace: false,
                owner: "granted".into(),
            },
        )
        .expect("bind");
    let iface_dir = demux.pin_dir().to_owned();
    let ns_dir = iface_dir.parent().expect("netns folder").to_owned();
    let top = ns_dir.parent().expect("port-demux folder").to_owned();
    assert_eq!(top, Path::new("/sys/fs/bpf/port-demux"));
    // The README's grant starts below the mount point, which must let others through (the
    // kernel's default for bpffs is 1777; a host that mounts it 0700 needs one more chmod).
    let mount = fs::metadata("/sys/fs/bpf").expect("/sys/fs/bpf");
    assert!(
        mount.mode() & 0o001 != 0,
        "/sys/fs/bpf is mode {:o}: others cannot reach the pins below it",
        mount.mode() & 0o7777
    );
    for dir in [&top, &ns_dir, &iface_dir] {
        assert_root_only(dir, 0o700);
    }
    let pins: Vec<PathBuf> = fs::read_dir(&iface_dir)
        .expect("pins")
        .map(|e| e.expect("pin").path())
        .collect();
    assert_eq!(pins.len(), 13, "11 maps, prog and link: {pins:?}");
    for pin in &pins {
        assert_root_only(pin, 0o600);
    }
    let bytes = count_injected(&veth, &demux);

    // Before the grant, pdreader gets nothing.
    for args in [&["stats", "-i", iface][..], &["bindings", "-i", iface]] {
        assert_refused(
            &as_reader(args),
            &format!("{args:?} before the grant"),
            &["needs root"],
        );
    }

    // The grant, as the README documents it.
    let _restore = RootOnly(vec![top.clone(), ns_dir.clone()]);
    for dir in [&top, &ns_dir, &iface_dir] {
        run("chgrp", &[READERS, dir.to_str().expect("UTF-8")]);
        run("chmod", &["0750", dir.to_str().expect("UTF-8")]);
    }
    for pin in &pins {
        run("chgrp", &[READERS, pin.to_str().expect("UTF-8")]);
        run("chmod", &["0640", pin.to_str().expect("UTF-8")]);
    }
    let raw_before = raw_bindings(&iface_dir);
    assert_reader_reads(iface, bytes);
    for args in [
        &["bind", "-i", iface, "udp/7003", "drop"][..],
        &["unbind", "-i", iface, "udp/7001"],
        &["unload", iface],
    ] {
        assert_refused(
            &as_reader(args),
            &format!("{args:?} as pdreader"),
            &["needs root"],
        );
    }
    assert_eq!(
        first_difference(&raw_before, &raw_bindings(&iface_dir)),
        None
    );
    assert_eq!(demux.bindings().expect("bindings").len(), 1);
    drop(demux);
    PortDemux::unload(&scope, iface).expect("unload");
    assert!(!iface_dir.exists(), "{} left behind", iface_dir.display());
    drop(account);
    assert!(
        output("getent", &["group"])
            .lines()
            .all(|l| !l.starts_with("pdstats:")),
        "group {READERS} left behind"
    );
}

/// Sends 9 frames to the bound udp/7001 and 4 to udp/7002 into the veth; returns the length of
/// one frame to udp/7001 once port-demux counted all 13.
fn count_injected(veth: &HostVeth, demux: &PortDemux) -> u64 {
    let frame = udp_frame(7001, 30);
    inject(HostVeth::ifindex(&veth.peer), &frame, 9);
    inject(HostVeth::ifindex(&veth.peer), &udp_frame(7002, 50), 4);
    let stats = poll(
        "13 frames counted",
        || demux.stats().expect("stats"),
        |s| s.totals.packets >= 13,
    );
    let bytes = frame.len() as u64;
    assert_eq!(stats_of(&stats, 7001), (9, 9 * bytes));
    assert_eq!(stats_of(&stats, 7002), (4, 4 * (UDP_OVERHEAD + 50)));
    assert_eq!(stats.totals.packets, 13, "{:?}", stats.totals);
    bytes
}

/// `stats` and `bindings` as pdreader: exactly what root reads.
fn assert_reader_reads(iface: &str, bytes: u64) {
    let stats = json(
        &as_reader(&["stats", "-i", iface, "--json"]),
        "stats as pdreader",
    );
    assert_eq!(json_port(&stats, "udp", 7001), (9, 9 * bytes), "{stats}");
    assert_eq!(
        json_port(&stats, "udp", 7002),
        (4, 4 * (UDP_OVERHEAD + 50)),
        "{stats}"
    );
    assert_eq!(stats["totals"]["packets"], 13, "{stats}");
    assert_eq!(stats["totals"]["outcomes"]["demuxed"], 13, "{stats}");
    let as_root = Command::new(bin())
        .args(["stats", "-i", iface, "--json"])
        .output()
        .expect("stats as root");
    assert_eq!(
        stats,
        serde_json::from_slice::<Value>(&as_root.stdout).expect("JSON")
    );
    let bindings = json(
        &as_reader(&["bindings", "-i", iface, "--json"]),
        "bindings as pdreader",
    );
    assert_eq!(
        bindings["bindings"],
        serde_json::json!([
            {"proto": "udp", "first": 7001, "last": 7001, "action": "drop", "owner": "granted", "dst": null}
        ])
    );
}
