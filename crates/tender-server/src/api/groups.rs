//! Device groups: `/api/v1/groups`. Static groups hold explicit members and nest; dynamic
//! groups are a saved device query whose members are whoever matches now.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tender_core::group::{Group, GroupKind, GroupName, check_parent};
use tender_core::{DeviceId, GroupId};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::parse_id;
use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::state::AppState;

/// A group as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDto {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub name: String,
    /// `static` or `dynamic`.
    pub kind: String,
    /// The parent group (static groups only).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub parent_id: Option<String>,
    /// The device query (dynamic groups only).
    pub query: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<Group> for GroupDto {
    fn from(g: Group) -> Self {
        let (kind, query) = match g.kind {
            GroupKind::Static => ("static", None),
            GroupKind::Dynamic { query } => ("dynamic", Some(query)),
        };
        GroupDto {
            id: g.id.to_string(),
            name: g.name.to_string(),
            kind: kind.to_owned(),
            parent_id: g.parent_id.map(|p| p.to_string()),
            query,
            created_at: g.created_at.to_rfc3339(),
            updated_at: g.updated_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    /// Every group of the tenant, by name.
    pub items: Vec<GroupDto>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    /// A parent static group (makes a static group).
    #[schema(format = Uuid)]
    pub parent_id: Option<String>,
    /// A device query (makes a dynamic group).
    pub query: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    /// A new name.
    pub name: Option<String>,
    /// Move under this static group; `""` makes it a top-level group.
    pub parent_id: Option<String>,
    /// A new query (dynamic groups).
    pub query: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// 1 to 1000 device ids.
    pub device_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembersChanged {
    /// Devices that were added (were not members) or removed (were members).
    pub changed: u64,
}

fn parse_name(name: &str) -> Result<GroupName, Problem> {
    GroupName::parse(name).map_err(|e| Problem::bad_request("invalid-group", e.to_string()))
}

/// Checks a dynamic group's query: it parses (`400 invalid-query` pointing at the problem),
/// the groups it names exist, and it does not lead back to the group. Returns the canonical
/// text, which is what is stored.
async fn check_query(
    state: &AppState,
    tenant: tender_core::TenantId,
    group: &GroupName,
    text: &str,
) -> Result<String, Problem> {
    let query = crate::api::search::parse_query(text)?;
    crate::api::search::check_group_query(state, tenant, group.as_str(), &query).await?;
    Ok(query.to_string())
}

async fn existing(
    state: &AppState,
    tenant: tender_core::TenantId,
    id: &str,
) -> Result<Group, Problem> {
    let id: GroupId = parse_id(id)?;
    state
        .store
        .group(tenant, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no group {id}")))
}

fn nesting_problem(e: tender_core::group::GroupError) -> Problem {
    Problem::new(StatusCode::CONFLICT, "invalid-nesting", e.to_string())
}

#[utoipa::path(
    post,
    path = "/api/v1/groups",
    tag = "groups",
    request_body = CreateGroup,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = GroupDto),
        (status = 400, description = "Invalid name, parent or query", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Lacks devices_manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such parent group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken, or the parent is dynamic or too deep", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_group(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesManage>,
    Json(body): Json<CreateGroup>,
) -> Result<(StatusCode, Json<GroupDto>), Problem> {
    let tenant = auth.principal.tenant_id;
    let name = parse_name(&body.name)?;
    let kind = match body.query {
        Some(query) => {
            if body.parent_id.is_some() {
                return Err(Problem::bad_request(
                    "invalid-group",
                    "a dynamic group (with a query) has no parent",
                ));
            }
            GroupKind::Dynamic {
                query: check_query(&state, tenant, &name, &query).await?,
            }
        }
        None => GroupKind::Static,
    };
    let parent_id = match body.parent_id.as_deref() {
        None => None,
        Some(p) => Some(existing(&state, tenant, p).await?.id),
    };
    let now = state.clock.now();
    let group = Group {
        id: GroupId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant,
        name,
        parent_id,
        kind,
        created_at: now,
        updated_at: now,
    };
    let mut all = state.store.groups(tenant).await?;
    all.push(group.clone());
    check_parent(&all, group.id, parent_id).map_err(nesting_problem)?;
    state.store.create_group(&group).await?;
    Ok((StatusCode::CREATED, Json(group.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/groups",
    tag = "groups",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every group, by name", body = GroupList),
        (status = 403, description = "Lacks devices_read", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_groups(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
) -> Result<Json<GroupList>, Problem> {
    let groups = state.store.groups(auth.principal.tenant_id).await?;
    Ok(Json(GroupList {
        items: groups.into_iter().map(Into::into).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/groups/{id}",
    tag = "groups",
    params(("id" = String, Path, description = "Group id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The group", body = GroupDto),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_group(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesRead>,
    Path(id): Path<String>,
) -> Result<Json<GroupDto>, Problem> {
    Ok(Json(
        existing(&state, auth.principal.tenant_id, &id)
            .await?
            .into(),
    ))
}

#[utoipa::path(
    patch,
    path = "/api/v1/groups/{id}",
    tag = "groups",
    params(("id" = String, Path, description = "Group id (UUID)")),
    request_body = UpdateGroup,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The group after the change", body = GroupDto),
        (status = 400, description = "Invalid name, parent or query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group or parent", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken, a cycle, too deep, or a parent for a dynamic group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_group(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesManage>,
    Path(id): Path<String>,
    Json(body): Json<UpdateGroup>,
) -> Result<Json<GroupDto>, Problem> {
    let tenant = auth.principal.tenant_id;
    let mut group = existing(&state, tenant, &id).await?;
    let old_name = group.name.clone();
    if let Some(name) = &body.name {
        group.name = parse_name(name)?;
    }
    if let Some(query) = body.query {
        let canonical = check_query(&state, tenant, &group.name, &query).await?;
        match &mut group.kind {
            GroupKind::Dynamic { query: q } => {
                *q = canonical;
            }
            GroupKind::Static => {
                return Err(Problem::bad_request(
                    "invalid-group",
                    "a static group has no query; create a dynamic group instead",
                ));
            }
        }
    }
    if let Some(parent) = body.parent_id.as_deref() {
        let all = state.store.groups(tenant).await?;
        let parent = match parent {
            "" => None,
            p => Some(existing(&state, tenant, p).await?.id),
        };
        check_parent(&all, group.id, parent).map_err(nesting_problem)?;
        group.parent_id = parent;
    }
    group.updated_at = state.clock.now();
    state.store.update_group(&group).await?;
    if group.name != old_name {
        // Dynamic groups refer to groups by name: follow the rename, so nothing breaks.
        for mut other in state.store.groups(tenant).await? {
            let GroupKind::Dynamic { query } = &other.kind else {
                continue;
            };
            let Ok(parsed) = tender_core::query::parse(query) else {
                continue;
            };
            if let Some(renamed) =
                crate::api::search::rename_group_in(&parsed, old_name.as_str(), group.name.as_str())
            {
                other.kind = GroupKind::Dynamic { query: renamed };
                other.updated_at = group.updated_at;
                state.store.update_group(&other).await?;
            }
        }
    }
    // Moves and query changes change memberships, so the configuration of devices in and
    // out of the group.
    crate::twin::propagate(&state, tenant, crate::twin::Affected::All);
    Ok(Json(group.into()))
}

#[utoipa::path(
    delete,
    path = "/api/v1/groups/{id}",
    tag = "groups",
    params(("id" = String, Path, description = "Group id (UUID)")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted, with its memberships"),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It has child groups", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_group(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesManage>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: GroupId = parse_id(&id)?;
    if state
        .store
        .delete_group(auth.principal.tenant_id, id)
        .await?
    {
        crate::twin::propagate(&state, auth.principal.tenant_id, crate::twin::Affected::All);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no group {id}")))
    }
}

async fn members(
    state: &AppState,
    tenant: tender_core::TenantId,
    id: &str,
    body: &Members,
) -> Result<(GroupId, Vec<DeviceId>), Problem> {
    let group = existing(state, tenant, id).await?;
    if group.kind != GroupKind::Static {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "dynamic-group",
            format!(
                "{} is a dynamic group: its members are the devices matching its query",
                group.name
            ),
        ));
    }
    if body.device_ids.is_empty() || body.device_ids.len() > 1000 {
        return Err(Problem::bad_request(
            "invalid-field",
            "device_ids: 1 to 1000 device ids",
        ));
    }
    let ids = body
        .device_ids
        .iter()
        .map(|d| parse_id::<DeviceId>(d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((group.id, ids))
}

/// Which of `ids` are members of static `group` now.
async fn already_members(
    state: &AppState,
    tenant: tender_core::TenantId,
    group: GroupId,
    ids: &[DeviceId],
) -> Result<Vec<DeviceId>, Problem> {
    let mut out = Vec::new();
    for id in ids {
        if state
            .store
            .device_groups(tenant, *id)
            .await?
            .contains(&group)
        {
            out.push(*id);
        }
    }
    Ok(out)
}

async fn membership_events(
    state: &AppState,
    tenant: tender_core::TenantId,
    group: GroupId,
    devices: &[DeviceId],
    joined: bool,
) {
    let name = match state.store.group(tenant, group).await {
        Ok(Some(g)) => g.name.as_str().to_owned(),
        _ => String::new(),
    };
    let kind = if joined {
        tender_core::event::EventKind::GroupJoined
    } else {
        tender_core::event::EventKind::GroupLeft
    };
    for d in devices {
        crate::events::emit(
            state,
            crate::events::device_event(state, tenant, *d, kind)
                .in_group(group)
                .with("group", name.clone())
                .with("dynamic", false),
        )
        .await;
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/groups/{id}/members",
    tag = "groups",
    params(("id" = String, Path, description = "Group id (UUID)")),
    request_body = Members,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Added (all or none)", body = MembersChanged),
        (status = 404, description = "No such group or device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A dynamic group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_members(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesManage>,
    Path(id): Path<String>,
    Json(body): Json<Members>,
) -> Result<Json<MembersChanged>, Problem> {
    let tenant = auth.principal.tenant_id;
    let (group, ids) = members(&state, tenant, &id, &body).await?;
    let before = already_members(&state, tenant, group, &ids).await?;
    let changed = state
        .store
        .add_group_members(tenant, group, &ids, state.clock.now())
        .await?;
    let joined: Vec<DeviceId> = ids
        .iter()
        .filter(|d| !before.contains(d))
        .copied()
        .collect();
    membership_events(&state, tenant, group, &joined, true).await;
    crate::twin::propagate(&state, tenant, crate::twin::Affected::Devices(ids));
    Ok(Json(MembersChanged { changed }))
}

#[utoipa::path(
    post,
    path = "/api/v1/groups/{id}/members/remove",
    tag = "groups",
    params(("id" = String, Path, description = "Group id (UUID)")),
    request_body = Members,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Removed", body = MembersChanged),
        (status = 404, description = "No such group", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A dynamic group", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove_members(
    State(state): State<AppState>,
    auth: Authorized<need::DevicesManage>,
    Path(id): Path<String>,
    Json(body): Json<Members>,
) -> Result<Json<MembersChanged>, Problem> {
    let tenant = auth.principal.tenant_id;
    let (group, ids) = members(&state, tenant, &id, &body).await?;
    let before = already_members(&state, tenant, group, &ids).await?;
    let changed = state
        .store
        .remove_group_members(tenant, group, &ids)
        .await?;
    membership_events(&state, tenant, group, &before, false).await;
    crate::twin::propagate(&state, tenant, crate::twin::Affected::Devices(ids));
    Ok(Json(MembersChanged { changed }))
}
