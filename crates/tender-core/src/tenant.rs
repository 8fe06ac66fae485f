//! Tenants: the unit of isolation. Every device, user, token and later every group, artifact and
//! deployment belongs to exactly one tenant.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{TenantId, Timestamp};

/// The slug of the tenant that every fresh installation has.
pub const DEFAULT_TENANT_SLUG: &str = "default";

/// A tenant's short name: 1–63 characters of `a-z`, `0-9` and `-`, not starting or ending with
/// `-` (so it is usable in a DNS label, a topic segment and a URL without escaping).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(s: &str) -> Result<Self, InvalidSlug> {
        let ok_len = (1..=63).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = !s.starts_with('-') && !s.ends_with('-');
        if ok_len && ok_chars && ok_ends {
            Ok(TenantSlug(s.to_owned()))
        } else {
            Err(InvalidSlug(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn default_tenant() -> Self {
        TenantSlug(DEFAULT_TENANT_SLUG.to_owned())
    }
}

impl TryFrom<String> for TenantSlug {
    type Error = InvalidSlug;
    fn try_from(s: String) -> Result<Self, InvalidSlug> {
        TenantSlug::parse(&s)
    }
}

impl From<TenantSlug> for String {
    fn from(s: TenantSlug) -> String {
        s.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantSlug({:?})", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid tenant slug {0:?}: use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
)]
pub struct InvalidSlug(pub String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: TenantSlug,
    pub name: String,
    /// Whether devices may ask to join without an enrollment token (they wait as `pending`).
    pub enrollment_open: bool,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["default", "a", "acme-berlin", "x1", &"a".repeat(63)] {
            assert!(TenantSlug::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Acme",
            "a_b",
            "a b",
            "ä",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad}");
        }
    }
}
