//! Operator accounts and their API tokens.

use serde::Serialize;

use crate::auth::Role;
use crate::{TenantId, Timestamp, TokenId, UserId};

/// Longest username accepted.
pub const MAX_USERNAME_LEN: usize = 64;

/// 1–64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn validate_username(name: &str) -> Result<(), InvalidUsername> {
    let ok_len = (1..=MAX_USERNAME_LEN).contains(&name.len());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(InvalidUsername(name.chars().take(80).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid username {0:?}: use 1-64 characters of letters, digits, '.', '_', '-' and '@'")]
pub struct InvalidUsername(pub String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub username: String,
    pub roles: Vec<Role>,
    pub disabled: bool,
    pub created_at: Timestamp,
}

/// An API token as stored: the secret itself is never kept, only a keyed hash of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: TokenId,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub name: String,
    pub secret_hash: Vec<u8>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

impl ApiToken {
    /// Whether the token may still be used at `now`.
    pub fn is_usable(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|exp| now < exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn usernames() {
        assert!(validate_username("admin").is_ok());
        assert!(validate_username("ops.jane@example.com").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username(&"a".repeat(65)).is_err());
    }

    #[test]
    fn token_usability() {
        let t = |expires: Option<i64>, revoked: Option<i64>| ApiToken {
            id: TokenId::from_uuid(Uuid::nil()),
            tenant_id: TenantId::from_uuid(Uuid::nil()),
            user_id: UserId::from_uuid(Uuid::nil()),
            name: "t".into(),
            secret_hash: vec![],
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: expires.map(Timestamp::from_unix_millis),
            revoked_at: revoked.map(Timestamp::from_unix_millis),
            last_used_at: None,
        };
        let now = Timestamp::from_unix_millis(100);
        assert!(t(None, None).is_usable(now));
        assert!(t(Some(101), None).is_usable(now));
        assert!(!t(Some(100), None).is_usable(now));
        assert!(!t(None, Some(50)).is_usable(now));
    }
}
