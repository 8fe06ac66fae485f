//! Operator tags on devices: `PUT` / `DELETE /api/v1/devices/{id}/tags/{key}`. Tags are
//! key/value strings that operators set (site, owner, customer, ...); devices never see them.
//! Keys follow the inventory attribute-name rules; a device has at most 64.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tender_core::DeviceId;
use tender_core::inventory::{AttributeName, validate_tag_value};
use utoipa::ToSchema;

use crate::api::parse_id;
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagValue {
    /// At most 256 bytes, no control characters.
    pub value: String,
}

/// A device's tags, key to value.
#[derive(Debug, Serialize, ToSchema)]
pub struct Tags {
    #[schema(value_type = Object)]
    pub tags: BTreeMap<String, String>,
}

fn parse_key(key: &str) -> Result<AttributeName, Problem> {
    AttributeName::parse(key)
        .map_err(|e| Problem::bad_request("invalid-tag", format!("tag key: {e}")))
}

async fn tags_of(
    state: &AppState,
    tenant: tender_core::TenantId,
    id: DeviceId,
) -> Result<BTreeMap<String, String>, Problem> {
    Ok(state
        .store
        .device_tags(tenant, &[id])
        .await?
        .remove(&id)
        .unwrap_or_default())
}

#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/tags/{key}",
    tag = "devices",
    params(
        ("id" = String, Path, description = "Device id (UUID)"),
        ("key" = String, Path, description = "Tag key"),
    ),
    request_body = TagValue,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's tags after the change", body = Tags),
        (status = 400, description = "Invalid id, key or value", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device has 64 other tags", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn set_tag(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesManage>,
    Path((id, key)): Path<(String, String)>,
    Json(body): Json<TagValue>,
) -> Result<Json<Tags>, Problem> {
    let tenant = auth.principal.tenant_id;
    let id: DeviceId = parse_id(&id)?;
    let key = parse_key(&key)?;
    validate_tag_value(&body.value)
        .map_err(|e| Problem::bad_request("invalid-tag", format!("tag {key}: {e}")))?;
    state
        .store
        .set_device_tag(tenant, id, &key, &body.value)
        .await?;
    crate::twin::device_facts_changed(&state, tenant, id);
    Ok(Json(Tags {
        tags: tags_of(&state, tenant, id).await?,
    }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}/tags/{key}",
    tag = "devices",
    params(
        ("id" = String, Path, description = "Device id (UUID)"),
        ("key" = String, Path, description = "Tag key"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Invalid id or key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device, or it has no such tag", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_tag(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesManage>,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let tenant = auth.principal.tenant_id;
    let id: DeviceId = parse_id(&id)?;
    let key = parse_key(&key)?;
    if state.store.delete_device_tag(tenant, id, &key).await? {
        crate::twin::device_facts_changed(&state, tenant, id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("device {id} has no tag {key}")))
    }
}
