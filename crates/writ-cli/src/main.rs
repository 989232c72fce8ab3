//! The `writ` binary: parses the command line and dispatches into the library crates.
//!
//! Exit codes (contract.md): 0 success; 1 the operation failed (one line on stderr); 2 usage error
//! (clap's own exit code for bad flags and values).

mod args;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writ: {e}");
            ExitCode::from(1)
        }
    }
}

/// Errors that end a command with exit code 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// The command belongs to a part of writ that is not built yet.
    #[error("`{0}` is not implemented yet")]
    NotImplemented(&'static str),
}

fn run(cli: Cli) -> Result<(), CliError> {
    let name = match cli.command {
        Command::Server(_) => "server",
        Command::Agent(_) => "agent",
        Command::Dev { .. } => "dev",
        Command::Token(_) => "token",
        Command::Entry(_) => "entry",
        Command::Node(_) => "node",
        Command::Bundle(_) => "bundle",
        Command::X509(_) => "x509",
        Command::Jwt(_) => "jwt",
        Command::Svid(_) => "svid",
        Command::Helper { .. } => "helper",
    };
    Err(CliError::NotImplemented(name))
}
