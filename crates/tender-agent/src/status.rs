//! The status file the running agent keeps in its data directory (`status.json`), read by
//! `tender-agent status`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub device_id: Option<String>,
    /// `enrolling`, `connecting`, `connected`, `disconnected (...)`, `stopped: ...`.
    pub state: String,
    /// RFC 3339.
    pub updated_at: String,
    pub certificate_not_after: Option<String>,
    pub last_telemetry_at: Option<String>,
    pub last_error: Option<String>,
    pub pid: Option<u32>,
    /// Records in the store-and-forward buffer, waiting for the server.
    #[serde(default)]
    pub buffered: u64,
    /// Records the buffer dropped (oldest first) because it was full, over its lifetime.
    #[serde(default)]
    pub dropped: u64,
    /// Readings that could not be buffered at all (disk full, I/O error) since the start.
    #[serde(default)]
    pub lost_unbuffered: u64,
    /// Records the server acknowledged since the start.
    #[serde(default)]
    pub delivered: u64,
    /// Records the server refused for good since the start (logged, dropped).
    #[serde(default)]
    pub rejected: u64,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("status.json")
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Writes the status atomically.
pub fn write(data_dir: &Path, status: &Status) -> Result<(), crate::identity::IdentityError> {
    let body = serde_json::to_vec_pretty(status).unwrap_or_default();
    crate::identity::write_atomic(&path(data_dir), &body, 0o644)
}

/// The last status written; `None` when there is none (the agent never ran here).
pub fn read(data_dir: &Path) -> Option<Status> {
    let text = std::fs::read_to_string(path(data_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        let s = Status {
            device_id: Some("d".into()),
            state: "connected".into(),
            updated_at: now_rfc3339(),
            ..Default::default()
        };
        write(dir.path(), &s).unwrap();
        assert_eq!(read(dir.path()), Some(s));
    }
}
