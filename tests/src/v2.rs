//! An instance of layout v2 (main at 5e68fb7, IPv4 only; its object is kept as
//! `tests/fixtures/port-demux-v2.o`), made as v2's loader made it: maps pinned in
//! `/sys/fs/bpf/port-demux/netns-<inode>/<iface>/`, the program attached through a pinned
//! `bpf_link`, `META` saying layout 2. Every build must keep finding, upgrading and unloading it.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, MapData},
    programs::{Xdp, XdpMode, links::FdLink},
};
use port_demux::common::{
    Binding, LAYOUT_VERSION_V2, LAYOUT_VERSION_V3, LAYOUT_VERSION_V4, LAYOUT_VERSION_V5,
    LAYOUT_VERSION_V6, LAYOUT_VERSION_V7, MODE_NATIVE, Meta, PROTO_UDP, PortScope, ScopeV4,
    ScopeV6, ScopedBinding, action, port_index,
};

use crate::netns::Netns;

/// The v2 pins: every map but `GLOBALS2`, and the program and link.
pub const V2_PINS: [&str; 7] = [
    "BINDINGS",
    "PORT_STATS",
    "GLOBALS",
    "REDIRECT",
    "META",
    "prog",
    "link",
];

/// The v3 pins (main at 9b4f76c, before address-scoped bindings; its object is kept as
/// `tests/fixtures/port-demux-v3.o`): v2's and `GLOBALS2`.
pub const V3_PINS: [&str; 8] = [
    "BINDINGS",
    "PORT_STATS",
    "GLOBALS",
    "REDIRECT",
    "META",
    "GLOBALS2",
    "prog",
    "link",
];

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Inode of namespace `ns`: what v2 keyed its pin folder by.
///
/// # Panics
/// When `/run/netns/NAME` cannot be read.
#[must_use]
pub fn netns_inode(ns: &str) -> u64 {
    let path = Path::new("/run/netns").join(ns);
    fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

/// Loads the v2 object on `iface` of `ns` in native mode, as v2's `port-demux load IFACE` did;
/// returns the pin folder.
///
/// # Panics
/// When any step fails.
#[must_use]
pub fn load_v2(ns: &Netns, iface: &str) -> PathBuf {
    load_old(
        ns,
        iface,
        "port-demux-v2.o",
        &V2_PINS[..5],
        LAYOUT_VERSION_V2,
        None,
    )
}

/// Loads the v3 object on `iface` of `ns` in native mode, as main's `port-demux load IFACE`
/// did before address-scoped bindings; returns the pin folder.
///
/// # Panics
/// When any step fails.
#[must_use]
pub fn load_v3(ns: &Netns, iface: &str) -> PathBuf {
    load_old(
        ns,
        iface,
        "port-demux-v3.o",
        &V3_PINS[..6],
        LAYOUT_VERSION_V3,
        None,
    )
}

/// The v4 pins (main at b3c145c, interval tables as arrays of records; its object is kept as
/// `tests/fixtures/port-demux-v4.o`): v3's and the scope maps.
pub const V4_MAPS: [&str; 11] = [
    "BINDINGS",
    "PORT_STATS",
    "GLOBALS",
    "REDIRECT",
    "META",
    "GLOBALS2",
    "SCOPES",
    "SCOPE_V4",
    "SCOPE_V6",
    "SCOPED",
    "SCOPED_STATS",
];

/// Loads the v4 object on `iface` of `ns` in native mode, as main's `port-demux load IFACE`
/// did before the interval tables became one value each, in its folder layout
/// (`ns-<cookie>/if-<ifindex>`); returns the pin folder.
///
/// # Panics
/// When any step fails.
#[must_use]
pub fn load_v4(ns: &Netns, iface: &str) -> PathBuf {
    load_in_ns_folder(ns, iface, "port-demux-v4.o", &V4_MAPS, LAYOUT_VERSION_V4)
}

/// Loads the v5 object (main at b8e19d6, one `PORT_STATS` entry per port; kept as
/// `tests/fixtures/port-demux-v5.o`) on `iface` of `ns` in native mode, as main's `port-demux
/// load IFACE` did then; returns the pin folder. Its maps have v4's names.
///
/// # Panics
/// When any step fails.
#[must_use]
pub fn load_v5(ns: &Netns, iface: &str) -> PathBuf {
    load_in_ns_folder(ns, iface, "port-demux-v5.o", &V4_MAPS, LAYOUT_VERSION_V5)
}

/// Loads the v6 object (main at 6ae0f2b, 16 ports a 256-byte `PORT_STATS2` entry; kept as
/// `tests/fixtures/port-demux-v6.o`) on `iface` of `ns` in native mode, as main's `port-demux
/// load IFACE` did then; returns the pin folder. Its maps have v4's names but the counters.
///
/// # Panics
/// When any step fails.
#[must_use]
pub fn load_v6(ns: &Netns, iface: &str) -> PathBuf {
    let mut maps = V4_MAPS;
    maps[1] = "PORT_STATS2";
    load_in_ns_folder(ns, iface, "port-demux-v6.o", &maps, LAYOUT_VERSION_V6)
}

/// Loads the v7 object (main at 33a2f6c, `BINDINGS` an array of one entry a port, which the
/// program looked up; kept as `tests/fixtures/port-demux-v7.o`) on `iface` of `ns` in native
/// mode, as main's `port-demux load IFACE` did then; returns the pin folder. Its maps have
/// v4's names but the counters, `PORT_STATS3`.
///
/// # Panics
/// When any step fails.
#[must_use]
pub fn load_v7(ns: &Netns, iface: &str) -> PathBuf {
    let mut maps = V4_MAPS;
    maps[1] = "PORT_STATS3";
    load_in_ns_folder(ns, iface, "port-demux-v7.o", &maps, LAYOUT_VERSION_V7)
}

/// [`load_old`] of an object with v4's maps (v4, v5; v6 with its counters) into this build's
/// folder layout, `ns-<cookie>/if-<ifindex>`.
fn load_in_ns_folder(
    ns: &Netns,
    iface: &str,
    fixture_name: &str,
    maps: &[&str],
    version: u32,
) -> PathBuf {
    let dir = Path::new(port_demux::BPFFS)
        .join("port-demux")
        .join(format!("ns-{}", ns.scope().netns_cookie()))
        .join(format!("if-{}", ns.ifindex(iface)));
    load_old(ns, iface, fixture_name, maps, version, Some(dir))
}

/// Adds the address-scoped binding `b` (its id 0, the port's only one, with no binding
/// without a prefix) to the v4 instance pinned in `dir` by writing its maps as v4's `bind
/// --dst` did: `SCOPED`, the port's interval table from record 0 of `SCOPE_V4` or
/// `SCOPE_V6` (arrays of records), its `SCOPES` word, then the `SCOPED` flag in its binding.
///
/// # Panics
/// When a map cannot be written.
pub fn bind_scoped_v4(dir: &Path, b: ScopedBinding) {
    fn array<V: aya::Pod>(dir: &Path, name: &str) -> Array<MapData, V> {
        let data = MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        Array::try_from(aya::maps::Map::Array(data)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
    array::<ScopedBinding>(dir, "SCOPED")
        .set(0, b, 0)
        .expect("SCOPED");
    let tables = port_demux::prefix::Tables::build(&[port_demux::prefix::rule_of(0, &b)]);
    let mut v4 = array::<ScopeV4>(dir, "SCOPE_V4");
    for (i, r) in (0u32..).zip(&tables.v4) {
        v4.set(i, *r, 0).expect("SCOPE_V4");
    }
    let mut v6 = array::<ScopeV6>(dir, "SCOPE_V6");
    for (i, r) in (0u32..).zip(&tables.v6) {
        v6.set(i, *r, 0).expect("SCOPE_V6");
    }
    let mut scopes = array::<PortScope>(dir, "SCOPES");
    for (index, scope) in &tables.scopes {
        scopes.set(*index, *scope, 0).expect("SCOPES");
    }
    let mut flagged: Binding = bytemuck::Zeroable::zeroed();
    flagged.action = action::UNBOUND | action::SCOPED;
    array::<Binding>(dir, "BINDINGS")
        .set(b.index, flagged, 0)
        .expect("BINDINGS");
}

/// Loads an older release's object (`fixture` in `tests/fixtures`) on `iface` of `ns`, pinning
/// `maps` and writing `META` of layout `version` in `dir`, or in main's folder layout before
/// v4 (`netns-<inode>/<iface>`); returns the pin folder.
fn load_old(
    ns: &Netns,
    iface: &str,
    fixture_name: &str,
    maps: &[&str],
    version: u32,
    dir: Option<PathBuf>,
) -> PathBuf {
    let scope = ns.scope();
    // Made under the writers' lock, as v2's loader made it under its own: a writer sweeping
    // meanwhile would take the half-made folder for a dead writer's.
    let _writers = port_demux::DirLock::writers(Path::new(port_demux::BPFFS))
        .unwrap_or_else(|e| panic!("the writers' lock: {e}"));
    let ino = netns_inode(ns.name());
    let dir = dir.unwrap_or_else(|| {
        Path::new(port_demux::BPFFS)
            .join("port-demux")
            .join(format!("netns-{ino}"))
            .join(iface)
    });
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .expect("creating the pin folder");
    let object = fixture(fixture_name);
    let paths: Vec<(&str, PathBuf)> = maps.iter().map(|m| (*m, dir.join(m))).collect();
    let mut loader = EbpfLoader::new();
    loader
        .override_global("DEFAULT_ACTION", &action::PASS, true)
        .override_global(aya_log::LEVEL, &0u8, false);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(&object).expect("the old object loads");
    let prog: &mut Xdp = ebpf
        .program_mut("port_demux")
        .expect("port_demux")
        .try_into()
        .expect("XDP");
    prog.load()
        .expect("the host verifier takes the old program");
    let ifindex = ns.ifindex(iface);
    let link_id = scope
        .run(|| prog.attach_to_if_index(ifindex, XdpMode::Driver))
        .expect("entering the namespace")
        .expect("attaching the old program");
    prog.pin(dir.join("prog")).expect("pinning prog");
    let link: FdLink = prog
        .take_link(link_id)
        .expect("the link")
        .try_into()
        .expect("an fd link");
    link.pin(dir.join("link")).expect("pinning link");
    let mut meta: Meta = bytemuck::Zeroable::zeroed();
    meta.layout_version = version;
    meta.ifindex = ifindex;
    meta.default_action = action::PASS;
    meta.mode = MODE_NATIVE;
    meta.netns_ino = ino;
    meta.ifname[..iface.len()].copy_from_slice(iface.as_bytes());
    let mut meta_map: Array<MapData, Meta> = Array::try_from(aya::maps::Map::Array(
        MapData::from_pin(dir.join("META")).expect("META"),
    ))
    .expect("META is an array");
    meta_map.set(0, meta, 0).expect("writing META");
    dir
}

/// Binds `port` (UDP) to `act` by writing the pinned v2 `BINDINGS` of `dir`, as v2's `bind` did.
///
/// # Panics
/// When the map cannot be written.
pub fn bind_v2(dir: &Path, port: u16, act: u32) {
    let mut bindings: Array<MapData, Binding> = Array::try_from(aya::maps::Map::Array(
        MapData::from_pin(dir.join("BINDINGS")).expect("BINDINGS"),
    ))
    .expect("an array");
    let mut b: Binding = bytemuck::Zeroable::zeroed();
    b.action = act;
    b.owner[..2].copy_from_slice(b"v2");
    bindings
        .set(port_index(PROTO_UDP, port), b, 0)
        .expect("binding");
}
