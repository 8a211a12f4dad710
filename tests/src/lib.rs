//! Helpers for the integration tests: network namespaces and veth pairs created and always
//! removed by guards (`netns`), crafted frames (`frames`), and the program loaded for
//! `BPF_PROG_TEST_RUN` (`test_run`).
//!
//! Every test needs root (BPF, netns); `cargo xtask test` runs them.

pub mod frames;
pub mod netns;
pub mod test_run;
