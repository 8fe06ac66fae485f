//! The device registry: `GET /api/v1/devices` and `GET /api/v1/devices/{id}`.
//!
//! The listing is the pattern every collection follows: cursor pagination with an opaque
//! `next_cursor`, a `limit` that is validated rather than silently capped, unknown query
//! parameters refused.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use tender_core::DeviceId;
use tender_core::device::{Device, DeviceState};
use tender_core::page::{PageLimit, PageRequest};
use tender_store::DeviceFilter;
use utoipa::{IntoParams, ToSchema};

use crate::api::{check_label, cursor, parse_id};
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

/// A device's lifecycle state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStateDto {
    Pending,
    Preauthorized,
    Accepted,
    Rejected,
    Decommissioned,
}

impl From<DeviceStateDto> for DeviceState {
    fn from(s: DeviceStateDto) -> Self {
        match s {
            DeviceStateDto::Pending => DeviceState::Pending,
            DeviceStateDto::Preauthorized => DeviceState::Preauthorized,
            DeviceStateDto::Accepted => DeviceState::Accepted,
            DeviceStateDto::Rejected => DeviceState::Rejected,
            DeviceStateDto::Decommissioned => DeviceState::Decommissioned,
        }
    }
}

impl From<DeviceState> for DeviceStateDto {
    fn from(s: DeviceState) -> Self {
        match s {
            DeviceState::Pending => DeviceStateDto::Pending,
            DeviceState::Preauthorized => DeviceStateDto::Preauthorized,
            DeviceState::Accepted => DeviceStateDto::Accepted,
            DeviceState::Rejected => DeviceStateDto::Rejected,
            DeviceState::Decommissioned => DeviceStateDto::Decommissioned,
        }
    }
}

/// A device as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDto {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub name: String,
    pub device_type: Option<String>,
    pub state: DeviceStateDto,
    /// SHA-256 (hex) of the device's public key, once known.
    pub key_fingerprint: Option<String>,
    /// When the device was last heard from (RFC 3339; updated at most once a minute while
    /// it polls over HTTPS, and at connect and disconnect on MQTT).
    #[schema(format = DateTime)]
    pub last_seen_at: Option<String>,
    /// Whether the device holds an open MQTT connection now (accurate to its keepalive: a
    /// silent connection is closed after 1.5 times the keepalive).
    pub online: bool,
    /// What the device last reported about itself: always on a single device, on a listing
    /// only with `include=inventory`; absent before the device's first report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<crate::api::inventory::InventoryDto>,
    /// Operator tags, key to value: always on a single device, on a listing only with
    /// `include=tags`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    /// Who is responsible for the device (operator metadata; single device only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Operator notes (single device only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub state_changed_at: String,
}

impl From<Device> for DeviceDto {
    fn from(d: Device) -> Self {
        DeviceDto {
            id: d.id.to_string(),
            name: d.name,
            device_type: d.device_type,
            state: d.state.into(),
            key_fingerprint: d.key_fingerprint,
            last_seen_at: d.last_seen_at.map(|t| t.to_rfc3339()),
            online: false,
            inventory: None,
            tags: None,
            owner: None,
            notes: None,
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
            state_changed_at: d.state_changed_at.to_rfc3339(),
        }
    }
}

/// One page of devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevicePage {
    pub items: Vec<DeviceDto>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDevicesQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only devices in this state.
    pub state: Option<DeviceStateDto>,
    /// What to embed in each device, comma-separated: `inventory`, `tags`.
    pub include: Option<String>,
    /// Only devices matching this device query, e.g. `inventory.os.id = "debian" and online = true`
    /// (see the query language in docs/api.md).
    pub q: Option<String>,
}

const CURSOR_VERSION: &str = "d1:";

#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    params(ListDevicesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of devices in creation order", body = DevicePage),
        (status = 400, description = "Invalid limit, cursor, state, include, query or unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_devices(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(q): Query<ListDevicesQuery>,
) -> Result<Json<DevicePage>, Problem> {
    let page = cursor::page_request::<DeviceId>(CURSOR_VERSION, q.limit, q.cursor.as_deref())?;
    let matching = match q.q.as_deref() {
        Some(text) if !text.trim().is_empty() => {
            let query = crate::api::search::parse_query(text)?;
            Some(
                crate::api::search::to_filter(
                    &state,
                    auth.principal.tenant_id,
                    &query,
                    state.clock.now(),
                )
                .await?,
            )
        }
        _ => None,
    };
    let filter = DeviceFilter {
        state: q.state.map(Into::into),
        matching,
    };
    let tenant = auth.principal.tenant_id;
    let page = state.store.list_devices(tenant, &filter, &page).await?;
    let ids: Vec<DeviceId> = page.items.iter().map(|d| d.id).collect();
    let online = state.store.online_devices(tenant, &ids).await?;
    let (mut with_inventory, mut with_tags) = (false, false);
    for part in q.include.as_deref().unwrap_or("").split(',') {
        match part.trim() {
            "" => {}
            "inventory" => with_inventory = true,
            "tags" => with_tags = true,
            other => {
                return Err(Problem::bad_request(
                    "invalid-include",
                    format!(
                        "include={other} is not known; use inventory, tags or both (include=inventory,tags)"
                    ),
                ));
            }
        }
    }
    let mut inventories = if with_inventory {
        state.store.device_inventories(tenant, &ids).await?
    } else {
        Default::default()
    };
    let mut tags = if with_tags {
        Some(state.store.device_tags(tenant, &ids).await?)
    } else {
        None
    };
    Ok(Json(DevicePage {
        items: page
            .items
            .into_iter()
            .map(|d| {
                let on = online.contains(&d.id);
                let inventory = inventories.remove(&d.id).map(Into::into);
                let device_tags = tags.as_mut().map(|t| t.remove(&d.id).unwrap_or_default());
                DeviceDto {
                    online: on,
                    inventory,
                    tags: device_tags,
                    ..d.into()
                }
            })
            .collect(),
        next_cursor: page.next.map(|id| cursor::encode(CURSOR_VERSION, id)),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device", body = DeviceDto),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device in the caller's tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_device(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, Problem> {
    let id: DeviceId = parse_id(&id)?;
    Ok(Json(
        device_view(&state, auth.principal.tenant_id, id).await?,
    ))
}

/// One device with its presence, inventory, tags and metadata.
async fn device_view(
    state: &AppState,
    tenant: tender_core::TenantId,
    id: DeviceId,
) -> Result<DeviceDto, Problem> {
    let device = state
        .store
        .device(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {id}")))?;
    let online = state.store.online_devices(tenant, &[id]).await?;
    let inventory = state.store.device_inventory(tenant, id).await?;
    let tags = state
        .store
        .device_tags(tenant, &[id])
        .await?
        .remove(&id)
        .unwrap_or_default();
    let metadata = state.store.device_metadata(tenant, id).await?;
    Ok(DeviceDto {
        online: online.contains(&id),
        inventory: inventory.map(Into::into),
        tags: Some(tags),
        owner: metadata.owner,
        notes: metadata.notes,
        ..device.into()
    })
}

/// A change to a device's operator metadata: a field left out stays as it is, `null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// 1–128 characters, or null to clear.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// Up to 4096 bytes (newlines and tabs allowed), or null to clear.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub notes: Option<Option<String>>,
}

/// Tells a field set to `null` (`Some(None)`) from a field left out (`None`).
fn present<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

#[utoipa::path(
    patch,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    request_body = DevicePatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device after the change", body = DeviceDto),
        (status = 400, description = "Invalid id, owner or notes", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_device(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesManage>,
    Path(id): Path<String>,
    Json(body): Json<DevicePatch>,
) -> Result<Json<DeviceDto>, Problem> {
    let id: DeviceId = parse_id(&id)?;
    let tenant = auth.principal.tenant_id;
    if state.store.device(tenant, id).await?.is_none() {
        return Err(Problem::not_found(format!("no device {id}")));
    }
    let current = state.store.device_metadata(tenant, id).await?;
    let owner = match body.owner {
        Some(v) => v,
        None => current.owner,
    };
    let notes = match body.notes {
        Some(v) => v,
        None => current.notes,
    };
    if let Some(o) = &owner {
        tender_core::device::validate_owner(o)
            .map_err(|e| Problem::bad_request("invalid-field", e))?;
    }
    if let Some(n) = &notes {
        tender_core::device::validate_notes(n)
            .map_err(|e| Problem::bad_request("invalid-field", e))?;
    }
    state
        .store
        .set_device_metadata(
            tenant,
            id,
            owner.as_deref(),
            notes.as_deref(),
            state.clock.now(),
        )
        .await?;
    Ok(Json(device_view(&state, tenant, id).await?))
}

/// Moves a device to `to` if the core allows it; 409 names both states when it does not.
async fn transition(
    state: &AppState,
    tenant: tender_core::TenantId,
    id: DeviceId,
    to: DeviceState,
) -> Result<Device, Problem> {
    let device = tender_store::transition_device(&*state.store, tenant, id, to, state.clock.now())
        .await
        .map_err(|e| match e {
            tender_store::TransitionError::NotAllowed(l) => Problem::new(
                axum::http::StatusCode::CONFLICT,
                "invalid-transition",
                l.to_string(),
            ),
            tender_store::TransitionError::Store(s) => s.into(),
        })?;
    crate::events::emit(
        state,
        crate::events::device_event(
            state,
            tenant,
            id,
            tender_core::event::EventKind::DeviceStateChanged,
        )
        .with("state", device.state.as_str()),
    )
    .await;
    Ok(device)
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/accept",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Accepted: the device gets its certificate when it next asks", body = DeviceDto),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device's state does not allow it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn accept_device(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, Problem> {
    let id = parse_id::<DeviceId>(&id)?;
    Ok(Json(
        transition(&state, auth.principal.tenant_id, id, DeviceState::Accepted)
            .await?
            .into(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/reject",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rejected: its enrollment requests are refused", body = DeviceDto),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device's state does not allow it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reject_device(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, Problem> {
    let id = parse_id::<DeviceId>(&id)?;
    Ok(Json(
        transition(&state, auth.principal.tenant_id, id, DeviceState::Rejected)
            .await?
            .into(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/decommission",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Decommissioned: certificates revoked, history kept, can never authenticate again", body = DeviceDto),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_decommission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already decommissioned", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn decommission_device(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesDecommission>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDto>, Problem> {
    let id = parse_id::<DeviceId>(&id)?;
    let tenant = auth.principal.tenant_id;
    let device = transition(&state, tenant, id, DeviceState::Decommissioned).await?;
    state
        .store
        .revoke_device_certificates(tenant, id, state.clock.now())
        .await?;
    state.store.delete_device_credential(tenant, id).await?;
    state
        .gateway
        .disconnect_device(id, crate::mqtt::Authenticated::Any);
    Ok(Json(device.into()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedCertificates {
    /// How many certificates were revoked by this call.
    pub revoked: u64,
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/revoke-certificates",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every certificate of the device is revoked; it must enroll again", body = RevokedCertificates),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_decommission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_certificates(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesDecommission>,
    Path(id): Path<String>,
) -> Result<Json<RevokedCertificates>, Problem> {
    let id = parse_id::<DeviceId>(&id)?;
    let tenant = auth.principal.tenant_id;
    if state.store.device(tenant, id).await?.is_none() {
        return Err(Problem::not_found(format!("no device {id}")));
    }
    let revoked = state
        .store
        .revoke_device_certificates(tenant, id, state.clock.now())
        .await?;
    state
        .gateway
        .disconnect_device(id, crate::mqtt::Authenticated::ByCertificate);
    Ok(Json(RevokedCertificates { revoked }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptPending {
    /// These pending devices.
    #[serde(default)]
    pub device_ids: Vec<String>,
    /// Every pending device of the tenant.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedDevices {
    pub accepted: Vec<String>,
    /// With `all`: whether pending devices remain beyond this call's limit of 1000 (call again).
    pub more_pending: bool,
    /// Devices that could not be accepted, with the reason.
    pub failed: Vec<FailedDevice>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailedDevice {
    pub device_id: String,
    pub reason: String,
}

/// Most devices one bulk call names.
const MAX_BULK: usize = 1000;

#[utoipa::path(
    post,
    path = "/api/v1/devices/accept-pending",
    tag = "devices",
    request_body = AcceptPending,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What was accepted and what was not", body = AcceptedDevices),
        (status = 400, description = "Neither ids nor all, both, or too many ids", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn accept_pending(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Json(body): Json<AcceptPending>,
) -> Result<Json<AcceptedDevices>, Problem> {
    let tenant = auth.principal.tenant_id;
    if body.all != body.device_ids.is_empty() {
        return Err(Problem::bad_request(
            "invalid-field",
            "give either device_ids or \"all\": true",
        ));
    }
    if body.device_ids.len() > MAX_BULK {
        return Err(Problem::bad_request(
            "invalid-field",
            format!("at most {MAX_BULK} device_ids per call"),
        ));
    }
    let mut more_pending = false;
    let ids: Vec<DeviceId> = if body.all {
        let pending = DeviceFilter {
            state: Some(DeviceState::Pending),
            ..Default::default()
        };
        // One page per call: an open tenant's pending list can be flooded, and one request must
        // stay bounded. `more_pending` tells the caller to come back.
        let page = state
            .store
            .list_devices(
                tenant,
                &pending,
                &PageRequest::first(
                    PageLimit::new(tender_core::page::MAX_PAGE_LIMIT).map_err(Problem::internal)?,
                ),
            )
            .await?;
        more_pending = page.next.is_some();
        page.items.iter().map(|d| d.id).collect()
    } else {
        body.device_ids
            .iter()
            .map(|s| parse_id::<DeviceId>(s))
            .collect::<Result<_, _>>()?
    };
    let mut accepted = Vec::new();
    let mut failed = Vec::new();
    for id in ids {
        match transition(&state, tenant, id, DeviceState::Accepted).await {
            Ok(d) => accepted.push(d.id.to_string()),
            Err(p) => failed.push(FailedDevice {
                device_id: id.to_string(),
                reason: p.detail,
            }),
        }
    }
    Ok(Json(AcceptedDevices {
        accepted,
        more_pending,
        failed,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preauthorize {
    pub name: String,
    /// The device's public key, PEM (`-----BEGIN PUBLIC KEY-----`, ECDSA P-256 or Ed25519):
    /// the device enrolls with a CSR for this key. Omit it for a device that will log in with
    /// a password instead (`POST /api/v1/devices/{id}/credentials`).
    pub public_key: Option<String>,
    pub device_type: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/devices",
    tag = "devices",
    request_body = Preauthorize,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Preauthorized: the device with this key gets a certificate when it enrolls", body = DeviceDto),
        (status = 400, description = "Invalid name or key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A device with this key exists", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn preauthorize(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Json(body): Json<Preauthorize>,
) -> Result<(axum::http::StatusCode, Json<DeviceDto>), Problem> {
    let fingerprint = match &body.public_key {
        Some(pem) => Some(
            crate::ca::public_key_fingerprint(pem)
                .map_err(|e| Problem::bad_request("invalid-public-key", e.to_string()))?,
        ),
        None => None,
    };
    if let Some(t) = &body.device_type {
        check_label("device_type", t)?;
    }
    let device = Device::new(
        DeviceId::from_uuid(uuid::Uuid::now_v7()),
        auth.principal.tenant_id,
        body.name,
        body.device_type,
        DeviceState::Preauthorized,
        state.clock.now(),
    )
    .map_err(|e| Problem::bad_request("invalid-field", format!("name: {e}")))?;
    let device = match fingerprint {
        Some(f) => device.with_key_fingerprint(f),
        None => device,
    };
    state
        .store
        .insert_device(&device)
        .await
        .map_err(|e| match e {
            tender_store::StoreError::Conflict(_) => Problem::new(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                "a device with this public key already exists",
            ),
            other => other.into(),
        })?;
    crate::events::emit(
        &state,
        crate::events::device_event(
            &state,
            device.tenant_id,
            device.id,
            tender_core::event::EventKind::DeviceCreated,
        )
        .with("state", device.state.as_str()),
    )
    .await;
    Ok((axum::http::StatusCode::CREATED, Json(device.into())))
}
