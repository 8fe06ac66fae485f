//! Artifacts as the registry knows them: what was uploaded, checked and stored, and the keys a
//! tenant trusts to sign them. The format itself (manifest, signatures, content) is the
//! `tender-artifact` crate's; these records hold what the server read from it at upload.

use std::collections::BTreeMap;

use crate::{ArtifactId, TenantId, Timestamp};

/// An artifact in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub id: ArtifactId,
    pub tenant_id: TenantId,
    /// The manifest's name and version: unique together in a tenant.
    pub name: String,
    pub version: String,
    /// The update module that installs it.
    pub payload_type: String,
    pub compatible: Vec<String>,
    pub depends: BTreeMap<String, String>,
    pub provides: BTreeMap<String, String>,
    /// The artifact file's size and SHA-256 (what devices download).
    pub size: u64,
    pub sha256: String,
    /// Uncompressed payload bytes (what devices install).
    pub payload_bytes: u64,
    /// Trusted keys whose signatures verified at upload.
    pub signed_by: Vec<String>,
    /// The manifest's exact JSON text.
    pub manifest: String,
    pub created_at: Timestamp,
    /// Who uploaded it (a user name), when known.
    pub created_by: Option<String>,
}

/// A public key a tenant trusts to sign artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub tenant_id: TenantId,
    /// The key id (first 8 bytes of the SHA-256 of the raw key, hex).
    pub key_id: String,
    /// A name for people.
    pub name: String,
    /// The public key, PEM (SubjectPublicKeyInfo).
    pub public_key_pem: String,
    pub created_at: Timestamp,
}

/// Checks a name given to a trusted key: 1 to 100 characters, no control characters.
pub fn validate_key_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err("a key name is 1 to 100 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("a key name has no control characters".into());
    }
    Ok(())
}
