//! A device's inventory as operators read it: `GET /api/v1/devices/{id}/inventory`, and the
//! [`InventoryDto`] that device views embed.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use tender_core::DeviceId;
use tender_core::inventory::{AttributeValue, DeviceInventory};
use utoipa::ToSchema;

use crate::api::parse_id;
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

/// What a device last reported about itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct InventoryDto {
    /// Attribute name to value: a string, a number, a boolean or a list of strings.
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// When the attributes last changed (RFC 3339).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When the device last reported them, changed or not (RFC 3339).
    #[schema(format = DateTime)]
    pub reported_at: String,
}

fn json_value(v: AttributeValue) -> serde_json::Value {
    match v {
        AttributeValue::Bool(b) => serde_json::Value::Bool(b),
        AttributeValue::Number(n) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        AttributeValue::Text(s) => serde_json::Value::String(s),
        AttributeValue::List(l) => {
            serde_json::Value::Array(l.into_iter().map(serde_json::Value::String).collect())
        }
    }
}

impl From<DeviceInventory> for InventoryDto {
    fn from(i: DeviceInventory) -> Self {
        InventoryDto {
            attributes: i
                .attributes
                .0
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), json_value(v)))
                .collect(),
            updated_at: i.updated_at.to_rfc3339(),
            reported_at: i.reported_at.to_rfc3339(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/inventory",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's inventory", body = InventoryDto),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device, or it has not reported an inventory yet", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_inventory(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<InventoryDto>, Problem> {
    let tenant = auth.principal.tenant_id;
    let id: DeviceId = parse_id(&id)?;
    if state.store.device(tenant, id).await?.is_none() {
        return Err(Problem::not_found(format!("no device {id}")));
    }
    let inventory = state
        .store
        .device_inventory(tenant, id)
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!("device {id} has not reported an inventory yet"))
        })?;
    Ok(Json(inventory.into()))
}
