//! `GET /api/v1/whoami`: the caller as the server sees them.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{AnyOperator, Authorized};
use crate::problem::Problem;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    pub tenant: TenantRef,
    pub user_id: String,
    pub username: String,
    /// The API token used, if any.
    pub token_id: Option<String>,
    pub roles: Vec<String>,
    /// Everything the caller may do, derived from the roles.
    pub permissions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TenantRef {
    pub id: String,
    pub slug: String,
    pub name: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "operators",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The authenticated caller", body = WhoAmI),
        (status = 401, description = "Missing or invalid credentials", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn whoami(
    State(state): State<AppState>,
    auth: Authorized<AnyOperator>,
) -> Result<Json<WhoAmI>, Problem> {
    let p = auth.principal;
    let tenant = state.store.tenant(p.tenant_id).await?.ok_or_else(|| {
        Problem::internal(format!("tenant {} of a principal is missing", p.tenant_id))
    })?;
    Ok(Json(WhoAmI {
        tenant: TenantRef {
            id: tenant.id.to_string(),
            slug: tenant.slug.to_string(),
            name: tenant.name,
        },
        user_id: p.user_id.to_string(),
        username: p.username.clone(),
        token_id: p.token_id.map(|t| t.to_string()),
        roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        permissions: p
            .permissions()
            .iter()
            .map(|x| x.as_str().to_owned())
            .collect(),
    }))
}
