//! The agent's configuration file (TOML) and its environment overrides.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Configuration errors: one line each, naming the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("missing `{0}` (set it in the config file or the environment)")]
    Missing(&'static str),
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The file as written; every key optional so that the environment can fill in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server_url: Option<String>,
    pub mqtt_url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub enrollment_token: Option<String>,
    pub device_name: Option<String>,
    pub device_type: Option<String>,
    pub telemetry_interval_secs: Option<u64>,
    pub max_backoff_secs: Option<u64>,
    pub keepalive_secs: Option<u16>,
    pub telemetry_batch: Option<u32>,
    pub collectors: Option<Vec<String>>,
    pub disks: Option<Vec<PathBuf>>,
    pub collectors_dir: Option<PathBuf>,
    pub metrics_spool_dir: Option<PathBuf>,
    pub inventory_interval_secs: Option<u64>,
    pub inventory_scripts_dir: Option<PathBuf>,
    pub location_site: Option<String>,
    pub location_lat: Option<f64>,
    pub location_lon: Option<f64>,
    pub buffer_max_mib: Option<u64>,
    pub buffer_fsync_every: Option<u32>,
    pub https_fallback_after_secs: Option<u64>,
    pub config_handlers: Option<std::collections::BTreeMap<String, crate::desired::HandlerConfig>>,
    /// What the `reboot` command runs (default `["systemctl", "reboot"]`).
    pub reboot_command: Option<Vec<String>>,
    /// Custom commands: `[commands.<name>] exec = [...]`, `allow_args = false`.
    pub commands: Option<std::collections::BTreeMap<String, crate::commands::RawCustomCommand>>,
    /// Over-the-air updates: `[update]`, `[update.rootfs]`.
    pub update: Option<crate::update::RawUpdateConfig>,
    /// Log sources the server may ask for: `[logs.sources.NAME] file = ...` or `journal = ...`.
    pub logs: Option<crate::logs::RawLogsConfig>,
}

/// The collectors that can be switched on and off (`collectors = [...]`).
pub const COLLECTORS: &[&str] = &["system", "scripts", "spool"];

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// HTTPS base of the device API, e.g. `https://tender.example:8443`.
    pub server_url: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub ca_file: PathBuf,
    pub data_dir: PathBuf,
    pub enrollment_token: Option<String>,
    pub device_name: Option<String>,
    pub device_type: Option<String>,
    pub telemetry_interval_secs: u64,
    pub max_backoff_secs: u64,
    pub keepalive_secs: u16,
    /// Telemetry readings per message: 1 sends each reading; more send them as one batch.
    pub telemetry_batch: u32,
    /// System metrics from `/proc` and `/sys`.
    pub system_metrics: bool,
    /// Executable metric collectors (`collectors_dir`); `None` when switched off.
    pub collectors_dir: Option<PathBuf>,
    /// The spool directory applications drop metric files into; `None` when switched off.
    pub metrics_spool_dir: Option<PathBuf>,
    /// Filesystems whose usage is reported.
    pub disks: Vec<PathBuf>,
    /// How often the inventory is collected again (it is sent only when it changed).
    pub inventory_interval_secs: u64,
    pub inventory_scripts_dir: Option<PathBuf>,
    pub location_site: Option<String>,
    pub location_lat: Option<f64>,
    pub location_lon: Option<f64>,
    pub buffer_max_bytes: u64,
    /// fsync the buffer every this many records: 1 = every record, 0 = never.
    pub buffer_fsync_every: u32,
    /// When MQTT has been down this long, deliver over the HTTPS device API; `None`: never.
    pub https_fallback_after_secs: Option<u64>,
    /// Desired-state keys applied by writing a file (and running a hook): `[config_handlers.<key>]`.
    pub config_handlers: std::collections::BTreeMap<String, crate::desired::HandlerConfig>,
    /// The commands the agent carries out (built-ins and the allow-list of custom ones).
    pub commands: crate::commands::CommandsConfig,
    /// Over-the-air updates (`[update]`).
    pub update: crate::update::UpdateConfig,
    /// `[logs]`: the log sources the server may ask for.
    pub logs: crate::logs::LogsConfig,
}

/// Environment variables that override the file.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("TENDER_AGENT_SERVER_URL", "server_url"),
    ("TENDER_AGENT_MQTT_URL", "mqtt_url"),
    ("TENDER_AGENT_CA_FILE", "ca_file"),
    ("TENDER_AGENT_DATA_DIR", "data_dir"),
    ("TENDER_AGENT_ENROLLMENT_TOKEN", "enrollment_token"),
    ("TENDER_AGENT_DEVICE_NAME", "device_name"),
];

pub const DEFAULT_MQTT_PORT: u16 = 8883;

impl RawConfig {
    pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    /// Applies `TENDER_AGENT_*` values from `lookup` (normally the process environment).
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for (var, key) in ENV_OVERRIDES {
            let Some(v) = lookup(var).filter(|v| !v.is_empty()) else {
                continue;
            };
            match *key {
                "server_url" => self.server_url = Some(v),
                "mqtt_url" => self.mqtt_url = Some(v),
                "ca_file" => self.ca_file = Some(v.into()),
                "data_dir" => self.data_dir = Some(v.into()),
                "enrollment_token" => self.enrollment_token = Some(v),
                "device_name" => self.device_name = Some(v),
                _ => {}
            }
        }
    }

    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let server_url = self.server_url.ok_or(ConfigError::Missing("server_url"))?;
        let server = url::Url::parse(&server_url).map_err(|e| ConfigError::Invalid {
            key: "server_url",
            reason: e.to_string(),
        })?;
        if server.scheme() != "https" {
            return Err(ConfigError::Invalid {
                key: "server_url",
                reason: format!("must be an https:// URL, not {}://", server.scheme()),
            });
        }
        let server_host = server
            .host_str()
            .ok_or(ConfigError::Invalid {
                key: "server_url",
                reason: "no host".into(),
            })?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let (mqtt_host, mqtt_port) = match self.mqtt_url.as_deref() {
            None => (server_host, DEFAULT_MQTT_PORT),
            Some(m) => parse_mqtt_endpoint(m)?,
        };
        let telemetry_interval_secs = self.telemetry_interval_secs.unwrap_or(60);
        if telemetry_interval_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "telemetry_interval_secs",
                reason: "must be at least 1".into(),
            });
        }
        let max_backoff_secs = self.max_backoff_secs.unwrap_or(300);
        if max_backoff_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "max_backoff_secs",
                reason: "must be at least 1".into(),
            });
        }
        let keepalive_secs = self.keepalive_secs.unwrap_or(60);
        if keepalive_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "keepalive_secs",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(n) = &self.device_name
            && (n.is_empty() || n.chars().count() > 128)
        {
            return Err(ConfigError::Invalid {
                key: "device_name",
                reason: "1 to 128 characters".into(),
            });
        }
        let invalid = |key: &'static str, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        let telemetry_batch = self.telemetry_batch.unwrap_or(1);
        if !(1..=100).contains(&telemetry_batch) {
            return Err(invalid("telemetry_batch", "1 to 100 readings per message"));
        }
        let collectors = self
            .collectors
            .unwrap_or_else(|| COLLECTORS.iter().map(|c| (*c).to_owned()).collect());
        if let Some(bad) = collectors
            .iter()
            .find(|c| !COLLECTORS.contains(&c.as_str()))
        {
            return Err(ConfigError::Invalid {
                key: "collectors",
                reason: format!(
                    "unknown collector {bad:?}; known: {}",
                    COLLECTORS.join(", ")
                ),
            });
        }
        let on = |c: &str| collectors.iter().any(|x| x == c);
        let data_dir = self.data_dir.ok_or(ConfigError::Missing("data_dir"))?;
        let inventory_interval_secs = self.inventory_interval_secs.unwrap_or(300);
        if inventory_interval_secs == 0 {
            return Err(invalid("inventory_interval_secs", "must be at least 1"));
        }
        if let Some(lat) = self.location_lat
            && !(-90.0..=90.0).contains(&lat)
        {
            return Err(invalid("location_lat", "degrees from -90 to 90"));
        }
        if let Some(lon) = self.location_lon
            && !(-180.0..=180.0).contains(&lon)
        {
            return Err(invalid("location_lon", "degrees from -180 to 180"));
        }
        let buffer_max_mib = self.buffer_max_mib.unwrap_or(16);
        if !(1..=4096).contains(&buffer_max_mib) {
            return Err(invalid("buffer_max_mib", "1 to 4096 MiB"));
        }
        let config_handlers = self.config_handlers.unwrap_or_default();
        crate::desired::validate_handlers(&config_handlers).map_err(|reason| {
            ConfigError::Invalid {
                key: "config_handlers",
                reason,
            }
        })?;
        let commands =
            crate::commands::CommandsConfig::from_raw(self.reboot_command, self.commands)?;
        let device_type = self.device_type.filter(|t| !t.is_empty());
        let update = crate::update::UpdateConfig::from_raw(
            self.update,
            &data_dir,
            device_type.clone(),
            &commands.reboot,
        )?;
        let logs = crate::logs::LogsConfig::from_raw(self.logs).map_err(|reason| {
            ConfigError::Invalid {
                key: "logs",
                reason,
            }
        })?;
        Ok(AgentConfig {
            logs,
            update,
            config_handlers,
            commands,
            telemetry_batch,
            system_metrics: on("system"),
            collectors_dir: on("scripts").then(|| {
                self.collectors_dir
                    .unwrap_or_else(|| crate::custom::DEFAULT_COLLECTORS_DIR.into())
            }),
            metrics_spool_dir: on("spool").then(|| {
                self.metrics_spool_dir
                    .unwrap_or_else(|| data_dir.join(crate::custom::SPOOL_DIR_NAME))
            }),
            disks: self.disks.unwrap_or_else(|| vec![PathBuf::from("/")]),
            inventory_interval_secs,
            inventory_scripts_dir: Some(
                self.inventory_scripts_dir
                    .unwrap_or_else(|| crate::inventory::DEFAULT_SCRIPTS_DIR.into()),
            ),
            location_site: self.location_site.filter(|s| !s.is_empty()),
            location_lat: self.location_lat,
            location_lon: self.location_lon,
            buffer_max_bytes: buffer_max_mib << 20,
            buffer_fsync_every: self.buffer_fsync_every.unwrap_or(1),
            https_fallback_after_secs: self.https_fallback_after_secs,
            server_url: server_url.trim_end_matches('/').to_owned(),
            mqtt_host,
            mqtt_port,
            ca_file: self.ca_file.ok_or(ConfigError::Missing("ca_file"))?,
            data_dir,
            enrollment_token: self.enrollment_token.filter(|t| !t.is_empty()),
            device_name: self.device_name,
            device_type,
            telemetry_interval_secs,
            max_backoff_secs,
            keepalive_secs,
        })
    }
}

/// `mqtts://host:port`, `host:port` or `host` (port 8883).
pub fn parse_mqtt_endpoint(s: &str) -> Result<(String, u16), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key: "mqtt_url",
        reason,
    };
    if s.contains("://") {
        let u = url::Url::parse(s).map_err(|e| invalid(e.to_string()))?;
        if !matches!(u.scheme(), "mqtts" | "ssl" | "tls" | "mqtt+ssl") {
            return Err(invalid(format!(
                "the agent only speaks MQTT over TLS (mqtts://), not {}://",
                u.scheme()
            )));
        }
        let host = u
            .host_str()
            .ok_or_else(|| invalid("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        return Ok((host, u.port().unwrap_or(DEFAULT_MQTT_PORT)));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("unclosed [".into()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| invalid(format!("bad port {p:?}")))?,
            None => DEFAULT_MQTT_PORT,
        };
        return Ok((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port = port
                .parse()
                .map_err(|_| invalid(format!("bad port {port:?}")))?;
            if host.is_empty() {
                return Err(invalid("no host".into()));
            }
            Ok((host.to_owned(), port))
        }
        _ if !s.is_empty() => Ok((s.to_owned(), DEFAULT_MQTT_PORT)),
        _ => Err(invalid("empty".into())),
    }
}

impl AgentConfig {
    /// Reads `path`, applies the process environment, validates.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut raw = RawConfig::parse(&text, path)?;
        raw.apply_env(|k| std::env::var(k).ok());
        raw.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        RawConfig::parse(text, Path::new("agent.toml"))?.validate()
    }

    const GOOD: &str = r#"
server_url = "https://tender.example:8443/"
mqtt_url = "tender.example:8883"
ca_file = "/etc/tender/ca.crt"
data_dir = "/var/lib/tender-agent"
enrollment_token = "tne_abc"
device_name = "kiosk-17"
device_type = "rpi4"
telemetry_interval_secs = 30
max_backoff_secs = 120
"#;

    #[test]
    fn a_full_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server_url, "https://tender.example:8443");
        assert_eq!(
            (c.mqtt_host.as_str(), c.mqtt_port),
            ("tender.example", 8883)
        );
        assert_eq!(c.telemetry_interval_secs, 30);
        assert_eq!(c.max_backoff_secs, 120);
        assert_eq!(c.keepalive_secs, 60);
        assert_eq!(c.enrollment_token.as_deref(), Some("tne_abc"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(&format!("{GOOD}\nserver_ulr = \"x\"\n")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("server_ulr"), "{msg}");
        assert!(msg.starts_with("agent.toml:"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn missing_and_invalid_values() {
        let e = parse("ca_file = \"x\"\ndata_dir = \"y\"\n").unwrap_err();
        assert!(e.to_string().contains("server_url"), "{e}");
        let e = parse(&GOOD.replace("https://", "http://")).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        let e = parse(&GOOD.replace("= 30", "= 0")).unwrap_err();
        assert!(e.to_string().contains("telemetry_interval_secs"), "{e}");
        let e = parse(&GOOD.replace("= 30", "= \"often\"")).unwrap_err();
        assert!(e.to_string().contains("agent.toml"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut raw = RawConfig::parse(GOOD, Path::new("a.toml")).unwrap();
        raw.apply_env(|k| match k {
            "TENDER_AGENT_SERVER_URL" => Some("https://other:9443".into()),
            "TENDER_AGENT_ENROLLMENT_TOKEN" => Some("tne_env".into()),
            "TENDER_AGENT_DATA_DIR" => Some("/tmp/agent".into()),
            _ => None,
        });
        let c = raw.validate().unwrap();
        assert_eq!(c.server_url, "https://other:9443");
        assert_eq!(c.enrollment_token.as_deref(), Some("tne_env"));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/agent"));
    }

    #[test]
    fn mqtt_endpoints() {
        assert_eq!(
            parse_mqtt_endpoint("mqtts://h:1883").unwrap(),
            ("h".into(), 1883)
        );
        assert_eq!(
            parse_mqtt_endpoint("mqtts://h").unwrap(),
            ("h".into(), 8883)
        );
        assert_eq!(parse_mqtt_endpoint("h:12").unwrap(), ("h".into(), 12));
        assert_eq!(parse_mqtt_endpoint("h").unwrap(), ("h".into(), 8883));
        assert_eq!(
            parse_mqtt_endpoint("[::1]:8884").unwrap(),
            ("::1".into(), 8884)
        );
        assert!(
            parse_mqtt_endpoint("mqtt://h").is_err(),
            "plain MQTT refused"
        );
        assert!(parse_mqtt_endpoint("h:port").is_err());
        // Without mqtt_url: the server's host, port 8883.
        let c = parse(&GOOD.replace("mqtt_url = \"tender.example:8883\"\n", "")).unwrap();
        assert_eq!(
            (c.mqtt_host.as_str(), c.mqtt_port),
            ("tender.example", 8883)
        );
    }
}
