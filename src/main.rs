//! The `vod-signer` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser as _;
use vod_signer::config::{Cli, Command};
use vod_signer::{cli, server};

fn main() -> ExitCode {
    let args = Cli::parse();
    server::init_logging(args.log_format, &args.log_level);
    let result = match &args.command {
        Command::Serve(serve) => server::run((**serve).clone()),
        Command::Issue(issue) => cli::issue(issue).map(|out| println!("{out}")),
        Command::Inspect(inspect) => cli::inspect(inspect).map(|out| println!("{out}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vod-signer: {e}");
            ExitCode::from(2)
        }
    }
}
