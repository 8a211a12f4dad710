//! Helpers for the integration tests: network namespaces and veth pairs created and always
//! removed by guards (`netns`), crafted frames (`frames`), the program loaded for
//! `BPF_PROG_TEST_RUN` (`test_run`), and the `port-demux` binary run one command at a time
//! (`cli`).
//!
//! Every test needs root (BPF, netns); `cargo xtask test` runs them.

pub mod cli;
pub mod frames;
pub mod netns;
pub mod test_run;
