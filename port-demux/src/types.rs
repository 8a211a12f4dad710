//! The public types of the library: options, reports, statistics and status.

use std::path::PathBuf;

use ipnet::IpNet;
use port_demux_common::outcome;

use crate::{Action, DefaultAction, PortSpec, Proto};

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
    /// The destination prefix of an address-scoped binding; `None` (JSON `null`): every
    /// address of both families.
    pub dst: Option<IpNet>,
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
    /// `None` (JSON `null`) for a port's counters (every frame of the port); the prefix for
    /// an address-scoped binding's (the frames it decided, also counted under the port).
    pub dst: Option<IpNet>,
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
    /// Every address-scoped binding's counters, busiest first.
    pub scoped: Vec<PortStat>,
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
                dst: None,
            })
    }

    /// The counters and binding of the address-scoped binding (`proto`, `port`, `dst`), if
    /// bound.
    #[must_use]
    pub fn scoped(&self, proto: Proto, port: u16, dst: IpNet) -> Option<PortStat> {
        self.scoped
            .iter()
            .find(|p| p.proto == proto && p.port == port && p.dst == Some(dst))
            .cloned()
    }
}

/// What `status` reports of an instance; as JSON `{"interface", "ifindex", "mode",
/// "program_id", "attached", "bound_ports", "default", "debug", "verified_insns",
/// "memlock_bytes", "pins"}`.
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
    /// Kernel memory the instance holds, in bytes: the sum of what the kernel charges to each
    /// pinned map and to the program (`memlock` in `/proc/self/fdinfo`). Per-CPU maps grow
    /// with the number of possible CPUs. `None` when a pin cannot be opened (a reader without
    /// access to the program pin).
    pub memlock_bytes: Option<u64>,
    /// Pin folder.
    #[cfg_attr(feature = "serde", serde(rename = "pins"))]
    pub pin_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_port_and_totals_accessors() {
        let udp = PortStat {
            proto: Proto::Udp,
            port: 7777,
            packets: 3,
            bytes: 300,
            action: Some(Action::Drop),
            dst: None,
        };
        let mut totals = Totals {
            packets: 10,
            ..Totals::default()
        };
        totals.outcomes[outcome::DEMUXED] = 3;
        totals.outcomes[outcome::NOT_IP] = 7;
        let stats = Stats {
            ports: vec![udp.clone()],
            scoped: Vec::new(),
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
