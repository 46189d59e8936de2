//! The `herald` command: parse the command line, then hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use herald::config::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

/// glibc's allocator spent over 40 % of a log catch-up in `malloc`/`malloc_consolidate`
/// (sled materialises and drops pages; every event read is a few small allocations); see
/// BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// herald's own lines at info (connects, disconnects, start and stop), others' warnings.
const DEFAULT_LOG: &str = "herald=info,warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Some(Command::Serve(args)) => args.log_format,
        None => cli.serve.log_format,
        Some(_) => LogFormat::Text,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        // Colour for a terminal only: a journal or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
        Some(Command::Publish(args)) => return client(herald::cli::publish::run(args)),
        Some(Command::Subscribe(args)) => return client(herald::cli::subscribe::run(args)),
        Some(Command::Relay(args)) => return client(herald::cli::relay::run(args)),
        Some(Command::Token(args)) => {
            return match herald::cli::token::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
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

/// Runs a client subcommand on a small runtime; its error, if any, is the first line of stderr.
fn client(
    command: impl std::future::Future<Output = Result<(), herald::cli::CliError>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("error: {reason}");
    ExitCode::FAILURE
}
