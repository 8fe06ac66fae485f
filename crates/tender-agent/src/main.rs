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
    /// Install a signed artifact from a file (exit 0 once installed, already installed, or
    /// rebooting to finish it; 1 when refused or failed).
    Install {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The artifact file.
        artifact: PathBuf,
    },
    /// Print the update in progress, or the last one.
    UpdateStatus {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Carry on (verify and commit, or roll back) an update left in progress by a reboot or a
    /// crash, without connecting to the server: what `run` does for updates when it starts.
    UpdateResume {
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
        Command::Install { config, artifact } => install(&config, &artifact),
        Command::UpdateStatus { config } => update_status(&config),
        Command::UpdateResume { config } => update_resume(&config),
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

/// Prints progress as it comes: statuses on stdout, log lines on stderr.
struct Printed;

impl tender_agent::update::Progress for Printed {
    fn status(&mut self, status: &str) {
        println!("{status}");
    }
    fn log(&mut self, line: &str) {
        eprintln!("tender-agent: {line}");
    }
}

/// The outcome's last line and the exit status it means.
fn finish(outcome: &tender_agent::update::Outcome) -> anyhow::Result<()> {
    use tender_agent::update::Outcome;
    match outcome {
        Outcome::Succeeded => Ok(()),
        Outcome::Rebooting => {
            println!("the update goes on after the reboot");
            Ok(())
        }
        Outcome::Skipped(why) => {
            println!("{why}");
            Ok(())
        }
        Outcome::Failed(why) => anyhow::bail!("the update failed: {why}"),
        Outcome::RolledBack(why) => anyhow::bail!("the update was rolled back: {why}"),
        Outcome::Incompatible(why) => anyhow::bail!("the artifact is not for this device: {why}"),
    }
}

fn install(path: &Path, artifact: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let file =
        std::fs::File::open(artifact).with_context(|| format!("opening {}", artifact.display()))?;
    let id = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    let outcome = tender_agent::update::install(
        &config.update,
        &id,
        std::io::BufReader::new(file),
        &mut Printed,
        &tender_agent::update::no_health,
    )?;
    finish(&outcome)
}

fn update_resume(path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    match tender_agent::update::resume(
        &config.update,
        &mut Printed,
        &tender_agent::update::no_health,
    )? {
        Some(outcome) => finish(&outcome),
        None => {
            println!("no update in progress");
            Ok(())
        }
    }
}

fn update_status(path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    let Some(j) = tender_agent::update::status(&config.data_dir)? else {
        println!("no update has run on this device");
        return Ok(());
    };
    println!(
        "artifact:   {} ({} {}, {})",
        j.artifact_id, j.name, j.version, j.payload_type
    );
    println!("state:      {}", j.state);
    println!("started at: {}", j.started_at);
    println!("updated at: {}", j.updated_at);
    if let Some(s) = &j.slots {
        println!("slots:      {} -> {}", s.from, s.to);
    }
    if j.attempts > 0 {
        println!("attempts:   {}", j.attempts);
    }
    if let Some(e) = &j.error {
        println!("error:      {e}");
    }
    for line in &j.log {
        println!("  {line}");
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
