//! Identifiers. All are UUIDs (v7 when minted by Tender, so they sort by creation time), each
//! wrapped in its own type so that a device id can never be passed where a tenant id belongs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(u: Uuid) -> Self {
                $name(u)
            }
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Uuid::try_parse(s).map($name).map_err(|_| InvalidId { what: $what })
            }
        }
    };
}

id_type!(
    /// A tenant (organisation). Every stored record belongs to exactly one.
    TenantId,
    "tenant id"
);
id_type!(
    /// A device, unique across all tenants.
    DeviceId,
    "device id"
);
id_type!(
    /// An operator account.
    UserId,
    "user id"
);
id_type!(
    /// An API token (its public part; the secret is never stored).
    TokenId,
    "token id"
);
id_type!(
    /// One connection of a device to a gateway (MQTT session or HTTPS client), from connect to
    /// disconnect. Minted when the connection opens, so newer connections sort later.
    ConnectionId,
    "connection id"
);
id_type!(
    /// A device group (static or dynamic).
    GroupId,
    "group id"
);
id_type!(
    /// A command sent to one or more devices.
    CommandId,
    "command id"
);
id_type!(
    /// An uploaded software artifact.
    ArtifactId,
    "artifact id"
);
id_type!(
    /// A deployment of an artifact to devices.
    DeploymentId,
    "deployment id"
);
id_type!(
    /// An operator's HTTP endpoint that receives the server's events.
    WebhookId,
    "webhook id"
);
id_type!(
    /// One event (or test ping) on its way to one webhook.
    DeliveryId,
    "delivery id"
);
id_type!(
    /// An operator's alert rule.
    AlertRuleId,
    "alert rule id"
);
id_type!(
    /// One alert (a rule firing on a device, until it resolves).
    AlertId,
    "alert id"
);

id_type!(
    /// An operator's request for one device's logs.
    LogRequestId,
    "log request id"
);

/// A string that is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {what}: expected a UUID such as 0192f1c4-7b5e-7a1e-9c1d-2f8e4b6a0c3d")]
pub struct InvalidId {
    pub what: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let s = "0192f1c4-7b5e-7a1e-9c1d-2f8e4b6a0c3d";
        let id: DeviceId = s.parse().unwrap();
        assert_eq!(id.to_string(), s);
    }

    #[test]
    fn garbage_is_rejected_with_the_kind_named() {
        let err = "nope".parse::<TenantId>().err();
        assert_eq!(err.map(|e| e.what), Some("tenant id"));
        let err = "nope".parse::<ConnectionId>().err();
        assert_eq!(err.map(|e| e.what), Some("connection id"));
    }
}
