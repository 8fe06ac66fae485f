//! The desired state from the server (`state/desired`): configuration handlers apply it and
//! the agent reports what it applied.
//!
//! - Every message carries the whole effective document and its version. Older versions than
//!   the last one handled are ignored; the same version again (a resync) re-applies only what
//!   is not applied yet, so resyncs are cheap and idempotent.
//! - The whole document is written to `<data_dir>/desired.json` (atomically) for programs
//!   that read their configuration from there.
//! - A **configuration handler** (`[config_handlers.<key>]`) maps a top-level key to a file:
//!   its value is written atomically (a temporary file in the same directory, fsync, rename,
//!   fsync of the directory) as JSON, or as the string itself with `format = "text"`, and an
//!   optional hook command runs after it (with a timeout). When the hook fails the previous
//!   file is put back, so the device stays on its last good configuration.
//! - What was applied is reported as `state/reported`: each applied key with its value (so
//!   the server's delta empties), a key taken out of the desired state as `null`, and
//!   `tender.desired_version` / `tender.config_errors` (key → message). The report goes through
//!   the store-and-forward buffer like everything else.
//! - What was applied survives restarts in `<data_dir>/desired-state.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::agent::Uplink;
use crate::config::AgentConfig;

/// How a handler writes its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The value as JSON (pretty-printed, newline-terminated).
    #[default]
    Json,
    /// The value must be a string, written as is.
    Text,
}

/// `[config_handlers.<key>]` in the agent's configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The file the value is written to (absolute; its directory must exist).
    pub path: PathBuf,
    /// A command run after the file is written (program and arguments, no shell).
    #[serde(default)]
    pub hook: Vec<String>,
    #[serde(default)]
    pub format: Format,
    /// The hook is killed and the change rolled back after this long.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_secs: u64,
}

fn default_hook_timeout() -> u64 {
    60
}

/// Checks handlers when the configuration is loaded.
pub fn validate_handlers(handlers: &BTreeMap<String, HandlerConfig>) -> Result<(), String> {
    for (key, h) in handlers {
        if key.is_empty() || key.starts_with('$') || key == "tender" {
            return Err(format!(
                "config_handlers.{key:?}: the key must be a desired-state key (not empty, not `tender`, no `$`)"
            ));
        }
        if !h.path.is_absolute() {
            return Err(format!(
                "config_handlers.{key}.path must be absolute, not {}",
                h.path.display()
            ));
        }
        if let Some(program) = h.hook.first()
            && !Path::new(program).is_absolute()
        {
            return Err(format!(
                "config_handlers.{key}.hook must start with an absolute program path, not {program}"
            ));
        }
        if h.hook_timeout_secs == 0 {
            return Err(format!(
                "config_handlers.{key}.hook_timeout_secs must be at least 1"
            ));
        }
    }
    Ok(())
}

/// The message on `state/desired`.
#[derive(Debug, Deserialize)]
struct DesiredMessage {
    version: u64,
    state: Map<String, Value>,
}

/// What was applied, kept across restarts.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Applied {
    version: u64,
    /// Handled keys and the value last applied.
    values: BTreeMap<String, Value>,
    /// Handled keys whose last attempt failed, with why.
    errors: BTreeMap<String, String>,
}

/// Applies the desired state and reports what was applied.
pub struct DesiredHandler {
    uplinks: mpsc::Sender<Uplink>,
    handlers: BTreeMap<String, HandlerConfig>,
    data_dir: PathBuf,
    applied: Applied,
}

const STATE_FILE: &str = "desired-state.json";
const DOCUMENT_FILE: &str = "desired.json";

impl DesiredHandler {
    pub fn new(config: &AgentConfig, uplinks: mpsc::Sender<Uplink>) -> Self {
        let path = config.data_dir.join(STATE_FILE);
        let applied = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cannot read what was applied; starting afresh");
                Applied::default()
            }),
            Err(_) => Applied::default(),
        };
        DesiredHandler {
            uplinks,
            handlers: config.config_handlers.clone(),
            data_dir: config.data_dir.clone(),
            applied,
        }
    }

    /// The full desired state arrived.
    pub async fn on_desired(&mut self, payload: &[u8]) {
        let msg: DesiredMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "the server sent a desired state this agent cannot read; ignored");
                return;
            }
        };
        if msg.version < self.applied.version {
            tracing::debug!(
                version = msg.version,
                applied = self.applied.version,
                "an older desired state; ignored"
            );
            return;
        }
        let document = Value::Object(msg.state.clone());
        let text = serde_json::to_vec_pretty(&document).unwrap_or_default();
        if let Err(e) = write_atomically(&self.data_dir.join(DOCUMENT_FILE), &text) {
            tracing::warn!(error = %e, "cannot write desired.json");
        }
        let mut report = Map::new();
        let mut changed = msg.version != self.applied.version;
        for (key, handler) in &self.handlers {
            match msg.state.get(key) {
                Some(want) => {
                    let done = self.applied.values.get(key) == Some(want)
                        && !self.applied.errors.contains_key(key);
                    if done {
                        continue;
                    }
                    changed = true;
                    match apply(handler, want).await {
                        Ok(()) => {
                            tracing::info!(key, path = %handler.path.display(), "configuration applied");
                            self.applied.values.insert(key.clone(), want.clone());
                            self.applied.errors.remove(key);
                            report.insert(key.clone(), want.clone());
                        }
                        Err(e) => {
                            tracing::warn!(key, error = %e, "configuration not applied");
                            self.applied.errors.insert(key.clone(), e);
                        }
                    }
                }
                None => {
                    let had = self.applied.values.remove(key).is_some();
                    let errored = self.applied.errors.remove(key).is_some();
                    if had || errored {
                        changed = true;
                        report.insert(key.clone(), Value::Null);
                    }
                }
            }
        }
        if !changed {
            return;
        }
        self.applied.version = msg.version;
        let errors: Map<String, Value> = self
            .applied
            .errors
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        report.insert(
            "tender".into(),
            json!({
                "desired_version": msg.version,
                "config_errors": if errors.is_empty() { Value::Null } else { Value::Object(errors) },
            }),
        );
        if let Ok(bytes) = serde_json::to_vec(&self.applied)
            && let Err(e) = write_atomically(&self.data_dir.join(STATE_FILE), &bytes)
        {
            tracing::warn!(error = %e, "cannot record what was applied");
        }
        let payload = serde_json::to_vec(&Value::Object(report)).unwrap_or_default();
        if self
            .uplinks
            .send(Uplink::new("state/reported", payload))
            .await
            .is_err()
        {
            tracing::warn!("the agent is stopping; the report of what was applied is not buffered");
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new file, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tender-tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    // Keep the permissions of the file being replaced.
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes one handler's file and runs its hook; on a hook failure puts the old file back.
async fn apply(handler: &HandlerConfig, value: &Value) -> Result<(), String> {
    let bytes = match (handler.format, value) {
        (Format::Text, Value::String(s)) => s.clone().into_bytes(),
        (Format::Text, other) => {
            return Err(format!(
                "format = \"text\" needs a string value, not {}",
                type_name(other)
            ));
        }
        (Format::Json, v) => {
            let mut b = serde_json::to_vec_pretty(v).map_err(|e| e.to_string())?;
            b.push(b'\n');
            b
        }
    };
    let previous = std::fs::read(&handler.path).ok();
    write_atomically(&handler.path, &bytes)
        .map_err(|e| format!("writing {}: {e}", handler.path.display()))?;
    let Some((program, args)) = handler.hook.split_first() else {
        return Ok(());
    };
    let run = tokio::process::Command::new(program)
        .args(args)
        .env("TENDER_CONFIG_FILE", &handler.path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let outcome =
        match tokio::time::timeout(Duration::from_secs(handler.hook_timeout_secs), run).await {
            Err(_) => Err(format!(
                "the hook took longer than {} s and was stopped",
                handler.hook_timeout_secs
            )),
            Ok(Err(e)) => Err(format!("the hook {program} could not run: {e}")),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr
                    .trim()
                    .chars()
                    .rev()
                    .take(300)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(format!("the hook failed ({}): {tail}", out.status))
            }
        };
    if let Err(e) = &outcome {
        let restored = match &previous {
            Some(old) => write_atomically(&handler.path, old),
            None => std::fs::remove_file(&handler.path),
        };
        if let Err(r) = restored {
            return Err(format!(
                "{e}; putting the previous file back failed too: {r}"
            ));
        }
    }
    outcome
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(dir: &Path, name: &str, hook: Vec<String>, format: Format) -> HandlerConfig {
        HandlerConfig {
            path: dir.join(name),
            hook,
            format,
            hook_timeout_secs: 5,
        }
    }

    fn agent_config(dir: &Path, handlers: BTreeMap<String, HandlerConfig>) -> AgentConfig {
        let mut raw = crate::config::RawConfig {
            server_url: Some("https://localhost:8443".into()),
            ca_file: Some(dir.join("ca.pem")),
            data_dir: Some(dir.join("data")),
            ..Default::default()
        };
        raw.config_handlers = Some(handlers);
        let c = raw.validate().unwrap();
        std::fs::create_dir_all(&c.data_dir).unwrap();
        c
    }

    async fn next_report(rx: &mut mpsc::Receiver<Uplink>) -> Value {
        let up = rx.try_recv().expect("a report was sent");
        assert_eq!(up.suffix, "state/reported");
        serde_json::from_slice(&up.payload).unwrap()
    }

    #[tokio::test]
    async fn handlers_write_files_report_and_skip_what_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut handlers = BTreeMap::new();
        handlers.insert(
            "ntp".to_owned(),
            handler(dir.path(), "ntp.json", vec![], Format::Json),
        );
        handlers.insert(
            "motd".to_owned(),
            handler(dir.path(), "motd", vec![], Format::Text),
        );
        let config = agent_config(dir.path(), handlers);
        let (tx, mut rx) = mpsc::channel(8);
        let mut h = DesiredHandler::new(&config, tx.clone());
        h.on_desired(
            br#"{"version": 3, "state": {"ntp": {"servers": ["a"]}, "motd": "hello", "other": 1}}"#,
        )
        .await;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ntp.json")).unwrap(),
            "{\n  \"servers\": [\n    \"a\"\n  ]\n}\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("motd")).unwrap(),
            "hello"
        );
        let r = next_report(&mut rx).await;
        assert_eq!(r["ntp"], json!({"servers": ["a"]}));
        assert_eq!(r["motd"], "hello");
        assert_eq!(
            r["tender"],
            json!({"desired_version": 3, "config_errors": null})
        );
        assert!(
            r.get("other").is_none(),
            "keys without a handler are not reported"
        );
        let whole: Value =
            serde_json::from_slice(&std::fs::read(config.data_dir.join("desired.json")).unwrap())
                .unwrap();
        assert_eq!(whole["other"], 1);

        // The same version again (a resync): nothing to do, nothing reported.
        h.on_desired(br#"{"version": 3, "state": {"ntp": {"servers": ["a"]}, "motd": "hello"}}"#)
            .await;
        assert!(rx.try_recv().is_err());
        // An older version is ignored.
        h.on_desired(br#"{"version": 2, "state": {}}"#).await;
        assert!(rx.try_recv().is_err());

        // After a restart the agent remembers; a removed key is reported as null.
        drop(h);
        let mut h = DesiredHandler::new(&config, tx);
        h.on_desired(br#"{"version": 4, "state": {"ntp": {"servers": ["a"]}}}"#)
            .await;
        let r = next_report(&mut rx).await;
        assert_eq!(r["motd"], Value::Null);
        assert!(
            r.get("ntp").is_none(),
            "unchanged values are not reported again"
        );
        assert_eq!(r["tender"]["desired_version"], 4);
    }

    #[tokio::test]
    async fn a_failing_hook_rolls_back_and_reports_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut handlers = BTreeMap::new();
        handlers.insert(
            "app".to_owned(),
            handler(
                dir.path(),
                "app.json",
                vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "grep -q good \"$TENDER_CONFIG_FILE\" || { echo bad config >&2; exit 3; }"
                        .into(),
                ],
                Format::Json,
            ),
        );
        handlers.insert(
            "motd".to_owned(),
            handler(dir.path(), "motd", vec![], Format::Text),
        );
        let config = agent_config(dir.path(), handlers);
        let (tx, mut rx) = mpsc::channel(8);
        let mut h = DesiredHandler::new(&config, tx);
        h.on_desired(br#"{"version": 1, "state": {"app": "good"}}"#)
            .await;
        assert_eq!(next_report(&mut rx).await["app"], "good");
        h.on_desired(br#"{"version": 2, "state": {"app": "evil", "motd": 5}}"#)
            .await;
        let r = next_report(&mut rx).await;
        assert!(r.get("app").is_none());
        let errors = &r["tender"]["config_errors"];
        assert!(
            errors["app"].as_str().unwrap().contains("bad config"),
            "{r}"
        );
        assert!(
            errors["motd"].as_str().unwrap().contains("needs a string"),
            "{r}"
        );
        // The previous, working file is back.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("app.json")).unwrap(),
            "\"good\"\n"
        );
        // A resync of the same version tries the failed keys again.
        h.on_desired(br#"{"version": 2, "state": {"app": "good again", "motd": "hi"}}"#)
            .await;
        let r = next_report(&mut rx).await;
        assert_eq!(r["app"], "good again");
        assert_eq!(r["motd"], "hi");
        assert_eq!(r["tender"]["config_errors"], Value::Null);
    }

    #[test]
    fn handlers_are_checked() {
        let ok = |path: &str, hook: Vec<&str>| {
            let mut m = BTreeMap::new();
            m.insert(
                "k".to_owned(),
                HandlerConfig {
                    path: path.into(),
                    hook: hook.into_iter().map(String::from).collect(),
                    format: Format::Json,
                    hook_timeout_secs: 1,
                },
            );
            validate_handlers(&m)
        };
        assert!(ok("/etc/x.json", vec!["/bin/true"]).is_ok());
        assert!(ok("x.json", vec![]).unwrap_err().contains("absolute"));
        assert!(
            ok("/etc/x.json", vec!["true"])
                .unwrap_err()
                .contains("absolute program")
        );
    }
}
