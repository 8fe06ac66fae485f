//! `tender server` and `tender admin-token`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use tender_server::Config;
use tender_server::config::LogFormat;
use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormatArg, ServerArgs};

/// The configuration from file, environment and flags, in that order of precedence.
pub fn config(args: &ServerArgs) -> Result<Config> {
    let mut c = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(d) = &args.data_dir {
        c.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        c.http.listen = l;
    }
    if let Some(l) = args.device_listen {
        c.devices.listen = l;
    }
    if let Some(l) = args.mqtt_listen {
        c.mqtt.listen = l;
    }
    if let Some(u) = &args.database_url {
        c.database.url = Some(u.clone());
    }
    if let Some(f) = args.log_format {
        c.log.format = match f {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    if let Some(l) = &args.log_level {
        c.log.level = l.clone();
    }
    c.validate()?;
    Ok(c)
}

fn init_logging(c: &Config) -> Result<()> {
    let filter = EnvFilter::try_new(&c.log.level).map_err(|e| {
        anyhow::anyhow!(
            "invalid log level {:?}: {e}; use e.g. info, debug or tender_server=debug,info",
            c.log.level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match c.log.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

pub async fn run(args: &ServerArgs) -> Result<ExitCode> {
    let c = config(args)?;
    init_logging(&c)?;
    let server = tender_server::start(c).await?;
    let signals = tender_server::ShutdownSignals::install()
        .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    let base = format!("http://{}", server.http_addr);
    // The banner goes to stdout, logs to stderr: scripts can read the addresses and token.
    println!("Tender {} is running", env!("CARGO_PKG_VERSION"));
    println!("  API          {base}/api/v1  (OpenAPI: {base}/api/v1/openapi.json)");
    println!("  health       {base}/healthz  {base}/readyz");
    println!("  metrics      {base}/metrics");
    println!(
        "  devices      https://{}/device/v1  (mTLS)",
        server.device_addr
    );
    if let Some(mqtt) = server.mqtt_addr {
        println!("  mqtt         mqtts://{mqtt}  (MQTT 3.1.1/5 over TLS)");
    }
    println!("  data dir     {}", server.data_dir.display());
    println!("  database     {}", server.database);
    println!("  device CA    {}", server.ca_cert_path.display());
    if let Some(token) = &server.bootstrap_token {
        println!();
        println!("  First start: created the user `admin` with this API token.");
        println!("  It is shown only this once; store it now:");
        println!();
        println!("    {token}");
        println!();
        println!("  Log in with:  tender login --server {base} --token {token}");
    }
    println!("Press Ctrl-C to stop.");
    let drained = server.run_until(signals).await;
    Ok(if drained {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

pub async fn admin_token(args: &ServerArgs) -> Result<ExitCode> {
    let c = config(args)?;
    let token = tender_server::issue_admin_token(&c).await?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
