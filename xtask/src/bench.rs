//! `cargo xtask bench`: what port-demux costs, measured side by side in one run.
//!
//! 1. Per-packet cost with `BPF_PROG_TEST_RUN`: the floor (an XDP program that only returns
//!    `XDP_PASS`, loaded by this bench), port-demux, xdp-filter (xdp-tools) with a port
//!    rule, the v2 program and today's (main's v3 object before address-scoped bindings), on
//!    the same frames, and address-scoped ports with 1, 100 and 10,000 prefixes; rounds interleaved, medians; each ratio is the median of the
//!    ratios within a round (the pair ran next to each other). The figure
//!    is the syscall's wall time over the repeat count: the kernel's own `duration` is whole
//!    nanoseconds, too coarse for ratios of ~25 ns figures (it is kept in the JSON).
//! 2. Control plane: `load`, `unload`, binding 65,536 ports, reading every port's stats, each
//!    one `port-demux` process as users run it; memory the maps lock.
//! 3. Live traffic: trafgen sends frames across a veth pair into port-demux in native mode;
//!    packets per second, softirq CPU time per packet, and exact counting.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{
    bpf,
    net::{Namespaces, ensure_bpffs},
    workspace,
};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// `BPF_PROG_TEST_RUN` repeat count per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Interleaved rounds; the median is reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Frames trafgen sends in the live-traffic part (0: skip it).
    #[arg(long, default_value_t = 3_000_000)]
    live_frames: u64,
    /// Leave out the control-plane loops of `load`/`unload` and the 65,536-port bind (a
    /// shorter run on a shared machine).
    #[arg(long)]
    no_control_plane: bool,
}

const NS_TX: &str = "pdbench-tx";
const NS_RX: &str = "pdbench-rx";
const BOUND_UDP: u16 = 7777;
const BOUND_TCP: u16 = 80;

/// Frames: the untagged IPv4 ones 60 bytes (the Ethernet minimum without FCS), the others
/// their headers' length.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("udp_bound_drop", ipv4(17, BOUND_UDP, &[])),
        ("tcp_bound_pass", ipv4(6, BOUND_TCP, &[])),
        ("udp_unbound", ipv4(17, 5555, &[])),
        (
            "udp_ip_options",
            ipv4(17, BOUND_UDP, &[1, 1, 1, 1, 1, 1, 1, 0]),
        ),
        ("non_ip_arp", arp()),
        // Not TCP or UDP: classified step by step, counted under `not_tcp_udp`.
        ("ipv4_icmp", ipv4(1, 0, &[])),
        ("ipv6_udp", ipv6(17, BOUND_UDP, &[], &[])),
        ("ipv6_tcp", ipv6(6, BOUND_TCP, &[], &[])),
        // Hop-by-hop then destination options, 8 bytes each.
        ("ipv6_two_ext", ipv6(17, BOUND_UDP, &[(0, 8), (60, 8)], &[])),
        // A fragment header at offset 0, M set: the ports are there.
        ("ipv6_first_fragment", ipv6(17, BOUND_UDP, &[(44, 8)], &[])),
        ("vlan_ipv4_udp", tag(&ipv4(17, BOUND_UDP, &[]), 0x8100, 10)),
        (
            "qinq_ipv6_udp",
            ipv6(17, BOUND_UDP, &[], &[(0x88a8, 100), (0x8100, 10)]),
        ),
    ]
}

/// Address-scoped ports: (frame name, UDP port, prefixes, IPv6). Each port's prefixes are
/// random and overlapping, and the frame's destination lies in a chain of nested ones: the
/// deepest (a /32 or /128) decides it.
const SCOPED: [(&str, u16, usize, bool); 4] = [
    ("scoped_1_prefix", 5301, 1, false),
    ("scoped_100_prefixes", 5302, 100, false),
    ("scoped_10000_prefixes", 5303, 10_000, false),
    ("scoped6_10000_prefixes", 5304, 10_000, true),
];
/// The destination of the scoped frames.
const SCOPED_DST4: [u8; 4] = [10, 98, 77, 1];
const SCOPED_DST6: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The bench's frames and the scoped ones.
fn all_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut all = frames();
    for (name, port, _, v6) in SCOPED {
        let frame = if v6 {
            let mut f = ipv6(17, port, &[], &[]);
            f[38..54].copy_from_slice(&SCOPED_DST6);
            f
        } else {
            let mut f = ipv4(17, port, &[]);
            f[30..34].copy_from_slice(&SCOPED_DST4);
            let mut ip = f[14..34].to_vec();
            ip[10..12].fill(0);
            let sum = checksum(&ip);
            f[24..26].copy_from_slice(&sum.to_be_bytes());
            f
        };
        all.push((name, frame));
    }
    all
}

/// `count` random overlapping prefixes (as `--dst` arguments), one family: a chain of nested
/// prefixes around `dst` down to the single address, the rest random (nested and overlapping
/// among themselves, a few also covering `dst`), all distinct. A small xorshift keeps runs
/// comparable.
fn scoped_prefixes(count: usize, dst: &[u8]) -> Vec<String> {
    let bits = dst.len() * 8;
    let dst_num = dst.iter().fold(0u128, |a, &b| a << 8 | u128::from(b));
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ count as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let render = |addr: u128, len: usize| -> String {
        if bits == 32 {
            let a = u32::try_from(addr).expect("IPv4");
            format!("{}/{len}", std::net::Ipv4Addr::from(a))
        } else {
            format!("{}/{len}", std::net::Ipv6Addr::from(addr))
        }
    };
    let prefix = |addr: u128, len: usize| -> u128 {
        let host = bits - len;
        if host == 128 { 0 } else { addr >> host << host }
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    // The deepest first, then its enclosing prefixes every 4 bits.
    let mut len = bits;
    while out.len() < count && len >= 8 {
        if seen.insert((prefix(dst_num, len), len)) {
            out.push(render(prefix(dst_num, len), len));
        }
        len -= 4;
    }
    // Random prefixes in the same /8 (IPv4) or /16 (IPv6), so that they nest and overlap.
    let top = if bits == 32 { 8 } else { 16 };
    while out.len() < count {
        let r = u128::from(next()) << 64 | u128::from(next());
        let len = top + usize::try_from(next() % (bits - top + 1) as u64).expect("small");
        let mask = if bits == 128 {
            u128::MAX >> top
        } else {
            (1u128 << (bits - top)) - 1
        };
        let addr = prefix(dst_num & !mask | r & mask, len);
        if seen.insert((addr, len)) {
            out.push(render(addr, len));
        }
    }
    out
}

/// Untagged IPv4 frames: port-demux within 0.5 ns of today's program on each.
const UNTAGGED_IPV4: [&str; 6] = [
    "udp_bound_drop",
    "tcp_bound_pass",
    "udp_unbound",
    "udp_ip_options",
    "non_ip_arp",
    "ipv4_icmp",
];
/// IPv6 without extension headers: <= 1.25x the floor.
const IPV6: [&str; 2] = ["ipv6_udp", "ipv6_tcp"];
/// IPv6 with extension headers: <= 1.35x the floor.
const IPV6_EXT: [&str; 2] = ["ipv6_two_ext", "ipv6_first_fragment"];
/// Tagged frames: <= 1.30x the floor.
const TAGGED: [&str; 2] = ["vlan_ipv4_udp", "qinq_ipv6_udp"];

/// `frame` with a VLAN tag inserted after the MAC addresses.
fn tag(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// An IPv6 frame to `dport` behind extension headers `ext` ((kind, bytes): hop-by-hop 0,
/// destination options 60, fragment 44 at offset 0 with M set) and VLAN `tags`, padded to 60
/// bytes at least.
fn ipv6(proto: u8, dport: u16, ext: &[(u8, usize)], tags: &[(u16, u16)]) -> Vec<u8> {
    let l4_len = if proto == 6 { 20 } else { 8 };
    let ext_len: usize = ext.iter().map(|e| e.1).sum();
    let mut f = ethernet(0x86dd);
    for (tpid, tci) in tags.iter().rev() {
        f = tag(&f, *tpid, *tci);
    }
    let payload_len = u16::try_from(ext_len + l4_len).expect("small");
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.push(ext.first().map_or(proto, |e| e.0));
    f.push(64);
    f.extend_from_slice(&[0xfd, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[0xfd, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    for (i, (kind, len)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |e| e.0);
        let mut h = vec![0u8; *len];
        h[0] = next;
        if *kind == 44 {
            h[3] = 1; // offset 0, M set
        } else {
            h[1] = u8::try_from(len / 8 - 1).expect("small");
        }
        f.extend_from_slice(&h);
    }
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&8u16.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

fn ipv4(proto: u8, dport: u16, options: &[u8]) -> Vec<u8> {
    let l4_len = if proto == 6 { 20 } else { 8 };
    let ihl = 5 + options.len() / 4;
    let payload = 60usize.saturating_sub(14 + ihl * 4 + l4_len);
    let total = u16::try_from(ihl * 4 + l4_len + payload).expect("small");
    let mut f = ethernet(0x0800);
    let mut ip = vec![0x40 | u8::try_from(ihl).expect("ihl"), 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0, 10, 98, 0, 2, 10, 98, 0, 1]);
    ip.extend_from_slice(options);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&u16::try_from(8 + payload).expect("small").to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.resize(f.len() + payload, 0x41);
    f
}

fn arp() -> Vec<u8> {
    let mut f = ethernet(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.resize(60, 0);
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `port-demux --netns NS_RX ARGS`, returning stdout and the wall time.
fn pd(bin: &Path, args: &[&str]) -> Result<(String, Duration)> {
    let start = Instant::now();
    let out = Command::new(bin)
        .args(["--netns", NS_RX])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "port-demux {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), took))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `cmd` inside the receiving namespace's network only (keeping the host's bpffs).
fn nsenter(ns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(args)
        .output()
        .with_context(|| format!("cannot run {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -j link show dev DEV` inside `ns`: the link's JSON object.
fn link(ns: &str, dev: &str) -> Result<Value> {
    let out = nsenter(ns, &["ip", "-j", "link", "show", "dev", dev])?;
    let links: Value = serde_json::from_str(&out)?;
    Ok(links[0].clone())
}

/// The id of the XDP program attached to `dev` in `ns`.
fn xdp_prog_id(ns: &str, dev: &str) -> Result<u32> {
    link(ns, dev)?["xdp"]["prog"]["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .with_context(|| format!("no XDP program on {dev}"))
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let bin = workspace().join("target/release/port-demux");
    ensure_bpffs()?;
    let _ns = Namespaces::create(&[NS_TX, NS_RX])?;
    Namespaces::veth(NS_TX, "tx0", "10.98.0.2/24", NS_RX, "rx0", "10.98.0.1/24")?;
    Namespaces::veth(NS_TX, "ftx0", "", NS_RX, "frx0", "")?;
    Namespaces::veth(NS_TX, "ptx0", "", NS_RX, "prx0", "")?;
    Namespaces::veth(NS_TX, "ttx0", "", NS_RX, "trx0", "")?;
    let result = run(args, &bin);
    let _ = pd(&bin, &["unload", "rx0"]);
    let _ = nsenter(NS_RX, &["xdp-filter", "unload", "frx0"]);
    result
}

fn run(args: &BenchArgs, bin: &Path) -> Result<()> {
    let mut report = json!({
        "machine": machine(),
        "repeat": args.repeat,
        "rounds": args.rounds,
    });
    let mut text = String::new();

    // Control plane: load and unload, timed as the processes users run.
    let mut loads = Vec::new();
    let mut unloads = Vec::new();
    for _ in 0..if args.no_control_plane { 0 } else { 5 } {
        loads.push(ms(pd(bin, &["load", "rx0", "--mode", "native"])?.1));
        unloads.push(ms(pd(bin, &["unload", "rx0"])?.1));
    }
    pd(bin, &["load", "rx0", "--mode", "native"])?;
    let (_, bind_all) = pd(bin, &["bind", "tcp/0-65535", "pass", "--owner", "bench"])?;
    // The scoped ports, each one `bind` of all its prefixes (the 10,000-prefix ones are
    // issue 11's "binding 10,000 prefixes in one call").
    let mut bind_scoped = serde_json::Map::new();
    for (name, port, count, v6) in SCOPED {
        let dst: &[u8] = if v6 { &SCOPED_DST6 } else { &SCOPED_DST4 };
        let prefixes = scoped_prefixes(count, dst);
        let spec = format!("udp/{port}");
        let mut cmd = vec!["bind", spec.as_str(), "drop"];
        for p in &prefixes {
            cmd.extend(["--dst", p.as_str()]);
        }
        let (_, took) = pd(bin, &cmd)?;
        bind_scoped.insert(name.to_owned(), json!(ms(took)));
    }
    let (stats_out, stats_all) = pd(bin, &["stats", "--all", "--json"])?;
    ensure!(stats_out.contains("\"totals\""), "stats printed no totals");
    let (bindings_out, _) = pd(bin, &["bindings", "--json"])?;
    ensure!(
        bindings_out.contains("\"last\":65535"),
        "the 65,536-port bind did not land"
    );
    pd(bin, &["unbind", "tcp/0-65535"])?;
    let pin_dir = pin_dir(bin)?;
    let memlock = memlock(&pin_dir)?;
    let control = json!({
        "load_ms_median": (!loads.is_empty()).then(|| median(&mut loads)),
        "unload_ms_median": (!unloads.is_empty()).then(|| median(&mut unloads)),
        "bind_65536_ports_ms": ms(bind_all),
        "stats_all_ports_ms": ms(stats_all),
        "bind_scoped_ms": bind_scoped,
        "memlock_bytes": memlock,
    });
    writeln!(
        text,
        "control plane (one port-demux process each, wall time incl. process start):"
    )?;
    for (key, target) in [
        ("load_ms_median", "< 300 ms"),
        ("unload_ms_median", ""),
        ("bind_65536_ports_ms", "< 1000 ms"),
        ("stats_all_ports_ms", "< 100 ms"),
    ] {
        writeln!(
            text,
            "  {key:<24} {:>9.1} ms   {target}",
            control[key].as_f64().unwrap_or(0.0)
        )?;
    }
    for (name, _, count, _) in SCOPED {
        writeln!(
            text,
            "  bind {count:>5} prefixes ({name}) {:>9.1} ms   {}",
            control["bind_scoped_ms"][name].as_f64().unwrap_or(0.0),
            if count == 10_000 { "< 1000 ms" } else { "" }
        )?;
    }
    writeln!(
        text,
        "  {:<24} {:>9.1} MiB  (maps and program, memlock)",
        "memlock",
        memlock as f64 / f64::from(1 << 20)
    )?;
    report["control_plane"] = control;

    // Per-packet cost.
    pd(bin, &["bind", &format!("udp/{BOUND_UDP}"), "drop"])?;
    pd(bin, &["bind", &format!("tcp/{BOUND_TCP}"), "pass"])?;
    let floor = bpf::load_pass_program().context("loading the XDP_PASS floor program")?;
    attach_generic(&floor, NS_TX, "ftx0")?;
    let demux = bpf::obj_get(&format!("{}/prog", pin_dir.display()))?;
    // Kept alive until the end: dropping it detaches and unloads the previous program.
    let previous = old_program("port-demux-v2.o", "prx0")
        .context("loading the v2 program (tests/fixtures)")?;
    let today = old_program("port-demux-v3.o", "trx0")
        .context("loading today's program (tests/fixtures/port-demux-v3.o)")?;
    let filter = xdp_filter();
    if let Err(e) = &filter {
        writeln!(text, "xdp-filter unavailable: {e}")?;
    }
    let frames = all_frames();
    let mut samples: Vec<[Vec<f64>; 5]> = vec![Default::default(); frames.len()];
    let mut kernel: Vec<[Vec<f64>; 5]> = vec![Default::default(); frames.len()];
    let mut actions: Vec<[u32; 5]> = vec![[0; 5]; frames.len()];
    for round in 0..args.rounds {
        // port-demux, today's program and the v2 program back to back, in turns first (ABBA
        // over the rounds): their differences are the figures of interest, and a fixed order
        // would add whatever the position in the round costs to one of them.
        let order = if round % 2 == 0 {
            [0, 1, 4, 3, 2]
        } else {
            [0, 4, 3, 1, 2]
        };
        for (i, (_, frame)) in frames.iter().enumerate() {
            let progs: [Option<&std::os::fd::OwnedFd>; 5] = [
                Some(&floor),
                Some(&demux),
                filter.as_ref().ok(),
                Some(&previous.1),
                Some(&today.1),
            ];
            for j in order {
                let Some(prog) = progs[j] else { continue };
                let start = Instant::now();
                let (action, ns) = bpf::test_run(prog, frame, args.repeat)?;
                let wall = start.elapsed().as_secs_f64() * 1e9 / f64::from(args.repeat);
                ensure!(action != 0, "XDP_ABORTED from program {j} on frame {i}");
                actions[i][j] = action;
                samples[i][j].push(wall);
                kernel[i][j].push(f64::from(ns));
            }
        }
    }
    writeln!(
        text,
        "\nper-packet cost, BPF_PROG_TEST_RUN (wall time / repeat), repeat {}, median of {} interleaved rounds:",
        args.repeat, args.rounds
    )?;
    writeln!(
        text,
        "  {:<22} {:>8} {:>12} {:>8} {:>13} {:>8} {:>12} {:>10} {:>8} {:>10} {:>9}",
        "frame",
        "floor ns",
        "port-demux",
        "ratio",
        "xdp-filter",
        "ratio",
        "xf/pd",
        "v2 ns",
        "pd-v2",
        "today ns",
        "pd-today"
    )?;
    let kernel_ns = |values: &mut Vec<f64>| (!values.is_empty()).then(|| median(values));
    let mut per_packet = Vec::new();
    for (i, (name, frame)) in frames.iter().enumerate() {
        let [f, d, x, p, t_samples] = &mut samples[i];
        // Ratios of the figures measured next to each other in one round, then their median:
        // the VM's speed drifts over seconds, and a pair within a round sees the same drift.
        let paired = |a: &[f64], b: &[f64]| {
            let mut ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
            (!ratios.is_empty()).then(|| median(&mut ratios))
        };
        let demux_ratio = paired(d, f).unwrap_or(f64::NAN);
        // The change against the previous program, in nanoseconds: the median of the
        // differences within a round.
        let mut diffs: Vec<f64> = d.iter().zip(p.iter()).map(|(d, p)| d - p).collect();
        let over_previous = median(&mut diffs);
        let previous_ns = median(p);
        let mut diffs: Vec<f64> = d.iter().zip(t_samples.iter()).map(|(d, t)| d - t).collect();
        let over_today = median(&mut diffs);
        let today_ns = median(t_samples);
        let (filter_ratio, filter_over_demux) = (paired(x, f), paired(x, d));
        let (floor_ns, demux_ns) = (median(f), median(d));
        let filter_ns = (!x.is_empty()).then(|| median(x));
        let [kf, kd, kx, kp, kt] = &mut kernel[i];

        writeln!(
            text,
            "  {name:<22} {floor_ns:>8.1} {demux_ns:>9.1} ns {demux_ratio:>7.2}x {:>10} {:>8} {:>12} {previous_ns:>7.1} ns {over_previous:>+7.2} {today_ns:>7.1} ns {over_today:>+8.2}",
            filter_ns.map_or("-".into(), |x| format!("{x:.1} ns")),
            filter_ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            filter_over_demux.map_or("-".into(), |r| format!("{r:.2}x")),
        )?;
        per_packet.push(json!({
            "frame": name,
            "bytes": frame.len(),
            "floor_ns": floor_ns,
            "port_demux_ns": demux_ns,
            "port_demux_ratio_to_floor": demux_ratio,
            "port_demux_action": actions[i][1],
            "xdp_filter_ns": filter_ns,
            "xdp_filter_ratio_to_floor": filter_ratio,
            "xdp_filter_over_port_demux": filter_over_demux,
            "xdp_filter_action": filter_ns.map(|_| actions[i][2]),
            "previous_ns": previous_ns,
            "previous_action": actions[i][3],
            "port_demux_minus_previous_ns": over_previous,
            "today_ns": today_ns,
            "today_action": actions[i][4],
            "port_demux_minus_today_ns": over_today,
            "kernel_duration_ns": {
                "floor": kernel_ns(kf),
                "port_demux": kernel_ns(kd),
                "xdp_filter": kernel_ns(kx),
                "previous": kernel_ns(kp),
                "today": kernel_ns(kt),
            },
        }));
    }
    report["per_packet"] = json!(per_packet);
    match run_time_stats(&frames[0].1, args.repeat, filter.is_ok()) {
        Ok((figures, summary)) => {
            text.push_str(&summary);
            report["bpf_run_time_stats"] = figures;
        }
        Err(e) => writeln!(text, "BPF run-time stats unavailable: {e:#}")?,
    }
    report["xdp_filter"] = match &filter {
        Ok(_) => json!("xdp-filter (xdp-tools) loaded in skb mode with `port -p udp 7777`"),
        Err(e) => json!(format!("unavailable: {e}")),
    };

    // Live traffic.
    let live_result = if args.live_frames > 0 {
        live(bin, args.live_frames)
    } else {
        Err(anyhow::anyhow!("skipped (--live-frames 0)"))
    };
    match live_result {
        Ok((figures, summary)) => {
            text.push('\n');
            text.push_str(&summary);
            report["live"] = figures;
        }
        Err(e) => {
            writeln!(text, "\nlive traffic failed: {e:#}")?;
            report["live"] = json!({ "error": format!("{e:#}") });
        }
    }

    let (verdicts, summary) = targets(&report);
    text.push_str(&summary);
    report["targets"] = verdicts;

    print!("{text}");
    let out = workspace().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let path = out.join("latest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// Whether a figure meets a target.
type Verdict = fn(f64) -> bool;

/// Issue 3's and issue 8's targets against this run's figures: each one met or not, with the
/// figure that decides it (the worst frame of its class).
fn targets(report: &Value) -> (Value, String) {
    const RATIO: &str = "port_demux_ratio_to_floor";
    const FILTER: &str = "xdp_filter_over_port_demux";
    const TODAY: &str = "port_demux_minus_previous_ns";
    let rows = report["per_packet"].as_array().cloned().unwrap_or_default();
    // The highest (or lowest) figure under `key` among `frames`.
    let worst = |frames: &[&str], key: &str, highest: bool| {
        rows.iter()
            .filter(|r| frames.contains(&r["frame"].as_str().unwrap_or_default()))
            .filter_map(|r| Some((r[key].as_f64()?, r["frame"].as_str()?.to_owned())))
            .reduce(|a, b| if (b.0 > a.0) == highest { b } else { a })
    };
    let tcp_udp: Vec<&str> = [
        "udp_bound_drop",
        "tcp_bound_pass",
        "udp_unbound",
        "udp_ip_options",
    ]
    .into_iter()
    .chain(IPV6)
    .chain(IPV6_EXT)
    .chain(TAGGED)
    .collect();
    // Frames to ports without scoped bindings: every frame but the scoped ones.
    let names = frames();
    let unscoped: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
    // (target, frames, figure, the highest or the lowest decides, met)
    let per_packet: [(&str, &[&str], &str, bool, Verdict); 9] = [
        (
            "untagged IPv4: port-demux - the v2 program <= 0.5 ns",
            &UNTAGGED_IPV4,
            TODAY,
            true,
            |d| d <= 0.5,
        ),
        (
            "unscoped ports: port-demux - today's program <= 0.5 ns",
            &unscoped,
            "port_demux_minus_today_ns",
            true,
            |d| d <= 0.5,
        ),
        (
            "scoped port, 100 prefixes: ratio to the floor <= 2.0",
            &["scoped_100_prefixes"],
            RATIO,
            true,
            |r| r <= 2.0,
        ),
        (
            "scoped port, 10,000 prefixes: ratio to the floor <= 2.5",
            &["scoped_10000_prefixes", "scoped6_10000_prefixes"],
            RATIO,
            true,
            |r| r <= 2.5,
        ),
        (
            "IPv6: ratio to the floor <= 1.25",
            &IPV6,
            RATIO,
            true,
            |r| r <= 1.25,
        ),
        (
            "tagged: ratio to the floor <= 1.30",
            &TAGGED,
            RATIO,
            true,
            |r| r <= 1.30,
        ),
        (
            "IPv6 extension headers: ratio to the floor <= 1.35",
            &IPV6_EXT,
            RATIO,
            true,
            |r| r <= 1.35,
        ),
        (
            "TCP/UDP, every class: xdp-filter / port-demux >= 3.5",
            &tcp_udp,
            FILTER,
            false,
            |r| r >= 3.5,
        ),
        (
            "untagged IPv4: ratio to the floor <= 1.25",
            &UNTAGGED_IPV4,
            RATIO,
            true,
            |r| r <= 1.25,
        ),
    ];
    let control_plane: [(&str, &str, Verdict); 3] = [
        ("bind 65,536 ports < 1000 ms", "bind_65536_ports_ms", |ms| {
            ms < 1000.0
        }),
        ("stats of every port < 100 ms", "stats_all_ports_ms", |ms| {
            ms < 100.0
        }),
        ("load < 300 ms", "load_ms_median", |ms| ms < 300.0),
    ];
    let scoped_binds: [(&str, &str); 2] = [
        (
            "bind 10,000 IPv4 prefixes in one call < 1000 ms",
            "scoped_10000_prefixes",
        ),
        (
            "bind 10,000 IPv6 prefixes in one call < 1000 ms",
            "scoped6_10000_prefixes",
        ),
    ];
    let mut list = Vec::new();
    let mut text = String::from("\ntargets (issues 3, 8 and 11):\n");
    let mut judge = |what: &str, figure: Option<f64>, at: &str, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        let figure_text = figure.map_or_else(String::new, |f| format!("{f:.2}"));
        let _ = writeln!(text, "  {what:<56} {figure_text:>8} {verdict}{at}");
        list.push(json!({ "target": what, "figure": figure, "met": met }));
    };
    for (what, frames, key, highest, ok) in per_packet {
        let figure = worst(frames, key, highest);
        let at = figure
            .as_ref()
            .map_or_else(String::new, |(_, frame)| format!(" ({frame})"));
        judge(
            what,
            figure.as_ref().map(|f| f.0),
            &at,
            figure.map(|f| ok(f.0)),
        );
    }
    for (what, key, ok) in control_plane {
        let figure = report["control_plane"][key].as_f64();
        judge(what, figure, "", figure.map(ok));
    }
    for (what, key) in scoped_binds {
        let figure = report["control_plane"]["bind_scoped_ms"][key].as_f64();
        judge(what, figure, "", figure.map(|ms| ms < 1000.0));
    }
    let exact = report["live"]["exact"].as_bool();
    judge("live traffic counted exactly", None, "", exact);
    (json!(list), text)
}

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({ "kernel": kernel.trim(), "cpu": cpu, "cpus": std::thread::available_parallelism().map_or(0, usize::from) })
}

fn pin_dir(bin: &Path) -> Result<PathBuf> {
    let (out, _) = pd(bin, &["status", "--json"])?;
    let status: Value = serde_json::from_str(&out)?;
    status["interfaces"][0]["pins"]
        .as_str()
        .map(PathBuf::from)
        .context("status printed no pin folder")
}

/// Bytes of memory locked by the pinned maps and the program (`bpftool ... show pinned`).
fn memlock(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let kind = match path.file_name().and_then(|n| n.to_str()) {
            Some("link") => continue,
            Some("prog") => "prog",
            _ => "map",
        };
        let out = Command::new("bpftool")
            .args(["-j", kind, "show", "pinned"])
            .arg(&path)
            .output()?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        total += v["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

/// An earlier program from `tests/fixtures`: `port-demux-v2.o` (main's layout-v2 object,
/// commit 5e68fb7, before the verifier fix) or `port-demux-v3.o` (today's program: main's
/// object before address-scoped bindings), loaded with aya, bound like port-demux (udp/7777
/// drop, tcp/80 pass) and attached like the floor ([`attach_generic`], on `dev`), until the
/// bench's namespaces go. Returns the loaded object (its maps) and a descriptor of its program
/// for test runs.
fn old_program(fixture: &str, dev: &str) -> Result<(aya::Ebpf, std::os::fd::OwnedFd)> {
    use std::os::fd::AsFd as _;

    use aya::{maps::Array, programs::Xdp};
    const PASS: u32 = 1;
    const DROP: u32 = 2;
    let object = std::fs::read(workspace().join("tests/fixtures").join(fixture))?;
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("DEFAULT_ACTION", &PASS, true)
        .override_global("AYA_LOG_LEVEL", &0u8, false)
        .load(&object)?;
    // `struct Binding { action: u32, slot: u32, owner: [u8; 16] }`, indexed by
    // `proto << 16 | port` (tcp 0, udp 1).
    let mut bindings: Array<_, [u32; 6]> =
        Array::try_from(ebpf.map_mut("BINDINGS").context("no BINDINGS map")?)?;
    bindings.set((1 << 16) | u32::from(BOUND_UDP), [DROP, 0, 0, 0, 0, 0], 0)?;
    bindings.set(u32::from(BOUND_TCP), [PASS, 0, 0, 0, 0, 0], 0)?;
    let prog: &mut Xdp = ebpf
        .program_mut("port_demux")
        .context("no port_demux program")?
        .try_into()?;
    prog.load()?;
    let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
    attach_generic(&fd, NS_RX, dev)?;
    Ok((ebpf, fd))
}

/// Attaches `prog` as generic XDP to `dev` of `ns` (an otherwise unused veth) so that, like
/// port-demux and xdp-filter, the kernel's XDP dispatcher calls it directly: programs that are
/// not attached anywhere are called indirectly, which costs more and would flatter the ratios.
fn attach_generic(prog: &std::os::fd::OwnedFd, ns: &str, dev: &str) -> Result<()> {
    let pin = format!("/sys/fs/bpf/port-demux-bench-{dev}-{}", std::process::id());
    bpf::obj_pin(prog, &pin).with_context(|| format!("pinning the program for {dev}"))?;
    let result = nsenter(
        ns,
        &[
            "ip",
            "link",
            "set",
            "dev",
            dev,
            "xdpgeneric",
            "pinned",
            &pin,
        ],
    );
    let _ = std::fs::remove_file(&pin);
    result.map(drop)
}

/// xdp-filter on `frx0` with a deny rule for udp/7777; its program, opened by id.
fn xdp_filter() -> Result<std::os::fd::OwnedFd> {
    nsenter(NS_RX, &["xdp-filter", "load", "-m", "skb", "frx0"])?;
    nsenter(
        NS_RX,
        &["xdp-filter", "port", "-p", "udp", &BOUND_UDP.to_string()],
    )?;
    Ok(bpf::prog_by_id(xdp_prog_id(NS_RX, "frx0")?)?)
}

/// Where the time goes: with `kernel.bpf_stats_enabled`, the kernel times each program run
/// alone (`run_time_ns / run_cnt`), without the test-run loop around it. Measured apart from the
/// timed rounds, because the accounting itself costs time per run.
fn run_time_stats(frame: &[u8], repeat: u32, filter: bool) -> Result<(Value, String)> {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(SYSCTL)?;
    std::fs::write(SYSCTL, "1")?;
    let mut programs = vec![
        ("floor", xdp_prog_id(NS_TX, "ftx0")?),
        ("port-demux", xdp_prog_id(NS_RX, "rx0")?),
    ];
    if filter {
        programs.push(("xdp-filter", xdp_prog_id(NS_RX, "frx0")?));
    }
    let stats = |id: u32| -> Result<(u64, u64)> {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok((
            v["run_time_ns"].as_u64().unwrap_or(0),
            v["run_cnt"].as_u64().unwrap_or(0),
        ))
    };
    let mut figures = serde_json::Map::new();
    let mut summary = String::from(
        "\nprogram alone (kernel.bpf_stats_enabled, run_time_ns / run_cnt, udp_bound_drop):\n ",
    );
    let result = (|| -> Result<()> {
        for (name, id) in &programs {
            let fd = bpf::prog_by_id(*id)?;
            let (t0, c0) = stats(*id)?;
            bpf::test_run(&fd, frame, repeat)?;
            let (t1, c1) = stats(*id)?;
            let ns = (t1 - t0) as f64 / (c1 - c0).max(1) as f64;
            figures.insert((*name).to_owned(), json!(ns));
            write!(summary, " {name} {ns:.1} ns,")?;
        }
        Ok(())
    })();
    std::fs::write(SYSCTL, before.trim())?;
    result?;
    summary.pop();
    // The accounting's clock reads are in every figure; the difference to the floor is the
    // program's own work.
    let floor = figures.get("floor").and_then(Value::as_f64).unwrap_or(0.0);
    let mut over = serde_json::Map::new();
    summary.push_str("\n  over the floor:");
    for (name, _) in programs.iter().skip(1) {
        let ns = figures.get(*name).and_then(Value::as_f64).unwrap_or(0.0) - floor;
        over.insert((*name).to_owned(), json!(ns));
        write!(summary, " {name} +{ns:.1} ns,")?;
    }
    summary.pop();
    summary.push('\n');
    figures.insert("over_floor".to_owned(), Value::Object(over));
    Ok((Value::Object(figures), summary))
}

/// Sum of the softirq and system CPU time of all CPUs, in clock ticks (`/proc/stat`).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq
    (
        fields.get(2).copied().unwrap_or(0),
        fields.get(6).copied().unwrap_or(0),
    )
}

fn live(bin: &Path, frames: u64) -> Result<(Value, String)> {
    // A fresh counter state for the port under test.
    let (before, _) = pd(bin, &["stats", "--json", "--all"])?;
    let before: Value = serde_json::from_str(&before)?;
    let port_count = |v: &Value| {
        v["ports"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["proto"] == "udp" && p["port"] == BOUND_UDP)
            })
            .and_then(|p| p["packets"].as_u64())
            .unwrap_or(0)
    };
    let mac = link(NS_RX, "rx0")?["address"]
        .as_str()
        .context("no MAC")?
        .to_owned();
    let mac_bytes: Vec<String> = mac.split(':').map(|b| format!("0x{b}")).collect();
    let config = format!(
        "{{ {}, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, c16(0x0800), \
         0x45, 0x00, c16(46), c16(0), c16(0x4000), 64, 17, csumip(14, 33), \
         10, 98, 0, 2, 10, 98, 0, 1, \
         c16(40000), c16({BOUND_UDP}), c16(26), c16(0), fill(0x41, 18) }}",
        mac_bytes.join(", ")
    );
    let cfg_path = std::env::temp_dir().join("port-demux-bench.trafgen");
    std::fs::write(&cfg_path, config)?;
    let (sys0, soft0) = cpu_ticks();
    let start = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", NS_TX, "trafgen", "--dev", "tx0", "--conf"])
        .arg(&cfg_path)
        .args(["--num", &frames.to_string(), "--cpus", "1"])
        .output()
        .context("cannot run trafgen (netsniff-ng)")?;
    let elapsed = start.elapsed();
    let (sys1, soft1) = cpu_ticks();
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "trafgen failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let sent: u64 = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix("packets outgoing")
                .and_then(|n| n.trim().parse().ok())
        })
        .context("trafgen did not report packets outgoing")?;
    let (after, _) = pd(bin, &["stats", "--json", "--all"])?;
    let after: Value = serde_json::from_str(&after)?;
    let counted = port_count(&after) - port_count(&before);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let cpu_ns = |ticks: u64| ticks as f64 * 1e9 / hz as f64;
    let softirq_ns_per_packet = cpu_ns(soft1 - soft0) / counted.max(1) as f64;
    let system_ns_per_packet = cpu_ns(sys1 - sys0) / counted.max(1) as f64;
    let pps = counted as f64 / elapsed.as_secs_f64();
    let exact = counted == sent && sent == frames;
    let line = format!(
        "live traffic (trafgen -> veth -> port-demux native, udp/{BOUND_UDP} drop):\n  \
         sent {sent}, counted {counted} ({}), {:.2} Mpps over {:.2} s, \
         softirq CPU {softirq_ns_per_packet:.0} ns/packet, system CPU {system_ns_per_packet:.0} ns/packet (both sides of the veth)\n",
        if exact { "exact" } else { "MISMATCH" },
        pps / 1e6,
        elapsed.as_secs_f64()
    );
    let value = json!({
        "frames_requested": frames,
        "sent": sent,
        "counted": counted,
        "exact": exact,
        "seconds": elapsed.as_secs_f64(),
        "packets_per_second": pps,
        "softirq_cpu_ns_per_packet": softirq_ns_per_packet,
        "system_cpu_ns_per_packet": system_ns_per_packet,
    });
    ensure!(exact, "{line}");
    Ok((value, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_well_formed() {
        for (name, frame) in frames() {
            if UNTAGGED_IPV4.contains(&name) {
                assert_eq!(frame.len(), 60, "{name}");
            } else {
                assert!(frame.len() >= 60, "{name}");
            }
        }
        // IPv6: payload length covers the extension headers and the UDP header.
        let two_ext = ipv6(17, 7, &[(0, 8), (60, 8)], &[]);
        assert_eq!(u16::from_be_bytes([two_ext[18], two_ext[19]]), 24);
        assert_eq!((two_ext[20], two_ext[54], two_ext[62]), (0, 60, 17));
        assert_eq!(u16::from_be_bytes([two_ext[72], two_ext[73]]), 7);
        let qinq = ipv6(17, 7, &[], &[(0x88a8, 1), (0x8100, 2)]);
        assert_eq!(&qinq[12..14], &[0x88, 0xa8]);
        assert_eq!(&qinq[16..18], &[0x81, 0x00]);
        assert_eq!(&qinq[20..22], &[0x86, 0xdd]);
        let options = ipv4(17, 1, &[1, 1, 1, 1]);
        assert_eq!(options[14], 0x46);
        // A correct IPv4 header checksums to zero.
        assert_eq!(checksum(&options[14..38]), 0);
        assert_eq!(
            u16::from_be_bytes([options[14 + 24 + 2], options[14 + 24 + 3]]),
            1
        );
    }
}
