//! Events: what happened to devices and groups, in the order the server recorded it. Operators
//! query them and follow them live (server-sent events); later features (webhooks, alerts,
//! continuous deployments) consume them.
//!
//! **Invariants:** an event's id is assigned by the store and grows with every event of a
//! server; events are never changed after they are written; `data` is a small JSON object.

use serde_json::{Map, Value};

use crate::{DeviceId, GroupId, TenantId, Timestamp};

/// The kinds of event, as their dotted names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A device record was created (enrollment request, token enrollment, preauthorization).
    DeviceCreated,
    /// A device's lifecycle state changed (`data`: `from`, `to`).
    DeviceStateChanged,
    /// An MQTT connection opened (`data`: `protocol`, `remote_addr`).
    DeviceConnected,
    /// An MQTT connection closed (`data`: `reason`).
    DeviceDisconnected,
    /// The reported inventory changed (`data`: `attributes`, how many).
    InventoryChanged,
    /// The device layer of configuration changed (`data`: `version`).
    TwinDesiredChanged,
    /// The device reported a change (`data`: `version`, `keys` changed at the top level).
    TwinReportedChanged,
    /// A fleet or group configuration layer changed (`data`: `layer`, `version` or `deleted`).
    ConfigChanged,
    /// A device joined a group (static: added; dynamic: started matching).
    GroupJoined,
    /// A device left a group (static: removed; dynamic: stopped matching).
    GroupLeft,
    /// A command's state on a device changed (`data`: `command_id`, `state`).
    CommandStateChanged,
    /// A deployment's own state changed (`data`: `deployment_id`, `state`, `phase`, `reason`).
    DeploymentStateChanged,
    /// A device's update in a deployment moved (`data`: `deployment_id`, `state`, `error`).
    DeploymentDeviceChanged,
    /// An alert opened (`data`: `alert_id`, `rule_id`, `rule_name`, `severity`, `value`,
    /// `reason`).
    AlertFired,
    /// A user acknowledged an alert (`data`: as fired, plus `by`, `note`).
    AlertAcknowledged,
    /// An alert resolved (`data`: as fired, `value` and `reason` of the resolution).
    AlertResolved,
}

impl EventKind {
    pub const ALL: [EventKind; 16] = [
        EventKind::DeviceCreated,
        EventKind::DeviceStateChanged,
        EventKind::DeviceConnected,
        EventKind::DeviceDisconnected,
        EventKind::InventoryChanged,
        EventKind::TwinDesiredChanged,
        EventKind::TwinReportedChanged,
        EventKind::ConfigChanged,
        EventKind::GroupJoined,
        EventKind::GroupLeft,
        EventKind::CommandStateChanged,
        EventKind::DeploymentStateChanged,
        EventKind::DeploymentDeviceChanged,
        EventKind::AlertFired,
        EventKind::AlertAcknowledged,
        EventKind::AlertResolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeviceCreated => "device.created",
            EventKind::DeviceStateChanged => "device.state_changed",
            EventKind::DeviceConnected => "device.connected",
            EventKind::DeviceDisconnected => "device.disconnected",
            EventKind::InventoryChanged => "inventory.changed",
            EventKind::TwinDesiredChanged => "twin.desired_changed",
            EventKind::TwinReportedChanged => "twin.reported_changed",
            EventKind::ConfigChanged => "config.changed",
            EventKind::GroupJoined => "group.joined",
            EventKind::GroupLeft => "group.left",
            EventKind::CommandStateChanged => "command.state_changed",
            EventKind::DeploymentStateChanged => "deployment.state_changed",
            EventKind::DeploymentDeviceChanged => "deployment.device_changed",
            EventKind::AlertFired => "alert.fired",
            EventKind::AlertAcknowledged => "alert.acknowledged",
            EventKind::AlertResolved => "alert.resolved",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event before the store gave it an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub tenant_id: TenantId,
    pub at: Timestamp,
    pub kind: EventKind,
    pub device_id: Option<DeviceId>,
    pub group_id: Option<GroupId>,
    pub data: Map<String, Value>,
}

impl NewEvent {
    /// An event about a device.
    pub fn device(
        tenant_id: TenantId,
        device_id: DeviceId,
        at: Timestamp,
        kind: EventKind,
    ) -> Self {
        NewEvent {
            tenant_id,
            at,
            kind,
            device_id: Some(device_id),
            group_id: None,
            data: Map::new(),
        }
    }

    /// An event about the tenant as a whole (a deployment, ...).
    pub fn tenant(tenant_id: TenantId, at: Timestamp, kind: EventKind) -> Self {
        NewEvent {
            tenant_id,
            at,
            kind,
            device_id: None,
            group_id: None,
            data: Map::new(),
        }
    }

    /// Adds a field to `data`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.data.insert(key.to_owned(), value.into());
        self
    }

    pub fn in_group(mut self, group: GroupId) -> Self {
        self.group_id = Some(group);
        self
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    pub tenant_id: TenantId,
    pub at: Timestamp,
    pub kind: EventKind,
    pub device_id: Option<DeviceId>,
    pub group_id: Option<GroupId>,
    pub data: Map<String, Value>,
}

/// Which events a query or a stream wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only events after this id.
    pub after: Option<u64>,
    pub device: Option<DeviceId>,
    pub group: Option<GroupId>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
}

impl EventFilter {
    /// Whether `e` passes the filter (the store applies the same rules in SQL).
    pub fn matches(&self, e: &Event) -> bool {
        self.after.is_none_or(|a| e.id > a)
            && self.device.is_none_or(|d| e.device_id == Some(d))
            && self.group.is_none_or(|g| e.group_id == Some(g))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
    }
}

/// Parses a comma-separated list of kinds; a name ending in `.*` (or a bare prefix such as
/// `device`) selects every kind under it.
pub fn parse_kinds(text: &str) -> Result<Vec<EventKind>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(k) = EventKind::parse(part) {
            if !out.contains(&k) {
                out.push(k);
            }
            continue;
        }
        let prefix = format!("{}.", part.trim_end_matches(".*"));
        let under: Vec<EventKind> = EventKind::ALL
            .into_iter()
            .filter(|k| k.as_str().starts_with(&prefix))
            .collect();
        if under.is_empty() {
            return Err(format!(
                "unknown event kind {part:?}; known: {}",
                EventKind::ALL.map(|k| k.as_str()).join(", ")
            ));
        }
        for k in under {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_parse_by_prefix() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(
            parse_kinds("device.*, group.joined").unwrap(),
            vec![
                EventKind::DeviceCreated,
                EventKind::DeviceStateChanged,
                EventKind::DeviceConnected,
                EventKind::DeviceDisconnected,
                EventKind::GroupJoined
            ]
        );
        assert_eq!(
            parse_kinds("twin").unwrap(),
            vec![
                EventKind::TwinDesiredChanged,
                EventKind::TwinReportedChanged
            ]
        );
        assert!(
            parse_kinds("nope")
                .unwrap_err()
                .contains("known: device.created")
        );
        assert_eq!(parse_kinds("").unwrap(), vec![]);
    }

    #[test]
    fn filters_select_by_cursor_device_group_and_kind() {
        let t = TenantId::from_uuid(uuid::Uuid::from_u128(1));
        let d = DeviceId::from_uuid(uuid::Uuid::from_u128(2));
        let g = GroupId::from_uuid(uuid::Uuid::from_u128(3));
        let e = Event {
            id: 10,
            tenant_id: t,
            at: Timestamp::from_unix_millis(0),
            kind: EventKind::GroupJoined,
            device_id: Some(d),
            group_id: Some(g),
            data: Map::new(),
        };
        assert!(EventFilter::default().matches(&e));
        assert!(
            EventFilter {
                after: Some(9),
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            !EventFilter {
                after: Some(10),
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            EventFilter {
                device: Some(d),
                group: Some(g),
                kinds: vec![EventKind::GroupJoined],
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            !EventFilter {
                kinds: vec![EventKind::GroupLeft],
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            !EventFilter {
                device: Some(DeviceId::from_uuid(uuid::Uuid::from_u128(9))),
                ..Default::default()
            }
            .matches(&e)
        );
    }
}
