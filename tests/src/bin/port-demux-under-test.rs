//! The `port-demux` CLI, built by cargo together with the tests that run it as a process
//! (`port_demux_testkit::cli`): a `cargo test` never runs a stale binary.

fn main() -> std::process::ExitCode {
    port_demux::cli::main()
}
