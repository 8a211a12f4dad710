//! port-demux: an XDP demultiplexer for TCP and UDP ports.
//!
//! An XDP program parses each frame's Ethernet, IPv4 (with options), TCP and UDP headers, looks
//! the (protocol, destination port) up in a map of bindings and passes, drops or redirects the
//! frame, counting packets and bytes per port and every frame under a global outcome.
//!
//! This library loads it, finds running instances through their bpffs pins, manages bindings
//! and reads counters. The `port-demux` CLI is a thin layer over it, behind the default `cli`
//! feature: a library user who sets `default-features = false` builds neither it nor clap,
//! tokio, `env_logger` or `serde_json`.
//!
//! ```no_run
//! use port_demux::{Action, BindOptions, LoadOptions, PortDemux, Scope};
//!
//! let scope = Scope::netns("test-ns")?; // or Scope::current()?
//! let (demux, _report) = PortDemux::load(&scope, "veth0", &LoadOptions::default())?;
//! demux.bind("udp/7777".parse()?, &Action::Drop, &BindOptions::default())?;
//! // ... send traffic ...
//! let stats = demux.stats()?;
//! println!("{} frames", stats.totals.packets);
//! PortDemux::unload(&scope, "veth0")?;
//! # Ok::<(), port_demux::Error>(())
//! ```
#![deny(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
mod demux;
mod error;
mod instance;
pub mod kernel;
mod layout;
mod lifecycle;
mod maps;
mod netlink;
pub mod pinned;
pub mod prefix;
mod rates;
mod scope;
mod scoped;
mod spec;
mod staged;
mod sys;
mod types;

pub use demux::PortDemux;
pub use error::{Error, Result};
pub use instance::{Instance, Running, State, instances, prune, running};
pub use ipnet::IpNet;
pub use layout::DirLock;
pub use lifecycle::{EBPF_OBJECT, PROGRAM, PROGRAM_DEBUG};
pub use port_demux_common as common;
pub use rates::{PortRate, Rates, TotalRates, delta};
pub use scope::{BPFFS, Scope, is_bpffs};
pub use spec::{Action, DefaultAction, PortSpec, Proto, lookup_services, service_port};
pub use staged::Settings;
pub use types::{
    BindOptions, BindingRange, LoadOptions, LoadReport, Mode, PortStat, Stats, Status, Totals,
    UpgradeReport,
};
