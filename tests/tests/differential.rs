//! Differential test: generated frames through the real XDP program (`BPF_PROG_TEST_RUN`) and
//! through the reference model (`model::classify`), which must agree frame for frame (needs
//! root).
//!
//! Per frame: the same XDP action (never `XDP_ABORTED`), and for a frame the model
//! demultiplexes, its port counter at exactly the model's running total. Every
//! [`CHECK_EVERY`] frames: `GLOBALS` equal to the model's running totals, and the per-port
//! packets plus the frames not demultiplexed summing to the frames sent. At the end of every binding epoch
//! ([`EPOCH`] frames): all port counters equal to the model's totals.
//!
//! Two instances run side by side, default action pass and drop, taking turns by epoch; each
//! epoch draws new bindings (unbound, pass, drop, redirect to filled, empty and out-of-range
//! devmap slots, unknown actions) for a pool of ports the generator prefers.
//!
//! `PORT_DEMUX_FUZZ_SEED` (decimal or 0x-hex) and `PORT_DEMUX_FUZZ_FRAMES` override the seed
//! and the frame count (`cargo xtask fuzz --frames N --seed S`). Frames stay within
//! [`TEST_RUN_MAX_LINEAR`] (3520) bytes but for `Kind::MultiBuffer` (up to 9,000): longer
//! test-run input becomes a multi-buffer frame whose first buffer holds 3520 bytes, as the
//! model is told.
//!
//! On a disagreement the frame is minimised (shortened, then bytes zeroed, while it still
//! disagrees), printed as hex and written to `tests/fixtures/regressions/<fnv1a>.hex`, which
//! [`regressions_replay`] replays on every run.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use port_demux::{PROGRAM, PROGRAM_DEBUG};
use port_demux_common::{
    BINDINGS_LEN, Globals, PROTO_TCP, PROTO_UDP, PortCounters, REDIRECT_SLOTS, action, family,
    model::{ScopedRule, most_specific},
    outcome, port_index, taken,
};
use port_demux_testkit::{
    frames::{
        ETH_P_8021Q, FrameBuilder, Generator, Ipv6Builder, KINDS, Rng, TEST_RUN_MAX_LINEAR,
        TEST_RUN_MIN, fnv1a, from_hex, tagged, to_hex,
    },
    test_run::{
        Harness, LO_IFINDEX, REPLAY_BINDINGS, XDP_ABORTED, binding, describe_globals,
        expected_globals, unbound,
    },
};

/// Seed when `PORT_DEMUX_FUZZ_SEED` is not set.
const DEFAULT_SEED: u64 = 0x0d15_ea5e_5eed_0001;
/// Frames when `PORT_DEMUX_FUZZ_FRAMES` is not set.
const DEFAULT_FRAMES: u64 = 100_000;
/// Frames through the `--debug` program.
const DEBUG_FRAMES: u64 = 20_000;
/// Frames between full `GLOBALS` checks.
const CHECK_EVERY: u64 = 1_000;
/// Frames per binding epoch (and between full port counter checks).
const EPOCH: u64 = 5_000;
/// Ports the generator prefers, and that get bindings.
const POOL: usize = 48;
/// Devmap slots the random bindings use (the rest stay empty).
const USED_SLOTS: u32 = 8;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value:?}: {e}")))
}

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/regressions")
}

/// One instance and the model's running totals for it.
struct Instance {
    h: Harness,
    globals: Globals,
    ports: HashMap<u32, PortCounters>,
    frames: u64,
}

impl Instance {
    fn new(default_action: u32, program: &'static str) -> Self {
        let h = Harness::with_program(default_action, program)
            .expect("load the program (run the tests as root)");
        Self {
            globals: h.globals(),
            h,
            ports: HashMap::new(),
            frames: 0,
        }
    }

    /// Draws new bindings for the pool and new devmap slots.
    fn rebind(&mut self, rng: &mut Rng, pool: &[u16]) {
        self.h.clear_bindings();
        for slot in 0..USED_SLOTS {
            if rng.one_in(2) {
                self.h.set_slot(slot, LO_IFINDEX);
            } else {
                self.h.clear_slot(slot);
            }
        }
        for &port in pool {
            for proto in [PROTO_TCP, PROTO_UDP] {
                let slot = match rng.below(8) {
                    0 => rng.pick(&[REDIRECT_SLOTS - 1, REDIRECT_SLOTS, u32::MAX]),
                    1 => rng.u32(),
                    _ => rng.u32() % USED_SLOTS,
                };
                let act = match rng.below(16) {
                    0..=3 => action::UNBOUND,
                    4..=6 => action::PASS,
                    7..=9 => action::DROP,
                    10..=14 => action::REDIRECT,
                    _ => rng.pick(&[4, 5, 255, u32::MAX]),
                };
                let b = if act == action::UNBOUND {
                    unbound()
                } else {
                    binding(act, slot)
                };
                self.h.set_binding(port_index(proto, port), b);
            }
        }
    }

    /// `GLOBALS` as the model has it, and the sums, or what is wrong.
    fn check_globals(&self) -> Result<(), String> {
        let g = self.h.globals();
        if g != self.globals {
            return Err(format!(
                "GLOBALS {}, model {}",
                describe_globals(&g),
                describe_globals(&self.globals)
            ));
        }
        let not_demuxed: u64 = g.not_demuxed().iter().sum();
        let demuxed: u64 = self.ports.values().map(|c| c.packets).sum();
        if not_demuxed + demuxed != self.frames {
            return Err(format!(
                "{} frames sent, {demuxed} counted per port and {not_demuxed} not demultiplexed",
                self.frames
            ));
        }
        Ok(())
    }

    /// All port counters as the model has it, or the first difference.
    fn check_ports(&self) -> Result<(), String> {
        let all = self.h.ports();
        for (i, got) in (0u32..BINDINGS_LEN).zip(&all) {
            let want = self.ports.get(&i).copied().unwrap_or_default();
            if *got != want {
                return Err(format!("port[{i}] {got:?}, model {want:?}"));
            }
        }
        Ok(())
    }
}

/// Shortens `frame`, then zeroes its bytes one by one, as long as `fails` holds.
fn minimise(frame: &[u8], fails: &dyn Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut best = frame.to_vec();
    for _round in 0..16 {
        let mut progress = false;
        if let Some(len) = (TEST_RUN_MIN..best.len()).find(|&len| fails(&best[..len])) {
            best.truncate(len);
            progress = true;
        }
        for i in 0..best.len() {
            if best[i] != 0 {
                let mut candidate = best.clone();
                candidate[i] = 0;
                if fails(&candidate) {
                    best = candidate;
                    progress = true;
                }
            }
        }
        if !progress {
            break;
        }
    }
    best
}

/// Minimises a frame `h` disagrees on, saves it as a regression and panics with it.
fn report(h: &Harness, frame: &[u8], why: &str, seed: u64, index: u64) -> ! {
    // The cheap per-frame check if it reproduces, else the one reading all port counters.
    let (all_ports, first) = match h.check(frame, false) {
        Err(m) => (false, Some(m)),
        Ok(_) => (true, h.check(frame, true).err()),
    };
    // Candidates must fail the same way, not merely fail.
    let small = match &first {
        Some(m) => {
            let kind = m.kind();
            minimise(frame, &|f: &[u8]| {
                h.check(f, all_ports)
                    .err()
                    .is_some_and(|m| m.kind() == kind)
            })
        }
        None => frame.to_vec(),
    };
    let detail = match h.check(&small, all_ports) {
        Err(m) => m.to_string(),
        Ok(_) => "not reproduced".to_owned(),
    };
    let hex = to_hex(&small);
    let dir = regressions_dir();
    let path = dir.join(format!("{:016x}.hex", fnv1a(&small)));
    let text = format!(
        "# port-demux differential regression: seed {seed:#x}, frame #{index}, default \
         action {}\n# {why}\n# minimised: {detail}\n# original ({} bytes): {}\n{hex}\n",
        h.default_action(),
        frame.len(),
        to_hex(frame).replace('\n', ""),
    );
    let saved = fs::create_dir_all(&dir).and_then(|()| fs::write(&path, text));
    panic!(
        "kernel and model disagree on frame #{index} (seed {seed:#x}): {why}\nminimised to {} \
         bytes ({detail}):\n{hex}\nsaved: {} {saved:?}",
        small.len(),
        path.display(),
    );
}

#[test]
fn kernel_agrees_with_model() {
    let seed = env_u64("PORT_DEMUX_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let total = env_u64("PORT_DEMUX_FUZZ_FRAMES").unwrap_or(DEFAULT_FRAMES);
    fuzz(PROGRAM, seed, total);
}

/// The `--debug` program is the same data path plus a log record per demultiplexed frame: it
/// is held to the model too, on fewer frames.
#[test]
fn debug_program_agrees_with_model() {
    let seed = env_u64("PORT_DEMUX_FUZZ_SEED").unwrap_or(DEFAULT_SEED) ^ 0xdeb9;
    let total = env_u64("PORT_DEMUX_FUZZ_FRAMES").map_or(DEBUG_FRAMES, |n| n.min(DEBUG_FRAMES));
    fuzz(PROGRAM_DEBUG, seed, total);
}

/// Runs `total` generated frames through `program` and the model, under both default
/// actions, and asserts they agree (see the module's doc).
fn fuzz(program: &'static str, seed: u64, total: u64) {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut pool: Vec<u16> = (0..POOL).map(|_| rng.u16()).collect();
    pool.extend([0, 1, 7777, u16::MAX]);
    let mut generator = Generator::new(rng.next_u64(), pool.clone());
    generator.max_len = TEST_RUN_MAX_LINEAR;
    let mut instances = [
        Instance::new(action::PASS, program),
        Instance::new(action::DROP, program),
    ];
    let mut kinds = [0u64; KINDS.len()];
    let mut outcomes = [0u64; outcome::COUNT];
    let mut taken_counts = [0u64; taken::COUNT];
    let mut longest = 0;
    // The frames since the last GLOBALS check, to find the culprit of a mismatch there.
    let mut window: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut sent = 0u64;
    while sent < total {
        let inst = &mut instances[usize::from((sent / EPOCH) % 2 == 1)];
        inst.rebind(&mut rng, &pool);
        let epoch_end = (sent + EPOCH).min(total);
        while sent < epoch_end {
            let (kind, frame) = generator.frame();
            kinds[KINDS.iter().position(|&k| k == kind).expect("a kind")] += 1;
            longest = longest.max(frame.len());
            let verdict = inst.h.model(&frame);
            let ret = match inst.h.try_run(&frame) {
                Ok(ret) => ret,
                Err(e) => report(&inst.h, &frame, &format!("test run: {e:?}"), seed, sent),
            };
            if ret == XDP_ABORTED || ret != verdict.xdp_action {
                let why = format!("{kind:?} frame: XDP action {ret}, model {verdict:?}");
                report(&inst.h, &frame, &why, seed, sent);
            }
            inst.frames += 1;
            inst.globals.add(&expected_globals(&verdict));
            outcomes[verdict.outcome] += 1;
            taken_counts[verdict.taken] += 1;
            if let Some(i) = verdict.port_index {
                let want = inst.ports.entry(i).or_default();
                want.packets += 1;
                want.bytes += verdict.bytes;
                let got = inst.h.port(i);
                if got != *want {
                    let why = format!("{kind:?} frame: port[{i}] {got:?}, model {want:?}");
                    report(&inst.h, &frame, &why, seed, sent);
                }
            }
            sent += 1;
            window.push((sent - 1, frame));
            if sent.is_multiple_of(CHECK_EVERY) || sent == epoch_end {
                if let Err(why) = inst.check_globals() {
                    // Bindings are unchanged within an epoch: replay the window one by one.
                    for (index, frame) in &window {
                        if inst.h.check(frame, false).is_err() {
                            report(&inst.h, frame, &why, seed, *index);
                        }
                    }
                    panic!("{why} (seed {seed:#x}), not reproduced frame by frame");
                }
                window.clear();
            }
        }
        if let Err(why) = inst.check_ports() {
            panic!("{why} at the end of an epoch (seed {seed:#x}, {sent} frames)");
        }
    }
    for inst in &instances {
        inst.check_globals().expect("final GLOBALS");
        inst.check_ports().expect("final port counters");
    }
    let elapsed = started.elapsed();
    println!(
        "differential ({program}): {sent} frames agreed with the model in {elapsed:.2?} \
         (seed {seed:#x}), longest {longest} bytes"
    );
    summary(&kinds, &outcomes, &taken_counts);
}

/// Prints how many frames of each kind were made and how the model classified them, and
/// asserts (for runs of 10,000 frames or more) that every outcome and action was reached.
fn summary(kinds: &[u64], outcomes: &[u64], taken_counts: &[u64]) {
    let sent: u64 = kinds.iter().sum();
    println!(
        "  kinds: {}",
        KINDS
            .iter()
            .zip(kinds)
            .map(|(k, n)| format!("{k:?} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  outcomes: {}; taken: {}",
        outcome::NAMES
            .iter()
            .zip(outcomes)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        taken::NAMES
            .iter()
            .zip(taken_counts)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if sent >= 10_000 {
        // The generator reaches every outcome and every action.
        for (name, n) in outcome::NAMES.iter().zip(outcomes) {
            assert!(*n > 0, "no {name} frame in {sent}");
        }
        for (name, n) in taken::NAMES.iter().zip(taken_counts) {
            assert!(*n > 0, "no {name} frame in {sent}");
        }
    }
}

/// Every saved regression, under both default actions and every binding of its port: the
/// program and the model agree, counters included (all port counters checked).
#[test]
fn regressions_replay() {
    let dir = regressions_dir();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hex"))
        .collect();
    files.sort();
    let mut harnesses = [
        Harness::new(action::PASS).expect("load the program (run the tests as root)"),
        Harness::new(action::DROP).expect("load"),
    ];
    for h in &mut harnesses {
        h.set_slot(0, LO_IFINDEX);
        h.clear_slot(1);
    }
    for path in &files {
        let text = fs::read_to_string(path).expect("read a regression");
        let frame = from_hex(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if frame.len() < TEST_RUN_MIN {
            // The kernel refuses these before the program runs.
            assert!(harnesses[0].try_run(&frame).is_err(), "{}", path.display());
            continue;
        }
        for h in &mut harnesses {
            let index = h.model(&frame).port_index;
            for (act, slot) in REPLAY_BINDINGS {
                if let Some(i) = index {
                    h.set_binding(i, binding(act, slot));
                }
                if let Err(why) = h.check(&frame, true) {
                    panic!(
                        "{}: binding ({act}, {slot}), default {}: {why}\n{}",
                        path.display(),
                        h.default_action(),
                        to_hex(&frame)
                    );
                }
            }
            h.clear_bindings();
        }
    }
    println!("replayed {} regression frames", files.len());
}

/// Random address-scoped rules on `ports`: prefixes share a few high bits, so that they nest
/// and overlap; both families; ids from 0.
fn random_rules(rng: &mut Rng, ports: &[u32]) -> Vec<ScopedRule> {
    let mut rules: Vec<ScopedRule> = Vec::new();
    let mut id = 0;
    for &index in ports {
        for _ in 0..rng.range(0, 30) {
            let v4 = rng.one_in(2);
            let bits: u32 = if v4 { 32 } else { 128 };
            let len = u8::try_from(rng.range(0, bits as usize)).expect("small");
            let high = u128::from(rng.below(4)) << (bits - 2);
            let low = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            let low = if v4 { low & 0x3fff_ffff } else { low >> 2 };
            let host = bits - u32::from(len);
            let addr = if host == 128 {
                0
            } else {
                (high | low) >> host << host
            };
            let fam = if v4 { family::IPV4 } else { family::IPV6 };
            if rules
                .iter()
                .any(|r| (r.index, r.family, r.addr, r.len) == (index, fam, addr, len))
            {
                continue;
            }
            rules.push(ScopedRule {
                index,
                family: fam,
                addr,
                len,
                action: [action::PASS, action::DROP, action::REDIRECT][rng.index(3)],
                slot: u32::try_from(rng.below(2)).expect("0 or 1"),
                id,
            });
            id += 1;
        }
    }
    rules
}

/// Destinations at the edges of `rules`' prefixes (first and last address and their
/// neighbours) and random ones of both families.
fn edges(rules: &[ScopedRule], rng: &mut Rng) -> Vec<(u8, u128)> {
    let mut dsts: Vec<(u8, u128)> = Vec::new();
    for r in rules {
        let bits = if r.family == family::IPV4 { 32 } else { 128 };
        let host = bits - u32::from(r.len);
        let last = if host == 128 {
            u128::MAX
        } else {
            r.addr | ((1u128 << host) - 1)
        };
        let max = if bits == 32 { 0xffff_ffff } else { u128::MAX };
        for a in [
            r.addr,
            last,
            r.addr.wrapping_sub(1) & max,
            last.wrapping_add(1) & max,
        ] {
            dsts.push((r.family, a));
        }
    }
    for _ in 0..20 {
        let a = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        dsts.push((family::IPV4, a & 0xffff_ffff));
        dsts.push((family::IPV6, a));
    }
    dsts
}

/// A TCP or UDP frame (as `index` says) to `addr` of `fam` and `index`'s port, `tags` VLAN
/// tags deep.
fn frame_to(index: u32, fam: u8, addr: u128, tags: usize) -> Vec<u8> {
    let port = u16::try_from(index & 0xffff).expect("a port");
    let tcp = index >> 16 == PROTO_TCP;
    let mut frame = if fam == family::IPV4 {
        let b = if tcp {
            FrameBuilder::tcp(port, 8)
        } else {
            FrameBuilder::udp(port, 8)
        };
        let mut f = b.build();
        f[30..34].copy_from_slice(&u32::try_from(addr).expect("IPv4").to_be_bytes());
        f
    } else {
        let mut b = if tcp {
            Ipv6Builder::tcp(port, 8)
        } else {
            Ipv6Builder::udp(port, 8)
        };
        b.dst = addr.to_be_bytes();
        b.build()
    };
    for _ in 0..tags {
        frame = tagged(&frame, ETH_P_8021Q, 7);
    }
    frame
}

/// Random address-scoped bindings (both families, nested and overlapping prefixes, several
/// ports, with and without a binding without a prefix) and frames aimed at their edges,
/// through the kernel and the model's plain scan.
#[test]
fn scoped_bindings_agree_with_model() {
    let seed = env_u64("PORT_DEMUX_SEED").unwrap_or(0x005c_09ed);
    let mut rng = Rng::new(seed);
    let mut h = Harness::new(action::PASS).expect("load");
    h.set_slot(0, LO_IFINDEX);
    let ports = [
        port_index(PROTO_UDP, 53),
        port_index(PROTO_TCP, 443),
        port_index(PROTO_UDP, 9),
    ];
    let mut frames = 0u64;
    for round in 0..40 {
        let rules = random_rules(&mut rng, &ports);
        for &index in &ports {
            let act = [action::UNBOUND, action::PASS, action::DROP][rng.index(3)];
            h.set_binding(index, binding(act, 0));
        }
        h.set_scoped(rules.clone());
        for (fam, addr) in edges(&rules, &mut rng) {
            let index = ports[rng.index(ports.len())];
            let frame = frame_to(index, fam, addr, rng.range(0, 2));
            let verdict = h.check(&frame, false).unwrap_or_else(|m| {
                panic!(
                    "round {round} (seed {seed:#x}): {m}\n{}\nrules {rules:?}",
                    to_hex(&frame)
                )
            });
            assert_eq!(
                verdict.scoped,
                most_specific(&rules, index, fam, addr).map(|r| r.id)
            );
            frames += 1;
        }
    }
    println!("scoped: {frames} frames agreed with the model (seed {seed:#x})");
}
