//! Rows as both databases return them, and their conversion into the core's types. Each row
//! derives `FromRow` generically, so one definition serves both adapters.

use tender_core::auth::Role;
use tender_core::certificate::{DeviceCertificate, DeviceCredential};
use tender_core::device::{Device, DeviceState};
use tender_core::enrollment::EnrollmentToken;
use tender_core::presence::{DeviceConnection, Transport};
use tender_core::telemetry::{MetricName, Sample};
use tender_core::tenant::{Tenant, TenantSlug};
use tender_core::user::{ApiToken, User};
use tender_core::{ConnectionId, DeviceId, TenantId, Timestamp, TokenId, UserId};
use uuid::Uuid;

use crate::StoreError;

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    id: Uuid,
    slug: String,
    name: String,
    enrollment_open: bool,
    created_at: i64,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;
    fn try_from(r: TenantRow) -> Result<Tenant, StoreError> {
        Ok(Tenant {
            id: TenantId::from_uuid(r.id),
            slug: TenantSlug::parse(&r.slug)
                .map_err(|e| StoreError::Corrupt(format!("tenant {}: {e}", r.id)))?,
            name: r.name,
            enrollment_open: r.enrollment_open,
            created_at: ts(r.created_at),
        })
    }
}

/// Roles are stored as a comma-separated list of role names.
pub(crate) fn roles_to_text(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn roles_from_text(text: &str) -> Result<Vec<Role>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Role>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    tenant_id: Uuid,
    id: Uuid,
    username: String,
    roles: String,
    disabled: bool,
    created_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(r: UserRow) -> Result<User, StoreError> {
        Ok(User {
            id: UserId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            username: r.username,
            roles: roles_from_text(&r.roles)?,
            disabled: r.disabled,
            created_at: ts(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiTokenRow {
    id: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
    name: String,
    secret_hash: Vec<u8>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl From<ApiTokenRow> for ApiToken {
    fn from(r: ApiTokenRow) -> ApiToken {
        ApiToken {
            id: TokenId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            user_id: UserId::from_uuid(r.user_id),
            name: r.name,
            secret_hash: r.secret_hash,
            created_at: ts(r.created_at),
            expires_at: r.expires_at.map(ts),
            revoked_at: r.revoked_at.map(ts),
            last_used_at: r.last_used_at.map(ts),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeviceRow {
    tenant_id: Uuid,
    id: Uuid,
    name: String,
    device_type: Option<String>,
    state: String,
    key_fingerprint: Option<String>,
    last_seen_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    state_changed_at: i64,
}

impl TryFrom<DeviceRow> for Device {
    type Error = StoreError;
    fn try_from(r: DeviceRow) -> Result<Device, StoreError> {
        Ok(Device {
            id: DeviceId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            name: r.name,
            device_type: r.device_type,
            state: r
                .state
                .parse::<DeviceState>()
                .map_err(|e| StoreError::Corrupt(format!("device {}: {e}", r.id)))?,
            key_fingerprint: r.key_fingerprint,
            last_seen_at: r.last_seen_at.map(ts),
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
            state_changed_at: ts(r.state_changed_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EnrollmentTokenRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    secret_hash: Vec<u8>,
    created_at: i64,
    expires_at: Option<i64>,
    max_uses: Option<i64>,
    uses: i64,
    revoked_at: Option<i64>,
    device_type: Option<String>,
}

impl TryFrom<EnrollmentTokenRow> for EnrollmentToken {
    type Error = StoreError;
    fn try_from(r: EnrollmentTokenRow) -> Result<EnrollmentToken, StoreError> {
        let count = |v: i64| {
            u32::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("enrollment token {}: count {v}", r.id)))
        };
        Ok(EnrollmentToken {
            id: TokenId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            name: r.name,
            secret_hash: r.secret_hash,
            created_at: ts(r.created_at),
            expires_at: r.expires_at.map(ts),
            max_uses: r.max_uses.map(count).transpose()?,
            uses: count(r.uses)?,
            revoked_at: r.revoked_at.map(ts),
            device_type: r.device_type,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CertificateRow {
    serial: String,
    tenant_id: Uuid,
    device_id: Uuid,
    key_fingerprint: String,
    not_before: i64,
    not_after: i64,
    issued_at: i64,
    revoked_at: Option<i64>,
}

impl From<CertificateRow> for DeviceCertificate {
    fn from(r: CertificateRow) -> DeviceCertificate {
        DeviceCertificate {
            serial: r.serial,
            tenant_id: TenantId::from_uuid(r.tenant_id),
            device_id: DeviceId::from_uuid(r.device_id),
            key_fingerprint: r.key_fingerprint,
            not_before: ts(r.not_before),
            not_after: ts(r.not_after),
            issued_at: ts(r.issued_at),
            revoked_at: r.revoked_at.map(ts),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ConnectionRow {
    id: Uuid,
    tenant_id: Uuid,
    device_id: Uuid,
    transport: String,
    protocol: String,
    remote_addr: String,
    client_id: Option<String>,
    connected_at: i64,
    disconnected_at: Option<i64>,
    disconnect_reason: Option<String>,
}

impl TryFrom<ConnectionRow> for DeviceConnection {
    type Error = StoreError;
    fn try_from(r: ConnectionRow) -> Result<DeviceConnection, StoreError> {
        Ok(DeviceConnection {
            id: ConnectionId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            device_id: DeviceId::from_uuid(r.device_id),
            transport: r
                .transport
                .parse::<Transport>()
                .map_err(|e| StoreError::Corrupt(format!("connection {}: {e}", r.id)))?,
            protocol: r.protocol,
            remote_addr: r.remote_addr,
            client_id: r.client_id,
            connected_at: ts(r.connected_at),
            disconnected_at: r.disconnected_at.map(ts),
            disconnect_reason: r.disconnect_reason,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CredentialRow {
    device_id: Uuid,
    tenant_id: Uuid,
    secret_hash: Vec<u8>,
    created_at: i64,
}

impl From<CredentialRow> for DeviceCredential {
    fn from(r: CredentialRow) -> DeviceCredential {
        DeviceCredential {
            tenant_id: TenantId::from_uuid(r.tenant_id),
            device_id: DeviceId::from_uuid(r.device_id),
            secret_hash: r.secret_hash,
            created_at: ts(r.created_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SampleRow {
    metric: String,
    at: i64,
    value: f64,
}

impl TryFrom<SampleRow> for Sample {
    type Error = StoreError;
    fn try_from(r: SampleRow) -> Result<Sample, StoreError> {
        Ok(Sample {
            metric: MetricName::parse(&r.metric)
                .map_err(|e| StoreError::Corrupt(format!("telemetry sample at {}: {e}", r.at)))?,
            at: ts(r.at),
            value: r.value,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct InventoryRow {
    pub(crate) device_id: uuid::Uuid,
    attributes: String,
    updated_at: i64,
    reported_at: i64,
}

impl TryFrom<InventoryRow> for tender_core::inventory::DeviceInventory {
    type Error = StoreError;
    fn try_from(r: InventoryRow) -> Result<Self, StoreError> {
        let attributes =
            tender_core::inventory::parse_inventory(r.attributes.as_bytes()).map_err(|e| {
                StoreError::Corrupt(format!("inventory of device {}: {e}", r.device_id))
            })?;
        Ok(tender_core::inventory::DeviceInventory {
            attributes,
            updated_at: ts(r.updated_at),
            reported_at: ts(r.reported_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct GroupRow {
    tenant_id: Uuid,
    id: Uuid,
    name: String,
    parent_id: Option<Uuid>,
    kind: String,
    query: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<GroupRow> for tender_core::group::Group {
    type Error = StoreError;
    fn try_from(r: GroupRow) -> Result<Self, StoreError> {
        use tender_core::group::{GroupKind, GroupName};
        let kind = match (r.kind.as_str(), r.query) {
            ("static", None) => GroupKind::Static,
            ("dynamic", Some(query)) => GroupKind::Dynamic { query },
            (k, _) => {
                return Err(StoreError::Corrupt(format!("group {}: kind {k:?}", r.id)));
            }
        };
        Ok(tender_core::group::Group {
            id: tender_core::GroupId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            name: GroupName::parse(&r.name)
                .map_err(|e| StoreError::Corrupt(format!("group {}: {e}", r.id)))?,
            parent_id: r.parent_id.map(tender_core::GroupId::from_uuid),
            kind,
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
        })
    }
}
