//! What the device has installed: `<data_dir>/installed.json`, updated by every committed
//! artifact with its `provides` and a `<name>.version` record. Artifacts' `depends` are checked
//! against it (on top of the configuration's `update.provides`), and a new artifact's version
//! against the installed version of the same name.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file in the data directory.
pub const INSTALLED_FILE: &str = "installed.json";

/// One installed artifact name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: String,
    pub artifact_id: String,
    pub payload_type: String,
    /// RFC 3339.
    pub installed_at: String,
}

/// The device's installed software.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// What the device provides (from committed artifacts).
    #[serde(default)]
    pub provides: BTreeMap<String, String>,
    /// By artifact name.
    #[serde(default)]
    pub artifacts: BTreeMap<String, Record>,
}

impl Installed {
    /// Reads the store; a missing file is an empty store.
    pub fn load(data_dir: &Path) -> std::io::Result<Installed> {
        let path = data_dir.join(INSTALLED_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not readable: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Installed::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes it atomically.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        crate::desired::write_atomically(&data_dir.join(INSTALLED_FILE), &bytes)
    }

    /// `base` (the configuration's) overlaid with what committed artifacts provide.
    pub fn provides_over(&self, base: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut all = base.clone();
        all.extend(self.provides.clone());
        all
    }

    /// Records a committed artifact. Idempotent.
    pub fn record(
        &mut self,
        name: &str,
        version: &str,
        payload_type: &str,
        artifact_id: &str,
        provides: &BTreeMap<String, String>,
    ) {
        self.provides.extend(provides.clone());
        self.provides
            .insert(format!("{name}.version"), version.to_owned());
        self.artifacts.insert(
            name.to_owned(),
            Record {
                version: version.to_owned(),
                artifact_id: artifact_id.to_owned(),
                payload_type: payload_type.to_owned(),
                installed_at: crate::status::now_rfc3339(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Installed::load(dir.path()).unwrap();
        assert_eq!(s, Installed::default());
        s.record(
            "rootfs",
            "5",
            "rootfs-ab",
            "d1",
            &BTreeMap::from([("os.flavour".to_string(), "lean".to_string())]),
        );
        s.save(dir.path()).unwrap();
        let s = Installed::load(dir.path()).unwrap();
        assert_eq!(s.artifacts["rootfs"].version, "5");
        let base = BTreeMap::from([
            ("rootfs.version".to_string(), "4".to_string()),
            ("board".to_string(), "x".to_string()),
        ]);
        let p = s.provides_over(&base);
        assert_eq!(p["rootfs.version"], "5");
        assert_eq!(p["board"], "x");
        assert_eq!(p["os.flavour"], "lean");
    }
}
