//! `tender-agent`: the Tender device agent.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tender_agent::config::AgentConfig;
use tender_agent::identity::Identity;

#[derive(Parser, Debug)]
#[command(
    name = "tender-agent",
    version,
    about = "The Tender device agent: enrolls the device, keeps an MQTT connection and sends system telemetry"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enroll if needed, connect and send telemetry until stopped (SIGINT/SIGTERM).
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the device id, certificate expiry and the running agent's last state.
    Status {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match args.command {
        Command::Run { config } => run(&config),
        Command::Status { config } => status(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tender-agent: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit status for "an operator must act first" (EX_CONFIG): a bad configuration, a refused
/// enrollment, a revoked or decommissioned device. Restarting cannot help, so the systemd unit
/// does not restart on it (`RestartPreventExitStatus=78`); anything else exits 1 and is
/// restarted.
pub const EXIT_NEEDS_OPERATOR: u8 = 78;

fn exit_code(e: &anyhow::Error) -> u8 {
    use tender_agent::agent::AgentError;
    use tender_agent::identity::IdentityError;
    use tender_agent::mqtt::MqttError;
    for cause in e.chain() {
        if cause.is::<tender_agent::config::ConfigError>() {
            return EXIT_NEEDS_OPERATOR;
        }
        if let Some(
            AgentError::Mqtt(MqttError::NotAuthorized { .. })
            | AgentError::Identity(IdentityError::Refused { .. })
            | AgentError::Ca { .. },
        ) = cause.downcast_ref::<AgentError>()
        {
            return EXIT_NEEDS_OPERATOR;
        }
    }
    1
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    tender_agent::identity::install_crypto_provider();
    // One thread: the agent waits on the network and timers nearly all the time, and file and
    // process work goes to the blocking pool. Smaller and quieter than a worker per core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        tender_agent::agent::run(&config, Default::default(), shutdown_signal()).await
    })?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn status(path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    let identity = Identity::load(&config.data_dir)?;
    let status = tender_agent::status::read(&config.data_dir);
    match &identity {
        Some(id) => {
            println!("device id:           {}", id.device_id());
            println!("certificate expires: {}", id.record.not_after);
            println!("renew after:         {}", id.record.renew_after);
        }
        None => println!("device id:           (not enrolled yet)"),
    }
    match status {
        Some(s) => {
            println!("state:               {}", s.state);
            println!("updated at:          {}", s.updated_at);
            if let Some(t) = s.last_telemetry_at {
                println!("last telemetry:      {t}");
            }
            println!(
                "buffer:              {} waiting, {} delivered and {} refused since start, {} dropped (full), {} lost (disk)",
                s.buffered, s.delivered, s.rejected, s.dropped, s.lost_unbuffered
            );
            if let Some(e) = s.last_error {
                println!("last error:          {e}");
            }
        }
        None => println!("state:               (the agent has not run with this data directory)"),
    }
    Ok(())
}

/// The error and its causes on one line, each message once (our errors often quote their
/// source already).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string().replace('\n', " ");
        if out.contains(msg.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}
