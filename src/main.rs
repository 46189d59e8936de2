//! The `herald` command: parse the command line, then hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use herald::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

/// herald's own lines at info (connects, disconnects, start and stop), others' warnings.
const DEFAULT_LOG: &str = "herald=info,warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let config = match args.into_config() {
        Ok(config) => config,
        Err(reason) => return fail(&reason),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(herald::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("error: {reason}");
    ExitCode::FAILURE
}
