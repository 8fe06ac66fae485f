//! The manifest: what an artifact is, what it needs and what it carries.
//!
//! The manifest is the signed part of an artifact. Everything a device decides before it
//! installs (is this for me, is it newer, what does it depend on, which module installs it,
//! how large and what hash is every byte that follows) is in it, so a valid signature over the
//! manifest covers the whole artifact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `format` field of every manifest this crate writes and reads.
pub const FORMAT: &str = "tender-artifact/1";
/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Most payloads in one artifact.
pub const MAX_PAYLOADS: usize = 256;
/// Most scripts in one artifact.
pub const MAX_SCRIPTS: usize = 32;
/// Largest script, in bytes.
pub const MAX_SCRIPT_BYTES: u64 = 1 << 20;
/// Largest payload (uncompressed), in bytes: 1 TiB.
pub const MAX_PAYLOAD_BYTES: u64 = 1 << 40;
/// Most entries in `depends` or `provides`.
pub const MAX_KEY_VALUES: usize = 64;

/// An artifact manifest (`manifest.json`). Unknown fields are refused: a reader of this
/// format must never ignore something the author meant to constrain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The software this artifact installs (`rootfs`, `sensor-app`): a device keeps one
    /// installed version per name.
    pub name: String,
    /// The version it installs, ordered by [`crate::compare_versions`].
    pub version: String,
    /// Device types it may be installed on (at least one).
    pub compatible: Vec<String>,
    /// What the device must already provide, key by key, exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends: BTreeMap<String, String>,
    /// What the device provides once it is installed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provides: BTreeMap<String, String>,
    /// The update module that installs it (`file`, `script`, `rootfs-ab` or a device's own).
    pub payload_type: String,
    /// The payloads, in the order they follow in the archive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payloads: Vec<Payload>,
    /// State scripts, in the order they follow in the archive (before the payloads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<Script>,
    /// Arguments for the update module (for `file`: where the files go).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// When it was created (RFC 3339), for people; nothing depends on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// How a payload is stored in the archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is.
    #[default]
    None,
    /// Stored gzip-compressed; `size` and `sha256` describe the uncompressed bytes.
    Gzip,
}

/// One payload: a file the update module receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// A file name (no directories), unique in the artifact.
    pub name: String,
    /// Its size once uncompressed, in bytes.
    pub size: u64,
    /// SHA-256 of the uncompressed bytes, lowercase hex.
    pub sha256: String,
    /// How it is stored.
    #[serde(default, skip_serializing_if = "is_none")]
    pub compression: Compression,
    /// Its size in the archive when compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_size: Option<u64>,
    /// Arguments for the update module about this payload (for `file`: `path`, `mode`).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

fn is_none(c: &Compression) -> bool {
    *c == Compression::None
}

impl Payload {
    /// Bytes this payload takes in the archive.
    pub fn stored_size(&self) -> u64 {
        self.stored_size.unwrap_or(self.size)
    }

    /// Its path inside the archive.
    pub fn entry_path(&self) -> String {
        format!("payloads/{}", self.name)
    }
}

/// When a state script runs on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptState {
    /// Before the update module installs; a failure aborts the update.
    BeforeInstall,
    /// After the module installed, before any reboot; a failure rolls back.
    AfterInstall,
    /// After the update was committed; a failure is reported, nothing is undone.
    AfterCommit,
    /// After a rollback.
    AfterRollback,
}

/// A state script the agent runs around the update module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// A file name, unique among the scripts.
    pub name: String,
    /// When it runs.
    pub state: ScriptState,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

impl Script {
    /// Its path inside the archive.
    pub fn entry_path(&self) -> String {
        format!("scripts/{}", self.name)
    }
}

/// Why a manifest was refused. Every message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("the manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge(usize),
    /// Not JSON of the manifest's shape.
    #[error("the manifest is not valid: {0}")]
    Syntax(String),
    /// Another format or version.
    #[error("unsupported artifact format {0:?} (this build reads {FORMAT:?})")]
    Format(String),
    /// A field with a bad value.
    #[error("manifest field `{field}`: {problem}")]
    Field {
        /// The field, as a path (`payloads[2].sha256`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

fn check_token(name: &str, value: &str, max: usize) -> Result<(), ManifestError> {
    if value.is_empty() || value.len() > max {
        return Err(field(name, format!("must be 1 to {max} characters")));
    }
    if value.starts_with(['.', '-']) {
        return Err(field(name, "must not start with '.' or '-'"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '~')))
    {
        return Err(field(
            name,
            format!("{c:?} is not allowed (letters, digits and . _ - + ~ are)"),
        ));
    }
    Ok(())
}

fn check_sha256(name: &str, value: &str) -> Result<(), ManifestError> {
    if value.len() != 64
        || !value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(field(name, "must be 64 lowercase hexadecimal digits"));
    }
    Ok(())
}

fn check_key_values(name: &str, map: &BTreeMap<String, String>) -> Result<(), ManifestError> {
    if map.len() > MAX_KEY_VALUES {
        return Err(field(name, format!("at most {MAX_KEY_VALUES} entries")));
    }
    for (k, v) in map {
        check_token(&format!("{name}.{k}"), k, 128)?;
        if v.len() > 256 || v.chars().any(char::is_control) {
            return Err(field(
                format!("{name}.{k}"),
                "the value must be at most 256 characters, without control characters",
            ));
        }
    }
    Ok(())
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest's canonical bytes (what [`Manifest::parse`] reads and signatures cover).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising cannot fail: every map has string keys and every value is plain data.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Checks every field; [`Manifest::parse`] calls it.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format(self.format.clone()));
        }
        check_token("name", &self.name, 128)?;
        check_token("version", &self.version, 64)?;
        if self.compatible.is_empty() {
            return Err(field("compatible", "name at least one device type"));
        }
        if self.compatible.len() > MAX_KEY_VALUES {
            return Err(field(
                "compatible",
                format!("at most {MAX_KEY_VALUES} device types"),
            ));
        }
        for (i, t) in self.compatible.iter().enumerate() {
            check_token(&format!("compatible[{i}]"), t, 64)?;
        }
        check_key_values("depends", &self.depends)?;
        check_key_values("provides", &self.provides)?;
        if self.payload_type.is_empty()
            || self.payload_type.len() > 64
            || !self
                .payload_type
                .starts_with(|c: char| c.is_ascii_lowercase())
            || !self
                .payload_type
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(field(
                "payload_type",
                "must be a module name: 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter",
            ));
        }
        if self.payloads.len() > MAX_PAYLOADS {
            return Err(field("payloads", format!("at most {MAX_PAYLOADS}")));
        }
        if self.scripts.len() > MAX_SCRIPTS {
            return Err(field("scripts", format!("at most {MAX_SCRIPTS}")));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.payloads.iter().enumerate() {
            let at = format!("payloads[{i}]");
            check_token(&format!("{at}.name"), &p.name, 128)?;
            if !names.insert(p.name.as_str()) {
                return Err(field(format!("{at}.name"), "another payload has this name"));
            }
            check_sha256(&format!("{at}.sha256"), &p.sha256)?;
            if p.size > MAX_PAYLOAD_BYTES {
                return Err(field(format!("{at}.size"), "larger than 1 TiB"));
            }
            match (p.compression, p.stored_size) {
                (Compression::None, Some(s)) if s != p.size => {
                    return Err(field(
                        format!("{at}.stored_size"),
                        "an uncompressed payload is stored at its size",
                    ));
                }
                (Compression::Gzip, None) => {
                    return Err(field(
                        format!("{at}.stored_size"),
                        "a compressed payload must give its stored size",
                    ));
                }
                (_, Some(s)) if s > MAX_PAYLOAD_BYTES => {
                    return Err(field(format!("{at}.stored_size"), "larger than 1 TiB"));
                }
                _ => {}
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.scripts.iter().enumerate() {
            let at = format!("scripts[{i}]");
            check_token(&format!("{at}.name"), &s.name, 128)?;
            if !names.insert(s.name.as_str()) {
                return Err(field(format!("{at}.name"), "another script has this name"));
            }
            check_sha256(&format!("{at}.sha256"), &s.sha256)?;
            if s.size > MAX_SCRIPT_BYTES {
                return Err(field(
                    format!("{at}.size"),
                    format!("a script is at most {MAX_SCRIPT_BYTES} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// Total uncompressed payload bytes.
    pub fn payload_bytes(&self) -> u64 {
        self.payloads.iter().map(|p| p.size).sum()
    }

    /// Whether a device of `device_type` that provides `provides` may install this.
    pub fn check_compatible(
        &self,
        device_type: &str,
        provides: &BTreeMap<String, String>,
    ) -> Result<(), Incompatible> {
        if !self.compatible.iter().any(|t| t == device_type) {
            return Err(Incompatible::DeviceType {
                device_type: device_type.to_owned(),
                compatible: self.compatible.clone(),
            });
        }
        for (key, wanted) in &self.depends {
            let actual = provides.get(key);
            if actual != Some(wanted) {
                return Err(Incompatible::Depends {
                    key: key.clone(),
                    wanted: wanted.clone(),
                    actual: actual.cloned(),
                });
            }
        }
        Ok(())
    }
}

/// Why a device may not install an artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    /// The device's type is not listed.
    #[error(
        "device type {device_type:?} is not among the artifact's compatible types {compatible:?}"
    )]
    DeviceType {
        /// The device's type.
        device_type: String,
        /// The artifact's list.
        compatible: Vec<String>,
    },
    /// A dependency is not met.
    #[error("the artifact depends on {key} = {wanted:?}; the device provides {actual:?}")]
    Depends {
        /// The key.
        key: String,
        /// The value the artifact needs.
        wanted: String,
        /// What the device has, if anything.
        actual: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            name: "sensor-app".into(),
            version: "1.2.0".into(),
            compatible: vec!["gw-x86".into()],
            depends: BTreeMap::from([("rootfs.version".into(), "5".into())]),
            provides: BTreeMap::from([("sensor-app.version".into(), "1.2.0".into())]),
            payload_type: "file".into(),
            payloads: vec![Payload {
                name: "app.bin".into(),
                size: 3,
                sha256: "a".repeat(64),
                compression: Compression::None,
                stored_size: None,
                meta: Default::default(),
            }],
            scripts: vec![],
            meta: Default::default(),
            created_at: None,
        }
    }

    #[test]
    fn round_trips_and_validates() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes()), Ok(m));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["install_anywhere"] = true.into();
        let err = Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("install_anywhere"), "{err}");
        let mut m = sample();
        m.format = "tender-artifact/2".into();
        assert!(matches!(
            Manifest::parse(&m.to_bytes()),
            Err(ManifestError::Format(_))
        ));
    }

    #[test]
    fn names_the_bad_field() {
        type Breaker = fn(&mut Manifest);
        let cases: Vec<(Breaker, &str)> = vec![
            (|m| m.name = "../etc".into(), "name"),
            (|m| m.version = String::new(), "version"),
            (|m| m.compatible.clear(), "compatible"),
            (|m| m.payloads[0].name = "a/b".into(), "payloads[0].name"),
            (|m| m.payloads[0].name = "..".into(), "payloads[0].name"),
            (|m| m.payloads[0].sha256 = "AB".into(), "payloads[0].sha256"),
            (
                |m| m.payloads[0].compression = Compression::Gzip,
                "payloads[0].stored_size",
            ),
            (
                |m| m.payloads.push(m.payloads[0].clone()),
                "payloads[1].name",
            ),
            (|m| m.payload_type = "Rootfs".into(), "payload_type"),
            (
                |m| {
                    m.depends.insert("k".into(), "a\nb".into());
                },
                "depends.k",
            ),
        ];
        for (break_it, name) in cases {
            let mut m = sample();
            break_it(&mut m);
            match m.validate() {
                Err(ManifestError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn compatibility_needs_type_and_depends() {
        let m = sample();
        let provides = BTreeMap::from([("rootfs.version".to_string(), "5".to_string())]);
        assert_eq!(m.check_compatible("gw-x86", &provides), Ok(()));
        assert!(matches!(
            m.check_compatible("rpi4", &provides),
            Err(Incompatible::DeviceType { .. })
        ));
        assert!(matches!(
            m.check_compatible("gw-x86", &BTreeMap::new()),
            Err(Incompatible::Depends { actual: None, .. })
        ));
    }

    #[test]
    fn oversize_is_refused_before_parsing() {
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert_eq!(
            Manifest::parse(&big),
            Err(ManifestError::TooLarge(MAX_MANIFEST_BYTES + 1))
        );
    }
}
