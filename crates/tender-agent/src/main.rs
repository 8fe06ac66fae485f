//! `tender-agent`: the device agent. Its spine (identity, connection, inventory, telemetry,
//! store-and-forward) arrives with the device identity and agent work; until then the binary
//! exists so that packaging and the workspace layout are settled.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "tender-agent",
    version,
    about = "The Tender device agent (not functional yet in this release)"
)]
struct Args {}

fn main() -> ExitCode {
    let _ = Args::parse();
    eprintln!("tender-agent: the device agent is not implemented in this release");
    ExitCode::from(2)
}
