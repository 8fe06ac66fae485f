//! How devices prove who they are, as the registry records it: certificates (issued by the
//! server's CA; the core only keeps the facts needed to authenticate and revoke) and, for
//! constrained devices that cannot use a client certificate, a username/password credential
//! (the core only carries the hash the server computed, never the password).

use serde::Serialize;

use crate::{DeviceId, TenantId, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceCertificate {
    /// Hex serial number, unique per CA.
    pub serial: String,
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, hex.
    pub key_fingerprint: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub issued_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl DeviceCertificate {
    /// Whether a connection presenting this certificate may be accepted at `now`.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.not_before <= now && now < self.not_after
    }

    /// When the device should renew: at two thirds of the certificate's lifetime.
    pub fn renew_after(&self) -> Timestamp {
        let life = self.not_after.unix_millis() - self.not_before.unix_millis();
        self.not_before.plus_millis(life / 3 * 2)
    }
}

/// The password credential of a device that cannot present a client certificate. A device has
/// at most one; setting a new one replaces it (rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredential {
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    /// A hash of the password, computed by the server; opaque to the core and the store.
    pub secret_hash: Vec<u8>,
    /// When this credential was set (the last rotation).
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn validity_and_renewal() {
        let c = DeviceCertificate {
            serial: "01".into(),
            tenant_id: TenantId::from_uuid(Uuid::nil()),
            device_id: DeviceId::from_uuid(Uuid::nil()),
            key_fingerprint: "ab".into(),
            not_before: Timestamp::from_unix_millis(0),
            not_after: Timestamp::from_unix_millis(90),
            issued_at: Timestamp::from_unix_millis(0),
            revoked_at: None,
        };
        assert!(c.is_valid_at(Timestamp::from_unix_millis(0)));
        assert!(c.is_valid_at(Timestamp::from_unix_millis(89)));
        assert!(!c.is_valid_at(Timestamp::from_unix_millis(90)));
        assert_eq!(c.renew_after(), Timestamp::from_unix_millis(60));
        let revoked = DeviceCertificate {
            revoked_at: Some(Timestamp::from_unix_millis(1)),
            ..c
        };
        assert!(!revoked.is_valid_at(Timestamp::from_unix_millis(5)));
    }
}
