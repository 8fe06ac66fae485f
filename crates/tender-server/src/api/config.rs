//! Layered configuration: the fleet layer (`/api/v1/config/fleet`), group layers
//! (`/api/v1/config/groups/{id}`), and a device's effective configuration with where each
//! value came from (`/api/v1/devices/{id}/config`). The device layer is the twin's desired
//! document (`api::twin`). Precedence is documented in `tender_core::config`.
//!
//! Writes are compare-and-set on the layer's version like the twin (`If-Match` → 412,
//! `expected_version` → 409; version 0 means "must not exist yet"), and are pushed to the
//! connected devices they affect.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tender_core::config::StoredLayer;
use tender_core::twin::{self, Document};
use tender_core::{GroupId, TenantId};
use utoipa::ToSchema;

use crate::api::parse_id;
use crate::api::twin::{EffectiveDto, Precondition, WriteParams, document_problem};
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;
use crate::twin::Affected;

/// A configuration layer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LayerDto {
    /// `fleet` or `group`.
    pub layer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Group layers: higher wins over lower.
    pub priority: i32,
    #[schema(value_type = Object)]
    pub document: Document,
    pub version: u64,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LayerList {
    pub layers: Vec<LayerDto>,
}

/// A layer write.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerWrite {
    /// `PUT`: the whole document; `PATCH`: a JSON merge patch (null removes a key).
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    /// Group layers only; default 0 on create, unchanged on update.
    pub priority: Option<i32>,
}

fn dto(layer: &StoredLayer, name: Option<&str>) -> LayerDto {
    LayerDto {
        layer: if layer.group_id.is_some() {
            "group"
        } else {
            "fleet"
        },
        group_id: layer.group_id.map(|g| g.to_string()),
        group: name.map(str::to_owned),
        priority: layer.priority,
        document: layer.document.clone(),
        version: layer.version,
        updated_at: layer.updated_at.to_rfc3339(),
    }
}

fn respond(layer: LayerDto, status: StatusCode) -> Response {
    let etag = format!("\"{}\"", layer.version);
    let mut resp = (status, Json(layer)).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn group_name(
    state: &AppState,
    tenant: TenantId,
    group: Option<GroupId>,
) -> Result<Option<String>, Problem> {
    match group {
        None => Ok(None),
        Some(g) => match state.store.group(tenant, g).await? {
            Some(g) => Ok(Some(g.name.as_str().to_owned())),
            None => Err(Problem::not_found(format!("group {g} does not exist"))),
        },
    }
}

async fn find_layer(
    state: &AppState,
    tenant: TenantId,
    group: Option<GroupId>,
) -> Result<Option<StoredLayer>, Problem> {
    Ok(state
        .store
        .config_layers(tenant)
        .await?
        .into_iter()
        .find(|l| l.group_id == group))
}

fn what(group: Option<GroupId>) -> String {
    match group {
        None => "the fleet configuration".into(),
        Some(g) => format!("the configuration of group {g}"),
    }
}

async fn config_event(
    state: &AppState,
    tenant: TenantId,
    group: Option<GroupId>,
    name: Option<&str>,
    version: Option<u64>,
) {
    let mut e = tender_core::event::NewEvent {
        tenant_id: tenant,
        at: state.clock.now(),
        kind: tender_core::event::EventKind::ConfigChanged,
        device_id: None,
        group_id: group,
        data: Default::default(),
    }
    .with("layer", if group.is_some() { "group" } else { "fleet" });
    if let Some(n) = name {
        e = e.with("group", n);
    }
    e = match version {
        Some(v) => e.with("version", v),
        None => e.with("deleted", true),
    };
    crate::events::emit(state, e).await;
}

async fn get_layer(
    state: &AppState,
    tenant: TenantId,
    group: Option<GroupId>,
) -> Result<Response, Problem> {
    let name = group_name(state, tenant, group).await?;
    match find_layer(state, tenant, group).await? {
        Some(l) => Ok(respond(dto(&l, name.as_deref()), StatusCode::OK)),
        None => Err(Problem::not_found(format!("{} is not set", what(group)))),
    }
}

async fn write_layer(
    state: &AppState,
    tenant: TenantId,
    group: Option<GroupId>,
    pre: Precondition,
    body: LayerWrite,
    merge: bool,
) -> Result<Response, Problem> {
    let name = group_name(state, tenant, group).await?;
    if group.is_none() && body.priority.is_some() {
        return Err(Problem::bad_request(
            "invalid-field",
            "priority applies to group layers only; the fleet layer is always the lowest",
        ));
    }
    let input = match body.document {
        serde_json::Value::Object(m) => m,
        _ => {
            return Err(Problem::bad_request(
                "invalid-document",
                "document must be a JSON object",
            ));
        }
    };
    let bytes = serde_json::to_vec(&input).map_err(Problem::internal)?;
    // Same checks as a device's documents: keys, depth, size.
    let input = twin::parse_document(&bytes, state.twin_limits)
        .map_err(|e| document_problem("document", e))?;
    for _ in 0..8 {
        let current = find_layer(state, tenant, group).await?;
        let version = current.as_ref().map_or(0, |l| l.version);
        if let Some(expected) = pre.expected
            && expected != version
        {
            return Err(pre.mismatch(expected, version, &what(group)));
        }
        let next = if merge {
            let mut doc = current
                .as_ref()
                .map(|l| l.document.clone())
                .unwrap_or_default();
            twin::merge_patch(&mut doc, &input);
            doc
        } else {
            input.clone()
        };
        twin::validate(&next, state.twin_limits).map_err(|e| document_problem("document", e))?;
        let priority = body
            .priority
            .or(current.as_ref().map(|l| l.priority))
            .unwrap_or(0);
        let written = state
            .store
            .write_config_layer(tenant, group, version, priority, &next, state.clock.now())
            .await?;
        if let Some(v) = written {
            config_event(state, tenant, group, name.as_deref(), Some(v)).await;
            crate::twin::propagate(
                state,
                tenant,
                match group {
                    None => Affected::All,
                    Some(g) => Affected::Group(g),
                },
            );
            let layer = StoredLayer {
                group_id: group,
                priority,
                document: next,
                version: v,
                updated_at: state.clock.now(),
            };
            let status = if version == 0 {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            return Ok(respond(dto(&layer, name.as_deref()), status));
        }
        if pre.expected.is_some() {
            let now = find_layer(state, tenant, group)
                .await?
                .map_or(0, |l| l.version);
            return Err(pre.mismatch(pre.expected.unwrap_or(0), now, &what(group)));
        }
    }
    Err(Problem::new(
        StatusCode::CONFLICT,
        "version-mismatch",
        format!("{} kept changing under this write; retry", what(group)),
    ))
}

async fn delete_layer(
    state: &AppState,
    tenant: TenantId,
    group: Option<GroupId>,
) -> Result<StatusCode, Problem> {
    group_name(state, tenant, group).await?;
    if !state.store.delete_config_layer(tenant, group).await? {
        return Err(Problem::not_found(format!("{} is not set", what(group))));
    }
    let name = group_name(state, tenant, group).await.ok().flatten();
    config_event(state, tenant, group, name.as_deref(), None).await;
    crate::twin::propagate(
        state,
        tenant,
        match group {
            None => Affected::All,
            Some(g) => Affected::Group(g),
        },
    );
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/config",
    tag = "config",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The fleet layer (if set) and every group layer", body = LayerList),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_layers(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
) -> Result<Json<LayerList>, Problem> {
    let tenant = auth.principal.tenant_id;
    let layers = state.store.config_layers(tenant).await?;
    let groups = if layers.iter().any(|l| l.group_id.is_some()) {
        state.store.groups(tenant).await?
    } else {
        Vec::new()
    };
    Ok(Json(LayerList {
        layers: layers
            .iter()
            .map(|l| {
                let name = l
                    .group_id
                    .and_then(|g| groups.iter().find(|x| x.id == g))
                    .map(|g| g.name.as_str());
                dto(l, name)
            })
            .collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/config/fleet",
    tag = "config",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The fleet layer; ETag is its version", body = LayerDto),
        (status = 404, description = "Not set", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_fleet(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
) -> Result<Response, Problem> {
    get_layer(&state, auth.principal.tenant_id, None).await
}

#[utoipa::path(
    put,
    path = "/api/v1/config/fleet",
    tag = "config",
    params(WriteParams, ("If-Match" = Option<String>, Header, description = "The version read; stale is 412")),
    request_body = LayerWrite,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replaced", body = LayerDto),
        (status = 201, description = "Created", body = LayerDto),
        (status = 400, description = "Invalid document", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks twin_write", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "expected_version is stale", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_fleet(
    State(state): State<AppState>,
    auth: Authorized<need::TwinWrite>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    Json(body): Json<LayerWrite>,
) -> Result<Response, Problem> {
    let pre = Precondition::from_request(&headers, &params)?;
    write_layer(&state, auth.principal.tenant_id, None, pre, body, false).await
}

#[utoipa::path(
    patch,
    path = "/api/v1/config/fleet",
    tag = "config",
    params(WriteParams, ("If-Match" = Option<String>, Header, description = "The version read; stale is 412")),
    request_body = LayerWrite,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Merged", body = LayerDto),
        (status = 201, description = "Created", body = LayerDto),
        (status = 400, description = "Invalid document", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks twin_write", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "expected_version is stale", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_fleet(
    State(state): State<AppState>,
    auth: Authorized<need::TwinWrite>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    Json(body): Json<LayerWrite>,
) -> Result<Response, Problem> {
    let pre = Precondition::from_request(&headers, &params)?;
    write_layer(&state, auth.principal.tenant_id, None, pre, body, true).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/config/fleet",
    tag = "config",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Lacks twin_write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not set", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_fleet(
    State(state): State<AppState>,
    auth: Authorized<need::TwinWrite>,
) -> Result<StatusCode, Problem> {
    delete_layer(&state, auth.principal.tenant_id, None).await
}

#[utoipa::path(
    get,
    path = "/api/v1/config/groups/{id}",
    tag = "config",
    params(("id" = String, Path, description = "Group id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The group's layer; ETag is its version", body = LayerDto),
        (status = 404, description = "No such group, or its layer is not set", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_group_layer(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let g: GroupId = parse_id(&id)?;
    get_layer(&state, auth.principal.tenant_id, Some(g)).await
}

#[utoipa::path(
    put,
    path = "/api/v1/config/groups/{id}",
    tag = "config",
    params(("id" = String, Path, description = "Group id (UUID)"), WriteParams,
        ("If-Match" = Option<String>, Header, description = "The version read; stale is 412")),
    request_body = LayerWrite,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replaced", body = LayerDto),
        (status = 201, description = "Created", body = LayerDto),
        (status = 400, description = "Invalid document", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks twin_write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "expected_version is stale", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_group_layer(
    State(state): State<AppState>,
    auth: Authorized<need::TwinWrite>,
    Path(id): Path<String>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    Json(body): Json<LayerWrite>,
) -> Result<Response, Problem> {
    let g: GroupId = parse_id(&id)?;
    let pre = Precondition::from_request(&headers, &params)?;
    write_layer(&state, auth.principal.tenant_id, Some(g), pre, body, false).await
}

#[utoipa::path(
    patch,
    path = "/api/v1/config/groups/{id}",
    tag = "config",
    params(("id" = String, Path, description = "Group id (UUID)"), WriteParams,
        ("If-Match" = Option<String>, Header, description = "The version read; stale is 412")),
    request_body = LayerWrite,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Merged", body = LayerDto),
        (status = 201, description = "Created", body = LayerDto),
        (status = 400, description = "Invalid document", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks twin_write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "expected_version is stale", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is stale", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_group_layer(
    State(state): State<AppState>,
    auth: Authorized<need::TwinWrite>,
    Path(id): Path<String>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    Json(body): Json<LayerWrite>,
) -> Result<Response, Problem> {
    let g: GroupId = parse_id(&id)?;
    let pre = Precondition::from_request(&headers, &params)?;
    write_layer(&state, auth.principal.tenant_id, Some(g), pre, body, true).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/config/groups/{id}",
    tag = "config",
    params(("id" = String, Path, description = "Group id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Lacks twin_write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group, or its layer is not set", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_group_layer(
    State(state): State<AppState>,
    auth: Authorized<need::TwinWrite>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let g: GroupId = parse_id(&id)?;
    delete_layer(&state, auth.principal.tenant_id, Some(g)).await
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/config",
    tag = "config",
    params(("id" = String, Path, description = "Device id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's effective configuration and where each value came from", body = EffectiveDto),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn device_config(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<EffectiveDto>, Problem> {
    let tenant = auth.principal.tenant_id;
    let id: tender_core::DeviceId = parse_id(&id)?;
    if state.store.device(tenant, id).await?.is_none() {
        return Err(Problem::not_found(format!("device {id} does not exist")));
    }
    let eff = crate::twin::effective(&state, tenant, id).await?;
    Ok(Json(EffectiveDto {
        sources: eff
            .rendered
            .sources
            .iter()
            .map(|(k, v)| (k.clone(), v.into()))
            .collect(),
        document: eff.rendered.document,
        version: eff.version,
    }))
}
