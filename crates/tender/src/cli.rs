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
    /// The device registry and device lifecycle
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Enrollment tokens: let devices join without approval (zero-touch)
    #[command(subcommand, name = "enrollment-tokens")]
    EnrollmentTokens(TokensCommand),
    /// Tenant-wide settings
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Device groups: static (explicit members, nested) and dynamic (a saved query)
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// The device twin: desired and reported state, per device
    #[command(subcommand)]
    Twin(crate::twin_cli::TwinCommand),
    /// Layered configuration: fleet defaults, group values, and each device's effective result
    #[command(subcommand)]
    Config(crate::twin_cli::ConfigCommand),
    /// Commands to devices: send (to a device, a list, a group or a query), follow, cancel
    #[command(subcommand, name = "command")]
    Commands(crate::device_commands::CommandCommand),
    /// Artifact signing keys: make them (offline), and the tenant's trusted keys (server)
    #[command(subcommand)]
    Keys(crate::artifact_cli::KeysCommand),
    /// Software artifacts: create, sign, inspect and verify locally; upload and manage on the server
    #[command(subcommand)]
    Artifact(crate::artifact_cli::ArtifactCommand),
    /// Deployments: roll an artifact out to devices in phases, and follow them
    #[command(subcommand)]
    Deploy(crate::deploy_cli::DeployCommand),
    /// Alerts and alert rules: list, show and acknowledge alerts; define the rules that raise them
    #[command(subcommand)]
    Alerts(crate::alerts_cli::AlertsCommand),
    /// Telemetry: a metric as a series over a device, a group, a query or the fleet; raw
    /// samples exported as CSV or JSON
    #[command(subcommand)]
    Telemetry(crate::telemetry_cli::TelemetryCommand),
    /// Webhooks: HTTP endpoints that receive events, signed, with retries and a delivery log
    #[command(subcommand)]
    Webhooks(crate::webhook_cli::WebhooksCommand),
    /// Fetch a device's logs (from the sources its agent is configured with), or follow them
    Logs(crate::logs_cli::LogsArgs),
    /// Simulate a fleet: N devices in this process, each the real agent with its own key,
    /// certificate and MQTT connection, reporting plausible inventory and telemetry
    Sim(SimArgs),
}

#[derive(Subcommand, Debug)]
pub enum GroupsCommand {
    /// Every group, by name
    List,
    /// Create a static group (optionally inside another) or, with --query, a dynamic one
    Create {
        name: String,
        /// Parent static group (name or id)
        #[arg(long, conflicts_with = "query")]
        parent: Option<String>,
        /// Device query: the group's members are the devices matching it, always
        #[arg(long)]
        query: Option<String>,
    },
    /// Show a group and how many devices are in it
    Show { group: String },
    /// Rename a group (dynamic groups that name it follow)
    Rename { group: String, new_name: String },
    /// Move a static group under another, or to the top with --top
    Move {
        group: String,
        /// New parent (name or id)
        #[arg(required_unless_present = "top")]
        parent: Option<String>,
        #[arg(long)]
        top: bool,
    },
    /// Change a dynamic group's query
    SetQuery { group: String, query: String },
    /// Delete a group (its memberships go with it; child groups must go first)
    Delete { group: String },
    /// Add devices to a static group
    Add {
        group: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Remove devices from a static group
    Remove {
        group: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// The devices in a group (a static group's subgroups included)
    Devices {
        group: String,
        /// Devices per page (1-1000)
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Fetch every page
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct SimArgs {
    /// How many devices
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// The device API (HTTPS, mTLS)
    #[arg(long, default_value = "https://127.0.0.1:8443", value_name = "URL")]
    pub server_url: String,
    /// The MQTT endpoint [default: the device API's host, port 8883]
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt_url: Option<String>,
    /// The server's device CA certificate
    #[arg(long, default_value = "tender-data/ca/ca.crt", value_name = "FILE")]
    pub ca: PathBuf,
    /// Enrollment token for the devices [default: one created through the operator login]
    #[arg(long, env = "TENDER_SIM_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the devices keep their keys, certificates and buffers (reused by the next run)
    #[arg(long, default_value = "tender-sim", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Device name prefix: devices are PREFIX-00000, PREFIX-00001, ...
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Telemetry interval per device, in milliseconds
    #[arg(long, default_value_t = 10_000)]
    pub interval_ms: u64,
    /// Devices started per second
    #[arg(long, default_value_t = 100)]
    pub ramp: u32,
    /// Share of devices (0 to 1) that keep dropping offline and coming back
    #[arg(long, default_value_t = 0.0)]
    pub offline_fraction: f64,
    /// Seed for device kinds, sites, values and failures: the same seed, the same fleet
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// MQTT keepalive, seconds
    #[arg(long, default_value_t = 60)]
    pub keepalive_secs: u16,
    /// Longest reconnect back-off, seconds
    #[arg(long, default_value_t = 60)]
    pub max_backoff_secs: u64,
    /// Seconds between progress lines
    #[arg(long, default_value_t = 5)]
    pub report_secs: u64,
    /// Stop after this many seconds [default: run until Ctrl-C]
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// In deployments, one device in N downloads the whole artifact and checks it; the others
    /// fetch only its manifest (with a Range request). 1: every device downloads it all.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub download_every: usize,
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token; it is printed once
    Create {
        /// What it is for, e.g. "factory line 3"
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 3600s, 90m, 12h, 30d [default: never expires]
        #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
        expires_in: Option<u64>,
        /// How many devices may use it [default: unlimited]
        #[arg(long)]
        max_uses: Option<u32>,
        /// Device type for devices that enroll with it
        #[arg(long)]
        device_type: Option<String>,
    },
    /// List tokens (never their secrets)
    List,
    /// Revoke a token: devices can no longer enroll with it
    Revoke {
        /// Token id
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Whether devices may ask to join without a token (they wait as pending)
    Enrollment {
        #[arg(value_enum)]
        policy: EnrollmentPolicy,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum EnrollmentPolicy {
    /// Token-less devices may ask and wait for approval
    Open,
    /// Only devices with a token or a preauthorized key may enroll
    Closed,
}

/// Parses `90`, `90s`, `15m`, `12h` or `30d` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 3600s, 90m, 12h or 30d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
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
    /// MQTT gateway (TLS) listen address [default: 127.0.0.1:8883]
    #[arg(long, value_name = "ADDR")]
    pub mqtt_listen: Option<SocketAddr>,
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
    /// Accept pending devices (they get certificates when they next ask)
    Accept {
        /// Device ids
        ids: Vec<String>,
        /// Every pending device of the tenant
        #[arg(long, conflicts_with = "ids")]
        all_pending: bool,
    },
    /// Set operator tags on a device: `tender devices tag ID site=north owner=ops`
    Tag {
        /// Device id
        id: String,
        /// KEY=VALUE pairs
        #[arg(required = true, value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Set who owns a device and notes about it (`--owner ""` or `--notes ""` clears)
    Set {
        /// Device id
        id: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        notes: Option<String>,
    },
    /// Remove operator tags from a device
    Untag {
        /// Device id
        id: String,
        /// Tag keys
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Reject a device: its enrollment requests are refused
    Reject {
        /// Device id
        id: String,
    },
    /// Decommission a device: certificates revoked, history kept, never authenticates again
    Decommission {
        /// Device id
        id: String,
    },
    /// Revoke every certificate of a device (it must enroll again)
    RevokeCertificates {
        /// Device id
        id: String,
    },
    /// Connection history of a device, newest first
    Connections {
        /// Device id
        id: String,
        /// Connections per page (1-1000)
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Telemetry of a device: the newest value of each metric, or one metric over time
    Telemetry {
        /// Device id
        id: String,
        /// One metric's samples instead of the newest of each
        #[arg(long)]
        metric: Option<String>,
        /// With --metric: start (RFC 3339) [default: 24 hours ago]
        #[arg(long, requires = "metric")]
        from: Option<String>,
        /// With --metric: end, exclusive (RFC 3339) [default: now]
        #[arg(long, requires = "metric")]
        to: Option<String>,
        /// With --metric: samples to show (1-1000)
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// MQTT password of a device that cannot hold a client certificate
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Register a device in advance: with its public key it enrolls without a token; without
    /// one, give it a password with `tender devices credentials issue`
    Preauthorize {
        /// Device name
        #[arg(long)]
        name: String,
        /// PEM public key file (`openssl pkey -pubout`)
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        #[arg(long)]
        device_type: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CredentialsCommand {
    /// Issue a new password (replaces the previous one and cuts a session that used it)
    Issue {
        /// Device id
        id: String,
    },
    /// Delete the password (cuts a session that used it)
    Delete {
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
    /// Only devices matching this query, e.g. 'inventory.os.id = "debian" and online = true'
    #[arg(long, short = 'q')]
    pub query: Option<String>,
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

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("15m"), Ok(900));
        assert_eq!(parse_duration_secs("12h"), Ok(43_200));
        assert_eq!(parse_duration_secs("30d"), Ok(2_592_000));
        assert!(parse_duration_secs("0s").is_err());
        assert!(parse_duration_secs("5w").is_err());
        assert!(parse_duration_secs("soon").is_err());
        assert!(parse_duration_secs("99999999999999999999d").is_err());
    }
}
