//! Server configuration: one TOML file, environment overrides, defaults for everything.
//!
//! Precedence, lowest first: built-in defaults, the file (`--config`), `TENDER_*` environment
//! variables (see [`ENV_OVERRIDES`]), command-line flags (applied by the binary). Unknown keys in
//! the file are an error that names the key. `docs/configuration.md` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Every environment variable the server reads, and the key it sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("TENDER_DATA_DIR", "data_dir"),
    ("TENDER_HTTP_LISTEN", "http.listen"),
    ("TENDER_HTTP_BODY_LIMIT_BYTES", "http.body_limit_bytes"),
    (
        "TENDER_HTTP_REQUEST_TIMEOUT_SECS",
        "http.request_timeout_secs",
    ),
    (
        "TENDER_HTTP_SHUTDOWN_GRACE_SECS",
        "http.shutdown_grace_secs",
    ),
    ("TENDER_DATABASE_URL", "database.url"),
    (
        "TENDER_DATABASE_MAX_CONNECTIONS",
        "database.max_connections",
    ),
    (
        "TENDER_DATABASE_CONNECT_TIMEOUT_SECS",
        "database.connect_timeout_secs",
    ),
    ("TENDER_DEVICES_LISTEN", "devices.listen"),
    (
        "TENDER_DEVICES_CERTIFICATE_VALIDITY_DAYS",
        "devices.certificate_validity_days",
    ),
    ("TENDER_DEVICES_MAX_CONNECTIONS", "devices.max_connections"),
    ("TENDER_MQTT_ENABLED", "mqtt.enabled"),
    ("TENDER_MQTT_LISTEN", "mqtt.listen"),
    ("TENDER_MQTT_MAX_CONNECTIONS", "mqtt.max_connections"),
    ("TENDER_LOG_FORMAT", "log.format"),
    ("TENDER_LOG_LEVEL", "log.level"),
    ("TENDER_CA_CERT_FILE", "ca.cert_file"),
    ("TENDER_CA_KEY_FILE", "ca.key_file"),
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the server keeps its state: the SQLite database, the CA, secrets.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub devices: DevicesConfig,
    pub mqtt: MqttConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub ca: CaConfig,
    pub twin: TwinConfig,
    pub events: EventsConfig,
    pub commands: crate::commands::CommandsConfig,
    pub artifacts: crate::artifacts::ArtifactsConfig,
    pub deployments: crate::deployments::DeploymentsConfig,
    pub alerts: crate::alerts::AlertsConfig,
    pub telemetry: crate::telemetry::TelemetryConfig,
    pub webhooks: crate::webhooks::WebhooksConfig,
    pub logs: crate::logs::LogsConfig,
}

/// The event log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events older than this many days are deleted (hourly).
    pub retention_days: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { retention_days: 30 }
    }
}

/// The device twin and configuration documents.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwinConfig {
    /// Largest desired, reported or configuration-layer document, in bytes of canonical JSON.
    /// Keep it well under `mqtt.max_packet_bytes`: the effective document travels in one
    /// MQTT message.
    pub max_document_bytes: usize,
}

impl Default for TwinConfig {
    fn default() -> Self {
        TwinConfig {
            max_document_bytes: tender_core::twin::DEFAULT_MAX_BYTES,
        }
    }
}

impl TwinConfig {
    pub fn limits(&self) -> tender_core::twin::TwinLimits {
        tender_core::twin::TwinLimits {
            max_bytes: self.max_document_bytes,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("tender-data"),
            http: HttpConfig::default(),
            devices: DevicesConfig::default(),
            mqtt: MqttConfig::default(),
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            ca: CaConfig::default(),
            twin: TwinConfig::default(),
            events: EventsConfig::default(),
            commands: crate::commands::CommandsConfig::default(),
            artifacts: crate::artifacts::ArtifactsConfig::default(),
            deployments: crate::deployments::DeploymentsConfig::default(),
            alerts: crate::alerts::AlertsConfig::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
            webhooks: crate::webhooks::WebhooksConfig::default(),
            logs: crate::logs::LogsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP API (and, later, the dashboard). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub body_limit_bytes: usize,
    /// A request that takes longer is answered 503.
    pub request_timeout_secs: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            shutdown_grace_secs: 30,
        }
    }
}

/// The device-facing HTTPS listener (mTLS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Address of the HTTPS device API. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Names and addresses devices use to reach the server: they go into the listener's
    /// certificate, so a device verifying the server by name finds its name there.
    pub hostnames: Vec<String>,
    /// Validity of device certificates; devices renew at two thirds of it.
    pub certificate_validity_days: u32,
    /// A TLS handshake, or a request's headers after it, that take longer are dropped (clients
    /// that connect and say nothing, or trickle).
    pub handshake_timeout_secs: u64,
    /// Most device connections open at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            hostnames: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            certificate_validity_days: 90,
            handshake_timeout_secs: 10,
            max_connections: 10_000,
        }
    }
}

/// The device-facing MQTT 3.1.1/5 gateway (TLS; client certificate or device credential).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Whether the gateway listens at all.
    pub enabled: bool,
    /// Address of the MQTT-over-TLS listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Most MQTT connections open at once; more are closed right after accept.
    pub max_connections: usize,
    /// A connection that has not finished TLS and sent CONNECT within this time is closed.
    pub connect_timeout_secs: u64,
    /// Largest MQTT packet accepted from a device (remaining length, bytes). Larger: refused
    /// with reason 0x95 (MQTT 5) or a close (3.1.1).
    pub max_packet_bytes: u32,
    /// Longest keepalive a device may ask for; MQTT 5 clients asking for more (or for none)
    /// are told this value in CONNACK. Silence beyond 1.5 times the keepalive closes the
    /// connection.
    pub max_keepalive_secs: u16,
    /// Sustained messages per second one connection may send; beyond it the gateway stops
    /// reading from that connection until the budget refills (TCP back-pressure, nothing is
    /// dropped) and counts `tender_mqtt_throttled_total`.
    pub messages_per_sec: u32,
    /// Messages a connection may send in a burst above the sustained rate.
    pub burst: u32,
    /// Longest time a persistent session (clean session off) is kept after its device
    /// disconnects.
    pub max_session_expiry_secs: u32,
    /// Messages queued for a device (while offline with a persistent session, or not yet
    /// acknowledged) before the oldest are dropped and counted.
    pub max_queued_messages: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            max_connections: 10_000,
            connect_timeout_secs: 10,
            max_packet_bytes: 256 * 1024,
            max_keepalive_secs: 1200,
            messages_per_sec: 50,
            burst: 200,
            max_session_expiry_secs: 7 * 86_400,
            max_queued_messages: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`. Unset: `sqlite://<data_dir>/tender.db`.
    pub url: Option<String>,
    pub max_connections: u32,
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 16,
            connect_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `tender_server=debug,info`, ...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// The certificate authority that signs device certificates. Unset: Tender creates its own in
/// `<data_dir>/ca/` at first start.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// PEM certificate of an operator-supplied CA (requires `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of an operator-supplied CA (requires `cert_file`).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {key} (from {var}): {message}")]
    Env {
        var: &'static str,
        key: &'static str,
        value: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the file at `path` (if any), then applies the environment as read through `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_owned(),
                    message: one_line(&e.to_string()),
                })?;
                // Check the file on its own first so that its errors name the file.
                toml::Value::Table(table.clone())
                    .try_into::<Config>()
                    .map_err(|e| ConfigError::Parse {
                        path: p.to_owned(),
                        message: one_line(&e.to_string()),
                    })?;
                table
            }
            None => toml::Table::new(),
        };
        for (var, key) in ENV_OVERRIDES {
            if let Some(value) = env(var) {
                set_dotted(&mut table, key, env_value(&value));
                toml::Value::Table(table.clone())
                    .try_into::<Config>()
                    .map_err(|e| ConfigError::Env {
                        var,
                        key,
                        value: value.clone(),
                        message: one_line(&e.to_string()),
                    })?;
            }
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e| ConfigError::Invalid(one_line(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.webhooks.validate().map_err(ConfigError::Invalid)?;
        if self.http.body_limit_bytes == 0 {
            return Err(ConfigError::Invalid(
                "http.body_limit_bytes must be greater than 0".into(),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "database.max_connections must be greater than 0".into(),
            ));
        }
        if self.ca.cert_file.is_some() != self.ca.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "ca.cert_file and ca.key_file must be set together".into(),
            ));
        }
        if !(1..=3650).contains(&self.devices.certificate_validity_days) {
            return Err(ConfigError::Invalid(
                "devices.certificate_validity_days must be between 1 and 3650".into(),
            ));
        }
        if self.devices.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "devices.max_connections must be greater than 0".into(),
            ));
        }
        if self.mqtt.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "mqtt.max_connections must be greater than 0".into(),
            ));
        }
        if self.mqtt.max_packet_bytes < 128 {
            return Err(ConfigError::Invalid(
                "mqtt.max_packet_bytes must be at least 128".into(),
            ));
        }
        if self.mqtt.max_keepalive_secs == 0 {
            return Err(ConfigError::Invalid(
                "mqtt.max_keepalive_secs must be greater than 0".into(),
            ));
        }
        if self.mqtt.messages_per_sec == 0 || self.mqtt.burst == 0 {
            return Err(ConfigError::Invalid(
                "mqtt.messages_per_sec and mqtt.burst must be greater than 0".into(),
            ));
        }
        if self.mqtt.max_queued_messages == 0 {
            return Err(ConfigError::Invalid(
                "mqtt.max_queued_messages must be greater than 0".into(),
            ));
        }
        if self.devices.hostnames.is_empty() {
            return Err(ConfigError::Invalid(
                "devices.hostnames must name at least one host".into(),
            ));
        }
        if self.events.retention_days == 0 {
            return Err(ConfigError::Invalid(
                "events.retention_days must be at least 1".into(),
            ));
        }
        if self.twin.max_document_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "twin.max_document_bytes must be at least 1024".into(),
            ));
        }
        self.telemetry.validate().map_err(ConfigError::Invalid)?;
        self.alerts.validate().map_err(ConfigError::Invalid)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("data_dir must not be empty".into()));
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("tender.db").display()),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.database.connect_timeout_secs)
    }
}

/// An environment value as TOML: integers and booleans as such, everything else a string.
fn env_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_owned())
    }
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_dotted(t, rest, value);
            }
        }
    }
}

/// toml's messages span several lines with a source excerpt; keep them to one.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let g = tempfile::tempdir().unwrap();
        let p = g.path().join("tender.toml");
        std::fs::write(&p, text).unwrap();
        (g, p)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.database_url(), "sqlite://tender-data/tender.db");
    }

    #[test]
    fn file_values_apply() {
        let (_g, p) = write(
            "data_dir = \"/var/lib/tender\"\n[http]\nlisten = \"0.0.0.0:9000\"\n[log]\nformat = \"json\"\n",
        );
        let c = Config::load(Some(&p), no_env).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/tender"));
        assert_eq!(c.http.listen.port(), 9000);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(
            c.http.body_limit_bytes,
            1024 * 1024,
            "unset keys keep defaults"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let (_g, p) = write("[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        let err = Config::load(Some(&p), no_env).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("tender.toml"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn malformed_files_are_errors() {
        let (_g, p) = write("[http\n");
        assert!(matches!(
            Config::load(Some(&p), no_env),
            Err(ConfigError::Parse { .. })
        ));
        let (_g, p) = write("[http]\nlisten = 5\n");
        let err = Config::load(Some(&p), no_env).unwrap_err().to_string();
        assert!(
            err.contains("listen") || err.contains("invalid type"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/tender.toml")), no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn env_overrides_file() {
        let (_g, p) = write("[database]\nmax_connections = 4\n");
        let env: HashMap<&str, &str> = [
            ("TENDER_DATABASE_MAX_CONNECTIONS", "9"),
            ("TENDER_DATABASE_URL", "postgres://x@h/db"),
            ("TENDER_LOG_FORMAT", "json"),
        ]
        .into();
        let c = Config::load(Some(&p), |k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.database.max_connections, 9);
        assert_eq!(c.database_url(), "postgres://x@h/db");
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let err = Config::load(None, |k| {
            (k == "TENDER_HTTP_LISTEN").then(|| "not-an-address".to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("TENDER_HTTP_LISTEN"), "{err}");
    }

    #[test]
    fn validation() {
        let (_g, p) = write("[ca]\ncert_file = \"/x.pem\"\n");
        let err = Config::load(Some(&p), no_env).unwrap_err().to_string();
        assert!(err.contains("ca.key_file"), "{err}");
        let (_g, p) = write("[http]\nbody_limit_bytes = 0\n");
        assert!(Config::load(Some(&p), no_env).is_err());
    }
}
