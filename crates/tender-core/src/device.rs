//! Devices and their lifecycle.
//!
//! ```text
//!   Pending ──accept──▶ Accepted ◀──first connection── Preauthorized
//!      │                   ▲
//!    reject              accept
//!      ▼                   │
//!   Rejected ──────────────┘
//!
//!   any state but Decommissioned ──decommission──▶ Decommissioned (terminal)
//! ```
//!
//! Invariant: `Decommissioned` is terminal: a decommissioned device keeps its history but can
//! never authenticate or change state again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DeviceId, TenantId, Timestamp};

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Asked to join without a token; waits for an operator's decision.
    Pending,
    /// Registered in advance by an operator; becomes `Accepted` when it first connects.
    Preauthorized,
    /// A trusted member of the fleet.
    Accepted,
    /// Refused by an operator; may still be accepted later.
    Rejected,
    /// Retired for good: history kept, authentication impossible.
    Decommissioned,
}

impl DeviceState {
    pub const ALL: [DeviceState; 5] = [
        DeviceState::Pending,
        DeviceState::Preauthorized,
        DeviceState::Accepted,
        DeviceState::Rejected,
        DeviceState::Decommissioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Preauthorized => "preauthorized",
            DeviceState::Accepted => "accepted",
            DeviceState::Rejected => "rejected",
            DeviceState::Decommissioned => "decommissioned",
        }
    }

    /// May a device in this state move to `to`?
    pub fn can_become(self, to: DeviceState) -> bool {
        use DeviceState::*;
        matches!(
            (self, to),
            (Pending, Accepted)
                | (Pending, Rejected)
                | (Rejected, Accepted)
                | (Preauthorized, Accepted)
                | (
                    Pending | Preauthorized | Accepted | Rejected,
                    Decommissioned
                )
        )
    }

    /// Checks a transition, naming both ends when it is not allowed.
    pub fn transition(self, to: DeviceState) -> Result<DeviceState, LifecycleError> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(LifecycleError { from: self, to })
        }
    }

    /// Whether a device in this state may authenticate to the device gateway.
    pub fn may_connect(self) -> bool {
        matches!(self, DeviceState::Accepted | DeviceState::Preauthorized)
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        DeviceState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.chars().take(40).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown device state {0:?}: expected one of pending, preauthorized, accepted, rejected, decommissioned"
)]
pub struct UnknownState(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a device cannot go from {from} to {to}")]
pub struct LifecycleError {
    pub from: DeviceState,
    pub to: DeviceState,
}

/// Longest device name accepted.
pub const MAX_DEVICE_NAME_LEN: usize = 128;

/// Checks an operator- or device-supplied device name: 1–128 printable characters, no control
/// characters, no leading or trailing whitespace.
pub fn validate_device_name(name: &str) -> Result<(), InvalidDeviceName> {
    let len = name.chars().count();
    if len == 0 || len > MAX_DEVICE_NAME_LEN {
        return Err(InvalidDeviceName::Length(len));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidDeviceName::Control);
    }
    if name.trim() != name {
        return Err(InvalidDeviceName::Whitespace);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDeviceName {
    #[error("a device name must have 1 to {MAX_DEVICE_NAME_LEN} characters, this one has {0}")]
    Length(usize),
    #[error("a device name must not contain control characters")]
    Control,
    #[error("a device name must not start or end with whitespace")]
    Whitespace,
}

/// A device as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: DeviceId,
    pub tenant_id: TenantId,
    pub name: String,
    /// What kind of hardware/software this is (e.g. `rpi4-kiosk`); used for update compatibility.
    pub device_type: Option<String>,
    pub state: DeviceState,
    /// SHA-256 (hex) of the device's public key, once known (enrollment or preauthorization).
    pub key_fingerprint: Option<String>,
    /// When the device was last heard from (an authenticated request or connection).
    pub last_seen_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub state_changed_at: Timestamp,
}

impl Device {
    /// The same device, identified by the public key with this fingerprint.
    pub fn with_key_fingerprint(mut self, fingerprint: String) -> Self {
        self.key_fingerprint = Some(fingerprint);
        self
    }

    /// A new device record in `state`, created at `now`.
    pub fn new(
        id: DeviceId,
        tenant_id: TenantId,
        name: String,
        device_type: Option<String>,
        state: DeviceState,
        now: Timestamp,
    ) -> Result<Device, InvalidDeviceName> {
        validate_device_name(&name)?;
        Ok(Device {
            id,
            tenant_id,
            name,
            device_type,
            state,
            key_fingerprint: None,
            last_seen_at: None,
            created_at: now,
            updated_at: now,
            state_changed_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    #[test]
    fn allowed_transitions() {
        let allowed = [
            (Pending, Accepted),
            (Pending, Rejected),
            (Rejected, Accepted),
            (Preauthorized, Accepted),
            (Pending, Decommissioned),
            (Preauthorized, Decommissioned),
            (Accepted, Decommissioned),
            (Rejected, Decommissioned),
        ];
        for from in DeviceState::ALL {
            for to in DeviceState::ALL {
                let expect = allowed.contains(&(from, to));
                assert_eq!(from.can_become(to), expect, "{from} -> {to}");
                assert_eq!(from.transition(to).is_ok(), expect, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn decommissioned_is_terminal() {
        for to in DeviceState::ALL {
            assert!(!Decommissioned.can_become(to));
        }
        assert!(!Decommissioned.may_connect());
    }

    #[test]
    fn only_accepted_and_preauthorized_connect() {
        let connect: Vec<_> = DeviceState::ALL
            .into_iter()
            .filter(|s| s.may_connect())
            .collect();
        assert_eq!(connect, vec![Preauthorized, Accepted]);
    }

    #[test]
    fn state_names_round_trip() {
        for s in DeviceState::ALL {
            assert_eq!(s.as_str().parse::<DeviceState>(), Ok(s));
        }
        assert!("Accepted".parse::<DeviceState>().is_err());
    }

    #[test]
    fn names() {
        assert!(validate_device_name("kiosk-001").is_ok());
        assert!(validate_device_name("Lobby kiosk (north)").is_ok());
        assert_eq!(validate_device_name(""), Err(InvalidDeviceName::Length(0)));
        assert!(validate_device_name(&"x".repeat(129)).is_err());
        assert_eq!(
            validate_device_name("a\nb"),
            Err(InvalidDeviceName::Control)
        );
        assert_eq!(
            validate_device_name(" a"),
            Err(InvalidDeviceName::Whitespace)
        );
    }
}

/// Operator metadata about a device (devices never see it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceMetadata {
    /// Who is responsible for the device: 1–128 characters, no control characters.
    pub owner: Option<String>,
    /// Free-form notes: up to 4096 bytes; newlines and tabs allowed, other control characters
    /// not.
    pub notes: Option<String>,
    pub updated_at: Option<crate::Timestamp>,
}

/// Longest notes, in bytes.
pub const MAX_NOTES_BYTES: usize = 4096;

/// Checks an owner value.
pub fn validate_owner(owner: &str) -> Result<(), String> {
    let n = owner.chars().count();
    if n == 0 || n > 128 {
        return Err("owner must be 1 to 128 characters".into());
    }
    if owner.chars().any(char::is_control) {
        return Err("owner must not contain control characters".into());
    }
    Ok(())
}

/// Checks notes.
pub fn validate_notes(notes: &str) -> Result<(), String> {
    if notes.len() > MAX_NOTES_BYTES {
        return Err(format!(
            "notes are {} bytes; at most {MAX_NOTES_BYTES}",
            notes.len()
        ));
    }
    if notes
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(
            "notes must not contain control characters other than newlines and tabs".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn owners_and_notes_are_checked() {
        assert!(validate_owner("ops team").is_ok());
        assert!(validate_owner("").is_err());
        assert!(validate_owner(&"x".repeat(129)).is_err());
        assert!(validate_owner("a\u{7}b").is_err());
        assert!(validate_notes("line 1\nline 2\tok").is_ok());
        assert!(validate_notes("bell\u{7}").is_err());
        assert!(validate_notes(&"x".repeat(4097)).is_err());
        assert!(validate_notes("").is_ok());
    }
}
