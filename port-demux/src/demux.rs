//! [`PortDemux`]: one instance of the data path on one interface, found through its pins.

use std::{
    fs, io,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::DirBuilderExt as _,
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramInfo, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use bytemuck::Zeroable as _;
use port_demux_common::{
    BINDINGS_LEN, Binding, GlobalCounters, Globals, LAYOUT_VERSION, LAYOUT_VERSION_V2, MODE_NATIVE,
    MODE_SKB, Meta, OWNER_LEN, PortCounters, REDIRECT_SLOTS, action, outcome, port_index,
};

use crate::{
    Action, DefaultAction, Error, PortSpec, Proto, Result, kernel, netlink,
    scope::{DirLock, Scope},
    spec::valid_ifname,
    sys,
};

/// The XDP program, built from `port-demux-ebpf` by the build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/port-demux"));
/// The program's name in the object.
pub const PROGRAM: &str = "port_demux";
/// The same program with a debug log record per demultiplexed frame (`load --debug`).
pub const PROGRAM_DEBUG: &str = "port_demux_debug";

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_DEVMAP: u32 = 14;
/// Devmap values: `struct bpf_devmap_val { u32 ifindex; union { int fd; u32 id; } }`.
const DEVMAP_VALUE: u32 = 8;

/// The pinned maps: name, type, value size, entries. Layout v2 had all but the last.
#[expect(clippy::cast_possible_truncation, reason = "sizes of small structs")]
const MAPS: [(&str, u32, u32, u32); 6] = [
    (
        "BINDINGS",
        BPF_MAP_TYPE_ARRAY,
        size_of::<Binding>() as u32,
        BINDINGS_LEN,
    ),
    (
        "PORT_STATS",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        size_of::<PortCounters>() as u32,
        BINDINGS_LEN,
    ),
    (
        "GLOBALS",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        size_of::<GlobalCounters>() as u32,
        1,
    ),
    (
        "REDIRECT",
        BPF_MAP_TYPE_DEVMAP,
        DEVMAP_VALUE,
        REDIRECT_SLOTS,
    ),
    ("META", BPF_MAP_TYPE_ARRAY, size_of::<Meta>() as u32, 1),
    (
        "GLOBALS2",
        BPF_MAP_TYPE_PERCPU_ARRAY,
        size_of::<Globals>() as u32,
        1,
    ),
];
/// The map layout v3 added; `load --upgrade` from v2 creates it.
const GLOBALS2: &str = "GLOBALS2";
/// The devmap of redirect targets.
const REDIRECT: &str = "REDIRECT";
/// Where `load --upgrade` from v2 pins the devmap it replaces `REDIRECT` with, until the swap.
const REDIRECT_V3: &str = "REDIRECT-v3";
const PROG_PIN: &str = "prog";
const LINK_PIN: &str = "link";

/// How to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Mode {
    /// Native if the driver supports it, else generic (skb).
    #[default]
    Auto,
    /// Native (driver) XDP.
    Native,
    /// Generic XDP, run by the stack on the skb.
    Skb,
}

impl Mode {
    /// `"native"`, `"skb"` or `"auto"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
}

/// Options of [`PortDemux::load`] (and of [`PortDemux::upgrade`], which keeps the running
/// instance's mode and default action and uses only `debug` and `verifier_log`).
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Attach mode.
    pub mode: Mode,
    /// Action for unbound ports.
    pub default_action: DefaultAction,
    /// Replace a foreign XDP program instead of refusing.
    pub force: bool,
    /// Compile debug logging in (read it with `port-demux log`).
    pub debug: bool,
    /// Where to write the verifier's log when it rejects the program (default: a file in the
    /// temporary directory, named in the error).
    pub verifier_log: Option<PathBuf>,
}

/// What [`PortDemux::load`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LoadReport {
    /// The mode the program runs in: native or skb.
    pub mode: Mode,
    /// Why native was not used, when `auto` fell back to skb.
    pub fallback_reason: Option<String>,
    /// Id of the program in the kernel.
    pub prog_id: u32,
    /// Id of a foreign program that `force` replaced.
    pub replaced: Option<u32>,
    /// Pins of an instance that no longer ran were found and removed first.
    pub stale_pins_removed: bool,
}

/// What [`PortDemux::upgrade`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct UpgradeReport {
    /// The program that ran before.
    pub old_prog_id: u32,
    /// The program that runs now.
    pub new_prog_id: u32,
}

/// Options of [`PortDemux::bind`].
#[derive(Clone, Debug, Default)]
pub struct BindOptions {
    /// Overwrite existing bindings instead of refusing.
    pub replace: bool,
    /// Who binds, recorded with the binding (at most 16 bytes).
    pub owner: String,
}

/// A run of consecutive ports with the same binding.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BindingRange {
    /// Ports.
    pub ports: PortSpec,
    /// Action.
    pub action: Action,
    /// Owner label, may be empty.
    pub owner: String,
}

/// Counters of one (protocol, port); as JSON `{"proto", "port", "packets", "bytes", "action"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PortStat {
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
    /// Frames.
    pub packets: u64,
    /// Bytes, Ethernet header included.
    pub bytes: u64,
    /// The binding, if bound.
    pub action: Option<Action>,
}

/// Totals over all ports and CPUs; as JSON `{"packets", "demuxed_bytes", "outcomes": {NAME:
/// frames, ..., "not_ipv4" (deprecated: the value of "not_ip", kept one release)}, "families":
/// {"ipv4", "ipv6"}, "redirects": {"redirected", "fallback"}}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Every frame the program saw: the demultiplexed ones and the others.
    pub packets: u64,
    /// Frames per outcome, indexed like [`port_demux_common::outcome::NAMES`]; the accessors
    /// ([`Totals::demuxed`], [`Totals::not_ip`], ...) name the cells. Demultiplexed frames
    /// are the sum of the per-port counters; the others are counted by outcome.
    pub outcomes: [u64; outcome::COUNT],
    /// Demultiplexed IPv6 frames (counted in `GLOBALS`); the IPv4 ones are the rest of
    /// `outcomes[DEMUXED]` ([`Totals::demuxed_ipv4`]).
    pub demuxed_ipv6: u64,
    /// Bytes of the demultiplexed frames (sum of the per-port counters).
    pub demuxed_bytes: u64,
    /// Demultiplexed frames redirected.
    pub redirected: u64,
    /// Demultiplexed frames bound to a redirect whose target was gone: passed instead.
    pub redirect_fallback: u64,
}

impl Totals {
    /// IPv4 or IPv6 TCP or UDP frames whose destination port was read: the sum of the
    /// per-port packet counters.
    #[must_use]
    pub const fn demuxed(&self) -> u64 {
        self.outcomes[outcome::DEMUXED]
    }

    /// Demultiplexed IPv4 frames: the demultiplexed ones that were not IPv6.
    #[must_use]
    pub const fn demuxed_ipv4(&self) -> u64 {
        self.demuxed().saturating_sub(self.demuxed_ipv6)
    }

    /// Frames neither IPv4 nor IPv6 after up to two VLAN tags (passed).
    #[must_use]
    pub const fn not_ip(&self) -> u64 {
        self.outcomes[outcome::NOT_IP]
    }

    /// IPv4 or IPv6 frames of another protocol than TCP and UDP (passed).
    #[must_use]
    pub const fn not_tcp_udp(&self) -> u64 {
        self.outcomes[outcome::NOT_TCP_UDP]
    }

    /// Non-first fragments (passed).
    #[must_use]
    pub const fn fragment(&self) -> u64 {
        self.outcomes[outcome::FRAGMENT]
    }

    /// Malformed frames (passed).
    #[must_use]
    pub const fn malformed(&self) -> u64 {
        self.outcomes[outcome::MALFORMED]
    }

    /// Frames with more than two VLAN tags (passed).
    #[must_use]
    pub const fn vlan_too_deep(&self) -> u64 {
        self.outcomes[outcome::VLAN_TOO_DEEP]
    }

    /// IPv6 frames with more extension headers than the data path walks (passed).
    #[must_use]
    pub const fn ext_headers_too_long(&self) -> u64 {
        self.outcomes[outcome::EXT_HEADERS_TOO_LONG]
    }

    /// Multi-buffer frames whose headers do not fit in the first buffer (passed).
    #[must_use]
    pub const fn headers_past_first_buffer(&self) -> u64 {
        self.outcomes[outcome::HEADERS_PAST_FIRST_BUFFER]
    }

    /// Frames that were not demultiplexed, whatever the outcome.
    #[must_use]
    pub const fn not_demuxed(&self) -> u64 {
        self.packets - self.demuxed()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Totals {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;

        /// `{NAME: value, ...}`.
        struct Named<'a>(&'a [&'a str], &'a [u64]);
        impl serde::Serialize for Named<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().zip(self.1))
            }
        }

        // The outcomes, then the layout-v2 key of `not_ip` for the consumers written
        // against it (one release).
        let mut names = outcome::NAMES.to_vec();
        names.push(outcome::DEPRECATED_NOT_IPV4);
        let mut values = self.outcomes.to_vec();
        values.push(self.not_ip());
        let mut map = s.serialize_map(Some(5))?;
        map.serialize_entry("packets", &self.packets)?;
        map.serialize_entry("demuxed_bytes", &self.demuxed_bytes)?;
        map.serialize_entry("outcomes", &Named(&names, &values))?;
        map.serialize_entry(
            "families",
            &Named(&["ipv4", "ipv6"], &[self.demuxed_ipv4(), self.demuxed_ipv6]),
        )?;
        map.serialize_entry(
            "redirects",
            &Named(
                &["redirected", "fallback"],
                &[self.redirected, self.redirect_fallback],
            ),
        )?;
        map.end()
    }
}

/// All counters of an instance; as JSON `{"ports": [...], "totals": {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    /// Every port with a non-zero counter or a binding, busiest first.
    pub ports: Vec<PortStat>,
    /// Global counters.
    pub totals: Totals,
}

impl Stats {
    /// The counters and binding of (`proto`, `port`): zero counters and no binding when the
    /// port had neither traffic nor a binding (such ports are not in [`Stats::ports`]).
    #[must_use]
    pub fn port(&self, proto: Proto, port: u16) -> PortStat {
        self.ports
            .iter()
            .find(|p| p.proto == proto && p.port == port)
            .cloned()
            .unwrap_or(PortStat {
                proto,
                port,
                packets: 0,
                bytes: 0,
                action: None,
            })
    }
}

/// What `status` reports of an instance; as JSON `{"interface", "ifindex", "mode",
/// "program_id", "attached", "bound_ports", "default", "debug", "pins"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Status {
    /// Interface.
    #[cfg_attr(feature = "serde", serde(rename = "interface"))]
    pub iface: String,
    /// Interface index recorded at load.
    pub ifindex: u32,
    /// Native or skb.
    pub mode: Mode,
    /// Program id, from the pinned program.
    #[cfg_attr(feature = "serde", serde(rename = "program_id"))]
    pub prog_id: u32,
    /// Whether the interface runs that program now.
    pub attached: bool,
    /// Number of bound ports.
    pub bound_ports: u32,
    /// Default action.
    #[cfg_attr(feature = "serde", serde(rename = "default"))]
    pub default_action: DefaultAction,
    /// Debug logging compiled in.
    pub debug: bool,
    /// Instructions the kernel's verifier processed to accept the program (its margin to the
    /// 1,000,000 limit and to older verifiers), when the kernel reports it (5.16 and later).
    pub verified_insns: Option<u32>,
    /// Pin folder.
    #[cfg_attr(feature = "serde", serde(rename = "pins"))]
    pub pin_dir: PathBuf,
}

/// One instance of port-demux on one interface, opened through its pins.
#[derive(Debug)]
pub struct PortDemux {
    scope: Scope,
    iface: String,
    dir: PathBuf,
    meta: Meta,
    bindings: OwnedFd,
    port_stats: OwnedFd,
    globals: OwnedFd,
    globals2: OwnedFd,
    redirect: OwnedFd,
}

impl PortDemux {
    /// Loads the program, attaches it to `iface` and pins program, link and maps; the data path
    /// keeps running after this process exits. All or nothing: on error no pin is left.
    ///
    /// # Errors
    /// Unknown interface, already loaded, a foreign program (unless `force`), attach or load
    /// failures, missing privileges.
    ///
    /// # Panics
    /// Never: the embedded object always has the XDP program.
    pub fn load(scope: &Scope, iface: &str, opts: &LoadOptions) -> Result<(Self, LoadReport)> {
        check_ifname(iface)?;
        kernel::check()?;
        let ifindex = scope
            .ifindex(iface)?
            .ok_or_else(|| Error::UnknownInterface {
                iface: iface.to_owned(),
                where_: scope.where_(),
            })?;
        scope.ensure_bpffs()?;
        let ns_dir = scope.create_dir()?;
        let _lock = DirLock::exclusive(&ns_dir)?;
        let dir = ns_dir.join(pin_name(iface));
        let mut stale_pins_removed = false;
        if dir.exists() {
            if pinned_program_attached(scope, &dir, ifindex)? {
                return Err(Error::AlreadyLoaded {
                    iface: iface.to_owned(),
                });
            }
            // Pins whose program no longer runs on this interface: left by a namespace that
            // was deleted without `unload` (the kernel reuses its inode number, which keys the
            // folder) or by a program detached behind port-demux's back.
            remove_pins(&dir)?;
            stale_pins_removed = true;
        }
        let replaced = replace_foreign(scope, iface, ifindex, opts.force)?;
        let tmp = ns_dir.join(format!(
            "{STAGING}{}-{}",
            std::process::id(),
            pin_name(iface)
        ));
        remove_pins(&tmp)?;
        // Root's only, like the folders above it: a group granted read access later gets it
        // folder by folder (see the README).
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| Error::io("cannot create", &tmp, e))?;
        match load_into(scope, iface, ifindex, opts, &tmp) {
            Ok((mode, fallback_reason, prog_id)) => {
                fs::rename(&tmp, &dir).map_err(|e| {
                    let _ = remove_pins(&tmp);
                    Error::io("cannot rename pins to", &dir, e)
                })?;
                // Opening checks the pins against this build's layout; a failure must not
                // leave a half-working instance behind.
                let this = Self::open(scope, iface).inspect_err(|_| {
                    let _ = remove_pins(&dir);
                })?;
                Ok((
                    this,
                    LoadReport {
                        mode,
                        fallback_reason,
                        prog_id,
                        replaced,
                        stale_pins_removed,
                    },
                ))
            }
            Err(e) => {
                let _ = remove_pins(&tmp);
                Err(e)
            }
        }
    }

    /// Opens the instance on `iface` through its pins.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], [`Error::Layout`], [`Error::Privileges`].
    pub fn open(scope: &Scope, iface: &str) -> Result<Self> {
        check_ifname(iface)?;
        let dir = scope.dir().join(pin_name(iface));
        match fs::metadata(&dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(if crate::is_bpffs(scope.bpffs()) {
                    Error::NotLoaded {
                        iface: iface.to_owned(),
                        where_: scope.where_(),
                    }
                } else {
                    Error::NoBpffs {
                        path: scope.bpffs().to_owned(),
                    }
                });
            }
            Err(e) => return Err(Error::io("cannot read", &dir, e)),
        }
        let meta = read_meta(&dir)?;
        if meta.layout_version == LAYOUT_VERSION_V2 {
            return Err(Error::LayoutV2 {
                path: dir,
                iface: iface.to_owned(),
            });
        }
        if meta.layout_version != LAYOUT_VERSION {
            return Err(Error::Layout {
                path: dir,
                found: meta.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        let [bindings, port_stats, globals, redirect, _meta, globals2] = open_maps(&dir, &MAPS)?;
        Ok(Self {
            scope: scope.clone(),
            iface: iface.to_owned(),
            dir,
            meta,
            bindings,
            port_stats,
            globals,
            globals2,
            redirect,
        })
    }

    /// Opens the only instance in `scope`, for commands whose `-i` was left out.
    ///
    /// # Errors
    /// [`Error::WhichInterface`] when none or several are loaded.
    pub fn open_only(scope: &Scope) -> Result<Self> {
        let loaded = scope.loaded()?;
        match loaded.as_slice() {
            [iface] => Self::open(scope, iface),
            [] => Err(Error::WhichInterface(format!(
                "port-demux is not loaded on any interface{}: run `port-demux load IFACE` first",
                scope.where_()
            ))),
            many => Err(Error::WhichInterface(format!(
                "port-demux is loaded on {}: say which with -i IFACE",
                many.join(", ")
            ))),
        }
    }

    /// Detaches the program and removes every pin of `iface`.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], or when a pin cannot be removed.
    pub fn unload(scope: &Scope, iface: &str) -> Result<()> {
        check_ifname(iface)?;
        let ns_dir = scope.dir();
        let dir = ns_dir.join(pin_name(iface));
        if !dir.exists() {
            return Err(Error::NotLoaded {
                iface: iface.to_owned(),
                where_: scope.where_(),
            });
        }
        let _lock = DirLock::exclusive(&ns_dir)?;
        let prog_id = sys::pinned_link_prog_id(&dir.join(LINK_PIN)).ok();
        // The link first: removing its last reference detaches the program.
        remove_pins(&dir)?;
        if scope.loaded()?.is_empty() {
            // The namespace's folder, then port-demux's own if no namespace is left in it.
            let _ = fs::remove_dir(&ns_dir);
            if let Some(root) = ns_dir.parent() {
                let _ = fs::remove_dir(root);
            }
        }
        // The kernel may release the link, and detach, after the unlink returns: wait for it,
        // so that a `load` right after finds the interface free.
        if let (Some(prog_id), Some(ifindex)) = (prog_id, scope.ifindex(iface)?) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while runs(scope, ifindex, prog_id)? {
                if std::time::Instant::now() > deadline {
                    return Err(Error::StillAttached {
                        iface: iface.to_owned(),
                        prog_id,
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Replaces the running program with this build's, atomically through its `bpf_link`
    /// (`BPF_LINK_UPDATE`): bindings, counters and redirect targets stay, no frame goes
    /// unprocessed. Refused when the pins' layout differs from this build's.
    ///
    /// Only `opts.debug` and `opts.verifier_log` are used: the instance keeps its mode and
    /// default action.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], [`Error::Layout`], [`Error::Detached`], [`Error::Verifier`], load
    /// or update failures.
    ///
    /// # Panics
    /// Never: the embedded object always has the XDP program.
    pub fn upgrade(scope: &Scope, iface: &str, opts: &LoadOptions) -> Result<UpgradeReport> {
        let this = match Self::open(scope, iface) {
            Err(Error::LayoutV2 { path, .. }) => return upgrade_v2(scope, iface, &path, opts),
            other => other?,
        };
        let _lock = DirLock::exclusive(&this.dir)?;
        this.check_attached()?;
        replace_program(&this.dir, iface, this.meta, opts, None)
    }

    /// The interface.
    #[must_use]
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The pin folder.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// The scope it was opened in.
    #[must_use]
    pub const fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Binds every port of `ports` to `action`; all or nothing. A port already bound is a
    /// conflict unless `opts.replace`.
    ///
    /// # Errors
    /// [`Error::Conflict`], [`Error::BadRedirectTarget`], [`Error::NoRedirectSlot`],
    /// [`Error::Detached`].
    pub fn bind(&self, ports: PortSpec, act: &Action, opts: &BindOptions) -> Result<()> {
        if opts.owner.len() > OWNER_LEN {
            return Err(Error::BadSpec(format!(
                "owner {:?} is longer than {OWNER_LEN} bytes: shorten it",
                opts.owner
            )));
        }
        let _lock = DirLock::exclusive(&self.dir)?;
        self.check_attached()?;
        let current = self.read_bindings()?;
        if !opts.replace
            && let Some(port) = ports.ports().find(|&p| {
                current[port_index(ports.proto.index(), p) as usize].action != action::UNBOUND
            })
        {
            let b = current[port_index(ports.proto.index(), port) as usize];
            let owner = owner_str(&b);
            return Err(Error::Conflict {
                port: PortSpec::single(ports.proto, port).to_string(),
                action: describe(&b, &self.slot_names()?).to_string(),
                owner: if owner.is_empty() {
                    String::new()
                } else {
                    format!(" (owner {owner})")
                },
            });
        }
        let mut value = Binding::zeroed();
        value.owner[..opts.owner.len()].copy_from_slice(opts.owner.as_bytes());
        value.action = match act {
            Action::Pass => action::PASS,
            Action::Drop => action::DROP,
            Action::Redirect(target) => {
                value.slot = self.redirect_slot(target, &current)?;
                action::REDIRECT
            }
        };
        self.write_bindings(ports, &value)?;
        if opts.replace {
            let after = self.read_bindings()?;
            self.collect_slots(&after)?;
        }
        Ok(())
    }

    /// Removes the bindings of every port of `ports`; all or nothing: every one must be bound.
    ///
    /// # Errors
    /// [`Error::NotBound`], [`Error::Detached`].
    pub fn unbind(&self, ports: PortSpec) -> Result<()> {
        let _lock = DirLock::exclusive(&self.dir)?;
        self.check_attached()?;
        let current = self.read_bindings()?;
        if let Some(port) = ports.ports().find(|&p| {
            current[port_index(ports.proto.index(), p) as usize].action == action::UNBOUND
        }) {
            return Err(Error::NotBound {
                port: PortSpec::single(ports.proto, port).to_string(),
            });
        }
        self.write_bindings(ports, &Binding::zeroed())?;
        let after = self.read_bindings()?;
        self.collect_slots(&after)
    }

    /// Every binding, as runs of consecutive ports with the same action and owner.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn bindings(&self) -> Result<Vec<BindingRange>> {
        let all = self.read_bindings()?;
        let slot_names = self.slot_names()?;
        Ok(coalesce(&all)
            .into_iter()
            .map(|(first, last, b)| BindingRange {
                ports: PortSpec {
                    proto: Proto::from_index(first),
                    first: low16(first),
                    last: low16(last),
                },
                action: describe(&b, &slot_names),
                owner: owner_str(&b),
            })
            .collect())
    }

    /// Per-port and global counters, summed over CPUs.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn stats(&self) -> Result<Stats> {
        // Globals first: see `totals`.
        let globals = self.globals()?;
        let counters = self.port_counters()?;
        let bindings = self.read_bindings()?;
        let slot_names = self.slot_names()?;
        let mut ports = Vec::new();
        for (index, (c, b)) in (0u32..).zip(counters.iter().zip(&bindings)) {
            if c.packets == 0 && c.bytes == 0 && b.action == action::UNBOUND {
                continue;
            }
            ports.push(PortStat {
                proto: Proto::from_index(index),
                port: low16(index),
                packets: c.packets,
                bytes: c.bytes,
                action: (b.action != action::UNBOUND).then(|| describe(b, &slot_names)),
            });
        }
        ports.sort_by(|a, b| {
            (b.packets, b.bytes)
                .cmp(&(a.packets, a.bytes))
                .then((a.proto, a.port).cmp(&(b.proto, b.port)))
        });
        Ok(Stats {
            ports,
            totals: totals(&counters, &globals),
        })
    }

    /// The totals alone, summed over ports and CPUs.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn totals(&self) -> Result<Totals> {
        // Globals first: a frame counted between the two reads then shows in the per-port
        // sum at worst, never as a redirect whose port count is missing.
        let globals = self.globals()?;
        Ok(totals(&self.port_counters()?, &globals))
    }

    /// `PORT_STATS`, summed over CPUs.
    fn port_counters(&self) -> Result<Vec<PortCounters>> {
        let cpus = sys::possible_cpus().map_err(|e| Error::io("cannot count", "CPUs", e))?;
        let stride = size_of::<PortCounters>() * cpus;
        let mut raw = vec![0u8; BINDINGS_LEN as usize * stride];
        sys::lookup_array_batch(self.port_stats.as_fd(), BINDINGS_LEN, stride, &mut raw)
            .map_err(|e| Error::io("cannot read", self.dir.join("PORT_STATS"), e))?;
        Ok(raw
            .chunks_exact(stride)
            .map(|per_cpu| {
                let mut sum = PortCounters::default();
                for c in per_cpu.chunks_exact(size_of::<PortCounters>()) {
                    let c: PortCounters = bytemuck::pod_read_unaligned(c);
                    sum.packets += c.packets;
                    sum.bytes += c.bytes;
                }
                sum
            })
            .collect())
    }

    /// `GLOBALS` and `GLOBALS2`, summed over CPUs and added.
    fn globals(&self) -> Result<Globals> {
        let cpus = sys::possible_cpus().map_err(|e| Error::io("cannot count", "CPUs", e))?;
        let read = |fd: &OwnedFd, name: &str, size: usize| -> Result<Vec<u8>> {
            let mut raw = vec![0u8; size * cpus];
            sys::lookup(fd.as_fd(), &0u32.to_ne_bytes(), &mut raw)
                .map_err(|e| Error::io("cannot read", self.dir.join(name), e))?;
            Ok(raw)
        };
        let v2 = read(&self.globals, "GLOBALS", size_of::<GlobalCounters>())?;
        let v3 = read(&self.globals2, GLOBALS2, size_of::<Globals>())?;
        let mut sum = Globals::default();
        for (a, b) in v2
            .chunks_exact(size_of::<GlobalCounters>())
            .zip(v3.chunks_exact(size_of::<Globals>()))
        {
            sum.add(&Globals::from_maps(
                &bytemuck::pod_read_unaligned(a),
                &bytemuck::pod_read_unaligned(b),
            ));
        }
        Ok(sum)
    }

    /// Attach mode, program id, whether it is attached, bindings.
    ///
    /// # Errors
    /// When the pins cannot be read.
    pub fn status(&self) -> Result<Status> {
        let link_path = self.dir.join(LINK_PIN);
        let prog_id = sys::pinned_link_prog_id(&link_path)
            .map_err(|e| Error::io("cannot read", &link_path, e))?;
        let attached = runs(&self.scope, self.meta.ifindex, prog_id)?;
        let bound_ports = u32::try_from(
            self.read_bindings()?
                .iter()
                .filter(|b| b.action != action::UNBOUND)
                .count(),
        )
        .unwrap_or(u32::MAX);
        Ok(Status {
            iface: self.iface.clone(),
            ifindex: self.meta.ifindex,
            mode: if self.meta.mode == MODE_SKB {
                Mode::Skb
            } else {
                Mode::Native
            },
            prog_id,
            attached,
            bound_ports,
            default_action: if self.meta.default_action == action::DROP {
                DefaultAction::Drop
            } else {
                DefaultAction::Pass
            },
            debug: self.meta.debug != 0,
            verified_insns: ProgramInfo::from_pin(self.dir.join(PROG_PIN))
                .ok()
                .and_then(|info| info.verified_instruction_count()),
            pin_dir: self.dir.clone(),
        })
    }

    /// Refuses to change an instance whose program no longer runs on its interface (the
    /// interface was deleted, or the program detached behind port-demux's back): a binding
    /// written there would report success and apply to nothing.
    fn check_attached(&self) -> Result<()> {
        let link_path = self.dir.join(LINK_PIN);
        let prog_id = sys::pinned_link_prog_id(&link_path)
            .map_err(|e| Error::io("cannot read", &link_path, e))?;
        let ifindex = self.meta.ifindex;
        let detail = match self.scope.run(|| netlink::xdp_query(ifindex))? {
            Ok(Some(a)) if a.runs(prog_id) => return Ok(()),
            Ok(Some(a)) => format!("{} runs XDP program id {} instead", self.iface, a.prog_id),
            Ok(None) => format!("{} has no XDP program", self.iface),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                format!("interface index {ifindex} is gone{}", self.scope.where_())
            }
            Err(e) => return Err(Error::io("cannot query XDP on", &self.iface, e)),
        };
        Err(Error::Detached {
            iface: self.iface.clone(),
            detail,
        })
    }

    /// Reads the whole `BINDINGS` array.
    fn read_bindings(&self) -> Result<Vec<Binding>> {
        let mut all = vec![Binding::zeroed(); BINDINGS_LEN as usize];
        sys::lookup_array_batch(
            self.bindings.as_fd(),
            BINDINGS_LEN,
            size_of::<Binding>(),
            bytemuck::cast_slice_mut(&mut all),
        )
        .map_err(|e| Error::io("cannot read", self.dir.join("BINDINGS"), e))?;
        Ok(all)
    }

    /// Writes `value` at every port of `ports`, one batch.
    fn write_bindings(&self, ports: PortSpec, value: &Binding) -> Result<()> {
        let keys: Vec<u32> = ports
            .ports()
            .map(|p| port_index(ports.proto.index(), p))
            .collect();
        let values = vec![*value; keys.len()];
        sys::update_batch(self.bindings.as_fd(), &keys, bytemuck::cast_slice(&values))
            .map_err(|e| Error::io("cannot write", self.dir.join("BINDINGS"), e))
    }

    /// The devmap slot that redirects to `target`, filling a free one if needed.
    fn redirect_slot(&self, target: &str, current: &[Binding]) -> Result<u32> {
        let ifindex = self
            .scope
            .ifindex(target)?
            .ok_or_else(|| Error::BadRedirectTarget {
                iface: target.to_owned(),
                where_: self.scope.where_(),
            })?;
        let slots = self.read_slots()?;
        if let Some(slot) = (0u32..)
            .zip(&slots)
            .find_map(|(s, i)| (*i == Some(ifindex)).then_some(s))
        {
            return Ok(slot);
        }
        let used = |slot: u32| {
            current
                .iter()
                .any(|b| b.action == action::REDIRECT && b.slot == slot)
        };
        let slot = (0..REDIRECT_SLOTS)
            .find(|&s| slots[s as usize].is_none() && !used(s))
            .ok_or(Error::NoRedirectSlot(REDIRECT_SLOTS))?;
        let mut value = [0u8; DEVMAP_VALUE as usize];
        value[..4].copy_from_slice(&ifindex.to_ne_bytes());
        // The devmap resolves the ifindex in the writer's network namespace.
        self.scope
            .run(|| sys::update(self.redirect.as_fd(), &slot.to_ne_bytes(), &value))?
            .map_err(|e| Error::io("cannot write", self.dir.join("REDIRECT"), e))?;
        Ok(slot)
    }

    /// The ifindex in each devmap slot.
    fn read_slots(&self) -> Result<Vec<Option<u32>>> {
        (0..REDIRECT_SLOTS)
            .map(|slot| {
                let mut value = [0u8; DEVMAP_VALUE as usize];
                let found = sys::lookup(self.redirect.as_fd(), &slot.to_ne_bytes(), &mut value)
                    .map_err(|e| Error::io("cannot read", self.dir.join("REDIRECT"), e))?;
                Ok(found.then(|| u32::from_ne_bytes([value[0], value[1], value[2], value[3]])))
            })
            .collect()
    }

    /// Empties the devmap slots no binding uses any more.
    fn collect_slots(&self, bindings: &[Binding]) -> Result<()> {
        let slots = self.read_slots()?;
        for (slot, ifindex) in (0u32..).zip(slots) {
            if ifindex.is_some()
                && !bindings
                    .iter()
                    .any(|b| b.action == action::REDIRECT && b.slot == slot)
            {
                sys::delete(self.redirect.as_fd(), &slot.to_ne_bytes())
                    .map_err(|e| Error::io("cannot write", self.dir.join("REDIRECT"), e))?;
            }
        }
        Ok(())
    }

    /// The interface each devmap slot redirects to, named once for all the bindings that
    /// use it.
    fn slot_names(&self) -> Result<Vec<Option<String>>> {
        self.read_slots()?
            .into_iter()
            .map(|slot| {
                slot.map(|ifindex| {
                    Ok(self
                        .scope
                        .ifname(ifindex)?
                        .unwrap_or_else(|| format!("ifindex-{ifindex}")))
                })
                .transpose()
            })
            .collect()
    }
}

/// Loads this build's program with the maps pinned in `dir` (creating those missing, which
/// are then pinned there) and swaps it in through the pinned link; writes `meta` as this
/// layout's with `debug`.
fn replace_program(
    dir: &Path,
    iface: &str,
    mut meta: Meta,
    opts: &LoadOptions,
    v2_redirect: Option<&Scope>,
) -> Result<UpgradeReport> {
    let debug = opts.debug;
    let staged = dir.join(REDIRECT_V3);
    let mut ebpf = load_object_with(
        dir,
        meta.default_action,
        debug,
        opts.verifier_log.as_deref(),
        v2_redirect.map(|_| staged.as_path()),
    )?;
    if let Some(scope) = v2_redirect {
        copy_devmap(scope, &dir.join(REDIRECT), &staged)?;
    }
    let prog = xdp_program(&mut ebpf, debug);
    let link_path = dir.join(LINK_PIN);
    let link: FdLink = PinnedLink::from_pin(&link_path)
        .map_err(|e| Error::io("cannot open", &link_path, io::Error::other(e)))?
        .into();
    let old_prog_id = link
        .info()
        .map_err(|e| Error::io("cannot read", &link_path, io::Error::other(e)))?
        .program_id();
    let link = XdpLink::try_from(link)
        .map_err(|e| Error::io("not an XDP link:", &link_path, io::Error::other(e)))?;
    prog.attach_to_link(link).map_err(|source| Error::Attach {
        iface: iface.to_owned(),
        mode: "upgrade".to_owned(),
        source: Box::new(source),
    })?;
    let new_prog_id = prog
        .info()
        .map_err(|e| Error::Ebpf(Box::new(e.into())))?
        .id();
    if v2_redirect.is_some() {
        // The new program runs with the new devmap: its pin takes the usual name.
        fs::rename(&staged, dir.join(REDIRECT))
            .map_err(|e| Error::io("cannot rename", &staged, e))?;
    }
    // Re-pin the program under its usual name; the link pin is the same link.
    let next = dir.join("prog-next");
    let _ = fs::remove_file(&next);
    prog.pin(&next)
        .map_err(|e| Error::io("cannot pin", &next, io::Error::other(e)))?;
    fs::rename(&next, dir.join(PROG_PIN)).map_err(|e| Error::io("cannot rename", &next, e))?;
    meta.debug = u32::from(debug);
    meta.layout_version = LAYOUT_VERSION;
    write_meta(dir, &meta)?;
    Ok(UpgradeReport {
        old_prog_id,
        new_prog_id,
    })
}

/// Copies every filled slot of the devmap pinned at `from` into the one pinned at `to`, in
/// `scope`'s namespace (a devmap resolves an ifindex in its writer's namespace).
fn copy_devmap(scope: &Scope, from: &Path, to: &Path) -> Result<()> {
    let old = sys::obj_get_readable(from).map_err(|e| Error::io("cannot open", from, e))?;
    let new = sys::obj_get(to, false).map_err(|e| Error::io("cannot open", to, e))?;
    for slot in 0..REDIRECT_SLOTS {
        let mut value = [0u8; DEVMAP_VALUE as usize];
        let found = sys::lookup(old.as_fd(), &slot.to_ne_bytes(), &mut value)
            .map_err(|e| Error::io("cannot read", from, e))?;
        if found {
            // Only the ifindex: the slot holds no program.
            value[4..].fill(0);
            scope
                .run(|| sys::update(new.as_fd(), &slot.to_ne_bytes(), &value))?
                .map_err(|e| Error::io("cannot write", to, e))?;
        }
    }
    Ok(())
}

/// `load --upgrade` of pins of layout v2: every v2 map is checked; the bindings, per-port
/// counters and global cells 0-6 mean the same in v3 and are kept as they are; `GLOBALS2` is
/// created and pinned; the redirect targets are copied into a new devmap (see below); then
/// the program is swapped in through the link, as for any upgrade. On a failure before the
/// swap, the new pins are removed again: nothing changed.
fn upgrade_v2(scope: &Scope, iface: &str, dir: &Path, opts: &LoadOptions) -> Result<UpgradeReport> {
    let _lock = DirLock::exclusive(dir)?;
    // Re-read under the lock: another upgrade may have finished meanwhile.
    let meta = read_meta(dir)?;
    if meta.layout_version != LAYOUT_VERSION_V2 {
        return PortDemux::upgrade(scope, iface, opts);
    }
    let v2_maps: [(&str, u32, u32, u32); 5] = [MAPS[0], MAPS[1], MAPS[2], MAPS[3], MAPS[4]];
    open_maps(dir, &v2_maps)?;
    let globals2 = dir.join(GLOBALS2);
    let created = !globals2.exists();
    if !created {
        // Left by an upgrade that stopped after creating it: reused if it is the right map.
        open_maps(dir, &[MAPS[5]])?;
    }
    let link_path = dir.join(LINK_PIN);
    let prog_id = sys::pinned_link_prog_id(&link_path)
        .map_err(|e| Error::io("cannot read", &link_path, e))?;
    if !runs(scope, meta.ifindex, prog_id)? {
        return Err(Error::Detached {
            iface: iface.to_owned(),
            detail: format!("{iface} does not run the pinned program id {prog_id}"),
        });
    }
    // The kernel lets a devmap serve only programs that agree on multi-buffer support
    // (`xdp.frags`): v2's program was not frags-aware, so v2's `REDIRECT` cannot serve this
    // build's. The upgrade gives it a new devmap with the same slots, swapped in with the
    // program; bindings name slots, so they stay valid.
    let _ = fs::remove_file(dir.join(REDIRECT_V3));
    replace_program(dir, iface, meta, opts, Some(scope)).inspect_err(|_| {
        let _ = fs::remove_file(dir.join(REDIRECT_V3));
        if created {
            let _ = fs::remove_file(&globals2);
        }
    })
}

/// Totals from the per-port counters and the global ones.
fn totals(ports: &[PortCounters], globals: &Globals) -> Totals {
    let mut outcomes = globals.not_demuxed();
    outcomes[outcome::DEMUXED] = ports.iter().map(|c| c.packets).sum();
    Totals {
        packets: outcomes.iter().sum(),
        outcomes,
        demuxed_ipv6: globals.frames[Globals::DEMUXED_IPV6],
        demuxed_bytes: ports.iter().map(|c| c.bytes).sum(),
        redirected: globals.frames[Globals::REDIRECTED],
        redirect_fallback: globals.frames[Globals::REDIRECT_FALLBACK],
    }
}

/// The [`Action`] of a binding, naming the redirect target from [`PortDemux::slot_names`].
fn describe(b: &Binding, slot_names: &[Option<String>]) -> Action {
    match b.action {
        action::DROP => Action::Drop,
        action::REDIRECT => Action::Redirect(
            slot_names
                .get(b.slot as usize)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "(gone)".to_owned()),
        ),
        _ => Action::Pass,
    }
}

/// Prefix of the folders a `load` in progress pins into (longer than any interface name).
pub(crate) const STAGING: &str = "staging-loader-pid";

/// The pin folder name of an interface: bpffs refuses names with dots, so `.` becomes `%2E`
/// (and `%` becomes `%25`).
pub(crate) fn pin_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2E")
}

/// The interface named by a pin folder.
pub(crate) fn iface_of_pin(name: &str) -> String {
    name.replace("%2E", ".").replace("%25", "%")
}

fn low16(index: u32) -> u16 {
    (index & 0xffff) as u16
}

fn owner_str(b: &Binding) -> String {
    let end = b.owner.iter().position(|&c| c == 0).unwrap_or(OWNER_LEN);
    String::from_utf8_lossy(&b.owner[..end]).into_owned()
}

fn check_ifname(iface: &str) -> Result<()> {
    if valid_ifname(iface) {
        Ok(())
    } else {
        Err(Error::BadSpec(format!(
            "{iface:?} is not an interface name: check the name with `ip link`"
        )))
    }
}

/// Reads the `META` record pinned in `dir`; a folder without it is of no known layout.
fn read_meta(dir: &Path) -> Result<Meta> {
    let [meta_fd] = open_maps(dir, &[MAPS[4]])?;
    let mut meta = Meta::zeroed();
    sys::lookup(
        meta_fd.as_fd(),
        &0u32.to_ne_bytes(),
        bytemuck::bytes_of_mut(&mut meta),
    )
    .map_err(|e| Error::io("cannot read", dir.join("META"), e))?;
    Ok(meta)
}

/// Opens the pinned `maps` and checks each one's type and sizes against this build's layout.
fn open_maps<const N: usize>(
    dir: &Path,
    maps: &[(&str, u32, u32, u32); N],
) -> Result<[OwnedFd; N]> {
    let open = |&(name, map_type, value_size, max_entries): &(&str, u32, u32, u32)| {
        let path = dir.join(name);
        let fd = sys::obj_get_readable(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::Layout {
                    path: dir.to_owned(),
                    found: 0,
                    expected: LAYOUT_VERSION,
                }
            } else {
                Error::io("cannot open", &path, e)
            }
        })?;
        let info = sys::map_info(fd.as_fd()).map_err(|e| Error::io("cannot inspect", &path, e))?;
        if (
            info.map_type,
            info.key_size,
            info.value_size,
            info.max_entries,
        ) != (map_type, 4, value_size, max_entries)
        {
            return Err(Error::Layout {
                path: dir.to_owned(),
                found: 0,
                expected: LAYOUT_VERSION,
            });
        }
        Ok(fd)
    };
    let fds = maps.iter().map(open).collect::<Result<Vec<_>>>()?;
    Ok(fds.try_into().expect("one descriptor per map"))
}

/// Whether the program behind the pinned link in `dir` is the one attached to `ifindex`.
fn pinned_program_attached(scope: &Scope, dir: &Path, ifindex: u32) -> Result<bool> {
    let Ok(prog_id) = sys::pinned_link_prog_id(&dir.join(LINK_PIN)) else {
        return Ok(false);
    };
    runs(scope, ifindex, prog_id)
}

/// Whether interface `ifindex` of `scope` runs XDP program `prog_id`; a vanished interface
/// runs nothing.
fn runs(scope: &Scope, ifindex: u32, prog_id: u32) -> Result<bool> {
    match scope.run(|| netlink::xdp_query(ifindex))? {
        Ok(attached) => Ok(attached.is_some_and(|a| a.runs(prog_id))),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(Error::io(
            "cannot query XDP on interface index",
            ifindex.to_string(),
            e,
        )),
    }
}

/// Refuses, or with `force` detaches, an XDP program port-demux did not load.
fn replace_foreign(scope: &Scope, iface: &str, ifindex: u32, force: bool) -> Result<Option<u32>> {
    let attached = scope
        .run(|| netlink::xdp_query(ifindex))?
        .map_err(|e| Error::io("cannot query XDP on", iface, e))?;
    let Some(attached) = attached else {
        return Ok(None);
    };
    if !force {
        return Err(Error::ForeignProgram {
            iface: iface.to_owned(),
            prog_id: attached.prog_id,
        });
    }
    for (prog_id, mode_flags) in attached.programs() {
        scope
            .run(|| netlink::xdp_detach(ifindex, mode_flags))?
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    Error::BadSpec(format!(
                        "XDP program id {prog_id} on {iface} is held by a bpf_link that --force cannot break: remove it with the tool that attached it (bpftool link)"
                    ))
                } else {
                    Error::io("cannot detach the XDP program on", iface, e)
                }
            })?;
    }
    Ok(Some(attached.prog_id))
}

/// Loads the object with its maps pinned in (or reused from) `dir` and the program verified,
/// not attached. A verifier rejection writes the whole log to `verifier_log` (or a file in the
/// temporary directory) and becomes [`Error::Verifier`].
fn load_object(
    dir: &Path,
    default_action: u32,
    debug: bool,
    verifier_log: Option<&Path>,
) -> Result<Ebpf> {
    load_object_with(dir, default_action, debug, verifier_log, None)
}

/// As [`load_object`], with `REDIRECT` pinned at `redirect` instead of in `dir` (created there
/// when missing).
fn load_object_with(
    dir: &Path,
    default_action: u32,
    debug: bool,
    verifier_log: Option<&Path>,
    redirect: Option<&Path>,
) -> Result<Ebpf> {
    let log_level: u8 = if debug {
        aya_log::Level::Debug as u8
    } else {
        0
    };
    let paths: Vec<(&str, PathBuf)> = MAPS
        .iter()
        .map(|m| match redirect {
            Some(path) if m.0 == REDIRECT => (m.0, path.to_owned()),
            _ => (m.0, dir.join(m.0)),
        })
        .collect();
    let mut loader = EbpfLoader::new();
    loader
        .override_global("DEFAULT_ACTION", &default_action, true)
        .override_global(aya_log::LEVEL, &log_level, false);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| match &e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
            if kernel::denied(io_error) =>
        {
            Error::Privileges {
                what: "creating the XDP program's maps".to_owned(),
            }
        }
        _ => Error::Ebpf(Box::new(e)),
    })?;
    let program = if debug { PROGRAM_DEBUG } else { PROGRAM };
    xdp_program(&mut ebpf, debug)
        .load()
        .map_err(|e| kernel::program_load_error(e, program, verifier_log))?;
    Ok(ebpf)
}

/// Writes the `META` record pinned in `dir`.
fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let path = dir.join("META");
    let fd = sys::obj_get(&path, false).map_err(|e| Error::io("cannot open", &path, e))?;
    sys::update(fd.as_fd(), &0u32.to_ne_bytes(), bytemuck::bytes_of(meta))
        .map_err(|e| Error::io("cannot write", &path, e))
}

/// The XDP program of the embedded object: the plain one, or the one that logs.
fn xdp_program(ebpf: &mut Ebpf, debug: bool) -> &mut Xdp {
    ebpf.program_mut(if debug { PROGRAM_DEBUG } else { PROGRAM })
        .expect("the object has both programs")
        .try_into()
        .expect("both programs are XDP programs")
}

/// Loads, attaches and pins into `tmp`; returns the mode, the fallback reason and the
/// program id.
fn load_into(
    scope: &Scope,
    iface: &str,
    ifindex: u32,
    opts: &LoadOptions,
    tmp: &Path,
) -> Result<(Mode, Option<String>, u32)> {
    let default_action = match opts.default_action {
        DefaultAction::Pass => action::PASS,
        DefaultAction::Drop => action::DROP,
    };
    let mut ebpf = load_object(
        tmp,
        default_action,
        opts.debug,
        opts.verifier_log.as_deref(),
    )?;
    let prog = xdp_program(&mut ebpf, opts.debug);
    let attach = |prog: &mut Xdp, mode: Mode| {
        let xdp_mode = if mode == Mode::Skb {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        };
        scope
            .run(|| prog.attach_to_if_index(ifindex, xdp_mode))?
            .map_err(|source| Error::Attach {
                iface: iface.to_owned(),
                mode: mode.name().to_owned(),
                source: Box::new(source),
            })
    };
    let (link_id, mode, fallback) = match opts.mode {
        Mode::Auto => match attach(prog, Mode::Native) {
            Ok(id) => (id, Mode::Native, None),
            Err(native) => (
                attach(prog, Mode::Skb)?,
                Mode::Skb,
                Some(native.to_string()),
            ),
        },
        mode => (attach(prog, mode)?, mode, None),
    };
    let prog_id = prog
        .info()
        .map_err(|e| Error::Ebpf(Box::new(e.into())))?
        .id();
    let mut meta = Meta::zeroed();
    meta.layout_version = LAYOUT_VERSION;
    meta.ifindex = ifindex;
    meta.default_action = default_action;
    meta.mode = if mode == Mode::Skb {
        MODE_SKB
    } else {
        MODE_NATIVE
    };
    meta.netns_ino = scope.netns_ino();
    meta.debug = u32::from(opts.debug);
    meta.ifname[..iface.len()].copy_from_slice(iface.as_bytes());
    write_meta(tmp, &meta)?;
    prog.pin(tmp.join(PROG_PIN))
        .map_err(|e| Error::io("cannot pin", tmp.join(PROG_PIN), io::Error::other(e)))?;
    let link = prog
        .take_link(link_id)
        .map_err(|e| Error::Ebpf(Box::new(e.into())))?;
    let link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| {
            Error::io("cannot pin", tmp.join(LINK_PIN), io::Error::other(e))
        })?;
    link.pin(tmp.join(LINK_PIN))
        .map_err(|e| Error::io("cannot pin", tmp.join(LINK_PIN), io::Error::other(e)))?;
    Ok((mode, fallback, prog_id))
}

/// Removes a pin folder: the link first (detaching the program), then everything else.
fn remove_pins(dir: &Path) -> Result<()> {
    // bpffs answers EPERM, not ENOENT, to unlink in a missing folder.
    if !dir.exists() {
        return Ok(());
    }
    let link = dir.join(LINK_PIN);
    match fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot remove", link, e)),
    }
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("cannot read", dir, e)),
    }
    fs::remove_dir(dir).map_err(|e| Error::io("cannot remove", dir, e))
}

/// Runs of consecutive bound ports with equal bindings, as (first index, last index, binding):
/// a run never crosses from one protocol's half of the array into the other's.
fn coalesce(all: &[Binding]) -> Vec<(u32, u32, Binding)> {
    let mut ranges: Vec<(u32, u32, Binding)> = Vec::new();
    for (index, b) in (0u32..).zip(all) {
        if b.action == action::UNBOUND {
            continue;
        }
        match ranges.last_mut() {
            Some((_, last, prev)) if *last + 1 == index && prev == b && index & 0xffff != 0 => {
                *last = index;
            }
            _ => ranges.push((index, index, *b)),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(act: u32, owner: u8) -> Binding {
        let mut b = Binding::zeroed();
        b.action = act;
        b.owner[0] = owner;
        b
    }

    #[test]
    fn ranges_coalesce_runs_of_equal_bindings() {
        let mut all = vec![Binding::zeroed(); BINDINGS_LEN as usize];
        all[7000..=7099].fill(bound(action::PASS, 0));
        all[7100] = bound(action::PASS, b'x'); // another owner: a run of its own
        all[7101] = bound(action::DROP, 0);
        all[7103] = bound(action::DROP, 0); // a gap: a run of its own
        // tcp/65535 and udp/0 are neighbours in the array, never in a range.
        all[0xffff] = bound(action::DROP, 0);
        all[0x1_0000] = bound(action::DROP, 0);
        let pass = bound(action::PASS, 0);
        let drop = bound(action::DROP, 0);
        assert_eq!(
            coalesce(&all),
            [
                (7000, 7099, pass),
                (7100, 7100, bound(action::PASS, b'x')),
                (7101, 7101, drop),
                (7103, 7103, drop),
                (0xffff, 0xffff, drop),
                (0x1_0000, 0x1_0000, drop),
            ]
        );
        assert!(coalesce(&[]).is_empty());
    }

    #[test]
    fn stats_port_and_totals_accessors() {
        let udp = PortStat {
            proto: Proto::Udp,
            port: 7777,
            packets: 3,
            bytes: 300,
            action: Some(Action::Drop),
        };
        let mut totals = Totals {
            packets: 10,
            ..Totals::default()
        };
        totals.outcomes[outcome::DEMUXED] = 3;
        totals.outcomes[outcome::NOT_IP] = 7;
        let stats = Stats {
            ports: vec![udp.clone()],
            totals,
        };
        assert_eq!(stats.port(Proto::Udp, 7777), udp);
        let tcp = stats.port(Proto::Tcp, 7777);
        assert_eq!((tcp.packets, tcp.bytes, tcp.action), (0, 0, None));
        assert_eq!(
            (totals.demuxed(), totals.not_ip(), totals.not_demuxed()),
            (3, 7, 7)
        );
    }
}
