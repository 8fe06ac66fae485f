//! Tender's pure domain core.
//!
//! Everything here is deterministic: no IO, no async runtime, no reading of the system clock
//! (time arrives through [`Clock`]), no randomness (identifiers are made at the edges and passed
//! in). The server, the store adapters and the agent all speak this vocabulary.
#![forbid(unsafe_code)]

pub mod alert;
pub mod artifact;
pub mod auth;
pub mod certificate;
pub mod clock;
pub mod command;
pub mod config;
pub mod deployment;
pub mod device;
pub mod enrollment;
pub mod event;
pub mod group;
pub mod ids;
pub mod inventory;
pub mod logs;
pub mod page;
pub mod presence;
pub mod query;
pub mod series;
pub mod telemetry;
pub mod tenant;
pub mod twin;
pub mod user;
pub mod webhook;
pub mod window;

pub use clock::{Clock, ManualClock, Timestamp};
pub use ids::LogRequestId;
pub use ids::{AlertId, AlertRuleId};
pub use ids::{ArtifactId, CommandId, DeploymentId};
pub use ids::{ConnectionId, DeviceId, GroupId, TenantId, TokenId, UserId};
pub use ids::{DeliveryId, WebhookId};
