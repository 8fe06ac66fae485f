//! The persisted update: `<data_dir>/update.json`, replaced atomically (temporary file, fsync,
//! rename, directory fsync) before every state transition's actions run. It holds the update
//! in progress, or the last one once it is over.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::state::{Machine, State};

/// The journal's file in the data directory.
pub const JOURNAL_FILE: &str = "update.json";
/// Most log lines kept (the oldest are dropped).
pub const MAX_LOG_LINES: usize = 100;

/// The two slots of a `rootfs-ab` update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// The slot the device ran when the update started (the one to go back to).
    pub from: String,
    /// The slot the update is written to.
    pub to: String,
}

/// The update in progress (or the last one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Who asked for it: a deployment id, or the file name for a local install.
    pub artifact_id: String,
    pub name: String,
    pub version: String,
    pub payload_type: String,
    pub state: State,
    /// Starts of the agent in a state that waits for a boot (see [`Machine`]).
    #[serde(default)]
    pub attempts: u32,
    /// Whether the module can roll back (asked once the artifact was read).
    #[serde(default)]
    pub supports_rollback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Slots>,
    /// The kernel's boot id when a reboot was asked for (modules without slots tell a reboot by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// What the artifact provides, recorded on commit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provides: BTreeMap<String, String>,
    /// The failure that ended it or made it roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    pub updated_at: String,
    /// What happened, one line each (errors included), oldest first.
    #[serde(default)]
    pub log: Vec<String>,
}

impl Journal {
    pub fn machine(&self) -> Machine {
        Machine {
            state: self.state,
            attempts: self.attempts,
        }
    }

    /// Adds a log line (and logs it).
    pub fn log(&mut self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(update = %self.name, version = %self.version, state = %self.state, "{line}");
        self.log.push(format!(
            "{} {}: {line}",
            crate::status::now_rfc3339(),
            self.state
        ));
        if self.log.len() > MAX_LOG_LINES {
            let extra = self.log.len() - MAX_LOG_LINES;
            self.log.drain(..extra);
        }
    }

    /// The last error-like line, for reports.
    pub fn last_line(&self) -> Option<&str> {
        self.log.last().map(String::as_str)
    }

    /// Reads the journal; `Ok(None)` when there is none.
    pub fn load(data_dir: &Path) -> std::io::Result<Option<Journal>> {
        let path = data_dir.join(JOURNAL_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a readable update journal: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the journal atomically: a crash leaves the previous one or this one.
    pub fn save(&mut self, data_dir: &Path) -> std::io::Result<()> {
        self.updated_at = crate::status::now_rfc3339();
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        crate::desired::write_atomically(&data_dir.join(JOURNAL_FILE), &bytes)
    }
}

/// The environment variable naming a crash point. **Test only**: with
/// `TENDER_AGENT_CRASH_AT=<point>` the process aborts (like a power cut, without any cleanup)
/// when it reaches that point: right after journaling a state (`downloading`, `installing`,
/// `rebooting`, `verifying`, `committing`, `rolling_back`, `rollback_rebooting`, ...), or at
/// `slot-half-written` (half of a `rootfs-ab` image is in the slot) and `boot-switched` (the
/// boot environment points at the new slot, the journal does not say `rebooting` yet).
pub const CRASH_AT_ENV: &str = "TENDER_AGENT_CRASH_AT";

/// Aborts the process if `TENDER_AGENT_CRASH_AT` names this point (see [`CRASH_AT_ENV`]).
pub fn crash_point(point: &str) {
    if std::env::var(CRASH_AT_ENV).is_ok_and(|v| v == point) {
        eprintln!("tender-agent: crashing at {point} ({CRASH_AT_ENV})");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounded_log() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), None);
        let mut j = Journal {
            artifact_id: "a".into(),
            name: "app".into(),
            version: "1".into(),
            payload_type: "file".into(),
            state: State::Installing,
            attempts: 0,
            supports_rollback: true,
            slots: None,
            boot_id: None,
            provides: BTreeMap::new(),
            error: None,
            started_at: "t".into(),
            updated_at: "t".into(),
            log: vec![],
        };
        for i in 0..MAX_LOG_LINES + 3 {
            j.log(format!("line {i}"));
        }
        j.save(dir.path()).unwrap();
        let back = Journal::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, j);
        assert_eq!(back.log.len(), MAX_LOG_LINES);
        assert!(back.log[0].ends_with("line 3"));
        std::fs::write(dir.path().join(JOURNAL_FILE), b"{").unwrap();
        assert!(Journal::load(dir.path()).is_err());
    }
}
