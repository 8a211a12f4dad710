//! The `port-demux` command: see `port-demux --help`.

fn main() -> std::process::ExitCode {
    port_demux::cli::main()
}
