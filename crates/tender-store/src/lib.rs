//! Tender's storage port and its adapters.
//!
//! [`Store`] is the one trait the rest of Tender persists through, in the core's vocabulary.
//! Two adapters implement it: [`sqlite::SqliteStore`] (embedded default) and
//! [`postgres::PgStore`]. Both run the same SQL where the dialects agree (see `sql.rs`), their own
//! versioned migrations (`migrations/<backend>/`), and the same conformance suite
//! ([`conformance`], behind the `conformance` feature).
//!
//! Invariants every adapter keeps:
//! - Every record belongs to a tenant and every call that reads or writes tenant data is scoped
//!   by a [`TenantId`] (a parameter, or the tenant id of the record being inserted). The only
//!   unscoped calls are the lookups made before the caller's tenant is known:
//!   [`Store::api_token_for_authentication`], [`IdentityStore::enrollment_token_for_authentication`],
//!   [`IdentityStore::certificate_for_authentication`],
//!   [`IdentityStore::device_credential_for_authentication`], and the tenant lookups themselves;
//!   and one write, [`PresenceStore::close_open_connections`], the crash recovery a single server
//!   runs when it starts (no connection it recorded before can still be open).
//! - A listing never silently caps: it returns a page and the key of the next one.
//! - Device lifecycle changes are compare-and-set on the current state; the rules for which
//!   transitions are allowed live in the core ([`tender_core::device::DeviceState`]).
//! - A connection, a certificate, a credential or a telemetry sample can only be recorded for a
//!   device that exists in the same tenant. A connection is closed at most once: closing it again
//!   keeps the first close.
//! - The samples of one [`TelemetryStore::insert_samples`] call are written together or not at
//!   all, and a sample for a (device, metric, time) that has one replaces its value.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use tender_core::certificate::{DeviceCertificate, DeviceCredential};
use tender_core::config::StoredLayer;
use tender_core::device::DeviceMetadata;
use tender_core::device::{Device, DeviceState};
use tender_core::enrollment::EnrollmentToken;
use tender_core::event::{Event, EventFilter, NewEvent};
use tender_core::group::Group;
use tender_core::inventory::{AttributeName, DeviceInventory, Inventory};
use tender_core::page::{Page, PageLimit, PageRequest};
use tender_core::presence::DeviceConnection;
use tender_core::telemetry::{MetricName, Sample};
use tender_core::tenant::{Tenant, TenantSlug};
use tender_core::twin::{Document, Twin};
use tender_core::user::{ApiToken, User};
use tender_core::{ConnectionId, DeviceId, GroupId, TenantId, Timestamp, TokenId, UserId};

mod adapter;
mod adapter_events;
mod adapter_twin;
mod alerts;
mod artifacts;
mod commands;
#[cfg(feature = "conformance")]
pub mod conformance;
mod deployments;
pub mod filter;
mod logs;
pub mod postgres;
mod rows;
mod sql;
pub mod sqlite;

pub use alerts::AlertFilter;
mod telemetry_batch;

pub use telemetry_batch::DeviceSamples;

/// How far a [`TelemetryStore::prune_samples`] pass got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneProgress {
    pub deleted: u64,
    /// The last device visited, to go on from; `None` when none is left.
    pub next: Option<(TenantId, DeviceId)>,
}
mod webhooks;
pub use webhooks::{WebhookStore, redeliver};

/// Which adapter a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// What went wrong in the store, in terms a caller can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time: retry later, report not ready.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule or a compare-and-set precondition failed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The record named does not exist (in this tenant).
    #[error("not found: {0}")]
    NotFound(String),
    /// A stored value could not be read back into the domain (a bug or a manual edit).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Anything else the database said.
    #[error("database error: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which devices a listing or count covers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceFilter {
    /// Only devices in this state.
    pub state: Option<DeviceState>,
    /// Only devices matching this (a device query, compiled by the server).
    pub matching: Option<filter::Filter>,
}

/// The storage port.
#[async_trait]
pub trait Store:
    IdentityStore
    + PresenceStore
    + TelemetryStore
    + InventoryStore
    + GroupStore
    + TwinStore
    + MetadataStore
    + EventStore
    + CommandStore
    + ArtifactCatalog
    + DeploymentStore
    + WebhookStore
    + AlertStore
    + LogStore
    + Send
    + Sync
    + 'static
{
    fn backend(&self) -> Backend;

    /// Succeeds when the database answers a trivial query.
    async fn ping(&self) -> Result<()>;

    // --- tenants (system scope) ---

    /// Conflict when the id or the slug is taken.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>>;
    async fn tenant_by_slug(&self, slug: &TenantSlug) -> Result<Option<Tenant>>;
    /// Opens or closes a tenant to devices that enroll without a token.
    async fn set_enrollment_open(&self, tenant: TenantId, open: bool) -> Result<()>;

    // --- users ---

    /// Inserts into `user.tenant_id`. Conflict when the username is taken in that tenant.
    async fn create_user(&self, user: &User) -> Result<()>;
    async fn user(&self, tenant: TenantId, id: UserId) -> Result<Option<User>>;
    async fn user_by_name(&self, tenant: TenantId, username: &str) -> Result<Option<User>>;
    async fn count_users(&self, tenant: TenantId) -> Result<u64>;

    // --- API tokens ---

    /// Inserts into `token.tenant_id`; the user must exist in that tenant.
    async fn create_api_token(&self, token: &ApiToken) -> Result<()>;
    /// Looks a token up by id before the caller's tenant is known. The caller must check the
    /// secret hash and [`ApiToken::is_usable`] before trusting it.
    async fn api_token_for_authentication(&self, id: TokenId) -> Result<Option<ApiToken>>;
    async fn record_token_use(&self, tenant: TenantId, id: TokenId, at: Timestamp) -> Result<()>;
    /// Revokes an unrevoked token; NotFound when there is no such usable token in the tenant.
    async fn revoke_api_token(&self, tenant: TenantId, id: TokenId, at: Timestamp) -> Result<()>;

    // --- devices ---

    /// Inserts into `device.tenant_id`. Conflict when the id is taken (in any tenant).
    async fn insert_device(&self, device: &Device) -> Result<()>;
    async fn device(&self, tenant: TenantId, id: DeviceId) -> Result<Option<Device>>;
    /// Devices in id order (creation order for v7 ids), after `page.after`.
    async fn list_devices(
        &self,
        tenant: TenantId,
        filter: &DeviceFilter,
        page: &PageRequest<DeviceId>,
    ) -> Result<Page<Device, DeviceId>>;
    async fn count_devices(&self, tenant: TenantId, filter: &DeviceFilter) -> Result<u64>;
    /// Records that the device was heard from at `at`; never moves last-seen backwards. A device
    /// that does not exist in the tenant is not an error (nothing to record).
    async fn record_device_seen(&self, tenant: TenantId, id: DeviceId, at: Timestamp)
    -> Result<()>;
    /// The device identified by the public key with this fingerprint, in this tenant.
    async fn device_by_key(&self, tenant: TenantId, fingerprint: &str) -> Result<Option<Device>>;
    /// Moves a device from `from` to `to` if it is still in `from` (compare-and-set). NotFound
    /// when there is no such device in the tenant, Conflict when its state is no longer `from`.
    /// Does not judge whether the transition is allowed: callers ask the core first
    /// ([`transition_device`] does both).
    async fn set_device_state(
        &self,
        tenant: TenantId,
        id: DeviceId,
        from: DeviceState,
        to: DeviceState,
        at: Timestamp,
    ) -> Result<Device>;
}

/// The device-identity part of the port: enrollment tokens, issued certificates and password
/// credentials.
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Inserts into `token.tenant_id`.
    async fn create_enrollment_token(&self, token: &EnrollmentToken) -> Result<()>;
    /// Looks a token up by id before the caller's tenant is known (a device presenting it).
    async fn enrollment_token_for_authentication(
        &self,
        id: TokenId,
    ) -> Result<Option<EnrollmentToken>>;
    async fn list_enrollment_tokens(
        &self,
        tenant: TenantId,
        page: &PageRequest<TokenId>,
    ) -> Result<Page<EnrollmentToken, TokenId>>;
    /// NotFound when there is no unrevoked token with this id in the tenant.
    async fn revoke_enrollment_token(
        &self,
        tenant: TenantId,
        id: TokenId,
        at: Timestamp,
    ) -> Result<()>;
    /// Takes one use of the token if it is still usable at `now` (not revoked, not expired,
    /// uses left), atomically: two devices racing for the last use cannot both get it.
    /// Conflict when the token is no longer usable; NotFound when it does not exist.
    async fn consume_enrollment_token(
        &self,
        tenant: TenantId,
        id: TokenId,
        now: Timestamp,
    ) -> Result<EnrollmentToken>;

    /// Records an issued certificate; the device must exist in `cert.tenant_id`.
    async fn insert_certificate(&self, cert: &DeviceCertificate) -> Result<()>;
    /// Looks a certificate up by serial before the device's tenant is known (a connection).
    async fn certificate_for_authentication(
        &self,
        serial: &str,
    ) -> Result<Option<DeviceCertificate>>;
    /// A device's certificates, oldest first.
    async fn device_certificates(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> Result<Vec<DeviceCertificate>>;
    /// Revokes every unrevoked certificate of the device; returns how many.
    async fn revoke_device_certificates(
        &self,
        tenant: TenantId,
        device: DeviceId,
        at: Timestamp,
    ) -> Result<u64>;

    /// Sets the device's password credential, replacing the one it had (rotation). NotFound
    /// when the device does not exist in `credential.tenant_id`.
    async fn set_device_credential(&self, credential: &DeviceCredential) -> Result<()>;
    /// Looks a device's credential up before the device's tenant is known (a device logging in
    /// with username and password). The caller must check the secret hash, and that the device
    /// may connect, before trusting it.
    async fn device_credential_for_authentication(
        &self,
        device: DeviceId,
    ) -> Result<Option<DeviceCredential>>;
    /// Removes the device's credential; true when it had one (in this tenant).
    async fn delete_device_credential(&self, tenant: TenantId, device: DeviceId) -> Result<bool>;
}

/// The presence part of the port: the history of device connections, and who is online.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Records a new connection. NotFound when the device does not exist in
    /// `connection.tenant_id`; Conflict when the id is taken.
    async fn open_connection(&self, connection: &DeviceConnection) -> Result<()>;
    /// Closes a connection at `at` for `reason` if it is still open. Closing a closed connection
    /// is not an error and keeps the first close; NotFound when there is no such connection in
    /// the tenant.
    async fn close_connection(
        &self,
        tenant: TenantId,
        id: ConnectionId,
        at: Timestamp,
        reason: &str,
    ) -> Result<()>;
    /// Closes every open connection of every tenant; returns how many. Unscoped on purpose: the
    /// crash recovery a single server runs when it starts, before it accepts connections (with
    /// several servers on one database it would close the others' live connections).
    async fn close_open_connections(&self, at: Timestamp, reason: &str) -> Result<u64>;
    /// A device's connections, newest first (id descending); `page.after` means strictly older
    /// than that connection.
    async fn device_connections(
        &self,
        tenant: TenantId,
        device: DeviceId,
        page: &PageRequest<ConnectionId>,
    ) -> Result<Page<DeviceConnection, ConnectionId>>;
    /// Which of `ids` have at least one open connection in this tenant (devices of other
    /// tenants never appear). Any number of ids; none costs no query.
    async fn online_devices(&self, tenant: TenantId, ids: &[DeviceId])
    -> Result<HashSet<DeviceId>>;
}

/// The telemetry part of the port: numeric samples per device and metric, keyed by time.
#[async_trait]
pub trait TelemetryStore: Send + Sync + 'static {
    /// Writes the samples of one device, all or none (one transaction). A sample for a
    /// (device, metric, at) that is already stored replaces its value, so a message delivered
    /// twice is stored once; within `samples`, the last one for a key wins. Returns how many
    /// samples were written (inserted or replaced), counting each key once. NotFound when the
    /// device does not exist in the tenant, also for an empty `samples`; nothing is written then.
    /// Values must be finite (the core's payload parser only makes finite ones); a NaN or an
    /// infinity is refused as Internal, and nothing is written.
    async fn insert_samples(
        &self,
        tenant: TenantId,
        device: DeviceId,
        samples: &[Sample],
    ) -> Result<u64>;
    /// Writes the samples of many devices (one entry per device message) in one transaction,
    /// all or none: what the server's telemetry writer commits per batch. Keys repeat as in
    /// [`insert_samples`](Self::insert_samples) (the last value given for a (device, metric,
    /// at) wins, also across entries); returns how many samples were written. NotFound when a
    /// device with samples does not exist in its tenant, and nothing is written then: the
    /// caller may write the entries one by one to find which. Entries without samples are
    /// not checked.
    async fn insert_sample_batches(&self, batches: &[DeviceSamples]) -> Result<u64>;
    /// The device's samples of `metric` with `from <= at < to`, oldest first, at most `limit`.
    /// Like every listing it never caps silently: `next` is the time of the last sample
    /// returned when more follow (ask again from one millisecond after it), `None` otherwise.
    /// Samples of a device of another tenant are never returned.
    async fn query_samples(
        &self,
        tenant: TenantId,
        device: DeviceId,
        metric: &MetricName,
        from: Timestamp,
        to: Timestamp,
        limit: PageLimit,
    ) -> Result<Page<Sample, Timestamp>>;
    /// The aggregates of `metric` over `devices` (of `tenant`; others contribute nothing) with
    /// `from <= at < to`, in buckets of `step_ms` starting at `from`, oldest first; a bucket
    /// without samples is absent. The caller checks the request first
    /// ([`tender_core::series::check`]); any number of devices may be given (they are read in
    /// chunks and the buckets merged).
    async fn sample_series(
        &self,
        tenant: TenantId,
        devices: &[DeviceId],
        metric: &MetricName,
        from: Timestamp,
        to: Timestamp,
        step_ms: i64,
    ) -> Result<Vec<tender_core::series::Bucket>>;
    /// Retention: deletes the samples older than `before` of up to `devices` devices (of every
    /// tenant) in key order after `after` (from the first with `None`), one short transaction
    /// per device so that ingest is never held up for long. Returns how many samples were
    /// deleted and where to go on (`None`: every device was visited).
    async fn prune_samples(
        &self,
        before: Timestamp,
        after: Option<(TenantId, DeviceId)>,
        devices: u32,
    ) -> Result<PruneProgress>;
    /// The newest sample of each of the device's metrics, in metric-name order (bytewise, the
    /// same on every backend). Empty for a device of another tenant.
    async fn latest_samples(&self, tenant: TenantId, device: DeviceId) -> Result<Vec<Sample>>;
}

/// The inventory part of the port: the attributes each device reports about itself.
#[async_trait]
pub trait InventoryStore: Send + Sync + 'static {
    /// Replaces the device's inventory with `attributes`, reported at `at`. Returns whether the
    /// attributes changed (a first report is a change); `updated_at` moves only then, while
    /// `reported_at` always does. NotFound when the device does not exist in the tenant.
    async fn put_inventory(
        &self,
        tenant: TenantId,
        device: DeviceId,
        attributes: &Inventory,
        at: Timestamp,
    ) -> Result<bool>;
    /// The device's inventory; `None` before its first report (or for another tenant's device).
    async fn device_inventory(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> Result<Option<DeviceInventory>>;
    /// The inventories of those of `ids` that reported one, in this tenant. Any number of ids.
    async fn device_inventories(
        &self,
        tenant: TenantId,
        ids: &[DeviceId],
    ) -> Result<HashMap<DeviceId, DeviceInventory>>;

    /// Sets an operator tag (replacing its value). NotFound when the device does not exist in
    /// the tenant; Conflict when the device has [`tender_core::inventory::MAX_TAGS`] other tags.
    /// The caller validates key and value.
    async fn set_device_tag(
        &self,
        tenant: TenantId,
        device: DeviceId,
        key: &AttributeName,
        value: &str,
    ) -> Result<()>;
    /// Removes a tag; true when the device had it.
    async fn delete_device_tag(
        &self,
        tenant: TenantId,
        device: DeviceId,
        key: &AttributeName,
    ) -> Result<bool>;
    /// The tags of those of `ids` that have any, key to value in key order. Any number of ids.
    async fn device_tags(
        &self,
        tenant: TenantId,
        ids: &[DeviceId],
    ) -> Result<HashMap<DeviceId, BTreeMap<String, String>>>;
}

/// The groups part of the port: static groups (explicit members, nested) and dynamic groups
/// (a saved query; no stored members).
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Conflict when the name is taken in the tenant; NotFound when the parent does not exist.
    /// The caller checks nesting rules ([`tender_core::group::check_parent`]).
    async fn create_group(&self, group: &Group) -> Result<()>;
    /// Every group of the tenant, by name.
    async fn groups(&self, tenant: TenantId) -> Result<Vec<Group>>;
    async fn group(&self, tenant: TenantId, id: GroupId) -> Result<Option<Group>>;
    /// Renames, moves (new parent) or changes the query of `group` (matched by tenant and id;
    /// the kind never changes). NotFound when it does not exist; Conflict when the new name is
    /// taken.
    async fn update_group(&self, group: &Group) -> Result<()>;
    /// Deletes a group and its memberships; false when there was none. Conflict when it has
    /// child groups (move or delete them first).
    async fn delete_group(&self, tenant: TenantId, id: GroupId) -> Result<bool>;
    /// Adds devices to a static group (all or none); returns how many were not members yet.
    /// NotFound when the group or a device does not exist in the tenant.
    async fn add_group_members(
        &self,
        tenant: TenantId,
        group: GroupId,
        devices: &[DeviceId],
        at: Timestamp,
    ) -> Result<u64>;
    /// Removes devices from a static group; returns how many were members.
    async fn remove_group_members(
        &self,
        tenant: TenantId,
        group: GroupId,
        devices: &[DeviceId],
    ) -> Result<u64>;
    /// The static groups a device was added to (not their ancestors).
    async fn device_groups(&self, tenant: TenantId, device: DeviceId) -> Result<Vec<GroupId>>;
}

/// The twin and configuration part of the port. Documents are written by compare-and-set on
/// their version: a write names the version it read and succeeds only if that is still the
/// current one (`Ok(None)` otherwise), so two writers never overwrite each other silently.
#[async_trait]
pub trait TwinStore: Send + Sync + 'static {
    /// The device's twin; empty at version 0 when nothing was written yet.
    async fn twin(&self, tenant: TenantId, device: DeviceId) -> Result<Twin>;
    /// Replaces the desired document if its version is `expected`; returns the new version
    /// (`expected + 1`). NotFound when the device does not exist.
    async fn write_desired(
        &self,
        tenant: TenantId,
        device: DeviceId,
        expected: u64,
        doc: &Document,
        at: Timestamp,
    ) -> Result<Option<u64>>;
    /// Replaces the reported document if its version is `expected` and re-indexes it for
    /// `reported.*` queries in the same transaction; returns the new version.
    async fn write_reported(
        &self,
        tenant: TenantId,
        device: DeviceId,
        expected: u64,
        doc: &Document,
        at: Timestamp,
    ) -> Result<Option<u64>>;
    /// Records the effective configuration rendered for the device: the rendered version
    /// grows by one when `doc` differs from the last one recorded. Returns the version.
    async fn record_rendered(
        &self,
        tenant: TenantId,
        device: DeviceId,
        doc: &Document,
        at: Timestamp,
    ) -> Result<u64>;
    /// The fleet layer (if set) and every group layer of the tenant.
    async fn config_layers(&self, tenant: TenantId) -> Result<Vec<StoredLayer>>;
    /// Writes the fleet layer (`group` None) or a group's layer if its version is `expected`
    /// (0: it must not exist yet); returns the new version. NotFound when the group does not
    /// exist.
    async fn write_config_layer(
        &self,
        tenant: TenantId,
        group: Option<GroupId>,
        expected: u64,
        priority: i32,
        doc: &Document,
        at: Timestamp,
    ) -> Result<Option<u64>>;
    /// Deletes a layer; false when there was none.
    async fn delete_config_layer(&self, tenant: TenantId, group: Option<GroupId>) -> Result<bool>;
}

/// Operator metadata about devices (owner, notes).
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The device's metadata; empty when never set.
    async fn device_metadata(&self, tenant: TenantId, device: DeviceId) -> Result<DeviceMetadata>;
    /// Replaces the device's metadata. NotFound when the device does not exist.
    async fn set_device_metadata(
        &self,
        tenant: TenantId,
        device: DeviceId,
        owner: Option<&str>,
        notes: Option<&str>,
        at: Timestamp,
    ) -> Result<()>;
}

/// The events part of the port: an append-only log per tenant, and the dynamic-group
/// memberships last seen (so that joining and leaving can be events).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends an event; returns its id (greater than every id before it).
    async fn append_event(&self, event: &NewEvent) -> Result<u64>;
    /// The tenant's events passing `filter`, oldest first, at most `limit`.
    async fn events(
        &self,
        tenant: TenantId,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<Event>>;
    /// Deletes events older than `before` (every tenant); returns how many.
    async fn prune_events(&self, before: Timestamp) -> Result<u64>;
    /// The dynamic groups `device` was last recorded as matching.
    async fn dynamic_memberships(&self, tenant: TenantId, device: DeviceId)
    -> Result<Vec<GroupId>>;
    /// Records whether `device` matches dynamic `group`; returns whether that changed.
    async fn set_dynamic_membership(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
        member: bool,
        at: Timestamp,
    ) -> Result<bool>;
}

/// The artifacts part of the port (`0016_artifacts.sql`): what the server read from each
/// uploaded artifact (the file itself lives in the server's artifact store) and the public keys
/// each tenant trusts to sign artifacts.
#[async_trait]
pub trait ArtifactCatalog: Send + Sync + 'static {
    /// Conflict when the tenant already has an artifact with this name and version.
    async fn insert_artifact(&self, artifact: &tender_core::artifact::Artifact) -> Result<()>;
    async fn artifact(
        &self,
        tenant: TenantId,
        id: tender_core::ArtifactId,
    ) -> Result<Option<tender_core::artifact::Artifact>>;
    async fn artifact_by_version(
        &self,
        tenant: TenantId,
        name: &str,
        version: &str,
    ) -> Result<Option<tender_core::artifact::Artifact>>;
    /// Newest first, optionally only one name.
    async fn list_artifacts(
        &self,
        tenant: TenantId,
        name: Option<&str>,
        page: &PageRequest<tender_core::ArtifactId>,
    ) -> Result<Page<tender_core::artifact::Artifact, tender_core::ArtifactId>>;
    /// NotFound when there is no such artifact in the tenant.
    async fn delete_artifact(&self, tenant: TenantId, id: tender_core::ArtifactId) -> Result<()>;
    /// Conflict when the tenant already trusts this key id.
    async fn insert_trusted_key(&self, key: &tender_core::artifact::TrustedKey) -> Result<()>;
    /// Oldest first.
    async fn trusted_keys(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<tender_core::artifact::TrustedKey>>;
    /// NotFound when the tenant does not trust this key id.
    async fn delete_trusted_key(&self, tenant: TenantId, key_id: &str) -> Result<()>;
}

/// The alerts part of the port (`0020_alerts.sql`, see `alerts.rs`): operators' rules and the
/// alerts they raised. At most one alert per (rule, device) is open; a resolved alert is history
/// and is kept when its rule is deleted.
#[async_trait]
pub trait AlertStore: Send + Sync + 'static {
    /// Conflict when the tenant has a rule with this name.
    async fn create_alert_rule(&self, rule: &tender_core::alert::AlertRule) -> Result<()>;
    async fn alert_rule(
        &self,
        tenant: TenantId,
        id: tender_core::AlertRuleId,
    ) -> Result<Option<tender_core::alert::AlertRule>>;
    /// Newest first.
    async fn list_alert_rules(
        &self,
        tenant: TenantId,
        page: &PageRequest<tender_core::AlertRuleId>,
    ) -> Result<Page<tender_core::alert::AlertRule, tender_core::AlertRuleId>>;
    /// Every enabled rule of every tenant (for the server's alert engine).
    async fn enabled_alert_rules(&self) -> Result<Vec<tender_core::alert::AlertRule>>;
    /// Writes the rule's name, severity, enabled flag and update time (scope and condition do
    /// not change). NotFound when there is no such rule in the tenant; Conflict on a taken name.
    async fn update_alert_rule(&self, rule: &tender_core::alert::AlertRule) -> Result<()>;
    /// Deletes the rule and, in the same transaction, resolves its open alerts (at, reason),
    /// which it returns. NotFound when there is no such rule in the tenant.
    async fn delete_alert_rule(
        &self,
        tenant: TenantId,
        id: tender_core::AlertRuleId,
        at: Timestamp,
        reason: &str,
    ) -> Result<Vec<tender_core::alert::Alert>>;
    /// Conflict when the rule already has an open alert for the device; NotFound when the
    /// device is not in the tenant.
    async fn insert_alert(&self, alert: &tender_core::alert::Alert) -> Result<()>;
    async fn alert(
        &self,
        tenant: TenantId,
        id: tender_core::AlertId,
    ) -> Result<Option<tender_core::alert::Alert>>;
    /// Writes the alert's lifecycle fields if its stored state is still `from`: `Ok(false)`
    /// when it moved on (or the alert does not exist).
    async fn update_alert(
        &self,
        alert: &tender_core::alert::Alert,
        from: tender_core::alert::AlertState,
    ) -> Result<bool>;
    /// Newest first, filtered.
    async fn list_alerts(
        &self,
        tenant: TenantId,
        filter: &AlertFilter,
        page: &PageRequest<tender_core::AlertId>,
    ) -> Result<Page<tender_core::alert::Alert, tender_core::AlertId>>;
    /// Every open alert of every tenant (the engine rebuilds its trackers from them).
    async fn open_alerts(&self) -> Result<Vec<tender_core::alert::Alert>>;
}

/// The deployments part of the port (`0017_deployments.sql`): deployments and each device's
/// [`Target`](tender_core::deployment::Target) in them. Deployments change by compare-and-set on
/// their revision, targets on the state, attempts and update time read (see `deployments.rs`).
#[async_trait]
pub trait DeploymentStore: Send + Sync + 'static {
    /// Inserts the deployment and its targets in one transaction. NotFound when the artifact
    /// or a device does not exist in the tenant (nothing is stored).
    async fn create_deployment(
        &self,
        deployment: &tender_core::deployment::Deployment,
        targets: &[tender_core::deployment::Target],
    ) -> Result<()>;
    /// Adds targets to an existing deployment (continuous deployments); devices already in it
    /// are left alone. Returns how many were added.
    async fn add_deployment_targets(
        &self,
        targets: &[tender_core::deployment::Target],
    ) -> Result<u64>;
    /// Which of `ids` are targets of the deployment already (any number of ids; none costs no
    /// query). Devices of another tenant never appear.
    async fn deployment_targets_among(
        &self,
        tenant: TenantId,
        deployment: tender_core::DeploymentId,
        ids: &[DeviceId],
    ) -> Result<HashSet<DeviceId>>;
    async fn deployment(
        &self,
        tenant: TenantId,
        id: tender_core::DeploymentId,
    ) -> Result<Option<tender_core::deployment::Deployment>>;
    /// Newest first.
    async fn list_deployments(
        &self,
        tenant: TenantId,
        page: &PageRequest<tender_core::DeploymentId>,
    ) -> Result<Page<tender_core::deployment::Deployment, tender_core::DeploymentId>>;
    /// Scheduled and running deployments of every tenant (for the server's scheduler).
    async fn active_deployments(&self) -> Result<Vec<tender_core::deployment::Deployment>>;
    /// Stores `new` if the deployment is still at `expected.revision` (the revision then grows
    /// by one); false when someone else changed it first.
    async fn update_deployment(
        &self,
        expected: &tender_core::deployment::Deployment,
        new: &tender_core::deployment::Deployment,
    ) -> Result<bool>;
    /// Counts per phase and state, one entry per phase.
    async fn deployment_stats(
        &self,
        deployment: &tender_core::deployment::Deployment,
    ) -> Result<Vec<tender_core::deployment::PhaseStats>>;
    /// The targets by device id, optionally in one state.
    async fn deployment_targets(
        &self,
        tenant: TenantId,
        id: tender_core::DeploymentId,
        state: Option<tender_core::deployment::TargetState>,
        page: &PageRequest<DeviceId>,
    ) -> Result<Page<tender_core::deployment::Target, DeviceId>>;
    async fn deployment_target(
        &self,
        tenant: TenantId,
        id: tender_core::DeploymentId,
        device: DeviceId,
    ) -> Result<Option<tender_core::deployment::Target>>;
    /// Queued targets of phases up to the current one that may be notified at `now`, earlier
    /// phases first, at most `limit`.
    async fn due_deployment_targets(
        &self,
        deployment: &tender_core::deployment::Deployment,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<tender_core::deployment::Target>>;
    /// The devices of [`DeploymentStore::due_deployment_targets`], in the same order: what the
    /// scheduler scans every pass, without reading whole rows.
    async fn due_deployment_devices(
        &self,
        deployment: &tender_core::deployment::Deployment,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<DeviceId>>;
    /// (targets notified since `since`, targets notified and not done downloading).
    async fn deployment_load(
        &self,
        deployment: &tender_core::deployment::Deployment,
        since: Timestamp,
    ) -> Result<(u32, u32)>;
    /// The device's targets that it is working on (notified and not finished), any deployment.
    async fn active_targets_for_device(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> Result<Vec<tender_core::deployment::Target>>;
    /// The device's targets, newest deployment first.
    async fn device_deployment_targets(
        &self,
        tenant: TenantId,
        device: DeviceId,
        page: &PageRequest<tender_core::DeploymentId>,
    ) -> Result<Page<tender_core::deployment::Target, tender_core::DeploymentId>>;
    /// `Target::notify` for those of `devices` that are due (queued, in a phase up to the
    /// current one, attempts left, back-off over), in one transaction; returns them as
    /// notified. Devices not due are left alone.
    async fn notify_deployment_targets(
        &self,
        deployment: &tender_core::deployment::Deployment,
        devices: &[DeviceId],
        now: Timestamp,
    ) -> Result<Vec<tender_core::deployment::Target>>;
    /// Stores `new` if the target is still as `expected` (state, attempts, update time).
    async fn update_deployment_target(
        &self,
        expected: &tender_core::deployment::Target,
        new: &tender_core::deployment::Target,
    ) -> Result<bool>;
}

/// The commands part of the port (`0011_commands.sql`): commands with the devices they were
/// sent to, and each device's [`Target`](tender_core::command::Target). Target changes are
/// conditional on the state read (see `commands.rs`).
#[async_trait]
pub trait CommandStore: Send + Sync + 'static {
    /// Inserts the command and one `queued` target per device (duplicates ignored), in one
    /// transaction. NotFound when a device does not exist in the tenant (nothing is stored).
    async fn create_command(
        &self,
        command: &tender_core::command::Command,
        devices: &[DeviceId],
    ) -> Result<()>;
    async fn command(
        &self,
        tenant: TenantId,
        id: tender_core::CommandId,
    ) -> Result<Option<tender_core::command::Command>>;
    /// The tenant's commands, newest first.
    async fn list_commands(
        &self,
        tenant: TenantId,
        page: &PageRequest<tender_core::CommandId>,
    ) -> Result<Page<tender_core::command::Command, tender_core::CommandId>>;
    /// Counts of the command's targets per state.
    async fn command_summary(
        &self,
        tenant: TenantId,
        id: tender_core::CommandId,
    ) -> Result<tender_core::command::Summary>;
    /// The command's targets by device id, optionally only those in `state`.
    async fn command_targets(
        &self,
        tenant: TenantId,
        id: tender_core::CommandId,
        state: Option<tender_core::command::CommandState>,
        page: &PageRequest<DeviceId>,
    ) -> Result<Page<tender_core::command::Target, DeviceId>>;
    async fn command_target(
        &self,
        tenant: TenantId,
        id: tender_core::CommandId,
        device: DeviceId,
    ) -> Result<Option<tender_core::command::Target>>;
    /// A device's targets, newest command first.
    async fn device_command_targets(
        &self,
        tenant: TenantId,
        device: DeviceId,
        page: &PageRequest<tender_core::CommandId>,
    ) -> Result<Page<tender_core::command::Target, tender_core::CommandId>>;
    /// A device's unfinished targets whose command has not expired, oldest command first.
    async fn pending_for_device(
        &self,
        tenant: TenantId,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<Vec<tender_core::command::Target>>;
    /// Stores `new` if the target is still in `expected`'s state and attempt count; false
    /// when it moved meanwhile (the caller reads it again or gives up).
    async fn update_target(
        &self,
        expected: &tender_core::command::Target,
        new: &tender_core::command::Target,
    ) -> Result<bool>;
    /// `Target::on_sent` for those of `devices` whose target is `queued`, unexpired and has
    /// attempts left, in one transaction; returns the devices it applied to.
    async fn mark_sent(
        &self,
        command: &tender_core::command::Command,
        devices: &[DeviceId],
        now: Timestamp,
    ) -> Result<Vec<DeviceId>>;
    /// Up to `limit` `sent`/`delivered` targets whose attempt's deadline has passed, in every
    /// tenant (the server's sweep), oldest deadline first.
    async fn due_timeouts(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<tender_core::command::Target>>;
    /// Every unfinished target past its command's TTL becomes `expired`, in every tenant (the
    /// server's sweep); returns how many.
    async fn expire_targets(&self, now: Timestamp) -> Result<u64>;
    /// Every unfinished target of the command becomes `canceled`; returns how many.
    async fn cancel_command(
        &self,
        tenant: TenantId,
        id: tender_core::CommandId,
        now: Timestamp,
    ) -> Result<u64>;
}

/// Remote logs: operators' requests for a device's logs, their state (changed by
/// compare-and-set on the state and `updated_at` read, see `logs.rs`) and the uploaded gzip.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// NotFound when the device does not exist in the tenant.
    async fn create_log_request(&self, request: &tender_core::logs::LogRequest) -> Result<()>;
    async fn log_request(
        &self,
        tenant: TenantId,
        id: tender_core::LogRequestId,
    ) -> Result<Option<tender_core::logs::LogRequest>>;
    /// A device's requests, newest first.
    async fn device_log_requests(
        &self,
        tenant: TenantId,
        device: DeviceId,
        page: &PageRequest<tender_core::LogRequestId>,
    ) -> Result<Page<tender_core::logs::LogRequest, tender_core::LogRequestId>>;
    /// A device's open requests not yet expired at `now`, oldest first (sent at reconnect).
    async fn pending_log_requests(
        &self,
        tenant: TenantId,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<Vec<tender_core::logs::LogRequest>>;
    /// Stores `new` if the request is still in `expected`'s state and `updated_at`; false
    /// when it moved meanwhile.
    async fn update_log_request(
        &self,
        expected: &tender_core::logs::LogRequest,
        new: &tender_core::logs::LogRequest,
    ) -> Result<bool>;
    /// Like `update_log_request` to `ready`, storing the uploaded gzip in the same transaction;
    /// false (nothing stored) when the request moved meanwhile.
    async fn store_log_content(
        &self,
        expected: &tender_core::logs::LogRequest,
        ready: &tender_core::logs::LogRequest,
        gzip: &[u8],
    ) -> Result<bool>;
    /// The stored gzip of a `ready` request.
    async fn log_content(
        &self,
        tenant: TenantId,
        id: tender_core::LogRequestId,
    ) -> Result<Option<Vec<u8>>>;
    /// Every open request past its TTL becomes `expired`, in every tenant; returns how many.
    async fn expire_log_requests(&self, now: Timestamp) -> Result<u64>;
    /// Deletes finished requests (and their content) that finished before the given time, in
    /// every tenant; returns how many.
    async fn prune_log_requests(&self, finished_before: Timestamp) -> Result<u64>;
}

/// A shared, type-erased store.
pub type DynStore = Arc<dyn Store>;

/// Why a lifecycle change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error(transparent)]
    NotAllowed(#[from] tender_core::device::LifecycleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads a device, asks the core whether it may move to `to`, and stores the change if nobody
/// changed the device in between.
pub async fn transition_device(
    store: &dyn Store,
    tenant: TenantId,
    id: DeviceId,
    to: DeviceState,
    at: Timestamp,
) -> Result<Device, TransitionError> {
    let device = store
        .device(tenant, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
    device.state.transition(to)?;
    Ok(store
        .set_device_state(tenant, id, device.state, to, at)
        .await?)
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// `sqlite://PATH` (created if missing) or `postgres://...`.
    pub url: String,
    pub max_connections: u32,
    /// How long to wait for a connection before giving up.
    pub connect_timeout: std::time::Duration,
}

/// Opens the store named by `opts.url` and applies pending migrations.
pub async fn open(opts: &OpenOptions) -> Result<DynStore> {
    let url = opts.url.as_str();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(opts).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(opts).await?))
    } else {
        Err(StoreError::Unavailable(format!(
            "unsupported database URL {:?}: use sqlite://PATH or postgres://USER@HOST/DB",
            redact_url(url)
        )))
    }
}

/// The URL with any password replaced, fit for logs and error messages.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            // set_password only fails for URLs that cannot have one, which this one has.
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => raw.to_owned(),
    }
}

/// Maps a database error onto what a caller can act on.
pub(crate) fn map_sqlx(what: &str, e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{what}: already exists"))
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound(format!("{what}: a record it refers to does not exist"))
        }
        sqlx::Error::Io(e) => StoreError::Unavailable(format!("{what}: {e}")),
        sqlx::Error::Tls(e) => StoreError::Unavailable(format!("{what}: TLS: {e}")),
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable(format!("{what}: timed out waiting for a connection"))
        }
        sqlx::Error::PoolClosed => StoreError::Unavailable(format!("{what}: store closed")),
        e @ (sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)) => {
            StoreError::Corrupt(format!("{what}: {e}"))
        }
        e => StoreError::Internal(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/tender"),
            "postgres://u:***@db:5432/tender"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
