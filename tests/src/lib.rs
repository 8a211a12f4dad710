//! port-demux-testkit: real kernel fixtures for integration tests of services behind
//! port-demux, and port-demux's own test suite.
//!
//! - [`netns`]: network namespaces and veth pairs with unique names (safe for parallel tests)
//!   or names and IPv4/IPv6 addresses of the caller's choosing ([`Lab::builder`]), removed on drop even when the test panics (port-demux unloaded from them first), a
//!   ready-made two- or three-namespace [`Lab`], code run inside a namespace, `AF_PACKET`
//!   [`Capture`]s, polling with a timeout.
//! - [`counted`]: senders that return what port-demux must count ([`Sent`]), [`wait_counted`],
//!   sockets and listeners inside a namespace, veths and addresses (IPv4, IPv6) of the
//!   caller's choosing.
//! - [`service`] (feature `cli`): long-running processes stopped on drop: the exporter, a
//!   real Prometheus scraping it, HTTP GET.
//! - [`reap`]: leftovers of killed test processes, removed at the next start.
//! - [`frames`], [`test_run`]: crafted frames and the program under `BPF_PROG_TEST_RUN`;
//!   [`cli`] (feature `cli`): the `port-demux` binary run one command at a time.
//!
//! Everything needs root (BPF, netns).

#[cfg(feature = "cli")]
pub mod cli;
pub mod counted;
pub mod frames;
pub mod netns;
pub mod reap;
#[cfg(feature = "cli")]
pub mod service;
pub mod test_run;

pub use counted::{Sent, send_udp, wait_counted};
pub use netns::{
    Capture, HostVeth, Lab, LabBuilder, Netns, SILENCE, TIMEOUT, count_datagrams, recv_datagrams,
};
