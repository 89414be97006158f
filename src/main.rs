//! The `vod-signer` binary: parses the command line and hands over to the library.

use std::error::Error;
use std::process::ExitCode;

/// mimalloc: a request allocates many small buffers, and glibc malloc showed up at 15% of
/// server CPU in the profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;
use vod_signer::config::{Cli, Command};
use vod_signer::report::Chain;
use vod_signer::{cli, runner, telemetry};

fn main() -> ExitCode {
    let args = Cli::parse();
    let traces = match &args.command {
        Command::Serve(serve) => serve
            .otlp_endpoint()
            .map(telemetry::TraceSettings::from_env),
        _ => None,
    };
    let _telemetry = match telemetry::init(args.log_format, &args.log_level, traces) {
        Ok(telemetry) => telemetry,
        Err(e) => return failed(&e),
    };
    let result: Result<(), Box<dyn Error>> = match &args.command {
        Command::Serve(serve) => runner::run((**serve).clone()).map_err(Into::into),
        Command::Issue(issue) => cli::issue(issue)
            .map(|out| println!("{out}"))
            .map_err(Into::into),
        Command::Inspect(inspect) => cli::inspect(inspect)
            .map(|out| println!("{out}"))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(&*e),
    }
}

/// The error with every cause behind it, on one line: the last thing the operator reads.
fn failed(e: &(dyn Error + 'static)) -> ExitCode {
    eprintln!("vod-signer: error: {}", Chain(e));
    ExitCode::from(2)
}
