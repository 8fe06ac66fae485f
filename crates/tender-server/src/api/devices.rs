//! The device registry: `GET /api/v1/devices` and `GET /api/v1/devices/{id}`.
//!
//! The listing is the pattern every collection follows: cursor pagination with an opaque
//! `next_cursor`, a `limit` that is validated rather than silently capped, unknown query
//! parameters refused.

use axum::Json;
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tender_core::DeviceId;
use tender_core::device::{Device, DeviceState};
use tender_core::page::{PageLimit, PageRequest};
use tender_store::DeviceFilter;
use utoipa::{IntoParams, ToSchema};

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
}

const CURSOR_VERSION: &str = "d1:";

fn encode_cursor(after: DeviceId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_VERSION}{after}"))
}

fn decode_cursor(c: &str) -> Result<DeviceId, Problem> {
    let bad = || {
        Problem::bad_request(
            "invalid-cursor",
            "cursor is not one this server issued; pass next_cursor from a previous page unchanged",
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    text.strip_prefix(CURSOR_VERSION)
        .and_then(|id| id.parse().ok())
        .ok_or_else(bad)
}

#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    params(ListDevicesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of devices in creation order", body = DevicePage),
        (status = 400, description = "Invalid limit, cursor, state or unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_devices(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Query(q): Query<ListDevicesQuery>,
) -> Result<Json<DevicePage>, Problem> {
    let limit = match q.limit {
        None => PageLimit::default(),
        Some(n) => {
            PageLimit::new(n).map_err(|e| Problem::bad_request("invalid-limit", e.to_string()))?
        }
    };
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let filter = DeviceFilter {
        state: q.state.map(Into::into),
    };
    let page = state
        .store
        .list_devices(
            auth.principal.tenant_id,
            &filter,
            &PageRequest { after, limit },
        )
        .await?;
    Ok(Json(DevicePage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(encode_cursor),
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
    let id: DeviceId = id.parse().map_err(|e: tender_core::ids::InvalidId| {
        Problem::bad_request("invalid-id", e.to_string())
    })?;
    let device = state
        .store
        .device(auth.principal.tenant_id, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {id}")))?;
    Ok(Json(device.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id: DeviceId = "0192f1c4-7b5e-7a1e-9c1d-2f8e4b6a0c3d".parse().unwrap();
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        for bad in ["", "!!", "Zm9v", &URL_SAFE_NO_PAD.encode("d2:x")] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
