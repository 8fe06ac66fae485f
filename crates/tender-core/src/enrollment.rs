//! How devices join: enrollment tokens and the decision a device's request gets.
//!
//! Three ways in:
//! 1. an enrollment token (zero-touch): accepted at once;
//! 2. no token, when the tenant allows unsolicited enrollment: the device waits as `pending`
//!    for an operator's decision;
//! 3. preauthorized: an operator registered the device's public key in advance.
//!
//! [`decide`] is the whole rule, pure: the edges gather the facts and act on the answer.

use serde::Serialize;

use crate::device::DeviceState;
use crate::{TenantId, Timestamp, TokenId};

/// An operator-created token that lets devices enroll without approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentToken {
    pub id: TokenId,
    pub tenant_id: TenantId,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: Vec<u8>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// `None`: unlimited.
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub revoked_at: Option<Timestamp>,
    /// Device type given to devices enrolled with this token, when they do not say.
    pub device_type: Option<String>,
}

/// Why an enrollment token cannot be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the enrollment token has expired")]
    Expired,
    #[error("the enrollment token has been used its maximum number of times")]
    Exhausted,
    #[error("the enrollment token has been revoked")]
    Revoked,
}

impl EnrollmentToken {
    pub fn check(&self, now: Timestamp) -> Result<(), TokenRefusal> {
        if self.revoked_at.is_some() {
            return Err(TokenRefusal::Revoked);
        }
        if self.expires_at.is_some_and(|e| now >= e) {
            return Err(TokenRefusal::Expired);
        }
        if self.max_uses.is_some_and(|m| self.uses >= m) {
            return Err(TokenRefusal::Exhausted);
        }
        Ok(())
    }
}

/// What the server knows when a device asks to enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentFacts {
    /// A token was presented and it is valid now (`Some(Ok)`), invalid (`Some(Err)`), or none.
    pub token: Option<Result<(), TokenRefusal>>,
    /// The state of the device already registered with this public key in this tenant, if any.
    pub known_device: Option<DeviceState>,
    /// Whether the tenant accepts requests without a token (they become `pending`).
    pub unsolicited_allowed: bool,
}

/// The answer to an enrollment request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentDecision {
    /// Issue a certificate; the device is (or becomes) `Accepted`.
    Issue { new_state: DeviceState },
    /// Register (or keep) the device as `Pending`; the device should ask again later.
    Wait,
    /// Refuse, with the reason.
    Refuse(EnrollmentRefusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentRefusal {
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error("this tenant does not accept devices without an enrollment token")]
    UnsolicitedClosed,
    #[error("this device was rejected by an operator")]
    Rejected,
    #[error("this device has been decommissioned")]
    Decommissioned,
}

/// Decides an enrollment request.
///
/// A key that belongs to a decommissioned or rejected device is refused whatever token comes
/// with it (a token must not resurrect a retired identity); an accepted or preauthorized key gets
/// its certificate (re-enrollment after losing the certificate); otherwise a valid token admits
/// the device at once and no token means waiting, if the tenant allows it.
pub fn decide(f: &EnrollmentFacts) -> EnrollmentDecision {
    use EnrollmentDecision::*;
    match f.known_device {
        Some(DeviceState::Decommissioned) => return Refuse(EnrollmentRefusal::Decommissioned),
        Some(DeviceState::Rejected) => return Refuse(EnrollmentRefusal::Rejected),
        Some(DeviceState::Accepted | DeviceState::Preauthorized) => {
            return Issue {
                new_state: DeviceState::Accepted,
            };
        }
        Some(DeviceState::Pending) | None => {}
    }
    match f.token {
        Some(Ok(())) => Issue {
            new_state: DeviceState::Accepted,
        },
        Some(Err(refusal)) => Refuse(refusal.into()),
        None if f.known_device == Some(DeviceState::Pending) => Wait,
        None if f.unsolicited_allowed => Wait,
        None => Refuse(EnrollmentRefusal::UnsolicitedClosed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;
    use EnrollmentDecision::*;
    use uuid::Uuid;

    fn token(expires: Option<i64>, max: Option<u32>, uses: u32, revoked: bool) -> EnrollmentToken {
        EnrollmentToken {
            id: TokenId::from_uuid(Uuid::nil()),
            tenant_id: TenantId::from_uuid(Uuid::nil()),
            name: "factory".into(),
            secret_hash: vec![],
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: expires.map(Timestamp::from_unix_millis),
            max_uses: max,
            uses,
            revoked_at: revoked.then_some(Timestamp::UNIX_EPOCH),
            device_type: None,
        }
    }

    #[test]
    fn token_checks() {
        let now = Timestamp::from_unix_millis(100);
        assert_eq!(token(None, None, 9999, false).check(now), Ok(()));
        assert_eq!(token(Some(101), Some(2), 1, false).check(now), Ok(()));
        assert_eq!(
            token(Some(100), None, 0, false).check(now),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            token(None, Some(2), 2, false).check(now),
            Err(TokenRefusal::Exhausted)
        );
        assert_eq!(
            token(None, Some(0), 0, false).check(now),
            Err(TokenRefusal::Exhausted)
        );
        assert_eq!(
            token(Some(1), Some(0), 0, true).check(now),
            Err(TokenRefusal::Revoked)
        );
    }

    fn facts(
        token: Option<Result<(), TokenRefusal>>,
        known: Option<DeviceState>,
        open: bool,
    ) -> EnrollmentFacts {
        EnrollmentFacts {
            token,
            known_device: known,
            unsolicited_allowed: open,
        }
    }

    #[test]
    fn decisions() {
        let issue = Issue {
            new_state: Accepted,
        };
        // A valid token admits a new device, open tenant or not.
        assert_eq!(decide(&facts(Some(Ok(())), None, false)), issue);
        // ... and promotes a pending one.
        assert_eq!(decide(&facts(Some(Ok(())), Some(Pending), true)), issue);
        // An invalid token is refused, even in an open tenant: the device meant to use it.
        assert_eq!(
            decide(&facts(Some(Err(TokenRefusal::Expired)), None, true)),
            Refuse(EnrollmentRefusal::Token(TokenRefusal::Expired))
        );
        // No token: wait if open, refuse if closed.
        assert_eq!(decide(&facts(None, None, true)), Wait);
        assert_eq!(
            decide(&facts(None, None, false)),
            Refuse(EnrollmentRefusal::UnsolicitedClosed)
        );
        // A pending device asking again keeps waiting even if the tenant closed since.
        assert_eq!(decide(&facts(None, Some(Pending), false)), Wait);
        // Preauthorized and accepted keys get certificates without a token.
        assert_eq!(decide(&facts(None, Some(Preauthorized), false)), issue);
        assert_eq!(decide(&facts(None, Some(Accepted), false)), issue);
        // Retired identities stay retired, whatever token comes with them.
        for t in [None, Some(Ok(()))] {
            assert_eq!(
                decide(&facts(t, Some(Rejected), true)),
                Refuse(EnrollmentRefusal::Rejected)
            );
            assert_eq!(
                decide(&facts(t, Some(Decommissioned), true)),
                Refuse(EnrollmentRefusal::Decommissioned)
            );
        }
    }
}
