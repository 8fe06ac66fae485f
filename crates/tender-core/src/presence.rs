//! Presence: the history of a device's connections to the gateways, and from it whether the
//! device is online now.
//!
//! A [`DeviceConnection`] is opened when a device authenticates on a long-lived transport and
//! closed when that connection ends. A device is online while at least one of its connections
//! is open. The core only records the facts; the gateways report them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{ConnectionId, DeviceId, TenantId, Timestamp};

/// How a device is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The MQTT gateway.
    Mqtt,
    /// The HTTPS device API.
    Https,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Mqtt, Transport::Https];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Https => "https",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = UnknownTransport;
    fn from_str(s: &str) -> Result<Self, UnknownTransport> {
        Transport::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTransport(s.chars().take(40).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}: expected mqtt or https")]
pub struct UnknownTransport(pub String);

/// One connection of a device, open from `connected_at` until `disconnected_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceConnection {
    pub id: ConnectionId,
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    pub transport: Transport,
    /// The protocol and version spoken, e.g. `mqtt/5`, `mqtt/3.1.1`.
    pub protocol: String,
    /// The peer's address as the gateway saw it (`ip:port`).
    pub remote_addr: String,
    /// The client identifier the device gave (MQTT client id), if any.
    pub client_id: Option<String>,
    pub connected_at: Timestamp,
    /// `None` while the connection is open.
    pub disconnected_at: Option<Timestamp>,
    /// Why the connection ended (e.g. `client disconnect`, `keep-alive timeout`,
    /// `server restart`), once it has.
    pub disconnect_reason: Option<String>,
}

impl DeviceConnection {
    /// Whether the connection has not been closed yet.
    pub fn is_open(&self) -> bool {
        self.disconnected_at.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn transports_round_trip_through_their_names() {
        for t in Transport::ALL {
            assert_eq!(t.as_str().parse::<Transport>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!("mqtt".parse(), Ok(Transport::Mqtt));
        assert_eq!("https".parse(), Ok(Transport::Https));
        assert_eq!(
            "MQTT".parse::<Transport>(),
            Err(UnknownTransport("MQTT".into()))
        );
        assert!("".parse::<Transport>().is_err());
    }

    #[test]
    fn a_connection_is_open_until_it_is_closed() {
        let c = DeviceConnection {
            id: ConnectionId::from_uuid(Uuid::nil()),
            tenant_id: TenantId::from_uuid(Uuid::nil()),
            device_id: DeviceId::from_uuid(Uuid::nil()),
            transport: Transport::Mqtt,
            protocol: "mqtt/5".into(),
            remote_addr: "192.0.2.7:50123".into(),
            client_id: Some("gw-1".into()),
            connected_at: Timestamp::from_unix_millis(10),
            disconnected_at: None,
            disconnect_reason: None,
        };
        assert!(c.is_open());
        let closed = DeviceConnection {
            disconnected_at: Some(Timestamp::from_unix_millis(20)),
            disconnect_reason: Some("client disconnect".into()),
            ..c
        };
        assert!(!closed.is_open());
    }
}
