//! The command tree.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "tender",
    version,
    about = "Tender: self-hosted fleet management for Linux devices",
    long_about = "Tender: self-hosted fleet management for Linux devices.\n\n`tender server` runs the server; every other command talks to a running server, found through --server/--token, TENDER_SERVER/TENDER_TOKEN, or a profile saved by `tender login`."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Server URL, e.g. http://127.0.0.1:8080 (overrides the profile)
    #[arg(long, global = true, env = "TENDER_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// API token (overrides the profile)
    #[arg(
        long,
        global = true,
        env = "TENDER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Profile saved by `tender login` [default: the current profile]
    #[arg(long, global = true, env = "TENDER_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned columns for people
    Table,
    /// The API's JSON, for scripts
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the Tender server
    Server(ServerArgs),
    /// Issue a new API token for the `admin` user, directly against the server's data
    /// directory and database (recovery when the bootstrap token is lost)
    AdminToken(ServerArgs),
    /// Check --server and --token against the server and save them as a profile
    /// (--profile, default "default"), which becomes the current one
    Login,
    /// Show who the current credentials belong to and what they may do
    Whoami,
    /// The device registry
    #[command(subcommand)]
    Devices(DevicesCommand),
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// Configuration file (TOML; see docs/configuration.md)
    #[arg(long, short = 'c', env = "TENDER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./tender-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP API listen address [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// HTTPS device API (mTLS) listen address [default: 127.0.0.1:8443]
    #[arg(long, value_name = "ADDR")]
    pub device_listen: Option<SocketAddr>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: SQLite in the data dir]
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log format
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Log filter, e.g. info or tender_server=debug,info
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LogFormatArg {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum DevicesCommand {
    /// List devices, page by page in creation order
    List(ListDevicesArgs),
    /// Show one device
    Show {
        /// Device id
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct ListDevicesArgs {
    /// Only devices in this state
    #[arg(long, value_enum)]
    pub state: Option<DeviceStateArg>,
    /// Devices per page (1-1000)
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Fetch every page, not just the first
    #[arg(long)]
    pub all: bool,
    /// Start after this cursor (the next_cursor of a previous page)
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum DeviceStateArg {
    Pending,
    Preauthorized,
    Accepted,
    Rejected,
    Decommissioned,
}

impl DeviceStateArg {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStateArg::Pending => "pending",
            DeviceStateArg::Preauthorized => "preauthorized",
            DeviceStateArg::Accepted => "accepted",
            DeviceStateArg::Rejected => "rejected",
            DeviceStateArg::Decommissioned => "decommissioned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
