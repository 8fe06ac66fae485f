//! The device topic scheme and the per-device access rules the gateway enforces.
//!
//! Every device topic lives under `tender/v1/{device_id}/`. A device may publish only to its
//! own uplink topics and subscribe only to filters inside its own prefix; nothing is ever routed
//! from one device to another, so a device that could subscribe to another's topics would still
//! see nothing, but the gateway refuses it anyway (and counts it).
//!
//! Uplink (device → Tender):
//! - `telemetry`                          time-series samples
//! - `inventory`                          the device's attributes (full replace)
//! - `state/reported`                     reported twin state
//! - `events`                             device events
//! - `commands/{command_id}/result`       the outcome of a command
//! - `updates/{deployment_id}/status`     update progress
//! - `logs/{request_id}/status`           a log request's progress or error
//! - `logs/{request_id}/lines`            followed log lines
//!
//! Downlink (Tender → device):
//! - `state/desired`, `commands/{command_id}`, `updates/{deployment_id}`, `logs/{request_id}`

use tender_core::DeviceId;

/// The versioned prefix of every device topic.
pub const PREFIX: &str = "tender/v1";

/// What an uplink topic carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uplink {
    Telemetry,
    Inventory,
    Reported,
    Event,
    CommandResult { command_id: String },
    UpdateStatus { deployment_id: String },
    LogStatus { request_id: String },
    LogLines { request_id: String },
}

impl Uplink {
    pub fn kind(&self) -> &'static str {
        match self {
            Uplink::Telemetry => "telemetry",
            Uplink::Inventory => "inventory",
            Uplink::Reported => "reported",
            Uplink::Event => "event",
            Uplink::CommandResult { .. } => "command_result",
            Uplink::UpdateStatus { .. } => "update_status",
            Uplink::LogStatus { .. } => "log_status",
            Uplink::LogLines { .. } => "log_lines",
        }
    }
}

/// Why a topic was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Not a valid MQTT topic name/filter: empty, wildcards misplaced or in a name, NUL.
    Invalid,
    /// Valid, but not this device's to use.
    NotAuthorized,
    /// `$share/...`: shared subscriptions make no sense for one device.
    SharedNotSupported,
}

/// The topic prefix of one device: `tender/v1/{id}/`.
pub fn device_prefix(device: DeviceId) -> String {
    format!("{PREFIX}/{device}/")
}

/// A downlink topic for `device`: `tender/v1/{id}/{suffix}`.
pub fn downlink(device: DeviceId, suffix: &str) -> String {
    format!("{PREFIX}/{device}/{suffix}")
}

/// Is `name` a valid topic name for PUBLISH (MQTT 4.7)?
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#', '\0'])
}

/// Is `filter` a valid topic filter for SUBSCRIBE (MQTT 4.7.1)?
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| {
        if level.contains('#') {
            *level == "#" && i == last
        } else if level.contains('+') {
            *level == "+"
        } else {
            true
        }
    })
}

/// Checks a PUBLISH from `device` and says what it carries.
pub fn classify_publish(device: DeviceId, topic: &str) -> Result<Uplink, TopicError> {
    if !valid_name(topic) {
        return Err(TopicError::Invalid);
    }
    let prefix = device_prefix(device);
    let Some(rest) = topic.strip_prefix(prefix.as_str()) else {
        return Err(TopicError::NotAuthorized);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["telemetry"] => Ok(Uplink::Telemetry),
        ["inventory"] => Ok(Uplink::Inventory),
        ["state", "reported"] => Ok(Uplink::Reported),
        ["events"] => Ok(Uplink::Event),
        ["commands", id, "result"] if valid_id(id) => Ok(Uplink::CommandResult {
            command_id: (*id).to_owned(),
        }),
        ["updates", id, "status"] if valid_id(id) => Ok(Uplink::UpdateStatus {
            deployment_id: (*id).to_owned(),
        }),
        ["logs", id, "status"] if valid_id(id) => Ok(Uplink::LogStatus {
            request_id: (*id).to_owned(),
        }),
        ["logs", id, "lines"] if valid_id(id) => Ok(Uplink::LogLines {
            request_id: (*id).to_owned(),
        }),
        _ => Err(TopicError::NotAuthorized),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a SUBSCRIBE filter from `device`: it must lie inside the device's own prefix (the
/// first three levels literal).
pub fn check_subscription(device: DeviceId, filter: &str) -> Result<(), TopicError> {
    if filter.starts_with("$share/") {
        return Err(TopicError::SharedNotSupported);
    }
    if !valid_filter(filter) {
        return Err(TopicError::Invalid);
    }
    let prefix = device_prefix(device);
    match filter.strip_prefix(prefix.as_str()) {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(TopicError::NotAuthorized),
    }
}

/// Does `topic` match `filter` (both already valid)?
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        DeviceId::from_uuid(uuid::Uuid::new_v4())
    }

    #[test]
    fn a_device_publishes_only_to_its_own_uplink_topics() {
        let d = dev();
        let own = |s: &str| format!("tender/v1/{d}/{s}");
        assert_eq!(
            classify_publish(d, &own("telemetry")),
            Ok(Uplink::Telemetry)
        );
        assert_eq!(
            classify_publish(d, &own("state/reported")),
            Ok(Uplink::Reported)
        );
        assert_eq!(classify_publish(d, &own("events")), Ok(Uplink::Event));
        assert_eq!(
            classify_publish(d, &own("inventory")),
            Ok(Uplink::Inventory)
        );
        assert_eq!(
            classify_publish(d, &own("commands/c-1/result")),
            Ok(Uplink::CommandResult {
                command_id: "c-1".into()
            })
        );
        assert_eq!(
            classify_publish(d, &own("updates/d_2/status")),
            Ok(Uplink::UpdateStatus {
                deployment_id: "d_2".into()
            })
        );
        // downlink topics, unknown kinds, odd ids
        for t in [
            "state/desired",
            "commands/c-1",
            "telemetry/x",
            "commands/../result",
            "commands//result",
            "",
        ] {
            assert_eq!(
                classify_publish(d, &own(t)),
                Err(TopicError::NotAuthorized),
                "{t}"
            );
        }
        let other = dev();
        assert_eq!(
            classify_publish(d, &format!("tender/v1/{other}/telemetry")),
            Err(TopicError::NotAuthorized)
        );
        assert_eq!(
            classify_publish(d, "$SYS/broker/load"),
            Err(TopicError::NotAuthorized)
        );
    }

    #[test]
    fn wildcards_and_empty_names_are_invalid_in_publish() {
        let d = dev();
        for t in [
            String::new(),
            format!("tender/v1/{d}/+"),
            format!("tender/v1/{d}/#"),
            format!("tender/v1/{d}/tele\0metry"),
            "#".into(),
        ] {
            assert_eq!(classify_publish(d, &t), Err(TopicError::Invalid), "{t:?}");
        }
    }

    #[test]
    fn subscriptions_stay_inside_the_device_prefix() {
        let d = dev();
        for f in [
            format!("tender/v1/{d}/#"),
            format!("tender/v1/{d}/commands/+"),
            format!("tender/v1/{d}/state/desired"),
        ] {
            assert_eq!(check_subscription(d, &f), Ok(()), "{f}");
        }
        let other = dev();
        for f in [
            "#".to_owned(),
            "tender/#".into(),
            "tender/v1/+/commands".into(),
            "+/v1/#".into(),
            format!("tender/v1/{other}/#"),
            format!("tender/v1/{d}"),
            format!("tender/v1/{d}/"),
            "$SYS/#".into(),
        ] {
            assert_ne!(check_subscription(d, &f), Ok(()), "{f}");
        }
        assert_eq!(
            check_subscription(d, &format!("$share/g/tender/v1/{d}/#")),
            Err(TopicError::SharedNotSupported)
        );
        assert_eq!(
            check_subscription(d, &format!("tender/v1/{d}/a#")),
            Err(TopicError::Invalid)
        );
        assert_eq!(
            check_subscription(d, &format!("tender/v1/{d}/#/x")),
            Err(TopicError::Invalid)
        );
        assert_eq!(
            check_subscription(d, &format!("tender/v1/{d}/a+")),
            Err(TopicError::Invalid)
        );
    }

    #[test]
    fn filters_match_topics() {
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }
}
