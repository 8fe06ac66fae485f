//! `tender`: runs the server and is the operator's command-line client.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod alerts_cli;
mod artifact_cli;
mod cli;
mod client;
mod commands;
mod deploy_cli;
mod device_commands;
mod logs_cli;
mod output;
mod profile;
mod serve;
mod sim;
mod telemetry_cli;
mod twin_cli;
mod webhook_cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // reqwest is built without a default TLS provider; ring is the one Tender uses everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
