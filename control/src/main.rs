//! `control`: see `control --help`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    control::cli::run(control::cli::Cli::parse()).await
}
