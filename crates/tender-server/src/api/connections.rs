//! A device's connections and its password credential:
//! `GET /api/v1/devices/{id}/connections`, `POST|DELETE /api/v1/devices/{id}/credentials`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tender_core::certificate::DeviceCredential;
use tender_core::device::DeviceState;
use tender_core::presence::DeviceConnection;
use tender_core::{ConnectionId, DeviceId};
use utoipa::{IntoParams, ToSchema};

use crate::api::{cursor, parse_id};
use crate::auth::{Authorized, need};
use crate::mqtt::Authenticated;
use crate::problem::Problem;
use crate::state::AppState;

/// One connection of a device to a gateway.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionDto {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    /// `mqtt` (HTTPS polling is shown by `last_seen_at` on the device).
    pub transport: String,
    /// `mqtt/3.1`, `mqtt/3.1.1` or `mqtt/5`.
    pub protocol: String,
    pub remote_addr: String,
    pub client_id: Option<String>,
    #[schema(format = DateTime)]
    pub connected_at: String,
    /// Absent while the connection is open.
    #[schema(format = DateTime)]
    pub disconnected_at: Option<String>,
    /// Why it ended: `client disconnect`, `keep-alive timeout`, `revoked`, `server restart`, ...
    pub disconnect_reason: Option<String>,
}

impl From<DeviceConnection> for ConnectionDto {
    fn from(c: DeviceConnection) -> Self {
        ConnectionDto {
            id: c.id.to_string(),
            transport: c.transport.to_string(),
            protocol: c.protocol,
            remote_addr: c.remote_addr,
            client_id: c.client_id,
            connected_at: c.connected_at.to_rfc3339(),
            disconnected_at: c.disconnected_at.map(|t| t.to_rfc3339()),
            disconnect_reason: c.disconnect_reason,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    pub items: Vec<ConnectionDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListConnectionsQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

const CURSOR_VERSION: &str = "c1:";

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/connections",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)"), ListConnectionsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's connections, newest first", body = ConnectionPage),
        (status = 400, description = "Invalid id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_connections(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
    Query(q): Query<ListConnectionsQuery>,
) -> Result<Json<ConnectionPage>, Problem> {
    let id: DeviceId = parse_id(&id)?;
    let tenant = auth.principal.tenant_id;
    let page = cursor::page_request::<ConnectionId>(CURSOR_VERSION, q.limit, q.cursor.as_deref())?;
    if state.store.device(tenant, id).await?.is_none() {
        return Err(Problem::not_found(format!("no device {id}")));
    }
    let page = state.store.device_connections(tenant, id, &page).await?;
    Ok(Json(ConnectionPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|c| cursor::encode(CURSOR_VERSION, c)),
    }))
}

/// A device password, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedCredential {
    /// The MQTT username: the device id.
    pub username: String,
    /// The MQTT password (`tnp_...`). Tender keeps only a hash: store it now.
    pub password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/credentials",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "A new password; any previous one stops working and its live session is cut", body = IssuedCredential),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is not preauthorized or accepted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn issue_credential(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<IssuedCredential>), Problem> {
    let id: DeviceId = parse_id(&id)?;
    let tenant = auth.principal.tenant_id;
    let device = state
        .store
        .device(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {id}")))?;
    if !matches!(
        device.state,
        DeviceState::Accepted | DeviceState::Preauthorized
    ) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "invalid-state",
            format!(
                "device {id} is {}: only preauthorized or accepted devices get credentials",
                device.state
            ),
        ));
    }
    let (password, secret_hash) = crate::auth::mint_device_secret(&state.token_key, id);
    state
        .store
        .set_device_credential(&DeviceCredential {
            tenant_id: tenant,
            device_id: id,
            secret_hash,
            created_at: state.clock.now(),
        })
        .await?;
    state
        .gateway
        .disconnect_device(id, Authenticated::ByPassword);
    Ok((
        StatusCode::CREATED,
        Json(IssuedCredential {
            username: id.to_string(),
            password,
        }),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}/credentials",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The password no longer works; a session that used it is cut"),
        (status = 400, description = "Not a device id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_enroll", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device, or it has no password", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_credential(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesEnroll>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: DeviceId = parse_id(&id)?;
    if !state
        .store
        .delete_device_credential(auth.principal.tenant_id, id)
        .await?
    {
        return Err(Problem::not_found(format!("device {id} has no password")));
    }
    state
        .gateway
        .disconnect_device(id, Authenticated::ByPassword);
    Ok(StatusCode::NO_CONTENT)
}
