//! The `port-demux` command: see `port-demux --help`.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    let mut stdout = std::io::stdout().lock();
    match port_demux::cli::run(std::env::args_os(), &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(port_demux::cli::Failure { message, code }) => {
            drop(stdout);
            eprintln!("port-demux: {message}");
            ExitCode::from(code)
        }
    }
}
